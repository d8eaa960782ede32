//! Persistence: one SQL definition of every query, run on SQLite or PostgreSQL.
//!
//! Architecture invariant: this module knows SQL and rows, and nothing of HTTP, FHIR
//! semantics or access policy. Every query here is written once with `$n` placeholders
//! and portable SQL, and executed through sqlx's `Any` driver; only the migrations (DDL)
//! differ per backend. Row-level functions take a connection, so the service layer
//! composes them inside one database transaction (a write, its version row and its index
//! rows commit together or not at all).
//!
//! Functions that read or write resource rows take a [`crate::policy::Grant`]: the access
//! decision is made before the store is reached, and the grant's tenant scope is applied
//! inside the SQL so that counts and pages never include rows the caller may not see.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use ref_cast::RefCast;
use sqlx::{AnyConnection, AnyPool, Connection as _, Row};

use crate::error::{Error, Result};
use crate::policy::{Grant, WriteGrant};
use crate::search::IndexEntry;

pub mod audit;
pub mod auth;
pub(crate) mod binary;
pub(crate) mod board;
pub(crate) mod facts;
pub mod subscriptions;
pub mod query;
pub mod tenants;

pub use query::{BulkValue, Page};
use query::AUDIT_EVENT;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The connection pool and the knowledge of which backend it talks to.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer at a time; writers queue here, in order, instead of
    /// polling the database lock with the busy handler's sleeps (which made tail latency
    /// of concurrent writes hundreds of milliseconds). None on PostgreSQL.
    write_gate: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
    /// Connections whose commits do not wait for the disk, for writing what is derived from
    /// durable rows and is derived again after a crash (the audit trail's projection from
    /// its journal, and on PostgreSQL the chaining of writes' queued events; see
    /// [`Store::begin_derived`]): one on SQLite, two on PostgreSQL.
    derived: AnyPool,
    /// The audit recorder's own connection (see [`Store::begin_journal`]).
    journal: AnyPool,
    /// Tells this store's connections from another's in a request's kept connection
    /// ([`Store::keep_for_request`]).
    id: usize,
    /// On SQLite, the connection [`Store::counters`] reads the generation counters with.
    counters: Option<std::sync::Arc<CounterReader>>,
}

/// A SQLite connection of its own, used on the calling thread, that reads the generation
/// counters (see [`Store::counters`]). Every authenticated request reads them first, and
/// through the pool that read is a round trip to a connection's thread and back — two
/// context switches. This connection answers on the request's own thread in microseconds
/// (the counters are a four-row table, and a WAL reader does not wait for writers): a tenth
/// less CPU for an audited read by id (benches/README.md, session 28). Each read is its own
/// statement, reset when done, so the connection holds no snapshot between requests (which
/// would keep checkpoints from reaching the end of the log). It reads the file as every
/// connection does, so a counter bumped by another process (`renraku admin`, a second
/// gateway on the file) is seen at once.
struct CounterReader {
    connection: std::sync::Mutex<rusqlite::Connection>,
}

impl CounterReader {
    /// Opens one for the SQLite file `database_url` names; `None` for an in-memory database,
    /// which another connection cannot see.
    fn open(database_url: &str) -> Option<CounterReader> {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(database_url).ok()?;
        let file = options.get_filename();
        if database_url.contains("mode=memory") || file.as_os_str().is_empty() || file == std::path::Path::new(":memory:") {
            return None;
        }
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = match rusqlite::Connection::open_with_flags(file, flags) {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(target: "renraku::store", %error, "the generation counters are read through the pool");
                return None;
            }
        };
        // A reader waits only while a crashed writer's log is recovered.
        if let Err(error) = connection.busy_timeout(Duration::from_secs(1)) {
            tracing::warn!(target: "renraku::store", %error, "the generation counters are read through the pool");
            return None;
        }
        Some(CounterReader { connection: std::sync::Mutex::new(connection) })
    }

    fn read(&self) -> std::result::Result<Generations, rusqlite::Error> {
        let connection = self.connection.lock().map_err(|_| rusqlite::Error::InvalidQuery)?;
        let mut statement = connection.prepare_cached(GENERATIONS_QUERY)?;
        let mut rows = statement.query([])?;
        let mut generations = Generations::default();
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            set_generation(&mut generations, &name, row.get(1)?);
        }
        Ok(generations)
    }
}

/// A database session as the rest of the gateway holds it — inside a pooled [`Connection`]
/// or an open [`Transaction`] — that only store functions can use: the connection inside is
/// private to `src/store/`, so every statement that runs is one the store wrote, and every
/// row of a resource is reached through a store function that takes a grant (or is one of
/// the few named grant-less paths).
#[derive(RefCast)]
#[repr(transparent)]
pub struct Db(AnyConnection);

/// How long an abandoned session (a request dropped by its client or by
/// `request_timeout_ms`) may take to finish what it was doing before it is closed instead
/// of returned to the pool. A statement still running then is cancelled by PostgreSQL when
/// it finds the socket closed (`client_connection_check_interval`).
const ABANDONED_SETTLE: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// The connection a request keeps for its next read: the one its token was verified on
    /// ([`Store::keep_for_request`]), or on PostgreSQL the last one it gave back.
    static KEPT: std::cell::RefCell<Option<Kept>>;
}

/// A connection kept for the request (see [`KEPT`]), with the id of the store it belongs to.
/// Dropped while still holding it — the request was dropped, or abandoned by its timeout
/// ([`abandon_request_connection`]) — it settles a PostgreSQL session as a dropped
/// [`Connection`] does; taken out by the request's next read or at its end, it goes back as
/// it is.
struct Kept {
    store: usize,
    connection: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    settles: bool,
}

impl Kept {
    /// The connection, for the request's own use or for the pool (no settling).
    fn take(mut self) -> Option<sqlx::pool::PoolConnection<sqlx::Any>> {
        self.connection.take()
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            if self.settles {
                settle(connection, None, None);
            }
        }
    }
}

/// Runs one request with room for a kept connection ([`Store::keep_for_request`]); the HTTP
/// layer wraps every request in it. What is still kept when the request ends goes back to
/// its pool then — as it is when the request ran to its end (every statement it sent has
/// finished), settled when the request was dropped.
pub async fn with_request_connection<F: std::future::Future>(request: F) -> F::Output {
    KEPT.scope(std::cell::RefCell::new(None), async {
        let output = request.await;
        release_request_connection();
        output
    })
    .await
}

/// Gives the connection this request kept back to its pool as it is. Called where a request
/// is done with the database for a while (the audit recorder's wait for its commit), so that
/// no request holds an idle connection while it waits; and when the request ends.
pub fn release_request_connection() {
    let _ = KEPT.try_with(|kept| kept.take().map(Kept::take));
}

/// Settles the connection this request kept, as a dropped [`Connection`] would be: for a
/// request abandoned by its timeout, whose statements may still be running.
pub fn abandon_request_connection() {
    let _ = KEPT.try_with(|kept| drop(kept.take()));
}

/// A pooled connection for reads that need no transaction ([`Store::connection`]).
pub struct Connection {
    inner: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    /// Whether dropping it must settle the session first (PostgreSQL: closing a connection
    /// whose statement is still running makes the server cancel the statement). SQLite
    /// cannot cancel a statement by closing: the pool's own check on release (a ping, which
    /// waits for a statement still running) is all a dropped SQLite read needs, and one
    /// round trip to the connection's thread fewer on every read.
    settles: bool,
    /// The store it belongs to (see [`Store::keep_for_request`]).
    store: usize,
}

impl std::ops::Deref for Connection {
    type Target = Db;

