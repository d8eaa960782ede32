//! SMART App Launch without HTTP: the authorization request (`/authorize`), sign-in, the
//! consent step (where the user may grant fewer scopes and picks the patient), the
//! authorization code, and its exchange for tokens (with PKCE), refresh tokens with
//! rotation and reuse detection, and id_tokens.
//!
//! The pages between `/authorize` and the redirect carry a random request id; the request,
//! and after sign-in the user, are stored server-side under it for ten minutes. The request
//! is bound to the browser that started it: `/authorize` gives that browser a secret in a
//! cookie ([`BROWSER_COOKIE`]) and keeps only its digest, and every later step (sign-in,
//! the provider's callback, consent) must come with the same cookie; the forms also carry a
//! per-request CSRF token. Knowing a request id (an attacker who started the request knows
//! it) is therefore not enough to complete someone else's sign-in.

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::identity::clients::{ClientConfig, ClientKind};
use crate::identity::scopes::{ScopeContext, Scopes};
use super::server::{narrow, Endpoints};
use super::tokens::{self, TokenGrant};
use super::{assertion, keys, OAuthError};
use crate::error::{Error, Result};
use crate::fhir::dates::format_instant;
use crate::identity::{Actor, Principal};
use crate::audit::Entity;
use crate::service::Fhir;
use crate::identity::Context;
use crate::store::auth::{self as store, SingleUse};

/// Lifetime of app access tokens.
pub const APP_TOKEN_SECONDS: i64 = 3600;
/// Lifetime of an `offline_access` refresh token (`online_access` ones live as long as the
/// sign-in would: eight hours).
pub const OFFLINE_REFRESH_DAYS: i64 = 90;
pub const ONLINE_REFRESH_HOURS: i64 = 8;
const REQUEST_MINUTES: i64 = 10;
const CODE_SECONDS: i64 = 60;

/// What an app asked for at `/authorize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub nonce: Option<String>,
    /// While the user signs in at the municipality's OpenID Provider.
    #[serde(default)]
    pub upstream: Option<super::upstream::UpstreamState>,
    /// EHR launch: the patient context bound by the `launch` value.
    #[serde(default)]
    pub launch_patient: Option<String>,
    /// SHA-256 of the secret in the starting browser's [`BROWSER_COOKIE`].
    #[serde(default)]
    pub browser: String,
    /// The token every form of this request must carry back.
    #[serde(default)]
    pub csrf: String,
}

/// The cookie that binds a pending authorization request to the browser that started it.
pub const BROWSER_COOKIE: &str = "renraku_authorize";

/// What a browser brings to a step of the sign-in: its [`BROWSER_COOKIE`] and, on a form
/// submission, the form's CSRF token.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrowserProof<'a> {
    pub cookie: Option<&'a str>,
    pub csrf: Option<&'a str>,
}

/// What an authorization code or refresh token stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GrantRecord {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    scope: String,
    actor: Actor,
    patient: Option<String>,
    nonce: Option<String>,
    /// For refresh tokens: the sign-in's time, for online_access expiry.
    #[serde(default)]
    signed_in_at: Option<String>,
}

/// The answer to an authorization request: a page to show (with its request id), or a
/// redirect back to the app (an error it must hear about).
#[derive(Debug)]
pub enum Begun {
    /// Show the demo's built-in sign-in page.
    SignIn { request_id: String, client_name: String, csrf: String },
    /// Send the browser to the municipality's OpenID Provider.
    Upstream(String),
    /// Send the browser back to the app (with an error).
    Redirect(String),
}

fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(redirect_uri).map_or_else(|_| redirect_uri.to_owned(), |u| u.to_string());
    let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    url.push(if redirect_uri.contains('?') { '&' } else { '?' });
    url.push_str(&query);
    url
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Compares two secrets' texts without an early exit that timing could reveal.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// `GET|POST /{tenant}/auth/authorize`. Errors that cannot be sent back to the app (unknown
/// client, unregistered redirect URI) are `Err`; the others are redirects carrying `error`.
/// `browser_secret` is the secret the browser's cookie will hold (the caller sets it): the
/// request is bound to it.
pub async fn begin(fhir: &Fhir, tenant: &str, params: &[(String, String)], browser_secret: &str) -> Result<Begun> {
    let field = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let client_id = field("client_id").ok_or_else(|| Error::bad_request_at("client_id is missing", "client_id"))?;
    let client = fhir
        .current_client(tenant, &client_id)
        .await?
        .filter(|c| !c.is_backend_service())
        .ok_or_else(|| Error::bad_request_at("no app with this client_id is registered here", "client_id"))?;
    let redirect_uri = field("redirect_uri").ok_or_else(|| Error::bad_request_at("redirect_uri is missing", "redirect_uri"))?;
    if !client.redirect_uris.contains(&redirect_uri) {
        return Err(Error::bad_request_at("redirect_uri is not one the app registered (exact match)", "redirect_uri"));
    }
    let state = field("state");
    let fail = |error: &str, description: &str| {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(state) = state.as_deref() {
            params.push(("state", state));
        }
        Ok(Begun::Redirect(redirect_with(&redirect_uri, &params)))
    };
    if field("response_type").as_deref() != Some("code") {
        return fail("unsupported_response_type", "response_type must be code");
    }
    if field("aud").as_deref() != Some(fhir.config.base_url(tenant).as_str()) {
        return fail("invalid_request", "aud must be this municipality's FHIR base URL");
    }
    let Some(code_challenge) = field("code_challenge") else {
        return fail("invalid_request", "PKCE is required: code_challenge is missing");
    };
    if field("code_challenge_method").as_deref() != Some("S256") {
        return fail("invalid_request", "PKCE code_challenge_method must be S256");
    }
    let launch_patient = match field("launch") {
        Some(launch) => match redeem_launch(fhir, tenant, &launch).await? {
            Some(patient) => Some(patient),
            None => return fail("invalid_request", "the launch value is unknown, used or expired"),
        },
        None => None,
    };
    let scope = field("scope").unwrap_or_default();
    if Scopes::parse(&scope).is_err() {
        return fail("invalid_scope", "the scope is malformed");
    }
    let csrf = random();
    let mut request = AuthorizeRequest {
        client_id,
        redirect_uri,
        scope,
        state,
        code_challenge,
        nonce: field("nonce"),
        upstream: None,
        launch_patient,
        browser: digest(browser_secret),
        csrf: csrf.clone(),
    };
    let request_id = random();
    let login = fhir.tenant(tenant).and_then(|t| t.login);
    let mut provider_url = None;
    if let Some(login) = &login {
        let (url, upstream) = super::upstream::start(fhir, tenant, login, &request_id).await?;
        request.upstream = Some(upstream);
        provider_url = Some(url);
    }
    let mut connection = fhir.store.connection().await?;
    let expires_at = format_instant(fhir.clock.now() + Duration::minutes(REQUEST_MINUTES));
    store::insert_authorization_request(&mut connection, &request_id, tenant, &serde_json::to_string(&request)?, &expires_at).await?;
    if let Some(url) = provider_url {
        return Ok(Begun::Upstream(url));
    }
    Ok(Begun::SignIn { request_id, client_name: if client.name.is_empty() { client.client_id } else { client.name }, csrf })
}

/// A fresh secret for a browser's [`BROWSER_COOKIE`].
pub fn new_browser_secret() -> String {
    random()
}

/// A pending request and, once signed in, its user.
pub struct Pending {
    pub request: AuthorizeRequest,
    pub actor: Option<Actor>,
    pub client: ClientConfig,
}

