//! An in-memory disk with crash semantics, for the simulator (madsim's fs has none).
//!
//! Each file keeps its bytes and how many of them are durable; each directory keeps its
//! current and its durable entries. `crash()` is what a power cut does: unsynced bytes are
//! dropped, kept, or torn (a random prefix, possibly ending in garbage), and unsynced
//! directory changes are kept or reverted, every choice drawn from the seeded RNG. Handles
//! opened before a crash stop working, like file descriptors of a killed process.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng as _;

use super::{parent_dir, AppendFile, Disk, Mapped, Rng};

/// Faults a scenario can turn on; all default to off.
#[derive(Clone, Debug)]
pub struct SimDiskFaults {
    /// Chance that one fsync fails with EIO.
    pub fsync_error_probability: f64,
    /// Chance that one read or map returns the data with one bit flipped.
    pub read_bitflip_probability: f64,
    /// Total bytes the disk holds; appends past it fail with "no space left".
    pub capacity_bytes: u64,
    /// Latency added to every fsync.
    pub sync_latency: Duration,
}

impl Default for SimDiskFaults {
    fn default() -> Self {
        SimDiskFaults {
            fsync_error_probability: 0.0,
            read_bitflip_probability: 0.0,
            capacity_bytes: u64::MAX,
            sync_latency: Duration::ZERO,
        }
    }
}

struct Inode {
    data: Vec<u8>,
    durable_len: usize,
}

struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    /// Bumped by every crash; handles from an older generation are dead.
    generation: u64,
    faults: SimDiskFaults,
    failing_syncs: u32,
    rng: Rng,
    /// Counters a test can read to prove a fault really fired.
    stats: SimDiskStats,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimDiskStats {
    pub syncs: u64,
    pub sync_errors: u64,
    pub bitflips: u64,
    pub crashes: u64,
    pub torn_files: u64,
    pub dropped_bytes: u64,
}

#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

fn err(kind: io::ErrorKind, msg: &str) -> io::Error {
    io::Error::new(kind, msg.to_string())
}

impl State {
    fn used_bytes(&self) -> u64 {
        self.inodes.values().map(|i| i.data.len() as u64).sum()
    }
    fn maybe_flip(&mut self, mut v: Vec<u8>) -> Vec<u8> {
        if !v.is_empty() && self.faults.read_bitflip_probability > 0.0 {
            let p = self.faults.read_bitflip_probability;
            if self.rng.random_bool(p.min(1.0)) {
                // Half the flips land in the last 256 bytes: where a torn write would be, so a
                // reader that takes a bad read for a torn tail gets the chance to be wrong.
                let tail = v.len().saturating_sub(256);
                let at = if self.rng.random_bool(0.5) {
                    self.rng.random_range(tail..v.len())
                } else {
                    self.rng.random_range(0..v.len())
                };
                let bit = self.rng.random_range(0..8);
                v[at] ^= 1 << bit;
                self.stats.bitflips += 1;
            }
        }
        v
    }
    fn lookup(&self, path: &str) -> io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| err(io::ErrorKind::NotFound, path))
    }
    fn gc(&mut self) {
        let live: std::collections::HashSet<u64> =
            self.names.values().chain(self.durable_names.values()).copied().collect();
        self.inodes.retain(|ino, _| live.contains(ino));
    }
}

