//! The running gateway's parts, apart from what it does with them: the store, the
//! validator and the search parameter registry, the clock and the configuration, the
//! directories of municipalities and OAuth clients (the configuration file's and those
//! administrators added), the audit recorder for reads, and the caches of facts and tokens.
//! The FHIR interactions (`service`), sign-in and tokens (`auth`) and administration
//! (`admin`) are built on it; it knows none of them.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{Config, TenantConfig};
use crate::error::{Error, Result};
use crate::fhir::validate::Validator;
use crate::identity::clients::ClientConfig;
use crate::identity::Authenticated;
use crate::policy;
use crate::search::Registry;
use crate::store::{self, Store};

pub mod metrics;
pub mod recorder;
pub mod subscriptions;

/// Everything a running gateway holds.
pub struct Runtime {
    pub store: Store,
    pub validator: Arc<Validator>,
    pub search_params: Arc<Registry>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    /// The municipalities served: the configuration file's and those an administrator added.
    /// Shared, not copied: every audited request looks at the list two or three times (its
    /// decision, its event's municipality names), and a wide-area platform has dozens.
    tenants: std::sync::RwLock<Arc<Vec<TenantConfig>>>,
    /// The OAuth clients registered: the configuration file's (and the demo's) and those
    /// registered at run time.
    clients: std::sync::RwLock<Vec<ClientConfig>>,
    /// The configuration file's (and the demo's) clients, which no run-time change removes.
    configured_clients: Vec<ClientConfig>,
    /// The `registry` generation the directories were last loaded at (-1: never).
    registry_generation: std::sync::atomic::AtomicI64,
    /// Serialises reloads, so that an older reload never replaces a newer one.
    registry_reload: tokio::sync::Mutex<()>,
    /// Where reads and failures hand their audit events (group commit).
    pub(crate) recorder: recorder::Recorder,
    /// Wakes the task that chains the events writes queued (PostgreSQL,
    /// `store::audit::chain_queued`) after each audited write's commit.
    pub audit_chain_wake: tokio::sync::Notify,
    /// The wide-area agreements as last read (refreshed when their generation changes).
    pub(crate) agreements: policy::facts::AgreementCache,
    /// The standing of the directory entries tokens act through (refreshed when the
    /// directory's generation changes).
    pub(crate) standing: policy::facts::StandingCache,
    pub(crate) decisions: policy::cache::DecisionCache,
    /// Verified access tokens (refreshed when the tokens' generation changes).
    pub tokens: TokenCache,
    /// What `GET /metrics` reports.
    pub metrics: metrics::Metrics,
    /// Board and chat changes, each sent after its transaction committed (the seam for
    /// notifications; nobody need listen).
    pub board_events: tokio::sync::broadcast::Sender<crate::fhir::board::BoardEvent>,
    /// Notifications: topics, websocket bindings, the delivery HTTP client.
    pub subscriptions: subscriptions::Hub,
    /// Set when shutdown begins: `/healthz` answers 503 so that load balancers stop sending.
    draining: std::sync::atomic::AtomicBool,
    /// When the background task (audit projection, checkpoints) last completed a round.
    background_beat: std::sync::Mutex<std::time::Instant>,
    /// A fault the test suite armed (see [`Failpoint`]).
    #[cfg(feature = "test-support")]
    failpoint: std::sync::Mutex<Option<Failpoint>>,
}

impl Runtime {
    /// Assembles the runtime; `clients` are the OAuth clients registered before start (the
    /// configuration file's, and the demo's in demo mode). Starts the audit recorder's task.
    pub fn new(
        store: Store,
        validator: Arc<Validator>,
        search_params: Arc<Registry>,
        clock: Arc<dyn Clock>,
        config: Arc<Config>,
        clients: Vec<ClientConfig>,
    ) -> std::result::Result<Runtime, String> {
        let tenants = std::sync::RwLock::new(Arc::new(config.tenants.clone()));
        let hub = subscriptions::Hub::new(&config.subscriptions)?;
        let recorder = recorder::Recorder::start(store.clone(), search_params.clone());
        Ok(Runtime {
            store,
            validator,
            search_params,
            clock,
            config,
            tenants,
            clients: std::sync::RwLock::new(clients.clone()),
            configured_clients: clients,
            registry_generation: std::sync::atomic::AtomicI64::new(-1),
            registry_reload: tokio::sync::Mutex::new(()),
            recorder,
            audit_chain_wake: tokio::sync::Notify::new(),
            agreements: policy::facts::AgreementCache::default(),
            standing: policy::facts::StandingCache::default(),
            decisions: policy::cache::DecisionCache::default(),
            tokens: TokenCache::default(),
            metrics: metrics::Metrics::default(),
            board_events: tokio::sync::broadcast::channel(1024).0,
            subscriptions: hub,
            draining: std::sync::atomic::AtomicBool::new(false),
            background_beat: std::sync::Mutex::new(std::time::Instant::now()),
            #[cfg(feature = "test-support")]
            failpoint: std::sync::Mutex::new(None),
        })
    }

