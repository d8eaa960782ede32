//! Binary content: what a care team may upload (photos, scans, videos), checked against
//! what it claims to be, and how a stored Binary records where its bytes are.
//!
//! A Binary's bytes are not kept in its JSON: the store keeps them once, by SHA-256, in a
//! table of their own (`store::binary`), and the stored Binary carries in `meta.extension`
//! - [`CONTENT_EXTENSION`]: `size` and `sha256` of its content, and
//! - [`PERSON_EXTENSION`]: each person whose data the Binary is, taken from its
//!   `securityContext` when it was written (a Patient, or the persons of the Communication,
//!   DocumentReference, … it names), so that whoever may read that resource may read the
//!   Binary, and nobody else.
//!
//! Both are set by the server alone; a client's values under these URLs are replaced. (A
//! Binary is no DomainResource: `meta.extension` is the place R4 leaves for them.)

use base64::Engine;
use serde_json::{json, Value};
use sha2::Digest;

/// `meta.extension` of a stored Binary: the size and SHA-256 (hex) of its content.
pub const CONTENT_EXTENSION: &str = "https://renraku.example.jp/fhir/StructureDefinition/binary-content";
/// `meta.extension` of a stored Binary: a person (`valueReference` to a Patient) whose data it is.
pub const PERSON_EXTENSION: &str = "https://renraku.example.jp/fhir/StructureDefinition/binary-person";

pub use crate::config::{BinarySettings, DEFAULT_BINARY_LIMIT_BYTES};

/// Why content is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than `limit_bytes`.
    TooLarge { limit_bytes: usize },
    /// A media type outside the allow-list (or none).
    NotAllowed(String),
    /// The bytes are a program (an executable, a library, bytecode), whatever they claim.
    Executable(String),
    /// The bytes are of another type than the one declared.
    Mismatch { declared: String, found: String },
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::TooLarge { limit_bytes } => format!("the content is larger than the limit of {limit_bytes} bytes"),
            Refusal::NotAllowed(declared) => format!(
                "the media type '{declared}' is not one a Binary may hold here (the server's [binary] media_types: photos, scans, PDF, video, audio, plain text)"
            ),
            Refusal::Executable(found) => format!("the content is a program ({found}); programs are never stored"),
            Refusal::Mismatch { declared, found } => {
                format!("the content is declared as '{declared}' but its bytes are '{found}'")
            }
        }
    }
}