    fn deref(&self) -> &Db {
        Db::of(&self.inner)
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Db {
        Db::of_mut(&mut self.inner)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(connection) = self.inner.take() {
            if self.settles {
                // Given back during a request that goes on, it is kept for the request's
                // next read or its end, and then goes back without our check: settling
                // pings the server, and the pool pings it again on return (two round trips
                // a connection; benches/README.md, session 23). A request dropped or
                // abandoned settles what it kept ([`Kept`]); a panic settles at once.
                if let Some(connection) = keep_given_back(self.store, connection) {
                    settle(connection, None, None);
                }
            }
        }
    }
}

/// Keeps a PostgreSQL connection given back during a request for the request, if it keeps
/// none yet; returns it otherwise (outside a request, during a panic, or with one kept).
fn keep_given_back(store: usize, connection: sqlx::pool::PoolConnection<sqlx::Any>) -> Option<sqlx::pool::PoolConnection<sqlx::Any>> {
    if std::thread::panicking() {
        return Some(connection);
    }
    let mut connection = Some(connection);
    let _ = KEPT.try_with(|kept| {
        if let Ok(mut kept) = kept.try_borrow_mut() {
            if kept.is_none() {
                *kept = Some(Kept { store, connection: connection.take(), settles: true });
            }
        }
    });
    connection
}

/// A write transaction. Dropping it without [`Transaction::commit`] rolls back. On SQLite
/// it also holds the in-process write gate (see [`Store::begin`]) until the rollback is done.
pub struct Transaction {
    inner: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    gate: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// Statements sent with the COMMIT ([`Transaction::defer`]).
    deferred: query::Statements,
}

impl Transaction {
    pub async fn commit(self) -> Result<()> {
        // Committed: the connection goes back to the pool as it is.
        drop(self.commit_and_keep().await?);
        Ok(())
    }

    /// Commits, and hands the idle connection back to the caller to begin its next
    /// transaction on ([`Store::begin_journal`]) instead of returning it to the pool.
    pub(crate) async fn commit_and_keep(mut self) -> Result<Held> {
        let mut statements = std::mem::take(&mut self.deferred);
        statements.push(query::Sql::new("COMMIT"));
        // On SQLite one text: when a statement before the COMMIT fails, SQLite runs none
        // after it, and the transaction, still open, is rolled back when this one is dropped.
        statements.execute(Db::of_mut(&mut self.inner)).await?;
        match self.inner.take() {
            Some(connection) => Ok(Held(connection)),
            None => unreachable_session(),
        }
    }

    /// Sends `statements` with the COMMIT instead of now (on SQLite in the same text: one
    /// round trip to the connection's thread less, while the transaction holds the write
    /// lock). For writes whose results nothing before the commit reads: the audit trail's.
    pub(crate) fn defer(&mut self, statements: query::Statements) {
        self.deferred.extend(statements);
    }
}

/// An idle connection a caller keeps between its transactions: the audit recorder's. A
/// connection given back to the pool is returned by a task of its own, and the recorder's
/// next batch, which every waiting read waits for, waited for that task's turn behind the
/// requests (a third of a millisecond a batch under load, benches/README.md, session 19).
pub(crate) struct Held(sqlx::pool::PoolConnection<sqlx::Any>);

impl std::ops::Deref for Transaction {
    type Target = Db;

    fn deref(&self) -> &Db {
        Db::of(&self.inner)
    }
}

impl std::ops::DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut Db {
        Db::of_mut(&mut self.inner)
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if let Some(connection) = self.inner.take() {
            settle(connection, Some("ROLLBACK"), self.gate.take());
        }
    }
}

impl Db {
    /// The session inside a [`Connection`] or [`Transaction`]. Its connection is taken out
    /// only by `commit` and `drop`, which end the session, so it is always there.
    fn of(held: &Option<sqlx::pool::PoolConnection<sqlx::Any>>) -> &Db {
        match held {
            Some(connection) => Db::ref_cast(connection),
            None => unreachable_session(),
        }
    }

    fn of_mut(held: &mut Option<sqlx::pool::PoolConnection<sqlx::Any>>) -> &mut Db {
        match held {
            Some(connection) => Db::ref_cast_mut(connection),
            None => unreachable_session(),
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_session() -> ! {
    panic!("a store session was used after it ended")
}

/// Returns an abandoned or finished session's connection to the pool once it is idle (after
/// `statement`, e.g. the ROLLBACK of an uncommitted transaction), or closes it when it does
/// not become idle within [`ABANDONED_SETTLE`]: a request dropped mid-statement must not
/// leave that statement running for the next user of the connection to wait behind. The
/// write gate (SQLite) is released afterwards.
fn settle(
    mut connection: sqlx::pool::PoolConnection<sqlx::Any>,
    statement: Option<&'static str>,
    gate: Option<tokio::sync::OwnedMutexGuard<()>>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        connection.close_on_drop();
        return;
    };
    runtime.spawn(async move {
        let idle = tokio::time::timeout(ABANDONED_SETTLE, async {
            match statement {
                Some(statement) => sqlx::query(statement).execute(&mut *connection).await.map(|_| ()),
                None => sqlx::Connection::ping(&mut *connection).await,
            }
        })
        .await;
        if !matches!(idle, Ok(Ok(()))) {
            tracing::debug!(target: "renraku::store", "an abandoned database session did not settle; closing its connection");
            connection.close_on_drop();
        }
        drop(connection);
        drop(gate);
    });
}

/// The current row of a resource.
#[derive(Debug, Clone)]
pub struct CurrentRow {
    pub resource_type: String,
    pub id: String,
    pub tenant: String,
    pub version_id: i64,
    pub last_updated: String,
    pub deleted: bool,
    /// The resource JSON; `None` for a deleted resource.
    pub content: Option<String>,
}

/// One row of the version history.
#[derive(Debug, Clone)]
pub struct VersionRow {
    pub seq: i64,
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub tenant: String,
    pub last_updated: String,
    pub method: String,
    pub content: Option<String>,
}

/// A version about to be written.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub tenant: &'a str,
    pub version_id: i64,
    pub last_updated: &'a str,
    /// `POST`, `PUT`, `PATCH` or `DELETE`: the interaction that made the version.
    pub method: &'a str,
    pub content: Option<&'a str>,
    /// The version's index rows (none for a deletion). They become the resource's current
    /// index, and their references to Patients become the version's own compartment rows,
    /// by which this version is judged for as long as it is kept.
    pub index: &'a [IndexEntry],
}

/// Which part of the history to list.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub resource_type: Option<String>,
    pub id: Option<String>,
    /// Only versions with `last_updated >= since`.
    pub since: Option<String>,
    /// Keyset cursor: only versions with `seq < before_seq` (newest first).
    pub before_seq: Option<i64>,
    /// Keyset cursor of AuditEvents' history (see [`history`]): only events before this
    /// (`last_updated`, `id`), newest first.
    pub before_event: Option<(String, String)>,
    pub limit: i64,
}

impl HistoryFilter {
    /// Continues after the page a next link's `cursor` ended ([`VersionRow::cursor`]);
    /// false when `cursor` is not one.
    pub fn resume_after(&mut self, cursor: &str) -> bool {
        if self.resource_type.as_deref() == Some(AUDIT_EVENT) {
            let Some((last_updated, id)) = cursor.split_once('~') else { return false };
            self.before_event = Some((last_updated.to_owned(), id.to_owned()));
            return true;
        }
        cursor.parse::<i64>().map(|seq| self.before_seq = Some(seq)).is_ok()
    }
}

impl VersionRow {
    /// The paging cursor of a history page ending with this row: its `seq`, or for an
    /// AuditEvent (whose history is its resource row, see [`history`]) its time and id.
    pub fn cursor(&self) -> String {
        if self.resource_type == AUDIT_EVENT {
            format!("{}~{}", self.last_updated, self.id)
        } else {
            self.seq.to_string()
        }
    }
}

