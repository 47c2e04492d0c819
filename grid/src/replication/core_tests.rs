//! Data-driven tests of the replica core: `testdata/core/*.txt` hold scripts of events, each
//! followed by `----` and the decisions the core must make (its answer, then the writes it
//! lists, one per line); commands are separated by blank lines. `REWRITE=1 cargo test -p sutra-grid core_rules` rewrites the
//! expectations from what the core does now; review the diff before committing it.
//!
//! Commands (entries are `epoch.lsn`; times are milliseconds on a test clock):
//!   replica [log=E.L,...] [promised=N] [commit=N] [led=N] [resync]   a recovered replica
//!   fence E | promote E me=N voters=A,B,C [wait=MS] | write
//!   append E prev=E.L [entries=E.L,...] [commit=N]
//!   durable N | reply E peer=N (ok M | stale P | mismatch E.L C) [sent=MS]
//!   install E at=E.L | installed E at=E.L | learners E N,... | ship E peer=N [heartbeat]
//!   tick MS | lease | state | range-changed N (the range changed at LSN N: a split, a merge's end)

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::core::{Core, InstallPlan, Io, Job, Promise, Ready, Role, WriteKind};
use super::{AppendReply, EntryId, LogIndex, Replica};
use crate::ids::NodeId;

struct Harness {
    core: Option<Core>,
    t0: Instant,
    now_ms: u64,
}

fn id(s: &str) -> EntryId {
    let (e, l) = s.split_once('.').unwrap_or_else(|| panic!("entry `{s}` is not epoch.lsn"));
    EntryId { epoch: e.parse().expect("epoch"), lsn: l.parse().expect("lsn") }
}

fn show(id: EntryId) -> String {
    format!("{}.{}", id.epoch, id.lsn)
}

fn nodes(s: &str) -> Vec<NodeId> {
    s.split(',').filter(|x| !x.is_empty()).map(|x| NodeId(x.parse().expect("node"))).collect()
}

fn arg<'a>(args: &[&'a str], key: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn reply_text(r: &AppendReply) -> String {
    match r {
        AppendReply::Ok { epoch, matched } => format!("ok epoch={epoch} matched={matched}"),
        AppendReply::StaleEpoch { promised } => format!("stale promised={promised}"),
        AppendReply::Mismatch { epoch, last, commit } => {
            format!("mismatch epoch={epoch} last={} commit={commit}", show(*last))
        }
    }
}

