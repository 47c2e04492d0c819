//! Gossip datagram encoding. Anything malformed decodes to an error and is dropped: datagrams
//! come from the network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::swim::{Kind, Msg, State, Update};
use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::NodeId;
use crate::limits;

const VERSION: u8 = 1;

fn put_addr(w: &mut Writer, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            w.u8(4);
            w.buf.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            w.u8(6);
            w.buf.extend_from_slice(&ip.octets());
        }
    }
    w.u16(a.port());
}

fn get_addr(r: &mut Reader<'_>) -> Result<SocketAddr, DecodeError> {
    let at = r.pos();
    let ip = match r.u8("address family")? {
        4 => {
            let b = r.take(4, "ipv4")?;
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(r.take(16, "ipv6")?);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(DecodeError { offset: at, what: "address family" }),
    };
    Ok(SocketAddr::new(ip, r.u16("port")?))
}

pub fn encode(m: &Msg) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + m.updates.len() * 40);
    w.u8(VERSION);
    match m.kind {
        Kind::Ping => w.u8(0),
        Kind::Ack => w.u8(1),
        Kind::PingReq { target } => {
            w.u8(2);
            w.u64(target.0);
        }
    }
    w.u64(m.from.0);
    put_addr(&mut w, m.from_addr);
    w.u64(m.from_incarnation);
    w.u64(m.seq);
    w.u8(m.updates.len() as u8);
    for u in &m.updates {
        w.u64(u.node.0);
        put_addr(&mut w, u.addr);
        w.u64(u.incarnation);
        w.u8(u.state as u8);
    }
    debug_assert!(w.buf.len() <= limits::GOSSIP_DATAGRAM_BYTES_MAX);
    w.buf
}

pub fn decode(b: &[u8]) -> Result<Msg, DecodeError> {
    let mut r = Reader::new(b);
    if r.u8("version")? != VERSION {
        return Err(DecodeError { offset: 0, what: "version" });
    }
    let at = r.pos();
    let kind = match r.u8("kind")? {
        0 => Kind::Ping,
        1 => Kind::Ack,
        2 => Kind::PingReq { target: NodeId(r.u64("target")?) },
        _ => return Err(DecodeError { offset: at, what: "kind" }),
    };
    let from = NodeId(r.u64("from")?);
    let from_addr = get_addr(&mut r)?;
    let from_incarnation = r.u64("incarnation")?;
    let seq = r.u64("seq")?;
    let n = r.u8("update count")? as usize;
    if n > limits::GOSSIP_PIGGYBACK_MAX * 4 {
        return Err(DecodeError { offset: r.pos(), what: "update count" });
    }
    let mut updates = Vec::with_capacity(n);
    for _ in 0..n {
        let node = NodeId(r.u64("node")?);
        let addr = get_addr(&mut r)?;
        let incarnation = r.u64("incarnation")?;
        let at = r.pos();
        let state = match r.u8("state")? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Dead,
            _ => return Err(DecodeError { offset: at, what: "state" }),
        };
        updates.push(Update { node, addr, incarnation, state });
    }
    r.expect_end("datagram")?;
    Ok(Msg { from, from_addr, from_incarnation, seq, kind, updates })
}
