//! The SMART authorization server's endpoints, without HTTP: discovery
//! (`.well-known/smart-configuration`), the token endpoint (`client_credentials` for
//! SMART Backend Services), introspection (RFC 7662) and revocation (RFC 7009).
//!
//! Each municipality has its own endpoints under `/{tenant}/auth/`, and a token is valid only
//! at the base it was issued for.

use chrono::Duration;
use serde_json::{json, Value};

use super::assertion;
use crate::identity::clients::{ClientConfig, ClientKind, Role, SERVER_CLIENTS};
use crate::identity::scopes::{ResourceScope, ScopeContext, Scopes};
use super::tokens::{self, TokenGrant};
use super::OAuthError;
use crate::identity::{Actor, Permission, Principal};
use crate::audit::Entity;
use crate::service::Fhir;
use crate::identity::Context;

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of backend-services access tokens.
pub use crate::config::Endpoints;

pub const SYSTEM_TOKEN_SECONDS: i64 = 300;

/// `GET /{tenant}/fhir/.well-known/smart-configuration`. The capabilities list only what
/// this server does today.
pub fn smart_configuration(fhir: &Fhir, tenant: &str) -> Value {
    let endpoints = Endpoints::of(&fhir.config, tenant);
    json!({
        "issuer": endpoints.issuer,
        "jwks_uri": endpoints.jwks,
        "authorization_endpoint": endpoints.authorize,
        "token_endpoint": endpoints.token,
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "scopes_supported": [
            "openid", "fhirUser", "launch", "launch/patient", "offline_access", "online_access",
            "patient/*.cruds", "patient/*.rs", "user/*.cruds", "user/*.rs", "system/*.cruds", "system/*.rs"
        ],
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "introspection_endpoint": endpoints.introspect,
        "revocation_endpoint": endpoints.revoke,
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-ehr", "launch-standalone", "authorize-post", "context-ehr-patient", "client-public", "client-confidential-asymmetric",
            "sso-openid-connect", "context-standalone-patient", "context-banner", "context-style",
            "permission-offline", "permission-online", "permission-patient", "permission-user",
            "permission-v1", "permission-v2"
        ]
    })
}

/// `GET /{tenant}/auth/.well-known/openid-configuration`: the OpenID Provider metadata of the
/// municipality's authorization server (for the id_tokens it issues).
pub fn openid_configuration(fhir: &Fhir, tenant: &str) -> Value {
    let endpoints = Endpoints::of(&fhir.config, tenant);
    json!({
        "issuer": endpoints.issuer,
        "authorization_endpoint": endpoints.authorize,
        "token_endpoint": endpoints.token,
        "jwks_uri": endpoints.jwks,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "fhirUser", "profile", "offline_access"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"]
    })
}

/// `POST /{tenant}/auth/token` with a form body, recorded in the audit trail (issued or
/// refused) before the answer leaves.
pub async fn token(fhir: &Fhir, context: &Context, form: &[(String, String)]) -> Result<Value, OAuthError> {
    let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let result = issue(fhir, &context.tenant, form).await;
    let subtype = if field("grant_type") == Some("refresh_token") { "token-refresh" } else { "token-issue" };
    let mut entities = vec![Entity::Detail { name: "grant_type".into(), value: field("grant_type").unwrap_or_default().to_owned() }];
    let client = field("client_id")
        .map(str::to_owned)
        .or_else(|| field("client_assertion").and_then(assertion::unverified_issuer));
    if let Some(client) = client {
        entities.push(Entity::Detail { name: "client_id".into(), value: client });
    }
    let holder = match &result {
        Ok(answer) => {
            if let Some(scope) = answer.get("scope").and_then(Value::as_str) {
                entities.push(Entity::Detail { name: "scope".into(), value: scope.to_owned() });
            }
            match answer.get("access_token").and_then(Value::as_str) {
                Some(token) => {
                    let mut connection = fhir.store.connection().await?;
                    tokens::verify(&fhir.store, &mut connection, &fhir.tokens, fhir.clock.now(), Some(&context.tenant), token).await.unwrap_or(Principal::Anonymous)
                }
                None => Principal::Anonymous,
            }
        }
        Err(_) => Principal::Anonymous,
    };
    let refused = result.as_ref().err().map(|e| format!("{}: {}", e.error(), e.description));
    fhir.record_security(context, &holder, subtype, refused, entities).await?;
    result
}

async fn issue(fhir: &Fhir, tenant: &str, form: &[(String, String)]) -> Result<Value, OAuthError> {
    let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    match field("grant_type") {
        Some("client_credentials") => client_credentials(fhir, tenant, form).await,
        Some("authorization_code") => super::launch::exchange_code(fhir, tenant, form).await,
        Some("refresh_token") => super::launch::refresh(fhir, tenant, form).await,
        Some(other) => Err(OAuthError::unsupported_grant_type(format!("the grant type '{other}' is not supported"))),
        None => Err(OAuthError::invalid_request("grant_type is missing")),
    }
}

