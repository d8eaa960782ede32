//! Group commit for the events of reads: a read's event must be durable before its response
//! leaves, but one transaction (one fsync on SQLite) per read would cap read throughput at
//! the disk's commit rate. Requests hand their events to one writer task, which appends
//! everything that arrived while the previous batch was committing in a single transaction
//! and then wakes every waiting request. Under load a commit carries many events; alone, a
//! request waits for exactly one commit of its own.
//!
//! Writes do not come here: their events are appended inside the write's own transaction.
//!
//! Where the backend journals the events (PostgreSQL), each committed batch then goes to this
//! gateway's projector task with the index its events were prepared with, and the projector
//! writes their AuditEvent rows without reading the journal back. The projector is at most
//! [`PROJECTION_QUEUE_EVENTS`] events behind: beyond that the writer waits for it before its
//! next batch, so a gateway under sustained audited reads serves them at the rate their
//! events are projected, instead of leaving a backlog that grew without bound (more than
//! 20,000 events in ten seconds; benches/README.md, session 26) for an auditor's next
//! request to wait for. What the projector does not write (its transaction failed, the
//! gateway stopped) stays journaled, and the background projection writes it from the
//! journal.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::audit::Event;
use crate::config::TenantConfig;
use crate::error::{Error, Result};
use crate::search::Registry;
use crate::store::audit::Prepared;
use crate::store::Store;

/// The most events one batch commits.
const MAX_BATCH_EVENTS: usize = 512;

/// The most committed events the projector may be behind the writer.
const PROJECTION_QUEUE_EVENTS: usize = 2048;

/// The most events one projection transaction writes.
const PROJECTION_BATCH_EVENTS: usize = 256;

/// Journaled events on their way to the projector, with their share of its queue.
struct ToProject {
    rows: Vec<(String, String, crate::store::BulkRow)>,
    _permits: OwnedSemaphorePermit,
}

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
    /// The projector's queue, where there is a projector.
    projection_queue: Option<Arc<Semaphore>>,
}

impl Recorder {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Store, registry: std::sync::Arc<Registry>) -> Recorder {
        let (sender, receiver) = mpsc::channel(4096);
        let indexing = crate::store::audit::Indexing::choose(store.backend(), &registry);
        let projector = (indexing == crate::store::audit::Indexing::ForProjection).then(|| {
            let (to_projector, batches) = mpsc::unbounded_channel();
            let queue = Arc::new(Semaphore::new(PROJECTION_QUEUE_EVENTS));
            tokio::spawn(project_batches(store.clone(), batches));
            Projector { sender: to_projector, queue }
        });
        let projection_queue = projector.as_ref().map(|projector| projector.queue.clone());
        tokio::spawn(write_batches(store, receiver, projector));
        Recorder { sender, registry, indexing, projection_queue }
    }

    /// Whether this gateway's projector has recorded events to write: the background
    /// projection from the journal then leaves them to it instead of reading and indexing
    /// them a second time.
    pub fn projecting(&self) -> bool {
        self.projection_queue.as_ref().is_some_and(|queue| queue.available_permits() < PROJECTION_QUEUE_EVENTS)
    }

    /// Stores `events` durably; returns once they are committed. The events are rendered
    /// and indexed here, in the caller's task, so that the one writer only chains and stores.
    pub async fn record(&self, events: Vec<Event>, tenants: &[TenantConfig]) -> Result<()> {
        match self.hand_over(events, tenants).await? {
            Some(commit) => committed(commit).await,
            None => Ok(()),
        }
    }

    /// Stores the events of a read whose result is ready: inside [`answered_after_commits`]
    /// the request goes on to make its response while the writer commits them, and is
    /// answered once they are committed; elsewhere as [`Recorder::record`].
    pub async fn record_read(&self, events: Vec<Event>, tenants: &[TenantConfig]) -> Result<()> {
        let Some(commit) = self.hand_over(events, tenants).await? else { return Ok(()) };
        match awaited_by_request(commit) {
            Some(commit) => committed(commit).await,
            None => Ok(()),
        }
    }

    /// As [`Recorder::record_read`] when the writer's commit fails after the read handed its
    /// events over (tests only: `Failpoint::ReadEventsNotCommitted`); nothing is stored.
    #[cfg(feature = "test-support")]
    pub async fn record_read_not_committed(&self) -> Result<()> {
        let (done, commit) = oneshot::channel();
        let _ = done.send(Err("failpoint: the batch could not be committed".to_owned()));
        match awaited_by_request(commit) {
            Some(commit) => committed(commit).await,
            None => Ok(()),
        }
    }

    /// Prepares `events` and gives them to the writer; returns what reports their commit.
    async fn hand_over(&self, events: Vec<Event>, tenants: &[TenantConfig]) -> Result<Option<Commit>> {
        if events.is_empty() {
            return Ok(None);
        }
        // Done with the database until the commit: what the request kept goes back now.
        crate::store::release_request_connection();
        let events = crate::store::audit::prepare(&self.registry, tenants, &events, self.indexing)?;
        let (done, finished) = oneshot::channel();
        self.sender
            .send(Job { events, done })
            .await
            .map_err(|_| Error::internal("the audit writer has stopped"))?;
        Ok(Some(finished))
    }
}

