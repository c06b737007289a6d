//! Small helpers every layer uses: wall-clock milliseconds, duration conversions, decimal
//! integers written into keys and headers, locking a std mutex that a panicking thread may
//! have poisoned, and a future that finishes in the background when its caller goes away.
//! Depends on nothing else in the crate.

use std::{
    future::Future,
    pin::Pin,
    sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard},
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Runs a future in the caller's task; if the caller drops it before it finishes (a cancelled
/// request), what is left of it is spawned on the current Tokio runtime and runs to completion.
/// Costs one allocation instead of a task per call: the task is only made for the rare caller
/// that goes away.
///
/// Nested ones (a cached function whose load calls cached functions, recursion included) run
/// inline only [`MAX_INLINE_DEPTH`] deep on one thread's stack; deeper ones are spawned at once,
/// so each further level polls on a fresh stack. A panic reaches the caller either way, and a
/// future that panicked is not spawned again (it is dropped with the unwinding caller).
pub(crate) struct FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    state: Finish<F>,
}

enum Finish<F: Future> {
    Inline(Pin<Box<F>>),
    Spawned(tokio::task::JoinHandle<F::Output>),
    Done,
}

/// How many [`FinishOnDrop`]s may poll inside one another on one thread.
pub(crate) const MAX_INLINE_DEPTH: usize = 4;

thread_local! {
    /// How many [`FinishOnDrop`]s are polling their future on this thread right now.
    static INLINE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl<F> FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    pub(crate) fn new(future: F) -> Self {
        let state = if INLINE_DEPTH.with(|depth| depth.get()) < MAX_INLINE_DEPTH {
            Finish::Inline(Box::pin(future))
        } else {
            Finish::Spawned(tokio::spawn(future))
        };
        FinishOnDrop { state }
    }
}

impl<F> Future for FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let output = match &mut self.state {
            Finish::Inline(future) => {
                let depth = INLINE_DEPTH.with(|depth| {
                    depth.set(depth.get() + 1);
                    DepthGuard
                });
                let polled = future.as_mut().poll(cx);
                drop(depth);
                std::task::ready!(polled)
            }
            Finish::Spawned(task) => match std::task::ready!(Pin::new(task).poll(cx)) {
                Ok(output) => output,
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                // Only happens while the runtime shuts down, when this caller is going away too.
                Err(err) => panic!("cache load task did not complete: {err}"),
            },
            // Polled after it finished: a caller bug; never happens through `.await`.
            Finish::Done => return Poll::Pending,
        };
        self.state = Finish::Done;
        Poll::Ready(output)
    }
}

/// Lowers [`INLINE_DEPTH`] when an inline poll returns or unwinds.
struct DepthGuard;

impl Drop for DepthGuard {
    fn drop(&mut self) {
        INLINE_DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

impl<F> Drop for FinishOnDrop<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        // A spawned one keeps running without its handle.
        let Finish::Inline(future) = std::mem::replace(&mut self.state, Finish::Done) else {
            return;
        };
        if std::thread::panicking() {
            return;
        }
        // Without a runtime (it is shutting down, or the caller never ran on one) the rest of the
        // work is dropped, as a spawned task would be.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(future));
        }
    }
}

/// Milliseconds since the Unix epoch (entry timestamps are wall-clock so processes agree).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// Appends `v` in decimal, as `Display` writes it, without the formatting machinery (keys and
/// headers built on every hit carry integers).
pub(crate) fn push_decimal(out: &mut String, v: u64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// [`push_decimal`] for signed integers.
pub(crate) fn push_signed_decimal(out: &mut String, v: i64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// `d` in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `d` in whole milliseconds for a Redis `PX` or TTL argument: at least 1 (`PX 0` is an error).
pub(crate) fn millis_at_least_one(d: Duration) -> u64 {
    millis(d).max(1)
}

/// Locks `mutex`, recovering from poisoning: every value guarded this way is consistent between
/// statements (counters, sets, timestamps), so a panic elsewhere leaves nothing half-written.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`] for the read side of an `RwLock`.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`] for the write side of an `RwLock`.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_finish_on_drop_runs_to_completion_in_a_task() {
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u32>();
        let mut work = Box::pin(FinishOnDrop::new(async move {
            let _ = release_rx.await;
            let _ = done_tx.send(7);
        }));
        // Polled once (it starts, in this task), then dropped: the caller went away.
        assert!(futures_poll_once(work.as_mut()).await.is_pending());
        drop(work);
        release_tx.send(()).expect("the work is still waiting");
        assert_eq!(done_rx.await, Ok(7), "the rest ran in a task of its own");
    }

    #[tokio::test]
    async fn finish_on_drop_runs_inline_up_to_its_depth_then_spawns() {
        tokio::task_local! {
            /// Set for the test's own task only: visible to a level that runs inline.
            static CALLER: ();
        }
        // Each level records whether it runs in the caller's task.
        fn level(
            depth: usize,
            inline: std::sync::Arc<Mutex<Vec<bool>>>,
        ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
            Box::pin(FinishOnDrop::new(async move {
                lock(&inline).push(CALLER.try_with(|_| ()).is_ok());
                if depth > 0 {
                    level(depth - 1, inline).await;
                }
            }))
        }
        let inline = std::sync::Arc::new(Mutex::new(Vec::new()));
        CALLER
            .scope((), level(MAX_INLINE_DEPTH + 1, inline.clone()))
            .await;
        let inline = lock(&inline).clone();
        let mut expected = vec![true; MAX_INLINE_DEPTH];
        expected.extend([false, false]);
        assert_eq!(
            inline, expected,
            "the first {MAX_INLINE_DEPTH} levels run in the caller's task, deeper ones in tasks of their own"
        );
    }

    #[tokio::test]
    async fn a_panic_in_a_spawned_finish_on_drop_reaches_its_caller() {
        fn level(depth: usize) -> std::pin::Pin<Box<dyn Future<Output = u32> + Send>> {
            Box::pin(FinishOnDrop::new(async move {
                if depth == 0 {
                    panic!("loader failed");
                }
                level(depth - 1).await
            }))
        }
        let caller = tokio::spawn(level(MAX_INLINE_DEPTH + 1));
        let err = caller.await.expect_err("the panic reaches the caller");
        assert!(err.is_panic());
    }

    /// Polls `future` once.
    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await
    }

    #[test]
    fn decimals_are_what_display_writes() {
        for v in [0u64, 7, 10, 99, 100, 65_535, u64::MAX] {
            let mut out = String::from("x");
            push_decimal(&mut out, v);
            assert_eq!(out, format!("x{v}"));
        }
        for v in [0i64, -1, 42, -1000, i64::MIN, i64::MAX] {
            let mut out = String::new();
            push_signed_decimal(&mut out, v);
            assert_eq!(out, v.to_string());
        }
    }

    #[test]
    fn conversions_saturate_and_px_is_never_zero() {
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis_at_least_one(Duration::ZERO), 1);
        assert!(now_ms() > 1_600_000_000_000);
    }

    #[test]
    fn a_poisoned_mutex_still_locks() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let poisoner = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), 1);
    }
}
