//! The SMART authorization server: discovery, SMART Backend Services (client_credentials
//! with signed JWT assertions), introspection and revocation — and every rule's refusal.

use axum::http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::both_backends;
use crate::support::{Backend, Reply, Server, BASE};

const RS384_KEY: &str = include_str!("../../demo/keys/ehr-ina-rs384.pem");
const ES384_KEY: &str = include_str!("../../demo/keys/ehr-ina-es384.pem");
const UNREGISTERED_KEY: &str = include_str!("../keys/unregistered-es384.pem");
const TOKEN_URL: &str = "http://renraku.test/ina/auth/token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A client assertion; `adjust` changes the claims before signing.
fn assertion(alg: Algorithm, key: &str, kid: Option<&str>, adjust: impl FnOnce(&mut Value)) -> String {
    let mut claims = json!({
        "iss": "demo-ehr-ina", "sub": "demo-ehr-ina", "aud": TOKEN_URL,
        "exp": now() + 240, "jti": uuid::Uuid::new_v4().to_string()
    });
    adjust(&mut claims);
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let key = match alg {
        Algorithm::RS384 => EncodingKey::from_rsa_pem(key.as_bytes()),
        _ => EncodingKey::from_ec_pem(key.as_bytes()),
    }
    .expect("key");
    jsonwebtoken::encode(&header, &claims, &key).expect("signed")
}

pub fn es384(adjust: impl FnOnce(&mut Value)) -> String {
    assertion(Algorithm::ES384, ES384_KEY, Some("ehr-ina-es384"), adjust)
}

async fn token_request(server: &Server, tenant: &str, form: &[(&str, &str)]) -> Reply {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    server
        .request(
            Method::POST,
            &format!("/{tenant}/auth/token"),
            &[("content-type", "application/x-www-form-urlencoded"), ("authorization", "none")],
            Some(body.into_bytes()),
        )
        .await
}

async fn client_credentials(server: &Server, assertion: &str, scope: &str) -> Reply {
    token_request(
        server,
        "ina",
        &[("grant_type", "client_credentials"), ("client_assertion_type", JWT_BEARER), ("client_assertion", assertion), ("scope", scope)],
    )
    .await
}

#[track_caller]
fn expect_oauth_error(reply: &Reply, status: u16, error: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
    assert_eq!(reply.json()["error"], error, "{}", reply.text());
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
}

async fn demo_server(backend: Backend) -> Server {
    Server::start_with(backend, |config| config.demo = true).await
}

