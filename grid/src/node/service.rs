//! The Storage gRPC service. Request limits are enforced here, in handler code, because
//! madsim-tonic ignores tower layers (MADSIM.md trap 8).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use sutra_proto as pb;
use tonic::{Request, Response, Status};

use super::{NodeError, Promotion, ShardError, ShardSlot, StorageNode};
use crate::ids::NodeId;
use crate::limits;
use crate::model::Consistency;
use crate::replication::{Append, EntryId};
use crate::store::KeyRange;
use crate::wire::*;

pub struct StorageService {
    pub node: Arc<StorageNode>,
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        match e {
            NodeError::ShardNotFound(_) => Status::not_found(e.to_string()),
            NodeError::ShardExists(_) => Status::already_exists(e.to_string()),
            NodeError::TooManyShards(_) => Status::resource_exhausted(e.to_string()),
            NodeError::Invalid(_) => Status::invalid_argument(e.to_string()),
            NodeError::Io(_) => Status::internal(e.to_string()),
            NodeError::Shard(s) => s.into(),
        }
    }
}

impl From<ShardError> for Status {
    fn from(e: ShardError) -> Status {
        match e {
            ShardError::Rejected(_) => Status::invalid_argument(e.to_string()),
            ShardError::NotServing { .. } => Status::unavailable(e.to_string()),
            ShardError::Storage { .. } => Status::internal(e.to_string()),
            ShardError::NotPrimary { .. } => Status::failed_precondition(e.to_string()),
            ShardError::Busy { .. } => Status::resource_exhausted(e.to_string()),
            ShardError::Unknown { .. } => Status::aborted(e.to_string()),
            ShardError::WrongShard { .. } => Status::failed_precondition(e.to_string()),
        }
    }
}

fn consistency_from_pb(c: i32) -> Consistency {
    if c == pb::Consistency::Strong as i32 {
        Consistency::Strong
    } else {
        Consistency::Eventual
    }
}

fn too_many(what: &str, n: usize, max: usize) -> Result<(), Status> {
    if n > max {
        return Err(Status::invalid_argument(format!("{n} {what} in one request; at most {max} allowed")));
    }
    Ok(())
}

fn clamp_limit(asked: u32, default: usize, max: usize) -> usize {
    if asked == 0 {
        default
    } else {
        (asked as usize).min(max)
    }
}

pub(crate) fn shard_info(id: u32, slot: &ShardSlot) -> pb::ShardInfo {
    match slot {
        ShardSlot::Serving(s) => {
            let fault = s.fault();
            let fault_free = fault.is_none();
            let r = s.replication();
            let range = s.range();
            let st = s.read().ok();
            let (concepts, out_edges, in_edges) = st.as_ref().map(|st| st.counts()).unwrap_or_default();
            let outbox = st.as_ref().map(|st| &st.links().outbox);
            let outbox_items = outbox.map_or(0, |o| o.len() as u64);
            let outbox_oldest_lsn = outbox.and_then(|o| o.keys().next()).map_or(0, |s| crate::store::links::lsn_of(*s));
            pb::ShardInfo {
                shard: id,
                key_start: range.start,
                key_end: range.end,
                last_lsn: st.as_ref().map(|st| st.applied_lsn()).unwrap_or(0),
                checkpoint_lsn: st.as_ref().map(|st| st.checkpoint_lsn()).unwrap_or(0),
                concepts,
                out_edges,
                in_edges,
                serving: fault.is_none(),
                fault: fault.unwrap_or_default(),
                primary_epoch: r.primary_epoch,
                promised_epoch: r.promised,
                commit_lsn: r.commit,
                last_epoch: r.last.epoch,
                outbox_items,
                outbox_oldest_lsn,
                state_digest: 0,
                leading: r.leading && fault_free,
                bytes: st.as_ref().map_or(0, |st| st.approx_bytes()),
                requests: s.requests(),
            }
        }
        ShardSlot::Failed { range, reason } => pb::ShardInfo {
            shard: id,
            key_start: range.start,
            key_end: range.end,
            serving: false,
            fault: reason.clone(),
            ..Default::default()
        },
    }
}

/// Refuses a read that names a key this replica does not own: after a split, a router with
/// the old map must learn it, not read a miss.
fn owned(shard: u32, st: &crate::store::ShardStore, ids: &[pb::Id]) -> Result<(), Status> {
    match ids.iter().map(id_from_pb).find(|id| !st.range.contains(*id)) {
        Some(id) => Err(super::shard::wrong_shard(shard, st.range, id).into()),
        None => Ok(()),
    }
}

