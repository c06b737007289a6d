//! In-process single-flight: one leader loads, followers wait for its outcome.
//!
//! The map lock is held only to look up or insert a flight, never across a load, so a loader may
//! itself call the cache (even for the same key through another path) without deadlocking.
//!
//! Outcomes a follower can see:
//! - `Value`: the leader loaded a value; the follower clones it.
//! - `Failed`: the leader's loader returned an error. Errors are not shared (they need not be
//!   `Clone`), so each follower runs its own loader once, uncoalesced.
//! - `Abandoned`: the leader was cancelled or its loader panicked. The followers rejoin and one of
//!   them becomes the new leader. The panic itself reaches only the caller whose loader panicked.

use std::{
    any::Any,
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use tokio::sync::Notify;

use crate::util::lock;

/// The result of a flight as seen by followers.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// The leader is still loading.
    Running,
    Value(Arc<dyn Any + Send + Sync>),
    Failed,
    Abandoned,
}

/// One load in flight. Its followers hold it (`Arc`) and wait on `settled`; the leader sets
/// `outcome` once and wakes them. Everything a flight needs is in this one allocation.
struct Flight {
    id: u64,
    outcome: Mutex<Outcome>,
    settled: Notify,
    /// Set when an invalidation covered this load: its result must not be stored, and new
    /// callers start a fresh flight instead of joining this one.
    detached: AtomicBool,
    tags: Vec<String>,
}

impl Flight {
    /// Publishes `outcome` and wakes every follower.
    fn settle(&self, outcome: Outcome) {
        *lock(&self.outcome) = outcome;
        self.settled.notify_waiters();
    }
}

/// All flights of one cache, keyed by user key.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Arc<Flight>>>,
    next_id: AtomicU64,
}

/// A caller's role in a flight.
pub(crate) enum Join {
    Leader(LeaderGuard),
    Follower(Follower),
}

impl Flights {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Flight>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        lock(&self.map)
    }

    /// Joins the running flight for `key`, or starts one and becomes its leader.
    pub(crate) fn join(self: &Arc<Self>, key: &str, tags: &[String]) -> Join {
        let mut map = self.map();
        if let Some(flight) = map.get(key) {
            return Join::Follower(Follower {
                flight: flight.clone(),
            });
        }
        let flight = Arc::new(Flight {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            outcome: Mutex::new(Outcome::Running),
            settled: Notify::new(),
            detached: AtomicBool::new(false),
            tags: tags.to_vec(),
        });
        map.insert(key.to_owned(), flight.clone());
        Join::Leader(LeaderGuard {
            flights: self.clone(),
            key: key.to_owned(),
            flight,
            finished: false,
        })
    }

    /// Detaches the flight of `key`, if any: its result will not be stored and later callers
    /// start a new load.
    pub(crate) fn detach_key(&self, key: &str) {
        if let Some(flight) = self.map().remove(key) {
            flight.detached.store(true, Ordering::Release);
        }
    }

    /// Detaches every flight whose policy carries `tag`.
    pub(crate) fn detach_tag(&self, tag: &str) {
        self.map().retain(|_, flight| {
            let covered = flight.tags.iter().any(|t| t == tag);
            if covered {
                flight.detached.store(true, Ordering::Release);
            }
            !covered
        });
    }

    /// Detaches every flight.
    pub(crate) fn detach_all(&self) {
        for (_, flight) in self.map().drain() {
            flight.detached.store(true, Ordering::Release);
        }
    }

    fn remove_if_current(&self, key: &str, id: u64) {
        let mut map = self.map();
        if map.get(key).is_some_and(|f| f.id == id) {
            map.remove(key);
        }
    }
}

/// Held by the caller that runs the load. Dropping it unfinished marks the flight abandoned.
pub(crate) struct LeaderGuard {
    flights: Arc<Flights>,
    key: String,
    flight: Arc<Flight>,
    finished: bool,
}

impl LeaderGuard {
    /// Whether an invalidation covered this load since it started.
    pub(crate) fn is_detached(&self) -> bool {
        self.flight.detached.load(Ordering::Acquire)
    }

