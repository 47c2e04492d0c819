use rand::Rng as _;

use super::*;
use crate::io::{seeded_rng, Rng};

fn n(i: u64) -> NodeId {
    NodeId(i)
}

#[test]
fn log_index_tracks_epochs_truncates_and_trims() {
    let mut log = LogIndex::new(EntryId::default());
    for _ in 0..3 {
        log.push(1);
    }
    log.push(2);
    log.push(2);
    assert_eq!(log.last(), EntryId { epoch: 2, lsn: 5 });
    assert_eq!(log.epoch_of(3), Some(1));
    assert_eq!(log.epoch_of(4), Some(2));
    assert_eq!(log.epoch_of(6), None);
    log.truncate_after(3);
    assert_eq!(log.last(), EntryId { epoch: 1, lsn: 3 });
    log.push(3);
    assert_eq!(
        log.ids(2, 4),
        vec![EntryId { epoch: 1, lsn: 2 }, EntryId { epoch: 1, lsn: 3 }, EntryId { epoch: 3, lsn: 4 }]
    );
    log.trim_through(2);
    assert_eq!(log.base(), EntryId { epoch: 1, lsn: 2 });
    assert_eq!(log.epoch_of(1), None);
    assert_eq!(log.epoch_of(3), Some(1));
    assert_eq!(log.epoch_of(4), Some(3));
}

fn append(epoch: u64, prev: (u64, u64), entries: &[(u64, u64)], commit: u64) -> Append {
    Append {
        epoch,
        prev: EntryId { epoch: prev.0, lsn: prev.1 },
        entries: entries.iter().map(|(e, l)| EntryId { epoch: *e, lsn: *l }).collect(),
        commit,
    }
}

#[test]
fn a_replica_refuses_older_epochs_once_fenced() {
    let mut r = Replica::new(LogIndex::new(EntryId::default()), 0, 0);
    assert_eq!(r.on_append(&append(1, (0, 0), &[(1, 1)], 0)).0, AppendReply::Ok { epoch: 1, matched: 1 });
    assert_eq!(r.on_fence(2), Ok(EntryId { epoch: 1, lsn: 1 }));
    assert_eq!(r.on_append(&append(1, (1, 1), &[(1, 2)], 1)).0, AppendReply::StaleEpoch { promised: 2 });
    assert_eq!(r.on_fence(1), Err(2));
    assert_eq!(r.log.last().lsn, 1, "nothing from the fenced epoch was taken");
}

#[test]
fn a_replica_cuts_only_an_uncommitted_divergent_suffix() {
    let mut r = Replica::new(LogIndex::new(EntryId::default()), 0, 0);
    r.on_append(&append(1, (0, 0), &[(1, 1), (1, 2), (1, 3)], 1));
    assert_eq!(r.commit, 1);
    // Epoch 2's primary never had lsn 2..3 of epoch 1.
    let (reply, cut) = r.on_append(&append(2, (1, 1), &[(2, 2)], 2));
    assert_eq!(reply, AppendReply::Ok { epoch: 2, matched: 2 });
    assert_eq!(cut, Some(1));
    assert_eq!(r.log.last(), EntryId { epoch: 2, lsn: 2 });
    assert_eq!(r.commit, 2);
    // A prev it does not hold: the reply says where to resume.
    let (reply, _) = r.on_append(&append(2, (2, 9), &[(2, 10)], 2));
    assert_eq!(reply, AppendReply::Mismatch { epoch: 2, last: EntryId { epoch: 2, lsn: 2 }, commit: 2 });
}

#[test]
#[should_panic(expected = "truncating committed entry")]
fn truncating_a_committed_entry_is_a_bug_caught_at_once() {
    let mut r = Replica::new(LogIndex::new(EntryId::default()), 0, 0);
    r.on_append(&append(1, (0, 0), &[(1, 1), (1, 2)], 2));
    r.on_append(&append(2, (1, 1), &[(2, 2)], 2));
}

