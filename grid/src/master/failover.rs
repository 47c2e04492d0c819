//! Failover (architecture.md §5 rules 1, 4 and 6): when a shard's primary is lost, the master fences
//! the replica set into the next epoch, promotes the fenced member with the greatest
//! `(last_epoch, last_lsn)`, records the choice (compare-and-set on the shard's epoch), and
//! tells the new primary. The new primary waits out what may be left of the old primary's
//! lease (`replication::lease`): nothing if the old one is known to hold none (its agent
//! reported it exited, or it answered the fence itself), less when every other voter last
//! heard from it a while ago.
//!
//! Membership changes (rule 8) run through the same loop: a learner is recorded in the map,
//! and each voter-set change is an election whose new epoch carries the new voter set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sutra_proto as pb;

use super::{Master, MemberChange};
use crate::client::StorageClient;
use crate::ids::NodeId;
use crate::limits;
use crate::replication::lease::{lease_wait, FenceAge};
use crate::replication::{choose_primary_among, EntryId};

/// Watches for shards needing a primary, one election per shard at a time, until dropped.
pub async fn run_failovers(master: Arc<Master>) {
    // Per shard, at most one election or membership step at a time; each ends with the epoch
    // it moved the shard into, if it did.
    let mut running: BTreeMap<u32, tokio::task::JoinHandle<Result<Option<u64>, String>>> = BTreeMap::new();
    // When each shard's current learner was first seen (for the catch-up timeout).
    let mut learner_since: BTreeMap<u32, u64> = BTreeMap::new();
    // When each shard's current primary was named; before any election since this master
    // started, its start (so restarted masters give nodes a grace period to report in).
    let mut named_at: BTreeMap<u32, u64> = BTreeMap::new();
    let mut not_before: BTreeMap<u32, u64> = BTreeMap::new();
    // Per shard, no leadership transfer before this: one that did not take (the target had
    // not received everything when fenced) is not retried at once, and none churns.
    let mut transfer_not_before: BTreeMap<u32, u64> = BTreeMap::new();
    // Merges run beside elections (a merge waits on both shards' primaries, which elections
    // may have to replace meanwhile), one per absorbing shard; true once recorded.
    let mut merges: BTreeMap<u32, tokio::task::JoinHandle<Result<bool, String>>> = BTreeMap::new();
    let mut merge_not_before: BTreeMap<u32, u64> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(limits::MASTER_TICK_MS)).await;
        let now = master.now_ms();
        let finished: Vec<u32> = running.iter().filter(|(_, h)| h.is_finished()).map(|(s, _)| *s).collect();
        for s in finished {
            let Some(h) = running.remove(&s) else { continue };
            match h.await {
                Ok(Ok(Some(epoch))) => {
                    named_at.insert(s, master.now_ms());
                    tracing::info!(shard = s, epoch, "primary elected");
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(shard = s, error = %e, "election failed; retrying");
                    not_before.insert(s, master.now_ms() + limits::FAILOVER_RETRY_MS);
                }
                Err(_) => {}
            }
        }
        let due = master.with(|st, now| st.elections_due(now, &named_at, limits::PROMOTION_GRACE_MS));
        for s in due {
            if running.contains_key(&s) || not_before.get(&s).is_some_and(|t| *t > now) {
                continue;
            }
            let m = master.clone();
            running.insert(s, tokio::spawn(async move { elect(m, s, None, None).await.map(Some) }));
        }
        let changes = master.with(|st, now| {
            learner_since.retain(|s, _| st.map().shards.iter().any(|e| e.id.0 == *s && e.learner.is_some()));
            for e in st.map().shards.iter().filter(|e| e.learner.is_some()) {
                learner_since.entry(e.id.0).or_insert(now);
            }
            st.membership_due(now, &master.membership, &learner_since)
        });
        for change in changes {
            let s = change.shard();
            if running.contains_key(&s) || not_before.get(&s).is_some_and(|t| *t > now) {
                continue;
            }
            if matches!(change, MemberChange::TransferLeader { .. }) {
                if transfer_not_before.get(&s).is_some_and(|t| *t > now) {
                    continue;
                }
                transfer_not_before.insert(s, now + limits::LEADER_TRANSFER_RETRY_MS);
            }
            running.insert(s, tokio::spawn(change_membership(master.clone(), change)));
        }
        for (s, epoch, addr, intent) in master.with(|st, _| st.splits_due()) {
            if running.contains_key(&s) || not_before.get(&s).is_some_and(|t| *t > now) {
                continue;
            }
            running.insert(s, tokio::spawn(split(master.clone(), s, epoch, addr, intent)));
        }
        let done: Vec<u32> = merges.iter().filter(|(_, h)| h.is_finished()).map(|(s, _)| *s).collect();
        for s in done {
            let Some(h) = merges.remove(&s) else { continue };
            let wait = match h.await {
                Ok(Ok(true)) => 0,
                // Waiting for the frozen shard's outbox: ask again soon.
                Ok(Ok(false)) => limits::MASTER_TICK_MS * 2,
                Ok(Err(e)) => {
                    tracing::info!(shard = s, error = %e, "merge step failed; retrying");
                    limits::FAILOVER_RETRY_MS
                }
                Err(_) => limits::FAILOVER_RETRY_MS,
            };
            merge_not_before.insert(s, master.now_ms() + wait);
        }
        for step in master.with(|st, _| st.merges_due()) {
            if merges.contains_key(&step.into) || merge_not_before.get(&step.into).is_some_and(|t| *t > now) {
                continue;
            }
            merges.insert(step.into, tokio::spawn(merge(master.clone(), step)));
        }
        // The merge policy: record the intent as `sutra merge` would; the step above runs it.
        if let Some((into, from, why)) = master.with(|st, now| st.merge_wanted(now, &master.membership)) {
            if !running.contains_key(&into) && !running.contains_key(&from) {
                tracing::info!(shard = into, from, reason = %why, "the merge policy merges two shards");
                let m = master.clone();
                running.insert(
                    into,
                    tokio::spawn(async move {
                        m.mutate(move |st, _| {
                            let (_, _, op) = st.start_merge(into, Some(from))?;
                            Ok(((), op))
                        })
                        .await
                        .map(|_| None)
                        .map_err(|e| e.to_string())
                    }),
                );
            }
        }
        // The split policy: record the intent as `sutra split` would, at the key that halves
        // the shard's requests (split for load) or concepts (for size); the step above runs it.
        if let Some((s, why, by_load)) = master.with(|st, now| st.split_wanted(now, &master.membership)) {
            if let std::collections::btree_map::Entry::Vacant(slot) = running.entry(s) {
                tracing::info!(shard = s, reason = %why, "the split policy splits a shard");
                let m = master.clone();
                slot.insert(tokio::spawn(async move {
                    let at = split_point(&m, s, by_load).await;
                    m.mutate(move |st, _| st.start_split(s, at)).await.map(|_| None).map_err(|e| e.to_string())
                }));
            }
        }
    }
}

