//! Test support: a real gateway per test on SQLite (temporary file) or PostgreSQL (a
//! fresh database), driven in-process through its axum router.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use renraku::identity::scopes::Scopes;
use renraku::auth::tokens::{self, TokenGrant};
use renraku::config::{Config, TenantConfig};
use renraku::identity::Actor;
use renraku::Gateway;
use serde_json::Value;
use sqlx::Connection;
use tower::ServiceExt;

/// The database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the PostgreSQL suite's server is; override with `RENRAKU_TEST_POSTGRES_URL`.
pub fn postgres_admin_url() -> String {
    std::env::var("RENRAKU_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Generates one test per backend for each named `async fn(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Generates each listed test for both backends and both kinds of principal: the suite's
/// unrestricted principal and a real, policy-bound one ([`Who`]). Each test function takes
/// `(Backend, Who)` and starts its server with [`Server::start_as`].
#[macro_export]
macro_rules! both_backends_as_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                mod $name {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn unrestricted() {
                        super::super::$name($crate::support::Backend::Sqlite, $crate::support::Who::Unrestricted).await
                    }
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn care_manager() {
                        super::super::$name($crate::support::Backend::Sqlite, $crate::support::Who::CareManager).await
                    }
                }
            )*
        }
        mod postgres {
            $(
                mod $name {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn unrestricted() {
                        super::super::$name($crate::support::Backend::Postgres, $crate::support::Who::Unrestricted).await
                    }
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn care_manager() {
                        super::super::$name($crate::support::Backend::Postgres, $crate::support::Who::CareManager).await
                    }
                }
            )*
        }
    };
}

/// Who a test's requests at 伊那市's base speak for when they bring no token of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The suite's unrestricted principal: everything in the municipality.
    Unrestricted,
    /// 伊那市's care manager (PractitionerRole `role-cm` of the care-management office
    /// `Organization/office`, `user/*.cruds`): bound by the access rule, she reaches the
    /// persons her office registers (`managingOrganization` = [`OFFICE`]) and, with a
    /// support team she is on, their data.
    CareManager,
}

/// The care-management office that registers the persons of tests run [`Who`]-wise.
pub const OFFICE: &str = "Organization/office";

pub const BASE: &str = "http://renraku.test";

/// A running gateway and what must be cleaned up after it.
pub struct Server {
    pub router: Router,
    /// Per tenant, a token of the test suite's unrestricted principal (everything in that
    /// tenant), sent with every request that brings no Authorization header of its own.
    tokens: std::collections::HashMap<String, String>,
    /// The unrestricted tokens, whoever the requests speak for (for [`Server::setup`]).
    unrestricted: std::collections::HashMap<String, String>,
    fhir: Arc<renraku::service::Fhir>,
    config: Config,
    directory: Option<tempfile::TempDir>,
    database: Option<String>,
}

/// A response, read completely.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text());
        self
    }

    /// The expressions of every issue of an OperationOutcome body.
    pub fn issue_expressions(&self) -> Vec<String> {
        let outcome = self.json();
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
        outcome["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|issue| issue["expression"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect()
    }
}

