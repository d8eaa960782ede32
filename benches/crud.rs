//! Create and read throughput and latency, in-process through the full HTTP stack (axum
//! router, validation, storage), on SQLite or PostgreSQL.
//!
//! ```sh
//! cargo bench --bench crud                                   # SQLite in a temporary directory
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/renraku_bench cargo bench --bench crud
//! ```
//! Environment: `BENCH_PRELOAD` (Patients loaded before measuring, default 10000),
//! `BENCH_OPERATIONS` (measured requests per phase, default 4000), `BENCH_CONCURRENCY`
//! (requests in flight, default 8), `BENCH_AUDIT` (`both`, the default: the whole run with
//! the audit trail, then again on a fresh database without it, and the ratio; `on`; `off`).
//! On PostgreSQL the databases named by the URL (and `…_noaudit`) are dropped and created.
//! Results are recorded in `benches/README.md`.

// Benchmarks and tests stop loudly: the lints that keep panics out of the server do not
// apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt;
use renraku::config::{demo_tenants, Config};
use renraku::Gateway;
use serde_json::json;
use tokio::sync::Semaphore;
use tower::ServiceExt;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn patient(n: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:renraku:bench", "value": format!("{n:08}") }],
        "active": true,
        "name": [
            { "use": "official", "family": "山田", "given": [format!("太郎{n}")] },
            { "use": "official", "family": "ヤマダ", "given": ["タロウ"] }
        ],
        "gender": if n.is_multiple_of(2) { "male" } else { "female" },
        "birthDate": format!("19{:02}-0{}-1{}", 30 + n % 60, 1 + n % 9, n % 10),
        "address": [{ "city": "伊那市", "state": "長野県", "country": "JP" }]
    }))
    .unwrap_or_default()
}

async fn send_as(router: &Router, token: &str, method: &str, uri: &str, body: Option<Vec<u8>>) -> (u16, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/fhir+json")
        .header("authorization", format!("Bearer {token}"))
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap_or_default();
    match router.clone().oneshot(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
            (status, bytes)
        }
        Err(_) => (0, Vec::new()),
    }
}

struct Phase {
    name: &'static str,
    latencies: Vec<Duration>,
    elapsed: Duration,
    failures: usize,
}

