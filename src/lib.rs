//! Renraku: a FHIR R4 gateway for municipal home-care support platforms.
//!
//! Crate map, outermost first:
//! - [`http`]: axum routes and thin handlers; HTTP in, OperationOutcome out.
//! - [`service`]: the FHIR interactions, with no HTTP in them.
//! - [`policy`]: the access decision point; hands out the grants the store requires.
//! - [`fhir`]: formats, validation, profiles, references; no HTTP, no SQL.
//! - [`store`]: one SQL definition for SQLite and PostgreSQL.
//! - [`config`]: the only reader of environment variables and files.
//!
//! [`app`] builds the whole HTTP application from a [`Config`], so tests drive the full
//! stack in-process.

use std::sync::Arc;

use axum::Router;

pub mod admin;
pub mod audit;
pub mod auth;
#[cfg(feature = "test-support")]
pub mod benchmark;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod fhir;
pub mod http;
pub mod identity;
pub mod import;
pub mod outcome;
pub mod policy;
pub mod runtime;
pub mod search;
pub mod service;
pub mod store;

pub use config::Config;

/// Everything a running gateway holds.
pub struct Gateway {
    pub state: http::AppState,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("validation tables: {0}")]
    Validation(String),
    #[error("data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("demo data: {0}")]
    Demo(String),
}

