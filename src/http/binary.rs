//! Binary in its native form: `POST`/`PUT [base]/Binary` with the content's own media type
//! (`X-Security-Context` naming what it belongs to), and `GET [base]/Binary/[id]` answered
//! with the raw bytes unless the client asks for a FHIR format (ETag, `Range`).

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::error::Error;
use crate::fhir::binary::{self, BinarySettings, Refusal};
use crate::fhir::format::Format;
use crate::http::request::RawBody;
use crate::service::Stored;

/// Whether a path is `/{tenant}/fhir/Binary` or below it.
pub fn is_binary_path(path: &str) -> bool {
    path.split('/').nth(3) == Some("Binary")
}

/// The largest body a Binary path accepts: the content limit, plus base64's third and room
/// for the rest of the resource when the Binary comes in its FHIR form.
pub fn body_limit(settings: &BinarySettings) -> usize {
    settings.limit_bytes.saturating_add(settings.limit_bytes / 3).saturating_add(1024 * 1024)
}

/// Whether a body is a Binary's native content rather than a FHIR resource.
pub fn is_native(body: &RawBody) -> bool {
    body.content_type.as_deref().is_some_and(|content_type| Format::from_mime(content_type).is_none())
}

/// The Binary a native upload stands for: its bytes checked (size → 413, allow-list,
/// sniffing and programs → 415) and carried as `data`, its `securityContext` taken from the
/// `X-Security-Context` header.
pub fn from_native(settings: &BinarySettings, body: &RawBody, headers: &HeaderMap, id: Option<&str>) -> Result<Value, Error> {
    let content_type = body.content_type.clone().unwrap_or_default();
    binary::check(settings, &content_type, &body.bytes).map_err(|refusal| match refusal {
        Refusal::TooLarge { limit_bytes } => Error::PayloadTooLarge { limit_bytes },
        other => Error::UnsupportedContent(other.message()),
    })?;
    let mut resource = json!({
        "resourceType": "Binary",
        "contentType": content_type.split(';').next().unwrap_or_default().trim(),
        "data": binary::encode(&body.bytes),
    });
    if let Some(id) = id {
        crate::fhir::set(&mut resource, "id", json!(id));
    }
    if let Some(context) = headers.get("x-security-context").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()) {
        crate::fhir::set(&mut resource, "securityContext", json!({ "reference": context }));
    }
    Ok(resource)
}

/// The raw bytes of a Binary version: its own `Content-Type`, `ETag`, `Last-Modified`,
/// `Accept-Ranges`, and a single `Range` (206 with `Content-Range`; 416 outside the content).
/// `nosniff` and a sandboxing policy keep a browser from running what it shows.
pub fn native_reply(stored: &Stored, content: Vec<u8>, headers: &HeaderMap) -> Result<Response, Error> {
    let content_type = stored.resource.get("contentType").and_then(Value::as_str).unwrap_or("application/octet-stream").to_owned();
    let size = content.len() as u64;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|text| parse_range(text, size));
    let (status, body, content_range) = match range {
        None => (StatusCode::OK, content, None),
        Some(Err(())) => return Err(Error::RangeNotSatisfiable { size }),
        Some(Ok((first, last))) => {
            let slice = content.get(first as usize..=last as usize).map(<[u8]>::to_vec).ok_or(Error::RangeNotSatisfiable { size })?;
            (StatusCode::PARTIAL_CONTENT, slice, Some(format!("bytes {first}-{last}/{size}")))
        }
    };
    let mut response = (status, body).into_response();
    let set = |response: &mut Response, name: header::HeaderName, value: String| {
        if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    };
    set(&mut response, header::CONTENT_TYPE, content_type);
    set(&mut response, header::ETAG, format!("W/\"{}\"", stored.version_id));
    set(&mut response, header::LAST_MODIFIED, crate::http::response::http_date(&stored.last_updated));
    set(&mut response, header::ACCEPT_RANGES, "bytes".into());
    set(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff".into());
    set(&mut response, header::CONTENT_SECURITY_POLICY, "sandbox; default-src 'none'".into());
    if let Some(content_range) = content_range {
        set(&mut response, header::CONTENT_RANGE, content_range);
    }
    Ok(response)
}

/// A single `bytes=` range within `size` bytes, as first and last byte: None when the
/// header is not one this server honours (several ranges, other units: the whole content
/// is sent), `Err` when it lies outside the content.
fn parse_range(text: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = text.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.is_empty(), last.is_empty()) {
        (true, true) => return None,
        (true, false) => {
            let suffix: u64 = last.parse().ok()?;
            if suffix == 0 || size == 0 {
                return Some(Err(()));
            }
            (size.saturating_sub(suffix), size - 1)
        }
        (false, _) => {
            let first: u64 = first.parse().ok()?;
            let last: u64 = if last.is_empty() { size.saturating_sub(1) } else { last.parse::<u64>().ok()?.min(size.saturating_sub(1)) };
            if first >= size || last < first {
                return Some(Err(()));
            }
            (first, last)
        }
    };
    Some(Ok(range))
}

/// A Binary version in its FHIR form, with its content as `data`.
pub fn with_data(mut stored: Stored, content: Option<Vec<u8>>) -> Stored {
    if let Some(content) = content {
        crate::fhir::set(&mut stored.resource, "data", json!(binary::encode(&content)));
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok((95, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