impl Phase {
    /// Prints the phase's figures and returns its throughput.
    fn report(&mut self) -> f64 {
        self.latencies.sort();
        let percentile = |p: f64| {
            let index = ((self.latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
            self.latencies.get(index).copied().unwrap_or_default()
        };
        println!(
            "{:<8} {:>6} requests  {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  failures {}",
            self.name,
            self.latencies.len(),
            self.latencies.len() as f64 / self.elapsed.as_secs_f64(),
            percentile(0.50).as_secs_f64() * 1000.0,
            percentile(0.99).as_secs_f64() * 1000.0,
            self.failures
        );
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `operations` requests, `concurrency` at a time, as the holder of `token`, timing each.
async fn phase_as(
    name: &'static str,
    router: &Router,
    token: &str,
    operations: usize,
    concurrency: usize,
    make: impl Fn(usize) -> (&'static str, String, Option<Vec<u8>>),
    expect: u16,
) -> Phase {
    let semaphore = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(operations);
    for n in 0..operations {
        let permit = semaphore.clone().acquire_owned().await;
        let router = router.clone();
        let token = token.to_owned();
        let (method, uri, body) = make(n);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let start = Instant::now();
            let (status, _) = send_as(&router, &token, method, &uri, body).await;
            (start.elapsed(), status == expect)
        }));
    }
    let mut latencies = Vec::with_capacity(operations);
    let mut failures = 0;
    for task in tasks {
        if let Ok((latency, ok)) = task.await {
            latencies.push(latency);
            failures += usize::from(!ok);
        }
    }
    Phase { name, latencies, elapsed: started.elapsed(), failures }
}

/// A fresh database for one run: a temporary SQLite file, or a dropped and re-created
/// PostgreSQL database.
async fn fresh_database(base_url: Option<&str>, suffix: &str, directory: &std::path::Path) -> String {
    let Some(url) = base_url else { return renraku::config::default_sqlite_url(directory) };
    let Some((server, name)) = url.rsplit_once('/') else { return url.to_owned() };
    let name = format!("{name}{suffix}");
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await.unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
    for statement in [format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), format!("CREATE DATABASE {name}")] {
        sqlx::query(&statement).execute(&mut admin).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    format!("{server}/{name}")
}

/// Throughput of the create, read and policed-read phases of one run.
struct Figures {
    create: f64,
    read: f64,
    policed: f64,
}

async fn run(database_url: String, directory: &std::path::Path, audited: bool) -> Figures {
    let preload = setting("BENCH_PRELOAD", 10_000);
    let operations = setting("BENCH_OPERATIONS", 4_000);
    let concurrency = setting("BENCH_CONCURRENCY", 8);
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        data_dir: directory.to_owned(),
        database_url: database_url.clone(),
        public_base_url: "http://bench".into(),
        body_limit_bytes: renraku::config::DEFAULT_BODY_LIMIT_BYTES,
        tenants: demo_tenants(),
        demo: false,
        extra_search_parameters: Vec::new(),
        audit_retention_days: renraku::config::DEFAULT_AUDIT_RETENTION_DAYS,
        metrics_token: None,
        shutdown_grace_ms: renraku::config::DEFAULT_SHUTDOWN_GRACE_MS,
        unknown_profiles: renraku::config::UnknownProfiles::default(),
        binary: Default::default(),
        subscriptions: Default::default(),
        audit_off_for_benchmarks_only: !audited,
        limits: renraku::config::Limits::default(),
        clients: Vec::new(),
    };
    let gateway = Gateway::start(config).await.unwrap_or_else(|e| panic!("gateway: {e}"));
    let router = gateway.router();
    let token = support::token(&gateway.state.fhir, renraku::identity::Actor::TestUnrestricted).await;
    let backend = database_url.split(':').next().unwrap_or_default().to_owned();
    println!(
        "backend {backend}; audit trail {}; preload {preload} Patients; {operations} requests per phase; concurrency {concurrency}",
        if audited { "ON" } else { "off" }
    );

    let load = phase_as("preload", &router, &token, preload, concurrency, |n| ("POST", "/ina/fhir/Patient".into(), Some(patient(n))), 201).await;
    println!("preloaded in {:.1} s", load.elapsed.as_secs_f64());
    // Planner statistics for the loaded tables (as autovacuum, or the gateway's periodic
    // SQLite ANALYZE, would have them in production); without them PostgreSQL's generic plan
    // for a read by id may range over the municipality's index instead of the primary key.
    gateway.state.fhir.store.optimize().await.unwrap_or_else(|e| panic!("optimize: {e}"));
    let (_, body) = send_as(&router, &token, "GET", &format!("/ina/fhir/Patient?_count={}&_elements=id", preload.min(1000)), None).await;
    let bundle: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let ids: Arc<Vec<String>> = Arc::new(
        bundle["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned)).collect(),
    );
    let create = phase_as("create", &router, &token, operations, concurrency, |n| ("POST", "/ina/fhir/Patient".into(), Some(patient(preload + n))), 201)
        .await
        .report();
    let read_ids = ids.clone();
    let read = phase_as(
        "read",
        &router,
        &token,
        operations,
        concurrency,
        move |n| ("GET", format!("/ina/fhir/Patient/{}", read_ids[(n * 7919) % read_ids.len().max(1)]), None),
        200,
    )
    .await
    .report();

    // The same reads by a practitioner whom the access policy must place on each person's
    // support team (CareTeam + Consent facts read at every request): the policy's cost.
    let supported: Vec<String> = ids.iter().take(50).cloned().collect();
    let directory = [
        serde_json::json!({ "resourceType": "Organization", "id": "bench-org", "name": "bench" }),
        serde_json::json!({ "resourceType": "Practitioner", "id": "bench-pr" }),
        serde_json::json!({ "resourceType": "PractitionerRole", "id": "bench-role", "practitioner": { "reference": "Practitioner/bench-pr" },
                            "organization": { "reference": "Organization/bench-org" } }),
    ];
    for resource in directory {
        let uri = format!("/ina/fhir/{}/{}", resource["resourceType"].as_str().unwrap_or_default(), resource["id"].as_str().unwrap_or_default());
        send_as(&router, &token, "PUT", &uri, serde_json::to_vec(&resource).ok()).await;
    }
    for id in &supported {
        let consent = serde_json::json!({ "resourceType": "Consent", "status": "active",
            "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] }, "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN" }] },
            "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
            "patient": { "reference": format!("Patient/{id}") } });
        let team = serde_json::json!({ "resourceType": "CareTeam", "status": "active", "subject": { "reference": format!("Patient/{id}") },
            "participant": [{ "member": { "reference": "PractitionerRole/bench-role" } }] });
        send_as(&router, &token, "POST", "/ina/fhir/Consent", serde_json::to_vec(&consent).ok()).await;
        send_as(&router, &token, "POST", "/ina/fhir/CareTeam", serde_json::to_vec(&team).ok()).await;
    }
    let practitioner = support::token(
        &gateway.state.fhir,
        renraku::identity::Actor::Practitioner {
            tenant: "ina".into(),
            practitioner: "bench-pr".into(),
            role: "bench-role".into(),
            organization: "bench-org".into(),
        },
    )
    .await;
    let supported = Arc::new(supported);
    let policed = phase_as(
        "read as a team member (policy)",
        &router,
        &practitioner,
        operations,
        concurrency,
        move |n| ("GET", format!("/ina/fhir/Patient/{}", supported[n % supported.len().max(1)]), None),
        200,
    )
    .await
    .report();
    gateway.state.fhir.store.close().await;
    Figures { create, read, policed }
}

#[tokio::main]
async fn main() {
    // BENCH_LOG=renraku::audit=debug shows the audit trail's batches.
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_writer(std::io::stderr).init();
    }
    let base_url = std::env::var("BENCH_DATABASE_URL").ok();
    let mode = std::env::var("BENCH_AUDIT").unwrap_or_else(|_| "both".into());
    let with = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
    let without = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
    let on = if mode != "off" { Some(run(fresh_database(base_url.as_deref(), "", with.path()).await, with.path(), true).await) } else { None };
    let off = if mode != "on" {
        Some(run(fresh_database(base_url.as_deref(), "_noaudit", without.path()).await, without.path(), false).await)
    } else {
        None
    };
    if let (Some(on), Some(off)) = (on, off) {
        println!(
            "audit on / off: create {:.2}, read {:.2}, read as a team member {:.2}",
            on.create / off.create,
            on.read / off.read,
            on.policed / off.policed
        );
    }
}