async fn discovery(backend: Backend) {
    let server = demo_server(backend).await;
    let reply = server.get_with("/ina/fhir/.well-known/smart-configuration", &[("authorization", "none")]).await;
    reply.expect(200);
    let configuration = reply.json();
    assert_eq!(configuration["token_endpoint"], TOKEN_URL);
    assert_eq!(configuration["issuer"], format!("{BASE}/ina/auth"));
    assert_eq!(configuration["introspection_endpoint"], format!("{BASE}/ina/auth/introspect"));
    assert_eq!(configuration["revocation_endpoint"], format!("{BASE}/ina/auth/revoke"));
    assert_eq!(configuration["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(configuration["grant_types_supported"], json!(["authorization_code", "client_credentials", "refresh_token"]));
    assert!(configuration["capabilities"].as_array().is_some_and(|c| c.contains(&json!("client-confidential-asymmetric"))));
    server.get_with("/nowhere/fhir/.well-known/smart-configuration", &[("authorization", "none")]).await.expect(404);
    // The CapabilityStatement points at the same endpoints.
    let capability = server.get_with("/ina/fhir/metadata", &[("authorization", "none")]).await.json();
    let security = &capability["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let uris = &security["extension"][0]["extension"];
    assert!(uris.as_array().is_some_and(|u| u.contains(&json!({ "url": "token", "valueUri": TOKEN_URL }))));
}

async fn backend_services(backend: Backend) {
    let server = demo_server(backend).await;
    for signed in [assertion(Algorithm::RS384, RS384_KEY, Some("ehr-ina-rs384"), |_| {}), es384(|_| {})] {
        let reply = client_credentials(&server, &signed, "system/*.rs system/Observation.c user/*.cruds").await;
        reply.expect(200);
        assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
        let body = reply.json();
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 300);
        assert_eq!(body["scope"], "system/*.rs system/Observation.c", "user/ scopes are not for system clients");
        let token = body["access_token"].as_str().unwrap_or_default().to_owned();
        let bearer = format!("Bearer {token}");
        // The token acts for the hospital: its directory is readable, the person (whose team the
        // hospital is not on) is not; it is useless at another municipality's base.
        server.get_with("/ina/fhir/Organization/demo-ina-central-hospital", &[("authorization", &bearer)]).await.expect(200);
        server.get_with("/minamiminowa/fhir/Patient/demo-yamada-taro", &[("authorization", &bearer)]).await.expect(401);
        let hidden = server.get_with("/ina/fhir/Patient/demo-yamada-taro", &[("authorization", &bearer)]).await;
        hidden.expect(404);
        // Scopes were narrowed: no update.
        let body = json!({ "resourceType": "Organization", "id": "demo-ina-central-hospital", "name": "x" });
        server.send(Method::PUT, "/ina/fhir/Organization/demo-ina-central-hospital", &[("authorization", &bearer)], &body).await.expect(403);
    }
}

async fn assertion_rules(backend: Backend) {
    let server = demo_server(backend).await;
    let cases: Vec<(&str, String)> = vec![
        ("wrong aud", es384(|c| c["aud"] = json!("http://renraku.test/minowa/auth/token"))),
        ("iss is not sub", es384(|c| c["sub"] = json!("someone-else"))),
        ("unknown client", es384(|c| { c["iss"] = json!("nobody"); c["sub"] = json!("nobody"); })),
        ("expired", es384(|c| c["exp"] = json!(now() - 60))),
        ("more than five minutes ahead", es384(|c| c["exp"] = json!(now() + 600))),
        ("no jti", es384(|c| { c.as_object_mut().map(|o| o.remove("jti")); })),
        ("key not registered", assertion(Algorithm::ES384, UNREGISTERED_KEY, Some("ehr-ina-es384"), |_| {})),
        ("kid not registered", assertion(Algorithm::ES384, ES384_KEY, Some("other"), |_| {})),
        ("HS256 with a guessable secret", {
            let claims = json!({ "iss": "demo-ehr-ina", "sub": "demo-ehr-ina", "aud": TOKEN_URL, "exp": now() + 60, "jti": "x" });
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"secret")).expect("signed")
        }),
        ("alg none", {
            use base64::Engine;
            let encode = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            let claims = json!({ "iss": "demo-ehr-ina", "sub": "demo-ehr-ina", "aud": TOKEN_URL, "exp": now() + 60, "jti": "y" });
            format!("{}.{}.", encode(json!({ "alg": "none", "typ": "JWT" })), encode(claims))
        }),
        ("jku not registered", {
            let claims = json!({ "iss": "demo-ehr-ina", "sub": "demo-ehr-ina", "aud": TOKEN_URL, "exp": now() + 60, "jti": "z" });
            let mut header = Header::new(Algorithm::ES384);
            header.kid = Some("ehr-ina-es384".into());
            header.jku = Some("https://attacker.example/jwks.json".into());
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(ES384_KEY.as_bytes()).expect("key")).expect("signed")
        }),
        ("not a JWT", "garbage".to_owned()),
    ];
    let mut wrong = Vec::new();
    for (name, signed) in &cases {
        let reply = client_credentials(&server, signed, "system/*.rs").await;
        if reply.status.as_u16() != 401 || reply.json()["error"] != "invalid_client" {
            wrong.push(format!("{name}: {} {}", reply.status, reply.text()));
        }
    }
    assert!(wrong.is_empty(), "accepted or wrongly refused:\n{}", wrong.join("\n"));
    // A replayed assertion is refused the second time.
    let once = es384(|_| {});
    client_credentials(&server, &once, "system/*.rs").await.expect(200);
    expect_oauth_error(&client_credentials(&server, &once, "system/*.rs").await, 401, "invalid_client");
    // The other RFC 6749 errors.
    expect_oauth_error(&client_credentials(&server, &es384(|_| {}), "user/*.rs launch").await, 400, "invalid_scope");
    expect_oauth_error(&client_credentials(&server, &es384(|_| {}), "system/Patient.sr").await, 400, "invalid_scope");
    let wrong_grant = token_request(&server, "ina", &[("grant_type", "password"), ("username", "x")]).await;
    expect_oauth_error(&wrong_grant, 400, "unsupported_grant_type");
    let wrong_type = token_request(&server, "ina", &[("grant_type", "client_credentials"), ("client_assertion", &es384(|_| {}))]).await;
    expect_oauth_error(&wrong_type, 401, "invalid_client");
    // The client is registered at 伊那市 only.
    let elsewhere = token_request(
        &server,
        "minowa",
        &[("grant_type", "client_credentials"), ("client_assertion_type", JWT_BEARER), ("client_assertion", &es384(|_| {})), ("scope", "system/*.rs")],
    )
    .await;
    expect_oauth_error(&elsewhere, 401, "invalid_client");
    let json_body = server
        .request(Method::POST, "/ina/auth/token", &[("content-type", "application/json"), ("authorization", "none")], Some(b"{}".to_vec()))
        .await;
    expect_oauth_error(&json_body, 400, "invalid_request");
}

