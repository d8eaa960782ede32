//! What the server returns is valid FHIR R4: every response body of a varied session is
//! checked against the official R4 definitions (the same schema-based validator the server
//! uses on input, which is built from the official R4 JSON schema and StructureDefinitions).

use axum::http::Method;
use renraku::fhir::validate::Validator;
use serde_json::json;

use crate::both_backends;
use crate::support::{Backend, Server};

async fn responses_are_valid_r4(backend: Backend) {
    let server = Server::start(backend).await;
    let validator = Validator::load().expect("validator");
    let id = server.create("ina", &json!({ "resourceType": "Patient", "name": [{ "family": "山田" }], "identifier": [{ "system": "urn:x", "value": "1" }] })).await;
    server.put(&format!("/ina/fhir/Patient/{id}"), &json!({ "resourceType": "Patient", "id": id, "active": true })).await.expect(200);
    let observation = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "t" }, "subject": { "reference": format!("Patient/{id}") } });
    server.create("ina", &observation).await;
    let transaction = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "resource": { "resourceType": "Patient" }, "request": { "method": "POST", "url": "Patient" } },
        { "request": { "method": "GET", "url": "Patient?_count=1" } } ] });
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "resource": { "resourceType": "Patient", "gender": "robot" }, "request": { "method": "POST", "url": "Patient" } } ] });
    let replies = vec![
        server.get("/ina/fhir/metadata").await,
        server.get(&format!("/ina/fhir/Patient/{id}")).await,
        server.get(&format!("/ina/fhir/Patient/{id}/_history/1")).await,
        server.get(&format!("/ina/fhir/Patient/{id}?_summary=true")).await,
        server.get(&format!("/ina/fhir/Patient/{id}/_history")).await,
        server.get("/ina/fhir/_history?_count=1").await,
        server.get("/ina/fhir/Patient?_count=1").await,
        server.get("/ina/fhir/Patient?_summary=count").await,
        server.get("/ina/fhir/Patient?identifier=urn:x|1&_elements=name").await,
        server.post("/ina/fhir", &transaction).await,
        server.post("/ina/fhir", &batch).await,
        server.post("/ina/fhir/Patient", &json!({ "resourceType": "Patient", "gender": "robot" })).await,
        server.get("/ina/fhir/Patient/missing").await,
        server.request(Method::DELETE, "/ina/fhir/metadata", &[], None).await,
        server.get(&format!("/ina/fhir/Patient/{id}/$access-report")).await,
    ];
    // The audit trail those requests left (every kind of event shape: reads, searches,
    // writes, a transaction, failures) is valid R4 too.
    let auditor = renraku::identity::Actor::MunicipalAuditor { tenant: "ina".into(), user: "auditor".into() };
    let token = server.token("ina", auditor, "user/AuditEvent.rs", None).await;
    let trail = server.get_with("/ina/fhir/AuditEvent?_count=100", &[("authorization", &format!("Bearer {token}"))]).await;
    assert!(trail.json()["entry"].as_array().is_some_and(|entries| entries.len() >= 15), "{}", trail.text());
    let mut replies = replies;
    replies.push(trail);
    for reply in replies {
        let body = reply.json();
        if let Err(issues) = validator.validate(body.clone()) {
            panic!("invalid R4 response {body}\n{issues:#?}");
        }
    }
}

both_backends!(responses_are_valid_r4);

/// The conformance resources we publish (code systems, the agreement and patient profiles)
/// are themselves valid R4 resources.
#[test]
fn published_conformance_resources_are_valid_r4() {
    let validator = Validator::load().expect("validator");
    let mut checked = 0;
    for directory in ["conformance", "profiles/structure-definitions"] {
        for entry in std::fs::read_dir(directory).expect("directory") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let resource: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
            if resource["resourceType"] == "Bundle" {
                continue;
            }
            if let Err(issues) = validator.validate(resource) {
                panic!("{} is not valid R4: {issues:?}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} files checked");
}
