//! The seams to the world. Everything the grid does to a disk goes through [`Disk`], so the
//! simulator can substitute [`SimDisk`], which models what a real disk does at a crash.

pub mod background;
pub mod buggify;
pub mod clock;
mod real_disk;
mod sim_disk;
mod spawner;

pub use real_disk::RealDisk;
pub use sim_disk::{SimDisk, SimDiskFaults};
#[cfg(not(madsim))]
pub use spawner::ProcessSpawner;
pub use spawner::{Child, ExitFuture, ProcessSpec, Spawner};

use std::io;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

/// A read-only view of a whole file: an mmap in real mode, a copy in simulation.
#[derive(Clone)]
pub struct Mapped(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl Mapped {
    pub fn from_vec(v: Vec<u8>) -> Mapped {
        Mapped(Arc::new(v))
    }
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

/// A file opened for appending. Bytes are durable only after `sync` returns Ok.
pub trait AppendFile: Send {
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// fdatasync. An error is fatal for whoever owns the file (fsyncgate): the page cache can
    /// no longer be trusted, so callers must stop using the data rather than retry.
    fn sync(&mut self) -> io::Result<()>;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Paths are relative to the disk's root and use '/' separators.
pub trait Disk: Send + Sync + 'static {
    /// Opens for appending, creating the file if needed (the name is durable after `sync_dir`).
    fn open_append(&self, path: &str) -> io::Result<Box<dyn AppendFile>>;
    /// Creates or truncates, then opens for appending.
    fn create(&self, path: &str) -> io::Result<Box<dyn AppendFile>>;
    fn read(&self, path: &str) -> io::Result<Vec<u8>>;
    fn map(&self, path: &str) -> io::Result<Mapped>;
    /// Truncates and makes the new length durable.
    fn truncate(&self, path: &str, len: u64) -> io::Result<()>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    fn remove(&self, path: &str) -> io::Result<()>;
    /// File names (not paths) directly inside `dir`; empty when it does not exist.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    fn create_dir_all(&self, dir: &str) -> io::Result<()>;
    /// Makes creates, renames and removes inside `dir` durable.
    fn sync_dir(&self, dir: &str) -> io::Result<()>;
    fn exists(&self, path: &str) -> bool;
    /// Extra latency the simulator injects per fsync; zero for a real disk.
    fn sync_latency(&self) -> Duration {
        Duration::ZERO
    }
}

/// Writes `data` to `path` atomically: temp file, fsync, rename, directory fsync.
pub fn write_atomic(disk: &dyn Disk, dir: &str, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = format!("{dir}/{name}.tmp");
    let mut f = disk.create(&tmp)?;
    f.append(data)?;
    f.sync()?;
    drop(f);
    disk.rename(&tmp, &format!("{dir}/{name}"))?;
    disk.sync_dir(dir)
}

/// Directory part of a '/'-separated path ("" for a bare name).
pub fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

/// A seeded, deterministic RNG: every random choice in simulation derives from the seed.
pub type Rng = rand_chacha::ChaCha8Rng;

pub fn seeded_rng(seed: u64) -> Rng {
    use rand::SeedableRng;
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

/// Aborts a task when dropped, so helper tasks die with their owner.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs blocking disk work (write + fsync) off the async workers in real mode. Inside madsim
/// there are no OS threads (MADSIM.md trap 6), so it runs inline and the simulated disk adds its
/// latency separately.
pub async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    #[cfg(not(madsim))]
    {
        match tokio::task::spawn_blocking(f).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    #[cfg(madsim)]
    {
        f()
    }
}