async fn client_credentials(fhir: &Fhir, tenant: &str, form: &[(String, String)]) -> Result<Value, OAuthError> {
    let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if field("client_assertion_type") != Some(JWT_BEARER) {
        return Err(OAuthError::invalid_client(format!("client_assertion_type must be {JWT_BEARER}")));
    }
    let assertion = field("client_assertion").ok_or_else(|| OAuthError::invalid_client("client_assertion is missing"))?;
    let client_id = assertion::unverified_issuer(assertion)
        .ok_or_else(|| OAuthError::invalid_client("the client assertion is not a JWT with an iss claim"))?;
    // A server administrator's client is registered once, for every municipality's endpoint.
    let client = match fhir.current_client(tenant, &client_id).await? {
        Some(client) => Some(client),
        None => fhir.client(SERVER_CLIENTS, &client_id).filter(|c| c.kind == ClientKind::Administrator),
    }
    .ok_or_else(|| OAuthError::invalid_client("the client is not registered at this municipality"))?;
    if field("client_id").is_some_and(|given| given != client.client_id) {
        return Err(OAuthError::invalid_client("client_id does not match the assertion's issuer"));
    }
    if !client.is_backend_service() || !client.may_use("client_credentials") {
        return Err(OAuthError::unauthorized_client("this client may not use client_credentials"));
    }
    if client.awaits_approval() {
        return Err(OAuthError::unauthorized_client("this client's registration awaits approval by a second administrator"));
    }
    let endpoints = Endpoints::of(&fhir.config, tenant);
    let now = fhir.clock.now();
    let keys = assertion::client_keys(&client).await?;
    let verified = assertion::verify(assertion, &client, &keys, &endpoints.token, now.timestamp())?;
    let mut connection = fhir.store.connection().await?;
    if !tokens::record_assertion(&mut connection, now, &verified.client_id, &verified.jti, verified.expires_at).await? {
        return Err(OAuthError::invalid_client("the client assertion's jti has been used before"));
    }
    let requested = Scopes::parse(field("scope").unwrap_or_default()).map_err(OAuthError::invalid_scope)?;
    let granted = narrow(&requested, &client.allowed_scopes(), ScopeContext::System);
    if granted.resources.is_empty() {
        return Err(OAuthError::invalid_scope("none of the requested scopes is a system/ scope this client may be granted"));
    }
    let actor = backend_actor(tenant, &client).ok_or_else(|| OAuthError::unauthorized_client("this client's registration names no role it may act in"))?;
    let grant = TokenGrant {
        tenant: tenant.to_owned(),
        actor,
        scopes: granted.clone(),
        patient: None,
        client_id: client.client_id.clone(),
        lifetime: Duration::seconds(SYSTEM_TOKEN_SECONDS),
    };
    if let Err(reason) = crate::policy::facts::actor_standing(&mut *connection, &grant.actor, now).await.map_err(OAuthError::server_error)? {
        return Err(OAuthError::unauthorized_client(format!("this client cannot act now: {reason}")));
    }
    let issued = tokens::issue(&mut connection, now, &grant).await?;
    tracing::info!(target: "renraku::auth", tenant, client = %client.client_id, scope = %granted, "access token issued (client_credentials)");
    Ok(json!({
        "access_token": issued.access_token,
        "token_type": "bearer",
        "expires_in": SYSTEM_TOKEN_SECONDS,
        "scope": granted.to_string(),
    }))
}

/// Whom a backend-services client's token speaks for: a system client's Organization, or
/// an administrator client's role (its user named `client:{client_id}`, so the trail tells
/// automation from people).
pub fn backend_actor(tenant: &str, client: &ClientConfig) -> Option<Actor> {
    let user = format!("client:{}", client.client_id);
    match (client.kind, client.roles.as_slice()) {
        (ClientKind::System, _) => Some(Actor::System {
            tenant: tenant.to_owned(),
            client: client.client_id.clone(),
            organization: client.organization.clone().unwrap_or_default(),
            maintains_directory: client.maintains_directory,
        }),
        (ClientKind::Administrator, [Role::ServerAdmin]) => Some(Actor::ServerAdmin { user }),
        (ClientKind::Administrator, [Role::MunicipalAdmin]) => Some(Actor::MunicipalAdmin { tenant: client.tenant.clone(), user }),
        (ClientKind::Administrator, [Role::MunicipalAuditor]) => Some(Actor::MunicipalAuditor { tenant: client.tenant.clone(), user }),
        _ => None,
    }
}

