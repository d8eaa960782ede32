//! References between resources: finding them, classifying them, rewriting them.

use std::collections::HashMap;

use serde_json::Value;

/// A reference found in a resource, with the element path where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundReference {
    pub path: String,
    pub reference: String,
}

/// What a reference string points at, as far as this server can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `Type/id` or `Type/id/_history/vid` on this server.
    Local { resource_type: String, id: String, version_id: Option<String> },
    /// `#id`, a contained resource.
    Contained(String),
    /// A `urn:uuid:` / `urn:oid:` placeholder or an absolute URL elsewhere: not checked.
    External,
}

/// Every `reference` string in `resource`, with paths rooted at `root` (e.g. `Patient`).
pub fn collect(resource: &Value, root: &str) -> Vec<FoundReference> {
    let mut found = Vec::new();
    walk(resource, root, &mut found);
    found
}

fn walk(value: &Value, path: &str, found: &mut Vec<FoundReference>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                // Contained resources are checked as part of their container's contents but
                // their own references are resolved against the container.
                let child_path = format!("{path}.{key}");
                if key == "reference" {
                    if let Value::String(reference) = child {
                        found.push(FoundReference { path: child_path, reference: reference.clone() });
                        continue;
                    }
                }
                walk(child, &child_path, found);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{index}]"), found);
            }
        }
        _ => {}
    }
}

/// Classifies `reference`; `base_url` is this tenant's base, so absolute references to the
/// server itself count as local.
pub fn classify(reference: &str, base_url: &str, is_resource_type: impl Fn(&str) -> bool) -> Target {
    if let Some(contained) = reference.strip_prefix('#') {
        return Target::Contained(contained.to_owned());
    }
    let relative = match reference.strip_prefix(base_url) {
        Some(rest) => rest.trim_start_matches('/'),
        None if reference.contains(':') => return Target::External,
        None => reference,
    };
    let parts: Vec<&str> = relative.split('/').collect();
    match parts.as_slice() {
        [resource_type, id] if is_resource_type(resource_type) => {
            Target::Local { resource_type: (*resource_type).to_owned(), id: (*id).to_owned(), version_id: None }
        }
        [resource_type, id, "_history", version] if is_resource_type(resource_type) => Target::Local {
            resource_type: (*resource_type).to_owned(),
            id: (*id).to_owned(),
            version_id: Some((*version).to_owned()),
        },
        _ => Target::External,
    }
}

/// Replaces every `reference` whose value is a key of `replacements` (transaction full
/// URLs such as `urn:uuid:…`, conditional references) with the mapped `Type/id`, and every
/// other string that is one of the transaction's `urn:` full URLs (an `Attachment.url`, a
/// `uri` element), as the specification asks of transactions. Returns how many were replaced.
pub fn rewrite(value: &mut Value, replacements: &HashMap<String, String>) -> usize {
    let mut count = 0;
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if let Value::String(text) = child {
                    let replaceable = key == "reference" || text.starts_with("urn:uuid:") || text.starts_with("urn:oid:");
                    if let Some(replacement) = replaceable.then(|| replacements.get(text.as_str())).flatten() {
                        *text = replacement.clone();
                        count += 1;
                    }
                    continue;
                }
                count += rewrite(child, replacements);
            }
        }
        Value::Array(items) => {
            for item in items {
                count += rewrite(item, replacements);
            }
        }
        _ => {}
    }
    count
}

/// `Patient/123` → (Patient, 123, ""); an absolute URL keeps its type/id when it ends in
/// one, and is also kept whole in `url`.
pub fn split_reference(reference: &str) -> (String, String, String) {
    let (resource_type, id, url) = reference_parts(reference);
    (resource_type.to_owned(), id.to_owned(), url.to_owned())
}

/// [`split_reference`]'s parts as slices of `reference`, for callers that compare or sort
/// them before (or instead of) keeping them.
pub fn reference_parts(reference: &str) -> (&str, &str, &str) {
    let without_history = reference.split("/_history/").next().unwrap_or(reference);
    let mut parts = without_history.rsplitn(3, '/');
    let (id, resource_type) = (parts.next(), parts.next());
    let is_type = |t: &str| t.chars().next().is_some_and(char::is_uppercase) && t.chars().all(char::is_alphanumeric);
    let absolute = reference.contains("://") || reference.starts_with("urn:");
    let url = if absolute { reference } else { "" };
    match (id, resource_type) {
        (Some(id), Some(resource_type)) if is_type(resource_type) => (resource_type, id, url),
        _ => ("", "", url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn is_type(name: &str) -> bool {
        matches!(name, "Patient" | "Observation")
    }

    #[test]
    fn classifies_references() {
        let base = "http://localhost:8080/ina/fhir";
        let cases = [
            ("Patient/1", Target::Local { resource_type: "Patient".into(), id: "1".into(), version_id: None }),
            (
                "http://localhost:8080/ina/fhir/Patient/1/_history/2",
                Target::Local { resource_type: "Patient".into(), id: "1".into(), version_id: Some("2".into()) },
            ),
            ("#c1", Target::Contained("c1".into())),
            ("urn:uuid:1234", Target::External),
            ("https://elsewhere.example/Patient/1", Target::External),
            ("Unknown/1", Target::External),
        ];
        for (reference, expected) in cases {
            assert_eq!(classify(reference, base, is_type), expected, "{reference}");
        }
    }

    #[test]
    fn rewrites_placeholders() {
        let mut resource = json!({"subject": {"reference": "urn:uuid:a"}, "performer": [{"reference": "urn:uuid:b"}]});
        let map = HashMap::from([("urn:uuid:a".to_owned(), "Patient/1".to_owned())]);
        assert_eq!(rewrite(&mut resource, &map), 1);
        assert_eq!(resource["subject"]["reference"], "Patient/1");
        assert_eq!(resource["performer"][0]["reference"], "urn:uuid:b");
    }
}
