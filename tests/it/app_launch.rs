//! SMART App Launch (standalone) on the demo: /authorize with PKCE, the demo's built-in
//! sign-in, consent with a scope downgrade and the patient picker, the code exchange,
//! id_token, refresh-token rotation and reuse detection — and the refusals.

use axum::http::Method;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::both_backends;
use crate::support::{Backend, Reply, Server, BASE};

const REDIRECT: &str = "http://127.0.0.1:9000/callback";

/// A case name, the expected OAuth error, and the authorize parameters it changes.
type RefusalCase = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

pub fn pkce() -> Pkce {
    let verifier = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce { verifier, challenge }
}

fn query(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

pub async fn form(server: &Server, path: &str, pairs: &[(&str, &str)]) -> Reply {
    server
        .request(
            Method::POST,
            path,
            &[("content-type", "application/x-www-form-urlencoded"), ("authorization", "none")],
            Some(query(pairs).into_bytes()),
        )
        .await
}

pub fn authorize_url(tenant: &str, scope: &str, challenge: &str, extra: &[(&str, &str)]) -> String {
    let aud = format!("{BASE}/{tenant}/fhir");
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", "demo-app"),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "state-31415"),
        ("aud", aud.as_str()),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("nonce", "nonce-2718"),
    ];
    for (name, value) in extra {
        pairs.retain(|(n, _)| n != name);
        if !value.is_empty() {
            pairs.push((name, value));
        }
    }
    format!("/{tenant}/auth/authorize?{}", query(&pairs))
}

/// The value of a page's hidden form field `name`.
pub fn hidden(page: &Reply, name: &str) -> String {
    let text = page.text();
    let marker = format!("name=\"{name}\" value=\"");
    let start = text.find(&marker).map(|i| i + marker.len()).unwrap_or_else(|| panic!("no {name} in {text}"));
    text[start..].split('"').next().unwrap_or_default().to_owned()
}

/// A browser's part of a sign-in: the cookie `/authorize` set, and the request id and CSRF
/// token of its forms, sent back with every step as a browser would.
pub struct Browser {
    pub cookie: String,
    pub request: String,
    pub csrf: String,
}

impl Browser {
    /// Opens the authorize URL (the demo's sign-in page) in a fresh browser.
    pub async fn open(server: &Server, url: &str) -> (Browser, Reply) {
        let page = server.get_with(url, &[("authorization", "none")]).await;
        page.expect(200);
        let browser = Browser { cookie: set_cookie(&page), request: hidden(&page, "request"), csrf: hidden(&page, "csrf") };
        (browser, page)
    }

    /// Submits one of the sign-in's forms with `fields`, as this browser.
    pub async fn submit(&self, server: &Server, path: &str, fields: &[(&str, &str)]) -> Reply {
        let mut pairs = vec![("request", self.request.as_str()), ("csrf", self.csrf.as_str())];
        pairs.extend_from_slice(fields);
        let headers = [("content-type", "application/x-www-form-urlencoded"), ("authorization", "none"), ("cookie", self.cookie.as_str())];
        server.request(Method::POST, path, &headers, Some(query(&pairs).into_bytes())).await
    }
}

/// The `name=value` of the browser-binding cookie a reply sets, checking its attributes.
pub fn set_cookie(reply: &Reply) -> String {
    let header = reply.header("set-cookie").unwrap_or_else(|| panic!("no cookie set: {:?}", reply.headers));
    assert!(header.contains("HttpOnly") && header.contains("SameSite=Lax") && header.contains("Path=/"), "{header}");
    header.split(';').next().unwrap_or_default().to_owned()
}

pub fn redirect_params(reply: &Reply) -> Vec<(String, String)> {
    assert_eq!(reply.status.as_u16(), 303, "{}", reply.text());
    let location = reply.header("location").unwrap_or_default();
    assert!(location.starts_with(REDIRECT), "{location}");
    url::Url::parse(&location).map(|u| u.query_pairs().into_owned().collect()).unwrap_or_default()
}

pub fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

