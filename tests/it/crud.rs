//! Read, vread, create, update, patch, delete: versions and tombstones — as the unrestricted
//! principal and as the care manager who registers the persons (`support::Who`).

use axum::http::Method;
use serde_json::json;

use crate::both_backends_as_both;
use crate::support::{Backend, Server, Who, OFFICE};

/// A person the care-management office registers (so the care manager may write them).
fn patient(family: &str) -> serde_json::Value {
    json!({ "resourceType": "Patient", "name": [{ "family": family }], "gender": "female", "managingOrganization": { "reference": OFFICE } })
}

async fn versions_and_tombstones(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let created = server.post("/ina/fhir/Patient", &patient("佐藤")).await;
    created.expect(201);
    let id = created.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(created.header("etag").as_deref(), Some("W/\"1\""));
    let location = created.header("location").expect("location");
    assert_eq!(location, format!("http://renraku.test/ina/fhir/Patient/{id}/_history/1"));
    assert!(created.header("last-modified").is_some_and(|d| d.ends_with(" GMT")));
    assert_eq!(created.json()["meta"]["versionId"], "1");

    let read = server.get(&format!("/ina/fhir/Patient/{id}")).await;
    read.expect(200);
    assert_eq!(read.json()["name"][0]["family"], "佐藤");

    let mut changed = read.json();
    changed["name"][0]["family"] = json!("鈴木");
    let updated = server.put(&format!("/ina/fhir/Patient/{id}"), &changed).await;
    updated.expect(200);
    assert_eq!(updated.json()["meta"]["versionId"], "2");
    assert_eq!(updated.header("etag").as_deref(), Some("W/\"2\""));

    let first = server.get(&format!("/ina/fhir/Patient/{id}/_history/1")).await;
    first.expect(200);
    assert_eq!(first.json()["name"][0]["family"], "佐藤", "version 1 is kept as it was");

    server.delete(&format!("/ina/fhir/Patient/{id}")).await.expect(204);
    let gone = server.get(&format!("/ina/fhir/Patient/{id}")).await;
    gone.expect(410);
    assert_eq!(gone.json()["issue"][0]["code"], "deleted");
    server.get(&format!("/ina/fhir/Patient/{id}/_history/2")).await.expect(200);
    server.get(&format!("/ina/fhir/Patient/{id}/_history/3")).await.expect(410);
    server.get(&format!("/ina/fhir/Patient/{id}/_history/4")).await.expect(404);
    // Deleting again is idempotent and adds no version.
    server.delete(&format!("/ina/fhir/Patient/{id}")).await.expect(204);
    let history = server.get(&format!("/ina/fhir/Patient/{id}/_history")).await;
    history.expect(200);
    let methods: Vec<String> = history.json()["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);

    // Update after delete brings the resource back as a new version.
    let revived = server.put(&format!("/ina/fhir/Patient/{id}"), &changed).await;
    revived.expect(201);
    assert_eq!(revived.json()["meta"]["versionId"], "4");
}

/// A person's data deleted: whoever could see it learns of the deletion — 410 on read, the
/// earlier versions by vread, the DELETE in instance, type and system history — and nobody
/// else does.
async fn deleted_data_can_be_followed(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let person = server.create("ina", &patient("佐藤")).await;
    let team = json!({ "resourceType": "CareTeam", "status": "active", "subject": { "reference": format!("Patient/{person}") },
                       "participant": [{ "member": { "reference": OFFICE } }] });
    server.create("ina", &team).await;
    let observation = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "体温" },
                              "subject": { "reference": format!("Patient/{person}") }, "valueQuantity": { "value": 36.5, "unit": "Cel" } });
    let id = server.create("ina", &observation).await;
    server.delete(&format!("/ina/fhir/Observation/{id}")).await.expect(204);
    let gone = server.get(&format!("/ina/fhir/Observation/{id}")).await;
    gone.expect(410);
    assert_eq!(gone.json()["resourceType"], "OperationOutcome");
    server.get(&format!("/ina/fhir/Observation/{id}/_history/1")).await.expect(200);
    server.get(&format!("/ina/fhir/Observation/{id}/_history/2")).await.expect(410);
    let methods = |bundle: serde_json::Value| -> Vec<String> {
        bundle["entry"].as_array().into_iter().flatten()
            .filter(|e| e["request"]["url"].as_str().unwrap_or_default().contains(&id) || e["fullUrl"].as_str().unwrap_or_default().contains(&id))
            .map(|e| e["request"]["method"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    for path in [format!("/ina/fhir/Observation/{id}/_history"), "/ina/fhir/Observation/_history".to_owned(), "/ina/fhir/_history?_count=100".to_owned()] {
        let history = server.get(&path).await;
        history.expect(200);
        assert_eq!(methods(history.json()), ["DELETE", "POST"], "{path}");
    }
    // Someone who never saw it learns nothing: another municipality's view.
    server.get(&format!("/minowa/fhir/Observation/{id}")).await.expect(404);
    assert_eq!(methods(server.get("/minowa/fhir/_history").await.json()), Vec::<String>::new());
}

/// Deleting what live resources still refer to would strand them: 409 naming the referrers
/// the caller may see; `_cascade=delete` deletes them with it, each under the caller's own
/// delete permission (one it may not delete refuses the whole, and nothing is deleted).
async fn referred_resources_are_not_deleted_alone(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let person = server.create("ina", &patient("佐藤")).await;
    let team = json!({ "resourceType": "CareTeam", "status": "active", "subject": { "reference": format!("Patient/{person}") },
                       "participant": [{ "member": { "reference": OFFICE } }] });
    let team = server.create("ina", &team).await;
    let observation = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "体温" },
                              "subject": { "reference": format!("Patient/{person}") } });
    let observation = server.create("ina", &observation).await;
    let refused = server.delete(&format!("/ina/fhir/Patient/{person}")).await;
    refused.expect(409);
    let text = refused.text();
    assert!(text.contains(&format!("Observation/{observation}")) && text.contains(&format!("CareTeam/{team}")), "{text}");
    server.get(&format!("/ina/fhir/Patient/{person}")).await.expect(200);
    // Someone who cannot see the person hears what a delete of nothing answers (204), and
    // learns nothing of the referrers; nothing is deleted.
    let stranger = crate::policy::practitioner(&server, "ina", "stranger", "elsewhere", "user/*.cruds").await;
    stranger.delete(&server, &format!("Patient/{person}")).await.expect(204);
    stranger.delete(&server, &format!("Patient/{person}?_cascade=delete")).await.expect(204);
    server.get(&format!("/ina/fhir/Patient/{person}")).await.expect(200);
    // A colleague of the office who may read Observations but not delete them cannot cascade.
    let colleague = crate::policy::practitioner(&server, "ina", "cm2", "office", "user/Patient.cruds user/CareTeam.cruds user/Observation.rs").await;
    let path = format!("Patient/{person}?_cascade=delete");
    colleague.delete(&server, &path).await.expect(409);
    server.get(&format!("/ina/fhir/Observation/{observation}")).await.expect(200);
    server.get(&format!("/ina/fhir/CareTeam/{team}")).await.expect(200);
    // With the permission, the cascade deletes the person's record together.
    server.delete(&format!("/ina/fhir/Patient/{person}?_cascade=delete")).await.expect(204);
    for gone in [format!("Patient/{person}"), format!("CareTeam/{team}")] {
        server.get(&format!("/ina/fhir/{gone}")).await.expect(410);
    }
    // The clinical data went with the person and the team: to the registrar it is gone (a
    // team member sees a person's data only while person and team exist), to the engine a
    // tombstone. The audit trail has every deletion.
    server.get(&format!("/ina/fhir/Observation/{observation}")).await.expect(if who == Who::Unrestricted { 410 } else { 404 });
}

