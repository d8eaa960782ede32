//! Login through the municipality's own OpenID Provider — a real one (`oidc-provider`),
//! not a fake: the app's /authorize sends the browser there, the professional signs in
//! (with or without a second factor), the provider sends them back, Renraku verifies the
//! id_token, maps the subject to the directory's Practitioner and continues to consent.

use axum::http::Method;
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::both_backends;
use crate::openid_provider::OpenIdProvider;
use crate::support::{Backend, Reply, Server, BASE};

const SUBJECT_SYSTEM: &str = "https://idp.ina.example.jp/sub";
const REDIRECT: &str = "http://127.0.0.1:9000/callback";

/// 伊那市's provider as the test's OpenID Provider serves it: no second factor required,
/// no roles mapped.
fn ina_login(issuer: String) -> renraku::config::UpstreamLogin {
    renraku::config::UpstreamLogin {
        issuer,
        client_id: "renraku".into(),
        client_secret: Some("renraku-test-secret".into()),
        subject_system: SUBJECT_SYSTEM.into(),
        require_mfa: false,
        mfa_acr_values: Vec::new(),
        roles: Default::default(),
    }
}

async fn gateway(backend: Backend, provider: &OpenIdProvider) -> Server {
    let issuer = provider.issuer.clone();
    let server = Server::start_with(backend, move |config| {
        config.demo = true;
        if let Some(ina) = config.tenants.iter_mut().find(|t| t.slug == "ina") {
            ina.login = Some(renraku::config::UpstreamLogin {
                require_mfa: true,
                mfa_acr_values: vec!["urn:renraku:mfa".into()],
                ..ina_login(issuer)
            });
        }
    })
    .await;
    // The directory links the doctor to his account at 伊那市's identity provider.
    let mut doctor = server.get("/ina/fhir/Practitioner/demo-dr-tanaka").await.json();
    doctor["identifier"] = json!([{ "system": SUBJECT_SYSTEM, "value": "tanaka-0001" }]);
    server.put("/ina/fhir/Practitioner/demo-dr-tanaka", &doctor).await.expect(200);
    server
}

/// Follows the browser through the provider (a cookie-keeping client), signing in as
/// `account`, until the provider redirects back to Renraku; returns that callback path.
async fn sign_in_at_provider(provider_url: &str, account: &str, second_factor: bool, roles: &str) -> String {
    let browser = reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let mut url = provider_url.to_owned();
    let mut signed_in = false;
    for _ in 0..12 {
        if url.starts_with(BASE) {
            return url.trim_start_matches(BASE).to_owned();
        }
        let response = browser.get(&url).send().await.expect("provider answers");
        let response = if response.status().is_success() && !signed_in {
            signed_in = true;
            let form = [("login", account), ("mfa", if second_factor { "1" } else { "0" }), ("roles", roles)];
            browser.post(&url).form(&form).send().await.expect("sign-in posts")
        } else {
            response
        };
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let Some(location) = location else { panic!("the provider stopped at {url}: {}", response.status()) };
        url = if location.starts_with("http") { location } else { format!("{}{location}", url.split('/').take(3).collect::<Vec<_>>().join("/")) };
    }
    panic!("the provider never redirected back");
}

fn authorize_path(client_id: &str, scope: &str, challenge: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("scope", scope),
            ("state", "app-state"),
            ("aud", &format!("{BASE}/ina/fhir")),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    format!("/ina/auth/authorize?{query}")
}

/// Starts at the app's /authorize, signs in at the provider, and comes back to Renraku's
/// callback with the cookie /authorize set; returns the answer and that cookie. The same
/// callback from a browser without the cookie (an attacker's victim) is refused first.
async fn login(server: &Server, provider: &OpenIdProvider, account: &str, second_factor: bool, challenge: &str) -> (Reply, String) {
    let professional = SignIn { client: "demo-app", scope: "openid fhirUser offline_access user/*.cruds", account, second_factor, roles: "" };
    login_as(server, provider, &professional, challenge).await
}

/// Who signs in, with what, through which app.
struct SignIn<'a> {
    client: &'a str,
    scope: &'a str,
    account: &'a str,
    second_factor: bool,
    /// The account's `roles` claim, comma-separated.
    roles: &'a str,
}

