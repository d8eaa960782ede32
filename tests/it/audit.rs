//! The audit trail: every interaction leaves exactly its AuditEvent; denials are recorded as
//! denials; data crossing a municipal border leaves a disclosure record; the trail is
//! append-only through every API and tampering in the database is found by verification;
//! a write that crashes before its commit leaves neither data nor event; auditors read their
//! municipality's trail and nothing else; the access report; retention pruning.

use axum::http::Method;
use renraku::identity::Actor;
use renraku::runtime::Failpoint;
use serde_json::{json, Value};

use crate::both_backends;
use crate::policy::{agreement, care_team, consent, organization, patient, practitioner, practitioner_resources, server_admin, municipal_admin, Caller};
use std::sync::Arc;

use crate::support::{Backend, Reply, Server, Who, OFFICE};

const INA: &str = "202096";
const MINAMIMINOWA: &str = "203858";
const CHAIN_EXTENSION: &str = "https://renraku.example.jp/fhir/StructureDefinition/audit-chain";

async fn auditor(server: &Server, tenant: &str) -> Caller {
    let actor = Actor::MunicipalAuditor { tenant: tenant.into(), user: format!("auditor-{tenant}") };
    Caller { tenant: tenant.into(), token: server.token(tenant, actor, "user/AuditEvent.rs", None).await }
}

fn request_id(reply: &Reply) -> String {
    reply.header("x-request-id").expect("every reply has a request id")
}

/// The AuditEvents of `tenant`'s chain that carry `request_id`, found the way an auditor
/// would (`entity:identifier`), oldest first.
async fn events_of(server: &Server, tenant: &str, request_id: &str) -> Vec<Value> {
    let reply = auditor(server, tenant).await.get(server, &format!("AuditEvent?entity:identifier={request_id}&_sort=date&_count=100")).await;
    reply.expect(200);
    reply.json()["entry"].as_array().cloned().unwrap_or_default().into_iter().map(|e| e["resource"].clone()).collect()
}

fn subtype(event: &Value) -> String {
    event["subtype"][0]["code"].as_str().unwrap_or_default().to_owned()
}

fn entity_references(event: &Value) -> Vec<String> {
    event["entity"].as_array().into_iter().flatten().filter_map(|e| e["what"]["reference"].as_str().map(str::to_owned)).collect()
}

fn chain_position(event: &Value) -> (String, i64) {
    let parts = event["extension"].as_array().into_iter().flatten().find(|e| e["url"] == CHAIN_EXTENSION).cloned().unwrap_or_default();
    let part = |name: &str| parts["extension"].as_array().into_iter().flatten().find(|p| p["url"] == name).cloned().unwrap_or_default();
    (part("chain")["valueString"].as_str().unwrap_or_default().to_owned(), part("sequence")["valueInteger"].as_i64().unwrap_or_default())
}

/// One interaction and what its single event must say.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    content_type: &'static str,
    subtype: &'static str,
    action: &'static str,
    /// References the event must name (resources with their version, the Patient).
    names: Vec<String>,
}

fn check(case: &Case, events: &[Value]) {
    assert_eq!(events.len(), 1, "{}: exactly one event: {events:#?}", case.name);
    let event = &events[0];
    assert_eq!(subtype(event), case.subtype, "{}", case.name);
    assert_eq!(event["action"], case.action, "{}", case.name);
    assert_eq!(event["outcome"], "0", "{}: {}", case.name, event["outcomeDesc"]);
    assert_eq!(event["source"]["site"], "ina", "{}", case.name);
    let named = entity_references(event);
    for expected in &case.names {
        assert!(named.contains(expected), "{}: {expected} not among {named:?}", case.name);
    }
    let recorded = event["recorded"].as_str().unwrap_or_default();
    assert!(recorded.ends_with('Z') && recorded.len() == 27, "{}: recorded in UTC from the server clock: {recorded}", case.name);
}

async fn every_interaction_leaves_its_event(backend: Backend) {
    let server = Server::start(backend).await;
    server.put("/ina/fhir/Organization/org-a", &organization("org-a", "事業所A")).await.expect(201);
    server.put("/ina/fhir/Patient/p1", &patient("p1", "山田", "org-a")).await.expect(201);
    let observation = json!({
        "resourceType": "Observation", "id": "o1", "status": "final", "code": { "text": "体温" },
        "subject": { "reference": "Patient/p1" }, "valueQuantity": { "value": 36.5, "unit": "Cel" }
    });
    server.put("/ina/fhir/Observation/o1", &observation).await.expect(201);
    // An update that changes something (an unchanged one keeps the version).
    let mut changed = observation.clone();
    changed["valueQuantity"]["value"] = json!(36.8);
    let patch = json!([{ "op": "replace", "path": "/status", "value": "amended" }]);
    let transaction = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{
            "fullUrl": "urn:uuid:9f0c6d4e-0000-4000-8000-000000000001",
            "resource": { "resourceType": "Observation", "status": "final", "code": { "text": "脈拍" }, "subject": { "reference": "Patient/p1" } },
            "request": { "method": "POST", "url": "Observation" }
        }]
    });
    let cases = vec![
        Case { name: "read", method: Method::GET, path: "/ina/fhir/Patient/p1".into(), body: None, content_type: "", subtype: "read", action: "R", names: vec!["Patient/p1/_history/1".into(), "Patient/p1".into()] },
        Case { name: "vread", method: Method::GET, path: "/ina/fhir/Observation/o1/_history/1".into(), body: None, content_type: "", subtype: "vread", action: "R", names: vec!["Observation/o1/_history/1".into(), "Patient/p1".into()] },
        Case { name: "search", method: Method::GET, path: "/ina/fhir/Observation?subject=Patient/p1".into(), body: None, content_type: "", subtype: "search-type", action: "R", names: vec!["Observation/o1/_history/1".into(), "Patient/p1".into()] },
        Case { name: "search with include", method: Method::GET, path: "/ina/fhir/Observation?_include=Observation:subject".into(), body: None, content_type: "", subtype: "search-type", action: "R", names: vec!["Observation/o1/_history/1".into(), "Patient/p1/_history/1".into()] },
        Case { name: "compartment search", method: Method::GET, path: "/ina/fhir/Patient/p1/Observation".into(), body: None, content_type: "", subtype: "search-type", action: "R", names: vec!["Observation/o1/_history/1".into(), "Patient/p1".into()] },
        Case { name: "$everything", method: Method::GET, path: "/ina/fhir/Patient/p1/$everything".into(), body: None, content_type: "", subtype: "$everything", action: "R", names: vec!["Observation/o1/_history/1".into(), "Patient/p1".into()] },
        Case { name: "system search", method: Method::GET, path: "/ina/fhir?_type=Patient".into(), body: None, content_type: "", subtype: "search-system", action: "R", names: vec!["Patient/p1".into()] },
        Case { name: "history-instance", method: Method::GET, path: "/ina/fhir/Patient/p1/_history".into(), body: None, content_type: "", subtype: "history-instance", action: "R", names: vec!["Patient/p1/_history/1".into()] },
        Case { name: "history-type", method: Method::GET, path: "/ina/fhir/Observation/_history".into(), body: None, content_type: "", subtype: "history-type", action: "R", names: vec!["Observation/o1/_history/1".into(), "Patient/p1".into()] },
        Case { name: "history-system", method: Method::GET, path: "/ina/fhir/_history".into(), body: None, content_type: "", subtype: "history-system", action: "R", names: vec!["Patient/p1".into()] },
        Case { name: "create", method: Method::POST, path: "/ina/fhir/Observation".into(), body: Some(json!({ "resourceType": "Observation", "status": "final", "code": { "text": "血圧" }, "subject": { "reference": "Patient/p1" } })), content_type: "application/fhir+json", subtype: "create", action: "C", names: vec!["Patient/p1".into()] },
        Case { name: "update", method: Method::PUT, path: "/ina/fhir/Observation/o1".into(), body: Some(changed), content_type: "application/fhir+json", subtype: "update", action: "U", names: vec!["Observation/o1/_history/2".into(), "Patient/p1".into()] },
        Case { name: "patch", method: Method::PATCH, path: "/ina/fhir/Observation/o1".into(), body: Some(patch), content_type: "application/json-patch+json", subtype: "patch", action: "U", names: vec!["Observation/o1/_history/3".into(), "Patient/p1".into()] },
        Case { name: "conditional update", method: Method::PUT, path: "/ina/fhir/Observation?_id=o1".into(), body: Some(observation.clone()), content_type: "application/fhir+json", subtype: "update", action: "U", names: vec!["Observation/o1/_history/4".into()] },
        Case { name: "delete", method: Method::DELETE, path: "/ina/fhir/Observation/o1".into(), body: None, content_type: "", subtype: "delete", action: "D", names: vec!["Observation/o1".into(), "Patient/p1".into()] },
    ];
    for case in &cases {
        let headers: Vec<(&str, &str)> = if case.content_type.is_empty() { vec![] } else { vec![("content-type", case.content_type)] };
        let body = case.body.as_ref().map(|b| serde_json::to_vec(b).expect("json"));
        let reply = server.request(case.method.clone(), &case.path, &headers, body).await;
        assert!(reply.status.is_success(), "{}: {} {}", case.name, reply.status, reply.text());
        check(case, &events_of(&server, "ina", &request_id(&reply)).await);
    }

    // A transaction: one event per entry plus one for the Bundle, committed with the data.
    let reply = server.post("/ina/fhir", &transaction).await;
    reply.expect(200);
    let events = events_of(&server, "ina", &request_id(&reply)).await;
    let mut subtypes: Vec<String> = events.iter().map(subtype).collect();
    subtypes.sort();
    assert_eq!(subtypes, vec!["create", "transaction"], "{events:#?}");
    let created = events.iter().find(|e| subtype(e) == "create").expect("entry event");
    assert!(entity_references(created).contains(&"Patient/p1".to_owned()));
    // A batch: each entry is its own interaction, and the Bundle has its event.
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Patient/p1" } },
        { "request": { "method": "GET", "url": "Observation?subject=Patient/p1" } }
    ]});
    let reply = server.post("/ina/fhir", &batch).await;
    reply.expect(200);
    let mut subtypes: Vec<String> = events_of(&server, "ina", &request_id(&reply)).await.iter().map(subtype).collect();
    subtypes.sort();
    assert_eq!(subtypes, vec!["batch", "read", "search-type"]);

    // The events form one gap-free chain, and the trail verifies.
    let all = auditor(&server, "ina").await.get(&server, "AuditEvent?_count=1000").await.json();
    let mut sequences: Vec<i64> = all["entry"].as_array().into_iter().flatten().map(|e| chain_position(&e["resource"]).1).collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
    let reports = server.fhir().verify_audit_trail(None).await.expect("verify");
    assert!(reports.iter().all(|r| r.broken.is_none()), "{reports:?}");
}

