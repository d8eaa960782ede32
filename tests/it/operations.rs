//! What operators use: liveness, readiness and the Prometheus metrics.

use serde_json::json;

use crate::both_backends;
use crate::support::{Backend, Server};

/// The value of the sample `name{labels}` in a Prometheus text exposition (0 when absent).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            series.split('{').next() == Some(name) && labels.iter().all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0.0)
}

async fn liveness_and_readiness(backend: Backend) {
    let server = Server::start(backend).await;
    let live = server.get_with("/livez", &[("authorization", "none")]).await;
    live.expect(200);
    assert_eq!(live.text(), "alive");
    server.get_with("/healthz", &[("authorization", "none")]).await.expect(200);
    // Without a metrics token the endpoint is off.
    let off = server.get_with("/metrics", &[("authorization", "none")]).await;
    off.expect(404);
    assert_eq!(off.json()["resourceType"], "OperationOutcome");
}

/// A known request mix, scraped before and after: the counts move by exactly that much,
/// by route template — never by raw URL, which would carry ids and names.
async fn metrics_count_a_known_request_mix(backend: Backend) {
    let server = Server::start_with(backend, |config| config.metrics_token = Some("scrape-me".into())).await;
    let scrape = || async {
        let reply = server.get_with("/metrics", &[("authorization", "Bearer scrape-me")]).await;
        reply.expect(200);
        assert!(reply.header("content-type").unwrap_or_default().starts_with("text/plain"));
        reply.text()
    };
    server.get_with("/metrics", &[("authorization", "none")]).await.expect(401);
    server.get_with("/metrics", &[("authorization", "Bearer wrong")]).await.expect(401);
    let person = server.create("ina", &json!({ "resourceType": "Patient", "name": [{ "family": "山田" }] })).await;
    let before = scrape().await;
    let read = [("route", "/{tenant}/fhir/{resource_type}/{id}"), ("method", "GET"), ("status", "200")];
    let missing = [("route", "/{tenant}/fhir/{resource_type}/{id}"), ("method", "GET"), ("status", "404")];
    let searched = [("route", "/{tenant}/fhir/{resource_type}"), ("method", "GET"), ("status", "200")];
    for _ in 0..3 {
        server.get(&format!("/ina/fhir/Patient/{person}")).await.expect(200);
    }
    for _ in 0..2 {
        server.get("/ina/fhir/Patient/nobody-here").await.expect(404);
    }
    server.get("/ina/fhir/Patient?family=山田").await.expect(200);
    server.get("/nowhere-at-all").await.expect(404);
    let after = scrape().await;
    let moved = |labels: &[(&str, &str)]| sample(&after, "renraku_http_requests_total", labels) - sample(&before, "renraku_http_requests_total", labels);
    assert_eq!(moved(&read), 3.0, "{after}");
    assert_eq!(moved(&missing), 2.0);
    assert_eq!(moved(&searched), 1.0);
    assert_eq!(moved(&[("route", "unmatched"), ("status", "404")]), 1.0);
    let latency = [("route", "/{tenant}/fhir/{resource_type}/{id}"), ("method", "GET")];
    assert!(sample(&after, "renraku_http_request_duration_seconds_count", &latency) >= 5.0, "{after}");
    // Ids, names and search strings stay out of the labels.
    for private in [person.as_str(), "nobody-here", "山田", "family", "nowhere-at-all"] {
        assert!(!after.contains(private), "{private} in the metrics");
    }
    // Read when scraped: the pool, the journal's lag, the token lookups.
    assert!(sample(&after, "renraku_db_pool_connections", &[("state", "open")]) >= 1.0);
    assert!(after.contains("renraku_audit_journal_unprojected_events"));
    let lookups = |text: &str| {
        sample(text, "renraku_token_lookups_total", &[("source", "cache")]) + sample(text, "renraku_token_lookups_total", &[("source", "database")])
    };
    assert!(lookups(&after) - lookups(&before) >= 6.0, "every authenticated request looked its token up: {} then {}\n{after}", lookups(&before), lookups(&after));
}

both_backends!(liveness_and_readiness, metrics_count_a_known_request_mix);