/// Seed 93 of swarm: a replica wiped for re-sync answered every append with "I hold nothing",
/// and the primary, trusting the old `matched`, resent the same tail forever.
#[test]
fn a_wiped_replica_is_started_over() {
    let mut p = Primary::new(n(1), vec![n(1), n(2), n(3)], 1, Replica::new(LogIndex::new(EntryId::default()), 1, 0));
    for _ in 0..4 {
        p.append();
    }
    p.on_durable(5);
    p.on_reply(n(2), &AppendReply::Ok { epoch: 1, matched: 5 });
    assert_eq!(p.commit, 5);
    p.append();
    let a = p.next_append(n(2), 16).unwrap().unwrap();
    assert_eq!(a.prev.lsn, 5);
    // Node 2 lost its copy (corruption) and now holds nothing.
    p.on_reply(n(2), &AppendReply::Mismatch { epoch: 1, last: EntryId::default(), commit: 0 });
    let a = p.next_append(n(2), 16).unwrap().unwrap();
    assert_eq!(a.prev.lsn, 0, "it is sent the whole log again");
    assert_eq!(p.commit, 5, "the commit point never goes back");
}

#[test]
fn an_old_epoch_entry_on_a_majority_commits_only_through_the_epoch_start_entry() {
    let voters = vec![n(1), n(2), n(3)];
    // Node 1 holds lsn 1..2 of epoch 1, uncommitted; it becomes primary of epoch 2.
    let mut log = LogIndex::new(EntryId::default());
    log.push(1);
    log.push(1);
    let mut p = Primary::new(n(1), voters, 2, Replica::new(log, 2, 0));
    assert_eq!(p.epoch_start, 3);
    p.on_durable(2);
    // Node 2 acknowledges the epoch-1 entries only: a majority holds lsn 2, yet nothing commits.
    p.on_reply(n(2), &AppendReply::Ok { epoch: 2, matched: 2 });
    assert_eq!(p.commit, 0);
    p.on_durable(3);
    p.on_reply(n(2), &AppendReply::Ok { epoch: 2, matched: 3 });
    assert_eq!(p.commit, 3, "the epoch-start entry commits, and everything before it with it");
    let w = p.append();
    p.on_durable(w.lsn);
    assert_eq!(p.commit, 3, "one copy is not a majority");
    assert_eq!(p.on_reply(n(3), &AppendReply::Ok { epoch: 2, matched: w.lsn }), Outcome::Continue);
    assert_eq!(p.commit, w.lsn);
    assert_eq!(p.on_reply(n(2), &AppendReply::StaleEpoch { promised: 3 }), Outcome::StepDown { promised: 3 });
}

#[test]
fn promotion_needs_a_majority_and_picks_the_greatest_log() {
    let voters = [n(1), n(2), n(3)];
    let e = |epoch, lsn| EntryId { epoch, lsn };
    assert!(choose_primary(&voters, &[(n(1), e(5, 9))]).is_err());
    assert!(choose_primary(&voters, &[(n(1), e(5, 9)), (n(1), e(5, 9))]).is_err(), "duplicates count once");
    assert!(choose_primary(&voters, &[(n(1), e(5, 9)), (n(7), e(5, 9))]).is_err(), "non-voters do not count");
    assert_eq!(choose_primary(&voters, &[(n(1), e(4, 20)), (n(3), e(5, 2))]), Ok(n(3)), "epoch first, then lsn");
    assert_eq!(choose_primary(&voters, &[(n(2), e(5, 2)), (n(3), e(5, 2))]), Ok(n(2)), "ties go to the lowest id");
}

