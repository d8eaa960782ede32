//! Wire formats: FHIR JSON and FHIR XML in and out.
//!
//! Architecture invariant: the rest of the gateway works on `serde_json::Value` in FHIR
//! JSON form; XML exists only at this boundary, converted through fhirbolt's typed R4 model.

use serde_json::Value;

use crate::error::Error;
use crate::fhir::outcome::{Issue, IssueCode};

/// A FHIR representation format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json; charset=utf-8",
            Format::Xml => "application/fhir+xml; charset=utf-8",
        }
    }

    /// Reads a MIME type or `_format` shorthand (`json`, `xml`, `application/fhir+json`, …).
    pub fn from_mime(text: &str) -> Option<Format> {
        let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match essence.as_str() {
            "json" | "application/fhir+json" | "application/json" | "application/json+fhir" | "text/json" => {
                Some(Format::Json)
            }
            "xml" | "application/fhir+xml" | "application/xml" | "application/xml+fhir" | "text/xml" => {
                Some(Format::Xml)
            }
            _ => None,
        }
    }
}

/// Converts FHIR JSON into fhirbolt's typed R4 model. fhirbolt can panic on some inputs
/// (for example an empty array); the panic is contained here and becomes an error.
pub fn to_model(
    value: Value,
    mode: fhirbolt::serde::DeserializationMode,
) -> Result<fhirbolt::model::r4::Resource, String> {
    let config = fhirbolt::serde::DeserializationConfig { mode };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        fhirbolt::json::from_json_value::<fhirbolt::model::r4::Resource>(value, Some(config))
    }))
    .map_err(|_| "the resource cannot be represented in the R4 model".to_owned())?
    .map_err(|error| error.to_string())
}

/// Parses a request body in `format` into FHIR JSON. Syntax errors are 400s.
pub fn parse(bytes: &[u8], format: Format) -> Result<Value, Error> {
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|error| {
            Error::BadRequest(Issue::error(
                IssueCode::Structure,
                format!("the body is not valid JSON: {error}"),
            ))
        }),
        Format::Xml => {
            let parsed = std::panic::catch_unwind(|| fhirbolt::xml::from_slice::<fhirbolt::model::r4::Resource>(bytes, None))
                .map_err(|_| "the XML cannot be represented in the R4 model".to_owned())
                .and_then(|result| result.map_err(|error| error.to_string()));
            let resource = parsed.map_err(|error| {
                Error::BadRequest(Issue::error(
                    IssueCode::Structure,
                    format!("the body is not a valid FHIR R4 XML resource: {error}"),
                ))
            })?;
            fhirbolt::json::to_json_value(resource, None)
                .map_err(|error| Error::internal(format!("XML to JSON conversion: {error}")))
        }
    }
}

/// Serialises FHIR JSON in `format`.
pub fn render(value: &Value, format: Format, pretty: bool) -> Result<Vec<u8>, Error> {
    match format {
        Format::Json if pretty => Ok(serde_json::to_vec_pretty(value)?),
        Format::Json => Ok(serde_json::to_vec(value)?),
        Format::Xml => {
            let resource = to_model(value.clone(), fhirbolt::serde::DeserializationMode::Lax)
                .map_err(|error| Error::internal(format!("JSON to XML conversion: {error}")))?;
            fhirbolt::xml::to_vec(&resource, None).map_err(|error| Error::internal(format!("XML output: {error}")))
        }
    }
}
