//! Every non-2xx answer is an OperationOutcome: unknown routes, wrong methods, media types,
//! oversize and malformed bodies.

use axum::http::Method;

use crate::both_backends;

/// Method, path, headers, body, expected status.
type Case<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>, Option<Vec<u8>>, u16);
use crate::support::{Backend, Server};

async fn every_error_is_an_operation_outcome(backend: Backend) {
    let server = Server::start_with(backend, |config| config.body_limit_bytes = 2048).await;
    let big = format!(r#"{{"resourceType":"Patient","name":[{{"family":"{}"}}]}}"#, "あ".repeat(2000));
    // (method, path, headers, body, status)
    let cases: Vec<Case> = vec![
        (Method::GET, "/no/such/route", vec![], None, 404),
        (Method::GET, "/ina/fhir/Patient/x/y/z", vec![], None, 404),
        (Method::GET, "/ina/fhir/Patient/unknown-id", vec![], None, 404),
        (Method::DELETE, "/ina/fhir/metadata", vec![], None, 405),
        (Method::PATCH, "/ina/fhir/Patient", vec![], None, 405),
        (Method::POST, "/ina/fhir/Patient", vec![("content-type", "text/plain")], Some(b"hello".to_vec()), 415),
        (Method::POST, "/ina/fhir/Patient", vec![("content-type", "application/fhir+json")], Some(big.into_bytes()), 413),
        (Method::POST, "/ina/fhir/Patient", vec![("content-type", "application/fhir+json")], Some(b"{\"resourceType\":".to_vec()), 400),
        (Method::POST, "/ina/fhir/Patient", vec![("content-type", "application/fhir+json")], Some(b"[1,2]".to_vec()), 400),
        (Method::POST, "/ina/fhir/Patient", vec![("content-type", "application/fhir+json")], Some(Vec::new()), 400),
        (Method::GET, "/ina/fhir/Patient", vec![("accept", "image/png")], None, 406),
        (Method::GET, "/ina/fhir/Patient?_format=yaml", vec![], None, 406),
        (Method::GET, "/ina/fhir/Patient?unknown-param=1", vec![], None, 400),
        (Method::GET, "/ina/fhir/Patient?_count=-1", vec![], None, 400),
        (Method::GET, "/ina/fhir/Patient/x/_history/not-a-number", vec![], None, 404),
        (Method::PUT, "/ina/fhir/Patient/x", vec![("content-type", "application/fhir+json"), ("if-match", "garbage")], Some(b"{}".to_vec()), 400),
    ];
    for (method, path, headers, body, status) in cases {
        let reply = server.request(method.clone(), path, &headers, body).await;
        assert_eq!(reply.status.as_u16(), status, "{method} {path}: {}", reply.text());
        let outcome = reply.json();
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{method} {path}");
        assert!(outcome["issue"][0]["diagnostics"].as_str().is_some_and(|d| !d.is_empty()));
        let request_id = reply.header("x-request-id").expect("request id header");
        assert_eq!(outcome["id"], request_id.as_str(), "the outcome quotes the request id");
        assert!(reply.header("content-type").unwrap_or_default().starts_with("application/fhir+json"));
    }
}

async fn healthz_answers_when_ready(backend: Backend) {
    let server = Server::start(backend).await;
    let reply = server.get("/healthz").await;
    reply.expect(200);
}

both_backends!(every_error_is_an_operation_outcome, healthz_answers_when_ready);
