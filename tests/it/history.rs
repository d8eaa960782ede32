//! History at instance, type and system level: order, _since, _count and paging links.

use serde_json::{json, Value};

use crate::both_backends;
use crate::support::{Backend, Server, Who};

/// Follows `next` links from `path`, collecting (type/id, version) of every entry.
async fn walk(server: &Server, path: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut next = Some(path.to_owned());
    while let Some(url) = next {
        let reply = server.get(&url.replace("http://renraku.test", "")).await;
        reply.expect(200);
        let bundle = reply.json();
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            let url = entry["fullUrl"].as_str().unwrap_or_default().rsplit('/').take(2).collect::<Vec<_>>().join("<");
            seen.push(format!("{url}@{}", entry["response"]["etag"].as_str().unwrap_or_default()));
        }
        next = link(&bundle, "next");
    }
    seen
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == relation)?["url"].as_str().map(str::to_owned)
}

async fn paging_through_history(backend: Backend) {
    let server = Server::start(backend).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(server.create("ina", &json!({ "resourceType": "Patient", "name": [{ "family": format!("p{n}") }] })).await);
    }
    server.create("ina", &json!({ "resourceType": "Organization", "name": "病院" })).await;
    server.create("minowa", &json!({ "resourceType": "Patient" })).await;
    let first = server.get("/ina/fhir/Patient/_history?_count=2").await;
    first.expect(200);
    let bundle = first.json();
    assert_eq!(bundle["type"], "history");
    assert_eq!(bundle["total"], 5);
    assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(2));
    let all = walk(&server, "/ina/fhir/Patient/_history?_count=2").await;
    assert_eq!(all.len(), 5, "{all:?}");
    let unique: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 5);
    // Newest first.
    assert!(all[0].starts_with(&ids[4]), "{all:?}");
    let system = walk(&server, "/ina/fhir/_history?_count=4").await;
    assert_eq!(system.len(), 6, "only this municipality's history: {system:?}");
    // A write while paging does not make a page repeat or skip older entries.
    let page = server.get("/ina/fhir/_history?_count=3").await.json();
    server.create("ina", &json!({ "resourceType": "Patient" })).await;
    let rest = walk(&server, &link(&page, "next").expect("next link")).await;
    assert_eq!(rest.len(), 3);
}

async fn since_filters_by_time(backend: Backend) {
    let server = Server::start(backend).await;
    let id = server.create("ina", &json!({ "resourceType": "Patient" })).await;
    let read = server.get(&format!("/ina/fhir/Patient/{id}")).await.json();
    let stamp = read["meta"]["lastUpdated"].as_str().expect("lastUpdated").to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    server.put(&format!("/ina/fhir/Patient/{id}"), &json!({ "resourceType": "Patient", "id": id, "active": true })).await.expect(200);
    let encoded = stamp.replace(':', "%3A");
    let all = server.get(&format!("/ina/fhir/Patient/{id}/_history?_since={encoded}")).await.json();
    assert_eq!(all["total"], 2);
    let later = server.get("/ina/fhir/Patient/_history?_since=2999-01-01T00:00:00Z").await.json();
    assert_eq!(later["total"], 0);
    server.get("/ina/fhir/Patient/_history?_since=yesterday").await.expect(400);
    server.get("/ina/fhir/Patient/nope/_history").await.expect(404);
}

/// An update that changes nothing keeps the version, as HAPI FHIR and Firely do: the care
/// manager's office system sends its whole record again (say, a nightly export).
async fn an_unchanged_update_keeps_the_version(backend: Backend) {
    let server = Server::start_as(backend, Who::CareManager).await;
    let mut person = crate::policy::patient("x", "伊那", "office");
    person.as_object_mut().expect("an object").remove("id");
    let created = server.post("/ina/fhir/Patient", &person).await;
    created.expect(201);
    let id = created.json()["id"].as_str().expect("an id").to_owned();
    let path = format!("/ina/fhir/Patient/{id}");
    let mut again = person.clone();
    again["id"] = json!(id);
    // Whatever the client says of versionId and lastUpdated, nothing else changed.
    again["meta"] = json!({ "versionId": "7", "lastUpdated": "2020-01-01T00:00:00Z" });
    let reply = server.put(&path, &again).await;
    reply.expect(200);
    assert_eq!(reply.json()["meta"]["versionId"], "1");
    assert_eq!(reply.header("etag").as_deref(), Some("W/\"1\""));
    assert_eq!(server.get(&format!("{path}/_history")).await.json()["total"], 1);
    // In a transaction the entry says so.
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "resource": again, "request": { "method": "PUT", "url": format!("Patient/{id}") } }
    ]});
    let answer = server.post("/ina/fhir", &bundle).await;
    answer.expect(200);
    let response = &answer.json()["entry"][0]["response"];
    assert_eq!(response["status"], "200 OK");
    assert_eq!(response["outcome"]["issue"][0]["diagnostics"], format!("no change: Patient/{id} stays at version 1"));
    // A change is a new version.
    let mut changed = again.clone();
    changed["name"][0]["given"] = json!(["花子"]);
    let reply = server.put(&path, &changed).await;
    reply.expect(200);
    assert_eq!(reply.json()["meta"]["versionId"], "2");
    assert_eq!(server.get(&format!("{path}/_history")).await.json()["total"], 2);
}

both_backends!(paging_through_history, since_filters_by_time, an_unchanged_update_keeps_the_version);
