//! The SMART authorization server's HTTP face: discovery under each FHIR base, and the
//! OAuth endpoints under `/{tenant}/auth/`. OAuth endpoints answer OAuth's JSON errors
//! (RFC 6749 §5.2) with `Cache-Control: no-store`; discovery of an unknown municipality is
//! a 404 OperationOutcome like every FHIR path.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::request::{principal, RequestId};
use super::response::ErrorReply;
use super::AppState;
use crate::auth::{server, OAuthError};
use crate::error::Error;
use crate::fhir::format::Format;
use crate::service::parse_query_string;

fn unknown_tenant(request_id: &RequestId, tenant: &str) -> Response {
    let error = Error::NotFound(format!("the FHIR base '/{tenant}/fhir'"));
    ErrorReply { error, format: Format::Json, request_id: request_id.0.clone() }.into_response()
}

fn no_store(status: StatusCode, body: Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn oauth_reply(result: Result<Value, OAuthError>) -> Response {
    match result {
        Ok(body) => no_store(StatusCode::OK, body),
        Err(error) => {
            let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut response = no_store(status, json!({ "error": error.error(), "error_description": error.description }));
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

fn form_of(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(OAuthError::invalid_request("the body must be application/x-www-form-urlencoded"));
    }
    Ok(parse_query_string(&String::from_utf8_lossy(body)))
}

/// `GET /{tenant}/fhir/.well-known/smart-configuration`
pub async fn smart_configuration(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Path(tenant): Path<String>,
) -> Response {
    if !matches!(state.fhir.serves_now(&tenant).await, Ok(true)) {
        return unknown_tenant(&request_id, &tenant);
    }
    Json(server::smart_configuration(&state.fhir, &tenant)).into_response()
}

/// What every OAuth endpoint receives: the municipality, the headers and the form body.
pub struct OAuthRequest {
    tenant: String,
    context: crate::identity::Context,
    headers: HeaderMap,
    form: Result<Vec<(String, String)>, OAuthError>,
}

impl OAuthRequest {
    fn field(&self, name: &str) -> Result<String, OAuthError> {
        let form = self.form.as_ref().map_err(Clone::clone)?;
        form.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| OAuthError::invalid_request(format!("{name} is missing")))
    }
}

impl axum::extract::FromRequest<AppState> for OAuthRequest {
    type Rejection = Response;

    /// A known municipality (else a 404 OperationOutcome), the headers, the form body.
    async fn from_request(request: axum::extract::Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let request_id = request.extensions().get::<RequestId>().cloned().unwrap_or(RequestId(String::new()));
        let tenant = request.uri().path().trim_start_matches('/').split('/').next().unwrap_or_default().to_owned();
        if !matches!(state.fhir.serves_now(&tenant).await, Ok(true)) {
            return Err(unknown_tenant(&request_id, &tenant));
        }
        let headers = request.headers().clone();
        let context = super::request::call_context(state, &tenant, request.extensions());
        let body = axum::body::Bytes::from_request(request, state).await.map_err(IntoResponse::into_response)?;
        let form = form_of(&headers, &body);
        Ok(OAuthRequest { tenant, context, headers, form })
    }
}

/// `POST /{tenant}/auth/token`
pub async fn token(State(state): State<AppState>, request: OAuthRequest) -> Response {
    let answer = match request.form {
        Ok(form) => server::token(&state.fhir, &request.context, &form).await,
        Err(error) => Err(error),
    };
    oauth_reply(answer)
}

/// `POST /{tenant}/auth/introspect` (the caller presents its own bearer token)
pub async fn introspect(State(state): State<AppState>, request: OAuthRequest) -> Response {
    let answer = async {
        let token = request.field("token")?;
        let caller = principal(&state, &request.headers, Some(&request.tenant))
            .await
            .map_err(|_| OAuthError::invalid_client("introspection needs the caller's own valid bearer token"))?;
        server::introspect(&state.fhir, &request.tenant, &caller, &token).await
    };
    oauth_reply(answer.await)
}

/// `POST /{tenant}/auth/revoke`
pub async fn revoke(State(state): State<AppState>, request: OAuthRequest) -> Response {
    let answer = async {
        let token = request.field("token")?;
        server::revoke(&state.fhir, &request.context, &token).await?;
        Ok(json!({}))
    };
    oauth_reply(answer.await)
}
