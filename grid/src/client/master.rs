//! The client for the master's control-plane service (agents, nodes, CLI, simulator).

use std::time::Duration;

use sutra_proto as pb;
use tonic::transport::Channel;

use super::{connect_channel, idempotent, once, ClientError};
use crate::limits;

#[derive(Clone)]
pub struct MasterClient {
    inner: pb::master_client::MasterClient<Channel>,
    deadline: Duration,
}

impl MasterClient {
    pub async fn connect(addr: &str) -> Result<MasterClient, ClientError> {
        let ch = connect_channel(addr).await?;
        Ok(MasterClient {
            inner: pb::master_client::MasterClient::new(ch),
            deadline: Duration::from_millis(limits::RPC_DEADLINE_MS),
        })
    }

    pub fn with_deadline(mut self, d: Duration) -> MasterClient {
        self.deadline = d;
        self
    }

    pub async fn register_agent(&self, name: &str, processes: u32) -> Result<u64, ClientError> {
        let req = pb::RegisterAgentRequest { name: name.into(), processes };
        idempotent(&self.inner, self.deadline, "register_agent", |mut c| {
            let req = req.clone();
            async move { c.register_agent(req).await }
        })
        .await
        .map(|r| r.agent_id)
    }

    /// One attempt: heartbeats are periodic, so a lost one is simply followed by the next.
    pub async fn agent_heartbeat(&self, name: &str, processes: Vec<pb::ProcessStatus>) -> Result<(), ClientError> {
        let req = pb::AgentHeartbeatRequest { name: name.into(), processes };
        once(self.deadline, "agent_heartbeat", self.inner.clone().agent_heartbeat(req)).await.map(|_| ())
    }

    pub async fn report_exit(&self, agent: &str, slot: u32, generation: u64, reason: &str) -> Result<u64, ClientError> {
        let req = pb::ExitReport { agent: agent.into(), slot, reason: reason.into(), generation };
        idempotent(&self.inner, self.deadline, "report_exit", |mut c| {
            let req = req.clone();
            async move { c.report_exit(req).await }
        })
        .await
        .map(|r| r.node_id)
    }

    pub async fn register_node(
        &self,
        agent: &str,
        slot: u32,
        storage_addr: &str,
        gossip_addr: &str,
        generation: u64,
    ) -> Result<pb::RegisterNodeResponse, ClientError> {
        let req = pb::RegisterNodeRequest {
            agent: agent.into(),
            slot,
            storage_addr: storage_addr.into(),
            gossip_addr: gossip_addr.into(),
            generation,
        };
        idempotent(&self.inner, self.deadline, "register_node", |mut c| {
            let req = req.clone();
            async move { c.register_node(req).await }
        })
        .await
    }

    /// One attempt, like agent heartbeats.
    pub async fn heartbeat(&self, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse, ClientError> {
        once(self.deadline, "heartbeat", self.inner.clone().heartbeat(req)).await
    }

    pub async fn shard_map(&self) -> Result<pb::ShardMap, ClientError> {
        idempotent(&self.inner, self.deadline, "get_shard_map", |mut c| async move {
            c.get_shard_map(pb::GetShardMapRequest {}).await
        })
        .await
    }

    /// Idempotent on the master's side: the same request again returns the same map.
    pub async fn init(&self, shards: u32, replication: u32) -> Result<pb::ShardMap, ClientError> {
        idempotent(&self.inner, self.deadline, "init", |mut c| async move {
            c.init(pb::InitRequest { shards, replication }).await
        })
        .await
    }

    pub async fn status(&self) -> Result<pb::StatusResponse, ClientError> {
        idempotent(&self.inner, self.deadline, "status", |mut c| async move { c.status(pb::StatusRequest {}).await })
            .await
    }

    pub async fn rebalance(&self) -> Result<pb::RebalanceResponse, ClientError> {
        idempotent(&self.inner, self.deadline, "rebalance", |mut c| async move {
            c.rebalance(pb::RebalanceRequest {}).await
        })
        .await
    }

    /// Idempotent: the same split again answers the one in flight (or done).
    pub async fn split_shard(&self, shard: u32, at: Option<u64>) -> Result<pb::SplitShardResponse, ClientError> {
        idempotent(&self.inner, self.deadline, "split_shard", |mut c| async move {
            c.split_shard(pb::SplitShardRequest { shard, at }).await
        })
        .await
    }

    pub async fn merge_shard(&self, shard: u32, with: Option<u32>) -> Result<pb::MergeShardResponse, ClientError> {
        idempotent(&self.inner, self.deadline, "merge_shard", |mut c| async move {
            c.merge_shard(pb::MergeShardRequest { shard, with }).await
        })
        .await
    }

    pub async fn drain(&self, node_id: u64, drain: bool) -> Result<pb::NodeStatus, ClientError> {
        idempotent(&self.inner, self.deadline, "drain", |mut c| async move {
            c.drain(pb::DrainRequest { node_id, drain }).await
        })
        .await
    }
}
