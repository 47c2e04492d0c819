//! The agent: one per machine (fdbmonitor's job). It registers the machine with the master,
//! starts each storage process through the [`Spawner`] seam, restarts a crashed one with
//! exponential backoff, reports every exit to the master at once (the fast path to marking
//! the node Down), heartbeats its processes' status, and stops its children on shutdown.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sutra_proto as pb;

use crate::client::{ClientError, MasterClient};
use crate::io::{ProcessSpec, Spawner};
use crate::limits;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Stable machine name (the master derives the agent id from it).
    pub name: String,
    pub master: String,
    pub processes: Vec<ProcessSpec>,
}

type Statuses = Arc<Mutex<Vec<pb::ProcessStatus>>>;

/// An exit to report: (slot, generation, how it ended).
type Exit = (u32, u64, String);

/// A spawn's generation: the clock in ms, and always above the previous one, so it grows
/// across agent restarts too (a clock stepping back only costs the fast path: the master then
/// falls back to its heartbeat timeout).
fn next_generation(previous: u64) -> u64 {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    now.max(previous + 1)
}

/// Runs the agent until `shutdown` resolves, then stops every child and returns.
pub async fn run_agent(
    spawner: Arc<dyn Spawner>,
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    if config.processes.len() > limits::AGENT_PROCESSES_MAX as usize {
        return Err(format!(
            "{} processes; an agent supervises at most {}",
            config.processes.len(),
            limits::AGENT_PROCESSES_MAX
        ));
    }
    let statuses: Statuses = Arc::new(Mutex::new(
        config.processes.iter().map(|p| pb::ProcessStatus { slot: p.slot, ..Default::default() }).collect(),
    ));
    let (exits_tx, exits_rx) = tokio::sync::mpsc::unbounded_channel::<Exit>();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut supervisors = Vec::new();
    for (i, spec) in config.processes.iter().enumerate() {
        supervisors.push(tokio::spawn(supervise(
            spawner.clone(),
            spec.clone(),
            i,
            statuses.clone(),
            exits_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(exits_tx);
    let talk = tokio::spawn(talk_to_master(config.clone(), statuses.clone(), exits_rx));
    shutdown.await;
    tracing::info!(agent = %config.name, "stopping children");
    let _ = stop_tx.send(true);
    for s in supervisors {
        let _ = s.await;
    }
    talk.abort();
    Ok(())
}

fn restart_backoff(crashes: u32) -> Duration {
    crate::client::retry_backoff(
        crashes,
        limits::AGENT_RESTART_BACKOFF_MS_INITIAL,
        limits::AGENT_RESTART_BACKOFF_MS_MAX,
    )
}

/// Keeps one process running: spawn, wait, report the exit, back off, spawn again.
async fn supervise(
    spawner: Arc<dyn Spawner>,
    spec: ProcessSpec,
    index: usize,
    statuses: Statuses,
    exits: tokio::sync::mpsc::UnboundedSender<Exit>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let set = |f: &dyn Fn(&mut pb::ProcessStatus)| {
        if let Some(st) = statuses.lock().unwrap_or_else(|p| p.into_inner()).get_mut(index) {
            f(st);
        }
    };
    let mut crashes = 0u32;
    let mut spec = spec;
    loop {
        let started = tokio::time::Instant::now();
        spec.generation = next_generation(spec.generation);
        let how = match spawner.spawn(&spec) {
            Err(e) => format!("could not start: {e}"),
            Ok(mut child) => {
                set(&|st| st.running = true);
                tracing::info!(slot = spec.slot, "storage process started");
                let ended = tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => None,
                    how = child.wait() => Some(how),
                };
                match ended {
                    Some(how) => how,
                    None => {
                        child.terminate();
                        let grace = Duration::from_millis(limits::AGENT_STOP_GRACE_MS);
                        if tokio::time::timeout(grace, child.wait()).await.is_err() {
                            child.kill();
                            let _ = child.wait().await;
                        }
                        set(&|st| st.running = false);
                        return;
                    }
                }
            }
        };
        tracing::warn!(slot = spec.slot, exit = %how, "storage process exited");
        set(&|st| {
            st.running = false;
            st.restarts += 1;
            st.last_exit = how.clone();
        });
        let _ = exits.send((spec.slot, spec.generation, how));
        if started.elapsed() >= Duration::from_millis(limits::AGENT_STABLE_AFTER_MS) {
            crashes = 0;
        }
        let wait = restart_backoff(crashes);
        crashes = crashes.saturating_add(1);
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn connect(master: &str) -> MasterClient {
    let mut attempt = 0u32;
    loop {
        match MasterClient::connect(master).await {
            Ok(c) => return c.with_deadline(Duration::from_millis(limits::HEARTBEAT_INTERVAL_MS * 2)),
            Err(e) => {
                tracing::warn!(error = %e, "agent cannot reach the master; retrying");
                tokio::time::sleep(crate::client::reconnect_backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Registers, then heartbeats and forwards exit reports the moment they happen.
async fn talk_to_master(
    config: AgentConfig,
    statuses: Statuses,
    mut exits: tokio::sync::mpsc::UnboundedReceiver<Exit>,
) {
    let mut client = connect(&config.master).await;
    let mut registered = false;
    let mut failures = 0u32;
    let interval = Duration::from_millis(limits::HEARTBEAT_INTERVAL_MS);
    let mut next = tokio::time::Instant::now();
    loop {
        if !registered {
            match client.register_agent(&config.name, config.processes.len() as u32).await {
                Ok(id) => {
                    tracing::info!(agent = %config.name, id, "agent registered");
                    registered = true;
                }
                Err(e) => tracing::warn!(error = %e, "agent registration failed; retrying"),
            }
        }
        tokio::select! {
            biased;
            exit = exits.recv() => {
                let Some((slot, generation, how)) = exit else { return };
                // Reported on its own task, so a slow master never delays the next report.
                let (c, name) = (client.clone(), config.name.clone());
                tokio::spawn(async move {
                    if let Err(e) = c.report_exit(&name, slot, generation, &how).await {
                        tracing::warn!(error = %e, slot, "exit report failed; the heartbeat timeout will catch it");
                    }
                });
            }
            _ = tokio::time::sleep_until(next) => {
                next += interval;
                let processes = statuses.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match client.agent_heartbeat(&config.name, processes).await {
                    Ok(()) => failures = 0,
                    Err(ClientError::Rpc { status, .. }) if status.code() == tonic::Code::NotFound => registered = false,
                    Err(_) => {
                        failures += 1;
                        if failures >= 3 {
                            client = connect(&config.master).await;
                            failures = 0;
                        }
                    }
                }
                next = next.max(tokio::time::Instant::now());
            }
        }
    }
}
