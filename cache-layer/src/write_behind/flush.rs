//! Flushing: seal the live hash into a batch, claim batches under a lease, hand them to the sink,
//! delete them only after the sink succeeded.

use std::{
    future::Future,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::{sync::oneshot, task::JoinHandle};

use super::{buffer::CounterSet, Counters};
use crate::{store::Store, util::now_ms, Cache, Error};

/// The error a sink may return: anything convertible into a boxed error (`String`, `&str`, any
/// `std::error::Error + Send + Sync`, `anyhow::Error`, ...).
pub(crate) type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// One batch handed to a sink: the counter deltas accumulated since the previous batch, and an id.
///
/// Delivery is at-least-once: a batch is deleted only after its sink call returned `Ok`, so a crash
/// (or a lost connection) after the sink applied it but before the deletion means the *same* batch
/// — same [`id`](Batch::id), same entries — is delivered again. A sink that must not double-count
/// records the ids it applied (in the same database transaction as the counts) and skips ids it has
/// seen. Entries are sorted by counter id; each id appears once.
///
/// `Batch` derefs to the slice of `(id, delta)` pairs.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_layer::Error> {
/// let views = cache_layer::Cache::in_memory().counters("views");
/// views.incr("product:42", 2).await?;
/// views
///     .flush_now_with_id(|batch: cache_layer::Batch| async move {
///         assert_eq!(batch.counters(), "views");
///         assert!(!batch.id().is_empty());
///         assert_eq!(batch.len(), 1);
///         assert_eq!(batch[0], ("product:42".to_string(), 2));
///         Ok::<_, String>(())
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    id: String,
    counters: String,
    entries: Vec<(String, i64)>,
}

impl Batch {
    /// The batch's idempotency token: unique per batch, identical on every redelivery of it.
    /// Ids of one counter set sort by the time the batch was sealed.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The name of the counter set the batch belongs to.
    pub fn counters(&self) -> &str {
        &self.counters
    }

    /// The `(counter id, delta)` pairs, sorted by counter id.
    pub fn entries(&self) -> &[(String, i64)] {
        &self.entries
    }

    /// The `(counter id, delta)` pairs, by value.
    pub fn into_entries(self) -> Vec<(String, i64)> {
        self.entries
    }
}

impl std::ops::Deref for Batch {
    type Target = [(String, i64)];

    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

impl IntoIterator for Batch {
    type Item = (String, i64);
    type IntoIter = std::vec::IntoIter<(String, i64)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// What one or more flush cycles delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Batches the sink accepted.
    pub batches: u64,
    /// `(id, delta)` pairs in those batches.
    pub entries: u64,
}

impl std::ops::AddAssign for FlushReport {
    fn add_assign(&mut self, other: FlushReport) {
        self.batches += other.batches;
        self.entries += other.entries;
    }
}

/// A background flusher started by [`Counters::flush_every`]. Stop it with
/// [`shutdown`](Flusher::shutdown) (graceful: pushes and flushes what is pending).
///
/// Dropping the handle detaches the task: it keeps flushing until the runtime shuts down.
/// [`abort`](Flusher::abort) stops it at once, even mid-flush; nothing is lost (a batch it was
/// delivering is delivered again by the next flush of this counter set in this process, or by any
/// process once its lease expires).
#[derive(Debug)]
#[must_use = "dropping a Flusher detaches it; call shutdown().await to stop it and flush what is pending"]
pub struct Flusher {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<FlushReport, Error>>,
}

impl Flusher {
    /// Stops the flusher gracefully: lets a flush in progress finish, pushes every increment still
    /// buffered in this process to Redis, runs a last flush and returns what all flushes of this
    /// flusher delivered. `Err` when that last push or flush failed (Redis or the sink down, or
    /// no replica acknowledged: [`Error::NotReplicated`]): nothing is lost, the increments stay in
    /// Redis (or buffered here) for the next flush.
    pub async fn shutdown(mut self) -> Result<FlushReport, Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => Err(Error::Sink(
                format!("write-behind flusher task was cancelled: {join}").into(),
            )),
        }
    }

    /// Stops the flusher now, without a final flush (see the type docs for why nothing is lost).
    pub fn abort(self) {
        self.task.abort();
    }

    /// Whether the flusher task has ended (shut down, aborted or panicked in the sink).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Counters {
    /// Spawns a flusher for [`flush_every`](Counters::flush_every) with a sink that takes [`Batch`].
    pub(crate) fn spawn_flusher<F, Fut, E>(&self, interval: Duration, mut sink: F) -> Flusher
    where
        F: FnMut(Batch) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<SinkError>,
    {
        let counters = self.clone();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let interval = interval.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut detached = false;
            let mut total = FlushReport::default();
            loop {
                tokio::select! {
                    biased;
                    stop = &mut stop_rx, if !detached => match stop {
                        Ok(()) => break,
                        // The handle was dropped: keep running, detached.
                        Err(_) => detached = true,
                    },
                    _ = ticker.tick() => {
                        match counters.flush_cycle(&mut sink, Buffered::PushFirst).await {
                            Ok(report) => total += report,
                            Err(err) => tracing::warn!(counters = %counters.set.name,
                                error = %err, "write-behind flush failed; retrying next interval"),
                        }
                    }
                }
            }
            counters.sync().await?;
            total += counters
                .flush_cycle(&mut sink, Buffered::AlreadyPushed)
                .await?;
            Ok(total)
        });
        Flusher {
            stop: Some(stop_tx),
            task,
        }
    }

    /// One flush cycle: push this process's buffer (best effort), deliver leftover batches (crashed
    /// or failed flushes, oldest first), then seal the live hash and deliver it. Stops at the first
    /// failure; a failed sink leaves the batch for the next cycle and seals nothing new, so while
    /// the sink is down increments keep accumulating in one live hash.
    pub(crate) async fn flush_cycle<F, Fut, E>(
        &self,
        sink: &mut F,
        buffered: Buffered,
    ) -> Result<FlushReport, Error>
    where
        F: FnMut(Batch) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Into<SinkError>,
    {
        let set = &self.set;
        let cache = &self.cache;
        let _one_cycle_per_process = set.flush_lock.lock().await;
        if buffered == Buffered::PushFirst {
            if let Err(err) = set.sync(cache).await {
                tracing::debug!(counters = %set.name, error = %err,
                    "write-behind flush: buffered increments could not be pushed yet");
            }
        }
        let mut report = FlushReport::default();
        while let Some(id) = claim(set, cache).await? {
            deliver(set, cache, id, sink, &mut report).await?;
        }
        let id = format!("{:013}-{:016x}", now_ms(), rand::random::<u64>());
        if seal(set, cache, &id).await? {
            deliver(set, cache, id, sink, &mut report).await?;
        }
        Ok(report)
    }
}

