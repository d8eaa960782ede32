//! What the server returns is valid FHIR R4: every response body of a varied session is
//! checked against the official R4 definitions (the same schema-based validator the server
//! uses on input, which is built from the official R4 JSON schema and StructureDefinitions).

use axum::http::Method;
use renraku::fhir::validate::Validator;
use std::collections::BTreeSet;

use serde_json::{json, Value};

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

both_backends!(
    responses_are_valid_r4,
    openapi_describes_what_the_capability_statement_lists,
    every_r4_type_and_only_those,
    a_persons_record_of_every_kind,
    the_specifications_examples_load_search_and_round_trip,
);

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

/// The CapabilityStatement lists the 146 resource types of R4 and nothing else; a type that
/// is not R4 (a server vendor's `Bot`, `User`, …) is an unknown type, not a 422 about a
/// JSON pointer.
async fn every_r4_type_and_only_those(backend: Backend) {
    let server = Server::start(backend).await;
    let capability = server.get_with("/ina/fhir/metadata", &[("authorization", "none")]).await.json();
    let types: Vec<&str> = capability["rest"][0]["resource"].as_array().into_iter().flatten().filter_map(|r| r["type"].as_str()).collect();
    assert_eq!(types.len(), 146, "{types:?}");
    for r4 in ["Immunization", "Procedure", "CarePlan", "Goal", "ExplanationOfBenefit", "MedicinalProductPharmaceutical", "VerificationResult"] {
        assert!(types.contains(&r4), "{r4}");
    }
    for vendor in ["AccessPolicy", "Bot", "Project", "User", "ViewDefinition", "ClientApplication"] {
        assert!(!types.contains(&vendor), "{vendor}");
        let posted = server.post(&format!("/ina/fhir/{vendor}"), &json!({ "resourceType": vendor })).await;
        assert!(matches!(posted.status.as_u16(), 400 | 404), "{vendor}: {}", posted.status);
        assert_eq!(posted.json()["resourceType"], "OperationOutcome");
        assert!(!posted.text().contains("pointer"), "{}", posted.text());
    }
    // Elements a vendor added to R4 are unknown elements.
    let patient = json!({ "resourceType": "Patient", "meta": { "project": "p1" } });
    let refused = server.post("/ina/fhir/Patient", &patient).await;
    refused.expect(422);
    assert!(refused.issue_expressions().iter().any(|e| e.contains("meta")), "{}", refused.text());
}

/// Every kind of a person's record that R4 has is written, searched by its patient
/// parameter and read back by the person's care manager (on the team), read across the
/// border by the team's doctor under the agreement, and invisible to a nurse outside both.
async fn a_persons_record_of_every_kind(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let person = json!({ "reference": "Patient/demo-yamada-taro" });
    let text = |t: &str| json!({ "text": t });
    // (type, the parameter that names the person, the resource)
    let records = [
        ("Immunization", "patient", json!({ "resourceType": "Immunization", "status": "completed", "vaccineCode": text("インフルエンザ HA ワクチン"), "patient": person, "occurrenceDateTime": "2026-11-02" })),
        ("Procedure", "subject", json!({ "resourceType": "Procedure", "status": "completed", "code": text("褥瘡処置"), "subject": person })),
        ("DiagnosticReport", "subject", json!({ "resourceType": "DiagnosticReport", "status": "final", "code": text("血液検査"), "subject": person })),
        ("CarePlan", "subject", json!({ "resourceType": "CarePlan", "status": "active", "intent": "plan", "title": "居宅サービス計画", "subject": person })),
        ("Goal", "subject", json!({ "resourceType": "Goal", "lifecycleStatus": "active", "description": text("自宅で入浴できる"), "subject": person })),
        ("MedicationDispense", "subject", json!({ "resourceType": "MedicationDispense", "status": "completed", "medicationCodeableConcept": text("アムロジピン"), "subject": person })),
        ("MedicationAdministration", "subject", json!({ "resourceType": "MedicationAdministration", "status": "completed", "medicationCodeableConcept": text("アムロジピン"), "subject": person, "effectiveDateTime": "2026-11-02T08:00:00+09:00" })),
        ("ServiceRequest", "subject", json!({ "resourceType": "ServiceRequest", "status": "active", "intent": "order", "code": text("訪問看護"), "subject": person })),
        ("Coverage", "beneficiary", json!({ "resourceType": "Coverage", "status": "active", "beneficiary": person, "payor": [{ "reference": "Organization/demo-mm-care-office" }] })),
        ("EpisodeOfCare", "patient", json!({ "resourceType": "EpisodeOfCare", "status": "active", "patient": person })),
        ("FamilyMemberHistory", "patient", json!({ "resourceType": "FamilyMemberHistory", "status": "completed", "patient": person, "relationship": text("長女") })),
        ("Flag", "subject", json!({ "resourceType": "Flag", "status": "active", "code": text("転倒リスク"), "subject": person })),
        ("RiskAssessment", "subject", json!({ "resourceType": "RiskAssessment", "status": "final", "subject": person })),
        ("NutritionOrder", "patient", json!({ "resourceType": "NutritionOrder", "status": "active", "intent": "order", "patient": person, "dateTime": "2026-11-02" })),
    ];
    let as_who = |token: &'static str| [("authorization", format!("Bearer {token}"))];
    for (resource_type, parameter, record) in &records {
        let care_manager = as_who("demo-care-manager");
        let headers: Vec<(&str, &str)> = care_manager.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let created = server.send(axum::http::Method::POST, &format!("/minamiminowa/fhir/{resource_type}"), &headers, record).await;
        created.expect(201);
        let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
        let query = format!("/minamiminowa/fhir/{resource_type}?{parameter}=Patient/demo-yamada-taro");
        let found = server.get_with(&query, &headers).await;
        found.expect(200);
        assert_eq!(found.json()["total"], 1, "{resource_type}?{parameter}");
        server.get_with(&format!("/minamiminowa/fhir/{resource_type}/{id}"), &headers).await.expect(200);
        // The doctor on the team, across the border under the agreement.
        let doctor = [("authorization", "Bearer demo-doctor-ina")];
        let across = server.get_with(&format!("/ina/fhir/{resource_type}?{parameter}=Patient/demo-yamada-taro"), &doctor).await;
        across.expect(200);
        assert_eq!(across.json()["total"], 1, "{resource_type} across the border");
        // A nurse of a municipality without an agreement, on no team: nothing, not even its existence.
        let nurse = [("authorization", "Bearer demo-nurse-minowa")];
        let outside = server.get_with(&format!("/minowa/fhir/{resource_type}?{parameter}=Patient/demo-yamada-taro"), &nurse).await;
        outside.expect(200);
        assert_eq!(outside.json()["total"], 0, "{resource_type} outside");
        server.get_with(&format!("/minowa/fhir/{resource_type}/{id}"), &nurse).await.expect(404);
    }
}