async fn introspection_and_revocation(backend: Backend) {
    let server = demo_server(backend).await;
    let issued = client_credentials(&server, &es384(|_| {}), "system/*.rs").await.json();
    let token = issued["access_token"].as_str().unwrap_or_default().to_owned();
    let form = |token: &str| url::form_urlencoded::Serializer::new(String::new()).append_pair("token", token).finish().into_bytes();
    let post = |path: &'static str, bearer: Option<String>, body: Vec<u8>| {
        let server = &server;
        async move {
            let authorization = bearer.map(|b| format!("Bearer {b}")).unwrap_or_else(|| "none".into());
            server
                .request(Method::POST, path, &[("content-type", "application/x-www-form-urlencoded"), ("authorization", &authorization)], Some(body))
                .await
        }
    };
    let caller = Some("demo-ehr-ina".to_owned());
    let active = post("/ina/auth/introspect", caller.clone(), form(&token)).await;
    active.expect(200);
    let info = active.json();
    assert_eq!(info["active"], true);
    assert_eq!(info["scope"], "system/*.rs");
    assert_eq!(info["client_id"], "demo-ehr-ina");
    assert_eq!(info["sub"], "demo-ehr-ina");
    assert!(info["exp"].as_i64().is_some_and(|exp| exp > now() && exp <= now() + 301));
    let doctor = post("/ina/auth/introspect", caller.clone(), form("demo-doctor-ina")).await.json();
    assert_eq!(doctor["fhirUser"], format!("{BASE}/ina/fhir/PractitionerRole/demo-role-dr-tanaka"));
    assert_eq!(post("/ina/auth/introspect", caller.clone(), form("not-a-token")).await.json(), json!({ "active": false }));
    assert_eq!(post("/ina/auth/introspect", caller.clone(), form("demo-nurse-minowa")).await.json(), json!({ "active": false }), "another municipality's token");
    expect_oauth_error(&post("/ina/auth/introspect", None, form(&token)).await, 401, "invalid_client");
    post("/ina/auth/revoke", None, form(&token)).await.expect(200);
    post("/ina/auth/revoke", None, form("never-issued")).await.expect(200);
    assert_eq!(post("/ina/auth/introspect", caller, form(&token)).await.json(), json!({ "active": false }));
    server.get_with("/ina/fhir/Organization", &[("authorization", &format!("Bearer {token}"))]).await.expect(401);
    // An expired token is refused like a revoked one.
    let grant = renraku::auth::tokens::TokenGrant {
        tenant: "ina".into(),
        actor: renraku::identity::Actor::System { tenant: "ina".into(), client: "demo-ehr-ina".into(), organization: "demo-ina-central-hospital".into(), maintains_directory: false },
        scopes: renraku::identity::scopes::Scopes::parse("system/*.rs").expect("scopes"),
        patient: None,
        client_id: "demo-ehr-ina".into(),
        lifetime: chrono::Duration::seconds(-1),
    };
    let mut connection = server.fhir().store.connection().await.expect("connection");
    let expired = renraku::auth::tokens::issue(&mut connection, chrono::Utc::now(), &grant).await.expect("issued").access_token;
    drop(connection);
    server.get_with("/ina/fhir/Organization", &[("authorization", &format!("Bearer {expired}"))]).await.expect(401);
    assert_eq!(post("/ina/auth/introspect", Some("demo-ehr-ina".into()), form(&expired)).await.json(), json!({ "active": false }));
}

pub async fn request_token(server: &Server, tenant: &str, assertion: String) -> Reply {
    let form = [
        ("grant_type", "client_credentials".to_owned()),
        ("client_assertion_type", JWT_BEARER.to_owned()),
        ("client_assertion", assertion),
        ("scope", "system/*.rs".to_owned()),
    ];
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let headers = [("content-type", "application/x-www-form-urlencoded"), ("authorization", "none")];
    server.request(Method::POST, &format!("/{tenant}/auth/token"), &headers, Some(body.into_bytes())).await
}