/// The pending request `request_id` at `tenant`, if it has not expired and `proof` comes from
/// the browser that started it (its cookie; and the request's CSRF token where `proof`
/// carries a form's).
pub async fn pending(fhir: &Fhir, tenant: &str, request_id: &str, proof: BrowserProof<'_>) -> Result<Pending> {
    let mut connection = fhir.store.connection().await?;
    let row = store::authorization_request(&mut connection, request_id, tenant).await?;
    let expired = || Error::bad_request("this sign-in has expired or is unknown; start again from the app");
    let row = row.ok_or_else(expired)?;
    if row.expires_at <= format_instant(fhir.clock.now()) {
        return Err(expired());
    }
    let request: AuthorizeRequest = serde_json::from_str(&row.request)?;
    let same_browser = !request.browser.is_empty() && proof.cookie.is_some_and(|cookie| constant_time_eq(&digest(cookie), &request.browser));
    let form_ok = proof.csrf.is_none_or(|csrf| !request.csrf.is_empty() && constant_time_eq(csrf, &request.csrf));
    if !same_browser || !form_ok {
        tracing::warn!(target: "renraku::auth", tenant, "sign-in step refused: not the browser that started it, or a wrong CSRF token");
        return Err(Error::Forbidden("this sign-in was started in another browser or the form is stale; start again from the app".into()));
    }
    let actor = row.actor.map(|a| serde_json::from_str(&a)).transpose()?;
    let client = fhir.client(tenant, &request.client_id).ok_or_else(expired)?;
    Ok(Pending { request, actor, client })
}

/// The callback from the municipality's OpenID Provider for the pending request `state`:
/// the signed-in professional, or the refusal.
pub async fn upstream_callback(fhir: &Fhir, context: &Context, request_id: &str, code: &str, proof: BrowserProof<'_>) -> Result<()> {
    let tenant = context.tenant.as_str();
    let pending = pending(fhir, tenant, request_id, proof).await?;
    let login = fhir.tenant(tenant).and_then(|t| t.login).ok_or_else(|| Error::NotFound("the sign-in callback".into()))?;
    let upstream = pending.request.upstream.clone().ok_or_else(|| Error::bad_request("this sign-in did not start at the identity provider"))?;
    let actor = match super::upstream::finish(fhir, tenant, &login, &upstream, code, &pending.client.sign_in_roles()).await {
        Ok(actor) => actor,
        Err(error) => {
            let entities = vec![Entity::Detail { name: "provider".into(), value: login.issuer.clone() }];
            fhir.record_security(context, &Principal::Anonymous, "login", Some(error.to_string()), entities).await?;
            return Err(error);
        }
    };
    signed_in(fhir, context, request_id, &actor).await
}

/// Records who signed in for the pending request, in the request and in the audit trail.
pub async fn signed_in(fhir: &Fhir, context: &Context, request_id: &str, actor: &Actor) -> Result<()> {
    let tenant = context.tenant.as_str();
    let holder = Principal::Authenticated(Box::new(crate::identity::Authenticated {
        actor: actor.clone(),
        scopes: Scopes::default(),
        patient: None,
        client_id: String::new(),
    }));
    fhir.record_security(context, &holder, "login", None, Vec::new()).await?;
    let mut connection = fhir.store.connection().await?;
    store::set_authorization_actor(&mut connection, request_id, tenant, &serde_json::to_string(actor)?).await
}

/// The scopes the consent page offers: what the app asked for, narrowed to what it is
/// registered for.
pub fn offered_scopes(pending: &Pending) -> Scopes {
    let requested = Scopes::parse(&pending.request.scope).unwrap_or_default();
    let allowed = pending.client.allowed_scopes();
    let mut offered = narrow(&requested, &allowed, ScopeContext::User);
    offered.resources.extend(narrow(&requested, &allowed, ScopeContext::Patient).resources);
    offered.other = requested.other.iter().filter(|o| allowed.has(o)).cloned().collect();
    offered
}