impl Gateway {
    /// Connects to the database (running migrations), loads the validation tables and, in
    /// demo mode, seeds the demo data.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Gateway::start_with_clock(config, Arc::new(clock::SystemClock)).await
    }

    /// [`Gateway::start`] with the clock every decision, token and audit event reads (tests
    /// pass one they control).
    pub async fn start_with_clock(config: Config, clock: Arc<dyn clock::Clock>) -> Result<Gateway, StartError> {
        if config.database_url.starts_with("sqlite:") {
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|e| StartError::DataDir(config.data_dir.display().to_string(), e))?;
        }
        let store = store::Store::connect_with(&config.database_url, &config.limits).await?;
        if store.backend() == store::Backend::Sqlite {
            // PostgreSQL's autovacuum keeps statistics current; SQLite needs asking.
            store.optimize().await.map_err(|e| StartError::Validation(format!("optimize: {e}")))?;
            let periodic = store.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(std::time::Duration::from_secs(30 * 60));
                interval.tick().await;
                loop {
                    interval.tick().await;
                    if let Err(error) = periodic.optimize().await {
                        tracing::warn!(%error, "refreshing SQLite statistics failed");
                    }
                }
            });
        }
        if !store.autovacuum_on().await.unwrap_or(true) {
            // A server without autovacuum (a misconfiguration, but one seen in the wild and on
            // this project's CI machine): the gateway keeps the statistics itself.
            tracing::warn!("PostgreSQL's autovacuum is off: the gateway analyzes its changed tables every minute itself");
            let periodic = store.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    interval.tick().await;
                    match periodic.analyze_changed_tables().await {
                        Ok(tables) if !tables.is_empty() => tracing::debug!(?tables, "statistics refreshed"),
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, "refreshing PostgreSQL statistics failed"),
                    }
                }
            });
        }
        let validator = fhir::validate::Validator::load().map_err(StartError::Validation)?;
        let validator = Arc::new(validator.refusing_unknown_profiles(config.unknown_profiles == config::UnknownProfiles::Error));
        let registry = search::Registry::load(&config.extra_search_parameters).map_err(StartError::Validation)?;
        for skipped in &registry.skipped {
            tracing::debug!(%skipped, "search parameter not compiled");
        }
        let config = Arc::new(config);
        let mut clients = config.clients.clone();
        if config.demo {
            clients.extend(auth::server::demo_clients());
        }
        let runtime = runtime::Runtime::new(store, validator, Arc::new(registry), clock, config.clone(), clients).map_err(StartError::Validation)?;
        let fhir = Arc::new(service::Fhir::new(runtime));
        fhir.refresh_registry().await.map_err(|e| StartError::Validation(format!("tenants: {e}")))?;
        let reindexed = fhir.reindex_if_changed().await.map_err(|e| StartError::Validation(format!("reindex: {e}")))?;
        if let Some(count) = reindexed.filter(|count| *count > 0) {
            tracing::info!(count, "search index rebuilt for changed search parameters");
        }
        // The audit trail's projection of journal rows that carry their JSON (PostgreSQL's;
        // SQLite stores events as AuditEvent rows at once), and checkpoints of SQLite's log.
        let projector = Arc::downgrade(&fhir);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(std::time::Duration::from_millis(500));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(fhir) = projector.upgrade() else { break };
                // While the recorder's projector is busy, what is journaled is most likely in
                // its hands already (see `runtime::recorder`).
                if !fhir.recorder.projecting() {
                    if let Err(error) = fhir.project_audit_events().await {
                        tracing::warn!(target: "renraku::audit", %error, "projecting audit events failed; retrying");
                    }
                }
                if let Err(error) = fhir.store.checkpoint().await {
                    tracing::warn!(target: "renraku::store", %error, "checkpointing the write-ahead log failed; retrying");
                }
                fhir.background_beat();
            }
        });
        // The chainer (writes queue their audit events instead of chaining them in their own
        // transaction: `store::audit::append`): woken by each audited write's commit, and
        // every 500 ms for what another gateway queued and did not chain (it stopped, say).
        spawn_woken(&fhir, std::time::Duration::from_millis(500), |fhir| &fhir.audit_chain_wake, |fhir| {
            Box::pin(async move {
                if let Err(error) = fhir.chain_audit_events().await {
                    tracing::warn!(target: "renraku::audit", %error, "chaining queued audit events failed; retrying");
                }
            })
        });
        // Notifications: each gateway delivers what is due, woken by its own writes and
        // looking every `poll_ms` for what other gateways wrote (and for retries, heartbeats).
        let poll = std::time::Duration::from_millis(config.subscriptions.poll_ms.max(10));
        spawn_woken(&fhir, poll, |fhir| &fhir.subscriptions.wake, |fhir| {
            Box::pin(async move {
                if let Err(error) = fhir.deliver_due().await {
                    tracing::warn!(target: "renraku::notify", %error, "delivering notifications failed; retrying");
                }
            })
        });
        // On PostgreSQL, another gateway's write wakes this one at once (LISTEN/NOTIFY as a
        // wake-up only; the poll above stays the guarantee).
        let woken = Arc::downgrade(&fhir);
        let database_url = config.database_url.clone();
        tokio::spawn(async move {
            store::subscriptions::listen_for_wake_ups(&database_url, move || match woken.upgrade() {
                Some(fhir) => {
                    fhir.subscriptions.wake.notify_one();
                    !fhir.is_draining()
                }
                None => false,
            })
            .await;
        });
        if config.demo {
            demo::seed(&fhir).await.map_err(|e| StartError::Demo(e.to_string()))?;
        } else {
            // The demo's well-known tokens must not outlive demo mode on the same database.
            demo::withdraw_tokens(&fhir).await.map_err(|e| StartError::Demo(e.to_string()))?;
        }
        Ok(Gateway { state: http::AppState { fhir, config } })
    }

    pub fn router(&self) -> Router {
        app(self.state.clone())
    }

    /// Serves `listener` until `stop` completes, then stops accepting, lets the requests in
    /// flight finish within `grace` and shuts down: see [`Gateway::shut_down`]. A request
    /// acknowledged before the end is durable and audited either way (reads commit their
    /// events before answering, writes in their own transaction).
    pub async fn serve_until(self, listener: tokio::net::TcpListener, stop: impl std::future::Future<Output = ()> + Send + 'static, grace: std::time::Duration) -> std::io::Result<()> {
        let (begun, begins) = tokio::sync::oneshot::channel::<()>();
        let fhir = self.state.fhir.clone();
        let signal = async move {
            stop.await;
            fhir.start_draining();
            tracing::info!(target: "renraku::serve", "shutting down: no new connections; finishing the requests in flight");
            let _ = begun.send(());
        };
        let service = self.router().into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = std::future::IntoFuture::into_future(axum::serve(listener, service).with_graceful_shutdown(signal));
        tokio::pin!(served);
        let outcome = tokio::select! {
            outcome = &mut served => Some(outcome),
            _ = async {
                let _ = begins.await;
                tokio::time::sleep(grace).await;
            } => None,
        };
        match outcome {
            Some(outcome) => outcome?,
            None => tracing::warn!(target: "renraku::serve", grace_ms = grace.as_millis(), "requests still in flight after the grace period were abandoned"),
        }
        self.shut_down().await;
        Ok(())
    }

    /// Ends the gateway's work: the audit events journaled so far are projected, and the
    /// database connections are closed.
    pub async fn shut_down(&self) {
        let fhir = &self.state.fhir;
        fhir.start_draining();
        if let Err(error) = fhir.project_audit_events().await {
            tracing::warn!(target: "renraku::audit", %error, "projecting the last audit events failed; the next start projects them");
        }
        fhir.store.close().await;
        tracing::info!(target: "renraku::serve", "shut down cleanly");
    }
}

/// Runs `work` in a task of its own until the gateway drains or is gone: at once, then each
/// time `wake` is notified or `period` has passed since the last round.
fn spawn_woken(
    fhir: &Arc<service::Fhir>,
    period: std::time::Duration,
    wake: fn(&service::Fhir) -> &tokio::sync::Notify,
    work: impl Fn(&Arc<service::Fhir>) -> futures_util::future::BoxFuture<'_, ()> + Send + 'static,
) {
    let weak = Arc::downgrade(fhir);
    tokio::spawn(async move {
        loop {
            let Some(fhir) = weak.upgrade() else { break };
            if fhir.is_draining() {
                break;
            }
            work(&fhir).await;
            tokio::select! {
                () = wake(&fhir).notified() => {}
                () = tokio::time::sleep(period) => {}
            }
        }
    });
}

/// The HTTP application over the given state.
pub fn app(state: http::AppState) -> Router {
    http::router(state)
}
