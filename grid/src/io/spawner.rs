//! The `Spawner` seam: how an agent starts storage processes. Real mode runs the same `sutra`
//! binary as a child process ([`ProcessSpawner`]); the simulator starts madsim nodes
//! (`sutra_sim::spawner`). The agent's supervision logic sees only these traits.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// One storage process of a machine, as its agent runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    pub slot: u32,
    pub master: String,
    pub agent: String,
    pub storage_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    /// Data directory of this process (real mode); the simulator keeps a disk per slot.
    pub data_dir: String,
    pub vector_dim: usize,
    /// Set by the agent for each spawn; grows across spawns and agent restarts.
    pub generation: u64,
}

pub type ExitFuture<'a> = Pin<Box<dyn Future<Output = String> + Send + 'a>>;

/// A running process.
pub trait Child: Send {
    /// Resolves when the process has exited, describing how ("exited with code 1",
    /// "killed by signal 9").
    fn wait(&mut self) -> ExitFuture<'_>;
    /// Asks the process to stop (SIGTERM); `wait` then resolves.
    fn terminate(&mut self);
    /// Stops it now (SIGKILL).
    fn kill(&mut self);
}

pub trait Spawner: Send + Sync + 'static {
    fn spawn(&self, spec: &ProcessSpec) -> Result<Box<dyn Child>, String>;
}

/// Real mode: children are `sutra storage … --master …` processes of the current executable.
/// They die with the agent (PR_SET_PDEATHSIG on Linux), so a crashed agent's restart starts a
/// clean set rather than fighting orphans for their ports.
#[cfg(not(madsim))]
pub struct ProcessSpawner {
    pub exe: std::path::PathBuf,
}

#[cfg(not(madsim))]
struct ProcessChild(tokio::process::Child);

#[cfg(not(madsim))]
impl Child for ProcessChild {
    fn wait(&mut self) -> ExitFuture<'_> {
        Box::pin(async move {
            match self.0.wait().await {
                Ok(st) => describe_exit(st),
                Err(e) => format!("could not wait for it: {e}"),
            }
        })
    }

    fn terminate(&mut self) {
        if let Some(pid) = self.0.id() {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[cfg(not(madsim))]
fn describe_exit(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "exited".into(),
    }
}

#[cfg(not(madsim))]
impl Spawner for ProcessSpawner {
    fn spawn(&self, spec: &ProcessSpec) -> Result<Box<dyn Child>, String> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("storage")
            .args(["--data-dir", &spec.data_dir])
            .args(["--listen", &spec.storage_addr.to_string()])
            .args(["--gossip", &spec.gossip_addr.to_string()])
            .args(["--master", &spec.master])
            .args(["--agent", &spec.agent])
            .args(["--slot", &spec.slot.to_string()])
            .args(["--vector-dim", &spec.vector_dim.to_string()])
            .args(["--generation", &spec.generation.to_string()])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        Ok(Box::new(ProcessChild(child)))
    }
}