async fn update_as_create_with_client_id(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    // The unrestricted principal may choose any id; a caller bound by the access rule only a
    // UUID for a person's data (a readable id could probe which ids hidden records use).
    let readable = {
        let mut body = patient("田中");
        body["id"] = json!("tanaka-1");
        server.put("/ina/fhir/Patient/tanaka-1", &body).await
    };
    let id = match who {
        Who::Unrestricted => {
            readable.expect(201);
            "tanaka-1"
        }
        Who::CareManager => {
            readable.expect(422);
            assert_eq!(readable.issue_expressions(), ["Patient.id"]);
            "0e0c6f7a-4b0d-4d3a-9a43-6c2f1d5e8b90"
        }
    };
    let mut body = patient("田中");
    body["id"] = json!(id);
    server.put(&format!("/ina/fhir/Patient/{id}"), &body).await.expect(if who == Who::CareManager { 201 } else { 200 });
    let again = server.put(&format!("/ina/fhir/Patient/{id}"), &body).await;
    again.expect(200);
    // Ids are unique across the server: another municipality cannot take the same id.
    server.put(&format!("/minowa/fhir/Patient/{id}"), &body).await.expect(409);
}

async fn server_ignores_client_id_on_create(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let mut body = patient("伊藤");
    body["id"] = json!("chosen-by-client");
    let created = server.post("/ina/fhir/Patient", &body).await;
    created.expect(201);
    assert_ne!(created.json()["id"], "chosen-by-client");
}

