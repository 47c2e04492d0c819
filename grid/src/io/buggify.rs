//! Buggify (FoundationDB style): failure-handling branches the simulator makes run on purpose,
//! far more often than real faults would. Two levels, so each run stresses a different few: the
//! first time a run reaches a point, the point is enabled with probability 1/4; an enabled point
//! then fires with its own probability each time it is reached. Off unless the simulator turns
//! it on for a run (per thread: each simulated run owns its thread); the real build never fires.

#[cfg(madsim)]
mod on {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use rand::Rng as _;

    struct State {
        rng: crate::io::Rng,
        enabled: BTreeMap<&'static str, bool>,
    }

    thread_local! {
        static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    }

    pub fn enable(seed: u64) {
        let state = State { rng: crate::io::seeded_rng(seed), enabled: BTreeMap::new() };
        STATE.with(|s| *s.borrow_mut() = Some(state));
    }

    pub fn disable() {
        STATE.with(|s| *s.borrow_mut() = None);
    }

    pub fn fires(point: &'static str, probability: f64) -> bool {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            let Some(st) = s.as_mut() else { return false };
            let enabled = match st.enabled.get(point) {
                Some(e) => *e,
                None => {
                    let e = st.rng.random_bool(0.25);
                    st.enabled.insert(point, e);
                    e
                }
            };
            enabled && st.rng.random_bool(probability.clamp(0.0, 1.0))
        })
    }

    /// The points this run enabled, for a failing seed's report.
    pub fn enabled_points() -> Vec<&'static str> {
        STATE
            .with(|s| s.borrow().as_ref().map(|st| st.enabled.iter().filter(|(_, e)| **e).map(|(p, _)| *p).collect()))
            .unwrap_or_default()
    }
}

#[cfg(madsim)]
pub use on::{disable, enable, enabled_points, fires};

#[cfg(not(madsim))]
#[inline(always)]
pub fn fires(_point: &'static str, _probability: f64) -> bool {
    false
}

/// True when this buggify point fires (only ever inside a simulated run that enabled buggify).
#[macro_export]
macro_rules! buggify {
    ($probability:expr) => {
        $crate::io::buggify::fires(concat!(file!(), ":", line!()), $probability)
    };
}
