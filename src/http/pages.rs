//! The browser-facing steps of SMART App Launch: `/authorize`, sign-in, the consent page
//! (with the patient picker), and the published keys and metadata of each municipality's
//! authorization server. Pages are plain server-rendered HTML forms; every value written
//! into them is escaped. Errors before the app can be told (unknown client, unregistered
//! redirect URI, expired request) are OperationOutcomes like everywhere else.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};

use super::request::RequestId;
use super::response::ErrorReply;
use super::AppState;
use crate::auth::launch::{self, Begun, BrowserProof, BROWSER_COOKIE};
use crate::auth::{keys, server};
use crate::error::Error;
use crate::fhir::format::Format;
use crate::identity::Actor;
use crate::service::parse_query_string;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head><body>{body}</body></html>",
        escape(title)
    );
    let mut response = Html(html).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response.headers_mut().insert("x-frame-options", header::HeaderValue::from_static("DENY"));
    response
}

fn fail(request_id: &RequestId, error: Error) -> Response {
    ErrorReply { error, format: Format::Json, request_id: request_id.0.clone() }.into_response()
}

fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location.to_owned())]).into_response()
}

/// The value of the browser-binding cookie, if the request carries one.
fn browser_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == BROWSER_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Sets the browser-binding cookie: readable only by this server's `/{tenant}/auth` paths,
/// never by scripts, sent on the provider's top-level redirect back (Lax) but not on
/// cross-site form posts, and over HTTPS only wherever the public base URL is HTTPS.
fn with_browser_cookie(mut response: Response, state: &AppState, tenant: &str, secret: &str) -> Response {
    let secure = if state.config.public_base_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{BROWSER_COOKIE}={secret}; Path=/{tenant}/auth; HttpOnly; SameSite=Lax; Max-Age=600{secure}");
    if let Ok(value) = header::HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

async fn known(state: &AppState, tenant: &str) -> Result<(), Error> {
    if state.fhir.serves_now(tenant).await? {
        Ok(())
    } else {
        Err(Error::NotFound(format!("the authorization server of '{tenant}'")))
    }
}

/// The demo's sign-in choices at a municipality: its demo professionals.
fn demo_users(tenant: &str) -> Vec<(String, Actor, String)> {
    crate::demo::demo_tokens()
        .into_iter()
        .filter(|(_, at, actor, _, _)| *at == tenant && matches!(actor, Actor::Practitioner { .. }))
        .map(|(token, _, actor, _, who)| (token.to_owned(), actor, who.to_owned()))
        .collect()
}

/// `GET|POST /{tenant}/auth/authorize`
pub async fn authorize(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Path(tenant): Path<String>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(error) = known(&state, &tenant).await {
        return fail(&request_id, error);
    }
    let params = if method == axum::http::Method::POST {
        parse_query_string(&String::from_utf8_lossy(&body))
    } else {
        parse_query_string(uri.query().unwrap_or_default())
    };
    // A browser already holding a secret keeps it, so that two sign-ins started in one
    // browser both stay bound to it.
    let secret = browser_cookie(&headers).map_or_else(launch::new_browser_secret, str::to_owned);
    match launch::begin(&state.fhir, &tenant, &params, &secret).await {
        Ok(Begun::Redirect(location)) => see_other(&location),
        Ok(Begun::Upstream(location)) => with_browser_cookie(see_other(&location), &state, &tenant, &secret),
        Ok(Begun::SignIn { request_id: pending, client_name, csrf }) => {
            with_browser_cookie(sign_in_page(&state, &tenant, &pending, &client_name, &csrf), &state, &tenant, &secret)
        }
        Err(error) => fail(&request_id, error),
    }
}

fn sign_in_page(state: &AppState, tenant: &str, pending: &str, client_name: &str, csrf: &str) -> Response {
    if !state.config.demo {
        let body = "<h1>サインインできません</h1><p>この市町村の認証基盤（OpenID Provider）が設定されていません。\
                    No identity provider is configured for this municipality.</p>";
        let mut response = page("Renraku", body);
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return response;
    }
    let mut buttons = String::new();
    for (key, _, who) in demo_users(tenant) {
        buttons.push_str(&format!(
            "<p><button type=\"submit\" name=\"user\" value=\"{}\">{}</button></p>",
            escape(&key),
            escape(&who)
        ));
    }
    let body = format!(
        "<h1>Renraku デモ サインイン</h1><p><strong>DEMO ONLY</strong> — demo mode signs you in without a password. \
         「{}」がアクセスを求めています。</p><form method=\"post\" action=\"/{}/auth/login\">\
         <input type=\"hidden\" name=\"request\" value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">{buttons}</form>",
        escape(client_name),
        escape(tenant),
        escape(pending),
        escape(csrf)
    );
    page("Renraku demo sign-in", &body)
}

/// `POST /{tenant}/auth/login` — the demo's built-in sign-in (demo mode only).
pub async fn login(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Path(tenant): Path<String>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        known(&state, &tenant).await?;
        if !state.config.demo {
            return Err(Error::NotFound("the demo sign-in".into()));
        }
        let form = parse_query_string(&String::from_utf8_lossy(&body));
        let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
        let pending_id = field("request");
        let (_, actor, _) = demo_users(&tenant)
            .into_iter()
            .find(|(key, _, _)| *key == field("user"))
            .ok_or_else(|| Error::bad_request_at("choose one of the demo users", "user"))?;
        let csrf = field("csrf");
        let proof = BrowserProof { cookie: browser_cookie(&headers), csrf: Some(&csrf) };
        launch::pending(&state.fhir, &tenant, &pending_id, proof).await?;
        let context = super::request::call_context(&state, &tenant, &extensions);
        launch::signed_in(&state.fhir, &context, &pending_id, &actor).await?;
        consent_page(&state, &tenant, &pending_id, proof).await
    }
    .await;
    result.unwrap_or_else(|error| fail(&request_id, error))
}

