//! Conditional create, update and delete — as the unrestricted principal and as the care
//! manager who registers the persons (`support::Who`).

use axum::http::Method;
use serde_json::json;

use crate::both_backends_as_both;
use crate::support::{Backend, Server, Who, OFFICE};

/// A person the care-management office registers (so the care manager may write them).
fn patient_with_number(number: &str) -> serde_json::Value {
    json!({ "resourceType": "Patient", "identifier": [{ "system": "urn:renraku:test", "value": number }], "managingOrganization": { "reference": OFFICE } })
}

async fn conditional_create(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let condition = [("if-none-exist", "identifier=urn:renraku:test|001")];
    let first = server.send(Method::POST, "/ina/fhir/Patient", &condition, &patient_with_number("001")).await;
    first.expect(201);
    let second = server.send(Method::POST, "/ina/fhir/Patient", &condition, &patient_with_number("001")).await;
    second.expect(200);
    assert_eq!(first.json()["id"], second.json()["id"]);
    server.create("ina", &patient_with_number("002")).await;
    server.create("ina", &patient_with_number("002")).await;
    let ambiguous = [("if-none-exist", "identifier=002")];
    server.send(Method::POST, "/ina/fhir/Patient", &ambiguous, &patient_with_number("002")).await.expect(412);
    // The same number in another municipality is another person.
    server.send(Method::POST, "/minowa/fhir/Patient", &condition, &patient_with_number("001")).await.expect(201);
}

async fn conditional_update(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let created = server.put("/ina/fhir/Patient?identifier=urn:renraku:test|010", &patient_with_number("010")).await;
    created.expect(201);
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let mut body = patient_with_number("010");
    body["gender"] = json!("female");
    let updated = server.put("/ina/fhir/Patient?identifier=urn:renraku:test|010", &body).await;
    updated.expect(200);
    assert_eq!(updated.json()["id"], id.as_str());
    assert_eq!(updated.json()["meta"]["versionId"], "2");
    body["id"] = json!("some-other-id");
    server.put("/ina/fhir/Patient?identifier=urn:renraku:test|010", &body).await.expect(400);
}

async fn conditional_delete(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let id = server.create("ina", &patient_with_number("020")).await;
    server.create("ina", &patient_with_number("021")).await;
    server.create("ina", &patient_with_number("021")).await;
    server.delete("/ina/fhir/Patient?identifier=urn:renraku:test|021").await.expect(412);
    server.delete("/ina/fhir/Patient?identifier=urn:renraku:test|020").await.expect(204);
    server.get(&format!("/ina/fhir/Patient/{id}")).await.expect(410);
    server.delete("/ina/fhir/Patient?identifier=urn:renraku:test|999").await.expect(204);
    server.delete("/ina/fhir/Patient").await.expect(400);

    // In a transaction, a delete that matched nothing says so (a client keeping its data in
    // step, such as the SS-MIX2 import, tells it from a delete).
    server.create("ina", &patient_with_number("030")).await;
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "request": { "method": "DELETE", "url": "Patient?identifier=urn:renraku:test|030" } },
        { "request": { "method": "DELETE", "url": "Patient?identifier=urn:renraku:test|998" } }
    ] });
    let reply = server.send(Method::POST, "/ina/fhir", &[], &bundle).await;
    reply.expect(200);
    let entries = reply.json()["entry"].clone();
    assert_eq!(entries[0]["response"]["status"], "204 No Content", "{entries}");
    assert!(entries[0]["response"].get("outcome").is_none(), "{entries}");
    assert_eq!(entries[1]["response"]["status"], "204 No Content", "{entries}");
    assert_eq!(entries[1]["response"]["outcome"]["issue"][0]["diagnostics"], "no match: nothing was deleted", "{entries}");
}

both_backends_as_both!(conditional_create, conditional_update, conditional_delete);
