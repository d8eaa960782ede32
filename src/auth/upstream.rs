//! Sign-in through a municipality's own OpenID Provider: Renraku is its relying party (the
//! `openidconnect` crate: discovery, authorization code with PKCE, nonce, id_token
//! verification). The provider's `sub` is mapped to a Practitioner of the municipality's
//! directory through `Practitioner.identifier` (system = the configured `subject_system`),
//! and the professional acts in that Practitioner's active PractitionerRole. An app
//! registered for administrative roles (an administration console) may instead make the
//! sign-in the municipality's administrator or auditor, or the server administrator, when
//! the id_token's configured role claim says so. A municipality can require multi-factor
//! sign-in, and administrative roles require it by default: an id_token whose `amr`/`acr`
//! shows no second factor is refused.

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
};
use serde_json::Value;

use crate::config::UpstreamLogin;
use crate::error::{Error, Result};
use crate::identity::clients::Role;
use crate::identity::Actor;
use crate::service::Fhir;
use crate::store::facts;

/// `amr` values that show a second factor (RFC 8176).
const MULTI_FACTOR_AMR: [&str; 8] = ["mfa", "otp", "hwk", "swk", "sms", "fpt", "face", "iris"];

fn http_client() -> Result<reqwest::Client> {
    // Following redirects would expose the gateway to server-side request forgery.
    reqwest::ClientBuilder::new().redirect(reqwest::redirect::Policy::none()).build().map_err(Error::internal)
}

fn callback_url(fhir: &Fhir, tenant: &str) -> String {
    format!("{}/{tenant}/auth/callback", fhir.config.public_base_url)
}

fn unavailable(detail: impl std::fmt::Display) -> Error {
    tracing::warn!(target: "renraku::auth", %detail, "the municipality's OpenID Provider cannot be used");
    Error::BadGateway("the municipality's identity provider cannot be reached; try again later".into())
}

/// What the gateway keeps between sending the user to the provider and the callback.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UpstreamState {
    pub pkce_verifier: String,
    pub nonce: String,
}

/// The provider's client for this municipality, from its discovery document (read each
/// time: a provider's keys and endpoints may change, and sign-ins are rare). A macro because
/// the configured client's type-state generics are long to spell out as a return type.
macro_rules! provider_client {
    ($fhir:expr, $tenant:expr, $login:expr, $http:expr) => {{
        let issuer = IssuerUrl::new($login.issuer.clone()).map_err(unavailable)?;
        let metadata = CoreProviderMetadata::discover_async(issuer, $http).await.map_err(unavailable)?;
        let redirect = RedirectUrl::new(callback_url($fhir, $tenant)).map_err(Error::internal)?;
        let secret = $login.client_secret.clone().map(ClientSecret::new);
        CoreClient::from_provider_metadata(metadata, ClientId::new($login.client_id.clone()), secret).set_redirect_uri(redirect)
    }};
}

/// The provider's authorization URL for the pending request `request_id` (sent as `state`).
pub async fn start(fhir: &Fhir, tenant: &str, login: &UpstreamLogin, request_id: &str) -> Result<(String, UpstreamState)> {
    let http = http_client()?;
    let client = provider_client!(fhir, tenant, login, &http);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let state = request_id.to_owned();
    let (url, _, nonce) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, move || CsrfToken::new(state), Nonce::new_random)
        .add_scope(Scope::new("openid".into()))
        .set_pkce_challenge(challenge)
        .url();
    Ok((url.to_string(), UpstreamState { pkce_verifier: verifier.secret().clone(), nonce: nonce.secret().clone() }))
}

