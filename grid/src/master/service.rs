//! The Master gRPC service. Each handler is a thin shell over [`Master`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use sutra_proto as pb;
use tonic::{Request, Response, Status};

use super::{Master, MasterError, MasterFailure};
use crate::limits;

pub struct MasterService {
    pub master: Arc<Master>,
}

impl From<MasterFailure> for Status {
    fn from(e: MasterFailure) -> Status {
        match &e {
            MasterFailure::State(MasterError::UnknownNode(_) | MasterError::UnknownAgent(_)) => {
                Status::not_found(e.to_string())
            }
            MasterFailure::State(MasterError::AlreadyInitialised { .. }) => Status::already_exists(e.to_string()),
            MasterFailure::State(MasterError::Placement(_)) => Status::failed_precondition(e.to_string()),
            MasterFailure::State(MasterError::Full(_)) => Status::resource_exhausted(e.to_string()),
            MasterFailure::State(MasterError::Invalid(_)) => Status::invalid_argument(e.to_string()),
            MasterFailure::State(MasterError::Busy(_)) => Status::failed_precondition(e.to_string()),
            MasterFailure::Log(_) => Status::unavailable(e.to_string()),
        }
    }
}

impl From<MasterError> for Status {
    fn from(e: MasterError) -> Status {
        MasterFailure::State(e).into()
    }
}