async fn tenants_do_not_see_each_other(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let id = server.create("ina", &patient("渡辺")).await;
    server.get(&format!("/ina/fhir/Patient/{id}")).await.expect(200);
    let elsewhere = server.get(&format!("/minowa/fhir/Patient/{id}")).await;
    elsewhere.expect(404);
    assert!(!elsewhere.text().contains("渡辺"));
    let search = server.get("/minowa/fhir/Patient").await;
    search.expect(200);
    assert_eq!(search.json()["total"], 0);
    server.get("/nowhere/fhir/Patient").await.expect(404);
}

async fn json_patch(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let id = server.create("ina", &patient("高橋")).await;
    let path = format!("/ina/fhir/Patient/{id}");
    let patch = json!([{ "op": "replace", "path": "/gender", "value": "male" }, { "op": "add", "path": "/active", "value": true }]);
    let headers = [("content-type", "application/json-patch+json")];
    let body = serde_json::to_vec(&patch).expect("json");
    let patched = server.request(Method::PATCH, &path, &headers, Some(body.clone())).await;
    patched.expect(200);
    assert_eq!(patched.json()["gender"], "male");
    assert_eq!(patched.json()["meta"]["versionId"], "2");
    // A patch whose result is invalid is rejected and leaves the resource alone.
    let invalid = serde_json::to_vec(&json!([{ "op": "replace", "path": "/gender", "value": "robot" }])).expect("json");
    let rejected = server.request(Method::PATCH, &path, &headers, Some(invalid)).await;
    rejected.expect(422);
    assert_eq!(rejected.issue_expressions(), ["Patient.gender"]);
    // If-Match on patch.
    let stale = server
        .request(Method::PATCH, &path, &[("content-type", "application/json-patch+json"), ("if-match", "W/\"1\"")], Some(body.clone()))
        .await;
    stale.expect(412);
    // A patch that cannot apply is unprocessable; a non-patch media type is refused.
    let missing = serde_json::to_vec(&json!([{ "op": "remove", "path": "/telecom" }])).expect("json");
    server.request(Method::PATCH, &path, &headers, Some(missing)).await.expect(422);
    server.request(Method::PATCH, &path, &[("content-type", "application/fhir+json")], Some(body)).await.expect(415);
    assert_eq!(server.get(&path).await.json()["meta"]["versionId"], "2");
}

async fn xml_in_and_out(backend: Backend, who: Who) {
    let server = Server::start_as(backend, who).await;
    let xml = r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/><name><family value="小林"/></name><gender value="female"/><managingOrganization><reference value="Organization/office"/></managingOrganization></Patient>"#;
    let created = server
        .request(Method::POST, "/ina/fhir/Patient", &[("content-type", "application/fhir+xml"), ("accept", "application/fhir+xml")], Some(xml.as_bytes().to_vec()))
        .await;
    created.expect(201);
    assert!(created.header("content-type").unwrap_or_default().starts_with("application/fhir+xml"));
    assert!(created.text().contains("<family value=\"小林\"/>"), "{}", created.text());
    let id = created.header("location").and_then(|l| l.split('/').nth(6).map(str::to_owned)).expect("id in location");
    let json = server.get(&format!("/ina/fhir/Patient/{id}")).await;
    json.expect(200);
    assert_eq!(json.json()["name"][0]["family"], "小林");
    assert_eq!(json.json()["active"], true);
    let xml_read = server.get(&format!("/ina/fhir/Patient/{id}?_format=xml")).await;
    xml_read.expect(200);
    assert!(xml_read.text().contains("<Patient xmlns=\"http://hl7.org/fhir\">"), "{}", xml_read.text());
    // Malformed XML is a 400 OperationOutcome.
    let bad = server
        .request(Method::POST, "/ina/fhir/Patient", &[("content-type", "application/fhir+xml")], Some(b"<Patient><oops".to_vec()))
        .await;
    bad.expect(400);
    assert_eq!(bad.json()["resourceType"], "OperationOutcome");
}

both_backends_as_both!(
    versions_and_tombstones,
    deleted_data_can_be_followed,
    referred_resources_are_not_deleted_alone,
    update_as_create_with_client_id,
    server_ignores_client_id_on_create,
    tenants_do_not_see_each_other,
    json_patch,
    xml_in_and_out,
);