/// Neighbour lists for many vertices under one read lock, bounded per vertex and in total.
#[allow(clippy::too_many_arguments)]
fn neighbor_lists(
    node: &StorageNode,
    shard: u32,
    consistency: i32,
    ids: &[pb::Id],
    filter: Option<pb::EdgeFilter>,
    per_vertex: usize,
    total_max: usize,
    with_evidence: bool,
) -> Result<(Vec<pb::NeighborList>, u64, bool), Status> {
    let filter = filter_from_pb(filter).map_err(Status::invalid_argument)?;
    let shard = node.shard(shard)?;
    let st = shard.read_at(consistency_from_pb(consistency))?;
    owned(shard.id.0, &st, ids)?;
    shard.note_keys(st.range, ids.iter().map(|i| id_from_pb(i).placement_key()));
    let (mut lists, mut scanned, mut total, mut truncated_any) = (Vec::with_capacity(ids.len()), 0u64, 0usize, false);
    for pid in ids {
        let id = id_from_pb(pid);
        let mut edges = Vec::new();
        let mut truncated = false;
        st.for_each_edge(id, &filter, |e| {
            scanned += 1;
            if edges.len() >= per_vertex || total >= total_max {
                truncated = true;
                return false;
            }
            edges.push(edge_to_pb(&e, with_evidence));
            total += 1;
            true
        });
        truncated_any |= truncated;
        lists.push(pb::NeighborList { id: Some(*pid), edges, truncated, missing: !st.knows(id), prefetched: false });
    }
    Ok((lists, scanned, truncated_any))
}

#[tonic::async_trait]
impl pb::storage_server::Storage for StorageService {
    async fn write_batch(
        &self,
        req: Request<pb::WriteBatchRequest>,
    ) -> Result<Response<pb::WriteBatchResponse>, Status> {
        let req = req.into_inner();
        too_many("items", req.concepts.len() + req.associations.len() + req.forget.len(), limits::BATCH_ITEMS_MAX)?;
        let shard = self.node.shard(req.shard)?;
        let (batch, errors) = batch_from_pb(req.concepts, req.associations, req.forget);
        let w = shard.write(batch, errors).await?;
        if w.owes_in_edges {
            self.node.outbox_wake.notify_one();
        }
        let concept_ids = w.concept_ids.into_iter().map(id_to_pb).collect();
        Ok(Response::new(pb::WriteBatchResponse {
            lsn: w.lsn,
            concept_ids,
            owes_in_edges: w.owes_in_edges,
            key_start: w.range.start,
            key_end: w.range.end,
            forgotten: w.forgotten,
        }))
    }

    async fn deliver_in_edges(
        &self,
        req: Request<pb::DeliverInEdgesRequest>,
    ) -> Result<Response<pb::WriteBatchResponse>, Status> {
        let req = req.into_inner();
        too_many("associations", req.associations.len(), limits::BATCH_ITEMS_MAX)?;
        if req.seqs.len() != req.associations.len() {
            return Err(Status::invalid_argument(format!(
                "{} sequence numbers for {} associations",
                req.seqs.len(),
                req.associations.len()
            )));
        }
        let shard = self.node.shard(req.shard)?;
        let (batch, errors) = batch_from_pb(Vec::new(), req.associations, Vec::new());
        if let Some(e) = errors.first() {
            return Err(Status::invalid_argument(format!("associations[{}]: {}", e.index, e.reason)));
        }
        let items = req.seqs.into_iter().zip(batch.associations).collect();
        let routed = match (req.routed_start, req.routed_end) {
            (Some(start), Some(end)) => Some(KeyRange { start, end }),
            _ => None,
        };
        let lsn = shard.deliver_in_edges(req.source_shard, items, routed).await?;
        Ok(Response::new(pb::WriteBatchResponse { lsn, ..Default::default() }))
    }

