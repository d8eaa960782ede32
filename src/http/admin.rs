//! The gateway's own administrative endpoints (outside every FHIR base): managing the
//! municipalities served. JSON in and out; errors are OperationOutcomes like everywhere.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::request::{principal, RequestId};
use super::response::ErrorReply;
use super::AppState;
use crate::config::TenantConfig;
use crate::error::Error;
use crate::fhir::format::Format;

/// A municipality as `POST /admin/tenants` takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub slug: String,
    pub code: String,
    pub name: String,
}

fn describe(state: &AppState, tenant: &TenantConfig) -> serde_json::Value {
    json!({ "slug": tenant.slug, "code": tenant.code, "name": tenant.name, "fhirBase": state.config.base_url(&tenant.slug) })
}

fn fail(request_id: &RequestId, error: Error) -> Response {
    ErrorReply { error, format: Format::Json, request_id: request_id.0.clone() }.into_response()
}

/// `GET /admin/tenants`
pub async fn list_tenants(State(state): State<AppState>, request_id: axum::Extension<RequestId>, headers: HeaderMap) -> Response {
    let result = async {
        let principal = principal(&state, &headers, None).await?;
        state.fhir.list_tenants(&principal)
    }
    .await;
    match result {
        Ok(tenants) => Json(json!({ "tenants": tenants.iter().map(|t| describe(&state, t)).collect::<Vec<_>>() })).into_response(),
        Err(error) => fail(&request_id, error),
    }
}

/// `POST /admin/tenants` with `{"slug": …, "code": …, "name": …}`
pub async fn add_tenant(
    State(state): State<AppState>,
    request_id: axum::Extension<RequestId>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let principal = principal(&state, &headers, None).await?;
        let new: NewTenant = serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request(format!("the body must be {{\"slug\", \"code\", \"name\"}}: {e}")))?;
        state.fhir.add_tenant(&principal, TenantConfig { slug: new.slug, code: new.code, name: new.name, login: None }).await
    }
    .await;
    match result {
        Ok(tenant) => (StatusCode::CREATED, Json(describe(&state, &tenant))).into_response(),
        Err(error) => fail(&request_id, error),
    }
}