/// The options every pool of gateway sessions shares (all but its size): the settings each
/// new connection gets — SQLite's durability, PostgreSQL's timeouts and planning — and the
/// checks on acquire and release.
/// `role`: what the pool's sessions are for.
fn pool_options(backend: Backend, statement_timeout: &str, role: Sessions) -> AnyPoolOptions {
    let statement_timeout = statement_timeout.to_owned();
    AnyPoolOptions::new()
        .acquire_timeout(Duration::from_secs(30))
        // The pool already checks every connection when it is released (sqlx pings it);
        // an embedded SQLite connection cannot break while idle, so checking it again on
        // acquire only costs a round trip to its thread per request. A PostgreSQL one can
        // (a server restart), and is checked.
        .test_before_acquire(backend == Backend::Postgres)
        // A connection left in one of sqlx's own transactions (the migrator's) whose end
        // failed would refuse every later BEGIN: such a connection is closed instead of
        // going back to the pool, after sqlx's queued rollback is flushed (ping). sqlx
        // counts only its own transactions; the gateway's (`Store::begin`, a BEGIN of its
        // own) are ended by `Transaction`: committed, or rolled back by `settle`, which
        // closes a connection that does not settle.
        .after_release(|connection, _meta| {
            Box::pin(async move {
                if connection.is_in_transaction() {
                    sqlx::Connection::ping(&mut *connection).await?;
                }
                Ok(!connection.is_in_transaction())
            })
        })
        .after_connect(move |connection, _meta| {
            let statement_timeout = statement_timeout.clone();
            Box::pin(async move {
                if backend == Backend::Postgres {
                    // The server cancels any statement that runs longer, also one whose
                    // client has gone (a dropped request does not stop its query).
                    sqlx::query(&statement_timeout).execute(&mut *connection).await?;
                    // Prepared statements keep PostgreSQL's default plan caching: searches
                    // are planned for their values each time (`Sql::planned_for_its_values`),
                    // everything else reuses its plan. Until session 20 every statement was
                    // planned each time (`plan_cache_mode = force_custom_plan`), which was
                    // nearly half of PostgreSQL's CPU under audited reads.
                    // No JIT compilation: the gateway's statements are short, and the
                    // planner's cost of a per-row access test over a long board (its
                    // estimates cannot see that the test passes for every row) crossed
                    // `jit_above_cost` — an unread count spent 680 of its 730 ms compiling
                    // (benches/README.md, session 15).
                    sqlx::query("SET jit = off").execute(&mut *connection).await?;
                    // A statement whose session was abandoned (its connection closed, see
                    // `settle`) is cancelled within a second instead of running on to the
                    // statement timeout. PostgreSQL 14 and later; older servers keep the
                    // statement timeout alone.
                    if let Err(error) = sqlx::query("SET client_connection_check_interval = 1000").execute(&mut *connection).await {
                        tracing::debug!(%error, "client_connection_check_interval is not available");
                    }
                    // Derived rows (see `Store::begin_derived`) commit without waiting for
                    // the WAL flush. PostgreSQL's log stays in order: any later synchronous
                    // commit (the recorder's next batch, any write) flushes them too, and a
                    // crash loses at most the newest such commits, whole — the journal rows
                    // they marked projected come back unprojected, the queued events they
                    // chained come back queued, and both are derived again.
                    if role == Sessions::Derived {
                        sqlx::query("SET synchronous_commit = off").execute(&mut *connection).await?;
                    }
                }
                if backend == Backend::Sqlite {
                    // WAL lets readers proceed during a write; FULL makes every commit
                    // durable before it is acknowledged; the busy timeout makes a second
                    // writer wait for the first instead of failing.
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        sqlx::query(pragma).execute(&mut *connection).await?;
                    }
                    // The recorder's multi-row inserts keep statement journals (what one
                    // statement would undo) beyond SQLite's 64 KiB spill into a temporary
                    // file made for each: a fifth of what audited reads wrote. In memory
                    // instead; a batch is at most `MAX_BATCH_EVENTS` events, and this
                    // connection runs nothing else (no sort that could grow there).
                    if role == Sessions::Journal {
                        sqlx::query("PRAGMA temp_store = MEMORY").execute(&mut *connection).await?;
                    }
                }
                Ok(())
            })
        })
}

/// What a pool's sessions are for: [`pool_options`] sets each kind up for its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sessions {
    /// Requests' reads and writes.
    Requests,
    /// The audit recorder's group commits ([`Store::begin_journal`]).
    Journal,
    /// Rows derived from durable ones, on PostgreSQL ([`Store::begin_derived`]; SQLite's
    /// derived connection has settings of its own).
    Derived,
}

/// The SQLite pool's connections: two a core, at least four, at most sixteen. Each SQLite
/// connection works on a thread of its own; with eight on this project's 2-core machine, the
/// reads' threads crowded out the audit recorder's, which every audited read waits for:
/// audited family searches ran 18 % faster with four, timelines 9 % (benches/README.md,
/// session 25).
fn sqlite_pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    u32::try_from(cores.saturating_mul(2)).unwrap_or(u32::MAX).clamp(4, 16)
}

impl Store {
    /// Connects with the default limits (see [`Store::connect_with`]).
    pub async fn connect(database_url: &str) -> Result<Store, sqlx::Error> {
        Store::connect_with(database_url, &crate::config::Limits::default()).await
    }

