//! The master's control plane at size, without a network or storage: a model grid of machines
//! whose storage nodes heartbeat the replicas they are assigned and catch up at once, driven
//! round by round (one heartbeat interval each) through the same `MasterState` calls the
//! master's services and failover loop make. A machine is lost, one joins, the master
//! restarts; the run ends when the rebalancer has converged. `sutra bench master` times it at
//! size (the master's CPU per heartbeat round); a test runs it small and checks the outcome.
//!
//! What it leaves out, on purpose: fencing, promotion and catch-up take one round here (the
//! simulator's scenarios cover them with real replicas), and ops are committed without the
//! metadata log's fsync (I/O, not the master's CPU).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use sutra_proto as pb;

use super::state::{MasterState, MemberChange, MembershipConfig, Meta, MetaOp, NodeState};
use crate::ids::NodeId;
use crate::limits;

#[derive(Clone, Debug)]
pub struct Plan {
    pub agents: u32,
    pub per_agent: u32,
    pub shards: u32,
    pub replication: u32,
    /// Round at which the last machine stops (nothing reports it; it never comes back).
    pub lose_round: u64,
    /// Round at which one new machine registers its nodes.
    pub join_round: u64,
    /// Round at which the master restarts from its metadata (0: never).
    pub restart_round: u64,
    /// Gives up after this many rounds.
    pub rounds_max: u64,
    pub membership: MembershipConfig,
}

