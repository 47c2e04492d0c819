//! Node names and the simulated address plan, in one place.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Port every storage node serves the Storage gRPC service on.
pub const STORAGE_PORT: u16 = 7100;

/// Storage node `i` (0-based) lives at 10.0.1.(i+1).
pub fn storage_addr(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, i + 1)), STORAGE_PORT)
}

pub fn storage_name(i: u8) -> String {
    format!("storage-{}", i + 1)
}

/// Client node `i` (workloads and checkers) lives at 10.0.0.(i+1).
pub fn client_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i + 1))
}

/// Port every node gossips on (UDP).
pub const GOSSIP_PORT: u16 = 7200;

/// Gossip-only node `i` (scale scenarios, up to 62,500 nodes) lives at 10.2.(i/250).(i%250+1).
pub fn gossip_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 2, (i / 250) as u8, (i % 250) as u8 + 1)), GOSSIP_PORT)
}

/// Port the master serves its gRPC service on.
pub const MASTER_PORT: u16 = 7001;

/// The master lives at 10.0.3.1.
pub fn master_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1)), MASTER_PORT)
}

pub const MASTER_NAME: &str = "master";

/// Agent (machine) `a` runs at 10.0.4.(a+1).
pub fn agent_ip(a: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 4, a + 1))
}

pub fn agent_name(a: u8) -> String {
    format!("agent-{a}")
}

/// Storage process `s` of agent `a` is its own simulated node at 10.1.a.(s+1), serving
/// Storage on `STORAGE_PORT` and gossiping on `GOSSIP_PORT`.
pub fn process_ip(a: u8, s: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, a, s + 1))
}

pub fn process_name(a: u8, s: u8) -> String {
    format!("storage-{a}.{s}")
}
