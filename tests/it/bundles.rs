//! Batch and transaction Bundles — as the unrestricted principal and as the care manager
//! who registers the persons and is on their teams (`support::Who`).

use base64::Engine as _;
use serde_json::json;

use crate::both_backends_as_both;
use crate::support::{Backend, Server, Who, OFFICE};

async fn transaction_resolves_placeholders_atomically(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059",
                "resource": { "resourceType": "Patient", "identifier": [{ "system": "urn:renraku:test", "value": "tx-1" }],
                              "managingOrganization": { "reference": OFFICE } },
                "request": { "method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:renraku:test|tx-1" }
            },
            {
                "resource": { "resourceType": "CareTeam", "status": "active",
                              "subject": { "reference": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059" },
                              "participant": [{ "member": { "reference": OFFICE } }] },
                "request": { "method": "POST", "url": "CareTeam" }
            },
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": { "resourceType": "Observation", "status": "final", "code": { "text": "体温" },
                              "subject": { "reference": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059" },
                              "valueQuantity": { "value": 36.5, "unit": "℃" } },
                "request": { "method": "POST", "url": "Observation" }
            }
        ]
    });
    let reply = server.post("/ina/fhir", &bundle).await;
    reply.expect(200);
    let response = reply.json();
    assert_eq!(response["type"], "transaction-response");
    let entries = response["entry"].as_array().expect("entries");
    let statuses: Vec<&str> = entries.iter().map(|e| e["response"]["status"].as_str().unwrap_or_default()).collect();
    assert_eq!(statuses, ["201 Created", "201 Created", "201 Created"]);
    let patient_id = entries[0]["resource"]["id"].as_str().expect("patient id").to_owned();
    assert_eq!(entries[1]["resource"]["subject"]["reference"], format!("Patient/{patient_id}"));
    assert_eq!(entries[2]["resource"]["subject"]["reference"], format!("Patient/{patient_id}"));
    let location = entries[2]["response"]["location"].as_str().expect("location");
    let observation = server.get(&format!("/ina/fhir/{}", location.split("/_history").next().unwrap_or_default())).await;
    observation.expect(200);
    assert_eq!(observation.json()["subject"]["reference"], format!("Patient/{patient_id}"));
    // Posting the same transaction again finds the Patient instead of duplicating it.
    let again = server.post("/ina/fhir", &bundle).await.json();
    assert_eq!(again["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(server.get("/ina/fhir/Patient").await.json()["total"], 1);
    assert_eq!(server.get("/ina/fhir/Observation").await.json()["total"], 2);
}

/// Conditional references (`Patient?identifier=…`) in a transaction are resolved against
/// what the caller may search before anything executes: one match is rewritten to it; none,
/// or several, fail the transaction naming the entry.
async fn conditional_references_are_resolved(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let person = |number: &str| json!({ "resourceType": "Patient", "identifier": [{ "system": "urn:renraku:test", "value": number }],
                                        "managingOrganization": { "reference": OFFICE } });
    let id = server.create("ina", &person("cond-1")).await;
    server.create("ina", &person("twice")).await;
    server.create("ina", &person("twice")).await;
    let team_of = |reference: &str| json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{ "resource": { "resourceType": "CareTeam", "status": "active", "subject": { "reference": reference },
                                  "participant": [{ "member": { "reference": OFFICE } }] },
                    "request": { "method": "POST", "url": "CareTeam" } }]
    });
    let reply = server.post("/ina/fhir", &team_of("Patient?identifier=urn:renraku:test|cond-1")).await;
    reply.expect(200);
    let team = &reply.json()["entry"][0]["resource"];
    assert_eq!(team["subject"]["reference"], format!("Patient/{id}"), "{team}");
    for (reference, what) in [("Patient?identifier=urn:renraku:test|nobody", "matches no resource"), ("Patient?identifier=urn:renraku:test|twice", "")] {
        let refused = server.post("/ina/fhir", &team_of(reference)).await;
        refused.expect(412);
        let text = refused.text();
        assert!(text.contains("Bundle.entry[0]") && text.contains(what), "{reference}: {text}");
    }
    assert_eq!(server.get(&format!("/ina/fhir/CareTeam?subject=Patient/{id}")).await.json()["total"], 1, "nothing else was written");
}

async fn failed_transaction_leaves_nothing(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "resource": { "resourceType": "Patient", "gender": "female", "managingOrganization": { "reference": OFFICE } }, "request": { "method": "POST", "url": "Patient" } },
            { "resource": { "resourceType": "Patient", "gender": "robot", "managingOrganization": { "reference": OFFICE } }, "request": { "method": "POST", "url": "Patient" } }
        ]
    });
    let reply = server.post("/ina/fhir", &bundle).await;
    reply.expect(422);
    assert_eq!(reply.issue_expressions(), ["Bundle.entry[1].resource.gender"]);
    assert_eq!(server.get("/ina/fhir/Patient").await.json()["total"], 0);
    assert_eq!(server.get("/ina/fhir/Patient/_history").await.json()["total"], 0, "no version was kept either");
    // A dangling reference also aborts the whole transaction.
    let dangling = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "resource": { "resourceType": "Patient", "managingOrganization": { "reference": OFFICE } }, "request": { "method": "POST", "url": "Patient" } },
            { "resource": { "resourceType": "Observation", "status": "final", "code": { "text": "t" }, "subject": { "reference": "Patient/nobody" } },
              "request": { "method": "POST", "url": "Observation" } }
        ]
    });
    let reply = server.post("/ina/fhir", &dangling).await;
    match who {
        // The engine checks the reference and names it.
        Who::Unrestricted => {
            reply.expect(422);
            assert_eq!(reply.issue_expressions(), ["Bundle.entry[1].resource.subject.reference"]);
        }
        // The access rule refuses first: data about a person the care manager does not reach
        // is not hers to write, whether or not the person exists (403 either way).
        Who::CareManager => {
            reply.expect(403);
            assert!(reply.text().contains("Bundle.entry[1]"), "{}", reply.text());
        }
    }
    assert_eq!(server.get("/ina/fhir/Patient").await.json()["total"], 0);
}