/// Municipal administrators register their municipality's clients at run time; the
/// registration survives restarts and can be removed.
async fn client_registration(backend: Backend) {
    let server = demo_server(backend).await;
    let registration = json!({
        "client_id": "mm-care-system", "tenant": "minamiminowa", "kind": "system", "name": "居宅介護支援システム",
        "organization": "demo-mm-care-office", "scopes": "system/*.rs",
        "jwks": serde_json::from_str::<Value>(include_str!("../../demo/keys/ehr-ina-jwks.json")).expect("jwks")
    });
    let send = |token: &'static str, body: Value| {
        let server = &server;
        async move {
            let authorization = if token == "none" { "none".to_owned() } else { format!("Bearer {token}") };
            server.send(Method::POST, "/admin/clients", &[("authorization", &authorization)], &body).await
        }
    };
    send("none", registration.clone()).await.expect(401);
    send("demo-doctor-ina", registration.clone()).await.expect(403);
    send("demo-admin-minamiminowa", json!({ "client_id": "x", "tenant": "ina", "kind": "public", "redirect_uris": ["https://a.example/cb"] })).await.expect(403);
    let mut keyless = registration.clone();
    keyless.as_object_mut().map(|r| r.remove("jwks"));
    send("demo-admin-minamiminowa", keyless).await.expect(400);
    send("demo-admin-minamiminowa", registration.clone()).await.expect(201);
    send("demo-operator", registration.clone()).await.expect(409);
    let listed = server
        .request(Method::GET, "/admin/clients?tenant=minamiminowa", &[("authorization", "Bearer demo-admin-minamiminowa")], None)
        .await;
    assert!(listed.json()["clients"].as_array().is_some_and(|c| c.iter().any(|c| c["client_id"] == "mm-care-system")));
    let token_url = "http://renraku.test/minamiminowa/auth/token";
    let assertion_for = || es384(|c| {
        c["iss"] = json!("mm-care-system");
        c["sub"] = json!("mm-care-system");
        c["aud"] = json!(token_url);
    });
    // Dual control: the municipality's registration waits for the server administrator.
    expect_oauth_error(&request_token(&server, "minamiminowa", assertion_for()).await, 400, "unauthorized_client");
    let approve = |token: &'static str| {
        let server = &server;
        async move {
            server.request(Method::POST, "/admin/clients/minamiminowa/mm-care-system/approve", &[("authorization", &format!("Bearer {token}"))], None).await
        }
    };
    approve("demo-admin-minamiminowa").await.expect(403);
    let approved = approve("demo-operator").await;
    approved.expect(200);
    assert_eq!(approved.json()["approval"]["approved_by"]["kind"], "server", "{}", approved.text());
    approve("demo-operator").await.expect(404);
    let issued = request_token(&server, "minamiminowa", assertion_for()).await;
    issued.expect(200);
    // The care office registered 山田 太郎: its system reads his registration.
    let bearer = format!("Bearer {}", issued.json()["access_token"].as_str().unwrap_or_default());
    server.get_with("/minamiminowa/fhir/Patient/demo-yamada-taro", &[("authorization", &bearer)]).await.expect(200);
    let server = server.restart_with(|_| {}).await;
    let reissued = request_token(&server, "minamiminowa", assertion_for()).await;
    reissued.expect(200);
    let bearer = format!("Bearer {}", reissued.json()["access_token"].as_str().unwrap_or_default());
    server.get_with("/minamiminowa/fhir/Patient/demo-yamada-taro", &[("authorization", &bearer)]).await.expect(200);
    let removed = server
        .request(Method::DELETE, "/admin/clients/minamiminowa/mm-care-system", &[("authorization", "Bearer demo-admin-minamiminowa")], None)
        .await;
    removed.expect(204);
    expect_oauth_error(&request_token(&server, "minamiminowa", assertion_for()).await, 401, "invalid_client");
    // The token it held stops working with the registration.
    server.get_with("/minamiminowa/fhir/Patient/demo-yamada-taro", &[("authorization", &bearer)]).await.expect(401);
}