/// Real data nobody here wrote, through the API: the specification's 539 examples of a
/// person's record and of the directory (`tests/data/r4-examples.ndjson`) are `PUT` at their
/// own ids (the engine itself is under test, so the unrestricted test principal), in rounds,
/// so that what an example refers to is there before it. Each loads, or is refused for the
/// one documented reason the set gives: it refers to a resource that is not there (the set
/// holds no `Patient/1`), a 422 naming only reference elements; and the AuditEvents, which
/// only the server writes (405). Each loaded example is then found by `_id`, by its first
/// identifier, by its code and by the person it is about (where its type is searchable by
/// them), and survives a round trip through XML (read
/// as XML, written back as XML, read as JSON: the same resource).
async fn the_specifications_examples_load_search_and_round_trip(backend: Backend) {
    let server = Server::start(backend).await;
    let examples: Vec<Value> = include_str!("../data/r4-examples.ndjson").lines().map(|line| serde_json::from_str(line).expect("an example")).collect();
    let key = |example: &Value| format!("{}/{}", example["resourceType"].as_str().unwrap_or_default(), example["id"].as_str().unwrap_or_default());
    let mut pending: Vec<&Value> = examples.iter().collect();
    let mut loaded: Vec<&Value> = Vec::new();
    let mut refused: Vec<(&Value, crate::support::Reply)> = Vec::new();
    while !pending.is_empty() {
        let before = loaded.len();
        refused.clear();
        for example in std::mem::take(&mut pending) {
            let reply = server.put(&format!("/ina/fhir/{}", key(example)), example).await;
            match reply.status.as_u16() {
                200 | 201 => loaded.push(example),
                _ => refused.push((example, reply)),
            }
        }
        if loaded.len() == before {
            break;
        }
        pending = refused.iter().map(|(example, _)| *example).collect();
    }
    let present: BTreeSet<String> = loaded.iter().map(|example| key(example)).collect();
    let mut unexplained = Vec::new();
    for (example, reply) in &refused {
        let mut references = Vec::new();
        local_references(example, &mut references);
        let absent: Vec<&String> = references.iter().filter(|r| !present.contains(r.split("/_history").next().unwrap_or_default())).collect();
        let expressions = reply.issue_expressions();
        let dangling = reply.status.as_u16() == 422 && !absent.is_empty() && !expressions.is_empty() && expressions.iter().all(|e| e.ends_with(".reference"));
        let trail = example["resourceType"] == "AuditEvent" && reply.status.as_u16() == 405;
        if !(dangling || trail) {
            unexplained.push(format!("{}: {} {}", key(example), reply.status, reply.text()));
        }
    }
    assert!(unexplained.is_empty(), "{} refused for another reason:\n{}", unexplained.len(), unexplained.join("\n"));
    assert!(loaded.len() > examples.len() / 2, "{} of {} loaded", loaded.len(), examples.len());

    // What each type is searchable by, as the CapabilityStatement says.
    let statement = server.get("/ina/fhir/metadata").await.json();
    let searchable = |resource_type: &str, name: &str| {
        statement["rest"][0]["resource"].as_array().into_iter().flatten().filter(|r| r["type"] == resource_type).any(|r| {
            r["searchParam"].as_array().into_iter().flatten().any(|p| p["name"] == name)
        })
    };
    let mut problems = Vec::new();
    let mut searched = 0;
    for example in &loaded {
        let (resource_type, id) = (example["resourceType"].as_str().unwrap_or_default(), example["id"].as_str().unwrap_or_default());
        // By the common parameters a type has, with the example's own values: its code, the
        // person it is about.
        let code = example.pointer("/code/coding/0").and_then(|c| Some(format!("{}|{}", c["system"].as_str()?, c["code"].as_str()?)));
        let mut queries: Vec<(&str, String)> = Vec::new();
        if let Some(code) = code {
            queries.push(("code", code));
        }
        for name in ["subject", "patient"] {
            if let Some(reference) = example.pointer(&format!("/{name}/reference")).and_then(Value::as_str).filter(|r| r.starts_with("Patient/")) {
                queries.push((name, reference.to_owned()));
            }
        }
        for (name, value) in queries.into_iter().filter(|(name, _)| searchable(resource_type, name)) {
            let query = format!("/ina/fhir/{resource_type}?{name}={}&_count=100", encode(&value));
            let bundle = server.get(&query).await.json();
            let ids: Vec<&str> = bundle["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["id"].as_str()).collect();
            if !ids.contains(&id) {
                problems.push(format!("{query}: {id} not among {ids:?}"));
            }
            searched += 1;
        }
        let found = server.get(&format!("/ina/fhir/{resource_type}?_id={id}")).await.json();
        if found["total"] != json!(1) {
            problems.push(format!("{resource_type}?_id={id}: total {}", found["total"]));
        }
        let identifier = example.pointer("/identifier/0").or_else(|| example.get("identifier").filter(|i| i.is_object()));
        if let (Some(system), Some(value)) = (identifier.and_then(|i| i["system"].as_str()), identifier.and_then(|i| i["value"].as_str())) {
            let query = format!("/ina/fhir/{resource_type}?identifier={}|{}", encode(system), encode(value));
            let bundle = server.get(&query).await.json();
            let ids: Vec<&str> = bundle["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["id"].as_str()).collect();
            if !ids.contains(&id) {
                problems.push(format!("{query}: {id} not among {ids:?}"));
            }
        }
        let before = server.get(&format!("/ina/fhir/{resource_type}/{id}")).await.json();
        let xml = server.get_with(&format!("/ina/fhir/{resource_type}/{id}"), &[("accept", "application/fhir+xml")]).await;
        let written = server
            .request(Method::PUT, &format!("/ina/fhir/{resource_type}/{id}"), &[("content-type", "application/fhir+xml")], Some(xml.body.clone()))
            .await;
        if written.status.as_u16() != 200 {
            problems.push(format!("{resource_type}/{id} as XML: {} {}", written.status, written.text()));
            continue;
        }
        let after = server.get(&format!("/ina/fhir/{resource_type}/{id}")).await.json();
        let mut changed = Vec::new();
        differences(&without_meta(&before), &without_meta(&after), "", &mut changed);
        if !changed.is_empty() {
            problems.push(format!("{resource_type}/{id} changed through XML: {}", changed.join("; ")));
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    assert!(searched > 100, "{searched} searches by code, subject or patient");
}

/// The local references (`Type/id`, `Type/id/_history/v`) anywhere in `value`.
fn local_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (name, child) in object {
                match (name.as_str(), child.as_str()) {
                    ("reference", Some(reference)) => {
                        let mut parts = reference.split('/');
                        if parts.next().is_some_and(|t| t.starts_with(|c: char| c.is_ascii_uppercase())) && parts.next().is_some() {
                            out.push(reference.to_owned());
                        }
                    }
                    _ => local_references(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| local_references(item, out)),
        _ => {}
    }
}

fn without_meta(resource: &Value) -> Value {
    let mut copy = resource.clone();
    if let Some(meta) = copy.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
    }
    copy
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Where `a` and `b` differ, as JSON pointers with both values.
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                differences(x.get(key).unwrap_or(&Value::Null), y.get(key).unwrap_or(&Value::Null), &format!("{at}/{key}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (index, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, &format!("{at}/{index}"), out);
            }
        }
        (p, q) if p != q => out.push(format!("{at}: {} → {}", shorten(p), shorten(q))),
        _ => {}
    }
}

fn shorten(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 { format!("{}…", text.chars().take(80).collect::<String>()) } else { text }
}