    /// Connects, applies SQLite's durability settings (and on PostgreSQL the statement
    /// timeout of `limits`), and runs the embedded migrations.
    pub async fn connect_with(database_url: &str, limits: &crate::config::Limits) -> Result<Store, sqlx::Error> {
        let statement_timeout = format!("SET statement_timeout = {}", limits.statement_timeout_ms);
        sqlx::any::install_default_drivers();
        let backend = if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
            Backend::Postgres
        } else if database_url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(sqlx::Error::Configuration(
                format!("unsupported database URL '{database_url}': use sqlite://… or postgres://…").into(),
            ));
        };
        let options = AnyConnectOptions::from_str(database_url)?;
        let pool = pool_options(backend, &statement_timeout, Sessions::Requests)
            .max_connections(match backend {
                Backend::Sqlite => sqlite_pool_size(),
                Backend::Postgres => 16,
            })
            .connect_with(options.clone())
            .await?;
        let write_gate = (backend == Backend::Sqlite).then(|| std::sync::Arc::new(tokio::sync::Mutex::new(())));
        // The recorder's connection: the pool's settings and checks, one connection.
        let journal = pool_options(backend, &statement_timeout, Sessions::Journal)
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let derived = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .after_connect(|connection, _meta| {
                        Box::pin(async move {
                            // In WAL mode a NORMAL commit is not synced, but stays in order: any
                            // later synced commit (a journal batch) syncs it too, and a crash
                            // loses at most the newest such commits, whole.
                            for pragma in
                                ["PRAGMA synchronous = NORMAL", "PRAGMA busy_timeout = 10000"]
                            {
                                sqlx::query(pragma).execute(&mut *connection).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options.clone())
                    .await?
            }
            // Two: the projection and the chainer of writes' events take one each.
            Backend::Postgres => pool_options(backend, &statement_timeout, Sessions::Derived).max_connections(2).connect_with(options.clone()).await?,
        };
        static STORES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let counters = match backend {
            Backend::Sqlite => CounterReader::open(database_url).map(std::sync::Arc::new),
            Backend::Postgres => None,
        };
        let store = Store { pool, backend, write_gate, derived, journal, id, counters };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations. Two gateways starting at once on a new database race for
    /// them (SQLite has no migration lock): the loser's attempt fails on what the winner
    /// created, and a retry finds the migrations applied.
    async fn migrate(&self) -> Result<(), sqlx::Error> {
        let mut attempt = 0;
        loop {
            let mut connection = self.maintenance_connection().await?;
            let result = match self.backend {
                Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&mut *connection).await,
                Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&mut *connection).await,
            };
            match result {
                Ok(()) => {
                    connection.close_on_drop();
                    return Ok(());
                }
                Err(error) if attempt < 5 => {
                    attempt += 1;
                    tracing::info!(%error, attempt, "migrations did not apply; another gateway may be migrating, retrying");
                    connection.close_on_drop();
                    drop(connection);
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(error) => {
                    connection.close_on_drop();
                    return Err(error.into());
                }
            }
        }
    }

    /// Refreshes the statistics of the audit trail's tables (PostgreSQL): verification walks
    /// them in key order, and without statistics the planner chose plans quadratic in the
    /// trail's length (116 s for 12,700 events, 0.6 s after ANALYZE).
    pub async fn analyze_audit_tables(&self) -> Result<()> {
        if self.backend == Backend::Postgres {
            let mut connection = self.maintenance_connection().await?;
            connection.close_on_drop();
            sqlx::query("ANALYZE audit_log, audit_heads, resources, resource_versions").execute(&mut *connection).await?;
        }
        Ok(())
    }

    /// Whether PostgreSQL's autovacuum runs (and so keeps the planner's statistics current);
    /// always true for SQLite, which has none.
    pub async fn autovacuum_on(&self) -> Result<bool> {
        if self.backend != Backend::Postgres {
            return Ok(true);
        }
        let setting: String = sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = 'autovacuum'").fetch_one(&self.pool).await?;
        Ok(setting == "on")
    }

    /// What autovacuum's analyze would do, for a PostgreSQL server that runs without it:
    /// ANALYZE each of the gateway's tables changed by more than 500 rows and a tenth of its
    /// size since its last statistics (autovacuum's defaults are 50 and a tenth). Without
    /// this a table that grew from empty keeps the statistics of an empty table, and the
    /// planner walks every row of a type to find one identifier. The tables it analyzed.
    pub async fn analyze_changed_tables(&self) -> Result<Vec<String>> {
        if self.backend != Backend::Postgres {
            return Ok(Vec::new());
        }
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(relname) FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND n_mod_since_analyze > 500 + n_live_tup / 10",
        )
        .fetch_all(&self.pool)
        .await?;
        if !stale.is_empty() {
            let mut connection = self.maintenance_connection().await?;
            connection.close_on_drop();
            for table in &stale {
                sqlx::query(&format!("ANALYZE {table}")).execute(&mut *connection).await?;
            }
        }
        Ok(stale)
    }

    /// A connection without the statement timeout, for maintenance that may rightly run
    /// long on a large database (migrations and their backfills, VACUUM, ANALYZE). Callers
    /// close it afterwards (`close_on_drop`), so no request ever runs without the limit.
    async fn maintenance_connection(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET statement_timeout = 0").execute(&mut *connection).await?;
        }
        Ok(connection)
    }

    /// Refreshes the planner's statistics. SQLite has none until told to gather them, and
    /// without them it may scan a type's rows instead of driving a query from the index of
    /// its most selective parameter; `analysis_limit` keeps this quick on large databases.
    /// Called at start-up, periodically, and after bulk loads.
    pub async fn optimize(&self) -> Result<()> {
        let mut connection = self.maintenance_connection().await?;
        connection.close_on_drop();
        match self.backend {
            Backend::Sqlite => {
                sqlx::query("PRAGMA analysis_limit = 1000").execute(&mut *connection).await?;
                sqlx::query("ANALYZE").execute(&mut *connection).await?;
            }
            Backend::Postgres => {
                // After a bulk load, VACUUM also marks pages all-visible, which index-only
                // scans (the covering string index) need.
                sqlx::query("VACUUM ANALYZE").execute(&mut *connection).await?;
            }
        }
        Ok(())
    }

    /// The pool's open connections and, of them, the idle ones.
    pub fn pool_usage(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction. On SQLite it is `BEGIN IMMEDIATE`: the write lock is
    /// taken (waiting up to the busy timeout) before anything is read, so a transaction
    /// never finds its snapshot stale when it comes to write.
    pub async fn begin(&self) -> Result<Transaction> {
        self.begin_on(&self.pool).await
    }

    /// A write transaction on a connection of `pool`, behind the write gate.
    async fn begin_on(&self, pool: &AnyPool) -> Result<Transaction> {
        self.begin_with(pool, None).await
    }

    /// [`Store::begin_on`], on `held` where the caller kept a connection of `pool`.
    async fn begin_with(&self, pool: &AnyPool, held: Option<sqlx::pool::PoolConnection<sqlx::Any>>) -> Result<Transaction> {
        // Given back before waiting: see `keep_for_request`.
        drop(self.take_kept());
        let gate = match &self.write_gate {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        };
        let statement = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        // The session is a `Transaction` before its BEGIN is sent: a request dropped while the
        // BEGIN waits (for SQLite's write lock, behind another process) must not hand the
        // connection back to the pool with the transaction the BEGIN opens once it gets the
        // lock — that connection held the write lock from then on, and every later write
        // waited out the busy timeout and failed (seen once under wrk, which ends a run by
        // hanging up on requests in flight). Dropped, the transaction rolls back first.
        let connection = match held {
            Some(connection) => connection,
            None => pool.acquire().await?,
        };
        let mut transaction = Transaction { inner: Some(connection), gate, deferred: query::Statements::default() };
        if let Err(error) = sqlx::query(statement).execute(&mut transaction.0).await {
            // No transaction was opened: the connection goes back as it is.
            if let Some(connection) = transaction.inner.take() {
                settle(connection, None, transaction.gate.take());
            }
            return Err(error.into());
        }
        Ok(transaction)
    }

    /// A write transaction for rows derived from durable ones and derived again after a
    /// crash (the audit trail's projection, which re-projects whatever a crash undid:
    /// the journal rows' `projected` marks are written in the same transaction). Its commit
    /// does not wait for the disk: on SQLite projecting then holds the write lock briefly;
    /// on PostgreSQL the projection and the chainer wait for no WAL flush of their own
    /// (`synchronous_commit = off` on these sessions, see [`pool_options`]).
    pub(crate) async fn begin_derived(&self) -> Result<Transaction> {
        self.begin_on(&self.derived).await
    }

    /// A write transaction for the audit recorder's group commits, on a connection of its
    /// own: taken from the shared pool, a batch waited for a connection behind every read it
    /// was recording (32 concurrent reads, 8 connections on SQLite), and the one writer every
    /// read waits for stood in that queue once per batch.
    /// `held` is the connection the recorder's last batch committed on, if it kept it
    /// ([`Transaction::commit_and_keep`]).
    pub(crate) async fn begin_journal(&self, held: Option<Held>) -> Result<Transaction> {
        self.begin_with(&self.journal, held.map(|Held(connection)| connection)).await
    }

    /// Copies the SQLite write-ahead log into the database file as far as readers allow,
    /// without taking the write lock (a passive checkpoint), so that fewer commits find the
    /// log long and checkpoint it themselves. Nothing on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<()> {
        if self.backend == Backend::Sqlite {
            let mut connection = self.pool.acquire().await?;
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut *connection).await?;
        }
        Ok(())
    }

    /// A pooled connection for reads that need no transaction: the one this request's token
    /// was verified on, if it kept it ([`Store::keep_for_request`]).
    pub async fn connection(&self) -> Result<Connection> {
        let inner = match self.take_kept() {
            Some(kept) => kept,
            None => self.pool.acquire().await?,
        };
        Ok(Connection { inner: Some(inner), settles: self.backend == Backend::Postgres, store: self.id })
    }

    /// Keeps `connection`, idle, for this request's next [`Store::connection`] instead of
    /// giving it back to the pool now. Each connection given back is checked by the pool (a
    /// round trip to SQLite's connection thread, or to the PostgreSQL server), and a request
    /// that verified its token and then read used to take and give back two (benches/
    /// README.md, session 22). [`Store::begin`] gives a kept connection back before it waits
    /// for the write gate or the pool, so that no request holds one connection while waiting
    /// for another; the rest of a kept connection goes back when the request ends. Outside
    /// a request ([`with_request_connection`]) the connection simply goes back.
    pub fn keep_for_request(&self, mut connection: Connection) {
        let Some(inner) = connection.inner.take() else { return };
        let kept = Kept { store: self.id, connection: Some(inner), settles: connection.settles };
        let _ = KEPT.try_with(move |slot| {
            let earlier = slot.replace(Some(kept));
            drop(earlier);
        });
    }

    /// This store's connection the request kept, if any.
    fn take_kept(&self) -> Option<sqlx::pool::PoolConnection<sqlx::Any>> {
        KEPT.try_with(|kept| {
            let mine = matches!(&*kept.borrow(), Some(Kept { store, .. }) if *store == self.id);
            if mine {
                kept.take().and_then(Kept::take)
            } else {
                None
            }
        })
        .ok()
        .flatten()
    }

    /// The generation counters as committed now, for a request's first read (its token's
    /// verification): on SQLite from [`CounterReader`], on the calling thread; on PostgreSQL,
    /// or where that connection could not be opened or fails, through `connection`.
    pub async fn counters(&self, connection: &mut Db) -> Result<Generations> {
        match self.counters_on_this_thread() {
            Some(generations) => Ok(generations),
            None => generations(connection).await,
        }
    }

    /// The generation counters read on the calling thread ([`CounterReader`]), where this
    /// store has that connection and the read succeeds; else `None`, and the caller reads
    /// them through a connection of the pool.
    pub fn counters_on_this_thread(&self) -> Option<Generations> {
        let reader = self.counters.as_ref()?;
        match reader.read() {
            Ok(generations) => Some(generations),
            Err(error) => {
                tracing::warn!(target: "renraku::store", %error, "reading the generation counters failed; reading them through the pool");
                None
            }
        }
    }

    /// Whether the database answers and takes a write (for `/healthz`): a committed
    /// one-row update, so a full disk or a read-only database reports not ready.
    pub async fn ping(&self) -> bool {
        let probe = async {
            let mut transaction = self.begin().await?;
            lock(&mut transaction, "healthz").await?;
            transaction.commit().await
        };
        probe.await.is_ok()
    }

    /// Whether every migration this binary carries has been applied to the database (a
    /// gateway whose database another, older binary migrated is not ready).
    pub async fn migrations_applied(&self) -> bool {
        let expected = match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").iter().count(),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").iter().count(),
        };
        let applied = async {
            let mut connection = self.connection().await?;
            let row = sqlx::query("SELECT COUNT(*) AS applied FROM _sqlx_migrations WHERE success").fetch_one(&mut connection.0).await?;
            Ok::<i64, crate::error::Error>(row.try_get("applied")?)
        };
        applied.await.is_ok_and(|applied| usize::try_from(applied).is_ok_and(|applied| applied >= expected))
    }

    pub async fn close(&self) {
        self.derived.close().await;
        self.journal.close().await;
        self.pool.close().await;
    }
}

