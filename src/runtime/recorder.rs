//! Group commit for the events of reads: a read's event must be durable before its response
//! leaves, but one transaction (one fsync on SQLite) per read would cap read throughput at
//! the disk's commit rate. Requests hand their events to one writer task, which appends
//! everything that arrived while the previous batch was committing in a single transaction
//! and then wakes every waiting request. Under load a commit carries many events; alone, a
//! request waits for exactly one commit of its own.
//!
//! Writes do not come here: their events are appended inside the write's own transaction.

use tokio::sync::{mpsc, oneshot};

use crate::audit::Event;
use crate::config::TenantConfig;
use crate::error::{Error, Result};
use crate::search::Registry;
use crate::store::audit::Prepared;
use crate::store::Store;

/// The most events one batch commits.
const MAX_BATCH_EVENTS: usize = 512;

struct Job {
    events: Vec<Prepared>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The handle requests use to record their events.
#[derive(Clone)]
pub struct Recorder {
    sender: mpsc::Sender<Job>,
    registry: std::sync::Arc<Registry>,
    indexing: crate::store::audit::Indexing,
}

impl Recorder {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Store, registry: std::sync::Arc<Registry>) -> Recorder {
        let (sender, receiver) = mpsc::channel(4096);
        let indexing = crate::store::audit::Indexing::choose(store.backend(), &registry);
        tokio::spawn(write_batches(store, receiver));
        Recorder { sender, registry, indexing }
    }

    /// Stores `events` durably; returns once they are committed. The events are rendered
    /// and indexed here, in the caller's task, so that the one writer only chains and stores.
    pub async fn record(&self, events: Vec<Event>, tenants: &[TenantConfig]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // Done with the database until the commit: what the request kept goes back now.
        crate::store::release_request_connection();
        let events = crate::store::audit::prepare(&self.registry, tenants, &events, self.indexing)?;
        let (done, finished) = oneshot::channel();
        self.sender
            .send(Job { events, done })
            .await
            .map_err(|_| Error::internal("the audit writer has stopped"))?;
        match finished.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(detail)) => Err(Error::Internal(format!("audit trail: {detail}"))),
            Err(_) => Err(Error::internal("the audit writer stopped before committing")),
        }
    }
}

async fn write_batches(store: Store, mut receiver: mpsc::Receiver<Job>) {
    // The connection the last batch committed on, kept for the next (`Held`); a batch that
    // fails gives its connection back to the pool, and the next one takes a fresh one.
    let mut held = None;
    while let Some(first) = receiver.recv().await {
        let mut count = first.events.len();
        let mut jobs = vec![first];
        while count < MAX_BATCH_EVENTS {
            match receiver.try_recv() {
                Ok(job) => {
                    count += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let events: Vec<Prepared> = jobs.iter_mut().flat_map(|job| std::mem::take(&mut job.events)).collect();
        let started = std::time::Instant::now();
        let result = commit(&store, &events, held.take()).await.map(|connection| {
            // Kept only while more events are waiting: an idle recorder holds no connection,
            // so that closing the store at shutdown does not wait for it.
            if !receiver.is_empty() {
                held = Some(connection);
            }
        });
        let result = result.map_err(|error| {
            tracing::error!(target: "renraku::audit", %error, events = events.len(), "audit events could not be stored");
            error.to_string()
        });
        tracing::debug!(target: "renraku::audit", events = events.len(), elapsed_us = started.elapsed().as_micros(), "audit batch committed");
        for job in jobs {
            let _ = job.done.send(result.clone());
        }
    }
}

async fn commit(store: &Store, events: &[Prepared], held: Option<crate::store::Held>) -> Result<crate::store::Held> {
    let started = std::time::Instant::now();
    let mut transaction = store.begin_journal(held).await?;
    let locked = started.elapsed();
    crate::store::audit::append_prepared(&mut transaction, events).await?;
    let held = transaction.commit_and_keep().await?;
    tracing::trace!(target: "renraku::audit", lock_wait_us = locked.as_micros(), "audit batch lock wait");
    Ok(held)
}