/// A client whose keys are published at a URL: fetched at each token request.
async fn keys_by_url(backend: Backend) {
    let jwks: Value = serde_json::from_str(include_str!("../../demo/keys/ehr-ina-jwks.json")).expect("jwks");
    let app = axum::Router::new().route("/jwks.json", axum::routing::get(move || async move { axum::Json(jwks) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
    let address = listener.local_addr().expect("address");
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    let jwks_url = format!("http://{address}/jwks.json");
    let registered_url = jwks_url.clone();
    let server = Server::start_with(backend, move |config| {
        config.demo = true;
        config.clients.push(renraku::identity::clients::ClientConfig {
            client_id: "url-keyed".into(),
            tenant: "ina".into(),
            kind: renraku::identity::clients::ClientKind::System,
            name: String::new(),
            organization: Some("demo-ina-central-hospital".into()),
            redirect_uris: Vec::new(),
            scopes: "system/*.rs".into(),
            jwks: None,
            jwks_url: Some(registered_url),
            jwks_file: None,
            grant_types: Vec::new(),
            roles: Vec::new(),
            maintains_directory: false,
            approval: None,
        });
    })
    .await;
    let signed = |jku: Option<&str>| {
        let claims = json!({ "iss": "url-keyed", "sub": "url-keyed", "aud": TOKEN_URL, "exp": now() + 60, "jti": uuid::Uuid::new_v4().to_string() });
        let mut header = Header::new(Algorithm::RS384);
        header.kid = Some("ehr-ina-rs384".into());
        header.jku = jku.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(RS384_KEY.as_bytes()).expect("key")).expect("signed")
    };
    client_credentials(&server, &signed(None), "system/*.rs").await.expect(200);
    client_credentials(&server, &signed(Some(&jwks_url)), "system/*.rs").await.expect(200);
    expect_oauth_error(&client_credentials(&server, &signed(Some("http://127.0.0.1:1/other.json")), "system/*.rs").await, 401, "invalid_client");
    serving.abort();
    let _ = serving.await;
    expect_oauth_error(&client_credentials(&server, &signed(None), "system/*.rs").await, 401, "invalid_client");
}

both_backends!(discovery, backend_services, assertion_rules, introspection_and_revocation, client_registration, keys_by_url, granular_scopes);

/// SMART v2 granular scopes: `patient/Observation.rs?category=…laboratory` reaches the
/// person's laboratory results and nothing else, for reads, searches and writes.
async fn granular_scopes(backend: Backend) {
    let server = demo_server(backend).await;
    let category = "http://terminology.hl7.org/CodeSystem/observation-category";
    let observation = |kind: &str| {
        json!({
            "resourceType": "Observation", "status": "final",
            "category": [{ "coding": [{ "system": category, "code": kind }] }],
            "code": { "text": kind }, "subject": { "reference": "Patient/demo-yamada-taro" }
        })
    };
    let lab = server.create("minamiminowa", &observation("laboratory")).await;
    let vital = server.create("minamiminowa", &observation("vital-signs")).await;
    let doctor = renraku::identity::Actor::Practitioner {
        tenant: "ina".into(),
        practitioner: "demo-dr-tanaka".into(),
        role: "demo-role-dr-tanaka".into(),
        organization: "demo-ina-central-hospital".into(),
    };
    let scopes = format!("patient/Observation.rs?category={category}|laboratory patient/Observation.c?category={category}|laboratory patient/Patient.r");
    let token = server.token("ina", doctor.clone(), &scopes, Some("demo-yamada-taro")).await;
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    let found = server.get_with("/ina/fhir/Observation?_total=accurate", &auth).await;
    found.expect(200);
    assert_eq!(found.json()["total"], 1);
    assert_eq!(found.json()["entry"][0]["resource"]["id"], lab);
    server.get_with(&format!("/ina/fhir/Observation/{lab}"), &auth).await.expect(200);
    server.get_with(&format!("/ina/fhir/Observation/{vital}"), &auth).await.expect(404);
    let everything = server.get_with("/ina/fhir/Patient/demo-yamada-taro/$everything", &[("authorization", &format!("Bearer {}", server.token("ina", doctor.clone(), &format!("{scopes} patient/Patient.s"), Some("demo-yamada-taro")).await))]).await;
    assert!(everything.text().contains(&lab) && !everything.text().contains(&vital), "{}", everything.text());
    server.send(Method::POST, "/ina/fhir/Observation", &auth, &observation("laboratory")).await.expect(201);
    server.send(Method::POST, "/ina/fhir/Observation", &auth, &observation("vital-signs")).await.expect(403);
    // A query the server cannot apply grants nothing.
    let odd = server.token("ina", doctor, "patient/Observation.rs?no-such-parameter=1", Some("demo-yamada-taro")).await;
    let none = server.get_with("/ina/fhir/Observation", &[("authorization", &format!("Bearer {odd}"))]).await;
    none.expect(200);
    assert!(none.json()["entry"].as_array().is_none_or(Vec::is_empty));
}