/// The writer's report of one batch's commit.
type Commit = oneshot::Receiver<Result<(), String>>;

async fn committed(commit: Commit) -> Result<()> {
    match commit.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(detail)) => Err(Error::Internal(format!("audit trail: {detail}"))),
        Err(_) => Err(Error::internal("the audit writer stopped before committing")),
    }
}

tokio::task_local! {
    /// The commits of the events a request recorded with [`Recorder::record_read`], which
    /// its answer waits for ([`answered_after_commits`]).
    static AWAITED: std::cell::RefCell<Vec<Commit>>;
}

/// Leaves `commit` for the request to wait for before it is answered, inside
/// [`answered_after_commits`]; elsewhere gives it back.
fn awaited_by_request(commit: Commit) -> Option<Commit> {
    let mut commit = Some(commit);
    let _ = AWAITED.try_with(|awaited| awaited.borrow_mut().extend(commit.take()));
    commit
}

/// Runs a request whose reads' events are committed while it makes its response: a read
/// hands its events to the writer ([`Recorder::record_read`]) and goes on to render what it
/// returns while that is still in the processor's caches, instead of rendering it after
/// waiting a commit's few milliseconds, in which the other requests and the writer had
/// evicted it (rendering a 20-result Bundle took three times as long after the wait;
/// benches/README.md, session 31). Returns the request's output once every event it
/// recorded is committed — a response leaves only then — with the first failure, if any.
pub async fn answered_after_commits<T>(request: impl std::future::Future<Output = T>) -> (T, Result<()>) {
    AWAITED
        .scope(std::cell::RefCell::new(Vec::new()), async {
            let output = request.await;
            (output, awaited_commits().await)
        })
        .await
}

