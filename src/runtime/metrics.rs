//! What operators alert on, in Prometheus' text format (`GET /metrics`): requests by route
//! template, method and status with their latency, and — read when scraped — the database
//! pool, the audit journal's lag and the token cache. Labels are route templates
//! (`/{tenant}/fhir/{resource_type}`), never raw URLs: search strings carry names.
//!
//! Each gateway holds its own recorder (the exporter's, used through the `metrics::Recorder`
//! trait) instead of installing a process-global one, so several gateways in one process —
//! the test suite's — count separately.

use ::metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

const METADATA: Metadata<'static> = Metadata::new("renraku", Level::INFO, Some(module_path!()));

/// Latency buckets, in seconds: a read takes about a millisecond, a search tens.
const BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub struct Metrics {
    recorder: PrometheusRecorder,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS) {
            Ok(builder) => builder,
            // Only an empty bucket list is refused; the constant is not empty.
            Err(_) => PrometheusBuilder::new(),
        };
        Metrics { recorder: builder.build_recorder() }
    }
}

impl Metrics {
    /// One answered request: `route` is the matched route template (or `unmatched`).
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = vec![
            Label::new("route", route.to_owned()),
            Label::new("method", method.to_owned()),
            Label::new("interaction", interaction(route, method)),
            Label::new("status", status.to_string()),
        ];
        self.recorder.register_counter(&Key::from_parts("renraku_http_requests_total", labels), &METADATA).increment(1);
        let labels = vec![Label::new("route", route.to_owned()), Label::new("method", method.to_owned())];
        self.recorder.register_histogram(&Key::from_parts("renraku_http_request_duration_seconds", labels), &METADATA).record(seconds);
    }

    /// A notification sent (`delivered`) or not (`failed`), by channel.
    pub fn notification(&self, channel: &str, outcome: &'static str) {
        let labels = vec![Label::new("channel", channel.to_owned()), Label::new("outcome", outcome)];
        self.recorder.register_counter(&Key::from_parts("renraku_notifications_total", labels), &METADATA).increment(1);
    }

    /// From an event's commit to its receiver's acknowledgement, by channel.
    pub fn notification_latency(&self, channel: &str, seconds: f64) {
        let labels = vec![Label::new("channel", channel.to_owned())];
        self.recorder.register_histogram(&Key::from_parts("renraku_notification_latency_seconds", labels), &METADATA).record(seconds);
    }

    /// A counter kept elsewhere (the token cache's), set to its total when scraped.
    pub fn counter(&self, name: &'static str, labels: Vec<Label>, total: u64) {
        self.recorder.register_counter(&Key::from_parts(name, labels), &METADATA).absolute(total);
    }

    /// A value read when scraped (pool connections, journal lag).
    pub fn gauge(&self, name: &'static str, labels: Vec<Label>, value: f64) {
        self.recorder.register_gauge(&Key::from_parts(name, labels), &METADATA).set(value);
    }

    /// The text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}

/// The FHIR interaction (or the gateway's own kind of request) a route template and method
/// stand for, so that dashboards can group by `read`, `search-type`, `create`, … .
pub fn interaction(route: &str, method: &str) -> &'static str {
    let Some(fhir) = route.strip_prefix("/{tenant}/fhir") else {
        return match route {
            "/healthz" | "/livez" | "/metrics" => "operations",
            _ if route.starts_with("/admin/") => "administration",
            _ if route.starts_with("/{tenant}/auth/") => "authorization",
            _ => "other",
        };
    };
    match (fhir, method) {
        ("" | "/", "POST") => "batch-transaction",
        ("" | "/", _) => "search-system",
        ("/metadata", _) => "capabilities",
        ("/openapi.json", _) => "openapi",
        ("/_history", _) => "history-system",
        ("/{resource_type}", "GET") | ("/{resource_type}/_search", _) => "search-type",
        ("/{resource_type}", "POST") => "create",
        ("/{resource_type}", "PUT") => "conditional-update",
        ("/{resource_type}", "DELETE") => "conditional-delete",
        ("/{resource_type}/_history", _) => "history-type",
        ("/{resource_type}/{id}", "GET") => "read",
        ("/{resource_type}/{id}", "PUT") => "update",
        ("/{resource_type}/{id}", "PATCH") => "patch",
        ("/{resource_type}/{id}", "DELETE") => "delete",
        ("/{resource_type}/{id}/_history", _) => "history-instance",
        ("/{resource_type}/{id}/_history/{version}", _) => "vread",
        ("/{resource_type}/{id}/{compartment_type}", _) => "search-compartment",
        _ => "other",
    }
}
