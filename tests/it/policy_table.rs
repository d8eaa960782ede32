//! The rule table (ARCHITECTURE.md, "The access rule"), row by row: each actor kind against
//! each kind of resource, for read, search, create, update and delete, in one municipality.
//!
//! A row's letters say what is allowed: `r` read answers 200 (else 404), `s` a search finds
//! the resource (else finds nothing), `c` a create answers 201 (else 403), `u` an update
//! answers 200 (else 404, as for a resource that does not exist), `d` a delete removes the
//! resource (else it answers 204 and removes nothing). The audit trail's events are the
//! server's own: a create, update or delete of one answers 405 for everyone (also "-").

use renraku::identity::Actor;
use serde_json::{json, Value};

use crate::both_backends;
use crate::policy::{agreement, care_team, consent, organization, patient, practitioner_resources, Caller};
use crate::support::{Backend, Server};

/// One resource of each kind, as it is stored before each row runs.
fn resources() -> Vec<(&'static str, Value)> {
    vec![
        ("Organization", organization("org-a", "事業所A")),
        ("Patient", patient("p1", "山田", "org-a")),
        ("Observation", json!({
            "resourceType": "Observation", "id": "o1", "status": "final", "code": { "text": "体温" },
            "subject": { "reference": "Patient/p1" }, "valueQuantity": { "value": 36.5, "unit": "Cel" }
        })),
        ("CareTeam", care_team("team-p1", "p1", &["PractitionerRole/role-pro-a", "Organization/org-c"])),
        ("Contract", agreement("agreement-1", &["202096", "203831"], "executed", &["read"])),
        ("Medication", json!({ "resourceType": "Medication", "id": "med-1", "code": { "text": "アムロジピン" } })),
    ]
}

/// An AuditEvent as a client might try to post one.
fn audit_event() -> Value {
    json!({
        "resourceType": "AuditEvent", "id": "audit-1",
        "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest" },
        "recorded": "2026-11-25T00:00:00Z",
        "agent": [{ "requestor": true, "who": { "display": "someone" } }],
        "source": { "observer": { "display": "renraku" } }
    })
}

/// A new resource of each kind, for the create column.
fn new_resource(kind: &str) -> Value {
    if kind == "AuditEvent" {
        let mut event = audit_event();
        if let Some(object) = event.as_object_mut() {
            object.remove("id");
        }
        return event;
    }
    let mut resource = resources().into_iter().find(|(k, _)| *k == kind).map(|(_, r)| r).unwrap_or_default();
    if let Some(object) = resource.as_object_mut() {
        object.remove("id");
    }
    resource
}

async fn set_up(server: &Server) {
    let directory = [organization("org-a", "事業所A"), organization("org-b", "事業所B"), organization("org-c", "訪問看護C")];
    for resource in directory.iter().chain(&practitioner_resources("pro-a", "org-a", "care-manager")).chain(&practitioner_resources("pro-b", "org-b", "nurse")) {
        let path = format!("/ina/fhir/{}/{}", resource["resourceType"].as_str().unwrap_or_default(), resource["id"].as_str().unwrap_or_default());
        server.put(&path, resource).await;
    }
    restore_all(server).await;
    server.put("/ina/fhir/Consent/consent-p1", &consent("consent-p1", "p1", "active", "org-a")).await.expect(201);
}

/// Puts every resource back as it was (after a row's delete).
async fn restore_all(server: &Server) {
    for (_, resource) in resources() {
        let path = format!("/ina/fhir/{}/{}", resource["resourceType"].as_str().unwrap_or_default(), resource["id"].as_str().unwrap_or_default());
        let reply = server.put(&path, &resource).await;
        assert!(reply.status == 200 || reply.status == 201, "restore {path}: {}", reply.text());
    }
}

async fn caller(server: &Server, actor: &str) -> Caller {
    let actor = match actor {
        "practitioner on the team, registrar" => Actor::Practitioner {
            tenant: "ina".into(), practitioner: "pro-a".into(), role: "role-pro-a".into(), organization: "org-a".into(),
        },
        "practitioner not on the team" => Actor::Practitioner {
            tenant: "ina".into(), practitioner: "pro-b".into(), role: "role-pro-b".into(), organization: "org-b".into(),
        },
        "system client of a team organization" => Actor::System { tenant: "ina".into(), client: "ehr".into(), organization: "org-c".into(), maintains_directory: false },
        "municipal administrator" => Actor::MunicipalAdmin { tenant: "ina".into(), user: "admin".into() },
        "municipal auditor" => Actor::MunicipalAuditor { tenant: "ina".into(), user: "auditor".into() },
        "server administrator" => Actor::ServerAdmin { user: "operator".into() },
        other => panic!("unknown actor {other}"),
    };
    let scopes = if matches!(actor, Actor::System { .. }) { "system/*.cruds" } else { "user/*.cruds" };
    Caller { tenant: "ina".into(), token: server.token("ina", actor, scopes, None).await }
}

