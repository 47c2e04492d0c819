//! The simulated side of the `Spawner` seam: an agent's storage processes are madsim nodes.
//!
//! Each slot of a machine has one madsim node, created on first spawn and restarted (after a
//! kill) on every later one, so its IP and its `SimDisk` stay put across restarts. The node's
//! task holds an [`ExitGuard`]: when the process returns, or madsim kills the node and drops
//! its task, the guard tells the agent's `Child::wait` how it ended, which is how the agent
//! sees exits without polling.

use std::sync::{Arc, Mutex};

use madsim::runtime::Handle;
use madsim::task::NodeId as SimNodeId;
use sutra_grid::io::{Child, Disk, ExitFuture, ProcessSpec, SimDisk, Spawner};
use sutra_grid::node::cluster::{run_storage_process, Membership};
use sutra_grid::node::NodeConfig;
use tokio::sync::oneshot;

use crate::plan;

/// One storage slot of a simulated machine.
pub struct Slot {
    pub disk: SimDisk,
    pub node: Mutex<Option<SimNodeId>>,
    /// The exit channel and generation of the incarnation about to start (taken by the
    /// node's init).
    next: NextSpawn,
}

/// The exit channel and generation handed from `spawn` to the node's init.
type NextSpawn = Arc<Mutex<Option<(oneshot::Sender<String>, u64)>>>;

/// A simulated machine's storage slots; outlives any one agent incarnation.
pub struct Machine {
    pub index: u8,
    pub slots: Vec<Slot>,
    pub config: NodeConfig,
}

impl Machine {
    pub fn new(index: u8, slots: u8, config: NodeConfig, disk_seed: impl Fn(u8) -> u64) -> Arc<Machine> {
        Arc::new(Machine {
            index,
            slots: (0..slots)
                .map(|s| Slot {
                    disk: SimDisk::new(disk_seed(s)),
                    node: Mutex::new(None),
                    next: Arc::new(Mutex::new(None)),
                })
                .collect(),
            config,
        })
    }

    pub fn node(&self, slot: u8) -> Option<SimNodeId> {
        *self.slots.get(slot as usize)?.node.lock().unwrap()
    }
}

/// Sends "killed" if dropped before the process returned on its own.
struct ExitGuard(Option<oneshot::Sender<String>>);

impl ExitGuard {
    fn exited(mut self, how: String) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(how);
        }
    }
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send("killed by signal 9".into());
        }
    }
}

pub struct SimSpawner {
    pub machine: Arc<Machine>,
}

struct SimChild {
    node: SimNodeId,
    exit: Option<oneshot::Receiver<String>>,
}

impl Child for SimChild {
    fn wait(&mut self) -> ExitFuture<'_> {
        Box::pin(async move {
            match self.exit.take() {
                Some(rx) => rx.await.unwrap_or_else(|_| "killed by signal 9".into()),
                None => "already reaped".into(),
            }
        })
    }

    fn terminate(&mut self) {
        Handle::current().kill(self.node);
    }

    fn kill(&mut self) {
        Handle::current().kill(self.node);
    }
}

impl Spawner for SimSpawner {
    fn spawn(&self, spec: &ProcessSpec) -> Result<Box<dyn Child>, String> {
        let h = Handle::current();
        let slot = self.machine.slots.get(spec.slot as usize).ok_or_else(|| format!("no slot {}", spec.slot))?;
        let (tx, rx) = oneshot::channel();
        *slot.next.lock().unwrap() = Some((tx, spec.generation));
        let mut node = slot.node.lock().unwrap();
        let id = match *node {
            Some(id) => {
                // A process left over from a dead agent incarnation: replace it, as the real
                // spawner's PDEATHSIG would have.
                if !h.is_exit(id) {
                    h.kill(id);
                }
                h.restart(id);
                id
            }
            None => {
                let (disk, config, next) = (slot.disk.clone(), self.machine.config.clone(), slot.next.clone());
                let membership = Membership {
                    master: spec.master.clone(),
                    agent: spec.agent.clone(),
                    slot: spec.slot,
                    storage_addr: spec.storage_addr,
                    gossip_addr: spec.gossip_addr,
                    generation: 0,
                };
                let id = h
                    .create_node()
                    .name(plan::process_name(self.machine.index, spec.slot as u8))
                    .ip(spec.storage_addr.ip())
                    .init(move || {
                        let (tx, generation) = next.lock().unwrap().take().unzip();
                        let guard = ExitGuard(tx);
                        let disk: Arc<dyn Disk> = Arc::new(disk.clone());
                        let config = config.clone();
                        let membership = Membership { generation: generation.unwrap_or(0), ..membership.clone() };
                        async move {
                            let r = run_storage_process(disk, config, membership, std::future::pending()).await;
                            guard.exited(match r {
                                Ok(()) => "exited with code 0".into(),
                                Err(e) => format!("exited with code 1: {e}"),
                            });
                        }
                    })
                    .build()
                    .id();
                *node = Some(id);
                id
            }
        };
        Ok(Box::new(SimChild { node: id, exit: Some(rx) }))
    }
}