#[tonic::async_trait]
impl pb::master_server::Master for MasterService {
    async fn register_agent(
        &self,
        req: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::RegisterAgentResponse>, Status> {
        let req = req.into_inner();
        if req.processes > limits::AGENT_PROCESSES_MAX {
            return Err(Status::invalid_argument(format!(
                "{} processes; an agent supervises at most {}",
                req.processes,
                limits::AGENT_PROCESSES_MAX
            )));
        }
        let agent_id = self.master.mutate(move |s, now| s.register_agent(&req.name, now)).await?;
        Ok(Response::new(pb::RegisterAgentResponse { agent_id }))
    }

    async fn agent_heartbeat(
        &self,
        req: Request<pb::AgentHeartbeatRequest>,
    ) -> Result<Response<pb::AgentHeartbeatResponse>, Status> {
        let req = req.into_inner();
        self.master.with(|s, now| s.agent_heartbeat(&req.name, req.processes, now))?;
        Ok(Response::new(pb::AgentHeartbeatResponse {}))
    }

    async fn report_exit(&self, req: Request<pb::ExitReport>) -> Result<Response<pb::ExitReportResponse>, Status> {
        let req = req.into_inner();
        let reason: String = req.reason.chars().take(limits::LABEL_BYTES_MAX).collect();
        let id = self.master.with(|s, now| s.report_exit(&req.agent, req.slot, req.generation, &reason, now));
        Ok(Response::new(pb::ExitReportResponse { node_id: id.unwrap_or(0) }))
    }

    async fn register_node(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let req = req.into_inner();
        let (node_id, peers) = self
            .master
            .mutate(move |s, now| {
                let (id, op) =
                    s.register_node(&req.agent, req.slot, &req.storage_addr, &req.gossip_addr, req.generation, now)?;
                Ok(((id, s.peers()), op))
            })
            .await?;
        Ok(Response::new(pb::RegisterNodeResponse { node_id, peers }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let r = self.master.with(|s, now| {
            if let Err(MasterError::UnknownNode(_)) =
                s.heartbeat(req.node_id, &req.unreachable, &req.shards, req.generation, now)
            {
                return pb::HeartbeatResponse { reregister: true, ..Default::default() };
            }
            let version = s.map().version;
            let peers_total = s.meta().nodes.len() as u64;
            pb::HeartbeatResponse {
                map_version: version,
                assignments: if req.map_version != version { s.assignments(req.node_id) } else { Vec::new() },
                peers: if req.peers_known != peers_total { s.peers() } else { Vec::new() },
                reregister: false,
                retired: s.retired(req.node_id),
            }
        });
        Ok(Response::new(r))
    }

    async fn get_shard_map(&self, _req: Request<pb::GetShardMapRequest>) -> Result<Response<pb::ShardMap>, Status> {
        Ok(Response::new(self.master.with(|s, _| s.map_pb())))
    }

    async fn init(&self, req: Request<pb::InitRequest>) -> Result<Response<pb::ShardMap>, Status> {
        let req = req.into_inner();
        let map = self
            .master
            .mutate(move |s, _| {
                let op = s.init(req.shards, req.replication)?;
                Ok(((), op))
            })
            .await
            .map(|()| self.master.with(|s, _| s.map_pb()))?;
        Ok(Response::new(map))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.master.with(|s, now| s.status(now))))
    }

    async fn rebalance(&self, _: Request<pb::RebalanceRequest>) -> Result<Response<pb::RebalanceResponse>, Status> {
        let enabled = self.master.membership.rebalance;
        let (planned, in_flight) = self.master.with(|s, now| s.rebalance_plan(now, &self.master.membership));
        Ok(Response::new(pb::RebalanceResponse { enabled, planned, in_flight }))
    }

    async fn split_shard(
        &self,
        req: Request<pb::SplitShardRequest>,
    ) -> Result<Response<pb::SplitShardResponse>, Status> {
        let req = req.into_inner();
        // Without a point, the key that halves the shard's concepts (its primary says), unless
        // a split is already in flight (asked again, it answers that one).
        let busy = self.master.with(|s, _| s.map().shards.iter().any(|e| e.id.0 == req.shard && e.split.is_some()));
        let at = match req.at {
            None if !busy => super::failover::split_point(&self.master, req.shard, false).await,
            at => at,
        };
        let (intent, started) = self
            .master
            .mutate(move |s, _| {
                let (intent, op) = s.start_split(req.shard, at)?;
                let started = op.is_some();
                Ok(((intent, started), op))
            })
            .await?;
        Ok(Response::new(pb::SplitShardResponse { at: intent.at, child: intent.child.0, started }))
    }

    async fn merge_shard(
        &self,
        req: Request<pb::MergeShardRequest>,
    ) -> Result<Response<pb::MergeShardResponse>, Status> {
        let req = req.into_inner();
        let (into, from, started) = self
            .master
            .mutate(move |s, _| {
                let (into, from, op) = s.start_merge(req.shard, req.with)?;
                let started = op.is_some();
                Ok(((into, from, started), op))
            })
            .await?;
        Ok(Response::new(pb::MergeShardResponse { into, from, started }))
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        let req = req.into_inner();
        let id = req.node_id;
        self.master.mutate(move |s, _| Ok(((), Some(s.drain(req.node_id, req.drain)?)))).await?;
        let st = self.master.with(|s, now| s.status(now));
        let node = st.nodes.into_iter().find(|n| n.node_id == id).ok_or_else(|| Status::not_found("node vanished"))?;
        Ok(Response::new(node))
    }
}

/// Resolves when `shutdown` does or the metadata log fails (the master is fail-stop).
async fn stopped(master: Arc<Master>, shutdown: impl Future<Output = ()>) {
    tokio::select! {
        biased;
        _ = shutdown => {}
        _ = master.failure.notified() => {}
    }
}

/// Runs `serving` with node states re-evaluated and failovers run in the background.
async fn with_ticks<T>(master: &Arc<Master>, serving: impl Future<Output = T>) -> T {
    let ticks = crate::io::AbortOnDrop(tokio::spawn(master.clone().run_ticks()));
    let failovers = crate::io::AbortOnDrop(tokio::spawn(super::failover::run_failovers(master.clone())));
    let r = serving.await;
    drop((ticks, failovers));
    r
}

/// Serves the Master service on `addr` until `shutdown` resolves or the metadata log fails,
/// re-evaluating node states in the background. The binary and the simulator both boot a
/// master through this function.
pub async fn serve(
    master: Arc<Master>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let svc = pb::master_server::MasterServer::new(MasterService { master: master.clone() });
    let stop = stopped(master.clone(), shutdown);
    with_ticks(&master, tonic::transport::Server::builder().add_service(svc).serve_with_shutdown(addr, stop)).await
}

/// Real mode: serves on a listener the caller already bound (a taken port fails early).
#[cfg(not(madsim))]
pub async fn serve_listener(
    master: Arc<Master>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let svc = pb::master_server::MasterServer::new(MasterService { master: master.clone() });
    let stop = stopped(master.clone(), shutdown);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    with_ticks(
        &master,
        tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(incoming, stop),
    )
    .await
}