    /// Ends the flight and publishes `outcome()` to its followers. A flight nobody followed (the
    /// common miss) does not make the outcome at all, so the leader's value is not copied for
    /// no one: once the flight is out of the map nobody can join it, so the followers it has
    /// then are all it will have.
    pub(crate) fn finish(mut self, outcome: impl FnOnce() -> Outcome) {
        self.finished = true;
        self.flights.remove_if_current(&self.key, self.flight.id);
        // Followers clone the flight under the map lock taken above: their references show here.
        if Arc::strong_count(&self.flight) > 1 {
            self.flight.settle(outcome());
        }
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.flights.remove_if_current(&self.key, self.flight.id);
            self.flight.settle(Outcome::Abandoned);
        }
    }
}

/// A caller waiting for another caller's load.
pub(crate) struct Follower {
    flight: Arc<Flight>,
}

impl Follower {
    /// Waits until the leader finishes (or disappears).
    pub(crate) async fn wait(self) -> Outcome {
        loop {
            let notified = self.flight.settled.notified();
            tokio::pin!(notified);
            // Registered before the outcome is read: a `settle` after the read wakes it.
            notified.as_mut().enable();
            let outcome = lock(&self.flight.outcome).clone();
            if !matches!(outcome, Outcome::Running) {
                return outcome;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(join: Join) -> LeaderGuard {
        match join {
            Join::Leader(guard) => guard,
            Join::Follower(_) => panic!("expected to lead"),
        }
    }

    fn follower(join: Join) -> Follower {
        match join {
            Join::Follower(f) => f,
            Join::Leader(_) => panic!("expected to follow"),
        }
    }

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let flights = Arc::new(Flights::default());
        let lead = leader(flights.join("k", &[]));
        let f1 = follower(flights.join("k", &[]));
        let f2 = follower(flights.join("k", &[]));
        lead.finish(|| Outcome::Value(Arc::new(7u32)));
        for f in [f1, f2] {
            match f.wait().await {
                Outcome::Value(v) => assert_eq!(v.downcast_ref::<u32>(), Some(&7)),
                _ => panic!("expected a value"),
            }
        }
        // The flight is over: the next caller leads a new one.
        leader(flights.join("k", &[]));
    }

    #[tokio::test]
    async fn the_outcome_is_made_only_for_followers() {
        let flights = Arc::new(Flights::default());
        let alone = leader(flights.join("k", &[]));
        let mut made = false;
        alone.finish(|| {
            made = true;
            Outcome::Failed
        });
        assert!(!made, "nobody followed: the leader's value is not copied");
        let lead = leader(flights.join("k", &[]));
        let f = follower(flights.join("k", &[]));
        let waiting = tokio::spawn(f.wait());
        tokio::task::yield_now().await;
        lead.finish(|| Outcome::Value(Arc::new(1u8)));
        let outcome = waiting.await.expect("the follower task");
        assert!(
            matches!(outcome, Outcome::Value(_)),
            "a waiting follower gets the value"
        );
    }

    #[tokio::test]
    async fn dropped_leader_abandons_and_frees_the_key() {
        let flights = Arc::new(Flights::default());
        let lead = leader(flights.join("k", &[]));
        let f = follower(flights.join("k", &[]));
        drop(lead);
        assert!(matches!(f.wait().await, Outcome::Abandoned));
        leader(flights.join("k", &[]));
    }

    #[tokio::test]
    async fn detach_by_tag_marks_the_flight_and_frees_the_key() {
        let flights = Arc::new(Flights::default());
        let tagged = leader(flights.join("a", &["t".to_string()]));
        let untagged = leader(flights.join("b", &["other".to_string()]));
        flights.detach_tag("t");
        assert!(tagged.is_detached());
        assert!(!untagged.is_detached());
        let newer = leader(flights.join("a", &[]));
        // The old leader finishing must not remove the newer flight.
        tagged.finish(|| Outcome::Failed);
        follower(flights.join("a", &[]));
        drop(newer);
    }
}