#[test]
fn a_learner_is_shipped_to_but_never_counts_for_commit() {
    let mut p = Primary::new(n(1), vec![n(1), n(2), n(3)], 2, Replica::new(LogIndex::new(EntryId::default()), 2, 0));
    assert!(p.add_learner(n(4)));
    assert!(!p.add_learner(n(4)) && !p.add_learner(n(2)), "already a peer");
    let w = p.append();
    p.on_durable(w.lsn);
    assert!(p.next_append(n(4), 16).unwrap().is_some(), "the learner is sent the log");
    p.on_reply(n(4), &AppendReply::Ok { epoch: 2, matched: w.lsn });
    assert_eq!(p.commit, 0, "the primary and a learner are not a majority of three voters");
    assert_eq!(p.low_water(), 0, "entries are kept for the voters that lag");
    p.on_reply(n(2), &AppendReply::Ok { epoch: 2, matched: w.lsn });
    assert_eq!(p.commit, w.lsn);
}

#[test]
fn a_membership_change_fences_the_current_voters_and_promotes_from_the_next_set() {
    let voters = [n(1), n(2), n(3), n(4)];
    let e = |epoch, lsn| EntryId { epoch, lsn };
    let replies = [(n(1), e(3, 9)), (n(2), e(3, 8)), (n(4), e(3, 7))];
    assert_eq!(choose_primary_among(&voters, &replies, &[n(1), n(2), n(3)]), Ok(n(1)));
    assert_eq!(
        choose_primary_among(&voters, &replies, &[n(2), n(3), n(4)]),
        Ok(n(2)),
        "the leaving node 1 cannot lead"
    );
    assert!(choose_primary_among(&voters, &replies[..2], &[n(2), n(3), n(4)]).is_err(), "2 of 4 is no majority");
    assert!(choose_primary_among(&voters, &replies, &[n(3)]).is_err(), "nobody eligible answered");
}

// ---- A randomized model: 3 nodes, lost and reordered messages, crashes, failovers ----

enum Role {
    Replica(Replica),
    Primary(Primary),
}

struct Node {
    role: Option<Role>,
    alive: bool,
    /// Highest commit this node has ever reported (must never go down).
    commit_seen: u64,
    /// While primary: its committed entries checked against `acked` up to here.
    verified: u64,
}

enum Msg {
    Append(Append),
    Reply(AppendReply),
}

struct Model {
    nodes: Vec<Node>,
    voters: Vec<NodeId>,
    msgs: Vec<(usize, usize, Msg)>,
    epoch: u64,
    /// Every entry a client was told is committed, by LSN (index 0 is LSN 1).
    acked: Vec<EntryId>,
    rng: Rng,
    promotions: u64,
    /// Steps where more than one node acted as primary (a stale one, not yet refused).
    stale_acts: u64,
}

impl Model {
    fn new(seed: u64) -> Model {
        let nodes = (0..3)
            .map(|_| Node {
                role: Some(Role::Replica(Replica::new(LogIndex::new(EntryId::default()), 0, 0))),
                alive: true,
                commit_seen: 0,
                verified: 0,
            })
            .collect();
        Model {
            nodes,
            voters: (0..3).map(n).collect(),
            msgs: Vec::new(),
            epoch: 0,
            acked: Vec::new(),
            rng: seeded_rng(seed),
            promotions: 0,
            stale_acts: 0,
        }
    }

