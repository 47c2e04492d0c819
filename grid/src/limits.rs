//! Every bound and default in one place, unit-suffixed, each with the reason for its number.
//! Relations between limits are checked at compile time at the bottom of this file.

/// Labels are names, not documents; 256 B keeps id hashing and label indexes cheap.
pub const LABEL_BYTES_MAX: usize = 256;
/// Content is a description or gloss; larger payloads belong in an object store.
pub const CONTENT_BYTES_MAX: usize = 64 * 1024;
/// Relation names are identifiers like `capital_of` or `member_holonym`.
pub const RELATION_BYTES_MAX: usize = 64;
/// Evidence is the sentence an association was learnt from.
pub const EVIDENCE_BYTES_MAX: usize = 4 * 1024;
/// Default embedding width (common sentence-embedding models use 768).
pub const VECTOR_DIM_DEFAULT: usize = 768;
/// Widest vector a grid may be configured for.
pub const VECTOR_DIM_MAX: usize = 4096;
/// Distinct relation names per shard; relation ids are u32 but a shard with more than this
/// many is almost certainly storing data in the relation name.
pub const RELATIONS_PER_SHARD_MAX: usize = 1 << 20;

/// Items (concepts + associations) in one write batch: one WAL record, applied atomically.
pub const BATCH_ITEMS_MAX: usize = 10_000;
/// Associations a concept may have when it is forgotten: one log entry retracts them all,
/// and each remote one takes an outbox sequence number of that entry (`links::ITEMS_PER_ENTRY_MAX`).
pub const FORGET_EDGES_MAX: usize = 20_000;
/// Encoded bytes of one write batch; bounds one WAL record and one request's memory.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Bad items named individually in one rejection before the list is cut short.
pub const BATCH_ERRORS_LISTED_MAX: usize = 100;

/// One WAL record's payload: a whole batch plus its framing fields.
pub const WAL_RECORD_PAYLOAD_BYTES_MAX: usize = BATCH_BYTES_MAX + 64 * 1024;
/// Roll to a new segment past this size; small enough to trim and re-ship quickly.
pub const WAL_SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Extra reads of a WAL segment whose reads disagree, before recovery gives up and refuses
/// to serve (a decode failure is acted on only when two reads agree).
pub const WAL_REREADS_MAX: u32 = 4;
/// Bytes gathered under one fsync: large enough to amortise it, small enough to keep p99 low.
pub const WAL_GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Records gathered under one fsync.
pub const WAL_GROUP_COMMIT_RECORDS_MAX: usize = 8192;
/// Writers queued for the committer before new writers wait (backpressure, not unbounded RAM).
pub const WAL_QUEUE_DEPTH_MAX: usize = 16_384;

/// Ids in one batched get.
pub const GET_IDS_MAX: usize = 10_000;
/// Vertices in one batched neighbours call.
pub const NEIGHBORS_IDS_MAX: usize = 10_000;
/// Edges returned per vertex when the caller does not say.
pub const NEIGHBORS_PER_VERTEX_DEFAULT: usize = 256;
/// Edges returned per vertex at most.
pub const NEIGHBORS_PER_VERTEX_MAX: usize = 100_000;
/// Vertices in one expand-frontier call.
pub const EXPAND_FRONTIER_MAX: usize = 100_000;
/// Edges returned by one expand call when the caller does not say.
pub const EXPAND_EDGES_DEFAULT: usize = 200_000;
/// Edges returned by one expand call at most (~ tens of MiB on the wire).
pub const EXPAND_EDGES_MAX: usize = 1_000_000;

/// Vector search: results per request by default, and at most (each shard returns its own
/// top k, so the router merges at most shards × k).
pub const VECTOR_SEARCH_K_DEFAULT: usize = 10;
pub const VECTOR_SEARCH_K_MAX: usize = 1_000;
/// Background vector indexing (architecture.md §11): vectors indexed per batch, the pause
/// after a full batch, and how often an idle index looks for new vectors.
pub const VECTOR_INDEX_BATCH: usize = 32;
pub const VECTOR_INDEX_BUSY_MS: u64 = 1;
pub const VECTOR_INDEX_IDLE_MS: u64 = 1_000;
/// A follower keeps its vector index up to date for this long after it last answered a search.
pub const VECTOR_INDEX_KEEP_MS: u64 = 600_000;

