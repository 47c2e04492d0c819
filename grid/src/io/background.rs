//! Work that may wait for idle CPU (today: building vector indexes). Real mode runs it on one
//! low-priority thread per process (nice 19), so the kernel gives it only what requests leave;
//! the simulator runs it inline, in order, like everything else.

/// Runs `job` as background work; None if the background thread is gone (it panicked).
#[cfg(not(madsim))]
pub async fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    use std::sync::{mpsc, Mutex, OnceLock};
    type Job = Box<dyn FnOnce() + Send>;
    static QUEUE: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new().name("sutra-background".into()).spawn(move || {
            // SAFETY: gettid and setpriority have no memory effects; on Linux a nice value
            // belongs to one thread, this one.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 19);
            }
            while let Ok(job) = rx.recv() {
                job();
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no background thread: background work will not run");
        }
        Mutex::new(tx)
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(job());
    });
    queue.lock().unwrap_or_else(|p| p.into_inner()).send(job).ok()?;
    rx.await.ok()
}

#[cfg(madsim)]
pub async fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    Some(job())
}