/// The auditor of the municipality, who reads its trail.
async fn auditor(server: &Server) -> Caller {
    let actor = Actor::MunicipalAuditor { tenant: "ina".into(), user: "auditor".into() };
    Caller { tenant: "ina".into(), token: server.token("ina", actor, "user/AuditEvent.rs", None).await }
}

/// What `caller` can do to the resource of `kind`, as the row's letters.
async fn observe(server: &Server, caller: &Caller, kind: &str) -> String {
    let auditor = auditor(server).await;
    let stored = if kind == "AuditEvent" {
        // An event the set-up's requests left in the trail.
        let bundle = auditor.get(server, "AuditEvent?_count=1").await;
        bundle.expect(200);
        bundle.json()["entry"][0]["resource"].clone()
    } else {
        resources().into_iter().find(|(k, _)| *k == kind).map(|(_, r)| r).unwrap_or_else(|| panic!("kind {kind}"))
    };
    let id = stored["id"].as_str().unwrap_or_default().to_owned();
    let mut letters = String::new();
    let read = caller.get(server, &format!("{kind}/{id}")).await;
    letters.push(match read.status.as_u16() {
        200 => 'r',
        404 => '-',
        other => panic!("read {kind}: {other} {}", read.text()),
    });
    let found = caller.search_ids(server, &format!("{kind}?_id={id}")).await;
    letters.push(if found.is_empty() { '-' } else { 's' });
    let created = caller.post(server, &new_resource(kind)).await;
    letters.push(match created.status.as_u16() {
        201 => 'c',
        403 => '-',
        405 if kind == "AuditEvent" => '-',
        other => panic!("create {kind}: {other} {}", created.text()),
    });
    let updated = caller.put(server, &stored).await;
    letters.push(match updated.status.as_u16() {
        200 => 'u',
        404 => '-',
        // A person's data the caller cannot see, under a readable id: refused as a free one.
        422 if updated.text().contains("needs a UUID") => '-',
        405 if kind == "AuditEvent" => '-',
        other => panic!("update {kind}: {other} {}", updated.text()),
    });
    let deleted = caller.delete(server, &format!("{kind}/{id}")).await;
    if deleted.status.as_u16() == 409 && deleted.text().contains("is referred to by") {
        // Permitted, but the world's other resources still refer to it (referential
        // integrity; the refusal comes only after the decision and the visibility check).
        letters.push('d');
        return letters;
    }
    deleted.expect(if kind == "AuditEvent" { 405 } else { 204 });
    let after = if kind == "AuditEvent" { auditor.get(server, &format!("{kind}/{id}")).await } else { server.get(&format!("/ina/fhir/{kind}/{id}")).await };
    letters.push(match after.status.as_u16() {
        410 => 'd',
        200 => '-',
        other => panic!("after delete {kind}: {other}"),
    });
    letters
}

async fn rule_table(backend: Backend) {
    let server = Server::start(backend).await;
    set_up(&server).await;
    let kinds = ["Patient", "Observation", "CareTeam", "Organization", "Contract", "AuditEvent", "Medication"];
    #[rustfmt::skip]
    let table: [(&str, [&str; 7]); 6] = [
        //                                        Patient  Observation CareTeam Organization Contract AuditEvent Medication
        ("practitioner on the team, registrar",  ["rscud", "rscud",    "rscud", "rs---",     "-----", "-----",   "rscud"]),
        ("practitioner not on the team",         ["-----", "-----",    "-----", "rs---",     "-----", "-----",   "rscud"]),
        ("system client of a team organization", ["rs-ud", "rscud",    "rscud", "rs---",     "-----", "-----",   "rscud"]),
        ("municipal administrator",              ["rs---", "-----",    "rscud", "rscud",     "rs---", "-----",   "-----"]),
        ("municipal auditor",                    ["-----", "-----",    "-----", "-----",     "-----", "rs---",   "-----"]),
        ("server administrator",                 ["-----", "-----",    "-----", "rscud",     "rscud", "-----",   "-----"]),
    ];
    let mut mismatches = Vec::new();
    for (actor, expected_row) in table {
        let caller = caller(&server, actor).await;
        for (kind, expected) in kinds.iter().zip(expected_row) {
            let observed = observe(&server, &caller, kind).await;
            if observed != expected {
                mismatches.push(format!("{actor} × {kind}: expected {expected}, observed {observed}"));
            }
            restore_all(&server).await;
        }
    }
    assert!(mismatches.is_empty(), "rule table mismatches:\n{}", mismatches.join("\n"));
}

both_backends!(rule_table);