    /// The live primary of the newest epoch.
    fn primary(&mut self) -> Option<(usize, &mut Primary)> {
        let newest = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive)
            .filter_map(|i| match &self.nodes[i].role {
                Some(Role::Primary(p)) => Some((p.epoch, i)),
                _ => None,
            })
            .max()?
            .1;
        self.primary_at(newest)
    }

    fn primary_at(&mut self, i: usize) -> Option<(usize, &mut Primary)> {
        let nd = &mut self.nodes[i];
        match (&mut nd.role, nd.alive) {
            (Some(Role::Primary(p)), true) => Some((i, p)),
            _ => None,
        }
    }

    /// Any live primary: a stale one (its fence reply was lost) keeps acting until a replica
    /// refuses it, which is exactly what fencing must make harmless.
    fn any_primary(&mut self) -> Option<(usize, &mut Primary)> {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.primary_at(*i).is_some()).collect();
        let i = *live.get(self.rng.random_range(0..live.len().max(1)))?;
        if live.len() > 1 {
            self.stale_acts += 1;
        }
        self.primary_at(i)
    }

    /// Whatever any primary has committed is acknowledged; two primaries committing different
    /// entries at one LSN is the split brain fencing exists to prevent.
    fn record(&mut self) {
        for i in 0..self.nodes.len() {
            let verified = self.nodes[i].verified;
            let Some((_, p)) = self.primary_at(i) else { continue };
            let from = (verified + 1).max(p.log.base().lsn + 1);
            let ids = p.log.ids(from, p.commit);
            for id in ids {
                match self.acked.get(id.lsn as usize - 1) {
                    Some(a) => assert_eq!(*a, id, "two different entries committed at lsn {}", id.lsn),
                    None => {
                        assert_eq!(self.acked.len() as u64 + 1, id.lsn, "committed entries are contiguous");
                        self.acked.push(id);
                    }
                }
                self.nodes[i].verified = id.lsn;
            }
        }
        for nd in &mut self.nodes {
            let commit = match &nd.role {
                Some(Role::Replica(r)) => r.commit,
                Some(Role::Primary(p)) => p.commit,
                None => 0,
            };
            assert!(commit >= nd.commit_seen, "commit went back from {} to {commit}", nd.commit_seen);
            nd.commit_seen = commit;
        }
    }

    /// The node stops being primary. Its unsynced tail may or may not have reached the disk.
    fn step_down(&mut self, i: usize, crashed: bool) {
        if !matches!(self.nodes[i].role, Some(Role::Primary(_))) {
            return;
        }
        if let Some(Role::Primary(p)) = self.nodes[i].role.take() {
            let durable = p.durable;
            let mut r = p.into_replica();
            if crashed || self.rng.random_bool(0.5) {
                r.log.truncate_after(durable);
            }
            self.nodes[i].role = Some(Role::Replica(r));
        }
    }

    fn failover(&mut self) {
        let e = self.epoch + 1;
        let mut replies = Vec::new();
        for i in 0..3 {
            if !self.nodes[i].alive || self.rng.random_bool(0.3) {
                continue; // dead, or its fence reply was lost (often: stale primaries must be harmless)
            }
            self.step_down(i, false);
            if let Some(Role::Replica(r)) = &mut self.nodes[i].role {
                if let Ok(last) = r.on_fence(e) {
                    replies.push((n(i as u64), last));
                }
            }
        }
        let Ok(winner) = choose_primary(&self.voters, &replies) else { return };
        self.epoch = e;
        self.promotions += 1;
        let w = winner.0 as usize;
        let Some(Role::Replica(r)) = self.nodes[w].role.take() else { unreachable!() };
        let p = Primary::new(winner, self.voters.clone(), e, r);
        self.nodes[w].verified = 0;
        for a in &self.acked {
            assert!(p.log.contains(*a), "epoch {e}: new primary {w} lacks committed entry {a:?}");
        }
        self.nodes[w].role = Some(Role::Primary(p));
    }

    fn deliver(&mut self, k: usize) {
        let (from, to, msg) = self.msgs.swap_remove(k);
        if !self.nodes[to].alive {
            return;
        }
        match msg {
            Msg::Append(a) => {
                if let Some(Role::Primary(p)) = &self.nodes[to].role {
                    if a.epoch > p.epoch {
                        self.step_down(to, false);
                    } else {
                        let reply = AppendReply::StaleEpoch { promised: p.epoch };
                        self.msgs.push((to, from, Msg::Reply(reply)));
                        return;
                    }
                }
                if let Some(Role::Replica(r)) = &mut self.nodes[to].role {
                    let (reply, _) = r.on_append(&a);
                    self.msgs.push((to, from, Msg::Reply(reply)));
                }
            }
            Msg::Reply(reply) => {
                if let Some(Role::Primary(p)) = &mut self.nodes[to].role {
                    if let Outcome::StepDown { .. } = p.on_reply(n(from as u64), &reply) {
                        self.step_down(to, false);
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        match self.rng.random_range(0..100) {
            0..30 => {
                if let Some((_, p)) = self.any_primary() {
                    p.append();
                }
            }
            30..40 => {
                let x = self.rng.random_range(0..4);
                if let Some((_, p)) = self.any_primary() {
                    let to = p.durable + x;
                    p.on_durable(to);
                }
            }
            40..55 => {
                let peer = self.rng.random_range(0..3u64);
                let max = self.rng.random_range(1..5);
                let beat = self.rng.random_bool(0.2);
                if let Some((i, p)) = self.any_primary() {
                    let a = if beat { p.heartbeat(n(peer)) } else { p.next_append(n(peer), max).ok().flatten() };
                    if let Some(a) = a {
                        self.msgs.push((i, peer as usize, Msg::Append(a)));
                    }
                }
            }
            55..85 if !self.msgs.is_empty() => {
                let k = self.rng.random_range(0..self.msgs.len());
                if self.rng.random_bool(0.1) {
                    self.msgs.swap_remove(k); // lost
                } else {
                    self.deliver(k);
                }
            }
            85..90 => {
                let i = self.rng.random_range(0..3);
                self.step_down(i, true);
                self.nodes[i].alive = false;
            }
            90..95 => {
                let i = self.rng.random_range(0..3);
                self.nodes[i].alive = true;
            }
            95..100 if self.primary().is_none() || self.rng.random_bool(0.2) => self.failover(),
            _ => {}
        }
        self.record();
    }
}

/// The highest epoch any node has promised or leads.
fn m_epoch(nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .map(|n| match &n.role {
            Some(Role::Replica(r)) => r.promised,
            Some(Role::Primary(p)) => p.epoch,
            None => 0,
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn no_committed_entry_is_lost_through_crashes_lost_messages_and_failovers() {
    let mut promotions = 0;
    let mut stale_acts = 0;
    let mut committed = 0;
    for seed in 0..2000 {
        let mut m = Model::new(seed);
        for _ in 0..3000 {
            m.step();
        }
        // Heal: everyone up, one last failover, ship until quiet; every log then agrees with
        // the primary's up to its commit.
        for nd in &mut m.nodes {
            nd.alive = true;
        }
        for _ in 0..300 {
            // A primary whose fence reply was lost may linger in an old epoch until a replica
            // refuses it; a failover (with every node up) replaces it for good.
            let top = m_epoch(&m.nodes);
            if m.primary().is_none_or(|(_, p)| p.epoch < top) {
                m.failover();
                continue;
            }
            if let Some((_, p)) = m.primary() {
                let last = p.log.last().lsn;
                p.on_durable(last);
            }
            for peer in 0..3u64 {
                if let Some((i, p)) = m.primary() {
                    let a = p.next_append(n(peer), 64).ok().flatten().or_else(|| p.heartbeat(n(peer)));
                    if let Some(a) = a {
                        m.msgs.push((i, peer as usize, Msg::Append(a)));
                    }
                }
            }
            while !m.msgs.is_empty() {
                m.deliver(0);
            }
            m.record();
        }
        let (_, p) = m.primary().expect("healed");
        let (commit, plog) = (p.commit, p.log.clone());
        assert_eq!(commit, plog.last().lsn, "seed {seed}: a healed grid commits everything");
        for nd in &m.nodes {
            if let Some(Role::Replica(r)) = &nd.role {
                assert_eq!(r.log.ids(1, commit), plog.ids(1, commit), "seed {seed}: replica log differs");
            }
        }
        for a in &m.acked {
            assert!(plog.contains(*a), "seed {seed}: committed {a:?} lost");
        }
        promotions += m.promotions;
        stale_acts += m.stale_acts;
        committed += commit;
    }
    assert!(
        promotions > 1000 && committed > 10_000 && stale_acts > 100,
        "the model exercised little: {promotions} promotions, {committed} commits, {stale_acts} steps with a stale primary"
    );
}