/// Waits for the commits of the events this request has recorded so far (see
/// [`answered_after_commits`]); where there are none, or no such request, returns at once.
pub async fn awaited_commits() -> Result<()> {
    let commits = AWAITED.try_with(|awaited| std::mem::take(&mut *awaited.borrow_mut())).unwrap_or_default();
    let mut result = Ok(());
    for commit in commits {
        let outcome = committed(commit).await;
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

/// The writer's end of the way to the projector.
struct Projector {
    sender: mpsc::UnboundedSender<ToProject>,
    /// A permit for each event the projector may still be given.
    queue: Arc<Semaphore>,
}

impl Projector {
    /// Hands a committed batch's events to the projector, first waiting until its queue has
    /// room for them.
    async fn hand_over(&self, rows: Vec<(String, String, crate::store::BulkRow)>) {
        if rows.is_empty() {
            return;
        }
        let wanted = u32::try_from(rows.len().min(PROJECTION_QUEUE_EVENTS)).unwrap_or(u32::MAX);
        let Ok(permits) = self.queue.clone().acquire_many_owned(wanted).await else { return };
        // A projector that has stopped leaves the events journaled for the background pass.
        let _ = self.sender.send(ToProject { rows, _permits: permits });
    }
}

/// `first` and whatever `next` has ready at once, until the items hold `limit` events
/// (`size` of each); returns them and how many events they hold.
fn gather<T>(first: T, size: impl Fn(&T) -> usize, limit: usize, mut next: impl FnMut() -> Option<T>) -> (Vec<T>, usize) {
    let mut count = size(&first);
    let mut items = vec![first];
    while count < limit {
        let Some(item) = next() else { break };
        count += size(&item);
        items.push(item);
    }
    (items, count)
}

/// Writes the AuditEvent rows of the batches the writer hands over, several batches a
/// transaction; a batch's permits go back to the queue once it is written (or given up: it
/// stays journaled).
async fn project_batches(store: Store, mut batches: mpsc::UnboundedReceiver<ToProject>) {
    while let Some(first) = batches.recv().await {
        let (mut taken, count) = gather(first, |batch| batch.rows.len(), PROJECTION_BATCH_EVENTS, || batches.try_recv().ok());
        let rows: Vec<_> = taken.iter_mut().flat_map(|batch| std::mem::take(&mut batch.rows)).collect();
        if let Err(error) = crate::store::audit::project_journaled(&store, rows).await {
            tracing::warn!(target: "renraku::audit", %error, events = count, "projecting recorded audit events failed; the background projection writes them from the journal");
        }
        drop(taken);
    }
}

async fn write_batches(store: Store, mut receiver: mpsc::Receiver<Job>, projector: Option<Projector>) {
    // The connection the last batch committed on, kept for the next (`Held`); a batch that
    // fails gives its connection back to the pool, and the next one takes a fresh one.
    let mut held = None;
    while let Some(first) = receiver.recv().await {
        let (mut jobs, _) = gather(first, |job| job.events.len(), MAX_BATCH_EVENTS, || receiver.try_recv().ok());
        let events: Vec<Prepared> = jobs.iter_mut().flat_map(|job| std::mem::take(&mut job.events)).collect();
        let started = std::time::Instant::now();
        let mut to_project = Vec::new();
        let count = events.len();
        let result = commit(&store, events, held.take()).await.map(|(connection, rows)| {
            to_project = rows;
            // Kept only while more events are waiting: an idle recorder holds no connection,
            // so that closing the store at shutdown does not wait for it.
            if !receiver.is_empty() {
                held = Some(connection);
            }
        });
        let result = result.map_err(|error| {
            tracing::error!(target: "renraku::audit", %error, events = count, "audit events could not be stored");
            error.to_string()
        });
        tracing::debug!(target: "renraku::audit", events = count, elapsed_us = started.elapsed().as_micros(), "audit batch committed");
        for job in jobs {
            let _ = job.done.send(result.clone());
        }
        // After the waiting requests are answered: a full queue holds up the next batch.
        if let Some(projector) = &projector {
            projector.hand_over(to_project).await;
        }
    }
}

/// Commits a batch; returns the connection to keep and the journaled events to project.
async fn commit(store: &Store, events: Vec<Prepared>, held: Option<crate::store::Held>) -> Result<(crate::store::Held, Vec<(String, String, crate::store::BulkRow)>)> {
    let started = std::time::Instant::now();
    let mut transaction = store.begin_journal(held).await?;
    let locked = started.elapsed();
    let to_project = crate::store::audit::append_prepared(&mut transaction, events).await?;
    let held = transaction.commit_and_keep().await?;
    tracing::trace!(target: "renraku::audit", lock_wait_us = locked.as_micros(), "audit batch lock wait");
    Ok((held, to_project))
}
