//! What the HTTP layer reads from a request before calling the service: the tenant, the
//! negotiated format, FHIR headers (`If-Match`, `Prefer`, …), the query, and the body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use serde_json::Value;

use crate::auth::tokens;
use crate::error::Error;
use crate::fhir::format::{self, Format};
use crate::http::response::ErrorReply;
use crate::http::AppState;
use crate::identity::Principal;
use crate::service::bundle::parse_etag;
use crate::service::parse_query_string;
use crate::identity::Context;

/// The request id assigned by the request-id middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The peer's network address (the socket's, as the server saw it; no forwarding header is
/// trusted), set by the request-id middleware; None where there is no socket (tests).
#[derive(Debug, Clone)]
pub struct ClientAddress(pub Option<String>);

/// `Prefer: return=…`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

/// Everything about a FHIR request except its body.
#[derive(Debug, Clone)]
pub struct FhirRequest {
    pub context: Context,
    pub format: Format,
    pub pretty: bool,
    pub query: Vec<(String, String)>,
    pub raw_query: String,
    pub prefer_return: Return,
    pub if_match: Option<i64>,
    pub if_none_match: Option<i64>,
    pub if_modified_since: Option<chrono::DateTime<chrono::Utc>>,
    pub if_none_exist: Option<String>,
    /// A Binary path whose `Accept` names no FHIR format: the content itself is wanted.
    pub native: bool,
    pub headers: HeaderMap,
    /// For the warnings a written resource earns (`Prefer: return=OperationOutcome`).
    pub validator: std::sync::Arc<crate::fhir::validate::Validator>,
}

impl FromRequestParts<AppState> for FhirRequest {
    type Rejection = ErrorReply;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let raw_query = parts.uri.query().unwrap_or_default().to_owned();
        let query = parse_query_string(&raw_query);
        let format_param = query.iter().find(|(name, _)| name == "_format").map(|(_, value)| value.clone()).filter(|value| !value.is_empty());
        let fail = |error: Error| ErrorReply { error, format: Format::Json, request_id: request_id.clone() };
        let accept = parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let binary = crate::http::binary::is_binary_path(parts.uri.path());
        // A Binary is read in its native form unless a FHIR format is asked for, whatever
        // else `Accept` names (`image/jpeg`, `*/*`).
        let native = binary && format_param.is_none() && !accept.is_some_and(names_fhir_format);
        let format = match negotiate(format_param.as_deref(), accept) {
            Ok(format) => format,
            Err(_) if native => Format::Json,
            Err(error) => return Err(fail(error)),
        };
        let fail = |error: Error| ErrorReply { error, format, request_id: request_id.clone() };
        // No FHIR id, parameter or string holds a NUL character (PostgreSQL text cannot
        // either): a URL carrying one is refused here, alike on both backends.
        let decoded_path = percent_encoding::percent_decode_str(parts.uri.path()).decode_utf8_lossy();
        if decoded_path.contains('\0') || query.iter().any(|(name, value)| name.contains('\0') || value.contains('\0')) {
            return Err(fail(Error::bad_request("the URL contains a NUL character, which no FHIR id or parameter may hold")));
        }
        let tenant = parts.uri.path().trim_start_matches('/').split('/').next().unwrap_or_default().to_owned();
        if !state.fhir.serves_now(&tenant).await.map_err(fail)? {
            return Err(fail(Error::NotFound(format!("the FHIR base '/{tenant}/fhir'"))));
        }
        let pretty = query.iter().any(|(name, value)| name == "_pretty" && value == "true");
        let prefer = header_text(&parts.headers, "prefer");
        let prefer_return = match prefer.as_deref().and_then(|p| preference(p, "return")) {
            Some("minimal") => Return::Minimal,
            Some("OperationOutcome") => Return::OperationOutcome,
            _ => Return::Representation,
        };
        let lenient = prefer.as_deref().and_then(|p| preference(p, "handling")) == Some("lenient");
        let if_match = match header_text(&parts.headers, "if-match") {
            Some(text) => Some(parse_etag(&text).ok_or_else(|| fail(Error::bad_request("If-Match must be an ETag such as W/\"3\"")))?),
            None => None,
        };
        let if_none_match = header_text(&parts.headers, "if-none-match").and_then(|text| parse_etag(&text));
        let if_modified_since = header_text(&parts.headers, "if-modified-since")
            .and_then(|text| chrono::DateTime::parse_from_rfc2822(&text).ok())
            .map(|date| date.with_timezone(&chrono::Utc));
        let purpose_of_use = match header_text(&parts.headers, "x-purpose-of-use") {
            Some(code) if is_purpose_code(&code) => Some(code),
            Some(_) => {
                return Err(fail(Error::bad_request_at(
                    "X-Purpose-Of-Use must be one v3 PurposeOfUse code, such as TREAT",
                    "X-Purpose-Of-Use",
                )))
            }
            None => None,
        };
        let mut context = Context {
            base_url: state.config.base_url(&tenant),
            tenant,
            principal: Principal::Anonymous,
            request_id: request_id.clone(),
            lenient,
            client_address: client_address(parts),
            purpose_of_use,
        };
        let verified = principal(state, &parts.headers, Some(&context.tenant)).await.and_then(|principal| {
            // A request that carries content must be authenticated before its body is read:
            // an anonymous caller's bytes are never parsed.
            let carries_body = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE);
            if carries_body && principal == Principal::Anonymous {
                return Err(Error::Unauthorized("this request needs an access token (Authorization: Bearer …)".into()));
            }
            Ok(principal)
        });
        PrincipalKind::note(&parts.extensions, verified.as_ref().ok());
        context.principal = match verified {
            Ok(principal) => principal,
            Err(error) => {
                // A refused credential is a denied request: it is recorded before the answer.
                let what = format!("{} {}", parts.method, parts.uri.path());
                if let Err(audit_error) = state.fhir.record_refused(&context, &what, &error).await {
                    return Err(fail(audit_error));
                }
                return Err(fail(error));
            }
        };
        Ok(FhirRequest {
            context,
            format,
            pretty,
            query,
            raw_query,
            prefer_return,
            if_match,
            if_none_match,
            if_modified_since,
            if_none_exist: header_text(&parts.headers, "if-none-exist"),
            native,
            headers: parts.headers.clone(),
            validator: state.fhir.validator.clone(),
        })
    }
}