/// An expand's local fast path: levels a shard lists beyond the frontier while they stay on
/// it, and the vertices it lists that way at most (bounded so a hub cannot balloon an answer).
pub const EXPAND_PREFETCH_LEVELS: usize = 3;
pub const EXPAND_PREFETCH_VERTICES_MAX: usize = 1_024;

/// Hops a path search may take.
pub const SEARCH_DEPTH_MAX: usize = 10;
/// Paths one search may return.
pub const SEARCH_PATHS_MAX: usize = 32;
/// Vertices one local search may visit before it stops with an error.
pub const SEARCH_VISITED_MAX: usize = 20_000_000;
/// Shortest paths a search enumerates before ranking the best `max_paths` of them: a graph
/// with exponentially many shortest paths must not make one request exponential.
pub const PATHS_ENUMERATED_MAX: usize = 4_096;

/// `/reason` defaults and bounds (the API's; architecture.md §6). A distributed search stops with a
/// budget error past `REASON_VISITED_MAX` vertices and a timeout past `REASON_TIMEOUT_MS`.
pub const REASON_DEPTH_DEFAULT: usize = 6;
pub const REASON_PATHS_DEFAULT: usize = 5;
pub const REASON_VISITED_MAX: usize = 2_000_000;
pub const REASON_TIMEOUT_MS: u64 = 10_000;
/// Largest HTTP request body the API reads (413 past it); one body is at most one write batch.
pub const API_BODY_BYTES_MAX: usize = BATCH_BYTES_MAX;
/// Relation names one edge filter may list.
pub const FILTER_RELATIONS_MAX: usize = 256;
/// Sentences one `/learn` text may hold, and lines one `/learn/batch` stream may hold.
pub const LEARN_SENTENCES_MAX: usize = 1_000;
pub const LEARN_BATCH_LINES_MAX: usize = 100_000;

/// Shard replicas hosted by one storage node.
pub const SHARDS_PER_NODE_MAX: usize = 4096;

/// Deadline on every RPC unless the call says otherwise (MADSIM.md trap 9).
pub const RPC_DEADLINE_MS: u64 = 5_000;
/// `Retry-After` (seconds) on a 503: a failover completes within about this.
pub const API_RETRY_AFTER_S: u64 = 1;
/// `/readyz` asks every shard's primary whether it leads; one that takes longer is not ready.
pub const READY_PROBE_MS: u64 = 1_000;
/// Connect attempts and retries of idempotent calls before giving up.
pub const RPC_RETRIES_MAX: u32 = 4;
/// First retry backoff; doubles each attempt.
pub const RPC_BACKOFF_MS_INITIAL: u64 = 50;
/// Largest message either side of a gRPC call will decode (real mode).
pub const RPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Overlay entries (concepts + edge records written since the last checkpoint) that trigger a
/// new checkpoint: bounds the overlay's memory and the WAL a restart must replay (~1 GiB RAM).
pub const CHECKPOINT_OVERLAY_ITEMS_TRIGGER: u64 = 2_000_000;
/// How often a shard checks whether it needs a checkpoint.
pub const CHECKPOINT_CHECK_INTERVAL_MS: u64 = 2_000;

/// SWIM protocol period: one probe per node per period, so ~2 messages per node per period
/// whatever the cluster size. 250 ms detects a silent node in well under the 10 s budget.
pub const GOSSIP_PERIOD_MS: u64 = 250;
/// Wait for a direct ack before asking others to probe indirectly.
pub const GOSSIP_PING_TIMEOUT_MS: u64 = 80;
/// Members asked to probe indirectly (SWIM's k).
pub const GOSSIP_INDIRECT_PROBES: usize = 3;
/// Periods a suspect has to refute before it is declared dead.
pub const GOSSIP_SUSPICION_PERIODS: u64 = 8;
/// Every this many periods a node pings one member it holds Dead (round robin), so healed
/// partitions and restarted nodes rejoin. Every period: one extra datagram per period while
/// anything is Dead, and a lone node that holds everyone Dead reaches them all quickly.
pub const GOSSIP_DEAD_PROBE_PERIODS: u64 = 1;
/// Membership updates piggybacked on one message.
pub const GOSSIP_PIGGYBACK_MAX: usize = 8;
/// Each update is sent this many times × ⌈log2(n+1)⌉ (infection-style dissemination).
pub const GOSSIP_RETRANSMIT_MULT: u32 = 3;
/// Updates waiting to be disseminated; the most-sent are dropped first past this.
pub const GOSSIP_QUEUE_MAX: usize = 1024;
/// Members one node tracks.
pub const GOSSIP_MEMBERS_MAX: usize = 10_000;
/// Pause after a failed receive, so a broken socket cannot spin the gossip loop.
pub const GOSSIP_RECV_ERROR_BACKOFF_MS: u64 = 10;
/// Largest gossip datagram (fits a 1500-byte MTU with room to spare).
pub const GOSSIP_DATAGRAM_BYTES_MAX: usize = 1400;