/// The part of `requested` that `allowed` covers, in `context` only: each requested
/// resource scope keeps the permissions some allowed scope of the same context (for its
/// type or `*`) grants. Granular (query) scopes are kept only when allowed verbatim.
pub fn narrow(requested: &Scopes, allowed: &Scopes, context: ScopeContext) -> Scopes {
    let mut granted = Scopes::default();
    for scope in requested.resources.iter().filter(|s| s.context == context) {
        let permissions: Vec<Permission> = Permission::ALL
            .into_iter()
            .filter(|p| scope.permissions.contains(p))
            .filter(|p| {
                allowed.resources.iter().any(|a| {
                    a.context == context
                        && a.permissions.contains(p)
                        && (a.resource_type.is_none() || a.resource_type == scope.resource_type)
                        && (a.query.is_none() || a.query == scope.query)
                })
            })
            .collect();
        if !permissions.is_empty() {
            granted.resources.push(ResourceScope { permissions, ..scope.clone() });
        }
    }
    granted
}

/// `POST /{tenant}/auth/introspect` (RFC 7662), for a caller holding a valid token of this
/// municipality. An unknown, expired, revoked or foreign token is `{"active": false}`.
pub async fn introspect(fhir: &Fhir, tenant: &str, caller: &Principal, token: &str) -> Result<Value, OAuthError> {
    if matches!(caller, Principal::Anonymous) {
        return Err(OAuthError::invalid_client("introspection needs the caller's own bearer token"));
    }
    let mut connection = fhir.store.connection().await?;
    let now = fhir.clock.now();
    let Some(info) = tokens::describe(&mut connection, now, tenant, token).await? else {
        return Ok(json!({ "active": false }));
    };
    let mut answer = json!({
        "active": true,
        "scope": info.scope,
        "client_id": info.client_id,
        "token_type": "Bearer",
        "exp": info.expires_at.timestamp(),
        "iat": info.issued_at.timestamp(),
        "aud": format!("{}/{tenant}/fhir", fhir.config.public_base_url),
        "iss": Endpoints::of(&fhir.config, tenant).issuer,
    });
    if let Some(patient) = info.patient {
        crate::fhir::set(&mut answer, "patient", json!(patient));
    }
    match &info.actor {
        Actor::Practitioner { practitioner, role, .. } => {
            crate::fhir::set(&mut answer, "sub", json!(practitioner));
            crate::fhir::set(&mut answer, "fhirUser", json!(format!("{}/{tenant}/fhir/PractitionerRole/{role}", fhir.config.public_base_url)));
        }
        Actor::System { client, .. } => crate::fhir::set(&mut answer, "sub", json!(client)),
        Actor::MunicipalAdmin { user, .. } | Actor::MunicipalAuditor { user, .. } | Actor::ServerAdmin { user } => {
            crate::fhir::set(&mut answer, "sub", json!(user))
        }
        #[cfg(feature = "test-support")]
        Actor::TestUnrestricted => crate::fhir::set(&mut answer, "sub", json!("test-suite")),
    }
    Ok(answer)
}

/// `POST /{tenant}/auth/revoke` (RFC 7009): whoever holds a token may revoke it; the answer
/// is the same whether or not the token existed.
pub async fn revoke(fhir: &Fhir, context: &Context, token: &str) -> Result<(), OAuthError> {
    let mut connection = fhir.store.connection().await?;
    // Whose token it was (anonymous when it was unknown or no longer valid).
    let holder = tokens::verify(&fhir.store, &mut connection, &fhir.tokens, fhir.clock.now(), Some(&context.tenant), token).await.unwrap_or(Principal::Anonymous);
    tokens::revoke(&mut connection, token).await?;
    fhir.record_security(context, &holder, "token-revoke", None, Vec::new()).await?;
    Ok(())
}

/// The redirect URI of the demo app client (any local app on port 9000 may use it).
pub const DEMO_APP_REDIRECT: &str = "http://127.0.0.1:9000/callback";

/// The clients of the demo: 伊那中央病院's EHR (backend services; its private keys are in
/// `demo/keys/`) and a public app client registered at every demo municipality.
pub fn demo_clients() -> Vec<ClientConfig> {
    let jwks: Value = serde_json::from_str(include_str!("../../demo/keys/ehr-ina-jwks.json")).unwrap_or(Value::Null);
    vec![ClientConfig {
        client_id: "demo-ehr-ina".into(),
        tenant: "ina".into(),
        kind: ClientKind::System,
        name: "伊那中央病院 電子カルテ（デモ）".into(),
        organization: Some("demo-ina-central-hospital".into()),
        redirect_uris: Vec::new(),
        scopes: "system/*.cruds".into(),
        jwks: Some(jwks),
        jwks_url: None,
        jwks_file: None,
        grant_types: Vec::new(),
        roles: Vec::new(),
        maintains_directory: false,
        approval: None,
    }]
    .into_iter()
    .chain(["ina", "minamiminowa", "minowa"].into_iter().map(|tenant| {
        ClientConfig::public_app(
            "demo-app",
            tenant,
            "連絡帳アプリ（デモ）",
            &[DEMO_APP_REDIRECT, "http://localhost:9000/callback"],
            "openid fhirUser profile launch launch/patient offline_access online_access patient/*.cruds user/*.cruds",
        )
    }))
    .collect()
}
