//! Turning service results into HTTP responses: FHIR headers, `Prefer`, `_summary`,
//! `_elements`, and errors as OperationOutcomes in the negotiated format.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::Error;
use crate::fhir::elements::{apply_elements, apply_summary, Summary};
use crate::fhir::format::{render, Format};
use crate::outcome::{Issue, OperationOutcome};
use crate::http::request::{FhirRequest, Return};
use crate::service::Stored;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ErrorReply {
    pub error: Error,
    pub format: Format,
    pub request_id: String,
}

impl IntoResponse for ErrorReply {
    fn into_response(self) -> Response {
        if let Error::Internal(detail) = &self.error {
            tracing::error!(request_id = %self.request_id, %detail, "internal error");
        }
        let outcome = self.error.to_outcome(&self.request_id).to_json();
        let mut response = body_response(self.error.status(), &outcome, self.format, false);
        if let Error::Unauthorized(_) = self.error {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        match self.error {
            Error::MethodNotAllowed => {
                response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE"));
            }
            Error::ReadOnly(_) => {
                response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            _ => {}
        }
        response
    }
}

/// A successful reply.
pub struct FhirReply {
    pub status: StatusCode,
    pub body: Option<Value>,
    pub headers: Vec<(HeaderName, String)>,
    pub format: Format,
    pub pretty: bool,
}

impl IntoResponse for FhirReply {
    fn into_response(self) -> Response {
        let mut response = match &self.body {
            Some(body) => body_response(self.status, body, self.format, self.pretty),
            None => self.status.into_response(),
        };
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

fn body_response(status: StatusCode, body: &Value, format: Format, pretty: bool) -> Response {
    match render(body, format, pretty) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, format.content_type())], bytes).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot render a response");
            let fallback = Error::internal("rendering").to_outcome("").to_json();
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, Format::Json.content_type())], fallback.to_string())
                .into_response()
        }
    }
}

/// The result type of every FHIR handler.
pub type Reply = Result<FhirReply, ErrorReply>;

impl FhirRequest {
    /// A body reply in the request's format.
    pub fn reply(&self, status: StatusCode, body: Value) -> FhirReply {
        FhirReply { status, body: Some(body), headers: Vec::new(), format: self.format, pretty: self.pretty }
    }

    /// A reply carrying one resource version, with `ETag` and `Last-Modified`, shaped by
    /// `_summary` and `_elements` (for reads) or `Prefer: return` (for writes).
    pub fn resource_reply(&self, status: StatusCode, stored: Stored, is_write: bool) -> Result<FhirReply, ErrorReply> {
        let mut headers = vec![
            (header::ETAG, format!("W/\"{}\"", stored.version_id)),
            (header::LAST_MODIFIED, http_date(&stored.last_updated)),
        ];
        if status == StatusCode::CREATED || (is_write && status == StatusCode::OK) {
            let location = format!(
                "{}/{}/{}/_history/{}",
                self.context.base_url, stored.resource_type, stored.id, stored.version_id
            );
            let name = if status == StatusCode::CREATED { header::LOCATION } else { header::CONTENT_LOCATION };
            headers.push((name, location));
        }
        let body = if is_write {
            match self.prefer_return {
                Return::Minimal => None,
                Return::OperationOutcome => {
                    let mut issues = vec![Issue::information(format!("{}/{} version {} stored", stored.resource_type, stored.id, stored.version_id))];
                    issues.extend(self.validator.warnings(&stored.resource));
                    Some(OperationOutcome::new(issues).to_json())
                }
                Return::Representation => Some(stored.resource),
            }
        } else {
            let mut resource = stored.resource;
            for (name, value) in &self.query {
                match name.as_str() {
                    "_summary" => apply_summary(&mut resource, Summary::parse(value).map_err(|e| self.fail(e))?),
                    "_elements" => {
                        let names: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
                        apply_elements(&mut resource, &names);
                    }
                    _ => {}
                }
            }
            Some(resource)
        };
        Ok(FhirReply { status, body, headers, format: self.format, pretty: self.pretty })
    }
}

/// `2026-11-25T01:02:03.456789Z` as an HTTP date.
pub fn http_date(instant: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(instant)
        .map(|date| date.with_timezone(&chrono::Utc).format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default()
}