/// Runs authorize → sign-in → consent and returns the redirect's parameters.
pub async fn launch(server: &Server, tenant: &str, user: &str, scope: &str, pkce: &Pkce, granted: &[&str], patient: Option<&str>) -> Vec<(String, String)> {
    let (browser, page) = Browser::open(server, &authorize_url(tenant, scope, &pkce.challenge, &[])).await;
    assert!(page.text().contains("DEMO ONLY"));
    let consent = browser.submit(server, &format!("/{tenant}/auth/login"), &[("user", user)]).await;
    consent.expect(200);
    let mut pairs: Vec<(&str, &str)> = vec![("decision", "allow")];
    pairs.extend(granted.iter().map(|s| ("scope", *s)));
    if let Some(patient) = patient {
        pairs.push(("patient", patient));
    }
    redirect_params(&browser.submit(server, &format!("/{tenant}/auth/consent"), &pairs).await)
}

pub async fn exchange(server: &Server, tenant: &str, code: &str, verifier: &str) -> Reply {
    form(
        server,
        &format!("/{tenant}/auth/token"),
        &[("grant_type", "authorization_code"), ("code", code), ("redirect_uri", REDIRECT), ("client_id", "demo-app"), ("code_verifier", verifier)],
    )
    .await
}

fn verify_id_token(id_token: &str, jwks: &Value) -> Value {
    let header = jsonwebtoken::decode_header(id_token).expect("id_token header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).expect("jwks");
    let jwk = set.find(header.kid.as_deref().unwrap_or_default()).expect("the id_token's key is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["demo-app"]);
    validation.set_issuer(&[format!("{BASE}/ina/auth")]);
    jsonwebtoken::decode::<Value>(id_token, &key, &validation).expect("id_token verifies").claims
}

async fn standalone_launch(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let pkce = pkce();
    let asked = "openid fhirUser launch/patient offline_access patient/*.rs patient/Communication.c user/*.cruds";
    // The doctor grants less than asked: no user/ scopes, no offline access.
    let granted = ["openid", "fhirUser", "launch/patient", "patient/*.rs", "patient/Communication.c", "online_access"];
    let redirect = launch(&server, "ina", "demo-doctor-ina", asked, &pkce, &granted, Some("demo-yamada-taro")).await;
    assert_eq!(param(&redirect, "state").as_deref(), Some("state-31415"), "state is echoed");
    let code = param(&redirect, "code").expect("a code");
    let reply = exchange(&server, "ina", &code, &pkce.verifier).await;
    reply.expect(200);
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    let tokens = reply.json();
    assert_eq!(tokens["scope"], "patient/*.rs patient/Communication.c openid fhirUser launch/patient", "{tokens}");
    assert_eq!(tokens["patient"], "demo-yamada-taro");
    assert_eq!(tokens["need_patient_banner"], true);
    assert_eq!(tokens["smart_style_url"], format!("{BASE}/ina/auth/smart-style.json"));
    assert_eq!(tokens["expires_in"], 3600);
    assert!(tokens.get("refresh_token").is_none(), "online_access was not offered (not asked), offline_access was declined");
    let jwks = server.get_with("/ina/auth/jwks", &[("authorization", "none")]).await.json();
    let claims = verify_id_token(tokens["id_token"].as_str().unwrap_or_default(), &jwks);
    assert_eq!(claims["fhirUser"], format!("{BASE}/ina/fhir/PractitionerRole/demo-role-dr-tanaka"));
    assert_eq!(claims["nonce"], "nonce-2718");
    // The token reads the picked person's data through the policy, and writes on the board.
    let bearer = format!("Bearer {}", tokens["access_token"].as_str().unwrap_or_default());
    server.get_with("/ina/fhir/Patient/demo-yamada-taro", &[("authorization", &bearer)]).await.expect(200);
    let board = server.get_with("/ina/fhir/Communication?subject=Patient/demo-yamada-taro", &[("authorization", &bearer)]).await;
    assert_eq!(board.json()["entry"].as_array().map(Vec::len), Some(2));
    let note = json!({ "resourceType": "Communication", "status": "completed", "subject": { "reference": "Patient/demo-yamada-taro" },
                       "payload": [{ "contentString": "アプリから記録" }] });
    server.send(Method::POST, "/ina/fhir/Communication", &[("authorization", &bearer)], &note).await.expect(201);
    server.send(Method::POST, "/ina/fhir/Observation", &[("authorization", &bearer)], &json!({ "resourceType": "Observation" })).await.expect(403);
    // A code works once.
    let again = exchange(&server, "ina", &code, &pkce.verifier).await;
    again.expect(400);
    assert_eq!(again.json()["error"], "invalid_grant");
    // The token is for 伊那市's base only.
    server.get_with("/minamiminowa/fhir/Patient/demo-yamada-taro", &[("authorization", &bearer)]).await.expect(401);
}

async fn refresh_rotation(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let pkce = pkce();
    let scope = "openid fhirUser offline_access user/*.rs";
    let redirect = launch(&server, "ina", "demo-doctor-ina", scope, &pkce, &["openid", "fhirUser", "offline_access", "user/*.rs"], None).await;
    let first = exchange(&server, "ina", &param(&redirect, "code").unwrap_or_default(), &pkce.verifier).await.json();
    let refresh_1 = first["refresh_token"].as_str().expect("offline_access gives a refresh token").to_owned();
    let refresh = |token: String| {
        let server = &server;
        async move { form(server, "/ina/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &token), ("client_id", "demo-app")]).await }
    };
    // Asking for more than was granted at refresh time gets no more.
    let wider = form(&server, "/ina/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &refresh_1), ("client_id", "demo-app"), ("scope", "user/*.cruds offline_access")]).await;
    wider.expect(200);
    assert_eq!(wider.json()["scope"], "user/*.rs offline_access", "a refresh never widens the grant");
    let refresh_1 = wider.json()["refresh_token"].as_str().unwrap_or_default().to_owned();
    let second = refresh(refresh_1.clone()).await;
    second.expect(200);
    let refresh_2 = second.json()["refresh_token"].as_str().unwrap_or_default().to_owned();
    assert_ne!(refresh_2, refresh_1, "refresh tokens rotate");
    let access = second.json()["access_token"].as_str().unwrap_or_default().to_owned();
    server.get_with("/ina/fhir/Patient/demo-yamada-taro", &[("authorization", &format!("Bearer {access}"))]).await.expect(200);
    // Reusing the rotated token revokes the family: the newer one stops working too.
    let reused = refresh(refresh_1).await;
    reused.expect(400);
    assert_eq!(reused.json()["error"], "invalid_grant");
    refresh(refresh_2).await.expect(400);
}

async fn launch_refusals(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let pkce = pkce();
    let anonymous = [("authorization", "none")];
    // Errors the app cannot be told about: an OperationOutcome, no redirect.
    let unregistered = server.get_with(&authorize_url("ina", "openid", &pkce.challenge, &[("redirect_uri", "https://evil.example/cb")]), &anonymous).await;
    unregistered.expect(400);
    assert_eq!(unregistered.json()["resourceType"], "OperationOutcome");
    server.get_with(&authorize_url("ina", "openid", &pkce.challenge, &[("client_id", "demo-ehr-ina")]), &anonymous).await.expect(400);
    // Errors sent back to the app, with its state.
    let cases: [RefusalCase; 4] = [
        ("missing PKCE", "invalid_request", &[("code_challenge", "")]),
        ("plain PKCE", "invalid_request", &[("code_challenge_method", "plain")]),
        ("aud of another municipality", "invalid_request", &[("aud", "http://renraku.test/minowa/fhir")]),
        ("token response type", "unsupported_response_type", &[("response_type", "token")]),
    ];
    for (name, error, extra) in cases {
        let reply = server.get_with(&authorize_url("ina", "openid", &pkce.challenge, extra), &anonymous).await;
        let params = redirect_params(&reply);
        assert_eq!(param(&params, "error").as_deref(), Some(error), "{name}");
        assert_eq!(param(&params, "state").as_deref(), Some("state-31415"), "{name}");
    }
    // A wrong verifier, and a code for another redirect URI.
    let redirect = launch(&server, "ina", "demo-doctor-ina", "user/*.rs", &pkce, &["user/*.rs"], None).await;
    let code = param(&redirect, "code").unwrap_or_default();
    let wrong = exchange(&server, "ina", &code, &"x".repeat(64)).await;
    wrong.expect(400);
    assert_eq!(wrong.json()["error"], "invalid_grant");
    // Declining sends access_denied with the state.
    let (browser, _) = Browser::open(&server, &authorize_url("ina", "user/*.rs", &pkce.challenge, &[])).await;
    browser.submit(&server, "/ina/auth/login", &[("user", "demo-doctor-ina")]).await.expect(200);
    let denied = redirect_params(&browser.submit(&server, "/ina/auth/consent", &[("decision", "deny")]).await);
    assert_eq!(param(&denied, "error").as_deref(), Some("access_denied"));
    // The patient picker lists only persons the user may access: the nurse of 箕輪町 has none.
    let (browser, _) = Browser::open(&server, &authorize_url("minowa", "launch/patient patient/*.rs", &pkce.challenge, &[])).await;
    let consent = browser.submit(&server, "/minowa/auth/login", &[("user", "demo-nurse-minowa")]).await;
    consent.expect(200);
    assert!(!consent.text().contains("demo-yamada-taro"));
    let picked = browser.submit(&server, "/minowa/auth/consent", &[("decision", "allow"), ("scope", "launch/patient"), ("scope", "patient/*.rs"), ("patient", "demo-yamada-taro")]).await;
    picked.expect(400);
    // Outside demo mode there is no built-in sign-in.
    let server = Server::start_with(backend, |config| {
        config.clients = renraku::auth::server::demo_clients();
    })
    .await;
    server.get_with(&authorize_url("ina", "openid", &pkce.challenge, &[]), &anonymous).await.expect(503);
    form(&server, "/ina/auth/login", &[("request", "x"), ("user", "demo-doctor-ina")]).await.expect(404);
}

async fn signing_keys_rotate(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let before = server.get_with("/ina/auth/jwks", &[("authorization", "none")]).await.json();
    assert_eq!(before["keys"].as_array().map(Vec::len), Some(1));
    let old_kid = before["keys"][0]["kid"].clone();
    let rotate = |token: &'static str| {
        let server = &server;
        async move { server.request(Method::POST, "/admin/signing-keys/rotate", &[("authorization", token)], None).await }
    };
    rotate("Bearer demo-admin-minamiminowa").await.expect(403);
    let rotated = rotate("Bearer demo-operator").await;
    rotated.expect(200);
    let new_kid = rotated.json()["kid"].as_str().unwrap_or_default().to_owned();
    let after = server.get_with("/ina/auth/jwks", &[("authorization", "none")]).await.json();
    let kids: Vec<Value> = after["keys"].as_array().into_iter().flatten().map(|k| k["kid"].clone()).collect();
    assert!(kids.contains(&old_kid) && kids.contains(&json!(new_kid)), "both keys are published during the grace period: {kids:?}");
    let configuration = server.get_with("/ina/auth/.well-known/openid-configuration", &[("authorization", "none")]).await.json();
    assert_eq!(configuration["jwks_uri"], format!("{BASE}/ina/auth/jwks"));
    assert_eq!(configuration["id_token_signing_alg_values_supported"], json!(["RS256"]));
}

async fn mint(server: &Server, token: &str, patient: &str) -> Reply {
    let authorization = if token == "none" { "none".to_owned() } else { format!("Bearer {token}") };
    server
        .request(
            Method::POST,
            "/ina/auth/launch",
            &[("content-type", "application/x-www-form-urlencoded"), ("authorization", &authorization)],
            Some(query(&[("patient", patient)]).into_bytes()),
        )
        .await
}

/// EHR launch: the EHR (here the doctor's own session) mints a `launch` value bound to the
/// person on screen; the app's token carries that patient without a picker.
async fn ehr_launch(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    mint(&server, "none", "demo-yamada-taro").await.expect(401);
    // The hospital's EHR client acts for the hospital, which is not on his team: as for a read, 404.
    mint(&server, "demo-ehr-ina", "demo-yamada-taro").await.expect(404);
    let minted = mint(&server, "demo-doctor-ina", "demo-yamada-taro").await;
    minted.expect(200);
    let launch_value = minted.json()["launch"].as_str().unwrap_or_default().to_owned();
    let pkce = pkce();
    let scope = "launch openid fhirUser patient/*.rs";
    let (browser, _) = Browser::open(&server, &authorize_url("ina", scope, &pkce.challenge, &[("launch", &launch_value)])).await;
    let consent = browser.submit(&server, "/ina/auth/login", &[("user", "demo-doctor-ina")]).await;
    consent.expect(200);
    assert!(consent.text().contains("Patient/demo-yamada-taro") && !consent.text().contains("type=\"radio\""), "{}", consent.text());
    let approved = browser.submit(&server, "/ina/auth/consent", &[("decision", "allow"), ("scope", "launch"), ("scope", "patient/*.rs")]).await;
    let code = param(&redirect_params(&approved), "code").unwrap_or_default();
    let tokens = exchange(&server, "ina", &code, &pkce.verifier).await;
    tokens.expect(200);
    assert_eq!(tokens.json()["patient"], "demo-yamada-taro");
    assert_eq!(tokens.json()["scope"], "patient/*.rs launch");
    // A launch value works once.
    let reused = server.get_with(&authorize_url("ina", scope, &pkce.challenge, &[("launch", &launch_value)]), &[("authorization", "none")]).await;
    assert_eq!(param(&redirect_params(&reused), "error").as_deref(), Some("invalid_request"));
}

/// A confidential app authenticates at the token endpoint with a signed assertion, and may
/// use only the grant types it is registered for.
async fn confidential_app(backend: Backend) {
    let server = Server::start_with(backend, |config| {
        config.demo = true;
        config.clients.push(renraku::identity::clients::ClientConfig {
            client_id: "confidential-app".into(),
            tenant: "ina".into(),
            kind: renraku::identity::clients::ClientKind::ConfidentialAsymmetric,
            name: "院内アプリ".into(),
            organization: None,
            redirect_uris: vec![REDIRECT.into()],
            scopes: "openid fhirUser offline_access user/*.rs".into(),
            jwks: Some(serde_json::from_str(include_str!("../../demo/keys/ehr-ina-jwks.json")).expect("jwks")),
            jwks_url: None,
            jwks_file: None,
            grant_types: vec!["authorization_code".into()],
            roles: Vec::new(),
            maintains_directory: false,
            approval: None,
        });
    })
    .await;
    let pkce = pkce();
    let (browser, _) = Browser::open(&server, &authorize_url("ina", "user/*.rs offline_access", &pkce.challenge, &[("client_id", "confidential-app")])).await;
    browser.submit(&server, "/ina/auth/login", &[("user", "demo-doctor-ina")]).await.expect(200);
    let approved = browser.submit(&server, "/ina/auth/consent", &[("decision", "allow"), ("scope", "user/*.rs"), ("scope", "offline_access")]).await;
    let code = param(&redirect_params(&approved), "code").unwrap_or_default();
    let assertion = || {
        let claims = json!({ "iss": "confidential-app", "sub": "confidential-app", "aud": format!("{BASE}/ina/auth/token"),
                             "exp": chrono::Utc::now().timestamp() + 60, "jti": uuid::Uuid::new_v4().to_string() });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
        header.kid = Some("ehr-ina-es384".into());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(include_str!("../../demo/keys/ehr-ina-es384.pem").as_bytes()).expect("key");
        jsonwebtoken::encode(&header, &claims, &key).expect("signed")
    };
    let jwt_bearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    // Without its assertion the app is not authenticated.
    let unauthenticated = form(&server, "/ina/auth/token", &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT), ("client_id", "confidential-app"), ("code_verifier", &pkce.verifier)]).await;
    unauthenticated.expect(401);
    let signed = assertion();
    let tokens = form(&server, "/ina/auth/token", &[
        ("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT), ("code_verifier", &pkce.verifier),
        ("client_assertion_type", jwt_bearer), ("client_assertion", &signed),
    ]).await;
    tokens.expect(200);
    let refresh_token = tokens.json()["refresh_token"].as_str().unwrap_or_default().to_owned();
    // Registered for authorization_code only: no refreshing.
    let signed = assertion();
    let refused = form(&server, "/ina/auth/token", &[
        ("grant_type", "refresh_token"), ("refresh_token", &refresh_token), ("client_assertion_type", jwt_bearer), ("client_assertion", &signed),
    ]).await;
    refused.expect(400);
    assert_eq!(refused.json()["error"], "unauthorized_client");
}

both_backends!(standalone_launch, refresh_rotation, launch_refusals, signing_keys_rotate, ehr_launch, confidential_app);