/// Storage nodes and agents heartbeat the master this often.
pub const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Silence after which the master marks a node or agent Down: 2.5 intervals, so one late
/// heartbeat is forgiven but a vanished machine is Down within 3 intervals.
pub const HEARTBEAT_DOWN_AFTER_MS: u64 = HEARTBEAT_INTERVAL_MS * 5 / 2;
/// How often the master re-evaluates node states (bounds detection lag past the timeout).
pub const MASTER_TICK_MS: u64 = 50;
/// Master metadata changes logged before the metadata is snapshotted and the log trimmed.
pub const MASTER_LOG_RECORDS_PER_SNAPSHOT: u64 = 1024;
/// Registered storage nodes and agents the master tracks (bounds every per-node loop).
pub const MASTER_NODES_MAX: usize = 10_000;
/// State transitions the master keeps for `status` and traces.
pub const MASTER_TRANSITIONS_KEPT: usize = 256;
/// Storage processes one agent supervises.
pub const AGENT_PROCESSES_MAX: u32 = 64;
/// First restart backoff for a crashed storage process; doubles per crash.
pub const AGENT_RESTART_BACKOFF_MS_INITIAL: u64 = 100;
/// Restart backoff ceiling.
pub const AGENT_RESTART_BACKOFF_MS_MAX: u64 = 10_000;
/// A process that has run this long resets its backoff.
pub const AGENT_STABLE_AFTER_MS: u64 = 30_000;
/// On shutdown, children get this long to exit after SIGTERM before SIGKILL.
pub const AGENT_STOP_GRACE_MS: u64 = 5_000;

/// Checkpoint writes are streamed through a buffer of this size.
pub const CHECKPOINT_WRITE_BUFFER_BYTES: usize = 1024 * 1024;