async fn denials_and_failures_are_recorded(backend: Backend) {
    let server = Server::start(backend).await;
    server.put("/ina/fhir/Organization/org-a", &organization("org-a", "事業所A")).await.expect(201);
    server.put("/ina/fhir/Patient/p1", &patient("p1", "山田", "org-a")).await.expect(201);
    let check = |events: Vec<Value>, needle: &str| {
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(events[0]["outcome"], "4", "{}", events[0]);
        let description = events[0]["outcomeDesc"].as_str().unwrap_or_default();
        assert!(description.contains(needle), "{description}");
    };
    // Hidden by the access rule: the practitioner hears 404; the trail records the attempt.
    let stranger = practitioner(&server, "ina", "pro-x", "org-x", "user/*.cruds").await;
    let reply = stranger.get(&server, "Patient/p1").await;
    reply.expect(404);
    let events = events_of(&server, "ina", &request_id(&reply)).await;
    assert!(entity_references(&events[0]).contains(&"Patient/p1".to_owned()), "the attempt names its target");
    check(events, "404");
    // Refused by the token's scopes.
    let narrow = practitioner(&server, "ina", "pro-y", "org-a", "user/Observation.rs").await;
    let reply = narrow.get(&server, "Patient/p1").await;
    reply.expect(403);
    check(events_of(&server, "ina", &request_id(&reply)).await, "denied (403)");
    // No valid token at all.
    let reply = server.get_with("/ina/fhir/Patient/p1", &[("authorization", "Bearer not-a-token")]).await;
    reply.expect(401);
    let events = events_of(&server, "ina", &request_id(&reply)).await;
    assert_eq!(subtype(&events[0]), "request-refused");
    check(events, "denied (401)");
    let reply = server.get_with("/ina/fhir/Patient/p1", &[("authorization", "none")]).await;
    reply.expect(401);
    check(events_of(&server, "ina", &request_id(&reply)).await, "denied (401)");
    // Invalid content: a failed write is recorded, and nothing was written.
    let reply = server.post("/ina/fhir/Patient", &json!({ "resourceType": "Patient", "gender": "robot" })).await;
    reply.expect(422);
    let events = events_of(&server, "ina", &request_id(&reply)).await;
    assert_eq!(subtype(&events[0]), "create");
    check(events, "422");
    // The client's declared purpose of use and address are kept.
    let reply = server.get_with("/ina/fhir/Patient/p1", &[("x-purpose-of-use", "TREAT")]).await;
    reply.expect(200);
    let events = events_of(&server, "ina", &request_id(&reply)).await;
    assert_eq!(events[0]["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    server.get_with("/ina/fhir/Patient/p1", &[("x-purpose-of-use", "treat me")]).await.expect(400);
}

async fn the_trail_cannot_be_changed_through_any_api(backend: Backend) {
    let server = Server::start(backend).await;
    server.get("/ina/fhir/Patient?name=x").await.expect(200);
    let auditor = auditor(&server, "ina").await;
    let event = auditor.get(&server, "AuditEvent?_count=1").await.json()["entry"][0]["resource"].clone();
    let id = event["id"].as_str().expect("an event").to_owned();
    let admin = server_admin(&server, "ina").await;
    let mut attempts: Vec<(String, Reply)> = Vec::new();
    for (who, token) in [("test suite", None), ("auditor", Some(auditor.token.clone())), ("server administrator", Some(admin.token.clone()))] {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/fhir+json")];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer.as_str()));
        }
        let body = serde_json::to_vec(&event).expect("json");
        let path = format!("/ina/fhir/AuditEvent/{id}");
        attempts.push((format!("{who} PUT"), server.request(Method::PUT, &path, &headers, Some(body.clone())).await));
        attempts.push((format!("{who} POST"), server.request(Method::POST, "/ina/fhir/AuditEvent", &headers, Some(body.clone())).await));
        attempts.push((format!("{who} DELETE"), server.request(Method::DELETE, &path, &headers, None).await));
        attempts.push((format!("{who} conditional PUT"), server.request(Method::PUT, "/ina/fhir/AuditEvent?_id=x", &headers, Some(body.clone())).await));
        attempts.push((format!("{who} conditional DELETE"), server.request(Method::DELETE, &format!("/ina/fhir/AuditEvent?_id={id}"), &headers, None).await));
        let mut patch_headers = headers.clone();
        patch_headers[0] = ("content-type", "application/json-patch+json");
        let patch = serde_json::to_vec(&json!([{ "op": "replace", "path": "/outcome", "value": "0" }])).expect("json");
        attempts.push((format!("{who} PATCH"), server.request(Method::PATCH, &path, &patch_headers, Some(patch)).await));
        let transaction = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [{ "request": { "method": "DELETE", "url": format!("AuditEvent/{id}") } }] });
        attempts.push((format!("{who} transaction"), server.request(Method::POST, "/ina/fhir", &headers, Some(serde_json::to_vec(&transaction).expect("json"))).await));
    }
    for (what, reply) in &attempts {
        assert_eq!(reply.status.as_u16(), 405, "{what}: {}", reply.text());
        assert_eq!(reply.json()["resourceType"], "OperationOutcome", "{what}");
    }
    // A batch entry gets the same answer, and the rest of the batch goes on.
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "DELETE", "url": format!("AuditEvent/{id}") } },
        { "request": { "method": "GET", "url": "Patient?name=x" } }
    ]});
    let reply = server.post("/ina/fhir", &batch).await;
    assert_eq!(reply.json()["entry"][0]["response"]["status"], "405 Method Not Allowed");
    assert_eq!(reply.json()["entry"][1]["response"]["status"], "200 OK");
    // The event is exactly as it was, and the trail still verifies.
    let after = auditor.get(&server, &format!("AuditEvent/{id}")).await;
    after.expect(200);
    assert_eq!(after.json(), event);
    let reports = server.fhir().verify_audit_trail(None).await.expect("verify");
    assert!(reports.iter().all(|r| r.broken.is_none()), "{reports:?}");
    // The CapabilityStatement says so.
    let metadata = server.get("/ina/fhir/metadata").await.json();
    let audit = metadata["rest"][0]["resource"].as_array().into_iter().flatten().find(|r| r["type"] == "AuditEvent").cloned().unwrap_or_default();
    let codes: Vec<&str> = audit["interaction"].as_array().into_iter().flatten().filter_map(|i| i["code"].as_str()).collect();
    assert!(!codes.iter().any(|c| ["create", "update", "patch", "delete"].contains(c)), "{codes:?}");
}