/// The persons the signed-in user may pick for `launch/patient`: the Patients the access
/// policy lets them read (at most 100).
pub async fn patient_choices(fhir: &Fhir, tenant: &str, actor: &Actor) -> Result<Vec<(String, String)>> {
    let principal = Principal::Authenticated(Box::new(crate::identity::Authenticated {
        actor: actor.clone(),
        scopes: Scopes::parse("user/Patient.rs").unwrap_or_default(),
        patient: None,
        client_id: "consent-page".into(),
    }));
    let context = Context {
        tenant: tenant.to_owned(),
        principal,
        base_url: fhir.config.base_url(tenant),
        request_id: "consent-page".into(),
        lenient: false,
        client_address: None,
        purpose_of_use: None,
    };
    let bundle = fhir.search(&context, "Patient", &[("_count".into(), "100".into())]).await?;
    Ok(bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let resource = entry.get("resource")?;
            let id = resource.get("id").and_then(Value::as_str)?.to_owned();
            let name = resource
                .pointer("/name/0/text")
                .and_then(Value::as_str)
                .or_else(|| resource.pointer("/name/0/family").and_then(Value::as_str))
                .map_or_else(|| id.clone(), str::to_owned);
            Some((id, name))
        })
        .collect())
}

/// The user approved `granted` (a subset of the offered scopes) and, for `launch/patient`,
/// picked `patient`: the app gets a code. Anything not offered is dropped.
pub async fn approve(
    fhir: &Fhir,
    tenant: &str,
    request_id: &str,
    proof: BrowserProof<'_>,
    granted: &[String],
    patient: Option<String>,
) -> Result<String> {
    let pending = pending(fhir, tenant, request_id, proof).await?;
    let actor = pending.actor.clone().ok_or_else(|| Error::bad_request("sign in first"))?;
    let offered = offered_scopes(&pending);
    let chosen = Scopes::parse(&granted.join(" ")).map_err(Error::bad_request)?;
    let mut scopes = narrow(&chosen, &offered, ScopeContext::User);
    scopes.resources.extend(narrow(&chosen, &offered, ScopeContext::Patient).resources);
    scopes.other = chosen.other.iter().filter(|o| offered.has(o)).cloned().collect();
    let patient = if let Some(launched) = pending.request.launch_patient.clone().filter(|_| scopes.has("launch")) {
        // EHR launch: the context the EHR bound, if the signed-in user may still see the person.
        let choices = patient_choices(fhir, tenant, &actor).await?;
        if !choices.iter().any(|(id, _)| *id == launched) {
            return Err(Error::Forbidden("the launched person is not one the signed-in professional may access".into()));
        }
        Some(launched)
    } else if scopes.has("launch/patient") || scopes.has_context(ScopeContext::Patient) {
        let choices = patient_choices(fhir, tenant, &actor).await?;
        let picked = patient.filter(|p| choices.iter().any(|(id, _)| id == p));
        Some(picked.ok_or_else(|| Error::bad_request_at("pick one of the listed persons", "patient"))?)
    } else {
        None
    };
    let record = GrantRecord {
        client_id: pending.request.client_id.clone(),
        redirect_uri: pending.request.redirect_uri.clone(),
        code_challenge: pending.request.code_challenge.clone(),
        scope: scopes.to_string(),
        actor,
        patient,
        nonce: pending.request.nonce.clone(),
        signed_in_at: Some(format_instant(fhir.clock.now())),
    };
    let code = random();
    let mut connection = fhir.store.connection().await?;
    let expires_at = format_instant(fhir.clock.now() + Duration::seconds(CODE_SECONDS));
    store::insert_single_use(&mut connection, SingleUse::AuthorizationCode, &digest(&code), tenant, &serde_json::to_string(&record)?, &expires_at).await?;
    store::delete_authorization_request(&mut connection, request_id).await?;
    let mut params = vec![("code", code.as_str())];
    if let Some(state) = pending.request.state.as_deref() {
        params.push(("state", state));
    }
    Ok(redirect_with(&pending.request.redirect_uri, &params))
}