    async fn get_concepts(
        &self,
        req: Request<pb::GetConceptsRequest>,
    ) -> Result<Response<pb::GetConceptsResponse>, Status> {
        let req = req.into_inner();
        too_many("ids", req.ids.len(), limits::GET_IDS_MAX)?;
        let shard = self.node.shard(req.shard)?;
        let st = shard.read_at(consistency_from_pb(req.consistency))?;
        owned(shard.id.0, &st, &req.ids)?;
        shard.note_keys(st.range, req.ids.iter().map(|i| id_from_pb(i).placement_key()));
        let mut resp = pb::GetConceptsResponse::default();
        for pid in req.ids {
            match st.concept(id_from_pb(&pid)) {
                Some(c) => {
                    let mut c = concept_to_pb(c);
                    if req.skip_vectors {
                        c.vector = Vec::new();
                    }
                    resp.found.push(c)
                }
                None => resp.missing.push(pid),
            }
        }
        Ok(Response::new(resp))
    }

    async fn neighbors(&self, req: Request<pb::NeighborsRequest>) -> Result<Response<pb::NeighborsResponse>, Status> {
        let req = req.into_inner();
        too_many("ids", req.ids.len(), limits::NEIGHBORS_IDS_MAX)?;
        let per = clamp_limit(req.limit, limits::NEIGHBORS_PER_VERTEX_DEFAULT, limits::NEIGHBORS_PER_VERTEX_MAX);
        let (lists, _, _) = neighbor_lists(
            &self.node,
            req.shard,
            req.consistency,
            &req.ids,
            req.filter,
            per,
            limits::EXPAND_EDGES_MAX,
            req.with_evidence,
        )?;
        Ok(Response::new(pb::NeighborsResponse { lists }))
    }

    async fn expand(&self, req: Request<pb::ExpandRequest>) -> Result<Response<pb::ExpandResponse>, Status> {
        let req = req.into_inner();
        too_many("frontier vertices", req.frontier.len(), limits::EXPAND_FRONTIER_MAX)?;
        let total = clamp_limit(req.max_edges, limits::EXPAND_EDGES_DEFAULT, limits::EXPAND_EDGES_MAX);
        let (mut lists, edges_scanned, truncated) = neighbor_lists(
            &self.node,
            req.shard,
            req.consistency,
            &req.frontier,
            req.filter.clone(),
            usize::MAX,
            total,
            false,
        )?;
        let levels = (req.prefetch_levels as usize).min(limits::EXPAND_PREFETCH_LEVELS);
        if levels > 0 && !truncated {
            let filter = filter_from_pb(req.filter.clone()).map_err(Status::invalid_argument)?;
            let frontier: Vec<_> = req.frontier.iter().map(id_from_pb).collect();
            let extra: Vec<pb::Id> = {
                let shard = self.node.shard(req.shard)?;
                let st = shard.read_at(consistency_from_pb(req.consistency))?;
                st.local_levels(&frontier, &filter, levels, limits::EXPAND_PREFETCH_VERTICES_MAX)
            }
            .into_iter()
            .map(id_to_pb)
            .collect();
            let used: usize = lists.iter().map(|l| l.edges.len()).sum();
            if !extra.is_empty() && used < total {
                let (more, _, cut) = neighbor_lists(
                    &self.node,
                    req.shard,
                    req.consistency,
                    &extra,
                    req.filter,
                    usize::MAX,
                    total - used,
                    false,
                )?;
                // Prefetching is an optimisation: a level that does not fit is simply not sent.
                if !cut {
                    lists.extend(more.into_iter().map(|l| pb::NeighborList { prefetched: true, ..l }));
                }
            }
        }
        Ok(Response::new(pb::ExpandResponse { lists, edges_scanned, truncated }))
    }

    async fn search(&self, req: Request<pb::SearchRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        let req = req.into_inner();
        if req.vector.is_empty() || req.vector.len() > limits::VECTOR_DIM_MAX {
            return Err(Status::invalid_argument(format!(
                "a search vector needs 1 to {} components, not {}",
                limits::VECTOR_DIM_MAX,
                req.vector.len()
            )));
        }
        let k = clamp_limit(req.k, limits::VECTOR_SEARCH_K_DEFAULT, limits::VECTOR_SEARCH_K_MAX);
        let shard = self.node.shard(req.shard)?;
        let st = shard.read_at(consistency_from_pb(req.consistency))?;
        shard.searched();
        let hits = st
            .nearest(&req.vector, k, req.exact)
            .into_iter()
            .map(|(score, mut c)| {
                // The caller asked for neighbours, not for the vectors back.
                c.vector = Vec::new();
                pb::SearchHit { concept: Some(concept_to_pb(c)), score }
            })
            .collect();
        let ix = st.vector_index_stats();
        Ok(Response::new(pb::SearchResponse {
            hits,
            key_start: st.range.start,
            key_end: st.range.end,
            index_vectors: ix.indexed,
            index_pending: ix.pending,
            index_bytes: ix.bytes,
        }))
    }