async fn consent_page(state: &AppState, tenant: &str, pending_id: &str, proof: BrowserProof<'_>) -> Result<Response, Error> {
    let pending = launch::pending(&state.fhir, tenant, pending_id, proof).await?;
    let actor = pending.actor.clone().ok_or_else(|| Error::bad_request("sign in first"))?;
    let offered = launch::offered_scopes(&pending);
    let mut scopes = String::new();
    for scope in offered.resources.iter().map(ToString::to_string).chain(offered.other.iter().cloned()) {
        scopes.push_str(&format!(
            "<p><label><input type=\"checkbox\" name=\"scope\" value=\"{0}\" checked> {0}</label></p>",
            escape(&scope)
        ));
    }
    let mut patients = String::new();
    if let Some(launched) = pending.request.launch_patient.as_deref().filter(|_| offered.has("launch")) {
        patients.push_str(&format!("<p>電子カルテから起動 / Launched for: <strong>Patient/{}</strong></p>", escape(launched)));
    } else if offered.has("launch/patient") || offered.has_context(crate::identity::scopes::ScopeContext::Patient) {
        patients.push_str("<h2>患者を選択 / Choose the person</h2>");
        for (id, name) in launch::patient_choices(&state.fhir, tenant, &actor).await? {
            patients.push_str(&format!(
                "<p><label><input type=\"radio\" name=\"patient\" value=\"{}\"> {}</label></p>",
                escape(&id),
                escape(&name)
            ));
        }
    }
    let body = format!(
        "<h1>アクセスの許可 / Allow access</h1><p>「{}」に許可する範囲を選んでください。Untick what you do not want to grant.</p>\
         <form method=\"post\" action=\"/{}/auth/consent\"><input type=\"hidden\" name=\"request\" value=\"{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{scopes}{patients}\
         <p><button type=\"submit\" name=\"decision\" value=\"allow\">許可 / Allow</button> \
         <button type=\"submit\" name=\"decision\" value=\"deny\">拒否 / Deny</button></p></form>",
        escape(if pending.client.name.is_empty() { &pending.client.client_id } else { &pending.client.name }),
        escape(tenant),
        escape(pending_id),
        escape(&pending.request.csrf)
    );
    Ok(page("Renraku consent", &body))
}

