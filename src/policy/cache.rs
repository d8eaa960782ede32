//! Decisions kept for as long as nothing they were made from has changed.
//!
//! A decision is a function of the token (actor, scopes, patient context), the municipality
//! and base URL asked at, the interaction, and the agreements in force. Who an actor reaches
//! is not part of it: the access predicate joins the access links in the database at every
//! query, so a team change or a consent withdrawal acts at the next request whatever is kept
//! here. The agreements are: a kept decision is used only while the agreements' generation
//! (bumped in the transaction of every Contract write, on every gateway) and the set of
//! agreements in force at the request's time are those it was made under. The request's
//! time is then written into the kept decision (the links' periods are judged against it).
//!
//! Building the clauses walks every type of a person's data for every municipality the
//! actor reaches; measured on a read by id as a care manager, it was a quarter of the
//! gateway's CPU time before decisions were kept.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Grant;

/// How many decisions are kept; when full, the cache starts over (a decision is cheap to
/// make again, and a bound keeps a flood of distinct tokens from growing memory).
const CAPACITY: usize = 4096;

/// What a kept decision was made under besides its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Basis {
    pub agreements_generation: i64,
    pub municipalities: usize,
    /// Which agreements were in force, in the order they were read.
    pub in_force: Vec<bool>,
}

#[derive(Debug, Default)]
pub struct DecisionCache {
    kept: Mutex<HashMap<String, (Basis, Grant)>>,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl DecisionCache {
    /// The decision kept under `key` if it was made under `basis`, stamped with `now`.
    pub(crate) fn get(&self, key: &str, basis: &Basis, now: &str) -> Option<Grant> {
        let kept = self.kept.lock().ok()?;
        let found = kept.get(key).filter(|(made_under, _)| made_under == basis).map(|(_, grant)| grant.clone());
        drop(kept);
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        found.map(|mut grant| {
            grant.restamp(now);
            grant
        })
    }

    pub(crate) fn put(&self, key: String, basis: Basis, grant: Grant) {
        // A poisoned cache is only a cache: the next decision is made again.
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= CAPACITY {
                kept.clear();
            }
            kept.insert(key, (basis, grant));
        }
    }

    /// (hits, misses) since the start.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(std::sync::atomic::Ordering::Relaxed), self.misses.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Grant {
    /// Judges the links' periods at `now` from here on (the clauses are shared, not copied).
    fn restamp(&mut self, now: &str) {
        now.clone_into(&mut self.now);
    }
}