/// Where `shard`'s primary would split it: the key that halves its recent requests
/// (`by_load`) or its concepts. None (the caller splits at the middle of the range) when it
/// cannot say or does not answer in time.
pub async fn split_point(master: &Master, shard: u32, by_load: bool) -> Option<u64> {
    let addr = master.with(|st, _| {
        st.map().shards.iter().find(|e| e.id.0 == shard && e.split.is_none()).map(|e| st.storage_addr(e.primary.0))
    })?;
    let deadline = Duration::from_millis(limits::REPL_RPC_DEADLINE_MS);
    let answer = tokio::time::timeout(deadline, async {
        let c = StorageClient::connect(&addr).await.ok()?.with_deadline(deadline);
        c.split_point(shard, by_load).await.ok()
    })
    .await
    .ok()??;
    answer.found.then_some(answer.at)
}

/// Has `shard`'s primary log the split the map records, then records the new shard
/// (architecture.md §9). Asking again after a lost answer or a new primary is harmless: a
/// primary whose shard already ends at the split point answers at once.
async fn split(
    master: Arc<Master>,
    shard: u32,
    epoch: u64,
    addr: String,
    intent: crate::shardmap::SplitIntent,
) -> Result<Option<u64>, String> {
    let deadline = Duration::from_millis(limits::REPL_RPC_DEADLINE_MS);
    let req = pb::SplitRequest { shard, epoch, at: intent.at, child: intent.child.0 };
    let reply = tokio::time::timeout(deadline, async {
        let c = StorageClient::connect(&addr).await.map_err(|e| e.to_string())?.with_deadline(deadline);
        c.split(req).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| format!("split of shard {shard}: no answer from its primary in time"))??;
    master.mutate(move |st, _| Ok(((), Some(st.finish_split(shard, intent)?)))).await.map_err(|e| e.to_string())?;
    tracing::info!(shard, child = intent.child.0, at = format_args!("{:#018x}", intent.at), lsn = reply.lsn, "split");
    Ok(None)
}

/// Carries a merge on (architecture.md §10): freezes the shard to absorb; once its outbox is
/// delivered, has the absorbing shard's primary copy it through its own log; then records the
/// merge. False: the frozen shard still delivers its outbox (ask again). Every step may be
/// asked again after a lost answer, a new primary or a master restart.
async fn merge(master: Arc<Master>, step: super::MergeStep) -> Result<bool, String> {
    let deadline = Duration::from_millis(limits::REPL_RPC_DEADLINE_MS);
    let (into, from) = (step.into, step.from);
    let req = pb::FreezeRequest { shard: from, epoch: step.from_epoch, into };
    let frozen = tokio::time::timeout(deadline, async {
        let c = StorageClient::connect(&step.from_addr).await.map_err(|e| e.to_string())?.with_deadline(deadline);
        c.freeze(req).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| format!("freezing shard {from}: no answer from its primary in time"))??;
    if !frozen.drained {
        tracing::debug!(shard = into, from, "merge: waiting for the frozen shard's outbox");
        return Ok(false);
    }
    let copy = Duration::from_millis(limits::MERGE_ABSORB_DEADLINE_MS);
    let req = pb::AbsorbRequest {
        shard: into,
        epoch: step.into_epoch,
        from,
        from_start: step.from_range.start,
        from_end: step.from_range.end,
        from_addr: step.from_addr.clone(),
    };
    let copied = tokio::time::timeout(copy, async {
        let c = StorageClient::connect(&step.into_addr).await.map_err(|e| e.to_string())?.with_deadline(copy);
        c.absorb(req).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| format!("shard {into} did not absorb shard {from} within {copy:?}"))??;
    master.mutate(move |st, _| Ok(((), Some(st.finish_merge(into, from)?)))).await.map_err(|e| e.to_string())?;
    tracing::info!(shard = into, from, parts = copied.parts, bytes = copied.bytes, lsn = copied.lsn, "merged");
    Ok(true)
}

/// One step of a membership change; the new epoch when it moved the shard into one.
async fn change_membership(master: Arc<Master>, change: MemberChange) -> Result<Option<u64>, String> {
    tracing::info!(?change, "membership change");
    match change {
        MemberChange::AddLearner { shard, learner, replacing } => {
            master
                .mutate(move |st, _| {
                    let epoch = st.map().shards.iter().find(|e| e.id.0 == shard).map_or(0, |e| e.epoch.0);
                    Ok(((), Some(st.set_learner(shard, Some((learner, replacing)), epoch)?)))
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(None)
        }
        MemberChange::DropLearner { shard, why } => {
            tracing::warn!(shard, reason = %why, "giving up a learner");
            master
                .mutate(move |st, _| {
                    let epoch = st.map().shards.iter().find(|e| e.id.0 == shard).map_or(0, |e| e.epoch.0);
                    Ok(((), Some(st.set_learner(shard, None, epoch)?)))
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(None)
        }
        MemberChange::Reconfigure { shard, voters } => {
            elect(master, shard, Some(voters.into_iter().map(NodeId).collect()), None).await.map(Some)
        }
        MemberChange::TransferLeader { shard, to } => {
            // Without the handover the fence would find the target behind the old primary by
            // whatever was in flight, and the election would only bump the epoch.
            match handover(&master, shard, to).await {
                Ok(true) => elect(master, shard, None, Some(NodeId(to))).await.map(Some),
                Ok(false) => {
                    tracing::info!(shard, to, "leadership transfer: the target did not catch up in time; not moving");
                    Ok(None)
                }
                Err(e) => {
                    tracing::info!(shard, to, error = %e, "leadership transfer: the primary refused the handover");
                    Ok(None)
                }
            }
        }
    }
}

/// Asks `shard`'s primary to stop taking writes until voter `to` holds its whole log; true
/// once it does (the primary takes writes again after `LEADER_HANDOVER_WAIT_MS` if no fence
/// follows).
async fn handover(master: &Master, shard: u32, to: u64) -> Result<bool, String> {
    let (epoch, addr) = master
        .with(|st, _| {
            st.map().shards.iter().find(|e| e.id.0 == shard).map(|e| (e.epoch.0, st.storage_addr(e.primary.0)))
        })
        .ok_or_else(|| format!("no shard {shard}"))?;
    let wait = Duration::from_millis(limits::LEADER_HANDOVER_WAIT_MS);
    let deadline = wait + Duration::from_millis(limits::REPL_RPC_DEADLINE_MS / 2);
    let req = pb::HandoverRequest { shard, epoch, to, wait_ms: wait.as_millis() as u64 };
    let reply = tokio::time::timeout(deadline, async {
        let c = StorageClient::connect(&addr).await.map_err(|e| e.to_string())?.with_deadline(deadline);
        c.handover(req).await.map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| "no answer in time".to_string())??;
    Ok(reply.caught_up)
}

/// One election for `shard`; returns the new epoch. With `next_voters`, the new epoch has that
/// voter set (one member added or removed): the current voters are fenced as always, and the
/// new primary is the most up-to-date fenced member of the new set. With `prefer` (a
/// leadership transfer), that member leads if its fenced log is as great as the greatest.
pub async fn elect(
    master: Arc<Master>,
    shard: u32,
    next_voters: Option<Vec<NodeId>>,
    prefer: Option<NodeId>,
) -> Result<u64, String> {
    let (entry, addrs, old_exited) = master.with(|st, _| {
        let e = st.map().shards.iter().find(|e| e.id.0 == shard).cloned();
        let addrs: BTreeMap<NodeId, String> = e
            .iter()
            .flat_map(|e| e.replicas.iter().chain(next_voters.iter().flatten()))
            .map(|r| (*r, st.storage_addr(r.0)))
            .collect();
        let exited = e.as_ref().is_some_and(|e| st.exited(e.primary.0));
        (e, addrs, exited)
    });
    let entry = entry.ok_or_else(|| format!("no shard {shard}"))?;
    let voters = next_voters.unwrap_or_else(|| entry.replicas.clone());
    let epoch = entry.epoch.0 + 1;
    let deadline = Duration::from_millis(limits::REPL_RPC_DEADLINE_MS / 2);
    // Fence everyone in parallel; go on once a majority answered and the rest had a moment
    // more (a dead node's RPC would otherwise hold the failover for its whole deadline).
    let (tx, mut rx) = tokio::sync::mpsc::channel(entry.replicas.len().max(1));
    for r in entry.replicas.iter().copied() {
        let (addr, tx) = (addrs.get(&r).cloned().unwrap_or_default(), tx.clone());
        tokio::spawn(async move {
            let fenced = tokio::time::timeout(deadline, async {
                let c = StorageClient::connect(&addr).await.map_err(|e| e.to_string())?.with_deadline(deadline);
                c.fence(shard, epoch).await.map_err(|e| e.to_string())
            })
            .await;
            let reply = match fenced {
                Ok(Ok(f)) => Some((
                    (r, EntryId { epoch: f.last_epoch, lsn: f.last_lsn }),
                    FenceAge { node: r, since_append: f.heard_append.then(|| Duration::from_millis(f.append_age_ms)) },
                )),
                _ => None,
            };
            let _ = tx.send(reply).await;
        });
    }
    drop(tx);
    let majority = entry.replicas.len() / 2 + 1;
    let mut replies = Vec::new();
    let mut ages = Vec::new();
    let mut heard = 0;
    let mut straggle_until: Option<tokio::time::Instant> = None;
    while heard < entry.replicas.len() {
        let next = match straggle_until {
            Some(t) => {
                match tokio::time::timeout(t.saturating_duration_since(tokio::time::Instant::now()), rx.recv()).await {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
            None => rx.recv().await,
        };
        let Some(reply) = next else { break };
        heard += 1;
        if let Some((r, age)) = reply {
            replies.push(r);
            ages.push(age);
        }
        if replies.len() >= majority && straggle_until.is_none() {
            // Buggify: go on with a bare majority.
            let wait = if crate::buggify!(0.3) { 0 } else { limits::FENCE_STRAGGLER_MS };
            straggle_until = Some(tokio::time::Instant::now() + Duration::from_millis(wait));
        }
    }
    // The old primary's lease is waited out on this process's lease clock.
    let fenced_at = crate::io::clock::lease_now();
    // Prefer a healthy majority (its greatest log holds every committed entry too); fall back
    // to everyone who answered.
    let healthy: Vec<(NodeId, EntryId)> = master.with(|st, _| {
        replies
            .iter()
            .copied()
            .filter(|(n, _)| matches!(st.state_of(n.0), super::NodeState::Up | super::NodeState::Draining))
            .collect()
    });
    let pick = choose_primary_among(&entry.replicas, &healthy, &voters)
        .or_else(|_| choose_primary_among(&entry.replicas, &replies, &voters))
        .map(|best| {
            // On a tie: the transfer's target, else keep the placement's primary (placement
            // spreads primaries over nodes).
            let best_log = replies.iter().find(|(n, _)| *n == best).map(|(_, l)| *l);
            let tied = |p: NodeId| voters.contains(&p) && healthy.iter().any(|(n, l)| *n == p && Some(*l) == best_log);
            if let Some(p) = prefer.filter(|p| tied(*p)) {
                p
            } else if tied(entry.primary) {
                entry.primary
            } else {
                best
            }
        })
        .map_err(|e| format!("shard {shard} epoch {epoch}: {e}"))?;
    let old_gone = entry.epoch.0 <= 1 || old_exited;
    let same = voters == entry.replicas;
    let ids: Vec<u64> = voters.iter().map(|v| v.0).collect();
    master
        .mutate(move |st, _| {
            let op = if same { st.elect(shard, pick.0, epoch)? } else { st.reconfigure(shard, pick.0, epoch, &ids)? };
            Ok(((), Some(op)))
        })
        .await
        .map_err(|e| e.to_string())?;
    let wait = lease_wait(
        Duration::from_millis(limits::LEASE_MS),
        Duration::from_millis(limits::LEASE_MARGIN_MS),
        &entry.replicas,
        entry.primary,
        &ages,
        old_gone,
        crate::io::clock::lease_now().saturating_duration_since(fenced_at),
    );
    tracing::info!(shard, epoch, primary = pick.0, wait_ms = wait.as_millis() as u64, "promoting");
    let req = pb::PromoteRequest {
        shard,
        epoch,
        node_id: pick.0,
        replicas: voters.iter().map(|r| r.0).collect(),
        replica_addrs: voters.iter().map(|r| addrs.get(r).cloned().unwrap_or_default()).collect(),
        lease_wait_ms: wait.as_millis() as u64,
    };
    // Best effort: the heartbeat's assignment carries the promotion too.
    if crate::buggify!(0.2) {
        return Ok(epoch);
    }
    let addr = addrs.get(&pick).cloned().unwrap_or_default();
    let _ = tokio::time::timeout(deadline, async {
        let c = StorageClient::connect(&addr).await.map_err(|e| e.to_string())?.with_deadline(deadline);
        c.promote(req).await.map_err(|e| e.to_string())
    })
    .await;
    Ok(epoch)
}