fn client_address(parts: &Parts) -> Option<String> {
    parts.extensions.get::<ClientAddress>().and_then(|address| address.0.clone())
}

/// The context of a request outside the FHIR API (OAuth endpoints, sign-in pages): no
/// principal yet, but the municipality, request id and address the audit trail records.
pub fn call_context(state: &AppState, tenant: &str, extensions: &axum::http::Extensions) -> Context {
    Context {
        tenant: tenant.to_owned(),
        principal: Principal::Anonymous,
        base_url: state.config.base_url(tenant),
        request_id: extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default(),
        lenient: false,
        client_address: extensions.get::<ClientAddress>().and_then(|a| a.0.clone()),
        purpose_of_use: None,
    }
}

/// A v3 PurposeOfUse code: upper-case letters and digits (`TREAT`, `ETREAT`, `HPAYMT`, …).
fn is_purpose_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= 32 && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// The principal of a request's `Authorization: Bearer` token (anonymous without one), for
/// `tenant`'s base (`None`: the gateway's administrative endpoints).
/// Where the extractors note what kind of principal a request came from, for its log line
/// (the request-logging layer puts an empty one in the request's extensions).
#[derive(Clone, Default)]
pub struct PrincipalKind(std::sync::Arc<std::sync::OnceLock<&'static str>>);

impl PrincipalKind {
    /// Notes `principal` (`None`: its credential was refused) in the request's slot, if any.
    pub fn note(extensions: &axum::http::Extensions, principal: Option<&Principal>) {
        let Some(slot) = extensions.get::<PrincipalKind>() else { return };
        let kind = match principal {
            None => "refused",
            Some(Principal::Anonymous) => "anonymous",
            Some(Principal::Operator) => "operator",
            Some(Principal::Authenticated(authenticated)) => match &authenticated.actor {
                crate::identity::Actor::Practitioner { .. } => "practitioner",
                crate::identity::Actor::System { .. } => "system",
                crate::identity::Actor::MunicipalAdmin { .. } => "municipal-admin",
                crate::identity::Actor::MunicipalAuditor { .. } => "municipal-auditor",
                crate::identity::Actor::ServerAdmin { .. } => "server-admin",
                #[cfg(feature = "test-support")]
                crate::identity::Actor::TestUnrestricted => "test-unrestricted",
            },
        };
        let _ = slot.0.set(kind);
    }

    /// The kind noted, or `-` where no extractor verified a credential.
    pub fn get(&self) -> &'static str {
        self.0.get().copied().unwrap_or("-")
    }
}

pub async fn principal(state: &AppState, headers: &HeaderMap, tenant: Option<&str>) -> Result<Principal, Error> {
    let Some(value) = header_text(headers, "authorization") else { return Ok(Principal::Anonymous) };
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| Error::Unauthorized("the Authorization header must be 'Bearer <token>'".into()))?;
    let mut connection = state.fhir.store.connection().await?;
    let principal = tokens::verify(&state.fhir.store, &mut connection, &state.fhir.tokens, state.fhir.clock.now(), tenant, token).await?;
    state.fhir.store.keep_for_request(connection);
    Ok(principal)
}

impl FhirRequest {
    pub fn fail(&self, error: Error) -> ErrorReply {
        ErrorReply { error, format: self.format, request_id: self.context.request_id.clone() }
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned)
}

/// The value of `key` in a `Prefer` header such as `return=minimal, handling=lenient`.
fn preference<'a>(prefer: &'a str, key: &str) -> Option<&'a str> {
    prefer
        .split([',', ';'])
        .filter_map(|part| part.trim().split_once('='))
        .find(|(name, _)| name.trim() == key)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// Whether an `Accept` header names a FHIR format (or plain JSON or XML).
