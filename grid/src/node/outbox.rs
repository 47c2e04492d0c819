//! Delivers each primary's outbox (in-edges owed to other shards, `store::links`) to the
//! target shards, then logs which items arrived so every replica drops them. Runs in every
//! grid storage process; replicas that are not primary skip their shards.

use std::sync::Arc;
use std::time::Duration;

use super::StorageNode;
use crate::client::MasterClient;
use crate::limits;
use crate::query::Router;

/// Runs until the task is dropped.
pub async fn run(node: Arc<StorageNode>, master: String) {
    let router = connect(&master).await;
    let mut failures = 0u32;
    loop {
        let mut busy = false;
        let mut failed = false;
        for (id, _) in node.list() {
            match deliver_once(&node, &router, id).await {
                Ok(n) => busy |= n > 0,
                Err(e) => {
                    tracing::debug!(shard = id, error = %e, "outbox delivery failed; retrying");
                    failed = true;
                }
            }
        }
        let pause = if failed {
            // The map may have moved (or been empty when this process started).
            let _ = router.refresh().await;
            failures += 1;
            crate::client::retry_backoff(failures, limits::RPC_BACKOFF_MS_INITIAL, limits::REPL_HEARTBEAT_MS * 2)
                .as_millis() as u64
        } else {
            failures = 0;
            if busy {
                0
            } else {
                limits::OUTBOX_POLL_MS
            }
        };
        if failed || busy {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        } else {
            // Idle: the next write that owes in-edges wakes the task early.
            let _ = tokio::time::timeout(Duration::from_millis(pause), node.outbox_wake.notified()).await;
        }
    }
}

async fn connect(master: &str) -> Arc<Router> {
    let deadline = Duration::from_millis(limits::OUTBOX_RPC_DEADLINE_MS);
    let mut attempt = 0u32;
    loop {
        let r = match MasterClient::connect(master).await {
            Ok(c) => Router::new(c.with_deadline(deadline), deadline).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match r {
            Ok(r) => return r,
            Err(e) => {
                tracing::debug!(error = %e, "outbox: cannot reach the master; retrying");
                tokio::time::sleep(crate::client::reconnect_backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// One round for shard `id` if this node leads it: returns the items delivered.
async fn deliver_once(node: &StorageNode, router: &Arc<Router>, id: u32) -> Result<usize, String> {
    let Ok(shard) = node.shard(id) else { return Ok(0) };
    if shard.replication().primary_epoch == 0 {
        return Ok(0);
    }
    let items = shard.outbox(limits::OUTBOX_BATCH_MAX).map_err(|e| e.to_string())?;
    if items.is_empty() {
        return Ok(0);
    }
    let delivered = router.deliver_in_edges(id, items).await.map_err(|e| e.to_string())?;
    if crate::buggify!(0.1) {
        return Err("buggify: the delivery's acknowledgement was lost".into());
    }
    // Bounded: one shard whose log cannot commit must not stop this node delivering the
    // others' outboxes. Items not yet marked are delivered again and skipped by the targets.
    let deadline = Duration::from_millis(limits::OUTBOX_MARK_DEADLINE_MS);
    match tokio::time::timeout(deadline, shard.mark_delivered(&delivered)).await {
        Ok(r) => r.map_err(|e| e.to_string())?,
        Err(_) => return Err("recording the delivery did not commit in time".into()),
    };
    Ok(delivered.len())
}