    /// The client `client_id` registered at `tenant`.
    pub fn client(&self, tenant: &str, client_id: &str) -> Option<ClientConfig> {
        read_lock(&self.clients).iter().find(|c| c.tenant == tenant && c.client_id == client_id).cloned()
    }

    /// The clients registered at `tenant`.
    pub fn clients_of(&self, tenant: &str) -> Vec<ClientConfig> {
        read_lock(&self.clients).iter().filter(|c| c.tenant == tenant).cloned().collect()
    }

    /// Whether a browser page at `origin` may call `path` (CORS): the origin is that of a
    /// redirect URI of an app registered at the path's municipality, or, for the paths
    /// outside every municipality (`/admin/…`), of an app registered for administrative roles.
    pub fn allows_origin(&self, origin: &str, path: &str) -> bool {
        let tenant = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        let clients = read_lock(&self.clients);
        let at_tenant = self.serves(tenant);
        clients
            .iter()
            .filter(|c| !c.is_backend_service())
            .filter(|c| if at_tenant { c.tenant == tenant } else { c.roles.iter().any(|r| r.is_administrative()) })
            .flat_map(|c| c.redirect_uris.iter())
            .filter_map(|uri| url::Url::parse(uri).ok())
            // A native app's custom-scheme redirect has an opaque origin ("null"), which any
            // sandboxed page also sends: only web origins count.
            .filter(|uri| matches!(uri.scheme(), "https" | "http"))
            .any(|uri| uri.origin().ascii_serialization() == origin)
    }

    /// The municipalities served now.
    pub fn tenants(&self) -> Arc<Vec<TenantConfig>> {
        Arc::clone(&read_lock(&self.tenants))
    }

    pub fn tenant(&self, slug: &str) -> Option<TenantConfig> {
        read_lock(&self.tenants).iter().find(|t| t.slug == slug).cloned()
    }

    /// Whether this gateway knows the municipality `slug` (without copying its settings).
    pub fn serves(&self, slug: &str) -> bool {
        read_lock(&self.tenants).iter().any(|t| t.slug == slug)
    }

    /// Adds a municipality to the directory (the caller stored it).
    pub(crate) fn insert_tenant(&self, tenant: TenantConfig) -> Result<()> {
        Arc::make_mut(&mut *write_lock(&self.tenants)?).push(tenant);
        Ok(())
    }

    /// Adds or replaces a client's registration in the directory (the caller stored it).
    pub(crate) fn put_client(&self, client: ClientConfig) -> Result<()> {
        let mut registered = write_lock(&self.clients)?;
        registered.retain(|c| !(c.tenant == client.tenant && c.client_id == client.client_id));
        registered.push(client);
        Ok(())
    }

    /// Removes a client's registration from the directory (the caller deleted it).
    pub(crate) fn forget_client(&self, tenant: &str, client_id: &str) -> Result<()> {
        write_lock(&self.clients)?.retain(|c| !(c.tenant == tenant && c.client_id == client_id));
        Ok(())
    }

    /// Marks the gateway as shutting down (readiness fails from now on).
    pub fn start_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The background task completed a round.
    pub fn background_beat(&self) {
        if let Ok(mut beat) = self.background_beat.lock() {
            *beat = std::time::Instant::now();
        }
    }

    /// How long ago the background task last completed a round.
    pub fn background_silence(&self) -> std::time::Duration {
        self.background_beat.lock().map(|beat| beat.elapsed()).unwrap_or(std::time::Duration::MAX)
    }

