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

both_backends!(responses_are_valid_r4, openapi_describes_what_the_capability_statement_lists);

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

/// `[base]/openapi.json` is generated from the CapabilityStatement: every type and
/// interaction it lists is a path and method (and nothing it does not list), every search
/// parameter a query parameter, and every operation documents its errors as
/// OperationOutcomes; the administration API is described at the public origin.
async fn openapi_describes_what_the_capability_statement_lists(backend: Backend) {
    let server = Server::start(backend).await;
    let capability = server.get_with("/ina/fhir/metadata", &[("authorization", "none")]).await.json();
    let document = server.get_with("/ina/fhir/openapi.json", &[("authorization", "none")]).await;
    document.expect(200);
    let document = document.json();
    assert_eq!(document["openapi"], "3.0.3");
    assert_eq!(document["servers"][0]["url"], format!("{}/ina/fhir", crate::support::BASE));
    let paths = document["paths"].as_object().expect("paths");
    let resources = capability["rest"][0]["resource"].as_array().expect("resources");
    assert!(resources.len() > 100);
    // (interaction code, path under the type, method)
    let table = [
        ("search-type", "", "get"),
        ("create", "", "post"),
        ("read", "/{id}", "get"),
        ("update", "/{id}", "put"),
        ("patch", "/{id}", "patch"),
        ("delete", "/{id}", "delete"),
        ("vread", "/{id}/_history/{version}", "get"),
        ("history-instance", "/{id}/_history", "get"),
        ("history-type", "/_history", "get"),
    ];
    for resource in resources {
        let resource_type = resource["type"].as_str().unwrap_or_default();
        let listed = |code: &str| resource["interaction"].as_array().is_some_and(|all| all.iter().any(|i| i["code"] == code));
        for (code, suffix, method) in table {
            let described = paths.get(&format!("/{resource_type}{suffix}")).is_some_and(|item| item.get(method).is_some());
            assert_eq!(described, listed(code), "{resource_type} {code}");
        }
        if listed("search-type") {
            let names: Vec<&str> = paths[&format!("/{resource_type}")]["get"]["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str())
                .collect();
            for parameter in resource["searchParam"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap_or_default();
                assert!(names.contains(&name), "{resource_type}?{name}");
            }
        }
    }
    for (path, item) in paths {
        for (method, operation) in item.as_object().into_iter().flatten().filter(|(m, _)| *m != "servers") {
            let responses = operation["responses"].as_object().expect("responses");
            for status in ["400", "401", "403", "404", "500"] {
                assert_eq!(responses[status]["$ref"], "#/components/responses/Error", "{method} {path} {status}");
            }
        }
    }
    assert!(paths["/AuditEvent"].get("post").is_none(), "the trail is read-only");
    assert_eq!(paths["/admin/clients"]["servers"][0]["url"], crate::support::BASE);
    assert!(paths["/admin/clients"].get("post").is_some());
}