/// A media type's essence: lower case, without parameters.
pub fn essence(media_type: &str) -> String {
    media_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// The type a sniffed or declared media type is compared as: names of one format agree
/// (HEIC is HEIF; MP4, QuickTime and M4A are the same ISO media container).
fn canonical(essence: &str) -> &str {
    match essence {
        "image/jpg" | "image/pjpeg" => "image/jpeg",
        "image/heic" | "image/heic-sequence" | "image/heif-sequence" => "image/heif",
        "video/quicktime" | "audio/mp4" | "audio/m4a" | "audio/x-m4a" | "video/x-m4v" | "video/3gpp" => "video/mp4",
        "audio/mp3" | "audio/x-mpeg" => "audio/mpeg",
        "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "audio/wav",
        "application/x-pdf" => "application/pdf",
        other => other,
    }
}

/// Checks `bytes` declared as `declared` against `settings`: the size, the allow-list, and
/// the bytes themselves — a program is refused whatever it claims; a type with a signature
/// must have it, and a signature found must be the declared type's; `text/*` is UTF-8.
pub fn check(settings: &BinarySettings, declared: &str, bytes: &[u8]) -> Result<(), Refusal> {
    if bytes.len() > settings.limit_bytes {
        return Err(Refusal::TooLarge { limit_bytes: settings.limit_bytes });
    }
    let declared_essence = essence(declared);
    if declared_essence.is_empty() || !settings.media_types.iter().any(|allowed| essence(allowed) == declared_essence) {
        return Err(Refusal::NotAllowed(declared_essence));
    }
    let sniffed = infer::get(bytes);
    if let Some(kind) = sniffed {
        if kind.matcher_type() == infer::MatcherType::App {
            return Err(Refusal::Executable(kind.mime_type().to_owned()));
        }
        let found = canonical(kind.mime_type());
        if found != canonical(&declared_essence) {
            return Err(Refusal::Mismatch { declared: declared_essence, found: kind.mime_type().to_owned() });
        }
        return Ok(());
    }
    let expected = canonical(&declared_essence);
    if infer::is_mime_supported(expected) {
        // A type whose files begin with a signature, and these bytes do not.
        return Err(Refusal::Mismatch { declared: declared_essence, found: "no recognisable format".into() });
    }
    if declared_essence.starts_with("text/") {
        let charset = declared.split(';').skip(1).find_map(|p| p.trim().strip_prefix("charset=")).map(|c| c.trim_matches('"').to_ascii_lowercase());
        if charset.as_deref().is_none_or(|c| c == "utf-8") && std::str::from_utf8(bytes).is_err() {
            return Err(Refusal::Mismatch { declared: declared_essence, found: "bytes that are not UTF-8 text".into() });
        }
    }
    Ok(())
}

/// The SHA-256 of content, in lower-case hex: the key it is stored under.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A Binary's `data` that is not base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotBase64;

/// Decodes a Binary's `data` (base64, whitespace allowed). None when there is no `data`.
pub fn decode_data(resource: &Value) -> Result<Option<Vec<u8>>, NotBase64> {
    let Some(data) = resource.get("data") else { return Ok(None) };
    let text: String = data.as_str().ok_or(NotBase64)?.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(text).map(Some).map_err(|_| NotBase64)
}

/// The base64 form of content, for a Binary read in its FHIR form.
pub fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `sha256` a stored Binary's content is kept under, if it has content.
pub fn stored_digest(resource: &Value) -> Option<String> {
    extensions(resource)
        .find(|extension| extension.get("url").and_then(Value::as_str) == Some(CONTENT_EXTENSION))
        .and_then(|extension| extension.get("extension").and_then(Value::as_array))
        .and_then(|parts| parts.iter().find(|p| p.get("url").and_then(Value::as_str) == Some("sha256")))
        .and_then(|part| part.get("valueString").and_then(Value::as_str))
        .map(str::to_owned)
}

/// The persons a stored Binary belongs to (ids of Patients), as recorded when it was written.
pub fn persons(resource: &Value) -> Vec<String> {
    let mut found: Vec<String> = extensions(resource)
        .filter(|extension| extension.get("url").and_then(Value::as_str) == Some(PERSON_EXTENSION))
        .filter_map(|extension| extension.pointer("/valueReference/reference").and_then(Value::as_str))
        .filter_map(|reference| reference.strip_prefix("Patient/"))
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

fn extensions(resource: &Value) -> impl Iterator<Item = &Value> {
    resource.pointer("/meta/extension").and_then(Value::as_array).into_iter().flatten()
}

/// The content extension as stored.
fn content_extension(size: usize, sha256: &str) -> Value {
    json!({
        "url": CONTENT_EXTENSION,
        "extension": [
            { "url": "size", "valueUnsignedInt": size },
            { "url": "sha256", "valueString": sha256 }
        ]
    })
}

/// Rewrites a Binary about to be stored: `data` leaves the JSON (its bytes are stored
/// apart, under `content`'s digest), and the server's extensions are set — the content's
/// (new content, else the one `kept` from the version it replaces, else none) and the
/// persons'. Whatever a client put under either URL is dropped.
pub fn restamp(resource: &mut Value, content: Option<(usize, &str)>, kept: Option<Value>, persons: &[String]) {
    if let Some(object) = resource.as_object_mut() {
        object.remove("data");
        object.remove("_data");
    }
    let mut others: Vec<Value> = extensions(resource)
        .filter(|e| !matches!(e.get("url").and_then(Value::as_str), Some(CONTENT_EXTENSION | PERSON_EXTENSION)))
        .cloned()
        .collect();
    match content {
        Some((size, sha256)) => others.push(content_extension(size, sha256)),
        None => others.extend(kept),
    }
    others.extend(persons.iter().map(|p| json!({ "url": PERSON_EXTENSION, "valueReference": { "reference": format!("Patient/{p}") } })));
    let Some(object) = resource.as_object_mut() else { return };
    let meta = object.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        if others.is_empty() {
            meta.remove("extension");
        } else {
            meta.insert("extension".into(), Value::Array(others));
        }
    }
}

/// The content extension of a stored Binary, if the client's copy of it is that one
/// unchanged (a PUT of what it read, without `data`, keeps the content).
pub fn unchanged_content(stored: &Value, sent: &Value) -> Option<Value> {
    let of = |resource: &Value| extensions(resource).find(|e| e.get("url").and_then(Value::as_str) == Some(CONTENT_EXTENSION)).cloned();
    let stored = of(stored)?;
    (of(sent).as_ref() == Some(&stored)).then_some(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R'];
    /// An ELF header (x86-64 executable), padded to the length a header has.
    const ELF: &[u8] = &[
        0x7F, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0x3E, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn content_must_be_what_it_claims() {
        let settings = BinarySettings::default();
        assert_eq!(check(&settings, "image/png", PNG), Ok(()));
        assert!(matches!(check(&settings, "image/jpeg", PNG), Err(Refusal::Mismatch { .. })));
        assert!(matches!(check(&settings, "image/png", b"plain words"), Err(Refusal::Mismatch { .. })));
        assert!(matches!(check(&settings, "text/plain", ELF), Err(Refusal::Executable(_))));
        assert!(matches!(check(&settings, "application/x-msdownload", b"MZ"), Err(Refusal::NotAllowed(_))));
        assert_eq!(check(&settings, "text/plain; charset=utf-8", "訪問しました".as_bytes()), Ok(()));
        assert!(matches!(check(&settings, "text/plain", &[0xff, 0xfe, 0x00]), Err(Refusal::Mismatch { .. })));
        let small = BinarySettings { limit_bytes: 4, ..BinarySettings::default() };
        assert_eq!(check(&small, "image/png", PNG), Err(Refusal::TooLarge { limit_bytes: 4 }));
    }

    #[test]
    fn restamped_binary_keeps_no_data_and_names_its_persons() {
        let mut binary = json!({
            "resourceType": "Binary", "contentType": "image/png", "data": "iVBORw0KGgo=",
            "meta": { "extension": [{ "url": PERSON_EXTENSION, "valueReference": { "reference": "Patient/forged" } }] }
        });
        restamp(&mut binary, Some((8, "ab")), None, &["p1".to_owned()]);
        assert!(binary.get("data").is_none());
        assert_eq!(persons(&binary), vec!["p1".to_owned()]);
        assert_eq!(stored_digest(&binary).as_deref(), Some("ab"));
    }
}
