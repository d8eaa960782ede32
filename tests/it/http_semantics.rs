//! ETags, conditional reads, Prefer, _summary, _elements, the CapabilityStatement.

use axum::http::Method;
use serde_json::json;

use crate::both_backends;
use crate::support::{Backend, Server};

async fn if_match_guards_updates(backend: Backend) {
    let server = Server::start(backend).await;
    let id = server.create("ina", &json!({ "resourceType": "Patient", "gender": "male" })).await;
    let path = format!("/ina/fhir/Patient/{id}");
    let body = json!({ "resourceType": "Patient", "id": id, "gender": "female" });
    server.send(Method::PUT, &path, &[("if-match", "W/\"2\"")], &body).await.expect(412);
    server.send(Method::PUT, &path, &[("if-match", "W/\"1\"")], &body).await.expect(200);
    server.send(Method::PUT, &path, &[("if-match", "W/\"1\"")], &body).await.expect(412);
    server.request(Method::DELETE, &path, &[("if-match", "W/\"1\"")], None).await.expect(412);
    server.request(Method::DELETE, &path, &[("if-match", "W/\"2\"")], None).await.expect(204);
}

async fn conditional_reads(backend: Backend) {
    let server = Server::start(backend).await;
    let id = server.create("ina", &json!({ "resourceType": "Patient", "gender": "male" })).await;
    let path = format!("/ina/fhir/Patient/{id}");
    let read = server.get(&path).await;
    let last_modified = read.header("last-modified").expect("last-modified");
    let not_modified = server.get_with(&path, &[("if-none-match", "W/\"1\"")]).await;
    not_modified.expect(304);
    assert!(not_modified.body.is_empty());
    server.get_with(&path, &[("if-none-match", "W/\"0\"")]).await.expect(200);
    server.get_with(&path, &[("if-modified-since", &last_modified)]).await.expect(304);
    server.get_with(&path, &[("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")]).await.expect(200);
}

async fn prefer_return(backend: Backend) {
    let server = Server::start(backend).await;
    let body = json!({ "resourceType": "Patient", "gender": "male" });
    let minimal = server.send(Method::POST, "/ina/fhir/Patient", &[("prefer", "return=minimal")], &body).await;
    minimal.expect(201);
    assert!(minimal.body.is_empty());
    assert!(minimal.header("location").is_some());
    let outcome = server.send(Method::POST, "/ina/fhir/Patient", &[("prefer", "return=OperationOutcome")], &body).await;
    outcome.expect(201);
    assert_eq!(outcome.json()["resourceType"], "OperationOutcome");
    let representation = server.send(Method::POST, "/ina/fhir/Patient", &[("prefer", "return=representation")], &body).await;
    assert_eq!(representation.json()["resourceType"], "Patient");
}

async fn summary_and_elements(backend: Backend) {
    let server = Server::start(backend).await;
    let id = server
        .create(
            "ina",
            &json!({
                "resourceType": "Patient",
                "text": { "status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">山田</div>" },
                "gender": "male",
                "maritalStatus": { "text": "既婚" },
                "name": [{ "family": "山田" }]
            }),
        )
        .await;
    let path = format!("/ina/fhir/Patient/{id}");
    let subsetted = |value: &serde_json::Value| {
        value["meta"]["tag"].as_array().is_some_and(|tags| tags.iter().any(|t| t["code"] == "SUBSETTED"))
    };
    // (query, present, absent)
    let cases = [
        ("_summary=true", vec!["gender", "name", "id", "meta"], vec!["maritalStatus", "text"]),
        ("_summary=text", vec!["text", "id"], vec!["gender", "name"]),
        ("_summary=data", vec!["gender", "maritalStatus", "name"], vec!["text"]),
        ("_elements=gender", vec!["gender", "id", "meta"], vec!["name", "maritalStatus", "text"]),
    ];
    for (query, present, absent) in cases {
        let reply = server.get(&format!("{path}?{query}")).await;
        reply.expect(200);
        let resource = reply.json();
        for name in present {
            assert!(resource.get(name).is_some(), "{query}: {name} should be present in {resource}");
        }
        for name in absent {
            assert!(resource.get(name).is_none(), "{query}: {name} should be absent in {resource}");
        }
        assert!(subsetted(&resource), "{query}: marked SUBSETTED");
    }
    let full = server.get(&path).await.json();
    assert!(!subsetted(&full));
    let count = server.get("/ina/fhir/Patient?_summary=count").await;
    assert_eq!(count.json()["total"], 1);
    assert!(count.json().get("entry").is_none());
}

async fn capability_statement_tells_the_truth(backend: Backend) {
    let server = Server::start(backend).await;
    let reply = server.get("/minowa/fhir/metadata").await;
    reply.expect(200);
    let statement = reply.json();
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(statement["implementation"]["url"], "http://renraku.test/minowa/fhir");
    let resources = statement["rest"][0]["resource"].as_array().expect("resources");
    let patient = resources.iter().find(|r| r["type"] == "Patient").expect("Patient listed");
    assert_eq!(patient["conditionalDelete"], "single");
    let params: Vec<&str> = patient["searchParam"].as_array().expect("params").iter().filter_map(|p| p["name"].as_str()).collect();
    for expected in ["_id", "_lastUpdated", "_tag", "identifier", "name", "family", "birthdate", "organization", "email"] {
        assert!(params.contains(&expected), "{expected} in {params:?}");
    }
    assert!(params.contains(&"deceased"), "exists() is evaluated by the FHIRPath evaluator, so advertised");
    let observation = resources.iter().find(|r| r["type"] == "Observation").expect("Observation listed");
    let observation_params: Vec<&str> = observation["searchParam"].as_array().expect("params").iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(!observation_params.contains(&"code-value-quantity"), "a composite parameter is not compiled, so not advertised");
    assert!(patient["supportedProfile"].as_array().is_some_and(|p| !p.is_empty()));
    assert!(resources.len() > 140, "every R4 resource type is served");
    // Each advertised search parameter works; an unadvertised one is refused.
    let query: Vec<String> = params.iter().filter(|p| !p.starts_with('_')).map(|p| format!("{p}:missing=false")).collect();
    server.get(&format!("/minowa/fhir/Patient?_id=a&_lastUpdated=gt2020&{}", query.join("&"))).await.expect(200);
    server.get("/minowa/fhir/Observation?code-value-quantity=http://loinc.org|8310-5$gt38").await.expect(400);
    let xml = server.get("/minowa/fhir/metadata?_format=xml").await;
    xml.expect(200);
    assert!(xml.text().contains("<CapabilityStatement"));
}

/// What standard clients send on day one, as a professional of the team: transactions and
/// system searches at `[base]/` (with the slash), and XML declaring `encoding="utf-8"`.
async fn base_with_a_slash_and_lower_case_encodings(backend: Backend) {
    let server = Server::start(backend).await;
    server.put("/ina/fhir/Organization/office", &crate::policy::organization("office", "事業所")).await.expect(201);
    let care_manager = crate::policy::practitioner(&server, "ina", "cm", "office", "user/*.cruds").await;
    let bearer = format!("Bearer {}", care_manager.token);
    let bundle = serde_json::json!({ "resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:3c1e6a52-0000-4000-8000-000000000001",
        "resource": crate::policy::patient("ignored", "山田", "office"),
        "request": { "method": "POST", "url": "Patient" } }] });
    let reply = server.send(axum::http::Method::POST, "/ina/fhir/", &[("authorization", &bearer)], &bundle).await;
    reply.expect(200);
    assert_eq!(reply.json()["entry"][0]["response"]["status"], "201 Created", "{}", reply.text());
    let found = server.get_with("/ina/fhir/?_type=Patient", &[("authorization", &bearer)]).await;
    found.expect(200);
    assert_eq!(found.json()["total"], 1, "{}", found.text());
    let xml = r#"<?xml version="1.0" encoding="utf-8"?><Patient xmlns="http://hl7.org/fhir"><name><family value="中村"/></name><managingOrganization><reference value="Organization/office"/></managingOrganization></Patient>"#;
    let created = server
        .request(axum::http::Method::POST, "/ina/fhir/Patient", &[("authorization", &bearer), ("content-type", "application/fhir+xml")], Some(xml.as_bytes().to_vec()))
        .await;
    created.expect(201);
}