/// Ends a transaction in the database without telling the driver (the test suite's model of
/// a COMMIT that failed on a full disk): the driver still counts it open. Compiled only with
/// `test-support`.
#[cfg(feature = "test-support")]
pub async fn end_transaction_behind_the_driver_for_tests(transaction: &mut Transaction) -> Result<()> {
    sqlx::query("ROLLBACK").execute(&mut transaction.0).await?;
    Ok(())
}

/// Runs a statement that takes `seconds` on PostgreSQL (`pg_sleep`), standing in for an
/// expensive query; SQLite has no sleep, and nothing runs there.
#[cfg(feature = "test-support")]
pub async fn slow_statement_for_tests(connection: &mut Db, seconds: i32) -> Result<()> {
    if connection.0.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_sleep($1)").bind(f64::from(seconds)).execute(&mut connection.0).await?;
    }
    Ok(())
}

/// Serialises writers that share `name` until the surrounding transaction ends. Call it
/// first in a transaction: on PostgreSQL it takes a row lock, on SQLite it takes the
/// database write lock before anything has been read.
pub async fn lock(connection: &mut Db, name: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO write_locks (name, counter) VALUES ($1, 1) \
         ON CONFLICT (name) DO UPDATE SET counter = write_locks.counter + 1",
    )
    .bind(name)
    .execute(&mut connection.0)
    .await?;
    Ok(())
}

/// The current row of `resource_type/id` (live or deleted), if the grant's scope includes it.
pub async fn current(
    connection: &mut Db,
    grant: &Grant,
    resource_type: &str,
    id: &str,
) -> Result<Option<CurrentRow>> {
    let mut sql = query::Sql::new(
        "SELECT r.resource_type, r.id, r.tenant, r.version_id, r.last_updated, r.deleted, r.content \
         FROM resources r WHERE r.resource_type = ",
    );
    sql.bind(resource_type.to_owned()).push(" AND r.id = ").bind(id.to_owned()).push(" AND ");
    // Judged as its latest version: a deleted resource stays visible (as deleted, 410) to
    // whoever could see the version it deleted, and to nobody else.
    sql.access_scope_versions("r", grant, Some(&[resource_type.to_owned()]));
    let rows = sql.fetch_all(connection).await?;
    rows.first().map(current_from_row).transpose()
}

/// Whether any resource (in any tenant, deleted or not) holds this type and id. Used only to
/// refuse a client-chosen id that is taken; it reveals nothing but "taken".
pub async fn id_taken(connection: &mut Db, resource_type: &str, id: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM resources WHERE resource_type = $1 AND id = $2")
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&mut connection.0)
        .await?;
    Ok(row.is_some())
}

/// One historical version, if the grant's scope includes it (judged on that version's own
/// content: a version about another person is not shown to this person's team).
pub async fn version(
    connection: &mut Db,
    grant: &Grant,
    resource_type: &str,
    id: &str,
    version_id: i64,
) -> Result<Option<VersionRow>> {
    if resource_type == AUDIT_EVENT {
        let filter = HistoryFilter { resource_type: Some(AUDIT_EVENT.to_owned()), id: Some(id.to_owned()), limit: 1, ..HistoryFilter::default() };
        let rows = audit_event_history(connection, grant, &filter).await?;
        return Ok(rows.into_iter().find(|row| row.version_id == version_id));
    }
    let mut sql = query::Sql::new(
        "SELECT v.seq, v.resource_type, v.id, v.version_id, v.tenant, v.last_updated, v.method, v.content \
         FROM resource_versions v WHERE v.resource_type = ",
    );
    sql.bind(resource_type.to_owned()).push(" AND v.id = ").bind(id.to_owned());
    sql.push(" AND v.version_id = ").bind_i64(version_id).push(" AND ");
    sql.access_scope_versions("v", grant, Some(&[resource_type.to_owned()]));
    let rows = sql.fetch_all(connection).await?;
    rows.first().map(version_from_row).transpose()
}

/// Inserts the first version of a new resource, with its index rows and its version's
/// compartment rows. A unique violation (the id was taken by a concurrent writer) becomes a
/// conflict.
pub async fn insert(connection: &mut Db, grant: &WriteGrant, new: &NewVersion<'_>) -> Result<()> {
    permit(connection, grant, new).await?;
    let result = sqlx::query(
        "INSERT INTO resources (resource_type, id, tenant, version_id, last_updated, deleted, content) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new.resource_type)
    .bind(new.id)
    .bind(new.tenant)
    .bind(new.version_id)
    .bind(new.last_updated)
    .bind(i64::from(new.content.is_none()))
    .bind(new.content)
    .execute(&mut connection.0)
    .await;
    match result {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            return Err(Error::Conflict(format!("{}/{} already exists", new.resource_type, new.id)))
        }
        Err(error) => return Err(error.into()),
    }
    insert_version(connection, new, None).await?;
    write_index(connection, new.resource_type, new.id, new.tenant, new.index).await
}

/// Replaces the current row if it is still at `expected_version` (with its index rows and
/// the new version's compartment rows); returns false when another writer got there first
/// (the caller answers 412 or retries). A deletion's version keeps the compartment of the
/// version it deletes: whoever could see the resource sees that it was deleted.
pub async fn replace(
    connection: &mut Db,
    grant: &WriteGrant,
    new: &NewVersion<'_>,
    expected_version: i64,
) -> Result<bool> {
    // The row replaced must be one the grant covers, and so must the new content.
    if current(connection, grant, new.resource_type, new.id).await?.is_none() {
        let error = Error::Forbidden(format!("the access policy does not allow this {} to be changed", new.resource_type));
        grant.record_refusal("replace", new.resource_type, &error);
        return Err(error);
    }
    if new.content.is_some() {
        permit(connection, grant, new).await?;
    }
    let result = sqlx::query(
        "UPDATE resources SET version_id = $1, last_updated = $2, deleted = $3, content = $4 \
         WHERE resource_type = $5 AND id = $6 AND version_id = $7",
    )
    .bind(new.version_id)
    .bind(new.last_updated)
    .bind(i64::from(new.content.is_none()))
    .bind(new.content)
    .bind(new.resource_type)
    .bind(new.id)
    .bind(expected_version)
    .execute(&mut connection.0)
    .await?;
    if result.rows_affected() != 1 {
        return Ok(false);
    }
    let inherited = new.content.is_none().then_some(expected_version);
    insert_version(connection, new, inherited).await?;
    write_index(connection, new.resource_type, new.id, new.tenant, new.index).await?;
    Ok(true)
}

/// Refuses a version whose content the write grant does not cover (403), reported through
/// the decision log.
async fn permit(connection: &mut Db, grant: &WriteGrant, new: &NewVersion<'_>) -> Result<()> {
    if permits(connection, grant, new.resource_type, new.id, new.tenant, new.index).await? {
        return Ok(());
    }
    let error = Error::Forbidden(format!("the access policy does not allow this {} to be written", new.resource_type));
    grant.record_refusal("write", new.resource_type, &error);
    Err(error)
}

