//! The real disk: std fs, fdatasync on files and fsync on directories, memmap2 views.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{AppendFile, Disk, Mapped};

pub struct RealDisk {
    root: PathBuf,
}

impl RealDisk {
    pub fn new(root: impl Into<PathBuf>) -> io::Result<RealDisk> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(RealDisk { root })
    }

    fn path(&self, p: &str) -> io::Result<PathBuf> {
        if p.split('/').any(|c| c == "..") || p.starts_with('/') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("path escapes the data dir: {p}")));
        }
        Ok(if p.is_empty() { self.root.clone() } else { self.root.join(p) })
    }
}

struct RealFile {
    file: File,
    len: u64,
}

impl AppendFile for RealFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn len(&self) -> u64 {
        self.len
    }
}

fn open(path: &Path, truncate: bool) -> io::Result<Box<dyn AppendFile>> {
    let file = OpenOptions::new().create(true).append(!truncate).write(true).truncate(truncate).open(path)?;
    let len = file.metadata()?.len();
    Ok(Box::new(RealFile { file, len }))
}

struct MmapView(memmap2::Mmap);

impl AsRef<[u8]> for MmapView {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Disk for RealDisk {
    fn open_append(&self, path: &str) -> io::Result<Box<dyn AppendFile>> {
        open(&self.path(path)?, false)
    }
    fn create(&self, path: &str) -> io::Result<Box<dyn AppendFile>> {
        open(&self.path(path)?, true)
    }
    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(path)?)
    }
    fn map(&self, path: &str) -> io::Result<Mapped> {
        let file = File::open(self.path(path)?)?;
        if file.metadata()?.len() == 0 {
            return Ok(Mapped::from_vec(Vec::new()));
        }
        // SAFETY: storage.dat is immutable once renamed into place (a new checkpoint is a new
        // file), so no one writes the mapped range while the map lives.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Mapped(std::sync::Arc::new(MmapView(map))))
    }
    fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(self.path(path)?)?;
        f.set_len(len)?;
        f.sync_all()
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from)?, self.path(to)?)
    }
    fn remove(&self, path: &str) -> io::Result<()> {
        fs::remove_file(self.path(path)?)
    }
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let rd = match fs::read_dir(self.path(dir)?) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for e in rd {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
    fn create_dir_all(&self, dir: &str) -> io::Result<()> {
        let p = self.path(dir)?;
        fs::create_dir_all(&p)?;
        // Make the new directory entries durable up to the root.
        let mut cur = p.as_path();
        while let Some(parent) = cur.parent() {
            File::open(parent)?.sync_all()?;
            if parent == self.root {
                break;
            }
            cur = parent;
        }
        Ok(())
    }
    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        File::open(self.path(dir)?)?.sync_all()
    }
    fn exists(&self, path: &str) -> bool {
        self.path(path).map(|p| p.exists()).unwrap_or(false)
    }
}