impl SimDisk {
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(State {
                inodes: HashMap::new(),
                next_ino: 1,
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                generation: 0,
                faults: SimDiskFaults::default(),
                failing_syncs: 0,
                rng: super::seeded_rng(seed),
                stats: SimDiskStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another simulated task panicked; the state is still whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_faults(&self, faults: SimDiskFaults) {
        self.lock().faults = faults;
    }

    /// The next `n` fsyncs fail with EIO.
    pub fn fail_next_syncs(&self, n: u32) {
        self.lock().failing_syncs = n;
    }

    /// Bytes held by every file, durable or not.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    pub fn faults(&self) -> SimDiskFaults {
        self.lock().faults.clone()
    }

    pub fn stats(&self) -> SimDiskStats {
        self.lock().stats.clone()
    }

    /// What a power cut does to unsynced data; see the module doc.
    pub fn crash(&self) {
        let mut s = self.lock();
        let s = &mut *s;
        s.generation += 1;
        s.stats.crashes += 1;
        let mut inos: Vec<u64> = s.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(node) = s.inodes.get_mut(&ino) else {
                continue;
            };
            let len = node.data.len();
            if node.durable_len < len {
                let keep = match s.rng.random_range(0..3u8) {
                    0 => node.durable_len,
                    1 => {
                        s.stats.torn_files += 1;
                        s.rng.random_range(node.durable_len..=len)
                    }
                    _ => len,
                };
                s.stats.dropped_bytes += (len - keep) as u64;
                node.data.truncate(keep);
                // A torn sector may end in garbage rather than stop cleanly.
                if keep > node.durable_len && s.rng.random_bool(0.25) {
                    let from = keep.saturating_sub(16).max(node.durable_len);
                    for b in &mut node.data[from..keep] {
                        *b = s.rng.random();
                    }
                }
            }
            node.durable_len = node.data.len();
        }
        // Directory changes not yet synced: per directory, all kept or all reverted.
        let mut dirs: Vec<String> =
            s.names.keys().chain(s.durable_names.keys()).map(|p| parent_dir(p).to_string()).collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            let cur: Vec<(String, u64)> =
                s.names.iter().filter(|(p, _)| parent_dir(p) == dir).map(|(p, i)| (p.clone(), *i)).collect();
            let dur: Vec<(String, u64)> =
                s.durable_names.iter().filter(|(p, _)| parent_dir(p) == dir).map(|(p, i)| (p.clone(), *i)).collect();
            if cur != dur && s.rng.random_bool(0.5) {
                for (p, _) in &cur {
                    s.names.remove(p);
                }
                s.names.extend(dur);
            }
        }
        s.durable_names = s.names.clone();
        s.gc();
    }

    fn new_handle(&self, ino: u64, generation: u64) -> Box<dyn AppendFile> {
        Box::new(SimFile { disk: self.clone(), ino, generation })
    }
}

struct SimFile {
    disk: SimDisk,
    ino: u64,
    generation: u64,
}

impl SimFile {
    fn check<'a>(&self, s: &'a mut State) -> io::Result<&'a mut Inode> {
        if s.generation != self.generation {
            return Err(err(io::ErrorKind::Other, "stale file handle after crash"));
        }
        s.inodes.get_mut(&self.ino).ok_or_else(|| err(io::ErrorKind::NotFound, "file removed"))
    }
}

impl AppendFile for SimFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut s = self.disk.lock();
        if s.used_bytes() + data.len() as u64 > s.faults.capacity_bytes {
            return Err(err(io::ErrorKind::StorageFull, "no space left on device"));
        }
        self.check(&mut s)?.data.extend_from_slice(data);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.disk.lock();
        self.check(&mut s)?;
        s.stats.syncs += 1;
        let p = s.faults.fsync_error_probability;
        let fail = if s.failing_syncs > 0 {
            s.failing_syncs -= 1;
            true
        } else {
            p > 0.0 && s.rng.random_bool(p.min(1.0))
        };
        if fail {
            s.stats.sync_errors += 1;
            // Like Linux after a failed writeback: the dirty data may be gone and the error is
            // reported once. Callers must treat this as fatal.
            return Err(err(io::ErrorKind::Other, "fsync: input/output error"));
        }
        let node = self.check(&mut s)?;
        node.durable_len = node.data.len();
        Ok(())
    }
    fn len(&self) -> u64 {
        let mut s = self.disk.lock();
        self.check(&mut s).map(|n| n.data.len() as u64).unwrap_or(0)
    }
}