/// `POST /{tenant}/auth/launch`: an EHR (a professional's or a system client's token) binds a
/// patient context to a new `launch` value, valid once for five minutes. The caller must be
/// able to read the person (otherwise 404, as a read would answer).
pub async fn mint_launch(fhir: &Fhir, context: &Context, patient: &str) -> Result<String> {
    fhir.read(context, "Patient", patient).await?;
    let launch = random();
    let mut connection = fhir.store.connection().await?;
    let expires_at = format_instant(fhir.clock.now() + Duration::minutes(5));
    store::insert_single_use(&mut connection, SingleUse::LaunchContext, &digest(&launch), &context.tenant, patient, &expires_at).await?;
    Ok(launch)
}

/// The patient a `launch` value binds, if it is unused and unexpired (it is used up here).
async fn redeem_launch(fhir: &Fhir, tenant: &str, launch: &str) -> Result<Option<String>> {
    let mut connection = fhir.store.connection().await?;
    let Some((patient, expires_at)) = store::single_use(&mut connection, SingleUse::LaunchContext, &digest(launch), tenant).await? else { return Ok(None) };
    if expires_at <= format_instant(fhir.clock.now()) || !store::claim_single_use(&mut connection, SingleUse::LaunchContext, &digest(launch)).await? {
        return Ok(None);
    }
    Ok(Some(patient))
}

/// The user declined (or the sign-in failed): the app hears `access_denied`.
pub async fn deny(fhir: &Fhir, tenant: &str, request_id: &str, proof: BrowserProof<'_>) -> Result<String> {
    let pending = pending(fhir, tenant, request_id, proof).await?;
    let mut params = vec![("error", "access_denied"), ("error_description", "the user declined or could not sign in")];
    if let Some(state) = pending.request.state.as_deref() {
        params.push(("state", state));
    }
    Ok(redirect_with(&pending.request.redirect_uri, &params))
}

/// Authenticates the app at the token endpoint: a public client names itself; a
/// confidential one proves itself with an assertion.
async fn authenticate_app(fhir: &Fhir, tenant: &str, form: &[(String, String)], now: DateTime<Utc>, grant_type: &str) -> Result<ClientConfig, OAuthError> {
    let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let client_id = match field("client_assertion") {
        Some(assertion) => assertion::unverified_issuer(assertion),
        None => field("client_id").map(str::to_owned),
    }
    .ok_or_else(|| OAuthError::invalid_client("client_id is missing"))?;
    let client = fhir
        .current_client(tenant, &client_id)
        .await?
        .filter(|c| !c.is_backend_service())
        .ok_or_else(|| OAuthError::invalid_client("no app with this client_id is registered here"))?;
    if !client.may_use(grant_type) {
        return Err(OAuthError::unauthorized_client(format!("this app may not use {grant_type}")));
    }
    if client.kind == ClientKind::ConfidentialAsymmetric {
        if field("client_assertion_type") != Some(super::server::JWT_BEARER) {
            return Err(OAuthError::invalid_client("this app must authenticate with a client assertion"));
        }
        let keys = assertion::client_keys(&client).await?;
        let token_url = Endpoints::of(&fhir.config, tenant).token;
        let verified = assertion::verify(field("client_assertion").unwrap_or_default(), &client, &keys, &token_url, now.timestamp())?;
        let mut connection = fhir.store.connection().await?;
        if !tokens::record_assertion(&mut connection, now, &verified.client_id, &verified.jti, verified.expires_at).await? {
            return Err(OAuthError::invalid_client("the client assertion's jti has been used before"));
        }
    }
    Ok(client)
}

