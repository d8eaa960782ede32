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

async fn gateway(backend: Backend, provider: &OpenIdProvider) -> Server {
    let issuer = provider.issuer.clone();
    let server = Server::start_with(backend, move |config| {
        config.demo = true;
        if let Some(ina) = config.tenants.iter_mut().find(|t| t.slug == "ina") {
            ina.login = Some(renraku::config::UpstreamLogin {
                issuer,
                client_id: "renraku".into(),
                client_secret: Some("renraku-test-secret".into()),
                subject_system: SUBJECT_SYSTEM.into(),
                require_mfa: true,
                mfa_acr_values: vec!["urn:renraku:mfa".into()],
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
async fn sign_in_at_provider(provider_url: &str, account: &str, second_factor: bool) -> String {
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
            let form = [("login", account), ("mfa", if second_factor { "1" } else { "0" })];
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

fn authorize_path(challenge: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", "demo-app"),
            ("redirect_uri", REDIRECT),
            ("scope", "openid fhirUser offline_access user/*.cruds"),
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
    let start = server.get_with(&authorize_path(challenge), &[("authorization", "none")]).await;
    start.expect(303);
    let cookie = crate::app_launch::set_cookie(&start);
    let provider_url = start.header("location").unwrap_or_default();
    assert!(provider_url.starts_with(&provider.issuer), "sent to the provider: {provider_url}");
    let callback = sign_in_at_provider(&provider_url, account, second_factor).await;
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

both_backends!(login_through_the_municipality_provider);