async fn login_as(server: &Server, provider: &OpenIdProvider, sign_in: &SignIn<'_>, challenge: &str) -> (Reply, String) {
    let start = server.get_with(&authorize_path(sign_in.client, sign_in.scope, challenge), &[("authorization", "none")]).await;
    start.expect(303);
    let cookie = crate::app_launch::set_cookie(&start);
    let provider_url = start.header("location").unwrap_or_default();
    assert!(provider_url.starts_with(&provider.issuer), "sent to the provider: {provider_url}");
    let callback = sign_in_at_provider(&provider_url, sign_in.account, sign_in.second_factor, sign_in.roles).await;
    assert!(callback.starts_with("/ina/auth/callback?"), "{callback}");
    let elsewhere = server.get_with(&callback, &[("authorization", "none"), ("cookie", "renraku_authorize=someoneelse")]).await;
    elsewhere.expect(403);
    (server.get_with(&callback, &[("authorization", "none"), ("cookie", &cookie)]).await, cookie)
}

async fn login_through_the_municipality_provider(backend: Backend) {
    let provider = OpenIdProvider::start(&format!("{BASE}/ina/auth/callback")).await;
    let server = gateway(backend, &provider).await;
    let verifier = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));

    // Signed in with a second factor: consent, code, token as 田中 一郎.
    let (consent, cookie) = login(&server, &provider, "tanaka-0001", true, &challenge).await;
    consent.expect(200);
    let request = crate::app_launch::hidden(&consent, "request");
    let csrf = crate::app_launch::hidden(&consent, "csrf");
    let form = |fields: &[(&str, &str)]| {
        let mut pairs = vec![("request", request.as_str())];
        pairs.extend_from_slice(fields);
        url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish().into_bytes()
    };
    let headers = [("content-type", "application/x-www-form-urlencoded"), ("authorization", "none"), ("cookie", cookie.as_str())];
    // The attacker who started a sign-in cannot consent for the victim: without the
    // victim's cookie, or without the form's CSRF token, the consent is refused.
    let allow_all = [("decision", "allow"), ("scope", "user/*.cruds"), ("scope", "offline_access")];
    let no_cookie = [("content-type", "application/x-www-form-urlencoded"), ("authorization", "none")];
    let mut with_csrf = vec![("csrf", csrf.as_str())];
    with_csrf.extend_from_slice(&allow_all);
    server.request(Method::POST, "/ina/auth/consent", &no_cookie, Some(form(&with_csrf))).await.expect(403);
    server.request(Method::POST, "/ina/auth/consent", &headers, Some(form(&allow_all))).await.expect(403);
    // The doctor grants less than asked: read and search only.
    let approved = server
        .request(
            Method::POST,
            "/ina/auth/consent",
            &headers,
            Some(form(&[("csrf", &csrf), ("decision", "allow"), ("scope", "openid"), ("scope", "fhirUser"), ("scope", "offline_access"), ("scope", "user/*.rs")])),
        )
        .await;
    approved.expect(303);
    let location = approved.header("location").unwrap_or_default();
    let code = url::Url::parse(&location).ok().and_then(|u| u.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned())).expect("code");
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", REDIRECT), ("client_id", "demo-app"), ("code_verifier", verifier.as_str())])
        .finish();
    let tokens = server
        .request(Method::POST, "/ina/auth/token", &[("content-type", "application/x-www-form-urlencoded"), ("authorization", "none")], Some(body.into_bytes()))
        .await;
    tokens.expect(200);
    assert_eq!(tokens.json()["scope"], "user/*.rs openid fhirUser offline_access");
    // Refresh, then revoke: the refreshed token works until revoked.
    let refresh_token = tokens.json()["refresh_token"].as_str().unwrap_or_default().to_owned();
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("grant_type", "refresh_token"), ("refresh_token", refresh_token.as_str()), ("client_id", "demo-app")])
        .finish();
    let refreshed = server
        .request(Method::POST, "/ina/auth/token", &[("content-type", "application/x-www-form-urlencoded"), ("authorization", "none")], Some(body.into_bytes()))
        .await;
    refreshed.expect(200);
    let access = refreshed.json()["access_token"].as_str().unwrap_or_default().to_owned();
    let bearer = format!("Bearer {access}");
    server.get_with("/ina/fhir/Patient/demo-yamada-taro", &[("authorization", &bearer)]).await.expect(200);
    let introspected = server
        .request(Method::POST, "/ina/auth/introspect", &[("content-type", "application/x-www-form-urlencoded"), ("authorization", &bearer)], Some(format!("token={access}").into_bytes()))
        .await
        .json();
    assert_eq!(introspected["fhirUser"], format!("{BASE}/ina/fhir/PractitionerRole/demo-role-dr-tanaka"));
    let note = json!({ "resourceType": "Communication", "status": "completed", "subject": { "reference": "Patient/demo-yamada-taro" } });
    server.send(Method::POST, "/ina/fhir/Communication", &[("authorization", &bearer)], &note).await.expect(403);
    server
        .request(Method::POST, "/ina/auth/revoke", &[("content-type", "application/x-www-form-urlencoded"), ("authorization", "none")], Some(format!("token={access}").into_bytes()))
        .await
        .expect(200);
    server.get_with("/ina/fhir/Patient/demo-yamada-taro", &[("authorization", &bearer)]).await.expect(401);

    // The municipality requires a second factor: a password-only sign-in is refused.
    let (refused, _) = login(&server, &provider, "tanaka-0001", false, &challenge).await;
    refused.expect(403);
    assert!(refused.text().contains("second factor"), "{}", refused.text());
    // An account that no Practitioner of the directory carries is refused.
    let (stranger, _) = login(&server, &provider, "someone-else", true, &challenge).await;
    stranger.expect(403);
    assert!(stranger.text().contains("no professional"), "{}", stranger.text());

    // The trail has the sign-ins (one accepted, two refused) and the token events, in order.
    let auditor = renraku::identity::Actor::MunicipalAuditor { tenant: "ina".into(), user: "auditor".into() };
    let token = server.token("ina", auditor, "user/AuditEvent.rs", None).await;
    let trail = server
        .get_with("/ina/fhir/AuditEvent?type=110114&_sort=date&_count=100", &[("authorization", &format!("Bearer {token}"))])
        .await
        .json();
    let events: Vec<(String, String, String)> = trail["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let event = &e["resource"];
            let code = event["subtype"][0]["code"].as_str().unwrap_or_default();
            let subtype = if code == "110122" { "login" } else { code };
            (subtype.to_owned(), event["outcome"].as_str().unwrap_or_default().to_owned(), event["agent"][0]["who"]["reference"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    let doctor = "Practitioner/demo-dr-tanaka".to_owned();
    let expected = vec![
        ("login".to_owned(), "0".to_owned(), doctor.clone()),
        ("token-issue".to_owned(), "0".to_owned(), doctor.clone()),
        ("token-refresh".to_owned(), "0".to_owned(), doctor.clone()),
        ("token-revoke".to_owned(), "0".to_owned(), doctor.clone()),
        // The revoked token's next use, refused.
        ("request-refused".to_owned(), "4".to_owned(), String::new()),
        ("login".to_owned(), "4".to_owned(), String::new()),
        ("login".to_owned(), "4".to_owned(), String::new()),
    ];
    assert_eq!(events, expected, "{trail:#}");
}

/// Consents to `scopes` on the consent page `consent` and exchanges the code: the token
/// endpoint's answer.
async fn consent_and_exchange(server: &Server, consent: &Reply, cookie: &str, client: &str, scopes: &[&str], verifier: &str) -> serde_json::Value {
    consent.expect(200);
    let request = crate::app_launch::hidden(consent, "request");
    let csrf = crate::app_launch::hidden(consent, "csrf");
    let mut fields = vec![("request", request.as_str()), ("csrf", csrf.as_str()), ("decision", "allow")];
    fields.extend(scopes.iter().map(|scope| ("scope", *scope)));
    let form = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish().into_bytes();
    let headers = [("content-type", "application/x-www-form-urlencoded"), ("authorization", "none"), ("cookie", cookie)];
    let approved = server.request(Method::POST, "/ina/auth/consent", &headers, Some(form)).await;
    approved.expect(303);
    let location = approved.header("location").unwrap_or_default();
    let code = url::Url::parse(&location).ok().and_then(|u| u.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned())).expect("code");
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", REDIRECT), ("client_id", client), ("code_verifier", verifier)])
        .finish();
    let tokens = server
        .request(Method::POST, "/ina/auth/token", &[("content-type", "application/x-www-form-urlencoded"), ("authorization", "none")], Some(body.into_bytes()))
        .await;
    tokens.expect(200);
    tokens.json()
}

/// Administrators and auditors sign in at the municipality's provider too (issue #15): an
/// administration console registered for those roles makes the sign-in the role its
/// `roles` claim names — never without a second factor, even where professionals need
/// none — and a clinical app never turns anyone into an administrator.
async fn administrators_sign_in_through_the_provider(backend: Backend) {
    let provider = OpenIdProvider::start(&format!("{BASE}/ina/auth/callback")).await;
    let issuer = provider.issuer.clone();
    let server = Server::start_with(backend, move |config| {
        config.demo = true;
        if let Some(ina) = config.tenants.iter_mut().find(|t| t.slug == "ina") {
            ina.login = Some(renraku::config::UpstreamLogin {
                roles: renraku::config::RoleClaims {
                    municipal_admin: vec!["renraku-ina-admin".into()],
                    municipal_auditor: vec!["renraku-ina-auditor".into()],
                    ..Default::default()
                },
                ..ina_login(issuer)
            });
        }
        use renraku::identity::clients::{ClientConfig, Role};
        let console = ClientConfig::public_app("admin-console", "ina", "管理コンソール", &[REDIRECT], "openid user/*.cruds");
        config.clients.push(ClientConfig { roles: vec![Role::MunicipalAdmin, Role::MunicipalAuditor], ..console });
    })
    .await;
    let verifier = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let console = |account, second_factor, roles| SignIn { client: "admin-console", scope: "openid user/*.cruds", account, second_factor, roles };

    // The administrator, with a second factor: her token is 伊那市's administrator's.
    let (consent, cookie) = login_as(&server, &provider, &console("admin-kobayashi", true, "staff,renraku-ina-admin"), &challenge).await;
    let tokens = consent_and_exchange(&server, &consent, &cookie, "admin-console", &["openid", "user/*.cruds"], &verifier).await;
    let bearer = format!("Bearer {}", tokens["access_token"].as_str().unwrap_or_default());
    server.get_with("/admin/clients?tenant=ina", &[("authorization", &bearer)]).await.expect(200);
    server.get_with("/admin/clients?tenant=minamiminowa", &[("authorization", &bearer)]).await.expect(403);
    server.get_with("/admin/tenants", &[("authorization", &bearer)]).await.expect(403);
    // Directory work and the municipality's persons, not clinical content.
    let person = json!({ "resourceType": "Patient", "name": [{ "family": "北原" }] });
    let person = server.post("/ina/fhir/Patient", &person).await.json();
    let reference = format!("Patient/{}", person["id"].as_str().unwrap_or_default());
    let note = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "体温" }, "subject": { "reference": reference } });
    server.post("/ina/fhir/Observation", &note).await.expect(201);
    server.get_with("/ina/fhir/Organization/demo-ina-central-hospital", &[("authorization", &bearer)]).await.expect(200);
    server.get_with(&format!("/ina/fhir/{reference}"), &[("authorization", &bearer)]).await.expect(200);
    let clinical = server.get_with(&format!("/ina/fhir/Observation?subject={reference}"), &[("authorization", &bearer)]).await;
    clinical.expect(200);
    assert_eq!(clinical.json()["total"], 0);
    let introspected = server
        .request(
            Method::POST,
            "/ina/auth/introspect",
            &[("content-type", "application/x-www-form-urlencoded"), ("authorization", &bearer)],
            Some(format!("token={}", tokens["access_token"].as_str().unwrap_or_default()).into_bytes()),
        )
        .await
        .json();
    assert_eq!(introspected["sub"], format!("{}|admin-kobayashi", provider.issuer));

    // Without a second factor the administrative role is refused, though this
    // municipality's professionals need none.
    let (refused, _) = login_as(&server, &provider, &console("admin-kobayashi", false, "renraku-ina-admin"), &challenge).await;
    refused.expect(403);
    assert!(refused.text().contains("administrative role requires a second factor"), "{}", refused.text());
    // The clinical app does not make her an administrator: she is no professional.
    let clinical = SignIn { client: "demo-app", scope: "openid user/*.cruds", account: "admin-kobayashi", second_factor: true, roles: "renraku-ina-admin" };
    let (refused, _) = login_as(&server, &provider, &clinical, &challenge).await;
    refused.expect(403);
    assert!(refused.text().contains("no professional"), "{}", refused.text());
    // An account holding neither role gets nothing from the console.
    let (refused, _) = login_as(&server, &provider, &console("someone", true, "staff"), &challenge).await;
    refused.expect(403);
    assert!(refused.text().contains("none of the roles"), "{}", refused.text());

    // The auditor reads the trail, which shows the administrator's sign-in, and nothing else.
    let (consent, cookie) = login_as(&server, &provider, &console("kansa-01", true, "renraku-ina-auditor"), &challenge).await;
    let tokens = consent_and_exchange(&server, &consent, &cookie, "admin-console", &["openid", "user/*.cruds"], &verifier).await;
    let bearer = format!("Bearer {}", tokens["access_token"].as_str().unwrap_or_default());
    let trail = server.get_with("/ina/fhir/AuditEvent?type=110114&_count=100", &[("authorization", &bearer)]).await;
    trail.expect(200);
    let signed_in: Vec<String> = trail.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["resource"]["outcome"] == "0")
        .filter_map(|e| e["resource"]["agent"][0]["altId"].as_str().map(str::to_owned))
        .collect();
    assert!(signed_in.iter().any(|who| who == &format!("{}|admin-kobayashi", provider.issuer)), "{signed_in:?}");
    server.get_with("/admin/clients?tenant=ina", &[("authorization", &bearer)]).await.expect(403);
    server.get_with("/ina/fhir/Organization/demo-ina-central-hospital", &[("authorization", &bearer)]).await.expect(404);
}

both_backends!(login_through_the_municipality_provider, administrators_sign_in_through_the_provider);