/// Whether the grant covers a version with these index rows: the persons it names are
/// looked up against each of the grant's reaches (before the version's own access links are
/// written, so a team cannot admit its own writer), then the grant judges.
async fn permits(
    connection: &mut Db,
    grant: &WriteGrant,
    resource_type: &str,
    id: &str,
    owner: &str,
    index: &[IndexEntry],
) -> Result<bool> {
    let reaches = grant.reaches();
    let mut reached = Vec::with_capacity(reaches.len());
    if !reaches.is_empty() {
        let persons = grant.persons_of(resource_type, id, index);
        for reach in reaches {
            reached.push(if persons.is_empty() { Vec::new() } else { query::reached(connection, reach, grant.now(), &persons).await? });
        }
    }
    Ok(grant.permits_row(resource_type, id, owner, index, &reached))
}

/// Writes a version row and its compartment rows: the version's own references to
/// Patients, or (`inherit_from`) those of an earlier version of the same resource.
async fn insert_version(connection: &mut Db, new: &NewVersion<'_>, inherit_from: Option<i64>) -> Result<()> {
    // The subscriptions' outbox, in the same transaction as the version it announces.
    subscriptions::enqueue(connection, new).await?;
    sqlx::query(
        "INSERT INTO resource_versions (resource_type, id, version_id, tenant, last_updated, method, content) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new.resource_type)
    .bind(new.id)
    .bind(new.version_id)
    .bind(new.tenant)
    .bind(new.last_updated)
    .bind(new.method)
    .bind(new.content)
    .execute(&mut connection.0)
    .await?;
    match inherit_from {
        Some(earlier) => {
            sqlx::query(
                "INSERT INTO version_compartment (resource_type, id, version_id, param, patient) \
                 SELECT resource_type, id, $1, param, patient FROM version_compartment \
                 WHERE resource_type = $2 AND id = $3 AND version_id = $4",
            )
            .bind(new.version_id)
            .bind(new.resource_type)
            .bind(new.id)
            .bind(earlier)
            .execute(&mut connection.0)
            .await?;
        }
        None => {
            let rows: Vec<Vec<BulkValue>> = compartment_rows(new.resource_type, new.id, new.version_id, new.index);
            query::insert_many(connection, "version_compartment (resource_type, id, version_id, param, patient)", rows).await?;
        }
    }
    Ok(())
}

/// The compartment rows of one version: each of its references to a Patient, with the
/// parameter that holds it (the access predicate picks the compartment parameters).
fn compartment_rows(resource_type: &str, id: &str, version_id: i64, index: &[IndexEntry]) -> Vec<Vec<BulkValue>> {
    let mut rows: Vec<Vec<BulkValue>> = Vec::new();
    // The audit trail is read by its chain's municipality alone, never through a person.
    if resource_type == "AuditEvent" {
        return rows;
    }
    for entry in index {
        if let IndexEntry::Reference { param, target_type, target_id, .. } = entry {
            if target_type == "Patient" {
                let row = vec![
                    BulkValue::Text(resource_type.to_owned()),
                    BulkValue::Text(id.to_owned()),
                    BulkValue::Integer(version_id),
                    BulkValue::Text(param.clone()),
                    BulkValue::Text(target_id.clone()),
                ];
                if !rows.contains(&row) {
                    rows.push(row);
                }
            }
        }
    }
    rows
}

/// Rebuilds the index rows of one current resource, outside any write. Maintenance only
/// (`renraku reindex`, a changed set of search parameters): it writes the derived rows the
/// access predicate reads without a grant, which is why it is named loudly.
pub async fn reindex_unchecked_for_maintenance(
    connection: &mut Db,
    resource_type: &str,
    id: &str,
    tenant: &str,
    entries: &[IndexEntry],
) -> Result<()> {
    write_index(connection, resource_type, id, tenant, entries).await
}

/// Replaces the index rows of one resource (none for a deleted resource). A Contract's
/// write bumps the `agreements` generation in the same transaction, so every gateway's
/// cache of agreements is refreshed at its next decision.
async fn write_index(
    connection: &mut Db,
    resource_type: &str,
    id: &str,
    tenant: &str,
    entries: &[IndexEntry],
) -> Result<()> {
    // One round trip on SQLite (see `query::Statements`): the old rows' removal, the new
    // rows and the generation's bump.
    let mut statements = query::Statements::default();
    for table in INDEX_TABLES {
        // Only Communications are board items: other writes skip that table.
        if table == "board_items" && resource_type != "Communication" {
            continue;
        }
        let mut delete = query::Sql::new(&format!("DELETE FROM {table} WHERE resource_type = "));
        delete.bind(resource_type.to_owned()).push(" AND id = ").bind(id.to_owned());
        statements.push(delete);
    }
    if resource_type == "AuditEvent" {
        // Its terms are emptied before a re-index (`audit::clear_index_unchecked_for_maintenance`),
        // the only writer of an existing event's index.
        let mut delete = query::Sql::new("DELETE FROM audit_index WHERE id = ");
        delete.bind(id.to_owned());
        statements.push(delete);
    }
    let mut rows = IndexRows::default();
    rows.add(resource_type, id, tenant, entries);
    rows.push(&mut statements);
    if let Some(name) = generation_of(resource_type) {
        statements.push(generation_bump(name));
    }
    statements.execute(connection).await
}

/// The generation counter a write of `resource_type` bumps, if any.
fn generation_of(resource_type: &str) -> Option<&'static str> {
    match resource_type {
        "Contract" => Some(GENERATION_AGREEMENTS),
        "Organization" | "Practitioner" | "PractitionerRole" => Some(GENERATION_DIRECTORY),
        _ => None,
    }
}

/// Every table holding rows derived from a resource's current content.
const INDEX_TABLES: [&str; 8] =
    ["search_string", "search_token", "search_reference", "search_date", "search_number", "search_uri", "access_links", "board_items"];

/// The generation counter of the wide-area agreements (bumped by every Contract write).
pub const GENERATION_AGREEMENTS: &str = "agreements";
/// The generation counter of the directory entries tokens act through (Organization,
/// Practitioner, PractitionerRole writes).
pub const GENERATION_DIRECTORY: &str = "directory";
/// The generation counter of access tokens (bumped by every revocation and replacement).
pub const GENERATION_TOKENS: &str = "tokens";
/// Bumped by every change to the municipalities and OAuth clients registered at run time.
pub const GENERATION_REGISTRY: &str = "registry";

/// Sets the counter stored under `name` (other names are ignored).
fn set_generation(generations: &mut Generations, name: &str, counter: i64) {
    match name {
        GENERATION_AGREEMENTS => generations.agreements = counter,
        GENERATION_DIRECTORY => generations.directory = counter,
        GENERATION_TOKENS => generations.tokens = counter,
        GENERATION_REGISTRY => generations.registry = counter,
        _ => {}
    }
}

const GENERATIONS_QUERY: &str = "SELECT name, counter FROM generations";

/// Every generation counter, by name (one read of a four-row table), on `connection`: inside
/// a transaction, with the transaction's own bumps. A request's first read, outside any
/// transaction, is [`Store::counters`].
pub async fn generations(connection: &mut Db) -> Result<Generations> {
    let mut generations = Generations::default();
    for row in sqlx::query(GENERATIONS_QUERY).fetch_all(&mut connection.0).await? {
        let name: String = row.try_get("name")?;
        set_generation(&mut generations, &name, row.try_get("counter")?);
    }
    Ok(generations)
}

pub use crate::policy::facts::Generations;

async fn bump_generation(connection: &mut Db, name: &str) -> Result<()> {
    generation_bump(name).execute(connection).await
}

/// The statement that bumps the generation counter `name`.
fn generation_bump(name: &str) -> query::Sql {
    let mut bump = query::Sql::new("UPDATE generations SET counter = counter + 1 WHERE name = ");
    bump.bind(name.to_owned());
    bump
}

