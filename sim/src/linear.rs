//! A Wing–Gong linearizability checker for single registers (architecture.md §7: strong reads are
//! linearizable per key). Each key's history is checked on its own: a depth-first search for
//! an order of the operations that respects real time (an operation that completed before
//! another was invoked comes first) and register semantics (a read returns the latest write),
//! with memoisation on (operations placed, current value). Writes whose outcome is unknown
//! (the client gave up) may take effect at any point after their invocation, or never.

use std::collections::HashSet;

/// Time in microseconds since the run started.
pub type Micros = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Wrote `value` (unique per write).
    Write(String),
    /// Read `value` (`None`: the key had no value).
    Read(Option<String>),
}

#[derive(Clone, Debug)]
pub struct Event {
    pub op: Op,
    pub invoke: Micros,
    /// `None`: the outcome is unknown (only meaningful for writes; failed reads are dropped).
    pub complete: Option<Micros>,
}

/// Most operations one key's history may hold (the search is exponential in the worst case).
pub const OPS_PER_KEY_MAX: usize = 64;

/// Ok, or a description of the first operation no linearization can place.
pub fn check(history: &[Event]) -> Result<(), String> {
    if history.len() > OPS_PER_KEY_MAX {
        return Err(format!("{} operations on one key; the checker takes at most {OPS_PER_KEY_MAX}", history.len()));
    }
    let mut values: Vec<String> = Vec::new();
    let mut val = |s: &str| match values.iter().position(|v| v == s) {
        Some(i) => i as u32 + 1,
        None => {
            values.push(s.to_string());
            values.len() as u32
        }
    };
    // Values as small integers (0: no value).
    let ops: Vec<(bool, u32, Micros, Micros)> = history
        .iter()
        .map(|e| match &e.op {
            Op::Write(v) => (true, val(v), e.invoke, e.complete.unwrap_or(Micros::MAX)),
            Op::Read(v) => (false, v.as_deref().map_or(0, &mut val), e.invoke, e.complete.unwrap_or(Micros::MAX)),
        })
        .collect();
    let must: u64 = ops.iter().enumerate().filter(|(_, o)| o.3 != Micros::MAX).fold(0, |m, (i, _)| m | 1 << i);
    let mut failed: HashSet<(u64, u32)> = HashSet::new();
    let mut deepest = 0u64;
    if search(&ops, must, 0, 0, &mut failed, &mut deepest) {
        return Ok(());
    }
    // Name an operation the deepest partial order could not place.
    let stuck = (0..ops.len()).find(|i| deepest & (1 << i) == 0 && must & (1 << i) != 0).unwrap_or(0);
    Err(format!(
        "not linearizable: no order places {:?} (invoked {} µs, completed {:?} µs) after {} of {} operations",
        history[stuck].op,
        history[stuck].invoke,
        history[stuck].complete,
        deepest.count_ones(),
        ops.len()
    ))
}

fn search(
    ops: &[(bool, u32, Micros, Micros)],
    must: u64,
    done: u64,
    value: u32,
    failed: &mut HashSet<(u64, u32)>,
    deepest: &mut u64,
) -> bool {
    if done & must == must {
        return true;
    }
    if failed.contains(&(done, value)) {
        return false;
    }
    if done.count_ones() > deepest.count_ones() {
        *deepest = done;
    }
    // Whatever goes next must have been invoked before every pending operation completed.
    let horizon = (0..ops.len()).filter(|i| done & (1 << i) == 0).map(|i| ops[i].3).min().unwrap_or(Micros::MAX);
    for (i, &(write, v, invoke, _)) in ops.iter().enumerate() {
        if done & (1 << i) != 0 || invoke > horizon {
            continue;
        }
        let next = if write {
            v
        } else if v == value {
            value
        } else {
            continue;
        };
        if search(ops, must, done | 1 << i, next, failed, deepest) {
            return true;
        }
    }
    failed.insert((done, value));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: &str, a: u64, b: Option<u64>) -> Event {
        Event { op: Op::Write(v.into()), invoke: a, complete: b }
    }
    fn r(v: Option<&str>, a: u64, b: u64) -> Event {
        Event { op: Op::Read(v.map(String::from)), invoke: a, complete: Some(b) }
    }

    #[test]
    fn sequential_and_concurrent_histories() {
        assert!(check(&[w("a", 0, Some(10)), r(Some("a"), 20, 30)]).is_ok());
        assert!(check(&[r(None, 0, 5), w("a", 10, Some(20)), r(Some("a"), 25, 30)]).is_ok());
        // Concurrent write: the read may see either value.
        assert!(check(&[w("a", 0, Some(10)), w("b", 5, Some(50)), r(Some("a"), 20, 30)]).is_ok());
        assert!(check(&[w("a", 0, Some(10)), w("b", 5, Some(50)), r(Some("b"), 20, 30)]).is_ok());
    }

    #[test]
    fn stale_and_phantom_reads_are_caught() {
        // A read after a completed write must not return the older value.
        let e = check(&[w("a", 0, Some(10)), w("b", 20, Some(30)), r(Some("a"), 40, 50)]).unwrap_err();
        assert!(e.contains("not linearizable"), "{e}");
        // A value nobody wrote.
        assert!(check(&[w("a", 0, Some(10)), r(Some("z"), 20, 30)]).is_err());
        // Once a read saw the new value, a later read may not see the old one.
        assert!(
            check(&[w("a", 0, Some(5)), w("b", 10, Some(100)), r(Some("b"), 20, 30), r(Some("a"), 40, 50)]).is_err()
        );
    }

    #[test]
    fn unknown_writes_may_apply_late_or_never() {
        assert!(check(&[w("a", 0, None), r(None, 10, 20), r(Some("a"), 30, 40)]).is_ok());
        assert!(check(&[w("a", 0, None), r(None, 10, 20)]).is_ok());
        // But not before they were invoked.
        assert!(check(&[r(Some("a"), 0, 5), w("a", 10, None)]).is_err());
    }
}