    /// Reloads the municipalities and clients registered at run time if the `registry`
    /// generation moved since they were last read: another gateway on the same database, or
    /// `renraku admin`, changed them. Cheap when nothing changed (one small read).
    pub async fn refresh_registry(&self) -> Result<()> {
        let _reloading = self.registry_reload.lock().await;
        // On SQLite read on this thread (`Store::counters_on_this_thread`): no pool
        // connection is taken unless the registry changed.
        let generation = match self.store.counters_on_this_thread() {
            Some(generations) => generations.registry,
            None => store::generations(&mut *self.store.connection().await?).await?.registry,
        };
        if self.registry_generation.load(std::sync::atomic::Ordering::Acquire) == generation {
            return Ok(());
        }
        let mut connection = self.store.connection().await?;
        let stored_clients = store::tenants::list_clients(&mut connection).await?;
        let stored_tenants = store::tenants::list(&mut connection).await?;
        drop(connection);
        let mut clients = self.configured_clients.clone();
        for client in stored_clients {
            if !clients.iter().any(|c| c.tenant == client.tenant && c.client_id == client.client_id) {
                clients.push(client);
            }
        }
        let mut tenants = self.config.tenants.clone();
        for tenant in stored_tenants {
            if !tenants.iter().any(|t| t.slug == tenant.slug || t.code == tenant.code) {
                tenants.push(tenant);
            }
        }
        *write_lock(&self.clients)? = clients;
        *write_lock(&self.tenants)? = Arc::new(tenants);
        self.registry_generation.store(generation, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Whether the municipality `slug` is served, looking again in the database when this
    /// gateway does not know it (it may have been added through another).
    pub async fn serves_now(&self, slug: &str) -> Result<bool> {
        if self.serves(slug) {
            return Ok(true);
        }
        self.refresh_registry().await?;
        Ok(self.serves(slug))
    }

    /// The client `client_id` of `tenant` as registered now on any gateway: the token and
    /// authorization endpoints ask this, so a registration removed through another gateway
    /// gets no token here either.
    pub async fn current_client(&self, tenant: &str, client_id: &str) -> Result<Option<ClientConfig>> {
        self.refresh_registry().await?;
        Ok(self.client(tenant, client_id))
    }

    #[cfg(feature = "test-support")]
    pub(crate) fn take_failpoint(&self, point: Failpoint) -> bool {
        match self.failpoint.lock() {
            Ok(mut armed) if *armed == Some(point) => {
                *armed = None;
                true
            }
            _ => false,
        }
    }

    /// Arms a failpoint for the next audited interaction (tests only).
    #[cfg(feature = "test-support")]
    pub fn arm_failpoint(&self, point: Failpoint) {
        if let Ok(mut armed) = self.failpoint.lock() {
            *armed = Some(point);
        }
    }
}

/// Test-only fault injection: makes the next audited write or read fail at a chosen point.
#[cfg(feature = "test-support")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// Storing a read's events fails (the read must fail too).
    RecordEvents,
    /// The writer's commit of a successful read's events fails after the read handed them
    /// over and made its response: the response must not leave.
    ReadEventsNotCommitted,
    /// The process "crashes" (panics) after a write's event was appended, before the commit.
    CrashBeforeCommit,
    /// The database ends the write's transaction behind the driver's back (as a failed
    /// COMMIT on a full disk does), and the write fails: the connection must not go back to
    /// the pool in that state.
    TransactionLostBeforeCommit,
    /// The next search first runs a statement that takes 30 s on the database (PostgreSQL),
    /// standing in for an expensive query whose request is abandoned.
    SlowStatement,
    /// Deliveries pause (the gateway stands in for one that crashed after committing a
    /// write and before notifying anyone); stays armed.
    PauseDeliveries,
}

/// Reads a registry (municipalities, clients). A writer that panicked leaves the list as it
/// was before or after its one push or removal, so the value is still good to read.
fn read_lock<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes a registry; a poisoned lock is an error, never a write silently dropped.
fn write_lock<T>(lock: &std::sync::RwLock<T>) -> Result<std::sync::RwLockWriteGuard<'_, T>> {
    lock.write().map_err(|_| Error::internal("a registry lock is poisoned (a writer panicked); restart the gateway"))
}

/// Verified tokens as last read, valid while the `tokens` generation is unchanged. Only
/// tokens found live are kept (a token issued after a miss is simply read next time), and
/// at most [`TokenCache::CAPACITY`] of them: a full cache starts again empty.
#[derive(Debug, Default)]
pub struct TokenCache(std::sync::Mutex<CachedTokens>, TokenLookups);

/// How many lookups the token cache answered, and how many went to the database.
#[derive(Debug, Default)]
pub struct TokenLookups {
    pub hits: std::sync::atomic::AtomicU64,
    pub misses: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct CachedTokens {
    generation: i64,
    by_digest: std::collections::HashMap<String, CachedToken>,
}

#[derive(Debug, Clone)]
pub(crate) struct CachedToken {
    pub(crate) tenant: String,
    pub(crate) expires_at: String,
    pub(crate) authenticated: Authenticated,
}

impl TokenCache {
    pub const CAPACITY: usize = 100_000;

    pub(crate) fn get(&self, generation: i64, digest: &str) -> Option<CachedToken> {
        let found = self.0.lock().ok().and_then(|cached| (cached.generation == generation).then(|| cached.by_digest.get(digest).cloned()).flatten());
        let counter = if found.is_some() { &self.1.hits } else { &self.1.misses };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        found
    }

    /// The lookups so far.
    pub fn lookups(&self) -> &TokenLookups {
        &self.1
    }

    pub(crate) fn put(&self, generation: i64, digest: String, token: CachedToken) {
        // A poisoned cache is only a cache: the database answers next time.
        let Ok(mut cached) = self.0.lock() else { return };
        if cached.generation != generation || cached.by_digest.len() >= Self::CAPACITY {
            cached.by_digest.clear();
            cached.generation = generation;
        }
        cached.by_digest.insert(digest, token);
    }
}