/// `GET /{tenant}/auth/callback` — the municipality's OpenID Provider sends the user back.
pub async fn callback(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Path(tenant): Path<String>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let result = async {
        known(&state, &tenant).await?;
        let params = parse_query_string(uri.query().unwrap_or_default());
        let field = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let pending_id = field("state").ok_or_else(|| Error::bad_request_at("state is missing", "state"))?;
        // The provider's redirect is a top-level navigation: the browser brings its cookie.
        let proof = BrowserProof { cookie: browser_cookie(&headers), csrf: None };
        match field("code") {
            Some(code) => {
                let context = super::request::call_context(&state, &tenant, &extensions);
                launch::upstream_callback(&state.fhir, &context, &pending_id, &code, proof).await?;
                consent_page(&state, &tenant, &pending_id, proof).await
            }
            // The provider refused or the user cancelled: the app hears access_denied.
            None => Ok(see_other(&launch::deny(&state.fhir, &tenant, &pending_id, proof).await?)),
        }
    }
    .await;
    result.unwrap_or_else(|error| fail(&request_id, error))
}

/// `POST /{tenant}/auth/consent`
pub async fn consent(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        known(&state, &tenant).await?;
        let form = parse_query_string(&String::from_utf8_lossy(&body));
        let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let pending_id = field("request").unwrap_or_default();
        let csrf = field("csrf").unwrap_or_default();
        let proof = BrowserProof { cookie: browser_cookie(&headers), csrf: Some(&csrf) };
        let location = if field("decision").as_deref() == Some("allow") {
            let granted: Vec<String> = form.iter().filter(|(n, _)| n == "scope").map(|(_, v)| v.clone()).collect();
            launch::approve(&state.fhir, &tenant, &pending_id, proof, &granted, field("patient")).await?
        } else {
            launch::deny(&state.fhir, &tenant, &pending_id, proof).await?
        };
        Ok::<_, Error>(see_other(&location))
    }
    .await;
    result.unwrap_or_else(|error| fail(&request_id, error))
}

/// `POST /{tenant}/auth/launch` with `patient=<id>` (form): an EHR, holding a token of this
/// municipality, mints a `launch` value for an app it is about to open.
pub async fn mint_launch(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        known(&state, &tenant).await?;
        let principal = super::request::principal(&state, &headers, Some(&tenant)).await?;
        let form = parse_query_string(&String::from_utf8_lossy(&body));
        let patient = form
            .iter()
            .find(|(n, _)| n == "patient")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::bad_request_at("patient is missing", "patient"))?;
        let context = crate::identity::Context {
            base_url: state.config.base_url(&tenant),
            tenant: tenant.clone(),
            principal,
            request_id: request_id.0.clone(),
            lenient: false,
            client_address: None,
            purpose_of_use: None,
        };
        launch::mint_launch(&state.fhir, &context, &patient).await
    }
    .await;
    match result {
        Ok(launch) => Json(serde_json::json!({ "launch": launch, "expires_in": 300 })).into_response(),
        Err(error) => fail(&request_id, error),
    }
}

/// `GET /{tenant}/auth/jwks`
pub async fn jwks(State(state): State<AppState>, Extension(request_id): Extension<RequestId>, Path(tenant): Path<String>) -> Response {
    let result = async {
        known(&state, &tenant).await?;
        let mut connection = state.fhir.store.connection().await?;
        keys::current(&mut connection, state.fhir.clock.now()).await?;
        keys::jwks(&mut connection, state.fhir.clock.now()).await
    }
    .await;
    match result {
        Ok(set) => Json(set).into_response(),
        Err(error) => fail(&request_id, error),
    }
}

/// `GET /{tenant}/auth/.well-known/openid-configuration`
pub async fn openid_configuration(State(state): State<AppState>, Extension(request_id): Extension<RequestId>, Path(tenant): Path<String>) -> Response {
    match known(&state, &tenant).await {
        Ok(()) => Json(server::openid_configuration(&state.fhir, &tenant)).into_response(),
        Err(error) => fail(&request_id, error),
    }
}

/// `GET /{tenant}/auth/smart-style.json` — the `smart_style_url` apps may follow.
pub async fn smart_style(_headers: HeaderMap) -> Response {
    Json(serde_json::json!({
        "color_background": "#f6f8f5",
        "color_highlight": "#2f6f4f",
        "color_modal_backdrop": "",
        "color_success": "#2f6f4f",
        "color_error": "#b3261e",
        "color_text": "#1f2a24",
        "dim_border_radius": "6px",
        "dim_font_size": "16px",
        "dim_spacing_size": "16px",
        "font_family_body": "\"Hiragino Sans\", \"Noto Sans JP\", sans-serif",
        "font_family_heading": "\"Hiragino Sans\", \"Noto Sans JP\", sans-serif"
    }))
    .into_response()
}