/// Index rows of many resources, by table, for multi-row inserts.
#[derive(Default)]
struct IndexRows {
    /// AuditEvents' own rows (`audit_index`, `audit_terms`: see [`audit::IndexOfEvent`]).
    audit_events: Vec<Vec<BulkValue>>,
    audit_terms: Vec<Vec<BulkValue>>,
    /// The rows of the sets of agents these events name, each set once.
    audit_agent_sets: Vec<Vec<BulkValue>>,
    agent_set_keys: std::collections::HashSet<String>,
    strings: Vec<Vec<BulkValue>>,
    tokens: Vec<Vec<BulkValue>>,
    references: Vec<Vec<BulkValue>>,
    dates: Vec<Vec<BulkValue>>,
    numbers: Vec<Vec<BulkValue>>,
    uris: Vec<Vec<BulkValue>>,
    links: Vec<Vec<BulkValue>>,
    board: Vec<Vec<BulkValue>>,
}

impl IndexRows {
    fn add(&mut self, resource_type: &str, id: &str, tenant: &str, entries: &[IndexEntry]) {
        use BulkValue as V;
        let text = |value: &String| V::Text(value.clone());
        let mut rest = entries;
        let generic;
        if resource_type == "AuditEvent" {
            let event = audit::IndexOfEvent::new(id, tenant, entries);
            self.audit_events.push(event.row);
            self.audit_terms.extend(event.terms);
            if let Some((key, rows)) = event.agents {
                if self.agent_set_keys.insert(key) {
                    self.audit_agent_sets.extend(rows);
                }
            }
            generic = event.rest;
            rest = &generic;
        }
        for entry in rest {
            let mut values = vec![V::Text(resource_type.to_owned()), V::Text(id.to_owned())];
            if !matches!(entry, IndexEntry::AccessLink { .. }) {
                values.push(V::Text(tenant.to_owned()));
            }
            let (table, more) = match entry {
                IndexEntry::String { param, normalized, exact } => (&mut self.strings, vec![text(param), text(normalized), text(exact)]),
                IndexEntry::Token { param, system, code, text: display } => {
                    (&mut self.tokens, vec![text(param), text(system), text(code), text(display)])
                }
                IndexEntry::Reference { param, target_type, target_id, url, identifier_system, identifier_value } => (
                    &mut self.references,
                    vec![text(param), text(target_type), text(target_id), text(url), text(identifier_system), text(identifier_value)],
                ),
                IndexEntry::Date { param, low, high } => (&mut self.dates, vec![text(param), text(low), text(high)]),
                IndexEntry::Number { param, value, system, code } => {
                    (&mut self.numbers, vec![text(param), V::Real(*value), text(system), text(code)])
                }
                IndexEntry::Uri { param, uri } => (&mut self.uris, vec![text(param), text(uri)]),
                IndexEntry::AccessLink { kind, patient, member, valid_from, valid_to } => {
                    (&mut self.links, vec![text(kind), text(patient), text(member), text(valid_from), text(valid_to)])
                }
                IndexEntry::BoardItem { patient, kind, sent, sender, parent, live } => {
                    (&mut self.board, vec![text(patient), text(kind), text(sent), text(sender), text(parent), V::Integer(i64::from(*live))])
                }
            };
            values.extend(more);
            table.push(values);
        }
    }

    /// The multi-row inserts of these rows, to be sent with other statements.
    fn push(self, statements: &mut query::Statements) {
        // An event's rows are derived from its content, which never changes: rows already
        // there (a re-index meeting an event appended since it began) are the same rows.
        statements.insert_many_or_ignore(audit::INDEX_COLUMNS, self.audit_events);
        statements.insert_many_or_ignore(audit::TERMS_COLUMNS, self.audit_terms);
        // A set of agents is stored by the first event that has it; later ones find it there.
        statements.insert_many_or_ignore(audit::AGENT_SET_COLUMNS, self.audit_agent_sets);
        let tables = [
            ("search_string (resource_type, id, tenant, param, normalized, exact)", self.strings),
            ("search_token (resource_type, id, tenant, param, system, code, text)", self.tokens),
            (
                "search_reference (resource_type, id, tenant, param, target_type, target_id, url, identifier_system, identifier_value)",
                self.references,
            ),
            ("search_date (resource_type, id, tenant, param, low, high)", self.dates),
            ("search_number (resource_type, id, tenant, param, value, system, code)", self.numbers),
            ("search_uri (resource_type, id, tenant, param, uri)", self.uris),
            ("access_links (resource_type, id, kind, patient, member, valid_from, valid_to)", self.links),
            ("board_items (resource_type, id, tenant, patient, kind, sent, sender, parent, live)", self.board),
        ];
        for (target, rows) in tables {
            statements.insert_many(target, rows);
        }
    }
}

/// A server setting (e.g. the search parameter fingerprint of the index).
pub async fn setting(connection: &mut Db, name: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT value FROM settings WHERE name = $1").bind(name).fetch_optional(&mut connection.0).await?;
    Ok(row.map(|row| row.try_get::<String, _>("value")).transpose()?)
}

pub async fn set_setting(connection: &mut Db, name: &str, value: &str) -> Result<()> {
    sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = $2")
        .bind(name)
        .bind(value)
        .execute(&mut connection.0)
        .await?;
    Ok(())
}

/// A batch of current rows (live or deleted) after `(resource_type, id)`, for re-indexing.
/// Maintenance only: it bypasses the access policy, which is why it is named loudly.
pub async fn all_current_unchecked_for_maintenance(
    connection: &mut Db,
    after: Option<(&str, &str)>,
    limit: i64,
) -> Result<Vec<CurrentRow>> {
    let (after_type, after_id) = after.unwrap_or(("", ""));
    let rows = sqlx::query(
        "SELECT resource_type, id, tenant, version_id, last_updated, deleted, content FROM resources \
         WHERE (resource_type > $1 OR (resource_type = $1 AND id > $2)) ORDER BY resource_type, id LIMIT $3",
    )
    .bind(after_type)
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut connection.0)
    .await?;
    rows.iter().map(current_from_row).collect()
}

/// Every version of one resource, oldest first, for rebuilding their compartment rows.
/// Maintenance only, like [`all_current_unchecked_for_maintenance`].
pub async fn versions_unchecked_for_maintenance(connection: &mut Db, resource_type: &str, id: &str) -> Result<Vec<VersionRow>> {
    let rows = sqlx::query(
        "SELECT seq, resource_type, id, version_id, tenant, last_updated, method, content FROM resource_versions \
         WHERE resource_type = $1 AND id = $2 ORDER BY version_id",
    )
    .bind(resource_type)
    .bind(id)
    .fetch_all(&mut connection.0)
    .await?;
    rows.iter().map(version_from_row).collect()
}

/// Replaces one version's compartment rows with those of `index` (maintenance, see
/// [`versions_unchecked_for_maintenance`]).
pub async fn recompartment_unchecked_for_maintenance(
    connection: &mut Db,
    resource_type: &str,
    id: &str,
    version_id: i64,
    index: &[IndexEntry],
) -> Result<()> {
    sqlx::query("DELETE FROM version_compartment WHERE resource_type = $1 AND id = $2 AND version_id = $3")
        .bind(resource_type)
        .bind(id)
        .bind(version_id)
        .execute(&mut connection.0)
        .await?;
    let rows = compartment_rows(resource_type, id, version_id, index);
    query::insert_many(connection, "version_compartment (resource_type, id, version_id, param, patient)", rows).await
}

/// Versions newest first, within the grant's tenants. AuditEvents have no version rows (see
/// [`push_new_rows`]): their history is their resource rows, newest first by
/// (`last_updated`, `id`), and the system-wide history does not list them.
pub async fn history(connection: &mut Db, grant: &Grant, filter: &HistoryFilter) -> Result<Vec<VersionRow>> {
    if filter.resource_type.as_deref() == Some(AUDIT_EVENT) {
        return audit_event_history(connection, grant, filter).await;
    }
    let mut sql = query::Sql::new(
        "SELECT v.seq, v.resource_type, v.id, v.version_id, v.tenant, v.last_updated, v.method, v.content \
         FROM resource_versions v WHERE ",
    );
    history_where(&mut sql, grant, filter);
    if let Some(before) = filter.before_seq {
        sql.push(" AND v.seq < ").bind_i64(before);
    }
    sql.push(" ORDER BY v.seq DESC LIMIT ").bind_i64(filter.limit);
    let rows = sql.fetch_all(connection).await?;
    rows.iter().map(version_from_row).collect()
}