fn names_fhir_format(accept: &str) -> bool {
    accept.split(',').any(|item| Format::from_mime(item.split(';').next().unwrap_or_default().trim()).is_some())
}

/// Chooses the response format: `_format` wins, then `Accept`; JSON when either says
/// nothing FHIR-specific (browsers send `text/html,…,*/*`).
pub fn negotiate(format_param: Option<&str>, accept: Option<&str>) -> Result<Format, Error> {
    if let Some(param) = format_param {
        return Format::from_mime(param).ok_or_else(|| Error::NotAcceptable(param.to_owned()));
    }
    let Some(accept) = accept else { return Ok(Format::Json) };
    let mut any = false;
    for item in accept.split(',') {
        let media = item.split(';').next().unwrap_or_default().trim();
        if let Some(format) = Format::from_mime(media) {
            return Ok(format);
        }
        if media == "*/*" || media == "application/*" || media == "text/html" || media.is_empty() {
            any = true;
        }
    }
    if any {
        Ok(Format::Json)
    } else {
        Err(Error::NotAcceptable(accept.to_owned()))
    }
}

/// Raw body bytes within the configured limit, with its content type.
pub struct RawBody {
    pub content_type: Option<String>,
    pub bytes: Bytes,
}

impl FromRequest<AppState> for RawBody {
    type Rejection = ErrorReply;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // A Binary's body has its own, larger limit (`[binary] limit_bytes`); the content's
        // own size is checked against it exactly once the body is read.
        let limit = if crate::http::binary::is_binary_path(request.uri().path()) {
            crate::http::binary::body_limit(&state.config.binary)
        } else {
            state.config.body_limit_bytes
        };
        let body = http_body_util::Limited::new(request.into_body(), limit);
        let bytes = http_body_util::BodyExt::collect(body).await.map(http_body_util::Collected::to_bytes).map_err(|error| {
            let error = if error.is::<http_body_util::LengthLimitError>() {
                Error::PayloadTooLarge { limit_bytes: limit }
            } else {
                Error::bad_request(format!("the request body could not be read: {error}"))
            };
            ErrorReply { error, format: Format::Json, request_id }
        })?;
        Ok(RawBody { content_type, bytes })
    }
}

impl RawBody {
    /// Parses the body as a FHIR resource in the format its `Content-Type` names, within
    /// the nesting limits.
    pub fn resource(&self, limits: &crate::config::Limits) -> Result<Value, Error> {
        let format = match self.content_type.as_deref() {
            None => Format::Json,
            Some(content_type) => {
                Format::from_mime(content_type).ok_or_else(|| Error::UnsupportedMediaType(content_type.to_owned()))?
            }
        };
        if self.bytes.is_empty() {
            return Err(Error::bad_request("the request has no body"));
        }
        format::parse(&self.bytes, format, limits)
    }

    /// Parses the body as a JSON Patch document.
    pub fn json_patch(&self, limits: &crate::config::Limits) -> Result<Value, Error> {
        let essence = self.content_type.as_deref().unwrap_or_default().split(';').next().unwrap_or_default().trim();
        if essence != "application/json-patch+json" {
            return Err(Error::UnsupportedMediaType(format!(
                "{essence} (PATCH accepts application/json-patch+json; FHIRPath Patch is not supported)"
            )));
        }
        format::parse(&self.bytes, Format::Json, limits)
    }

    /// Parses an `application/x-www-form-urlencoded` body (for `_search`).
    pub fn form(&self) -> Result<Vec<(String, String)>, Error> {
        let essence = self.content_type.as_deref().unwrap_or_default().split(';').next().unwrap_or_default().trim();
        if !self.bytes.is_empty() && essence != "application/x-www-form-urlencoded" {
            return Err(Error::UnsupportedMediaType(essence.to_owned()));
        }
        let text = std::str::from_utf8(&self.bytes).map_err(|_| Error::bad_request("the form body is not UTF-8"))?;
        Ok(parse_query_string(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None, None).ok(), Some(Format::Json));
        assert_eq!(negotiate(Some("xml"), Some("application/fhir+json")).ok(), Some(Format::Xml));
        assert_eq!(negotiate(None, Some("application/fhir+xml;q=0.9")).ok(), Some(Format::Xml));
        assert_eq!(negotiate(None, Some("text/html,application/xhtml+xml,*/*;q=0.8")).ok(), Some(Format::Json));
        assert!(negotiate(None, Some("image/png")).is_err());
        assert!(negotiate(Some("yaml"), None).is_err());
    }

    #[test]
    fn preferences() {
        assert_eq!(preference("return=minimal", "return"), Some("minimal"));
        assert_eq!(preference("handling=lenient, return=OperationOutcome", "return"), Some("OperationOutcome"));
        assert_eq!(preference("handling=lenient", "return"), None);
    }
}