pub fn test_tenants() -> Vec<TenantConfig> {
    renraku::config::demo_tenants()
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        Server::start_with(backend, |_| {}).await
    }

    /// Starts a gateway whose configuration `adjust` may change.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Server {
        Server::start_with_clock(backend, adjust, Arc::new(renraku::clock::SystemClock)).await
    }

    /// Starts a gateway that reads `clock` (a `ManualClock` lets a test move time).
    pub async fn start_with_clock(backend: Backend, adjust: impl FnOnce(&mut Config), clock: Arc<dyn renraku::clock::Clock>) -> Server {
        let (mut config, directory, database) = new_database(backend).await;
        adjust(&mut config);
        let gateway = Gateway::start_with_clock(config.clone(), clock).await.expect("gateway starts");
        let fhir = gateway.state.fhir.clone();
        let tokens = unrestricted_tokens(&fhir, &config).await;
        Server { router: gateway.router(), unrestricted: tokens.clone(), tokens, fhir, config, directory: Some(directory), database }
    }

    /// Stops this gateway and starts another on the same database with a changed
    /// configuration (as an operator restarting the server would).
    pub async fn restart_with(mut self, adjust: impl FnOnce(&mut Config)) -> Server {
        let mut config = self.config.clone();
        adjust(&mut config);
        let gateway = Gateway::start(config.clone()).await.expect("gateway restarts");
        let tokens = unrestricted_tokens(&gateway.state.fhir, &config).await;
        Server {
            router: gateway.router(),
            unrestricted: tokens.clone(),
            tokens,
            fhir: gateway.state.fhir.clone(),
            config,
            directory: self.directory.take(),
            database: self.database.take(),
        }
    }

    /// Sends a request. Without an `authorization` header of its own it carries the
    /// unrestricted test token of the path's tenant; an `authorization` header with the
    /// value `none` sends no credentials at all.
    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        let mut authorized = false;
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("authorization") {
                authorized = true;
                if *value == "none" {
                    continue;
                }
            }
            builder = builder.header(*name, *value);
        }
        if !authorized {
            let tenant = path.trim_start_matches('/').split('/').next().unwrap_or_default();
            if let Some(token) = self.tokens.get(tenant) {
                builder = builder.header("authorization", format!("Bearer {token}"));
            }
        }
        let request = builder.body(body.map(Body::from).unwrap_or_else(Body::empty)).expect("request");
        let response = self.router.clone().oneshot(request).await.expect("router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.expect("body").to_bytes().to_vec();
        Reply { status, headers, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], None).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::GET, path, headers, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, &[], body).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::PUT, path, &[], body).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.request(Method::DELETE, path, &[], None).await
    }

    /// Sends FHIR JSON with extra headers.
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        let mut all = vec![("content-type", "application/fhir+json")];
        all.extend_from_slice(headers);
        self.request(method, path, &all, Some(serde_json::to_vec(body).expect("json"))).await
    }

    /// Creates a resource and returns its id.
    pub async fn create(&self, tenant: &str, body: &Value) -> String {
        let resource_type = body["resourceType"].as_str().expect("resourceType");
        let reply = self.post(&format!("/{tenant}/fhir/{resource_type}"), body).await;
        reply.expect(201);
        reply.json()["id"].as_str().expect("id").to_owned()
    }

    /// The FHIR engine behind the router, for tests of project commands (e.g. generate).
    pub fn fhir(&self) -> Arc<renraku::service::Fhir> {
        self.fhir.clone()
    }

    /// Writes `resource` at `tenant`'s base with its own id as the unrestricted principal: a
    /// test's world, set up before the principals it is about act in it (they choose ids
    /// only as UUIDs for a person's data; see README "Ids").
    pub async fn setup(&self, tenant: &str, resource: &Value) {
        let path = format!(
            "/{tenant}/fhir/{}/{}",
            resource["resourceType"].as_str().unwrap_or_default(),
            resource["id"].as_str().unwrap_or_default()
        );
        let token = self.unrestricted.get(tenant).cloned().unwrap_or_default();
        let reply = self.send(Method::PUT, &path, &[("authorization", &format!("Bearer {token}"))], resource).await;
        assert!(matches!(reply.status.as_u16(), 200 | 201), "setting up {path}: {} {}", reply.status, reply.text());
    }

    /// A gateway whose requests at 伊那市's base speak for `who` (see [`Who`]); the office
    /// and its care manager exist either way.
    pub async fn start_as(backend: Backend, who: Who) -> Server {
        let mut server = Server::start(backend).await;
        let care_manager = crate::policy::practitioner(&server, "ina", "cm", "office", "user/*.cruds").await;
        if who == Who::CareManager {
            server.tokens.insert("ina".to_owned(), care_manager.token);
        }
        server
    }

    /// The gateway's database URL (for a second store on it, as another gateway would open).
    pub fn database_url(&self) -> &str {
        &self.config.database_url
    }

    /// A connection of its own to the gateway's database, as someone with direct access to
    /// the database (not through the gateway) would open one.
    pub async fn database_directly(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        <sqlx::AnyConnection as sqlx::Connection>::connect(&self.config.database_url).await.expect("direct database connection")
    }

    /// Issues an access token at `tenant`'s base for `actor` with `scopes` (space-separated).
    pub async fn token(&self, tenant: &str, actor: Actor, scopes: &str, patient: Option<&str>) -> String {
        issue_token(&self.fhir, tenant, actor, scopes, patient).await
    }

    pub fn shared(self) -> Arc<Server> {
        Arc::new(self)
    }
}

