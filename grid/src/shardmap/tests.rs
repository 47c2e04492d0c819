use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn nodes(spec: &[(u64, u64)]) -> Vec<NodeInfo> {
    spec.iter().map(|(id, agent)| NodeInfo { id: NodeId(*id), agent: *agent }).collect()
}

fn render(map: &ShardMap) -> String {
    let mut out = String::new();
    for s in &map.shards {
        let r: Vec<String> = s.replicas.iter().map(|n| format!("n{}", n.0)).collect();
        out.push_str(&format!(
            "shard {} [{:016x}, {:016x}] replicas {} primary n{}\n",
            s.id.0,
            s.range.start,
            s.range.end,
            r.join(","),
            s.primary.0
        ));
    }
    out
}

/// Golden cases: `case NAME shards=S replication=R nodes=ID@AGENT,...` followed by the expected
/// rendering. Set UPDATE_GOLDEN=1 to rewrite the file after an intended change, then review it.
#[test]
fn placement_matches_the_golden_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/shardmap/golden.txt");
    let text = std::fs::read_to_string(path).unwrap();
    let mut rewritten = String::new();
    let mut failures = Vec::new();
    for block in text.split("\ncase ").map(|b| b.trim_start_matches("case ")) {
        let mut lines = block.lines();
        let Some(header) = lines.next() else { continue };
        let expected: String = lines.filter(|l| l.starts_with("shard ")).map(|l| format!("{l}\n")).collect();
        let field = |k: &str| header.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}="))).unwrap();
        let spec: Vec<(u64, u64)> = field("nodes")
            .split(',')
            .map(|n| {
                let (id, agent) = n.split_once('@').unwrap();
                (id.parse().unwrap(), agent.parse().unwrap())
            })
            .collect();
        let map =
            place(field("shards").parse().unwrap(), field("replication").parse().unwrap(), &nodes(&spec)).unwrap();
        let got = render(&map);
        if got != expected {
            failures.push(format!("case {header}\n--- expected\n{expected}--- got\n{got}"));
        }
        rewritten.push_str(&format!("case {header}\n{got}"));
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, rewritten).unwrap();
        return;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn ranges_tile_the_key_space() {
    for n in [1, 2, 3, 7, 64, 1000] {
        let r = even_ranges(n).unwrap();
        assert_eq!(r.len(), n as usize);
        assert_eq!(r[0].start, 0);
        assert_eq!(r.last().unwrap().end, u64::MAX);
        assert!(r.windows(2).all(|w| w[0].end + 1 == w[1].start));
    }
    assert!(even_ranges(0).is_err());
    assert!(even_ranges(SHARDS_MAX + 1).is_err());
}

#[test]
fn bad_requests_are_refused_clearly() {
    let two = nodes(&[(1, 1), (2, 2)]);
    assert_eq!(place(4, 3, &two), Err(ShardMapError::TooFewNodes { needed: 3, have: 2 }));
    assert_eq!(place(4, 0, &two), Err(ShardMapError::BadReplication));
    // Duplicate node entries count once.
    let dup = nodes(&[(1, 1), (1, 1), (2, 2)]);
    assert!(matches!(place(1, 3, &dup), Err(ShardMapError::TooFewNodes { have: 2, .. })));
}

#[test]
fn changes_are_compare_and_set_and_must_validate() {
    let mut map = place(4, 3, &nodes(&[(1, 1), (2, 2), (3, 3), (4, 1)])).unwrap();
    let v = map.version;
    let new_primary = map.shards[0].replicas[1];
    assert_eq!(
        map.compare_and_set(v, |m| {
            m.shards[0].primary = new_primary;
            m.shards[0].epoch = Epoch(2);
        }),
        Ok(v + 1)
    );
    assert_eq!(map.compare_and_set(v, |_| {}), Err(ShardMapError::VersionMismatch { expected: v, actual: v + 1 }));
    let before = map.clone();
    let r = map.compare_and_set(v + 1, |m| m.shards[1].range.start += 1);
    assert!(matches!(r, Err(ShardMapError::Invalid(ref m)) if m.contains("gap")), "{r:?}");
    assert_eq!(map, before, "a rejected change leaves the map as it was");
    let r = map.compare_and_set(v + 1, |m| m.shards[2].primary = NodeId(99));
    assert!(matches!(r, Err(ShardMapError::Invalid(ref m)) if m.contains("primary")), "{r:?}");
}

proptest! {
    #[test]
    fn placement_keeps_its_promises(
        shards in 1u32..200,
        replication in 1usize..5,
        spec in proptest::collection::btree_map(0u64..50, 0u64..6, 1..30),
        keys in proptest::collection::vec(any::<u64>(), 20),
    ) {
        let ns = nodes(&spec.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>());
        let Ok(map) = place(shards, replication, &ns) else {
            prop_assert!(ns.len() < replication);
            return Ok(());
        };
        prop_assert!(map.validate().is_ok());
        let agents_total: BTreeSet<u64> = ns.iter().map(|n| n.agent).collect();
        let agent_of: BTreeMap<NodeId, u64> = ns.iter().map(|n| (n.id, n.agent)).collect();
        let mut load: BTreeMap<NodeId, usize> = ns.iter().map(|n| (n.id, 0)).collect();
        let mut prim: BTreeMap<NodeId, usize> = load.clone();
        for s in &map.shards {
            prop_assert_eq!(s.replicas.len(), replication);
            let agents: BTreeSet<u64> = s.replicas.iter().map(|r| agent_of[r]).collect();
            // Distinct machines whenever there are enough of them.
            prop_assert_eq!(agents.len(), replication.min(agents_total.len()));
            for r in &s.replicas {
                *load.get_mut(r).unwrap() += 1;
            }
            *prim.get_mut(&s.primary).unwrap() += 1;
        }
        // With one agent per node the greedy is perfectly balanced; agent spreading may cost one.
        let spread = |m: &BTreeMap<NodeId, usize>| m.values().max().unwrap() - m.values().min().unwrap();
        if agents_total.len() == ns.len() {
            prop_assert!(spread(&load) <= 1, "replica load {load:?}");
            prop_assert!(spread(&prim) <= 1, "primaries {prim:?}");
        }
        for k in keys {
            let s = map.shard_for(k).unwrap();
            prop_assert!(s.range.start <= k && k <= s.range.end);
        }
    }
}