/// The filter and the grant's scope of a history listing, over the version row `v`.
fn history_where(sql: &mut query::Sql, grant: &Grant, filter: &HistoryFilter) {
    sql.tenant_scope("v.tenant", grant);
    sql.push(" AND ");
    let types = filter.resource_type.clone().map(|t| vec![t]);
    sql.access_scope_versions("v", grant, types.as_deref());
    if let Some(resource_type) = &filter.resource_type {
        sql.push(" AND v.resource_type = ").bind(resource_type.clone());
    }
    if let Some(id) = &filter.id {
        sql.push(" AND v.id = ").bind(id.clone());
    }
    if let Some(since) = &filter.since {
        sql.push(" AND v.last_updated >= ").bind(since.clone());
    }
}

/// Counts history versions matching the filter (ignoring the cursor and limit).
pub async fn history_count(connection: &mut Db, grant: &Grant, filter: &HistoryFilter) -> Result<i64> {
    let sql = if filter.resource_type.as_deref() == Some(AUDIT_EVENT) {
        let mut sql = query::Sql::new("SELECT COUNT(*) AS n FROM resources r WHERE ");
        audit_event_history_where(&mut sql, grant, filter);
        sql
    } else {
        let mut sql = query::Sql::new("SELECT COUNT(*) AS n FROM resource_versions v WHERE ");
        history_where(&mut sql, grant, filter);
        sql
    };
    let rows = sql.fetch_all(connection).await?;
    let count = rows.first().map(|row| row.try_get::<i64, _>("n")).transpose()?.unwrap_or(0);
    Ok(count)
}

/// The history of AuditEvents: each is written once and never changed (retention pruning
/// aside), so its resource row is its one version, listed as created.
async fn audit_event_history(connection: &mut Db, grant: &Grant, filter: &HistoryFilter) -> Result<Vec<VersionRow>> {
    let mut sql = query::Sql::new("SELECT r.resource_type, r.id, r.tenant, r.version_id, r.last_updated, r.deleted, r.content FROM resources r WHERE ");
    audit_event_history_where(&mut sql, grant, filter);
    if let Some((last_updated, id)) = &filter.before_event {
        sql.push(" AND (r.last_updated < ").bind(last_updated.clone());
        sql.push(" OR (r.last_updated = ").bind(last_updated.clone()).push(" AND r.id < ").bind(id.clone()).push("))");
    }
    sql.push(" ORDER BY r.last_updated DESC, r.id DESC LIMIT ").bind_i64(filter.limit);
    let rows = sql.fetch_all(connection).await?;
    rows.iter()
        .map(|row| {
            let current = current_from_row(row)?;
            Ok(VersionRow {
                seq: 0,
                resource_type: current.resource_type,
                id: current.id,
                version_id: current.version_id,
                tenant: current.tenant,
                last_updated: current.last_updated,
                method: "POST".to_owned(),
                content: current.content,
            })
        })
        .collect()
}

/// The filter and the grant's scope of AuditEvents' history, over the resource row `r` (the
/// same predicate as a read of the event).
fn audit_event_history_where(sql: &mut query::Sql, grant: &Grant, filter: &HistoryFilter) {
    sql.push("r.resource_type = 'AuditEvent' AND r.deleted = 0 AND ");
    sql.tenant_scope("r.tenant", grant);
    sql.push(" AND ");
    sql.access_scope("r", grant, Some(&[AUDIT_EVENT.to_owned()]));
    if let Some(id) = &filter.id {
        sql.push(" AND r.id = ").bind(id.clone());
    }
    if let Some(since) = &filter.since {
        sql.push(" AND r.last_updated >= ").bind(since.clone());
    }
}

pub(crate) fn current_from_row(row: &sqlx::any::AnyRow) -> Result<CurrentRow> {
    Ok(CurrentRow {
        resource_type: row.try_get("resource_type")?,
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        version_id: row.try_get("version_id")?,
        last_updated: row.try_get("last_updated")?,
        deleted: row.try_get::<i64, _>("deleted")? != 0,
        content: row.try_get("content")?,
    })
}

fn version_from_row(row: &sqlx::any::AnyRow) -> Result<VersionRow> {
    Ok(VersionRow {
        seq: row.try_get("seq")?,
        resource_type: row.try_get("resource_type")?,
        id: row.try_get("id")?,
        version_id: row.try_get("version_id")?,
        tenant: row.try_get("tenant")?,
        last_updated: row.try_get("last_updated")?,
        method: row.try_get("method")?,
        content: row.try_get("content")?,
    })
}

/// A new resource for [`bulk_insert_new`]: its JSON (already stamped) and index rows.
#[derive(Debug, Clone)]
pub struct BulkRow {
    pub resource_type: String,
    pub id: String,
    pub content: String,
    pub index: Vec<IndexEntry>,
}

/// Writes many new resources (version 1) into the grant's home tenant with their version and
/// index rows, using multi-row INSERTs. For data generation and imports; the caller validates.
pub async fn bulk_insert_new(connection: &mut Db, grant: &WriteGrant, last_updated: &str, rows: Vec<BulkRow>) -> Result<()> {
    let tenant = grant.home_tenant();
    for row in &rows {
        if !permits(connection, grant, &row.resource_type, &row.id, tenant, &row.index).await? {
            return Err(Error::Forbidden(format!("the access policy does not allow {}/{} to be written", row.resource_type, row.id)));
        }
    }
    let rows: Vec<(String, String, BulkRow)> = rows.into_iter().map(|row| (tenant.to_owned(), last_updated.to_owned(), row)).collect();
    insert_new_rows(connection, rows).await
}

/// Inserts new resources (version 1), each with its owning tenant and time, with their
/// version and index rows. Callers: [`bulk_insert_new`] (under a grant) and the audit trail
/// (`store::audit`, AuditEvents only).
async fn insert_new_rows(connection: &mut Db, rows: Vec<(String, String, BulkRow)>) -> Result<()> {
    let mut statements = query::Statements::default();
    push_new_rows(&mut statements, rows);
    statements.execute(connection).await
}

/// The statements of [`insert_new_rows`], to be sent with others.
pub(crate) fn push_new_rows(statements: &mut query::Statements, rows: Vec<(String, String, BulkRow)>) {
    use query::BulkValue as V;
    // An AuditEvent is written once and never changed: its resource row is its one version
    // (see [`history`]). A second copy of its JSON and its compartment rows were a fifth of an
    // audited read's cost (benches/README.md, session 19).
    let versioned: Vec<&(String, String, BulkRow)> = rows.iter().filter(|(_, _, r)| r.resource_type != AUDIT_EVENT).collect();
    let versions: Vec<Vec<V>> = versioned
        .iter()
        .map(|(tenant, last_updated, r)| {
            vec![
                V::Text(r.resource_type.clone()),
                V::Text(r.id.clone()),
                V::Integer(1),
                V::Text(tenant.to_owned()),
                V::Text(last_updated.to_owned()),
                V::Text("POST".into()),
                V::Text(r.content.clone()),
            ]
        })
        .collect();
    let compartments: Vec<Vec<V>> = versioned.iter().flat_map(|(_, _, r)| compartment_rows(&r.resource_type, &r.id, 1, &r.index)).collect();
    let mut index = IndexRows::default();
    for (tenant, _, row) in &rows {
        index.add(&row.resource_type, &row.id, tenant, &row.index);
    }
    let mut bumped: Vec<&'static str> = rows.iter().filter_map(|(_, _, row)| generation_of(&row.resource_type)).collect();
    bumped.sort_unstable();
    bumped.dedup();
    // The resource rows' values are made last: their JSON moves into the statement.
    let resources: Vec<Vec<V>> = rows
        .into_iter()
        .map(|(tenant, last_updated, r)| vec![V::Text(r.resource_type), V::Text(r.id), V::Text(tenant), V::Integer(1), V::Text(last_updated), V::Integer(0), V::Text(r.content)])
        .collect();
    statements.insert_many("resources (resource_type, id, tenant, version_id, last_updated, deleted, content)", resources);
    statements.insert_many("resource_versions (resource_type, id, version_id, tenant, last_updated, method, content)", versions);
    statements.insert_many("version_compartment (resource_type, id, version_id, param, patient)", compartments);
    index.push(statements);
    for name in bumped {
        statements.push(generation_bump(name));
    }
}