/// A configuration for a new, empty database (a temporary SQLite file, or a fresh
/// PostgreSQL database dropped when the returned name's `Server` is dropped), with the
/// temporary directory that must outlive it.
pub async fn new_database(backend: Backend) -> (Config, tempfile::TempDir, Option<String>) {
        let directory = tempfile::tempdir().expect("temporary directory");
        let (database_url, database) = match backend {
            Backend::Sqlite => (renraku::config::default_sqlite_url(directory.path()), None),
            Backend::Postgres => {
                let name = format!("renraku_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
                    .await
                    .expect("PostgreSQL is reachable (see .ci/run)");
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
                let admin_url = postgres_admin_url();
                let base = admin_url.rsplit_once('/').map(|(base, _)| base.to_owned()).unwrap_or(admin_url);
                (format!("{base}/{name}"), Some(name))
            }
        };
        let config = Config {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: directory.path().to_owned(),
            database_url,
            public_base_url: BASE.to_owned(),
            body_limit_bytes: renraku::config::DEFAULT_BODY_LIMIT_BYTES,
            tenants: test_tenants(),
            demo: false,
            extra_search_parameters: Vec::new(),
            audit_retention_days: renraku::config::DEFAULT_AUDIT_RETENTION_DAYS,
            metrics_token: None,
            shutdown_grace_ms: renraku::config::DEFAULT_SHUTDOWN_GRACE_MS,
            unknown_profiles: renraku::config::UnknownProfiles::default(),
            binary: Default::default(),
            subscriptions: renraku::config::SubscriptionSettings::demo(),
            audit_off_for_benchmarks_only: false,
            limits: renraku::config::Limits::default(),
        clients: Vec::new(),
        };
        (config, directory, database)
}

/// Drops a PostgreSQL test database (see [`new_database`]).
pub fn drop_database(name: String) {
    drop_database_now(name);
}

async fn issue_token(fhir: &renraku::service::Fhir, tenant: &str, actor: Actor, scopes: &str, patient: Option<&str>) -> String {
    let grant = TokenGrant {
        tenant: tenant.to_owned(),
        actor,
        scopes: Scopes::parse(scopes).expect("scopes parse"),
        patient: patient.map(str::to_owned),
        client_id: "test-suite".to_owned(),
        lifetime: chrono::Duration::hours(1),
    };
    let mut connection = fhir.store.connection().await.expect("connection");
    tokens::issue(&mut connection, fhir.clock.now(), &grant).await.expect("token issued").access_token
}

async fn unrestricted_tokens(fhir: &renraku::service::Fhir, config: &Config) -> std::collections::HashMap<String, String> {
    let mut tokens = std::collections::HashMap::new();
    for tenant in &config.tenants {
        let token = issue_token(fhir, &tenant.slug, Actor::TestUnrestricted, "user/*.cruds system/*.cruds", None).await;
        tokens.insert(tenant.slug.clone(), token);
    }
    tokens
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(name) = self.database.take() {
            drop_database(name);
        }
    }
}

fn drop_database_now(name: String) {
    // Dropping the database needs async I/O; a short-lived runtime on its own thread does
    // it without disturbing the test's runtime.
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(runtime) = runtime {
            runtime.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
                }
            });
        }
    })
    .join();
}
