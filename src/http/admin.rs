//! The gateway's own administrative endpoints (outside every FHIR base): managing the
//! municipalities served and their OAuth clients. JSON in and out; errors are
//! OperationOutcomes like everywhere.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::request::{principal, RequestId};
use super::response::ErrorReply;
use super::AppState;
use crate::identity::clients::ClientConfig;
use crate::config::TenantConfig;
use crate::error::Error;
use crate::fhir::format::Format;
use crate::identity::Principal;

/// The caller of an administrative endpoint (the token's principal; the service decides
/// whether it may), with the request id its errors carry.
pub struct AdminCaller {
    principal: Result<Principal, Error>,
    /// The audit context (the server's chain; the service names the chain it records in).
    context: crate::identity::Context,
    request_id: RequestId,
    query: Vec<(String, String)>,
}

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let request_id = parts.extensions.get::<RequestId>().cloned().unwrap_or(RequestId(String::new()));
        // Nothing here serves anonymous callers: refused (and recorded) before a body is read.
        let principal = principal(state, &parts.headers, None).await.and_then(|principal| match principal {
            Principal::Anonymous => Err(Error::Unauthorized("this request needs an access token (Authorization: Bearer …)".into())),
            principal => Ok(principal),
        });
        super::request::PrincipalKind::note(&parts.extensions, principal.as_ref().ok());
        let query = crate::service::parse_query_string(parts.uri.query().unwrap_or_default());
        let mut context = super::request::call_context(state, crate::audit::SERVER_CHAIN, &parts.extensions);
        match &principal {
            Ok(principal) => context.principal = principal.clone(),
            Err(error) => {
                // A refused credential is a denied request, recorded before the answer.
                let what = format!("{} {}", parts.method, parts.uri.path());
                if let Err(audit_error) = state.fhir.record_refused(&context, &what, error).await {
                    let reply = ErrorReply { error: audit_error, format: Format::Json, request_id: request_id.0.clone() };
                    return Err(reply.into_response());
                }
            }
        }
        Ok(AdminCaller { principal, context, request_id, query })
    }
}

impl AdminCaller {
    /// Renders `result` (`status` and JSON on success, an OperationOutcome otherwise).
    fn reply(&self, status: StatusCode, result: Result<Value, Error>) -> Response {
        match result {
            Ok(_) if status == StatusCode::NO_CONTENT => status.into_response(),
            Ok(body) => (status, Json(body)).into_response(),
            Err(error) => ErrorReply { error, format: Format::Json, request_id: self.request_id.0.clone() }.into_response(),
        }
    }

    /// The authenticated principal, or the same error its verification gave (errors are
    /// not `Clone`). Nothing here serves anonymous callers, so handlers ask for it before
    /// they read a body.
    fn principal(&self) -> Result<&Principal, Error> {
        match &self.principal {
            Ok(principal) => Ok(principal),
            Err(Error::Unauthorized(message)) => Err(Error::Unauthorized(message.clone())),
            Err(other) => Err(Error::Internal(other.to_string())),
        }
    }
}

/// A municipality as `POST /admin/tenants` takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub slug: String,
    pub code: String,
    pub name: String,
}

fn describe(state: &AppState, tenant: &TenantConfig) -> Value {
    json!({ "slug": tenant.slug, "code": tenant.code, "name": tenant.name, "fhirBase": state.config.base_url(&tenant.slug) })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::bad_request(format!("the body is not {what}: {e}")))
}

/// `GET /admin/tenants`
pub async fn list_tenants(State(state): State<AppState>, caller: AdminCaller) -> Response {
    let result = caller
        .principal()
        .and_then(|p| crate::admin::list_tenants(&state.fhir, p))
        .map(|tenants| json!({ "tenants": tenants.iter().map(|t| describe(&state, t)).collect::<Vec<_>>() }));
    caller.reply(StatusCode::OK, result)
}

/// `POST /admin/tenants` with `{"slug": …, "code": …, "name": …}`
pub async fn add_tenant(State(state): State<AppState>, caller: AdminCaller, body: axum::body::Bytes) -> Response {
    let result = async {
        caller.principal()?;
        let new: NewTenant = parse(&body, "{\"slug\", \"code\", \"name\"}")?;
        let tenant = TenantConfig { slug: new.slug, code: new.code, name: new.name, login: None };
        crate::admin::add_tenant(&state.fhir, &caller.context, tenant).await.map(|t| describe(&state, &t))
    };
    let result = result.await;
    caller.reply(StatusCode::CREATED, result)
}

/// `GET /admin/clients?tenant=…`
pub async fn list_clients(State(state): State<AppState>, caller: AdminCaller) -> Response {
    let result = async {
        let tenant = caller.query.iter().find(|(n, _)| n == "tenant").map(|(_, v)| v.clone());
        let tenant = tenant.ok_or_else(|| Error::bad_request_at("tenant is missing", "tenant"))?;
        crate::admin::list_clients(&state.fhir, caller.principal()?, &tenant).await.map(|clients| json!({ "clients": clients }))
    }
    .await;
    caller.reply(StatusCode::OK, result)
}

/// `POST /admin/clients` with a client registration (the `[[clients]]` fields, as JSON)
pub async fn register_client(State(state): State<AppState>, caller: AdminCaller, body: axum::body::Bytes) -> Response {
    let result = async {
        caller.principal()?;
        let client: ClientConfig = parse(&body, "a client registration")?;
        crate::admin::register_client(&state.fhir, &caller.context, client).await.map(|c| json!(c))
    };
    let result = result.await;
    caller.reply(StatusCode::CREATED, result)
}

/// `DELETE /admin/clients/{tenant}/{client_id}`
pub async fn remove_client(
    State(state): State<AppState>,
    Path((tenant, client_id)): Path<(String, String)>,
    caller: AdminCaller,
) -> Response {
    let result = async {
        caller.principal()?;
        crate::admin::remove_client(&state.fhir, &caller.context, &tenant, &client_id).await.map(|()| Value::Null)
    };
    let result = result.await;
    caller.reply(StatusCode::NO_CONTENT, result)
}

/// `POST /admin/clients/{tenant}/{client_id}/approve`
pub async fn approve_client(
    State(state): State<AppState>,
    Path((tenant, client_id)): Path<(String, String)>,
    caller: AdminCaller,
) -> Response {
    let result = async {
        caller.principal()?;
        crate::admin::approve_client(&state.fhir, &caller.context, &tenant, &client_id).await.map(|c| json!(c))
    };
    let result = result.await;
    caller.reply(StatusCode::OK, result)
}

/// `POST /admin/signing-keys/rotate`
pub async fn rotate_signing_key(State(state): State<AppState>, caller: AdminCaller) -> Response {
    let result = async {
        caller.principal()?;
        crate::admin::rotate_signing_key(&state.fhir, &caller.context).await.map(|kid| json!({ "kid": kid }))
    };
    let result = result.await;
    caller.reply(StatusCode::OK, result)
}