    async fn create_shard(&self, req: Request<pb::CreateShardRequest>) -> Result<Response<pb::ShardInfo>, Status> {
        let req = req.into_inner();
        let range = KeyRange { start: req.key_start, end: req.key_end };
        let shard = self.node.create_shard(req.shard, range, false).await?;
        Ok(Response::new(shard_info(req.shard, &ShardSlot::Serving(shard))))
    }

    async fn get_shard_info(&self, req: Request<pb::ShardInfoRequest>) -> Result<Response<pb::ShardInfo>, Status> {
        let req = req.into_inner();
        let slot = self.node.slot(req.shard)?;
        let mut info = shard_info(req.shard, &slot);
        if let (true, ShardSlot::Serving(s)) = (req.with_digest, &slot) {
            info.state_digest = s.state_digest()?;
        }
        Ok(Response::new(info))
    }

    async fn fence(&self, req: Request<pb::FenceRequest>) -> Result<Response<pb::FenceResponse>, Status> {
        let req = req.into_inner();
        let f = self.node.shard(req.shard)?.fence(req.epoch).await.map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::FenceResponse {
            last_epoch: f.last.epoch,
            last_lsn: f.last.lsn,
            append_age_ms: f.append_age.map_or(0, |d| d.as_millis() as u64),
            heard_append: f.append_age.is_some(),
        }))
    }

    async fn handover(&self, req: Request<pb::HandoverRequest>) -> Result<Response<pb::HandoverResponse>, Status> {
        let req = req.into_inner();
        let wait = std::time::Duration::from_millis(req.wait_ms.min(limits::LEADER_HANDOVER_WAIT_MS_MAX));
        let caught_up = self
            .node
            .shard(req.shard)?
            .handover(req.epoch, NodeId(req.to), wait)
            .await
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::HandoverResponse { caught_up }))
    }

    async fn split(&self, req: Request<pb::SplitRequest>) -> Result<Response<pb::SplitResponse>, Status> {
        let req = req.into_inner();
        let lsn = self.node.shard(req.shard)?.split(req.epoch, req.at, req.child).await?;
        // Open the new shard's replica now rather than at the next heartbeat.
        self.node.adopt_split_shards().await;
        Ok(Response::new(pb::SplitResponse { lsn }))
    }

    async fn split_point(
        &self,
        req: Request<pb::SplitPointRequest>,
    ) -> Result<Response<pb::SplitPointResponse>, Status> {
        let req = req.into_inner();
        let at = self.node.shard(req.shard)?.split_point(req.by_load)?;
        Ok(Response::new(pb::SplitPointResponse { found: at.is_some(), at: at.unwrap_or(0) }))
    }

    async fn freeze(&self, req: Request<pb::FreezeRequest>) -> Result<Response<pb::FreezeResponse>, Status> {
        let req = req.into_inner();
        let (lsn, drained) = self.node.shard(req.shard)?.freeze(req.epoch, req.into).await?;
        if !drained {
            // The outbox is all that is left to do before the copy.
            self.node.outbox_wake.notify_one();
        }
        Ok(Response::new(pb::FreezeResponse { lsn, drained }))
    }

    async fn merge_part(&self, req: Request<pb::MergePartRequest>) -> Result<Response<pb::MergePartResponse>, Status> {
        let req = req.into_inner();
        let bytes_max = (req.bytes_max as usize).clamp(1, limits::MERGE_PART_BYTES_MAX);
        let part = self.node.shard(req.shard)?.merge_part(req.from_key, bytes_max)?;
        Ok(Response::new(pb::MergePartResponse {
            image: part.image.into(),
            last: part.next.is_none(),
            next_key: part.next.unwrap_or(0),
            key_start: part.range.start,
            key_end: part.range.end,
            marks: part.marks.into(),
        }))
    }

    async fn absorb(&self, req: Request<pb::AbsorbRequest>) -> Result<Response<pb::AbsorbResponse>, Status> {
        let req = req.into_inner();
        let shard = self.node.shard(req.shard)?;
        let right = KeyRange { start: req.from_start, end: req.from_end };
        let (lsn, parts, bytes) = super::merge::absorb(&shard, req.epoch, req.from, right, &req.from_addr).await?;
        Ok(Response::new(pb::AbsorbResponse { lsn, parts, bytes }))
    }

    async fn promote(&self, req: Request<pb::PromoteRequest>) -> Result<Response<pb::PromoteResponse>, Status> {
        let req = req.into_inner();
        if req.replicas.len() != req.replica_addrs.len() || req.replicas.is_empty() {
            return Err(Status::invalid_argument("promote needs one address per replica"));
        }
        let pr = Promotion {
            epoch: req.epoch,
            me: NodeId(req.node_id),
            voters: req.replicas.iter().map(|n| NodeId(*n)).zip(req.replica_addrs).collect(),
            lease_wait: std::time::Duration::from_millis(req.lease_wait_ms.min(limits::LEASE_MS * 2)),
        };
        if !pr.voters.iter().any(|(n, _)| *n == pr.me) {
            return Err(Status::invalid_argument("the new primary must be one of the replicas"));
        }
        self.node.shard(req.shard)?.promote(pr).await.map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::PromoteResponse {}))
    }

    async fn append(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let req = req.into_inner();
        too_many("entries", req.entries.len(), limits::REPL_APPEND_ENTRIES_MAX as usize)?;
        let prev = EntryId { epoch: req.prev_epoch, lsn: req.prev_lsn };
        for (i, e) in req.entries.iter().enumerate() {
            if e.lsn != prev.lsn + 1 + i as u64 || e.epoch > req.epoch {
                return Err(Status::invalid_argument("append entries must follow prev, in order, within the epoch"));
            }
        }
        let ids = req.entries.iter().map(|e| EntryId { epoch: e.epoch, lsn: e.lsn }).collect();
        let payloads = req.entries.into_iter().map(|e| Arc::new(e.payload.to_vec())).collect();
        let a = Append { epoch: req.epoch, prev, entries: ids, commit: req.commit };
        let r = self.node.shard(req.shard)?.append(a, payloads).await.map_err(Status::unavailable)?;
        Ok(Response::new(super::ship::reply_to_pb(&r)))
    }

    async fn install_snapshot(&self, req: Request<pb::SnapshotChunk>) -> Result<Response<pb::AppendResponse>, Status> {
        let c = req.into_inner();
        let at = EntryId { epoch: c.lsn_epoch, lsn: c.lsn };
        let shard = self.node.shard(c.shard)?;
        let r = shard
            .snapshot_chunk(c.epoch, at, c.offset, c.total_bytes, c.data.to_vec(), c.done)
            .await
            .map_err(Status::unavailable)?;
        Ok(Response::new(super::ship::reply_to_pb(&r)))
    }

    async fn list_shards(
        &self,
        _req: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsResponse>, Status> {
        let shards = self.node.list().iter().map(|(id, slot)| shard_info(*id, slot)).collect();
        Ok(Response::new(pb::ListShardsResponse { shards }))
    }

    async fn checkpoint(&self, req: Request<pb::CheckpointRequest>) -> Result<Response<pb::ShardInfo>, Status> {
        let id = req.into_inner().shard;
        self.node.shard(id)?.checkpoint().await?;
        Ok(Response::new(shard_info(id, &self.node.slot(id)?)))
    }
}

/// The service with real-mode message limits (madsim passes objects and has no such knobs).
#[cfg(not(madsim))]
fn service(node: Arc<StorageNode>) -> pb::storage_server::StorageServer<StorageService> {
    pb::storage_server::StorageServer::new(StorageService { node })
        .max_decoding_message_size(limits::RPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(limits::RPC_MESSAGE_BYTES_MAX)
}

/// Serves the Storage service on `addr` until `shutdown` resolves. The binary and the
/// simulator both boot a node through this function.
pub async fn serve(
    node: Arc<StorageNode>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    #[cfg(not(madsim))]
    let svc = service(node);
    #[cfg(madsim)]
    let svc = pb::storage_server::StorageServer::new(StorageService { node });
    tonic::transport::Server::builder().add_service(svc).serve_with_shutdown(addr, shutdown).await
}

/// Real mode: serves on a listener the caller already bound, so a taken port fails before
/// anything starts and port 0 works.
#[cfg(not(madsim))]
pub async fn serve_listener(
    node: Arc<StorageNode>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(service(node))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