/// Completes the sign-in at the callback: exchanges the code, verifies the id_token (issuer,
/// audience, signature, expiry, nonce), and becomes the first of the app's `roles` the
/// sign-in qualifies for: an administrative role by the configured claim (with a second
/// factor unless the configuration waives it), a professional by the subject's mapping to
/// a Practitioner of this municipality (with a second factor if the municipality requires).
pub async fn finish(fhir: &Fhir, tenant: &str, login: &UpstreamLogin, state: &UpstreamState, code: &str, roles: &[Role]) -> Result<Actor> {
    let http = http_client()?;
    let client = provider_client!(fhir, tenant, login, &http);
    let refused = |why: &str| Error::Forbidden(format!("sign-in refused: {why}"));
    let response = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .map_err(unavailable)?
        .set_pkce_verifier(PkceCodeVerifier::new(state.pkce_verifier.clone()))
        .request_async(&http)
        .await
        .map_err(|e| {
            tracing::info!(target: "renraku::auth", error = %e, "upstream code exchange failed");
            refused("the identity provider did not accept the sign-in")
        })?;
    let id_token = openidconnect::TokenResponse::id_token(&response).ok_or_else(|| refused("the identity provider sent no id_token"))?;
    let verifier = client.id_token_verifier();
    let claims = id_token.claims(&verifier, &Nonce::new(state.nonce.clone())).map_err(|e| {
        tracing::info!(target: "renraku::auth", error = %e, "upstream id_token refused");
        refused("the identity provider's id_token did not verify")
    })?;
    let amr_shows = claims.auth_method_refs().is_some_and(|amr| amr.iter().any(|m| MULTI_FACTOR_AMR.contains(&m.as_str())));
    let acr_shows = claims.auth_context_ref().is_some_and(|acr| login.mfa_acr_values.iter().any(|v| v == acr.as_str()));
    let second_factor = amr_shows || acr_shows;
    let subject = claims.subject().as_str().to_owned();
    // Administrators and auditors are recorded as the provider's subject at its issuer, so
    // that no subject can look like an administrator client (`client:{id}`) or another
    // provider's user.
    let user = format!("{}|{subject}", login.issuer);
    // The id_token verified above; its role claim is not one the library models.
    let held = role_values(&verified_payload(&id_token.to_string()), &login.roles.claim);
    let mut refusal = None;
    for role in roles {
        let qualifies = match role {
            Role::Practitioner => true,
            Role::MunicipalAdmin => held.iter().any(|v| login.roles.municipal_admin.contains(v)),
            Role::MunicipalAuditor => held.iter().any(|v| login.roles.municipal_auditor.contains(v)),
            Role::ServerAdmin => held.iter().any(|v| login.roles.server_admin.contains(v)),
        };
        if !qualifies {
            continue;
        }
        let needs_second_factor = if role.is_administrative() { login.roles.require_mfa || login.require_mfa } else { login.require_mfa };
        if needs_second_factor && !second_factor {
            let why = if role.is_administrative() {
                "an administrative role requires a second factor (multi-factor authentication)"
            } else {
                "this municipality requires a second factor (multi-factor authentication)"
            };
            refusal.get_or_insert_with(|| refused(why));
            continue;
        }
        let actor = match role {
            Role::Practitioner => match actor_for_subject(fhir, tenant, &login.subject_system, &subject).await {
                Ok(actor) => actor,
                Err(error) => {
                    refusal.get_or_insert(error);
                    continue;
                }
            },
            Role::MunicipalAdmin => Actor::MunicipalAdmin { tenant: tenant.to_owned(), user: user.clone() },
            Role::MunicipalAuditor => Actor::MunicipalAuditor { tenant: tenant.to_owned(), user: user.clone() },
            Role::ServerAdmin => Actor::ServerAdmin { user: user.clone() },
        };
        return Ok(actor);
    }
    Err(refusal.unwrap_or_else(|| refused("this account holds none of the roles this app is registered for")))
}

/// The claims of a JWT whose signature was verified by the caller (empty if unreadable).
fn verified_payload(jwt: &str) -> Value {
    use base64::Engine;
    jwt.split('.')
        .nth(1)
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

/// The values of the role claim at the dotted `path` (a string or an array of strings).
fn role_values(claims: &Value, path: &str) -> Vec<String> {
    let found = path.split('.').try_fold(claims, |value, key| value.get(key));
    match found {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The professional whose Practitioner carries `system|subject`, acting in their first
/// active PractitionerRole of this municipality.
pub async fn actor_for_subject(fhir: &Fhir, tenant: &str, system: &str, subject: &str) -> Result<Actor> {
    let unknown = || Error::Forbidden("sign-in refused: no professional of this municipality's directory is linked to this account".into());
    let mut connection = fhir.store.connection().await?;
    let practitioner = facts::practitioner_by_identifier(&mut connection, tenant, system, subject).await?.ok_or_else(unknown)?;
    let targets = [("Practitioner".to_owned(), practitioner.clone())];
    let mut roles = facts::referring(&mut connection, "PractitionerRole", "practitioner", &targets).await?;
    roles.sort();
    let (role, organization) = roles
        .into_iter()
        .filter(|(_, role_tenant, _)| role_tenant == tenant)
        .filter_map(|(id, _, content)| {
            let role: Value = serde_json::from_str(&content).ok()?;
            if role.get("active").and_then(Value::as_bool) == Some(false) {
                return None;
            }
            let organization = role.pointer("/organization/reference").and_then(Value::as_str)?;
            let organization = crate::policy::facts::local_reference(organization)?.strip_prefix("Organization/")?.to_owned();
            Some((id, organization))
        })
        .next()
        .ok_or_else(unknown)?;
    Ok(Actor::Practitioner { tenant: tenant.to_owned(), practitioner, role, organization })
}
