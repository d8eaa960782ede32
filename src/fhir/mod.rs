//! FHIR knowledge with no HTTP and no SQL in it: wire formats, validation, profiles,
//! references and partial representations (OperationOutcome is `crate::outcome`).

pub mod binary;
pub mod board;
pub mod dates;
pub mod elements;
pub mod fhirpath;
pub mod format;
pub mod profiles;
pub mod references;
pub mod subscription;
pub mod text;
pub mod validate;

use serde_json::Value;

/// The `meta.tag` system recording which municipality owns a resource; the code is the
/// municipality's 全国地方公共団体コード. Set by the server on every write; clients cannot set it.
pub const MUNICIPALITY_TAG_SYSTEM: &str = "https://renraku.example.jp/fhir/CodeSystem/owning-municipality";

/// Sets `key` on a JSON object. The FHIR JSON this server builds is always an object; on
/// anything else nothing is set (where `value[key] = …` would panic).
pub fn set(target: &mut Value, key: &str, value: Value) {
    if let Some(object) = target.as_object_mut() {
        object.insert(key.to_owned(), value);
    }
}