/// What a flush cycle does with the increments buffered in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buffered {
    /// Push them first (best effort), so the batch includes them.
    PushFirst,
    /// The caller just pushed them.
    AlreadyPushed,
}

// Each step of the batch protocol is one store operation, through the breaker (on Redis, one
// script on keys of one hash slot; see `store/scripts.rs`).

async fn seal(set: &CounterSet, cache: &Cache, id: &str) -> Result<bool, Error> {
    let op = cache
        .store()
        .counters_seal(&set.keys, id, &set.token, set.config.lease);
    unreplicated_counted(set, cache.store_op(op).await)
}

async fn claim(set: &CounterSet, cache: &Cache) -> Result<Option<String>, Error> {
    let op = cache
        .store()
        .counters_claim(&set.keys, &set.token, set.config.lease);
    unreplicated_counted(set, cache.store_op(op).await)
}

/// Counts a seal or claim no replica acknowledged: the batch stays sealed and leased to this
/// process, undelivered; the next flush claims it again.
fn unreplicated_counted<T>(set: &CounterSet, result: Result<T, Error>) -> Result<T, Error> {
    if let Err(Error::NotReplicated { timeout }) = &result {
        set.note_unreplicated();
        tracing::warn!(counters = %set.name, timeout = ?timeout,
            "write-behind flush: no replica acknowledged the batch; not delivered, retried by the \
             next flush");
    }
    result
}

async fn renew(set: &CounterSet, cache: &Cache, id: &str) -> Result<bool, Error> {
    let op = cache
        .store()
        .counters_renew(&set.keys, id, &set.token, set.config.lease);
    cache.store_op(op).await
}

async fn release(set: &CounterSet, cache: &Cache, id: &str) -> Result<(), Error> {
    let op = cache.store().counters_release(&set.keys, id, &set.token);
    cache.store_op(op).await
}

async fn complete(set: &CounterSet, cache: &Cache, id: &str) -> Result<(), Error> {
    let op = cache.store().counters_complete(&set.keys, id);
    cache.store_op(op).await
}

/// The entries of a sealed batch, sorted by id.
async fn read(set: &CounterSet, cache: &Cache, id: &str) -> Result<Vec<(String, i64)>, Error> {
    let op = cache.store().counters_read(&set.keys, id);
    let mut entries = cache.store_op(op).await?;
    entries.sort_unstable();
    Ok(entries)
}

/// Reads a claimed batch, runs the sink (renewing the lease while it runs), deletes the batch on
/// success and gives it back on failure.
async fn deliver<F, Fut, E>(
    set: &Arc<CounterSet>,
    cache: &Cache,
    id: String,
    sink: &mut F,
    report: &mut FlushReport,
) -> Result<(), Error>
where
    F: FnMut(Batch) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<SinkError>,
{
    let entries = read(set, cache, &id).await?;
    if entries.is_empty() {
        return complete(set, cache, &id).await;
    }
    let count = entries.len() as u64;
    let batch = Batch {
        id: id.clone(),
        counters: set.name.clone(),
        entries,
    };
    let call = sink(batch);
    let delivery = async move { call.await.map_err(Into::<SinkError>::into) };
    tokio::pin!(delivery);
    let renew_every = (set.config.lease / 3).max(Duration::from_millis(10));
    let outcome = loop {
        tokio::select! {
            outcome = &mut delivery => break outcome,
            _ = tokio::time::sleep(renew_every) => {
                match renew(set, cache, &id).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(counters = %set.name, batch = %id,
                        "write-behind lease lost while the sink ran; the batch may be delivered twice"),
                    Err(err) => tracing::debug!(counters = %set.name, batch = %id, error = %err,
                        "write-behind lease renewal failed"),
                }
            }
        }
    };
    match outcome {
        Ok(()) => {
            set.note_batch(count);
            report.batches += 1;
            report.entries += count;
            if let Err(err) = complete(set, cache, &id).await {
                set.stats.unconfirmed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(counters = %set.name, batch = %id, error = %err,
                    "write-behind batch delivered but not deleted; it will be delivered again \
                     with the same id");
                return Err(err);
            }
            Ok(())
        }
        Err(err) => {
            set.note_sink_failure();
            if let Err(release_err) = release(set, cache, &id).await {
                tracing::debug!(counters = %set.name, batch = %id, error = %release_err,
                    "write-behind lease release failed; the lease expires instead");
            }
            Err(Error::Sink(err))
        }
    }
}