/// `grant_type=authorization_code`
pub async fn exchange_code(fhir: &Fhir, tenant: &str, form: &[(String, String)]) -> Result<Value, OAuthError> {
    let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let now = fhir.clock.now();
    let client = authenticate_app(fhir, tenant, form, now, "authorization_code").await?;
    let code = field("code").ok_or_else(|| OAuthError::invalid_request("code is missing"))?;
    let mut connection = fhir.store.connection().await?;
    let row = store::single_use(&mut connection, SingleUse::AuthorizationCode, &digest(code), tenant).await?;
    let invalid = || OAuthError::invalid_grant("the authorization code is invalid, expired or already used");
    let (grant, expires_at) = row.ok_or_else(invalid)?;
    // Single use: only the request that flips `used` may proceed.
    if !store::claim_single_use(&mut connection, SingleUse::AuthorizationCode, &digest(code)).await? || expires_at <= format_instant(now) {
        return Err(invalid());
    }
    let record: GrantRecord = serde_json::from_str(&grant).map_err(OAuthError::server_error)?;
    if record.client_id != client.client_id {
        return Err(OAuthError::invalid_grant("the authorization code was issued to another app"));
    }
    if field("redirect_uri") != Some(record.redirect_uri.as_str()) {
        return Err(OAuthError::invalid_grant("redirect_uri does not match the authorization request"));
    }
    let verifier = field("code_verifier").ok_or_else(|| OAuthError::invalid_grant("code_verifier is missing (PKCE)"))?;
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if !(43..=128).contains(&verifier.len()) || computed != record.code_challenge {
        return Err(OAuthError::invalid_grant("code_verifier does not match the code_challenge (PKCE)"));
    }
    if let Err(reason) = crate::policy::facts::actor_standing(&mut *connection, &record.actor, now).await.map_err(OAuthError::server_error)? {
        tracing::info!(target: "renraku::auth", tenant, %reason, "code exchange refused: the actor no longer stands");
        return Err(invalid());
    }
    let family = random();
    issue_app_tokens(fhir, tenant, &mut connection, now, record, &family).await
}

/// `grant_type=refresh_token`: rotates the refresh token; a rotated token presented again
/// revokes its family (someone has a copy).
pub async fn refresh(fhir: &Fhir, tenant: &str, form: &[(String, String)]) -> Result<Value, OAuthError> {
    let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let now = fhir.clock.now();
    let client = authenticate_app(fhir, tenant, form, now, "refresh_token").await?;
    let presented = field("refresh_token").ok_or_else(|| OAuthError::invalid_request("refresh_token is missing"))?;
    let mut connection = fhir.store.connection().await?;
    let row = store::refresh_token(&mut connection, &digest(presented), tenant).await?;
    let invalid = || OAuthError::invalid_grant("the refresh token is invalid, expired or revoked");
    let row = row.ok_or_else(invalid)?;
    let family = row.family.clone();
    let record: GrantRecord = serde_json::from_str(&row.grant).map_err(OAuthError::server_error)?;
    if record.client_id != client.client_id {
        return Err(invalid());
    }
    if row.revoked {
        return Err(invalid());
    }
    if !store::claim_refresh_token(&mut connection, &digest(presented)).await? {
        tokens::revoke_family(&mut connection, &family).await?;
        tracing::warn!(target: "renraku::auth", tenant, client = %client.client_id, "refresh token reused; its family is revoked");
        return Err(invalid());
    }
    if let Some(expires_at) = &row.expires_at {
        if *expires_at <= format_instant(now) {
            return Err(invalid());
        }
    }
    if let Err(reason) = crate::policy::facts::actor_standing(&mut *connection, &record.actor, now).await.map_err(OAuthError::server_error)? {
        // The professional left (or their role ended): the whole family goes.
        tokens::revoke_family(&mut connection, &family).await?;
        tracing::info!(target: "renraku::auth", tenant, %reason, "refresh refused: the actor no longer stands");
        return Err(invalid());
    }
    let mut record = record;
    if let Some(scope) = field("scope") {
        let asked = Scopes::parse(scope).map_err(OAuthError::invalid_scope)?;
        let had = Scopes::parse(&record.scope).unwrap_or_default();
        let mut narrowed = narrow(&asked, &had, ScopeContext::User);
        narrowed.resources.extend(narrow(&asked, &had, ScopeContext::Patient).resources);
        narrowed.other = asked.other.iter().filter(|o| had.has(o)).cloned().collect();
        record.scope = narrowed.to_string();
    }
    issue_app_tokens(fhir, tenant, &mut connection, now, record, &family).await
}

