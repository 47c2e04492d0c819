//! The clock leases are measured on. A lease is only as safe as the bound on how far two
//! processes' clock rates differ (`LEASE_MARGIN_MS` absorbs 10% over a lease), so the simulator
//! can make one process's clock run fast or slow (clock skew) and check that reads stay
//! linearizable within that bound. Everything else (timers, sleeps) uses the runtime's time.

use tokio::time::Instant;

/// Now, on this process's lease clock.
pub fn lease_now() -> Instant {
    #[cfg(madsim)]
    {
        skew::now(Instant::now())
    }
    #[cfg(not(madsim))]
    {
        Instant::now()
    }
}

#[cfg(madsim)]
mod skew {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use tokio::time::Instant;

    /// Per simulated node: (real origin, skewed origin, rate). Per thread, as each simulated
    /// run owns its thread.
    type Rates = BTreeMap<madsim::task::NodeId, (Instant, Instant, f64)>;

    thread_local! {
        static RATES: RefCell<Rates> = const { RefCell::new(BTreeMap::new()) };
    }

    pub fn now(real: Instant) -> Instant {
        let node = madsim::plugin::node();
        RATES.with(|r| match r.borrow().get(&node) {
            Some((origin, skewed, rate)) => *skewed + real.saturating_duration_since(*origin).mul_f64(*rate),
            None => real,
        })
    }

    /// From now on, `node`'s lease clock advances `rate` seconds per real second (continuing
    /// from where it stands, so it never goes back).
    pub fn set_rate(node: madsim::task::NodeId, rate: f64) {
        let real = Instant::now();
        RATES.with(|r| {
            let mut r = r.borrow_mut();
            let skewed = match r.get(&node) {
                Some((origin, skewed, old)) => *skewed + real.saturating_duration_since(*origin).mul_f64(*old),
                None => real,
            };
            r.insert(node, (real, skewed, rate.clamp(0.01, 100.0)));
        });
    }

    /// Forgets every skew: for the start of a run (the instants belong to the previous one).
    pub fn clear() {
        RATES.with(|r| r.borrow_mut().clear());
    }
}

#[cfg(madsim)]
pub use skew::{clear, set_rate};