/// Runs SQL against the gateway's database, as someone with direct access would.
async fn tamper(server: &Server, sql: &str) {
    let mut connection = server.database_directly().await;
    let done = sqlx::query(sql).execute(&mut connection).await.expect("tampering statement");
    assert!(done.rows_affected() >= 1, "{sql} changed nothing");
}

async fn broken_link(server: &Server) -> Option<(String, i64, Option<String>, String)> {
    let reports = server.fhir().verify_audit_trail(None).await.expect("verify runs");
    reports.into_iter().find_map(|r| r.broken).map(|b| (b.chain, b.seq, b.event_id, b.problem))
}

async fn tampering_in_the_database_is_detected(backend: Backend) {
    let server = Server::start(backend).await;
    for name in ["a", "b", "c", "d", "e"] {
        server.get(&format!("/ina/fhir/Patient?name={name}")).await.expect(200);
    }
    assert_eq!(broken_link(&server).await, None);
    let events = auditor(&server, "ina").await.get(&server, "AuditEvent?_count=100").await.json();
    let by_sequence = |seq: i64| -> String {
        events["entry"].as_array().into_iter().flatten().map(|e| &e["resource"]).find(|r| chain_position(r) == ("ina".to_owned(), seq)).map(|r| r["id"].as_str().unwrap_or_default().to_owned()).expect("event at sequence")
    };
    let third = by_sequence(3);
    let restore = sqlx::query_scalar::<_, String>("SELECT content FROM resources WHERE resource_type = 'AuditEvent' AND id = $1");
    let original: String = {
        let mut connection = server.database_directly().await;
        restore.bind(&third).fetch_one(&mut connection).await.expect("content")
    };
    // An altered outcome.
    tamper(&server, &format!("UPDATE resources SET content = REPLACE(content, '\"outcome\":\"0\"', '\"outcome\":\"4\"') WHERE resource_type = 'AuditEvent' AND id = '{third}'")).await;
    let found = broken_link(&server).await.expect("alteration found");
    assert_eq!((found.0.as_str(), found.1, found.2.as_deref()), ("ina", 3, Some(third.as_str())), "{}", found.3);
    assert!(found.3.contains("altered"), "{}", found.3);
    // Put back, it verifies again.
    let escaped = original.replace('\'', "''");
    tamper(&server, &format!("UPDATE resources SET content = '{escaped}' WHERE resource_type = 'AuditEvent' AND id = '{third}'")).await;
    assert_eq!(broken_link(&server).await, None);
    // The journal's link itself altered (its digest: the event no longer matches it).
    tamper(&server, "UPDATE audit_log SET digest = 'x' || digest WHERE chain = 'ina' AND seq = 4").await;
    let found = broken_link(&server).await.expect("journal alteration found");
    assert_eq!(found.1, 4, "{}", found.3);
    assert!(found.3.contains("digest"), "{}", found.3);
    tamper(&server, "UPDATE audit_log SET digest = SUBSTR(digest, 2) WHERE chain = 'ina' AND seq = 4").await;
    assert_eq!(broken_link(&server).await, None);
    // An event deleted outright (its link and its rows).
    let second = by_sequence(2);
    tamper(&server, &format!("DELETE FROM resources WHERE resource_type = 'AuditEvent' AND id = '{second}'")).await;
    let found = broken_link(&server).await.expect("deletion found");
    assert_eq!((found.1, found.2.as_deref()), (2, Some(second.as_str())), "{}", found.3);
    tamper(&server, "DELETE FROM audit_log WHERE chain = 'ina' AND seq = 2").await;
    let found = broken_link(&server).await.expect("deleted link found");
    assert_eq!(found.1, 2, "{}", found.3);
    assert!(found.3.contains("missing"), "{}", found.3);
    // The command line reports the same and fails.
    let reports = server.fhir().verify_audit_trail(Some("ina")).await.expect("verify");
    assert_eq!(reports.len(), 1);
    assert!(reports[0].broken.as_ref().is_some_and(|b| b.to_string().contains("sequence 2")));
}

async fn a_crashed_write_leaves_neither_data_nor_event(backend: Backend) {
    let server = Server::start(backend).await;
    let body = json!({ "resourceType": "Patient", "identifier": [{ "system": "urn:test", "value": "crash-1" }] });
    server.fhir().arm_failpoint(Failpoint::CrashBeforeCommit);
    let reply = server.post("/ina/fhir/Patient", &body).await;
    reply.expect(500);
    assert_eq!(reply.json()["resourceType"], "OperationOutcome");
    let found = server.get("/ina/fhir/Patient?identifier=urn:test|crash-1").await.json();
    assert_eq!(found["total"], 0, "no data: {found}");
    assert!(events_of(&server, "ina", &request_id(&reply)).await.is_empty(), "no event");
    assert_eq!(broken_link(&server).await, None);
    // The next write commits with its event, and the chain has no gap.
    let reply = server.post("/ina/fhir/Patient", &body).await;
    reply.expect(201);
    assert_eq!(events_of(&server, "ina", &request_id(&reply)).await.len(), 1);
    assert_eq!(broken_link(&server).await, None);

    // A read whose event cannot be stored fails, and shows nothing.
    let id = reply.json()["id"].as_str().unwrap_or_default().to_owned();
    server.fhir().arm_failpoint(Failpoint::RecordEvents);
    let read = server.get(&format!("/ina/fhir/Patient/{id}")).await;
    read.expect(500);
    assert!(!read.text().contains("crash-1"), "{}", read.text());
    server.get(&format!("/ina/fhir/Patient/{id}")).await.expect(200);
    // Nor does one whose response was made while its events were being committed, when the
    // commit fails: the response is held back and an OperationOutcome answers instead.
    for path in [format!("/ina/fhir/Patient/{id}"), "/ina/fhir/Patient?identifier=urn:test|crash-1".to_owned()] {
        server.fhir().arm_failpoint(Failpoint::ReadEventsNotCommitted);
        let read = server.get(&path).await;
        read.expect(500);
        assert_eq!(read.json()["resourceType"], "OperationOutcome", "{}", read.text());
        assert!(!read.text().contains("crash-1"), "{}", read.text());
        server.get(&path).await.expect(200);
    }
}

