//! Failover on a real local grid, as a user sees it: `sutra bench failover` SIGKILLs, then
//! SIGSTOPs, shard 0's primary under a write every 10 ms. The figures belong to the benchmark;
//! this only asserts a generous bound and that every trial recovered.

use std::process::Command;

fn bench(story: &str, dir: &std::path::Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sutra"))
        .args(["bench", "failover", "--story", story, "--trials", "2", "--settle-s", "1", "--json"])
        .args(["--trial-timeout-s", "20", "--dir"])
        .arg(dir)
        .env("RUST_LOG", "error")
        .output()
        .expect("running sutra bench failover");
    assert!(out.status.success(), "bench failover --story {story}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn a_killed_or_hung_primary_is_replaced_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    for (story, bound_ms) in [("kill", 5_000.0), ("stop", 8_000.0)] {
        let r = bench(story, dir.path());
        assert_eq!(r["recovered"], 2, "{story}: every trial recovers: {r}");
        let worst = r["recovery_ms_max"].as_f64().unwrap_or(f64::MAX);
        assert!(worst < bound_ms, "{story}: writes recovered within {bound_ms} ms (worst {worst} ms): {r}");
        assert!(r["writes"].as_u64().unwrap_or(0) > 100, "{story}: the writer ran: {r}");
        assert_eq!(r["acked_writes_lost"], 0, "{story}: no acknowledged write is lost: {r}");
        assert_eq!(r["acked_writes_unreadable"], 0, "{story}: every acknowledged write reads back: {r}");
    }
}