impl Harness {
    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis(self.now_ms)
    }

    fn core(&mut self) -> &mut Core {
        self.core.as_mut().expect("no replica yet: start the script with `replica`")
    }

    fn ready(out: &mut String, ready: Ready) {
        for io in ready.io {
            let line = match io {
                Io::Stage(id, _) => format!("stage {}", show(id)),
                Io::TruncateAfter(l) => format!("truncate after {l}"),
                Io::PersistPromise(p) => format!("persist promised={} led={} resync={}", p.promised, p.led, p.resync),
                Io::ResetAfter(id) => format!("reset after {}", show(id)),
            };
            let _ = writeln!(out, "{line}");
        }
        if ready.stepped_down {
            let _ = writeln!(out, "stepped down");
        }
        if let Some(e) = ready.lead_started {
            let _ = writeln!(out, "lead started {e}");
        }
    }

    fn run(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (cmd, args) = (words[0], &words[1..]);
        let mut out = String::new();
        let mut ready = Ready::default();
        let now = self.now();
        match cmd {
            "replica" => {
                let mut log = LogIndex::new(EntryId::default());
                for e in arg(args, "log").unwrap_or("").split(',').filter(|x| !x.is_empty()) {
                    let e = id(e);
                    assert_eq!(log.push(e.epoch).lsn, e.lsn, "log entries must be consecutive from 1");
                }
                let promise = Promise {
                    promised: arg(args, "promised").map_or(0, |v| v.parse().expect("promised")),
                    led: arg(args, "led").map_or(0, |v| v.parse().expect("led")),
                    resync: args.contains(&"resync"),
                };
                let commit = arg(args, "commit").map_or(0, |v| v.parse().expect("commit"));
                let promised = promise.promised.max(log.last().epoch);
                let entries = log.ids(1, log.last().lsn).into_iter().map(|i| (i, vec![0u8; 8])).collect();
                let role = Role::Replica(Replica::new(log, promised, commit));
                self.core = Some(Core::new(role, promise, entries, 0, 1 << 20));
                return "ok\n".into();
            }
            "fence" => match self.core().fence(args[0].parse().expect("epoch"), now, &mut ready) {
                Ok(f) => {
                    let age = f.append_age.map_or("none".into(), |a| format!("{}ms", a.as_millis()));
                    let _ = writeln!(out, "fenced last={} age={age}", show(f.last));
                }
                Err(e) => {
                    let _ = writeln!(out, "refused: {e}");
                }
            },
            "promote" => {
                let epoch = args[0].parse().expect("epoch");
                let me = NodeId(arg(args, "me").expect("me=").parse().expect("me"));
                let voters = nodes(arg(args, "voters").expect("voters="));
                let wait = Duration::from_millis(arg(args, "wait").map_or(0, |v| v.parse().expect("wait")));
                let r = self.core().promote(epoch, me, voters, wait, now, &mut ready);
                let _ = writeln!(out, "{}", r.map_or_else(|e| format!("refused: {e}"), |p| format!("{p:?}")));
            }
            "write" => {
                let r = self.core().write(WriteKind::Batch, b"x", now, &mut ready);
                let _ =
                    writeln!(out, "{}", r.map_or_else(|e| format!("refused: {e:?}"), |i| format!("entry {}", show(i))));
            }
            "append" => {
                let a = super::Append {
                    epoch: args[0].parse().expect("epoch"),
                    prev: id(arg(args, "prev").expect("prev=")),
                    entries: arg(args, "entries").unwrap_or("").split(',').filter(|x| !x.is_empty()).map(id).collect(),
                    commit: arg(args, "commit").map_or(0, |v| v.parse().expect("commit")),
                };
                let payloads = a.entries.iter().map(|_| Arc::new(vec![1u8; 8])).collect();
                let r = self.core().append(&a, payloads, now, &mut ready);
                let _ = writeln!(out, "{}", reply_text(&r));
            }
            "durable" => self.core().on_durable(args[0].parse().expect("lsn")),
            "reply" => {
                let epoch = args[0].parse().expect("epoch");
                let peer = NodeId(arg(args, "peer").expect("peer=").parse().expect("peer"));
                let i = args.iter().position(|a| ["ok", "stale", "mismatch"].contains(a)).expect("ok|stale|mismatch");
                let reply = match args[i] {
                    "ok" => AppendReply::Ok { epoch, matched: args[i + 1].parse().expect("matched") },
                    "stale" => AppendReply::StaleEpoch { promised: args[i + 1].parse().expect("promised") },
                    _ => AppendReply::Mismatch {
                        epoch,
                        last: id(args[i + 1]),
                        commit: args[i + 2].parse().expect("commit"),
                    },
                };
                let sent = self.t0
                    + Duration::from_millis(arg(args, "sent").map_or(self.now_ms, |v| v.parse().expect("sent")));
                self.core().on_reply(epoch, peer, sent, &reply, &mut ready);
            }
            "install" => {
                let at = id(arg(args, "at").expect("at="));
                let plan = self.core().install_plan(args[0].parse().expect("epoch"), at, now, &mut ready);
                let _ = writeln!(
                    out,
                    "{}",
                    match plan {
                        InstallPlan::Reply(r) => reply_text(&r),
                        InstallPlan::Install => "install".into(),
                    }
                );
            }
            "installed" => {
                let at = id(arg(args, "at").expect("at="));
                let r = self.core().installed(args[0].parse().expect("epoch"), at, now, &mut ready);
                let _ = writeln!(out, "{}", reply_text(&r));
            }
            "learners" => {
                let (added, gone) =
                    self.core().set_learners(args[0].parse().expect("epoch"), &nodes(args.get(1).unwrap_or(&"")));
                let _ = writeln!(out, "added {added:?} gone {gone:?}");
            }
            "ship" => {
                let peer = NodeId(arg(args, "peer").expect("peer=").parse().expect("peer"));
                let job = self.core().next_job(args[0].parse().expect("epoch"), peer, args.contains(&"heartbeat"));
                let _ = writeln!(
                    out,
                    "{}",
                    match job {
                        Job::Send(a, _) => format!(
                            "send epoch={} prev={} entries=[{}] commit={}",
                            a.epoch,
                            show(a.prev),
                            a.entries.iter().map(|e| show(*e)).collect::<Vec<_>>().join(","),
                            a.commit
                        ),
                        Job::FromDisk(a) => format!("from disk {}..", a.entries.first().map_or(0, |e| e.lsn)),
                        Job::Snapshot => "snapshot".into(),
                        Job::Wait => "wait".into(),
                        Job::Stop => "stop".into(),
                    }
                );
            }
            "tick" => {
                self.now_ms += args[0].parse::<u64>().expect("ms");
                return String::new();
            }
            "lease" => {
                let _ = writeln!(out, "leads with lease: {}", self.core().leads_with_lease(now));
            }
            "handover" => {
                let to = NodeId(arg(args, "to").expect("to=").parse().expect("node"));
                let ms: u64 = arg(args, "for").expect("for=").parse().expect("ms");
                let until = now + Duration::from_millis(ms);
                match self.core().begin_handover(args[0].parse().expect("epoch"), to, until) {
                    Ok(()) => {
                        let _ = writeln!(out, "handing over to {}", to.0);
                    }
                    Err(e) => {
                        let _ = writeln!(out, "refused: {e}");
                    }
                }
            }
            "handed-over" => {
                let to = NodeId(arg(args, "to").expect("to=").parse().expect("node"));
                let _ = writeln!(out, "handed over to {}: {}", to.0, self.core().handed_over(to));
            }
            "range-changed" => {
                self.core().snapshot_through = args[0].parse().expect("lsn");
                return String::new();
            }
            "state" => {}
            other => panic!("unknown command `{other}`"),
        }
        Self::ready(&mut out, ready);
        // Whatever committed is applied at once, as the driver does after each step.
        let c = self.core();
        let applied = c.to_apply().expect("no log gap").last().map(|(i, _)| i.lsn);
        if let Some(l) = applied {
            c.applied_through(l);
        }
        if cmd == "state" || applied.is_some() {
            let role = match &c.role {
                Role::Primary(p) => format!("primary epoch={} durable={}", p.epoch, p.durable),
                Role::Replica(r) => format!("replica promised={}", r.promised),
            };
            let _ = writeln!(
                out,
                "{role} last={} commit={} applied={} durable={} promise={}/{}/{}",
                show(c.role.log().last()),
                c.role.commit(),
                c.applied,
                c.durable,
                c.promise.promised,
                c.promise.led,
                c.promise.resync
            );
        }
        out
    }
}

/// Runs one script; returns it with the expectations the core produced now.
fn run_script(text: &str) -> String {
    let mut h = Harness { core: None, t0: Instant::now(), now_ms: 0 };
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push('\n');
        // Skip the old expectation block.
        if lines.peek() == Some(&"----") {
            lines.next();
            while lines.peek().is_some_and(|l| !l.trim().is_empty()) {
                lines.next();
            }
        }
        let got = h.run(line);
        if !got.is_empty() {
            out.push_str("----\n");
            out.push_str(&got);
        }
    }
    out
}

#[test]
fn core_rules() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/replication/testdata/core");
    let mut files: Vec<_> = std::fs::read_dir(dir).expect("testdata dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(files.len() >= 5, "expected the rule files under {dir}");
    let mut failed = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let got = run_script(&text);
        if got != text {
            if std::env::var_os("REWRITE").is_some() {
                std::fs::write(&f, &got).expect("write");
            } else {
                failed.push(format!("{}:\n--- expected\n{text}\n--- got\n{got}", f.display()));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
