//! A seam for checkers outside the system: the simulator installs a hook (per thread, since
//! each seed runs its own runtime on one thread) and sees every primary taking an epoch and
//! every commit LSN a replica adopts. Without a hook this costs a thread-local read.

use std::cell::RefCell;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `node` became primary of `shard` in `epoch`.
    Primary { node: u64, shard: u32, epoch: u64 },
    /// Replica `instance` (one per opened shard replica, so restarts count apart) of `shard`
    /// on `node` now knows entries through `commit` are committed.
    Commit { node: u64, instance: u64, shard: u32, commit: u64 },
}

type Hook = Box<dyn Fn(Event)>;

thread_local! {
    static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    static NEXT_INSTANCE: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
}

pub fn install(hook: Option<Hook>) {
    HOOK.with(|h| *h.borrow_mut() = hook);
}

pub fn emit(e: Event) {
    HOOK.with(|h| {
        if let Some(f) = h.borrow().as_ref() {
            f(e)
        }
    });
}

/// A fresh replica instance id.
pub fn instance() -> u64 {
    NEXT_INSTANCE.with(|n| {
        let v = n.get();
        n.set(v + 1);
        v
    })
}