impl Disk for SimDisk {
    fn open_append(&self, path: &str) -> io::Result<Box<dyn AppendFile>> {
        let mut s = self.lock();
        let ino = match s.names.get(path) {
            Some(i) => *i,
            None => {
                let ino = s.next_ino;
                s.next_ino += 1;
                s.inodes.insert(ino, Inode { data: Vec::new(), durable_len: 0 });
                s.names.insert(path.to_string(), ino);
                ino
            }
        };
        let g = s.generation;
        drop(s);
        Ok(self.new_handle(ino, g))
    }
    fn create(&self, path: &str) -> io::Result<Box<dyn AppendFile>> {
        let mut s = self.lock();
        let ino = s.next_ino;
        s.next_ino += 1;
        s.inodes.insert(ino, Inode { data: Vec::new(), durable_len: 0 });
        s.names.insert(path.to_string(), ino);
        s.gc();
        let g = s.generation;
        drop(s);
        Ok(self.new_handle(ino, g))
    }
    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        let mut s = self.lock();
        let ino = s.lookup(path)?;
        let data = s.inodes[&ino].data.clone();
        Ok(s.maybe_flip(data))
    }
    fn map(&self, path: &str) -> io::Result<Mapped> {
        Ok(Mapped::from_vec(self.read(path)?))
    }
    fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.lookup(path)?;
        let node = s.inodes.get_mut(&ino).ok_or_else(|| err(io::ErrorKind::NotFound, path))?;
        node.data.truncate(len as usize);
        node.durable_len = node.durable_len.min(node.data.len());
        Ok(())
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.lookup(from)?;
        s.names.remove(from);
        s.names.insert(to.to_string(), ino);
        s.gc();
        Ok(())
    }
    fn remove(&self, path: &str) -> io::Result<()> {
        let mut s = self.lock();
        s.lookup(path)?;
        s.names.remove(path);
        s.gc();
        Ok(())
    }
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let s = self.lock();
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let mut out: Vec<String> = Vec::new();
        for p in s.names.keys() {
            if let Some(rest) = p.strip_prefix(&prefix) {
                let first = rest.split('/').next().unwrap_or(rest);
                if out.last().map(|l| l != first).unwrap_or(true) {
                    out.push(first.to_string());
                }
            }
        }
        out.dedup();
        Ok(out)
    }
    fn create_dir_all(&self, _dir: &str) -> io::Result<()> {
        // Directories exist implicitly as path prefixes.
        Ok(())
    }
    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        let mut s = self.lock();
        let s = &mut *s;
        s.durable_names.retain(|p, _| parent_dir(p) != dir);
        for (p, i) in s.names.iter() {
            if parent_dir(p) == dir {
                s.durable_names.insert(p.clone(), *i);
            }
        }
        s.gc();
        Ok(())
    }
    fn exists(&self, path: &str) -> bool {
        self.lock().names.contains_key(path)
    }
    fn sync_latency(&self) -> Duration {
        self.lock().faults.sync_latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_bytes_survive_every_crash_and_unsynced_may_not() {
        for seed in 0..200 {
            let d = SimDisk::new(seed);
            let mut f = d.create("a/f").unwrap();
            f.append(b"durable").unwrap();
            f.sync().unwrap();
            d.sync_dir("a").unwrap();
            f.append(b"-pending").unwrap();
            d.crash();
            let got = d.read("a/f").unwrap();
            assert!(got.starts_with(b"durable"), "seed {seed}: {got:?}");
            assert!(got.len() <= b"durable-pending".len());
            assert!(f.append(b"x").is_err(), "handles die with the crash");
        }
    }

    #[test]
    fn unsynced_directory_entries_can_vanish() {
        let vanished = (0..100).filter(|seed| {
            let d = SimDisk::new(*seed);
            let mut f = d.create("dir/new").unwrap();
            f.append(b"x").unwrap();
            f.sync().unwrap();
            d.crash();
            !d.exists("dir/new")
        });
        assert!(vanished.count() > 10);
    }

    #[test]
    fn injected_faults_fire() {
        let d = SimDisk::new(1);
        let mut f = d.create("f").unwrap();
        d.fail_next_syncs(1);
        assert!(f.sync().is_err());
        assert!(f.sync().is_ok());
        d.set_faults(SimDiskFaults { capacity_bytes: 4, ..Default::default() });
        assert_eq!(f.append(b"12345").unwrap_err().kind(), io::ErrorKind::StorageFull);
        d.set_faults(SimDiskFaults { read_bitflip_probability: 1.0, ..Default::default() });
        f.append(b"abcd").unwrap();
        assert_ne!(d.read("f").unwrap(), b"abcd");
        assert_eq!(d.stats().bitflips, 1);
    }
}