/// An id a client chose: a UUID (for a person's data, callers bound by the rule choose
/// only those).
const FIXED_ID: &str = "1f2e3d4c-5b6a-4798-8877-665544332211";

async fn transaction_order_and_interactions(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let old = server.create("ina", &json!({ "resourceType": "Patient", "gender": "male", "managingOrganization": { "reference": OFFICE } })).await;
    let patch = base64::engine::general_purpose::STANDARD.encode(br#"[{"op":"add","path":"/active","value":true}]"#);
    let target = server.create("ina", &json!({ "resourceType": "Patient", "managingOrganization": { "reference": OFFICE } })).await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            { "request": { "method": "GET", "url": format!("Patient?_id={old}") } },
            { "resource": { "resourceType": "Patient", "id": FIXED_ID, "gender": "other", "managingOrganization": { "reference": OFFICE } },
              "request": { "method": "PUT", "url": format!("Patient/{FIXED_ID}") } },
            { "resource": { "resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch },
              "request": { "method": "PATCH", "url": format!("Patient/{target}") } },
            { "request": { "method": "DELETE", "url": format!("Patient/{old}") } }
        ]
    });
    let reply = server.post("/ina/fhir", &bundle).await;
    reply.expect(200);
    let entries = reply.json()["entry"].clone();
    // The GET ran after the DELETE, so it finds nothing.
    assert_eq!(entries[0]["resource"]["total"], 0);
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    assert_eq!(entries[2]["resource"]["active"], true);
    assert_eq!(entries[3]["response"]["status"], "204 No Content");
    server.get(&format!("/ina/fhir/Patient/{old}")).await.expect(410);
}

async fn batch_entries_succeed_or_fail_alone(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            { "resource": { "resourceType": "Patient", "gender": "female", "managingOrganization": { "reference": OFFICE } }, "request": { "method": "POST", "url": "Patient" } },
            { "resource": { "resourceType": "Patient", "gender": "robot", "managingOrganization": { "reference": OFFICE } }, "request": { "method": "POST", "url": "Patient" } },
            { "request": { "method": "GET", "url": "Patient/does-not-exist" } },
            { "request": { "method": "GET", "url": "Patient" } }
        ]
    });
    let reply = server.post("/ina/fhir", &bundle).await;
    reply.expect(200);
    let response = reply.json();
    assert_eq!(response["type"], "batch-response");
    let statuses: Vec<&str> = response["entry"].as_array().expect("entries").iter().map(|e| e["response"]["status"].as_str().unwrap_or_default()).collect();
    assert_eq!(statuses, ["201 Created", "422 Unprocessable Entity", "404 Not Found", "200 OK"]);
    assert_eq!(response["entry"][1]["response"]["outcome"]["issue"][0]["expression"][0], "Bundle.entry[1].resource.gender");
    assert_eq!(server.get("/ina/fhir/Patient").await.json()["total"], 1);
}

async fn malformed_bundles_are_refused(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let cases = [
        (json!({ "resourceType": "Patient" }), "resourceType"),
        (json!({ "resourceType": "Bundle", "type": "collection" }), "Bundle.type"),
        (json!({ "resourceType": "Bundle", "type": "transaction", "entry": [{ "resource": { "resourceType": "Patient" } }] }), "Bundle.entry[0].request"),
        (json!({ "resourceType": "Bundle", "type": "transaction", "entry": [{ "request": { "method": "FETCH", "url": "Patient" } }] }), "Bundle.entry[0].request.method"),
        (json!({ "resourceType": "Bundle", "type": "transaction", "entry": [{ "request": { "method": "POST", "url": "Patient" } }] }), "Bundle.entry[0].resource"),
        (json!({ "resourceType": "Bundle", "type": "batch", "entry": [{ "request": { "method": "GET", "url": "Nonsense/1" } }] }), "Bundle.entry[0].request.url"),
    ];
    let empty = server.post("/ina/fhir", &json!({ "resourceType": "Bundle", "type": "batch" })).await;
    empty.expect(200);
    assert!(empty.json().get("entry").is_none(), "no empty arrays in responses");
    for (bundle, expression) in cases {
        let reply = server.post("/ina/fhir", &bundle).await;
        reply.expect(400);
        assert_eq!(reply.issue_expressions(), [expression], "{bundle}");
    }
}

both_backends_as_both!(
    conditional_references_are_resolved,
    transaction_resolves_placeholders_atomically,
    failed_transaction_leaves_nothing,
    transaction_order_and_interactions,
    batch_entries_succeed_or_fail_alone,
    malformed_bundles_are_refused,
);
