//! FHIR knowledge with no HTTP and no SQL in it: wire formats, validation, profiles,
//! references, partial representations and OperationOutcome.

pub mod dates;
pub mod elements;
pub mod format;
pub mod outcome;
pub mod profiles;
pub mod references;
pub mod search_params;
pub mod text;
pub mod validate;

use serde_json::Value;

/// Sets `key` on a JSON object. The FHIR JSON this server builds is always an object; on
/// anything else nothing is set (where `value[key] = …` would panic).
pub fn set(target: &mut Value, key: &str, value: Value) {
    if let Some(object) = target.as_object_mut() {
        object.insert(key.to_owned(), value);
    }
}
