//! Search latency at volume: the timeline, kana-name, identifier and `_lastUpdated` queries
//! over generated data, on SQLite or PostgreSQL, with the query plan of the timeline.
//!
//! ```sh
//! cargo bench --bench search                    # SQLite in target/bench-data (kept between runs)
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/renraku_bench cargo bench --bench search
//! ```
//! Environment: `BENCH_PATIENTS` (default 100000), `BENCH_COMMUNICATIONS` (default
//! 2000000), `BENCH_QUERIES` (per query kind, default 300), `BENCH_AUDIT=off` (without the
//! audit trail; by default every query records its event, as in production). Data is generated once (the
//! same generator as `renraku generate`, seed 1) and reused while the counts match.

// Benchmarks and tests stop loudly: the lints that keep panics out of the server do not
// apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use renraku::config::{demo_tenants, Config};
use renraku::policy;
use renraku::identity::{Interaction, Principal};
use renraku::service::generate::Volume;
use renraku::Gateway;
use tower::ServiceExt;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
    sorted.get(index).copied().unwrap_or_default().as_secs_f64() * 1000.0
}

/// Makes the n-th query of a kind.
type QueryMaker = Box<dyn Fn(usize) -> String>;

#[tokio::main]
async fn main() {
    let patients = setting("BENCH_PATIENTS", 100_000);
    let communications = setting("BENCH_COMMUNICATIONS", 2_000_000);
    let queries = setting("BENCH_QUERIES", 300);
    let data_dir = std::path::PathBuf::from(std::env::var("BENCH_DATA_DIR").unwrap_or_else(|_| "target/bench-data".into()));
    let database_url = std::env::var("BENCH_DATABASE_URL").unwrap_or_else(|_| {
        format!("sqlite://{}?mode=rwc", data_dir.join(format!("search-{patients}-{communications}.sqlite")).display())
    });
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        data_dir: data_dir.clone(),
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
            subscriptions: renraku::config::SubscriptionSettings::demo(),
        // BENCH_AUDIT=off measures the search engine alone (every query is audited otherwise).
        audit_off_for_benchmarks_only: std::env::var("BENCH_AUDIT").is_ok_and(|v| v == "off"),
        limits: renraku::config::Limits::default(),
        clients: Vec::new(),
    };
    let gateway = Gateway::start(config).await.unwrap_or_else(|e| panic!("gateway: {e}"));
    let router = gateway.router();
    let fhir = gateway.state.fhir.clone();
    let token = support::token(&fhir, renraku::identity::Actor::TestUnrestricted).await;
    let get = |uri: String| {
        let router = router.clone();
        let authorization = format!("Bearer {token}");
        async move {
            let request =
                Request::builder().uri(uri).header("authorization", authorization).body(Body::empty()).unwrap_or_default();
            let started = Instant::now();
            let response = router.oneshot(request).await.unwrap_or_else(|e| panic!("{e}"));
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            (started.elapsed(), status.as_u16(), body)
        }
    };
    let (_, _, body) = get("/ina/fhir/Communication?_summary=count".into()).await;
    let existing: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if existing["total"].as_u64().unwrap_or(0) < communications as u64 {
        let started = Instant::now();
        fhir.generate("ina", Volume { patients, communications, seed: 1, ..Volume::default() }).await.unwrap_or_else(|e| panic!("generate: {e}"));
        println!("generated {patients} Patients and {communications} Communications in {:.0} s", started.elapsed().as_secs_f64());
    }
    let backend = database_url.split(':').next().unwrap_or_default().to_owned();
    println!("backend {backend}; {patients} Patients; {communications} Communications; {queries} queries per kind");
    let kana = ["やまだ", "さとう", "すずき", "たかはし", "まるやま", "みやした"];
    let kinds: Vec<(&str, QueryMaker)> = vec![
        ("timeline", Box::new(move |n| format!("/ina/fhir/Communication?subject=Patient/gen1-p{}&_sort=-sent&_count=20&_include=Communication:sender", (n * 7919) % patients))),
        ("kana name", Box::new(move |n| format!("/ina/fhir/Patient?name={}&_count=20", kana[n % kana.len()]))),
        ("kana name, _total=none", Box::new(move |n| format!("/ina/fhir/Patient?name={}&_count=20&_total=none", kana[n % kana.len()]))),
        ("identifier", Box::new(move |n| format!("/ina/fhir/Patient?identifier=urn:oid:1.2.392.100495.20.3.51.1202096|{:08}", (n * 104_729) % patients))),
        ("_lastUpdated", Box::new(|_| "/ina/fhir/Patient?_lastUpdated=ge2020-01-01&_count=20&_total=none".to_owned())),
    ];
    for (name, make) in &kinds {
        let mut latencies = Vec::with_capacity(queries);
        for n in 0..queries {
            let (elapsed, status, _) = get(make(n)).await;
            assert_eq!(status, 200, "{name}");
            latencies.push(elapsed);
        }
        latencies.sort();
        println!("{name:<24} median {:>7.2} ms  p99 {:>7.2} ms", percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    }
    // The plan of the timeline query, to show it is driven by the person's references.
    let mut connection = fhir.store.connection().await.unwrap_or_else(|e| panic!("{e}"));
    let environment = policy::Environment {
        registry: &fhir.search_params,
        tenants: &fhir.config.tenants,
        now: fhir.clock.now(),
        base_url: "",
        limits: &fhir.config.limits,
        agreements: &renraku::policy::facts::AgreementCache::default(),
        standing: &renraku::policy::facts::StandingCache::default(),
        decisions: &renraku::policy::cache::DecisionCache::default(),
    };
    let grant = policy::decide(&mut *connection, &environment, &Principal::Operator, "ina", Interaction::Search, Some("Communication"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pairs = vec![
        ("subject".to_owned(), "Patient/gen1-p42".to_owned()),
        ("_sort".to_owned(), "-sent".to_owned()),
        ("_count".to_owned(), "20".to_owned()),
    ];
    let parsed = renraku::service::search::parse(&fhir.search_params, "Communication", &pairs, false, "http://bench/ina/fhir", &renraku::config::Limits::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = renraku::store::query::explain(&mut connection, fhir.store.backend(), &grant, &parsed.query("Communication", 20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("timeline plan ({backend}):");
    for line in plan {
        println!("  {line}");
    }
}
