//! Helpers shared by the real-mode tests: free ports, and batches whose presence can be
//! checked all-or-nothing.
#![allow(dead_code)]

use sutra_grid::ids::ConceptId;
use sutra_grid::model::{AssocKind, Association, ConceptWrite, WriteBatch};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

pub fn label(w: u32, i: u32, j: u32) -> String {
    format!("w{w}-b{i}-c{j}")
}

pub fn batch(w: u32, i: u32) -> WriteBatch {
    let id = |j| ConceptId::from_label(&label(w, i, j));
    WriteBatch {
        concepts: (0..3)
            .map(|j| ConceptWrite {
                label: label(w, i, j),
                content: format!("content {w} {i} {j}"),
                vector: vec![],
                confidence: 0.9,
            })
            .collect(),
        associations: vec![Association {
            source: id(0),
            target: id(1),
            kind: AssocKind::Causal,
            relation: "causes".into(),
            confidence: 0.8,
            evidence: format!("w{w} b{i}"),
        }],
        forget: vec![],
    }
}

pub fn ids(w: u32, i: u32) -> Vec<ConceptId> {
    (0..3).map(|j| ConceptId::from_label(&label(w, i, j))).collect()
}

/// A base port with `n` free TCP ports and their UDP gossip ports (+1000) free too.
pub fn free_base(n: u16) -> u16 {
    for _ in 0..100 {
        let base = free_port();
        if base > 60_000 {
            continue;
        }
        let ok = (0..n).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", base + 1000 + i)).is_ok()
        });
        if ok {
            return base;
        }
    }
    panic!("no free port range");
}

/// `sutra dev` on free ports in a scratch directory, stopped with SIGINT on drop.
pub struct DevGrid {
    pub child: std::process::Child,
    pub api: String,
    pub dir: tempfile::TempDir,
    /// The storage processes listen on `base`, `base + 1`, `base + 2`.
    pub base: u16,
}

impl DevGrid {
    pub fn start() -> DevGrid {
        let dir = tempfile::tempdir().expect("tempdir");
        let (api, master, base) = (free_port(), free_port(), free_base(3));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sutra"))
            .args(["dev", "--data-dir", &dir.path().join("data").display().to_string()])
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(["--master-listen", &format!("127.0.0.1:{master}")])
            .args(["--base-port", &base.to_string()])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawning sutra dev");
        let g = DevGrid { child, api: format!("http://127.0.0.1:{api}"), dir, base };
        let start = std::time::Instant::now();
        loop {
            let out = g.sutra(&["concept", "Paris"]);
            if out.status.success() {
                return g;
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(90), "sutra dev did not serve the sample");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Runs a CLI verb against this grid.
    pub fn sutra(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_sutra"))
            .args(args)
            .args(["--api", &self.api])
            .env("RUST_LOG", "error")
            .output()
            .expect("running sutra")
    }

    /// Runs a CLI verb with `--format json` and parses its output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let out = self.sutra(&a);
        assert!(out.status.success(), "sutra {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("json output")
    }
}

impl Drop for DevGrid {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
pub fn http(api: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let addr = api.trim_start_matches("http://");
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; a broken pipe is then expected.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).unwrap_or(out.len());
    let mut body = out[split..].to_vec();
    if text.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

pub fn call(api: &str, method: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let b = if body.is_null() { Vec::new() } else { serde_json::to_vec(&body).unwrap() };
    let (status, out) = http(api, method, path, &b);
    (status, serde_json::from_slice(&out).unwrap_or_else(|_| serde_json::json!({"raw": String::from_utf8_lossy(&out)})))
}