/// CORS: browser apps registered at a municipality may call its base from their origin
/// (preflight answered without a token, the answer carries the allow headers); any other
/// origin, or an app of another municipality, gets no allow header at all.
async fn cors_only_for_registered_app_origins(backend: Backend) {
    let server = Server::start_with(backend, |config| {
        let app = renraku::identity::clients::ClientConfig::public_app;
        config.clients.push(app("care-app", "ina", "在宅ケアアプリ", &["https://app.care.example.jp/smart/callback"], "openid user/*.rs"));
    })
    .await;
    let app = "https://app.care.example.jp";
    let preflight = |origin: &'static str, path: &'static str| {
        let server = &server;
        async move {
            let headers = [
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization, content-type"),
                ("authorization", "none"),
            ];
            server.request(Method::OPTIONS, path, &headers, None).await
        }
    };
    let allowed = preflight(app, "/ina/fhir/Observation").await;
    allowed.expect(200);
    assert_eq!(allowed.header("access-control-allow-origin").as_deref(), Some(app));
    let methods = allowed.header("access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("POST"), "{methods}");
    let headers = allowed.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(headers.contains("authorization") && headers.contains("content-type"), "{headers}");
    // The token endpoint too: a public app exchanges its code from the browser.
    let token = preflight(app, "/ina/auth/token").await;
    assert_eq!(token.header("access-control-allow-origin").as_deref(), Some(app));
    // Another origin, another municipality's base, the admin API: nothing allowed.
    for (origin, path) in [("https://evil.example", "/ina/fhir/Observation"), (app, "/minamiminowa/fhir/Observation"), (app, "/admin/tenants")] {
        let refused = preflight(origin, path).await;
        assert_eq!(refused.header("access-control-allow-origin"), None, "{origin} {path}");
    }
    // An actual request from the app's origin carries the headers and exposes Location.
    let read = server.get_with("/ina/fhir/metadata", &[("origin", app)]).await;
    read.expect(200);
    assert_eq!(read.header("access-control-allow-origin").as_deref(), Some(app));
    let elsewhere = server.get_with("/ina/fhir/metadata", &[("origin", "https://evil.example")]).await;
    elsewhere.expect(200);
    assert_eq!(elsewhere.header("access-control-allow-origin"), None);
    let person = json!({ "resourceType": "Patient", "name": [{ "family": "春日" }] });
    let created = server.send(Method::POST, "/ina/fhir/Patient", &[("origin", app)], &person).await;
    created.expect(201);
    let exposed = created.header("access-control-expose-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(exposed.contains("location") && exposed.contains("etag"), "{exposed}");
}

both_backends!(
    if_match_guards_updates,
    conditional_reads,
    prefer_return,
    summary_and_elements,
    capability_statement_tells_the_truth,
    base_with_a_slash_and_lower_case_encodings,
    cors_only_for_registered_app_origins
);