/// The seed's setting: a person of 南箕輪村 with consent, supported by a doctor of 伊那市
/// under the wide-area agreement.
async fn cross_border_setting(server: &Server) -> (Caller, Caller) {
    let operator = server_admin(server, "minamiminowa").await;
    let admin_mm = municipal_admin(server, "minamiminowa").await;
    let admin_ina = municipal_admin(server, "ina").await;
    admin_mm.put(server, &organization("mm-office", "南箕輪村居宅介護支援事業所")).await.expect(201);
    admin_ina.put(server, &organization("ina-hospital", "伊那中央病院")).await.expect(201);
    for resource in practitioner_resources("cm-mm", "mm-office", "care-manager") {
        admin_mm.put(server, &resource).await.expect(201);
    }
    for resource in practitioner_resources("dr-ina", "ina-hospital", "doctor") {
        admin_ina.put(server, &resource).await.expect(201);
    }
    let all = ["read", "search-type", "create", "update", "delete"];
    operator.put(server, &agreement("agreement-ina-mm", &[INA, MINAMIMINOWA], "executed", &all)).await.expect(201);
    let care_manager = practitioner(server, "minamiminowa", "cm-mm", "mm-office", "user/*.cruds").await;
    let doctor = practitioner(server, "ina", "dr-ina", "ina-hospital", "user/*.cruds").await;
    server.setup(&care_manager.tenant, &patient("p-yamada", "山田", "mm-office")).await;
    server.setup(&care_manager.tenant, &consent("consent-yamada", "p-yamada", "active", "mm-office")).await;
    server.setup(&admin_mm.tenant, &care_team("team-yamada", "p-yamada", &["PractitionerRole/role-cm-mm", "PractitionerRole/role-dr-ina"])).await;
    (care_manager, doctor)
}

async fn disclosures_across_the_border(backend: Backend) {
    let server = Server::start(backend).await;
    let (care_manager, doctor) = cross_border_setting(&server).await;
    let note = json!({
        "resourceType": "Observation", "status": "final", "code": { "text": "血圧" },
        "subject": { "reference": "Patient/p-yamada" }, "valueQuantity": { "value": 128, "unit": "mmHg" }
    });
    let written = care_manager.post(&server, &note).await;
    written.expect(201);
    let observation = written.json()["id"].as_str().unwrap_or_default().to_owned();

    // The doctor of 伊那市 reads the person's data at 伊那市's base.
    let reply = doctor.get(&server, "Observation?subject=Patient/p-yamada").await;
    reply.expect(200);
    let request = request_id(&reply);
    // 伊那市's trail has the access; 南箕輪村's has the disclosure, with what rested on it.
    let access = events_of(&server, "ina", &request).await;
    assert_eq!(access.len(), 1);
    assert_eq!(subtype(&access[0]), "search-type");
    assert_eq!(access[0]["agent"][0]["who"]["reference"], "Practitioner/dr-ina");
    let disclosed = events_of(&server, "minamiminowa", &request).await;
    assert_eq!(disclosed.len(), 1, "{disclosed:#?}");
    let disclosure = &disclosed[0];
    assert_eq!(disclosure["type"]["code"], "110106");
    assert_eq!(disclosure["subtype"][0]["code"], "disclose");
    let named = entity_references(disclosure);
    for expected in ["Patient/p-yamada", &format!("Observation/{observation}/_history/1"), "Contract/agreement-ina-mm", "Consent/consent-yamada"] {
        assert!(named.iter().any(|n| n == expected), "{expected} not in {named:?}");
    }
    assert_eq!(disclosure["agent"][0]["who"]["reference"], "Practitioner/dr-ina", "to whom");
    let municipality = &disclosure["agent"][0]["extension"][0]["valueCoding"];
    assert_eq!((municipality["code"].as_str(), municipality["display"].as_str()), (Some(INA), Some("伊那市")), "from which municipality");
    assert_eq!(chain_position(disclosure).0, "minamiminowa");

    // A write by the doctor to the person's board is disclosed the same way, in its transaction.
    let reply = doctor.post(&server, &json!({
        "resourceType": "Communication", "status": "completed", "subject": { "reference": "Patient/p-yamada" },
        "payload": [{ "contentString": "往診しました" }]
    })).await;
    reply.expect(201);
    let disclosed = events_of(&server, "minamiminowa", &request_id(&reply)).await;
    assert_eq!(disclosed.len(), 1);
    assert_eq!(disclosed[0]["subtype"][1]["code"], "create");

    // The municipality's auditor finds both disclosures by their subtype.
    let found = auditor(&server, "minamiminowa").await.get(&server, "AuditEvent?subtype=disclose&patient=Patient/p-yamada").await.json();
    assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 2, "{found:#}");
    // The care manager's own reads cross nothing: no disclosure.
    let reply = care_manager.get(&server, "Observation?subject=Patient/p-yamada").await;
    assert_eq!(events_of(&server, "minamiminowa", &request_id(&reply)).await.len(), 1);
    assert!(events_of(&server, "ina", &request_id(&reply)).await.is_empty(), "an auditor sees only their municipality's chain");
}