async fn issue_app_tokens(
    fhir: &Fhir,
    tenant: &str,
    connection: &mut crate::store::Db,
    now: DateTime<Utc>,
    record: GrantRecord,
    family: &str,
) -> Result<Value, OAuthError> {
    let scopes = Scopes::parse(&record.scope).unwrap_or_default();
    let grant = TokenGrant {
        tenant: tenant.to_owned(),
        actor: record.actor.clone(),
        scopes: scopes.clone(),
        patient: record.patient.clone(),
        client_id: record.client_id.clone(),
        lifetime: Duration::seconds(APP_TOKEN_SECONDS),
    };
    let issued = tokens::issue_in_family(connection, now, &grant, family).await?;
    let mut answer = json!({
        "access_token": issued.access_token,
        "token_type": "bearer",
        "expires_in": APP_TOKEN_SECONDS,
        "scope": scopes.to_string(),
        "need_patient_banner": true,
        "smart_style_url": format!("{}/smart-style.json", Endpoints::of(&fhir.config, tenant).issuer),
    });
    if let Some(patient) = &record.patient {
        crate::fhir::set(&mut answer, "patient", json!(patient));
    }
    if scopes.has("openid") && (scopes.has("fhirUser") || scopes.has("profile")) {
        crate::fhir::set(&mut answer, "id_token", json!(id_token(fhir, tenant, connection, now, &record).await?));
    }
    let refresh_lifetime = if scopes.has("offline_access") {
        Some(Duration::days(OFFLINE_REFRESH_DAYS))
    } else if scopes.has("online_access") {
        Some(Duration::hours(ONLINE_REFRESH_HOURS))
    } else {
        None
    };
    if let Some(lifetime) = refresh_lifetime {
        let refresh_token = random();
        let grant = serde_json::to_string(&record).map_err(OAuthError::server_error)?;
        store::insert_refresh_token(connection, &digest(&refresh_token), family, tenant, &grant, &format_instant(now + lifetime)).await?;
        crate::fhir::set(&mut answer, "refresh_token", json!(refresh_token));
    }
    tracing::info!(target: "renraku::auth", tenant, client = %record.client_id, scope = %scopes, "access token issued (app)");
    Ok(answer)
}

/// The user's FHIR resource: their PractitionerRole (which carries the organization).
pub fn fhir_user(fhir: &Fhir, tenant: &str, actor: &Actor) -> Option<String> {
    match actor {
        Actor::Practitioner { role, .. } => Some(format!("{}/PractitionerRole/{role}", fhir.config.base_url(tenant))),
        _ => None,
    }
}

async fn id_token(fhir: &Fhir, tenant: &str, connection: &mut crate::store::Db, now: DateTime<Utc>, record: &GrantRecord) -> Result<String, OAuthError> {
    let key = keys::current(connection, now).await?;
    let subject = match &record.actor {
        Actor::Practitioner { practitioner, .. } => practitioner.clone(),
        Actor::System { client, .. } => client.clone(),
        Actor::MunicipalAdmin { user, .. } | Actor::MunicipalAuditor { user, .. } | Actor::ServerAdmin { user } => user.clone(),
        #[cfg(feature = "test-support")]
        Actor::TestUnrestricted => "test-suite".into(),
    };
    let mut claims = json!({
        "iss": Endpoints::of(&fhir.config, tenant).issuer,
        "sub": subject,
        "aud": record.client_id,
        "iat": now.timestamp(),
        "exp": (now + Duration::seconds(APP_TOKEN_SECONDS)).timestamp(),
    });
    if let Some(user) = fhir_user(fhir, tenant, &record.actor) {
        crate::fhir::set(&mut claims, "fhirUser", json!(user));
    }
    if let Some(nonce) = &record.nonce {
        crate::fhir::set(&mut claims, "nonce", json!(nonce));
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).map_err(OAuthError::server_error)?;
    jsonwebtoken::encode(&header, &claims, &encoding).map_err(OAuthError::server_error)
}
