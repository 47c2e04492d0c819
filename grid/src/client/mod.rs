//! The Rust client for storage nodes, used by the CLI, the simulator's workloads and the
//! benches. Every call has a deadline; connects and idempotent reads retry a bounded number of
//! times with exponential backoff. Writes are not retried here: the caller decides, since a
//! timed-out write may or may not have committed.

use std::future::Future;
use std::time::Duration;

use sutra_proto as pb;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::ids::ConceptId;
use crate::limits;
use crate::model::{Association, EdgeFilter, WriteBatch};
use crate::wire::{association_to_pb, concept_write_to_pb, filter_to_pb, id_to_pb};

mod master;
pub use master::MasterClient;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr} after {attempts} attempts: {reason}")]
    Connect { addr: String, attempts: u32, reason: String },
    #[error("{op} timed out after {ms} ms")]
    Deadline { op: &'static str, ms: u64 },
    #[error("{op} failed: {} ({:?})", .status.message(), .status.code())]
    Rpc { op: &'static str, status: Status },
}

impl ClientError {
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct StorageClient {
    inner: pb::storage_client::StorageClient<Channel>,
    deadline: Duration,
    consistency: pb::Consistency,
}

/// The one retry delay: `initial_ms` doubled per failed attempt, at most `max_ms`. Every
/// retry loop in the grid (client calls, registration, shipping, the outbox, the agent's
/// restarts) waits this, each with its own bounds.
pub fn retry_backoff(attempt: u32, initial_ms: u64, max_ms: u64) -> Duration {
    Duration::from_millis(initial_ms.saturating_mul(1 << attempt.min(16)).min(max_ms))
}

/// Between attempts to reach the master (registration, the agent, the outbox's router).
pub fn reconnect_backoff(attempt: u32) -> Duration {
    retry_backoff(attempt, limits::RPC_BACKOFF_MS_INITIAL, limits::RPC_BACKOFF_MS_INITIAL << 4)
}

fn backoff(attempt: u32) -> Duration {
    retry_backoff(attempt, limits::RPC_BACKOFF_MS_INITIAL, limits::RPC_BACKOFF_MS_INITIAL << 6)
}

impl StorageClient {
    /// Connects to `addr` ("host:port"), retrying with backoff.
    pub async fn connect(addr: &str) -> Result<StorageClient, ClientError> {
        Ok(Self::from_channel(connect_channel(addr).await?))
    }

    fn from_channel(ch: Channel) -> StorageClient {
        let inner = pb::storage_client::StorageClient::new(ch);
        #[cfg(not(madsim))]
        let inner = inner
            .max_decoding_message_size(limits::RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::RPC_MESSAGE_BYTES_MAX);
        StorageClient {
            inner,
            deadline: Duration::from_millis(limits::RPC_DEADLINE_MS),
            consistency: pb::Consistency::Eventual,
        }
    }

    /// One connection attempt: for callers that re-route on failure (a router re-reads the
    /// map instead of waiting on an address that refuses).
    pub async fn connect_once(addr: &str) -> Result<StorageClient, ClientError> {
        Ok(Self::from_channel(connect_channel_tries(addr, 1).await?))
    }

    pub fn with_deadline(mut self, d: Duration) -> StorageClient {
        self.deadline = d;
        self
    }

    /// Reads through this client go to a primary holding its lease (`Consistency::Strong`)
    /// instead of any replica.
    pub fn with_consistency(mut self, c: pb::Consistency) -> StorageClient {
        self.consistency = c;
        self
    }

    async fn once<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, ClientError> {
        once(self.deadline, op, fut).await
    }

    async fn idempotent<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, ClientError>
    where
        F: FnMut(pb::storage_client::StorageClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        idempotent(&self.inner, self.deadline, op, call).await
    }

    pub async fn write_batch(&self, shard: u32, batch: &WriteBatch) -> Result<pb::WriteBatchResponse, ClientError> {
        let req = pb::WriteBatchRequest {
            shard,
            concepts: batch.concepts.iter().map(concept_write_to_pb).collect(),
            associations: batch.associations.iter().map(association_to_pb).collect(),
            forget: batch.forget.iter().map(crate::wire::forget_to_pb).collect(),
        };
        self.once("write_batch", self.inner.clone().write_batch(req)).await
    }

    /// Delivers outbox items (ascending sequence numbers) to `shard`. Idempotent: the shard
    /// skips what it already took from `source_shard`.
    pub async fn deliver_in_edges(
        &self,
        shard: u32,
        source_shard: u32,
        items: &[(u64, Association)],
        routed: Option<(u64, u64)>,
    ) -> Result<pb::WriteBatchResponse, ClientError> {
        let req = pb::DeliverInEdgesRequest {
            shard,
            source_shard,
            associations: items.iter().map(|(_, a)| association_to_pb(a)).collect(),
            seqs: items.iter().map(|(s, _)| *s).collect(),
            routed_start: routed.map(|r| r.0),
            routed_end: routed.map(|r| r.1),
        };
        self.once("deliver_in_edges", self.inner.clone().deliver_in_edges(req)).await
    }

    pub async fn get_concepts(&self, shard: u32, ids: &[ConceptId]) -> Result<pb::GetConceptsResponse, ClientError> {
        self.get_concepts_with(shard, ids, false).await
    }

    /// `skip_vectors`: answer without the vectors (their lengths still come back).
    pub async fn get_concepts_with(
        &self,
        shard: u32,
        ids: &[ConceptId],
        skip_vectors: bool,
    ) -> Result<pb::GetConceptsResponse, ClientError> {
        let ids: Vec<pb::Id> = ids.iter().map(|i| id_to_pb(*i)).collect();
        let consistency = self.consistency as i32;
        self.idempotent("get_concepts", |mut c| {
            let req = pb::GetConceptsRequest { shard, ids: ids.clone(), consistency, skip_vectors };
            async move { c.get_concepts(req).await }
        })
        .await
    }

    pub async fn neighbors(
        &self,
        shard: u32,
        ids: &[ConceptId],
        filter: &EdgeFilter,
        limit: u32,
        with_evidence: bool,
    ) -> Result<pb::NeighborsResponse, ClientError> {
        let req = pb::NeighborsRequest {
            shard,
            ids: ids.iter().map(|i| id_to_pb(*i)).collect(),
            filter: Some(filter_to_pb(filter)),
            limit,
            with_evidence,
            consistency: self.consistency as i32,
        };
        self.idempotent("neighbors", |mut c| {
            let req = req.clone();
            async move { c.neighbors(req).await }
        })
        .await
    }

    pub async fn expand(
        &self,
        shard: u32,
        frontier: &[ConceptId],
        filter: &EdgeFilter,
        max_edges: u32,
    ) -> Result<pb::ExpandResponse, ClientError> {
        self.expand_prefetching(shard, frontier, filter, max_edges, 0).await
    }

    /// An expand that may also list up to `prefetch_levels` further levels while they stay
    /// on the shard (lists marked `prefetched`).
    pub async fn expand_prefetching(
        &self,
        shard: u32,
        frontier: &[ConceptId],
        filter: &EdgeFilter,
        max_edges: u32,
        prefetch_levels: u32,
    ) -> Result<pb::ExpandResponse, ClientError> {
        let req = pb::ExpandRequest {
            shard,
            frontier: frontier.iter().map(|i| id_to_pb(*i)).collect(),
            filter: Some(filter_to_pb(filter)),
            max_edges,
            consistency: self.consistency as i32,
            prefetch_levels,
        };
        self.idempotent("expand", |mut c| {
            let req = req.clone();
            async move { c.expand(req).await }
        })
        .await
    }

    pub async fn search(
        &self,
        shard: u32,
        vector: &[f32],
        k: u32,
        exact: bool,
    ) -> Result<pb::SearchResponse, ClientError> {
        let req = pb::SearchRequest { shard, vector: vector.to_vec(), k, consistency: self.consistency as i32, exact };
        self.idempotent("search", |mut c| {
            let req = req.clone();
            async move { c.search(req).await }
        })
        .await
    }

    pub async fn create_shard(&self, shard: u32, key_start: u64, key_end: u64) -> Result<pb::ShardInfo, ClientError> {
        self.idempotent("create_shard", |mut c| async move {
            c.create_shard(pb::CreateShardRequest { shard, key_start, key_end }).await
        })
        .await
    }

    pub async fn shard_info(&self, shard: u32) -> Result<pb::ShardInfo, ClientError> {
        self.idempotent("get_shard_info", |mut c| async move {
            c.get_shard_info(pb::ShardInfoRequest { shard, with_digest: false }).await
        })
        .await
    }

    /// Shard info with the applied state's digest (a full scan on the node).
    pub async fn shard_digest(&self, shard: u32) -> Result<pb::ShardInfo, ClientError> {
        self.once(
            "get_shard_info",
            self.inner.clone().get_shard_info(pb::ShardInfoRequest { shard, with_digest: true }),
        )
        .await
    }

    pub async fn fence(&self, shard: u32, epoch: u64) -> Result<pb::FenceResponse, ClientError> {
        self.once("fence", self.inner.clone().fence(pb::FenceRequest { shard, epoch })).await
    }

    pub async fn handover(&self, req: pb::HandoverRequest) -> Result<pb::HandoverResponse, ClientError> {
        self.once("handover", self.inner.clone().handover(req)).await
    }

    pub async fn split(&self, req: pb::SplitRequest) -> Result<pb::SplitResponse, ClientError> {
        self.once("split", self.inner.clone().split(req)).await
    }

    pub async fn split_point(&self, shard: u32, by_load: bool) -> Result<pb::SplitPointResponse, ClientError> {
        self.once("split_point", self.inner.clone().split_point(pb::SplitPointRequest { shard, by_load })).await
    }

    pub async fn freeze(&self, req: pb::FreezeRequest) -> Result<pb::FreezeResponse, ClientError> {
        self.once("freeze", self.inner.clone().freeze(req)).await
    }

    pub async fn merge_part(&self, req: pb::MergePartRequest) -> Result<pb::MergePartResponse, ClientError> {
        self.once("merge_part", self.inner.clone().merge_part(req)).await
    }

    pub async fn absorb(&self, req: pb::AbsorbRequest) -> Result<pb::AbsorbResponse, ClientError> {
        self.once("absorb", self.inner.clone().absorb(req)).await
    }

    pub async fn promote(&self, req: pb::PromoteRequest) -> Result<pb::PromoteResponse, ClientError> {
        self.once("promote", self.inner.clone().promote(req)).await
    }

    pub async fn append(&self, req: pb::AppendRequest) -> Result<pb::AppendResponse, ClientError> {
        self.once("append", self.inner.clone().append(req)).await
    }

    pub async fn install_snapshot(&self, chunk: pb::SnapshotChunk) -> Result<pb::AppendResponse, ClientError> {
        self.once("install_snapshot", self.inner.clone().install_snapshot(chunk)).await
    }

    pub async fn list_shards(&self) -> Result<pb::ListShardsResponse, ClientError> {
        self.idempotent("list_shards", |mut c| async move { c.list_shards(pb::ListShardsRequest {}).await }).await
    }

    pub async fn checkpoint(&self, shard: u32) -> Result<pb::ShardInfo, ClientError> {
        self.once("checkpoint", self.inner.clone().checkpoint(pb::CheckpointRequest { shard })).await
    }
}

/// A channel to `addr` ("host:port"), connecting with bounded retries and backoff.
pub(crate) async fn connect_channel(addr: &str) -> Result<Channel, ClientError> {
    connect_channel_tries(addr, limits::RPC_RETRIES_MAX).await
}

async fn connect_channel_tries(addr: &str, tries: u32) -> Result<Channel, ClientError> {
    let deadline = Duration::from_millis(limits::RPC_DEADLINE_MS);
    let url = format!("http://{addr}");
    let endpoint = Endpoint::from_shared(url)
        .map_err(|e| ClientError::Connect { addr: addr.into(), attempts: 0, reason: e.to_string() })?
        .connect_timeout(deadline);
    let mut last = String::new();
    for attempt in 0..tries {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
        match tokio::time::timeout(deadline, endpoint.connect()).await {
            Ok(Ok(ch)) => return Ok(ch),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "connect timed out".into(),
        }
    }
    Err(ClientError::Connect { addr: addr.into(), attempts: tries, reason: last })
}

/// One call under `deadline`.
pub(crate) async fn once<T>(
    deadline: Duration,
    op: &'static str,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(ClientError::Rpc { op, status }),
        Err(_) => Err(ClientError::Deadline { op, ms: deadline.as_millis() as u64 }),
    }
}

/// A call that is safe to repeat, retried on Unavailable / deadline with backoff.
pub(crate) async fn idempotent<C: Clone, T, F, Fut>(
    client: &C,
    deadline: Duration,
    op: &'static str,
    mut call: F,
) -> Result<T, ClientError>
where
    F: FnMut(C) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut attempt = 0;
    loop {
        match once(deadline, op, call(client.clone())).await {
            Err(e) if attempt + 1 < limits::RPC_RETRIES_MAX && retryable(&e) => {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn retryable(e: &ClientError) -> bool {
    matches!(e, ClientError::Deadline { .. })
        || matches!(e, ClientError::Rpc { status, .. } if status.code() == Code::Unavailable && !status.message().contains("not serving"))
}
