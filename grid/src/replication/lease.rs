//! How long a new primary waits before it serves (architecture.md §5 rule 6).
//!
//! The old primary's lease ends at most `LEASE` after the send time of the last append a voter
//! acknowledged. A fenced voter has promised the new epoch and acknowledges the old primary no
//! more, and it reports how long ago it last accepted an append (its own lease clock, measured
//! when it handled the fence, so never longer than the truth). When every voter but the old
//! primary answered the fence, no one else can extend the old lease: it ends at most
//! `LEASE - youngest age` after the fence, and the wait shrinks by that much. A silent primary
//! is usually found long after its followers last heard from it, so the wait is then near
//! zero instead of a whole lease. Ages are discounted by the margin's share of the lease, so
//! clocks running up to that much apart (the lease's own assumption) cannot shorten it.

use std::time::Duration;

use crate::ids::NodeId;

/// What a fenced voter said about the previous primary: how long ago it last accepted an
/// append (`None`: not since it started, so no credit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceAge {
    pub node: NodeId,
    pub since_append: Option<Duration>,
}

/// The new primary's wait, counted from when the master finished fencing (`since_fence` ago).
/// `voters` is the fenced epoch's voter set and `old` its primary; `replies` the voters that
/// answered. Zero when the old primary is known to hold no lease (`old_gone`).
pub fn lease_wait(
    lease: Duration,
    margin: Duration,
    voters: &[NodeId],
    old: NodeId,
    replies: &[FenceAge],
    old_gone: bool,
    since_fence: Duration,
) -> Duration {
    if old_gone || replies.iter().any(|r| r.node == old) {
        return Duration::ZERO;
    }
    let others = voters.iter().filter(|v| **v != old);
    let mut youngest: Option<Duration> = None;
    for v in others {
        let Some(age) = replies.iter().find(|r| r.node == *v).and_then(|r| r.since_append) else {
            // A voter that did not answer may still acknowledge the old primary; one that
            // answered without an age gives no credit.
            youngest = Some(Duration::ZERO);
            break;
        };
        youngest = Some(youngest.map_or(age, |y| y.min(age)));
    }
    let credit = match youngest {
        // Discount by the margin's share of the lease (clock rates may differ that much).
        Some(age) if !lease.is_zero() => {
            age.mul_f64(1.0 - margin.as_secs_f64() / lease.as_secs_f64()).min(lease + margin)
        }
        _ => Duration::ZERO,
    };
    (lease + margin).saturating_sub(credit).saturating_sub(since_fence)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(1_000);
    const MARGIN: Duration = Duration::from_millis(100);

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn age(node: u64, since: Option<u64>) -> FenceAge {
        FenceAge { node: NodeId(node), since_append: since.map(ms) }
    }

    /// (case, replies, old gone, since fence, expected wait) for voters 1, 2, 3 with 1 the
    /// old primary.
    #[test]
    fn the_wait_is_the_lease_less_what_every_other_voter_proves() {
        let voters = [NodeId(1), NodeId(2), NodeId(3)];
        let cases: &[(&str, Vec<FenceAge>, bool, u64, u64)] = &[
            ("old primary exited", vec![age(2, Some(0)), age(3, Some(0))], true, 0, 0),
            ("old primary answered the fence", vec![age(1, None), age(2, Some(0))], false, 0, 0),
            ("followers heard it just now: a whole lease", vec![age(2, Some(0)), age(3, Some(0))], false, 0, 1_100),
            ("followers heard it 1.2 s ago: 20 ms left", vec![age(2, Some(1_200)), age(3, Some(1_300))], false, 0, 20),
            ("followers heard it 1.3 s ago: nothing left", vec![age(2, Some(1_300)), age(3, Some(1_400))], false, 0, 0),
            // youngest 500 ms, discounted by 10%: 450 ms of credit.
            ("the youngest age counts", vec![age(2, Some(500)), age(3, Some(2_000))], false, 0, 650),
            ("time since the fence counts too", vec![age(2, Some(500)), age(3, Some(500))], false, 200, 450),
            ("a voter that did not answer: no credit", vec![age(2, Some(5_000))], false, 0, 1_100),
            ("a voter with no age: no credit", vec![age(2, Some(5_000)), age(3, None)], false, 0, 1_100),
            (
                "replies from outside the voters do not count",
                vec![age(2, Some(5_000)), age(9, Some(5_000))],
                false,
                0,
                1_100,
            ),
        ];
        for (case, replies, gone, since, want) in cases {
            let got = lease_wait(LEASE, MARGIN, &voters, NodeId(1), replies, *gone, ms(*since));
            assert_eq!(got, ms(*want), "{case}");
        }
    }

    /// The rule's safety: whatever the ages, the new primary never serves before the latest
    /// moment the old lease could end: `LEASE + MARGIN` after the youngest acknowledgement
    /// (the old primary's clock may run 10% slow), when the voters' clocks may run 10% fast.
    #[test]
    fn never_before_the_old_lease_can_have_ended() {
        let voters = [NodeId(1), NodeId(2), NodeId(3)];
        for a2 in (0..2_500).step_by(37) {
            for a3 in (0..2_500).step_by(53) {
                // Real ages; the voters' clocks run up to 10% fast, so they report more.
                let replies = [age(2, Some(a2 * 11 / 10)), age(3, Some(a3 * 11 / 10))];
                let wait = lease_wait(LEASE, MARGIN, &voters, NodeId(1), &replies, false, Duration::ZERO);
                let lease_left = (LEASE + MARGIN).saturating_sub(ms(a2.min(a3)));
                assert!(wait >= lease_left, "ages {a2}/{a3}: wait {wait:?} < lease left {lease_left:?}");
            }
        }
    }
}