impl Plan {
    /// `agents` machines of `per_agent` nodes, `shards` shards × 3, voters replaced 30 s after
    /// they went Down; the loss at 10 s, the join at 20 s, the master restart at 30 s.
    pub fn new(agents: u32, per_agent: u32, shards: u32) -> Plan {
        let rounds = |s: u64| s * 1000 / limits::HEARTBEAT_INTERVAL_MS;
        Plan {
            agents,
            per_agent,
            shards,
            replication: 3,
            lose_round: rounds(10),
            join_round: rounds(20),
            restart_round: rounds(30),
            rounds_max: rounds(3600),
            membership: MembershipConfig { replace_after_ms: 30_000, ..MembershipConfig::default() },
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Rounds run, and the first round at which the grid had converged (None: never).
    pub rounds: u64,
    pub converged_round: Option<u64>,
    /// Master CPU per round (heartbeats and their assignments, evaluation, elections,
    /// membership and split decisions, committing ops), microseconds.
    pub round_us: Vec<u64>,
    pub elections: u64,
    pub moves: u64,
    pub transfers: u64,
    /// Most shards changing membership (or handing over their primary) at one time.
    pub max_in_flight: usize,
    /// Replicas and primaries per Up node at the end: (min, max).
    pub replicas: (usize, usize),
    pub primaries: (usize, usize),
    /// What was wrong at the last round when it did not converge.
    pub unsettled: Option<String>,
    /// Bytes of the whole map at the end, as JSON (what every map change logged before
    /// `MetaOp::MapChange`), and of one election as the master logs it now.
    pub map_bytes: usize,
    pub election_logged_bytes: usize,
}

/// Runs the plan. Errors are refusals of the model's own steps (a bug in the master's state).
pub fn run(plan: &Plan) -> Result<Outcome, String> {
    let cfg = &plan.membership;
    let mut s = MasterState::new(Meta::default());
    let mut machines: Vec<Vec<u64>> = Vec::new();
    for a in 0..plan.agents {
        machines.push(add_machine(&mut s, a, plan.per_agent, 0)?);
    }
    s.evaluate(0);
    let op = s.init(plan.shards, plan.replication).map_err(|e| e.to_string())?;
    commit(&mut s, op);
    let lost = machines.last().cloned().unwrap_or_default();
    let mut named_at: BTreeMap<u32, u64> = BTreeMap::new();
    let mut out = Outcome::default();
    let grace = limits::PROMOTION_GRACE_MS;
    for round in 1..=plan.rounds_max {
        let now = round * limits::HEARTBEAT_INTERVAL_MS;
        out.rounds = round;
        if round == plan.join_round {
            machines.push(add_machine(&mut s, plan.agents, plan.per_agent, now)?);
        }
        if round == plan.restart_round {
            let meta = s.meta().clone();
            s = MasterState::new(meta.clone());
            if s.meta().map != meta.map {
                return Err("the restarted master's map differs from the one it saved".into());
            }
            named_at = s.map().shards.iter().map(|e| (e.id.0, now)).collect();
        }
        let alive: Vec<u64> = machines
            .iter()
            .filter(|m| round < plan.lose_round || **m != lost)
            .flat_map(|m| m.iter().copied())
            .collect();
        // What each node reports comes from what the master assigned it (its last answer).
        let reports: Vec<(u64, Vec<pb::ShardStat>)> = alive.iter().map(|n| (*n, stats(&s, *n))).collect();

        let started = Instant::now();
        for (n, st) in &reports {
            s.heartbeat(*n, &[], st, 0, now).map_err(|e| e.to_string())?;
            std::hint::black_box(s.assignments(*n));
        }
        s.evaluate(now);
        for shard in s.elections_due(now, &named_at, grace) {
            let e = entry(&s, shard)?;
            let Some(to) = e.replicas.iter().map(|r| r.0).find(|r| s.state_of(*r) == NodeState::Up) else { continue };
            let op = s.elect(shard, to, e.epoch.0 + 1).map_err(|e| e.to_string())?;
            commit(&mut s, Some(op));
            named_at.insert(shard, now);
            out.elections += 1;
        }
        let due = s.membership_due(now, cfg, &BTreeMap::new());
        let busy = due.len();
        for c in due {
            let shard = c.shard();
            let e = entry(&s, shard)?;
            let op = match c {
                MemberChange::AddLearner { learner, replacing, .. } => {
                    out.moves += 1;
                    s.set_learner(shard, Some((learner, replacing)), e.epoch.0)
                }
                MemberChange::DropLearner { .. } => s.set_learner(shard, None, e.epoch.0),
                MemberChange::Reconfigure { voters, .. } => {
                    let primary = if voters.contains(&e.primary.0) { e.primary.0 } else { voters[0] };
                    s.reconfigure(shard, primary, e.epoch.0 + 1, &voters)
                }
                MemberChange::TransferLeader { to, .. } => {
                    out.transfers += 1;
                    s.elect(shard, to, e.epoch.0 + 1)
                }
            };
            commit(&mut s, Some(op.map_err(|e| e.to_string())?));
            named_at.insert(shard, now);
        }
        std::hint::black_box(s.split_wanted(now, cfg));
        out.round_us.push(started.elapsed().as_micros() as u64);

        let changing = s.map().shards.iter().filter(|e| e.learner.is_some() || e.replacing.is_some()).count();
        out.max_in_flight = out.max_in_flight.max(changing.max(busy));
        let up: Vec<u64> = alive.iter().copied().filter(|n| s.state_of(*n) == NodeState::Up).collect();
        (out.replicas, out.primaries) = spread(&s, &up);
        let settled = settled(&s, &up, plan, round, busy);
        out.unsettled = settled.clone().err();
        if settled.is_ok() {
            out.converged_round = Some(round);
            break;
        }
    }
    let op = MetaOp::Map { map: s.map().clone(), replication: plan.replication };
    out.map_bytes = serde_json::to_vec(&op).map_or(0, |b| b.len());
    let e = entry(&s, s.map().shards[0].id.0)?;
    let elect = s.elect(e.id.0, e.primary.0, e.epoch.0 + 1).map_err(|e| e.to_string())?;
    out.election_logged_bytes = serde_json::to_vec(&elect.logged_against(s.meta())).map_or(0, |b| b.len());
    Ok(out)
}

fn add_machine(s: &mut MasterState, a: u32, per_agent: u32, now: u64) -> Result<Vec<u64>, String> {
    let name = format!("agent-{a}");
    let (_, op) = s.register_agent(&name, now).map_err(|e| e.to_string())?;
    commit(s, op);
    let mut nodes = Vec::new();
    for slot in 0..per_agent {
        // Distinct addresses: 10.a/256.a%256.slot.
        let ip = format!("10.{}.{}.{}", a / 256, a % 256, slot + 1);
        let (id, op) = s
            .register_node(&name, slot, &format!("{ip}:7100"), &format!("{ip}:7200"), 1, now)
            .map_err(|e| e.to_string())?;
        commit(s, op);
        nodes.push(id);
    }
    Ok(nodes)
}

fn commit(s: &mut MasterState, op: Option<MetaOp>) {
    if let Some(op) = op {
        s.commit(&op);
    }
}

fn entry(s: &MasterState, shard: u32) -> Result<crate::shardmap::ShardEntry, String> {
    s.map().shards.iter().find(|e| e.id.0 == shard).cloned().ok_or_else(|| format!("no shard {shard}"))
}

/// A node's heartbeat: every replica it is assigned is open and caught up; a primary leads
/// its epoch.
fn stats(s: &MasterState, node: u64) -> Vec<pb::ShardStat> {
    s.assignments(node)
        .iter()
        .map(|a| pb::ShardStat {
            shard: a.shard,
            serving: true,
            primary_epoch: if a.primary { a.epoch } else { 0 },
            leading: a.primary,
            last_lsn: 1_000,
            commit_lsn: 1_000,
            ..Default::default()
        })
        .collect()
}

/// Replicas (voters and learners) and primaries per node of `up`: (min, max) each.
fn spread(s: &MasterState, up: &[u64]) -> ((usize, usize), (usize, usize)) {
    let mut replicas: BTreeMap<u64, usize> = up.iter().map(|n| (*n, 0)).collect();
    let mut primaries = replicas.clone();
    for e in &s.map().shards {
        for r in e.replicas.iter().chain(e.learner.iter()) {
            if let Some(c) = replicas.get_mut(&r.0) {
                *c += 1;
            }
        }
        if let Some(c) = primaries.get_mut(&e.primary.0) {
            *c += 1;
        }
    }
    let range =
        |m: &BTreeMap<u64, usize>| (m.values().copied().min().unwrap_or(0), m.values().copied().max().unwrap_or(0));
    (range(&replicas), range(&primaries))
}

/// Converged: every step of the plan has happened, nothing is due or under way, every voter
/// is Up, replicas within 1.25 × the least loaded node, primaries at most one above an even
/// share, and no two voters of a shard on one machine.
fn settled(s: &MasterState, up: &[u64], plan: &Plan, round: u64, busy: usize) -> Result<(), String> {
    if round < plan.lose_round.max(plan.join_round).max(plan.restart_round) {
        return Err("the plan's steps are still to come".into());
    }
    if busy > 0 {
        return Err(format!("{busy} membership changes were started this round"));
    }
    let up_set: BTreeSet<u64> = up.iter().copied().collect();
    for e in &s.map().shards {
        if e.learner.is_some() || e.replacing.is_some() {
            return Err(format!("shard {} is changing membership", e.id.0));
        }
        if let Some(r) = e.replicas.iter().find(|r| !up_set.contains(&r.0)) {
            return Err(format!("shard {} keeps a voter on node {} that is not Up", e.id.0, r.0));
        }
        let agents: BTreeSet<&str> = e.replicas.iter().map(|r| agent_of(s, *r)).collect();
        if agents.len() != e.replicas.len() {
            return Err(format!("shard {} has two voters on one machine", e.id.0));
        }
    }
    let ((rmin, rmax), (_, pmax)) = spread(s, up);
    if rmax * 4 > rmin * 5 {
        return Err(format!("replicas per Up node range {rmin}..{rmax} (max/min above 1.25)"));
    }
    let even = s.map().shards.len().div_ceil(up.len().max(1));
    if pmax > even + 1 {
        return Err(format!("a node leads {pmax} shards; an even share is {even}"));
    }
    Ok(())
}

fn agent_of(s: &MasterState, n: NodeId) -> &str {
    s.meta().nodes.get(&n.0).map_or("", |r| r.agent.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_grid_converges_after_a_loss_a_join_and_a_restart_within_its_bound() {
        let plan = Plan::new(8, 2, 48);
        let out = run(&plan).unwrap();
        assert!(out.converged_round.is_some(), "did not converge in {} rounds: {:?}", out.rounds, out.unsettled);
        assert!(out.max_in_flight <= plan.membership.changes_max, "in flight {}", out.max_in_flight);
        // The lost machine's 2 nodes held 18 replicas: each was replaced, and the new machine
        // took its share by moves.
        assert!(out.moves >= 18, "{out:?}");
        assert!(out.elections > 0, "the lost machine's primaries were re-elected: {out:?}");
        let ((rmin, rmax), _) = (out.replicas, out.primaries);
        assert!(rmax * 4 <= rmin * 5, "{out:?}");
    }
}