const _: () = assert!(LABEL_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(RELATION_BYTES_MAX <= LABEL_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX < WAL_RECORD_PAYLOAD_BYTES_MAX);
const _: () = assert!(WAL_RECORD_PAYLOAD_BYTES_MAX < u32::MAX as usize);
const _: () = assert!((WAL_RECORD_PAYLOAD_BYTES_MAX as u64) < WAL_SEGMENT_BYTES_MAX);
const _: () = assert!(NEIGHBORS_PER_VERTEX_DEFAULT <= NEIGHBORS_PER_VERTEX_MAX);
const _: () = assert!(EXPAND_EDGES_DEFAULT <= EXPAND_EDGES_MAX);
const _: () = assert!(VECTOR_DIM_DEFAULT <= VECTOR_DIM_MAX);
const _: () = assert!(REASON_DEPTH_DEFAULT <= SEARCH_DEPTH_MAX && REASON_PATHS_DEFAULT <= SEARCH_PATHS_MAX);
const _: () = assert!(VECTOR_SEARCH_K_DEFAULT <= VECTOR_SEARCH_K_MAX);
const _: () = assert!(BATCH_BYTES_MAX < RPC_MESSAGE_BYTES_MAX);
const _: () = assert!(GOSSIP_PING_TIMEOUT_MS * 2 < GOSSIP_PERIOD_MS);
// Down within 3 heartbeat intervals of a machine vanishing, counting the master's tick.
const _: () = assert!(HEARTBEAT_DOWN_AFTER_MS + MASTER_TICK_MS < 3 * HEARTBEAT_INTERVAL_MS);
const _: () = assert!(HEARTBEAT_DOWN_AFTER_MS > HEARTBEAT_INTERVAL_MS * 2);
const _: () = assert!(AGENT_RESTART_BACKOFF_MS_INITIAL <= AGENT_RESTART_BACKOFF_MS_MAX);
// A header (≤ 56 B) + piggyback_max updates (≤ 36 B each, IPv6) must fit one datagram.
const _: () = assert!(56 + GOSSIP_PIGGYBACK_MAX * 36 <= GOSSIP_DATAGRAM_BYTES_MAX);

/// A primary's lease: it serves strong reads only within this long of the send time of the
/// latest append a majority acknowledged. A new primary waits it out after a silent loss.
pub const LEASE_MS: u64 = 1_000;
/// Margin added to a lease wait for clock drift between master and nodes.
pub const LEASE_MARGIN_MS: u64 = 100;
/// A primary sends each replica an (empty) append at least this often: commit LSN and lease.
pub const REPL_HEARTBEAT_MS: u64 = LEASE_MS / 4;
/// Bounds on one append RPC.
pub const REPL_APPEND_ENTRIES_MAX: u64 = 1_024;
pub const REPL_APPEND_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Appends on their way to one replica at once (pipelining): the next batch leaves before the
/// last one's fsync on the replica came back.
pub const REPL_APPENDS_IN_FLIGHT_MAX: usize = 4;
/// Deadline of one replication RPC (append, fence, promote, snapshot chunk).
pub const REPL_RPC_DEADLINE_MS: u64 = 1_000;
/// Outbox items one delivery round takes per shard (architecture.md §5 rule 7).
pub const OUTBOX_BATCH_MAX: usize = 1024;
/// Undelivered in-edges one shard holds before it refuses (Busy) new writes that add more: a
/// target shard that stays unreachable must not grow the outbox without bound.
pub const OUTBOX_ITEMS_MAX: usize = 1_000_000;
/// A write the caller may repeat (`Router::write_idempotent`, `/learn`) that has waited this
/// long on a primary starts re-reading the map every `WRITE_WATCH_EVERY_MS`, and goes to the
/// new primary once the shard has one (a hung primary otherwise holds it for its deadline).
pub const WRITE_WATCH_AFTER_MS: u64 = 200;
pub const WRITE_WATCH_EVERY_MS: u64 = 100;
/// How long `/learn` waits (with `wait_for: in_edges`, the default) for its in-edges to reach
/// their target shards before it answers 504 (the write itself is committed).
pub const LEARN_DELIVERY_WAIT_MS: u64 = 5_000;
/// How often a primary looks at its outbox when the last round found nothing to deliver.
pub const OUTBOX_POLL_MS: u64 = 50;
/// Deadline of one delivery call; a round that fails backs off up to `REPL_HEARTBEAT_MS * 2`.
pub const OUTBOX_RPC_DEADLINE_MS: u64 = 1_000;
/// How long the outbox task waits for its `Delivered` entry to commit before it moves on to
/// the node's other shards (and delivers the same items again later).
pub const OUTBOX_MARK_DEADLINE_MS: u64 = 5_000;
/// Entries a primary holds logged but not yet applied (committed) before it refuses writes
/// ("busy").
pub const REPL_UNCOMMITTED_MAX: usize = 8_192;
/// Peers' append answers waiting for the log task: at most `REPL_APPENDS_IN_FLIGHT_MAX` per
/// peer are on their way, so it fills only if the log task stalls, and then the shippers wait.
pub const REPL_REPLY_QUEUE_DEPTH_MAX: usize = 1_024;
/// Committed entries a primary keeps in memory for lagging replicas (older ones are read
/// from the WAL, or replaced by a snapshot once trimmed).
pub const REPL_RETAIN_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Snapshot transfer: bytes per chunk, and the largest image a replica accepts.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
pub const SNAPSHOT_BYTES_MAX: u64 = 8 * 1024 * 1024 * 1024;
/// Once a majority answered a fence, the rest get this much longer before the election goes on.
pub const FENCE_STRAGGLER_MS: u64 = 20;
/// The master retries a failover that could not fence a majority after this long.
pub const FAILOVER_RETRY_MS: u64 = 200;
/// A primary named in the map that still does not report leading its epoch this long after
/// the promotion (say it restarted and lost its role) is replaced by a new epoch.
pub const PROMOTION_GRACE_MS: u64 = 2 * HEARTBEAT_INTERVAL_MS + 500;

/// A voter Down this long is replaced by a new replica on a healthy node (`sutra master
/// --replace-down-after-s`). Long enough that a restart or a short partition never moves data.
pub const REPLACE_DOWN_AFTER_MS: u64 = 5 * 60 * 1000;
/// A learner that has not caught up this long after it was added is given up.
pub const LEARNER_CATCH_UP_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// A learner this many entries behind the primary's commit point joins the voters.
pub const LEARNER_CATCH_UP_LAG_ENTRIES: u64 = 1_024;
/// Shards changing their membership at once, grid-wide (bounds the copying).
pub const MEMBERSHIP_CHANGES_MAX: usize = 8;
/// A node must have stayed Up this long before the rebalancer hands it a primary: a process
/// back from a restart, or flapping, is not given leadership (its restarts would chase it).
pub const LEADER_TRANSFER_SETTLE_MS: u64 = 10_000;
/// After a leadership transfer of a shard, the next one waits this long (a transfer costs
/// writers a fence; one that did not take is not retried at once).
pub const LEADER_TRANSFER_RETRY_MS: u64 = 5_000;
/// The split policy's defaults (`sutra master --split-size-mib / --split-requests-per-s /
/// --split-after-s`, `architecture.md` §9). A shard splits when its primary holds this much:
/// the checkpoint is rebuilt whole and a lagging replica is sent it whole, so 256 MiB keeps a
/// rebuild near a second and a catch-up a few seconds (TiKV splits at 96-256 MiB,
/// CockroachDB at 512 MiB).
pub const SPLIT_BYTES_DEFAULT: u64 = 256 << 20;
/// Or when its primary serves this many requests per second (write batches, deliveries and
/// reads, smoothed over heartbeats) for `SPLIT_LOAD_SUSTAIN_MS` (CockroachDB: 2,500 QPS).
pub const SPLIT_REQUESTS_PER_S_DEFAULT: f64 = 2_000.0;
pub const SPLIT_LOAD_SUSTAIN_MS: u64 = 10_000;
/// A shard stays hot until its rate falls below this share of the threshold (hysteresis).
pub const SPLIT_LOAD_COOL_FRACTION: f64 = 0.8;
/// Below this share of the split threshold a shard's request rate is noise to the
/// leadership balancer: counting primaries alone decides (light, uneven load must not stop
/// the primaries from evening out).
pub const LOAD_NOTICED_FRACTION: f64 = 0.1;
/// The merge policy (architecture.md §10): two neighbouring shards merge when together they
/// hold under this (an eighth of the split size, so a merged shard is far from splitting
/// again; TiKV merges regions under 20 MiB)...
pub const MERGE_BYTES_DEFAULT: u64 = 32 << 20;
/// ...and serve under this many requests per second, each under half of it...
pub const MERGE_REQUESTS_PER_S_DEFAULT: f64 = 200.0;
/// ...for this long (a shard split for load merges back a minute after the load is gone).
pub const MERGE_COLD_MS: u64 = 60_000;
const _: () = assert!(MERGE_BYTES_DEFAULT * 4 <= SPLIT_BYTES_DEFAULT);
const _: () = assert!(MERGE_REQUESTS_PER_S_DEFAULT * 4.0 <= SPLIT_REQUESTS_PER_S_DEFAULT * SPLIT_LOAD_COOL_FRACTION);
const _: () = assert!(MERGE_COLD_MS >= SPLIT_COOLDOWN_MS);
/// Bytes of a merged shard's data per log entry of the merge (architecture.md §10): a part is
/// built in memory on both primaries and shipped like any entry.
pub const MERGE_PART_BYTES_MAX: usize = 1024 * 1024;
const _: () =
    assert!(MERGE_PART_BYTES_MAX <= REPL_APPEND_BYTES_MAX && MERGE_PART_BYTES_MAX * 8 <= WAL_RECORD_PAYLOAD_BYTES_MAX);
/// How long the master waits for the absorbing primary to copy a frozen shard (a part per
/// commit; a 32 MiB shard is 32 commits). Past it the master asks again, and the copy restarts.
pub const MERGE_ABSORB_DEADLINE_MS: u64 = 60_000;
/// Where a shard's requests fall, in this many equal slices of its range: the split point of a
/// split for load is the slice boundary nearest half the load.
pub const KEY_LOAD_BUCKETS: usize = 64;
/// The slices' counts halve once they add up to this, so they follow the recent load.
pub const KEY_LOAD_DECAY_TOTAL: u64 = 1 << 16;
/// A shard whose range just changed (it split, or was split off) is not split by the policy
/// for this long: its load is measured afresh first.
pub const SPLIT_COOLDOWN_MS: u64 = 30_000;
/// The policy leaves alone a shard whose range is narrower than this many keys (a single hot
/// key cannot be split away; keys are 64-bit hashes, so such a shard holds next to nothing).
pub const SPLIT_RANGE_MIN_KEYS: u64 = 1 << 32;
/// How long a primary handing its role over stops taking writes while the target catches up
/// (the master asks for this; a storage node caps any request at the maximum).
pub const LEADER_HANDOVER_WAIT_MS: u64 = 300;
pub const LEADER_HANDOVER_WAIT_MS_MAX: u64 = 2_000;
