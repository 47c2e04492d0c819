//! SWIM membership (Das, Gupta, Motivala 2002) as a pure state machine: it takes `tick(now)`
//! and `on_message(now, msg)` and returns the datagrams to send. No I/O, no clock, one seeded
//! RNG, so every decision can be replayed and unit-tested.
//!
//! Each period a node pings one member (randomised round robin). No ack within the ping timeout:
//! it asks `k` others to ping the target for it (ping-req). No ack by the end of the period: the
//! target becomes Suspect. A suspect that does not refute (by gossiping a higher incarnation)
//! within the suspicion timeout becomes Dead. Updates ride on pings and acks, each sent
//! O(log n) times, so messages per node per period stay constant as the cluster grows.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use rand::seq::SliceRandom;

use crate::ids::NodeId;
use crate::io::{seeded_rng, Rng};
use crate::limits;

/// Ordered so that, at equal incarnation, Suspect overrides Alive and Dead overrides both.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Alive = 0,
    Suspect = 1,
    Dead = 2,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub incarnation: u64,
    pub state: State,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Ping,
    Ack,
    /// "Ping `target` for me and relay its ack."
    PingReq {
        target: NodeId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub from: NodeId,
    pub from_addr: SocketAddr,
    /// The sender's own incarnation: every message doubles as an Alive update for its sender.
    pub from_incarnation: u64,
    pub seq: u64,
    pub kind: Kind,
    pub updates: Vec<Update>,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Out {
    pub to: SocketAddr,
    pub msg: Msg,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub addr: SocketAddr,
    pub incarnation: u64,
    pub state: State,
    /// When the member entered its current state (drives the suspicion timeout).
    pub since_ms: u64,
}

#[derive(Clone, Debug)]
pub struct SwimConfig {
    pub period_ms: u64,
    pub ping_timeout_ms: u64,
    pub indirect_probes: usize,
    pub suspicion_periods: u64,
    pub piggyback_max: usize,
    pub retransmit_mult: u32,
    /// Every this many periods, ping one Dead member: a healed partition or a restarted node
    /// is otherwise never probed again (nobody pings the dead), so it would stay Dead forever.
    pub dead_probe_periods: u64,
}

impl Default for SwimConfig {
    fn default() -> Self {
        SwimConfig {
            period_ms: limits::GOSSIP_PERIOD_MS,
            ping_timeout_ms: limits::GOSSIP_PING_TIMEOUT_MS,
            indirect_probes: limits::GOSSIP_INDIRECT_PROBES,
            suspicion_periods: limits::GOSSIP_SUSPICION_PERIODS,
            piggyback_max: limits::GOSSIP_PIGGYBACK_MAX,
            retransmit_mult: limits::GOSSIP_RETRANSMIT_MULT,
            dead_probe_periods: limits::GOSSIP_DEAD_PROBE_PERIODS,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwimStats {
    pub sent: u64,
    pub received: u64,
    pub suspicions: u64,
    pub deaths: u64,
    pub refutations: u64,
}

struct Probe {
    target: NodeId,
    seq: u64,
    sent_ms: u64,
    indirect_sent: bool,
}

/// A ping sent on someone else's behalf (ping-req): relay the target's ack to them.
struct Relay {
    requester: SocketAddr,
    requester_seq: u64,
    expires_ms: u64,
}

pub struct Swim {
    me: NodeId,
    addr: SocketAddr,
    incarnation: u64,
    cfg: SwimConfig,
    members: BTreeMap<NodeId, Member>,
    rng: Rng,
    /// Shuffled probe order; reshuffled each time it is used up.
    order: Vec<NodeId>,
    probe: Option<Probe>,
    next_probe_ms: u64,
    relays: HashMap<u64, Relay>,
    /// Updates to disseminate, each with the transmissions it has left.
    queue: Vec<(Update, u32)>,
    seq: u64,
    changes: u64,
    /// Members not Dead, plus this node; kept up to date so nothing per-message scans them all.
    live: usize,
    /// Suspects and when they became suspect (drives suspicion timeouts).
    suspects: BTreeMap<NodeId, u64>,
    /// Probe periods started; every `dead_probe_periods`th also pings one Dead member.
    periods: u64,
    /// The Dead member probed last (round robin).
    dead_cursor: NodeId,
    pub stats: SwimStats,
}

impl Swim {
    /// Nodes boot at incarnation 0, so every member agrees on everyone's incarnation until a
    /// refutation raises one (and refutations are gossiped to all). A restarted node learns
    /// of its old Suspect/Dead record on first contact and refutes it.
    pub fn new(me: NodeId, addr: SocketAddr, incarnation: u64, seed: u64, cfg: SwimConfig) -> Swim {
        Swim {
            me,
            addr,
            incarnation,
            cfg,
            members: BTreeMap::new(),
            rng: seeded_rng(seed),
            order: Vec::new(),
            probe: None,
            next_probe_ms: 0,
            relays: HashMap::new(),
            queue: Vec::new(),
            seq: 0,
            changes: 0,
            live: 1,
            suspects: BTreeMap::new(),
            periods: 0,
            dead_cursor: NodeId(0),
            stats: SwimStats::default(),
        }
    }

    /// Adds a member known out of band (the master's member list, seeds).
    pub fn add_member(&mut self, node: NodeId, addr: SocketAddr, now_ms: u64) {
        if node != self.me && !self.members.contains_key(&node) && self.members.len() < limits::GOSSIP_MEMBERS_MAX {
            self.members.insert(node, Member { addr, incarnation: 0, state: State::Alive, since_ms: now_ms });
            self.live += 1;
            self.changes += 1;
        }
    }

    pub fn period_ms(&self) -> u64 {
        self.cfg.period_ms
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn member(&self, node: NodeId) -> Option<&Member> {
        self.members.get(&node)
    }

    pub fn members(&self) -> impl Iterator<Item = (&NodeId, &Member)> {
        self.members.iter()
    }

    /// Members this node currently believes are not reachable (Suspect or Dead).
    pub fn unreachable(&self) -> Vec<NodeId> {
        self.members.iter().filter(|(_, m)| m.state != State::Alive).map(|(id, _)| *id).collect()
    }

    fn transmissions(&self) -> u32 {
        let n = self.live as u32 + 1;
        self.cfg.retransmit_mult * (u32::BITS - n.leading_zeros())
    }

    fn enqueue(&mut self, u: Update) {
        let tx = self.transmissions();
        self.queue.retain(|(q, _)| q.node != u.node);
        self.queue.push((u, tx));
        if self.queue.len() > limits::GOSSIP_QUEUE_MAX {
            // Drop the update that has been sent the most.
            if let Some(i) = (0..self.queue.len()).min_by_key(|i| self.queue[*i].1) {
                self.queue.swap_remove(i);
            }
        }
    }

    fn piggyback(&mut self) -> Vec<Update> {
        self.queue.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.node.cmp(&b.0.node)));
        let n = self.queue.len().min(self.cfg.piggyback_max);
        let out: Vec<Update> = self.queue[..n].iter().map(|(u, _)| *u).collect();
        for e in &mut self.queue[..n] {
            e.1 -= 1;
        }
        self.queue.retain(|(_, tx)| *tx > 0);
        out
    }

    fn send(&mut self, to: SocketAddr, seq: u64, kind: Kind) -> Out {
        self.send_with(to, seq, kind, None)
    }

    /// `send`, with `first` carried ahead of the piggybacked queue.
    fn send_with(&mut self, to: SocketAddr, seq: u64, kind: Kind, first: Option<Update>) -> Out {
        self.stats.sent += 1;
        let mut updates = self.piggyback();
        if let Some(u) = first {
            updates.retain(|q| q.node != u.node);
            updates.truncate(self.cfg.piggyback_max.saturating_sub(1));
            updates.insert(0, u);
        }
        Out {
            to,
            msg: Msg { from: self.me, from_addr: self.addr, from_incarnation: self.incarnation, seq, kind, updates },
        }
    }

    /// Applies one membership update; returns whether it changed anything.
    fn apply(&mut self, u: Update, now_ms: u64) -> bool {
        if u.node == self.me {
            if u.state != State::Alive && u.incarnation >= self.incarnation {
                // Refute: only the member itself may raise its incarnation.
                self.incarnation = u.incarnation + 1;
                self.stats.refutations += 1;
                let me = Update { node: self.me, addr: self.addr, incarnation: self.incarnation, state: State::Alive };
                self.enqueue(me);
                return true;
            }
            return false;
        }
        let old_state = match self.members.get_mut(&u.node) {
            None => {
                if self.members.len() >= limits::GOSSIP_MEMBERS_MAX {
                    return false;
                }
                self.members.insert(
                    u.node,
                    Member { addr: u.addr, incarnation: u.incarnation, state: u.state, since_ms: now_ms },
                );
                None
            }
            Some(m) => {
                if (u.incarnation, u.state) <= (m.incarnation, m.state) {
                    return false;
                }
                let old = m.state;
                if u.state != m.state {
                    m.since_ms = now_ms;
                }
                m.incarnation = u.incarnation;
                m.state = u.state;
                m.addr = u.addr;
                Some(old)
            }
        };
        if old_state != Some(u.state) {
            tracing::debug!(me = self.me.0, node = u.node.0, state = ?u.state, inc = u.incarnation, "swim member state");
            let was_live = old_state.is_some_and(|s| s != State::Dead);
            match (was_live, u.state != State::Dead) {
                (false, true) => self.live += 1,
                (true, false) => self.live -= 1,
                _ => {}
            }
            if old_state == Some(State::Suspect) {
                self.suspects.remove(&u.node);
            }
            if u.state == State::Suspect {
                self.suspects.insert(u.node, now_ms);
            }
        }
        self.changes += 1;
        self.enqueue(u);
        true
    }

    /// Like `apply`, but updates only the local view, without disseminating.
    fn observe(&mut self, u: Update, now_ms: u64) {
        let room = self.members.len() < limits::GOSSIP_MEMBERS_MAX;
        match self.members.get_mut(&u.node) {
            Some(m) if (u.incarnation, u.state) > (m.incarnation, m.state) => {
                m.incarnation = u.incarnation;
                m.addr = u.addr;
                self.changes += 1;
            }
            Some(_) => {}
            None if room => {
                self.members.insert(
                    u.node,
                    Member { addr: u.addr, incarnation: u.incarnation, state: u.state, since_ms: now_ms },
                );
                self.live += 1;
                self.changes += 1;
            }
            None => {}
        }
    }

    /// Bumped on every change to the member table, so a driver republishes only when needed.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    fn set_state(&mut self, node: NodeId, state: State, now_ms: u64) {
        if let Some(m) = self.members.get(&node) {
            let u = Update { node, addr: m.addr, incarnation: m.incarnation, state };
            self.apply(u, now_ms);
        }
    }

    fn next_target(&mut self) -> Option<NodeId> {
        for _ in 0..2 {
            while let Some(t) = self.order.pop() {
                if self.members.get(&t).is_some_and(|m| m.state != State::Dead) {
                    return Some(t);
                }
            }
            self.order = self.members.iter().filter(|(_, m)| m.state != State::Dead).map(|(id, _)| *id).collect();
            self.order.shuffle(&mut self.rng);
        }
        None
    }

    /// Advances timers: probe timeouts, suspicion timeouts, the next probe.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Out> {
        let mut out = Vec::new();
        let suspicion_ms = self.cfg.suspicion_periods * self.cfg.period_ms;
        let expired: Vec<NodeId> =
            self.suspects.iter().filter(|(_, since)| now_ms >= **since + suspicion_ms).map(|(id, _)| *id).collect();
        for id in expired {
            self.stats.deaths += 1;
            self.set_state(id, State::Dead, now_ms);
        }
        self.relays.retain(|_, r| r.expires_ms > now_ms);
        if let Some(p) = &mut self.probe {
            let (target, seq) = (p.target, p.seq);
            if !p.indirect_sent && now_ms >= p.sent_ms + self.cfg.ping_timeout_ms {
                p.indirect_sent = true;
                let mut helpers: Vec<(NodeId, SocketAddr)> = self
                    .members
                    .iter()
                    .filter(|(id, m)| **id != target && m.state == State::Alive)
                    .map(|(id, m)| (*id, m.addr))
                    .collect();
                helpers.shuffle(&mut self.rng);
                helpers.truncate(self.cfg.indirect_probes);
                for (_, addr) in helpers {
                    let o = self.send(addr, seq, Kind::PingReq { target });
                    out.push(o);
                }
            }
            if now_ms >= self.probe.as_ref().map_or(0, |p| p.sent_ms) + self.cfg.period_ms {
                self.probe = None;
                if self.members.get(&target).is_some_and(|m| m.state == State::Alive) {
                    self.stats.suspicions += 1;
                    self.set_state(target, State::Suspect, now_ms);
                }
            }
        }
        if self.probe.is_none() && now_ms >= self.next_probe_ms {
            self.next_probe_ms = now_ms + self.cfg.period_ms;
            self.periods += 1;
            if let Some(o) = self.probe_the_dead() {
                out.push(o);
            }
            if let Some(target) = self.next_target() {
                self.seq += 1;
                let seq = self.seq;
                self.probe = Some(Probe { target, seq, sent_ms: now_ms, indirect_sent: false });
                let addr = self.members[&target].addr;
                out.push(self.send(addr, seq, Kind::Ping));
            }
        }
        out
    }

    /// A ping to one Dead member, every `dead_probe_periods` periods, round robin so each is
    /// reached within (dead members × that) periods. Its ack carries its incarnation; if that
    /// does not beat our Dead record, we tell it, and it refutes with a higher one, which
    /// revives it everywhere.
    fn probe_the_dead(&mut self) -> Option<Out> {
        let dead = (self.members.len() + 1).saturating_sub(self.live);
        if dead == 0 || self.cfg.dead_probe_periods == 0 || !self.periods.is_multiple_of(self.cfg.dead_probe_periods) {
            return None;
        }
        let is_dead = |(_, m): &(&NodeId, &Member)| m.state == State::Dead;
        let after = self.members.range(NodeId(self.dead_cursor.0.saturating_add(1))..).find(is_dead);
        let (id, m) = after.or_else(|| self.members.iter().find(is_dead))?;
        let addr = m.addr;
        self.dead_cursor = *id;
        self.seq += 1;
        let seq = self.seq;
        Some(self.send(addr, seq, Kind::Ping))
    }

    /// When `tick` next has something to do.
    pub fn next_wakeup_ms(&self) -> u64 {
        let mut t = self.next_probe_ms;
        if let Some(p) = &self.probe {
            t = t.min(if p.indirect_sent {
                p.sent_ms + self.cfg.period_ms
            } else {
                p.sent_ms + self.cfg.ping_timeout_ms
            });
        }
        let suspicion_ms = self.cfg.suspicion_periods * self.cfg.period_ms;
        for since in self.suspects.values() {
            t = t.min(since + suspicion_ms);
        }
        t
    }

    pub fn on_message(&mut self, now_ms: u64, msg: Msg) -> Vec<Out> {
        self.stats.received += 1;
        if msg.from == self.me {
            return Vec::new();
        }
        // First-hand evidence that the sender is alive. Gossip it on only if it clears a
        // suspicion; otherwise every node's first contact would flood every queue.
        let sender =
            Update { node: msg.from, addr: msg.from_addr, incarnation: msg.from_incarnation, state: State::Alive };
        let was_alive = self.members.get(&msg.from).is_none_or(|m| m.state == State::Alive);
        let mut tell = None;
        if was_alive {
            self.observe(sender, now_ms);
        } else if !self.apply(sender, now_ms) {
            // We hold the sender as Suspect/Dead at an incarnation it has not refuted (say, it
            // restarted at 0, or a partition healed): tell it directly, so it refutes with a
            // higher one. Not by broadcast: that would spread the stale record to members that
            // hold it Alive.
            tell = self.members.get(&msg.from).map(|m| Update {
                node: msg.from,
                addr: m.addr,
                incarnation: m.incarnation,
                state: m.state,
            });
        }
        for u in msg.updates {
            self.apply(u, now_ms);
        }
        let mut out = match msg.kind {
            Kind::Ping => vec![self.send_with(msg.from_addr, msg.seq, Kind::Ack, tell.take())],
            Kind::Ack => {
                if self.probe.as_ref().is_some_and(|p| p.seq == msg.seq) {
                    self.probe = None;
                }
                match self.relays.remove(&msg.seq) {
                    Some(r) => vec![self.send(r.requester, r.requester_seq, Kind::Ack)],
                    None => Vec::new(),
                }
            }
            Kind::PingReq { target } => self.relay(now_ms, msg.from_addr, msg.seq, target).into_iter().collect(),
        };
        if let Some(u) = tell {
            // Its ack (at the refuted incarnation) revives it here.
            self.seq += 1;
            let seq = self.seq;
            out.push(self.send_with(msg.from_addr, seq, Kind::Ping, Some(u)));
        }
        out
    }

    /// Pings `target` on the requester's behalf; its ack is relayed back.
    fn relay(&mut self, now_ms: u64, requester: SocketAddr, requester_seq: u64, target: NodeId) -> Option<Out> {
        if self.relays.len() >= limits::GOSSIP_QUEUE_MAX {
            return None;
        }
        let addr = self.members.get(&target)?.addr;
        self.seq += 1;
        let seq = self.seq;
        let expires_ms = now_ms + self.cfg.period_ms;
        self.relays.insert(seq, Relay { requester, requester_seq, expires_ms });
        Some(self.send(addr, seq, Kind::Ping))
    }
}