async fn auditors_read_their_trail_and_clinicians_do_not(backend: Backend) {
    let server = Server::start(backend).await;
    let (care_manager, doctor) = cross_border_setting(&server).await;
    doctor.get(&server, "Patient/p-yamada").await.expect(200);
    let stranger = practitioner(&server, "minamiminowa", "pro-x", "org-x", "user/*.cruds").await;
    stranger.get(&server, "Patient/p-yamada").await.expect(404);
    let auditor_mm = auditor(&server, "minamiminowa").await;
    let count = |bundle: Value| bundle["entry"].as_array().map_or(0, Vec::len);
    // By patient, agent, date, action and outcome.
    let by_patient = auditor_mm.get(&server, "AuditEvent?patient=Patient/p-yamada&_count=200").await.json();
    assert!(count(by_patient.clone()) >= 3, "{by_patient}");
    let by_agent = auditor_mm.get(&server, "AuditEvent?agent=Practitioner/dr-ina").await.json();
    assert_eq!(count(by_agent.clone()), 1, "the doctor's read, disclosed to 南箕輪村: {by_agent}");
    assert_eq!(by_agent["entry"][0]["resource"]["type"]["code"], "110106");
    let denied = auditor_mm.get(&server, "AuditEvent?outcome=4&agent=Practitioner/pro-x").await.json();
    assert_eq!(count(denied), 1);
    let reads = auditor_mm.get(&server, "AuditEvent?action=R&patient=Patient/p-yamada&_count=200").await.json();
    assert!(reads["entry"].as_array().into_iter().flatten().all(|e| e["resource"]["action"] == "R"));
    assert!(count(auditor_mm.get(&server, "AuditEvent?date=gt2000-01-01").await.json()) > 0);
    assert_eq!(count(auditor_mm.get(&server, "AuditEvent?date=lt2000-01-01").await.json()), 0);
    // The trail is indexed by those parameters (and subtype, entity, type) only: another R4
    // parameter of AuditEvent is refused by name rather than silently finding nothing, and
    // the CapabilityStatement says so.
    let unindexed = auditor_mm.get(&server, "AuditEvent?agent-name=x").await;
    unindexed.expect(400);
    assert!(unindexed.issue_expressions().contains(&"agent-name".to_owned()), "{}", unindexed.text());
    let capabilities = server.get("/minamiminowa/fhir/metadata").await.json();
    let audit_resource = capabilities["rest"][0]["resource"].as_array().into_iter().flatten().find(|r| r["type"] == "AuditEvent").cloned();
    let mut names: Vec<String> = audit_resource
        .and_then(|r| r["searchParam"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .filter(|n| !n.starts_with('_'))
        .collect();
    names.sort();
    assert_eq!(names, ["action", "agent", "date", "entity", "outcome", "patient", "subtype", "type"]);
    // Only their own municipality's chain, and nothing but the trail.
    let everything = auditor_mm.get(&server, "AuditEvent?_count=1000").await.json();
    assert!(everything["entry"].as_array().into_iter().flatten().all(|e| chain_position(&e["resource"]).0 == "minamiminowa"));
    auditor_mm.get(&server, "Patient/p-yamada").await.expect(403);
    assert_eq!(count(auditor_mm.get(&server, "Observation").await.json()), 0);
    // Clinical users, administrators and the test suite's own token read no events.
    for caller in [care_manager.clone(), doctor.clone(), municipal_admin(&server, "minamiminowa").await] {
        assert_eq!(count(caller.get(&server, "AuditEvent").await.json()), 0);
    }
    let test_suite = server.get("/minamiminowa/fhir/AuditEvent").await.json();
    assert_eq!(count(test_suite), 0);
}

async fn the_access_report(backend: Backend) {
    let server = Server::start(backend).await;
    let (care_manager, doctor) = cross_border_setting(&server).await;
    // The care manager keeps the registration current (her own write is in the report too).
    let mut registration = care_manager.get(&server, "Patient/p-yamada").await.json();
    registration["gender"] = json!("female");
    care_manager.put(&server, &registration).await.expect(200);
    doctor.get(&server, "Patient/p-yamada").await.expect(200);
    let report = care_manager.get(&server, "Patient/p-yamada/$access-report").await;
    report.expect(200);
    let report = report.json();
    assert_eq!(report["resourceType"], "Parameters");
    let accesses: Vec<&Value> = report["parameter"].as_array().into_iter().flatten().filter(|p| p["name"] == "access").collect();
    let part = |access: &Value, name: &str| access["part"].as_array().into_iter().flatten().find(|p| p["name"] == name).cloned().unwrap_or_default();
    let by_doctor: Vec<&&Value> = accesses.iter().filter(|a| part(a, "who")["valueReference"]["reference"] == "Practitioner/dr-ina").collect();
    assert_eq!(by_doctor.len(), 1, "the doctor's read, once (not again as its disclosure): {report:#}");
    assert_eq!(part(by_doctor[0], "municipality")["valueCoding"]["display"], "伊那市");
    assert_eq!(part(by_doctor[0], "interaction")["valueCode"], "read");
    assert!(part(by_doctor[0], "when")["valueInstant"].is_string());
    assert!(accesses.iter().any(|a| part(a, "who")["valueReference"]["reference"] == "Practitioner/cm-mm"), "the care manager's own writes");
    // Who may ask: the person's team and the person's municipality's auditors; nobody else.
    doctor.get(&server, "Patient/p-yamada/$access-report").await.expect(200);
    auditor(&server, "minamiminowa").await.get(&server, "Patient/p-yamada/$access-report").await.expect(200);
    auditor(&server, "ina").await.get(&server, "Patient/p-yamada/$access-report").await.expect(404);
    practitioner(&server, "minamiminowa", "pro-x", "org-x", "user/*.cruds").await.get(&server, "Patient/p-yamada/$access-report").await.expect(404);
    care_manager.get(&server, "Patient/p-nobody/$access-report").await.expect(404);
    care_manager.get(&server, "Patient/p-yamada/$access-report?bogus=1").await.expect(400);
}

async fn security_and_administration_events(backend: Backend) {
    let server = Server::start(backend).await;
    // A refused token request.
    let form = "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=x.y.z";
    let reply = server.request(Method::POST, "/ina/auth/token", &[("content-type", "application/x-www-form-urlencoded")], Some(form.as_bytes().to_vec())).await;
    reply.expect(401);
    let events = events_of(&server, "ina", &request_id(&reply)).await;
    assert_eq!(events.len(), 1);
    assert_eq!((subtype(&events[0]).as_str(), events[0]["outcome"].as_str()), ("token-issue", Some("4")));
    // A revocation names the holder of the revoked token.
    let doctor = practitioner(&server, "ina", "dr-x", "org-x", "user/*.cruds").await;
    let form = format!("token={}", doctor.token);
    let reply = server.request(Method::POST, "/ina/auth/revoke", &[("content-type", "application/x-www-form-urlencoded")], Some(form.into_bytes())).await;
    reply.expect(200);
    let events = events_of(&server, "ina", &request_id(&reply)).await;
    assert_eq!(subtype(&events[0]), "token-revoke");
    assert_eq!(events[0]["agent"][0]["who"]["reference"], "Practitioner/dr-x");
    // A municipality added by the server administrator: recorded in the new municipality's chain.
    let admin = server_admin(&server, "ina").await;
    let body = serde_json::to_vec(&json!({ "slug": "tatsuno", "code": "203823", "name": "辰野町" })).expect("json");
    let reply = server.request(Method::POST, "/admin/tenants", &[("authorization", &format!("Bearer {}", admin.token)), ("content-type", "application/json")], Some(body)).await;
    reply.expect(201);
    let events = events_of(&server, "tatsuno", &request_id(&reply)).await;
    assert_eq!(subtype(&events[0]), "tenant-add");
    assert_eq!(events[0]["agent"][0]["altId"], "operator");
    // A refused administrative action is recorded as a denial in the server's chain.
    let reply = server.request(Method::POST, "/admin/signing-keys/rotate", &[("authorization", &format!("Bearer {}", doctor.token))], None).await;
    reply.expect(401);
    let reports = server.fhir().verify_audit_trail(Some("_server")).await.expect("verify");
    assert_eq!(reports.len(), 1);
    assert!(reports[0].events >= 1 && reports[0].broken.is_none());
}

async fn retention_exports_then_prunes_and_the_chain_still_verifies(backend: Backend) {
    let server = Server::start(backend).await;
    for name in ["a", "b", "c"] {
        server.get(&format!("/ina/fhir/Patient?name={name}")).await.expect(200);
    }
    let before = auditor(&server, "ina").await.get(&server, "AuditEvent?_count=1000").await.json()["entry"].as_array().map_or(0, Vec::len);
    // With the default retention nothing is old enough.
    let out = tempfile::tempdir().expect("directory");
    assert!(server.fhir().prune_audit_trail(out.path()).await.expect("prune").is_empty());
    // With a retention of zero days everything recorded so far has expired.
    let server = server.restart_with(|config| config.audit_retention_days = 0).await;
    let reports = server.fhir().prune_audit_trail(out.path()).await.expect("prune");
    let ina = reports.iter().find(|r| r.chain == "ina").expect("ina was pruned");
    let exported = std::fs::read_to_string(&ina.file).expect("export file");
    let lines: Vec<Value> = exported.lines().map(|l| serde_json::from_str(l).expect("NDJSON")).collect();
    assert_eq!(lines.len() as u64, ina.removed);
    assert!(lines.len() >= before, "every event counted before was exported ({} < {before})", lines.len());
    assert_eq!(lines[0]["sequence"], 1);
    assert_eq!(lines[0]["resource"]["resourceType"], "AuditEvent");
    // The exported lines chain from the genesis exactly as stored.
    let mut previous = renraku::audit::chain::GENESIS.to_owned();
    for line in &lines {
        assert_eq!(line["previous"], previous);
        let content = serde_json::to_string(&line["resource"]).expect("json");
        let digest = renraku::audit::chain::digest("ina", line["sequence"].as_i64().unwrap_or_default(), &previous, &content);
        assert_eq!(line["digest"], digest);
        previous = digest;
    }
    // What remains verifies from its new anchor, starting with the record of the pruning.
    assert_eq!(broken_link(&server).await, None);
    let remaining = auditor(&server, "ina").await.get(&server, "AuditEvent?_count=1000&_sort=date").await.json();
    let first = &remaining["entry"][0]["resource"];
    assert_eq!(subtype(first), "audit-prune", "{remaining:#}");
    server.get("/ina/fhir/Patient?name=d").await.expect(200);
    assert_eq!(broken_link(&server).await, None);
}

/// Moves the events of `ina`'s chain up to `through` back into the shape of journal rows
/// waiting for the projection (the link holds the JSON, no resource or index rows); returns
/// the SQL that selects their ids.
async fn journal_again(server: &Server, through: i64) -> String {
    let old = format!("SELECT event_id FROM audit_log WHERE chain = 'ina' AND seq <= {through}");
    tamper(server, &format!("UPDATE audit_log SET projected = 0, content = (SELECT r.content FROM resources r WHERE r.resource_type = 'AuditEvent' AND r.id = audit_log.event_id) WHERE event_id IN ({old})")).await;
    tamper(server, &format!("DELETE FROM resources WHERE resource_type = 'AuditEvent' AND id IN ({old})")).await;
    for table in ["audit_index", "audit_terms"] {
        tamper(server, &format!("DELETE FROM {table} WHERE id IN ({old})")).await;
    }
    old
}

/// Journal rows that hold the AuditEvent JSON and wait for the projection (every event on
/// PostgreSQL; on SQLite, a database an earlier version wrote): here five events are moved
/// back into that shape; they are projected when the trail is next read, searchable as
/// before, the links keep no copy of the JSON once projected, and the chain verifies across
/// them and newer events.
async fn events_journaled_by_an_earlier_version_are_projected(backend: Backend) {
    let server = Server::start(backend).await;
    for name in ["a", "b", "c", "d", "e"] {
        server.get(&format!("/ina/fhir/Patient?name={name}")).await.expect(200);
    }
    server.fhir().project_audit_events().await.expect("projected");
    journal_again(&server, 5).await;
    let reply = server.get("/ina/fhir/Patient?name=f").await;
    reply.expect(200);
    // The auditor's search catches up first: the five old events are found again.
    let events = auditor(&server, "ina").await.get(&server, "AuditEvent?_count=100&_sort=date").await.json();
    let positions: Vec<(String, i64)> = events["entry"].as_array().into_iter().flatten().map(|e| chain_position(&e["resource"])).collect();
    for seq in 1..=5 {
        assert!(positions.contains(&("ina".to_owned(), seq)), "event {seq} projected again: {positions:?}");
    }
    assert_eq!(events_of(&server, "ina", &request_id(&reply)).await.len(), 1, "the new event beside them");
    assert_eq!(broken_link(&server).await, None);
    // Projected, a link keeps no copy of the JSON: the resource row is the event.
    let copies: i64 = {
        let mut connection = server.database_directly().await;
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE projected = 1 AND content <> ''").fetch_one(&mut connection).await.expect("count")
    };
    assert_eq!(copies, 0);
}

/// Two projections at once (the recorder's projector and the background pass, or two
/// gateways' on one database) write each journaled event once: inside its transaction a
/// projection leaves out what another wrote meanwhile (`store::audit::still_pending`, which
/// finds the links by their ids and reads their `projected` mark).
async fn two_projections_at_once_write_each_event_once(backend: Backend) {
    let server = Server::start(backend).await;
    for name in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        server.get(&format!("/ina/fhir/Patient?name={name}")).await.expect(200);
    }
    server.fhir().project_audit_events().await.expect("projected");
    let old = journal_again(&server, 8).await;
    let fhir = server.fhir();
    let (first, second) = tokio::join!(fhir.project_audit_events(), fhir.project_audit_events());
    first.expect("the first projection");
    second.expect("the second projection");
    let server = &server;
    let count = |sql: String| async move {
        let mut connection = server.database_directly().await;
        sqlx::query_scalar::<_, i64>(&sql).fetch_one(&mut connection).await.expect("count")
    };
    let rows = count(format!("SELECT COUNT(*) FROM resources WHERE resource_type = 'AuditEvent' AND id IN ({old})")).await;
    assert_eq!(rows, 8, "each event's resource row once");
    let indexed = count(format!("SELECT COUNT(*) FROM audit_index WHERE id IN ({old})")).await;
    assert_eq!(indexed, 8, "each event's index row once");
    let left = count("SELECT COUNT(*) FROM audit_log WHERE projected = 0 OR (chain = 'ina' AND seq <= 8 AND content <> '')".to_owned()).await;
    assert_eq!(left, 0, "every link marked projected, without its copy of the JSON");
    assert_eq!(broken_link(server).await, None);
}

/// Events stored by the recorder alone — no gateway around it, so no background projection
/// and no auditor's catch-up — become AuditEvent rows with their index: on SQLite with their
/// links, on PostgreSQL by the recorder's own projector (`runtime::recorder`), from the index
/// entries the events were prepared with.
async fn the_recorder_alone_stores_its_events_as_searchable_rows(backend: Backend) {
    use renraku::audit::{Action, Agent, Entity, Event, EventType, Outcome};
    let (config, directory, database) = crate::support::new_database(backend).await;
    let store = renraku::store::Store::connect(&config.database_url).await.expect("the store");
    let registry = Arc::new(renraku::search::Registry::load(&[]).expect("the registry"));
    let recorder = renraku::runtime::recorder::Recorder::start(store.clone(), registry);
    let events: Vec<Event> = (0..300)
        .map(|n| Event {
            chain: "ina".into(),
            event_type: EventType::Rest("read"),
            action: Action::Read,
            outcome: Outcome::Success,
            outcome_description: None,
            recorded: format!("2026-12-07T00:00:00.{n:06}Z"),
            agent: Agent { references: vec![format!("PractitionerRole/{OFFICE}-role")], municipality: Some("ina".into()), ..Agent::default() },
            site: "ina".into(),
            request_id: format!("request-{n}"),
            purpose_of_use: None,
            entities: vec![Entity::Resource(format!("Patient/person-{n}/_history/1")), Entity::Patient(format!("Patient/person-{n}"))],
        })
        .collect();
    recorder.record(events, &crate::support::test_tenants()).await.expect("recorded");
    sqlx::any::install_default_drivers();
    let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(&config.database_url).await.expect("a connection");
    let mut counts = (0, 0, 0);
    for _ in 0..100 {
        let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
        counts = (
            count("SELECT COUNT(*) FROM resources WHERE resource_type = 'AuditEvent'").fetch_one(&mut connection).await.expect("rows"),
            count("SELECT COUNT(*) FROM audit_index").fetch_one(&mut connection).await.expect("index rows"),
            count("SELECT COUNT(*) FROM audit_log WHERE projected = 0").fetch_one(&mut connection).await.expect("links"),
        );
        if counts == (300, 300, 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(counts, (300, 300, 0), "AuditEvent rows, their index rows, links waiting");
    let named: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_terms WHERE b = 'person-7' AND a = 'Patient' AND kind = 'r'")
        .fetch_one(&mut connection)
        .await
        .expect("terms");
    assert!(named >= 1, "the person an event names is in its index");
    // The agents every event names are one set, stored once and named by each event; the
    // view finds every event through it.
    let mut stored = Vec::new();
    for sql in [
        "SELECT COUNT(*) FROM audit_agent_sets",
        "SELECT COUNT(DISTINCT agents) FROM audit_index",
        "SELECT COUNT(*) FROM audit_terms WHERE param = 'agent'",
        "SELECT COUNT(DISTINCT id) FROM audit_search_reference WHERE param = 'agent'",
    ] {
        stored.push(sqlx::query_scalar::<_, i64>(sql).fetch_one(&mut connection).await.expect("a count"));
    }
    assert_eq!(stored, [1, 1, 0, 300], "rows of sets, sets named, agent term rows, events found by their agent");
    drop(connection);
    store.close().await;
    drop(directory);
    if let Some(name) = database {
        crate::support::drop_database(name);
    }
}

/// An auditor's searches read the trail's own index (`audit_index`, `audit_terms`, issue
/// #13): for each query the events found are exactly those whose content says so, paged
/// newest first in order, and the same again after a re-index has emptied and rebuilt that
/// index.
async fn an_auditors_searches_find_what_the_events_say(backend: Backend) {
    let server = Server::start(backend).await;
    let (care_manager, doctor) = cross_border_setting(&server).await;
    doctor.get(&server, "Patient/p-yamada").await.expect(200);
    care_manager.get(&server, "Patient?family=山田").await.expect(200);
    let note = json!({
        "resourceType": "Observation", "status": "final", "code": { "text": "血圧" },
        "subject": { "reference": "Patient/p-yamada" }, "valueQuantity": { "value": 128, "unit": "mmHg" }
    });
    let written = care_manager.post(&server, &note).await;
    written.expect(201);
    let observation = format!("Observation/{}", written.json()["id"].as_str().unwrap_or_default());
    let stranger = practitioner(&server, "minamiminowa", "pro-x", "org-x", "user/*.cruds").await;
    stranger.get(&server, "Patient/p-yamada").await.expect(404);
    let auditor = auditor(&server, "minamiminowa").await;
    let resources = |bundle: &Value| -> Vec<Value> { bundle["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()).collect() };
    let all = resources(&auditor.get(&server, "AuditEvent?_count=1000").await.json());
    assert!(all.len() >= 8, "{all:#?}");
    let recorded = |e: &Value| e["recorded"].as_str().unwrap_or_default().to_owned();
    // Only what the listing saw: the auditor's own searches are recorded after it.
    let last = all.iter().map(recorded).max().unwrap_or_default();
    let mut times: Vec<String> = all.iter().map(recorded).collect();
    times.sort();
    let middle = times[times.len() / 2].clone();
    let refs = |e: &Value, list: &str, field: &str| -> Vec<String> {
        e[list].as_array().into_iter().flatten().filter_map(|x| x[field]["reference"].as_str().map(str::to_owned)).collect()
    };
    let identifiers = |e: &Value, list: &str, field: &str| -> Vec<(String, String)> {
        e[list].as_array().into_iter().flatten().filter_map(|x| x[field]["identifier"].as_object().cloned()).map(|i| {
            (i.get("system").and_then(Value::as_str).unwrap_or_default().to_owned(), i.get("value").and_then(Value::as_str).unwrap_or_default().to_owned())
        }).collect()
    };
    let client = all.iter().flat_map(|e| identifiers(e, "agent", "who")).next().expect("an event names its client");
    let request = all.iter().rev().flat_map(|e| identifiers(e, "entity", "what")).next().expect("an event names its request");
    let codes = |e: &Value, field: &str| -> Vec<String> {
        match &e[field] {
            Value::Array(list) => list.iter().filter_map(|c| c["code"].as_str().map(str::to_owned)).collect(),
            Value::String(code) => vec![code.clone()],
            other => other["code"].as_str().map(str::to_owned).into_iter().collect(),
        }
    };
    type Expect<'a> = Box<dyn Fn(&Value) -> bool + 'a>;
    let cases: Vec<(String, Expect)> = vec![
        ("patient=Patient/p-yamada".into(), Box::new(|e| refs(e, "entity", "what").contains(&"Patient/p-yamada".to_owned()))),
        ("patient:missing=true".into(), Box::new(|e| !refs(e, "entity", "what").iter().any(|r| r.starts_with("Patient/")))),
        ("agent=Practitioner/dr-ina".into(), Box::new(|e| refs(e, "agent", "who").contains(&"Practitioner/dr-ina".to_owned()))),
        ("agent=PractitionerRole/role-cm-mm".into(), Box::new(|e| refs(e, "agent", "who").contains(&"PractitionerRole/role-cm-mm".to_owned()))),
        (format!("agent:identifier={}|{}", client.0, client.1), Box::new(|e| identifiers(e, "agent", "who").contains(&client))),
        (format!("entity:identifier={}", request.1), Box::new(|e| identifiers(e, "entity", "what").iter().any(|(_, v)| *v == request.1))),
        (format!("entity={observation}"), Box::new(|e| {
            refs(e, "entity", "what").iter().any(|r| *r == observation || r.starts_with(&format!("{observation}/_history/")))
        })),
        ("subtype=read".into(), Box::new(|e| codes(e, "subtype").contains(&"read".to_owned()))),
        ("subtype=read,search-type".into(), Box::new(|e| codes(e, "subtype").iter().any(|c| c == "read" || c == "search-type"))),
        ("action=R&outcome=0".into(), Box::new(|e| e["action"] == "R" && e["outcome"] == "0")),
        ("action:not=R".into(), Box::new(|e| e["action"] != "R")),
        ("outcome:not=0".into(), Box::new(|e| e["outcome"] != "0")),
        ("type=http://dicom.nema.org/resources/ontology/DCM|110106".into(), Box::new(|e| codes(e, "type").contains(&"110106".to_owned()))),
        ("type=rest&patient=Patient/p-yamada".into(), Box::new(|e| {
            codes(e, "type").contains(&"rest".to_owned()) && refs(e, "entity", "what").contains(&"Patient/p-yamada".to_owned())
        })),
        (format!("date=ge{middle}"), Box::new(|e| recorded(e) >= middle)),
        (format!("date=lt{middle}"), Box::new(|e| recorded(e) < middle)),
    ];
    let id = |e: &Value| e["id"].as_str().unwrap_or_default().to_owned();
    let check = |found: Vec<Value>, query: &str, expect: &Expect| {
        let mut found: Vec<String> = found.iter().map(id).collect();
        found.sort();
        let mut wanted: Vec<String> = all.iter().filter(|e| expect(e)).map(id).collect();
        wanted.sort();
        assert_eq!(found, wanted, "{query}");
    };
    for round in ["as written", "after a re-index"] {
        for (query, expect) in &cases {
            let reply = auditor.get(&server, &format!("AuditEvent?{query}&date=le{last}&_count=1000")).await;
            reply.expect(200);
            check(resources(&reply.json()), &format!("{query} ({round})"), expect);
        }
        // Newest first, three a page, following the links: every event once, in order.
        let mut seen: Vec<Value> = Vec::new();
        let mut next = Some(format!("AuditEvent?date=le{last}&_sort=-date&_count=3"));
        while let Some(query) = next.take() {
            let page = auditor.get(&server, &query).await.json();
            seen.extend(resources(&page));
            next = page["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next").and_then(|l| l["url"].as_str()).map(|url| {
                url.split_once("/fhir/").map(|(_, rest)| rest.to_owned()).unwrap_or_default()
            });
            assert!(seen.len() <= all.len(), "paging ends ({round})");
        }
        let order: Vec<String> = seen.iter().map(recorded).collect();
        let mut newest_first = order.clone();
        newest_first.sort_by(|a, b| b.cmp(a));
        assert_eq!(order, newest_first, "{round}");
        check(seen, &format!("_sort=-date ({round})"), &(Box::new(|_: &Value| true) as Expect));
        server.fhir().reindex().await.expect("reindex");
    }
}

/// An AuditEvent is written once: its resource row is its one version (no second copy in the
/// version table, issue #13). vread, instance history and the type's history read it — the
/// type's history paged newest first through every event the auditor's search finds — and
/// the system's history does not list events.
async fn an_events_one_version_is_its_resource_row(backend: Backend) {
    let server = Server::start(backend).await;
    for name in ["a", "b", "c", "d", "e"] {
        server.get(&format!("/ina/fhir/Patient?name={name}")).await.expect(200);
    }
    let auditor = auditor(&server, "ina").await;
    let searched = auditor.get(&server, "AuditEvent?_count=1000").await.json();
    let mut found: Vec<String> = searched["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned)).collect();
    assert!(found.len() >= 5, "{searched}");
    let event = searched["entry"][0]["resource"].clone();
    let id = event["id"].as_str().expect("id").to_owned();
    let vread = auditor.get(&server, &format!("AuditEvent/{id}/_history/1")).await;
    vread.expect(200);
    assert_eq!(vread.json(), event);
    auditor.get(&server, &format!("AuditEvent/{id}/_history/2")).await.expect(404);
    let instance = auditor.get(&server, &format!("AuditEvent/{id}/_history")).await.json();
    assert_eq!(instance["total"], 1, "{instance}");
    assert_eq!(instance["entry"][0]["resource"], event);
    assert_eq!(instance["entry"][0]["request"]["method"], "POST");
    // The type's history, three a page, newest first, each event once.
    let mut listed: Vec<(String, String)> = Vec::new();
    let mut page = auditor.get(&server, "AuditEvent/_history?_count=3").await.json();
    let total = page["total"].as_i64().expect("total");
    for _ in 0..100 {
        listed.extend(page["entry"].as_array().into_iter().flatten().map(|e| {
            let resource = &e["resource"];
            (resource["meta"]["lastUpdated"].as_str().unwrap_or_default().to_owned(), resource["id"].as_str().unwrap_or_default().to_owned())
        }));
        let Some(next) = page["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next").and_then(|l| l["url"].as_str()).map(str::to_owned) else { break };
        let path = next.split_once("/ina/fhir/").map(|(_, path)| path.to_owned()).expect("a link on this base");
        page = auditor.get(&server, &path).await.json();
    }
    let mut newest_first = listed.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed, newest_first);
    let mut ids: Vec<String> = listed.into_iter().map(|(_, id)| id).collect();
    // The auditor's own reads since the search are events too: the history holds at least
    // what the search found, and each event once.
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event twice");
    assert_eq!(ids.len() as i64, total);
    ids.sort();
    found.sort();
    assert!(found.iter().all(|id| ids.binary_search(id).is_ok()), "every searched event is in the history");
    // The system's history lists no events; a clinician reads no event's version.
    let system = auditor.get(&server, "_history?_count=1000").await.json();
    assert!(system["entry"].as_array().into_iter().flatten().all(|e| e["resource"]["resourceType"] != "AuditEvent"), "{system}");
    let doctor = practitioner(&server, "ina", "dr-history", "org-history", "user/*.cruds").await;
    let read = doctor.get(&server, &format!("AuditEvent/{id}")).await.status;
    assert_ne!(read.as_u16(), 200);
    assert_eq!(doctor.get(&server, &format!("AuditEvent/{id}/_history/1")).await.status, read);
    // The chain still verifies, the events' one copy checked against their links.
    let reports = server.fhir().verify_audit_trail(None).await.expect("verify");
    assert!(reports.iter().all(|r| r.broken.is_none()), "{reports:?}");
    // Projected (PostgreSQL) or written at once (SQLite), none has a version row.
    let versions: i64 = {
        let mut connection = server.database_directly().await;
        sqlx::query_scalar("SELECT COUNT(*) FROM resource_versions WHERE resource_type = 'AuditEvent'").fetch_one(&mut connection).await.expect("count")
    };
    assert_eq!(versions, 0, "no version rows for events");
}

/// Audited writes at once, as the care manager whose office registers the persons, with two
/// more chainers working beside the gateway's own on stores of their own (as other gateways'
/// would: a write queues its events and a chainer gives them their place; on SQLite the other
/// chainers wait for the database's write lock as another process would). Every write's event
/// is chained exactly once, the chain has no gap, nothing stays queued, and the trail verifies.
async fn concurrent_writes_events_are_chained_once(backend: Backend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = Server::start_as(backend, Who::CareManager).await.shared();
    let writing = Arc::new(AtomicBool::new(true));
    let mut chainers = Vec::new();
    for _ in 0..2 {
        let store = renraku::store::Store::connect(server.database_url()).await.expect("a second store");
        let registry = server.fhir().search_params.clone();
        let writing = writing.clone();
        chainers.push(tokio::spawn(async move {
            let mut chained = 0;
            loop {
                let still_writing = writing.load(Ordering::SeqCst);
                chained += renraku::store::audit::chain_queued(&store, &registry, 3).await.expect("chaining");
                if !still_writing {
                    store.close().await;
                    return chained;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }));
    }
    let mut writes = Vec::new();
    for n in 0..48 {
        let server = server.clone();
        writes.push(tokio::spawn(async move {
            let body = json!({ "resourceType": "Patient", "identifier": [{ "system": "urn:renraku:test", "value": format!("queued-{n}") }],
                               "managingOrganization": { "reference": OFFICE } });
            let reply = server.post("/ina/fhir/Patient", &body).await;
            reply.expect(201);
            request_id(&reply)
        }));
    }
    let mut request_ids = Vec::new();
    for write in writes {
        request_ids.push(write.await.expect("write"));
    }
    writing.store(false, Ordering::SeqCst);
    for chainer in chainers {
        chainer.await.expect("chainer");
    }
    server.fhir().project_audit_events().await.expect("chained and projected");
    let queued = {
        let mut connection = server.database_directly().await;
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM audit_queue").fetch_one(&mut connection).await.expect("count")
    };
    assert_eq!(queued, 0, "nothing stays queued");
    for id in &request_ids {
        let events = events_of(&server, "ina", id).await;
        assert_eq!(events.len(), 1, "one event for request {id}: {events:#?}");
        assert_eq!(subtype(&events[0]), "create");
    }
    let all = auditor(&server, "ina").await.get(&server, "AuditEvent?_count=1000").await.json();
    let mut sequences: Vec<i64> = all["entry"].as_array().into_iter().flatten().map(|e| chain_position(&e["resource"]).1).collect();
    assert!(sequences.len() >= request_ids.len() && sequences.len() < 1000, "{} events", sequences.len());
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>(), "one gap-free chain");
    let reports = server.fhir().verify_audit_trail(None).await.expect("verify");
    assert!(reports.iter().all(|r| r.broken.is_none()), "{reports:?}");
}

both_backends!(
    concurrent_writes_events_are_chained_once,
    an_events_one_version_is_its_resource_row,
    an_auditors_searches_find_what_the_events_say,
    events_journaled_by_an_earlier_version_are_projected,
    two_projections_at_once_write_each_event_once,
    the_recorder_alone_stores_its_events_as_searchable_rows,
    every_interaction_leaves_its_event,
    denials_and_failures_are_recorded,
    the_trail_cannot_be_changed_through_any_api,
    tampering_in_the_database_is_detected,
    a_crashed_write_leaves_neither_data_nor_event,
    disclosures_across_the_border,
    auditors_read_their_trail_and_clinicians_do_not,
    the_access_report,
    security_and_administration_events,
    retention_exports_then_prunes_and_the_chain_still_verifies,
);
