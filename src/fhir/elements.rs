//! `_summary` and `_elements`: returning part of a resource, marked as subsetted.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::Error;

const SUMMARY_ELEMENTS_JSON: &str = include_str!("../../profiles/base/summary-elements.json");

/// The `_summary` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    Count,
    False,
}

impl Summary {
    pub fn parse(text: &str) -> Result<Summary, Error> {
        match text {
            "true" => Ok(Summary::True),
            "text" => Ok(Summary::Text),
            "data" => Ok(Summary::Data),
            "count" => Ok(Summary::Count),
            "false" => Ok(Summary::False),
            other => Err(Error::bad_request_at(
                format!("_summary must be one of true, text, data, count, false; not '{other}'"),
                "_summary",
            )),
        }
    }
}

#[derive(Deserialize)]
struct TypeElements {
    summary: Vec<String>,
    mandatory: Vec<String>,
}

fn table() -> &'static HashMap<String, TypeElements> {
    static TABLE: OnceLock<HashMap<String, TypeElements>> = OnceLock::new();
    TABLE.get_or_init(|| serde_json::from_str(SUMMARY_ELEMENTS_JSON).unwrap_or_default())
}

/// Applies `_summary` to one resource in place.
pub fn apply_summary(resource: &mut Value, summary: Summary) {
    let Some(object) = resource.as_object_mut() else { return };
    let resource_type = object.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
    let elements = table().get(&resource_type);
    let keep: Box<dyn Fn(&str) -> bool> = match summary {
        Summary::False | Summary::Count => return,
        Summary::Data => Box::new(|name: &str| name != "text"),
        Summary::Text => Box::new(move |name: &str| {
            matches!(name, "text" | "id" | "meta")
                || elements.is_some_and(|e| e.mandatory.iter().any(|m| m == name))
        }),
        Summary::True => Box::new(move |name: &str| {
            elements.is_some_and(|e| e.summary.iter().any(|m| m == name || name.strip_prefix('_') == Some(m)))
        }),
    };
    retain(object, |name| name == "resourceType" || keep(name));
    mark_subsetted(object);
}

/// Applies `_elements` to one resource in place: the named top-level elements plus the
/// mandatory ones are kept.
pub fn apply_elements(resource: &mut Value, names: &[String]) {
    let Some(object) = resource.as_object_mut() else { return };
    let resource_type = object.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mandatory = table().get(&resource_type).map(|e| e.mandatory.as_slice()).unwrap_or_default();
    retain(object, |name| {
        let base = name.strip_prefix('_').unwrap_or(name);
        matches!(name, "resourceType" | "id" | "meta")
            || names.iter().any(|n| n == base)
            || mandatory.iter().any(|m| m == base)
    });
    mark_subsetted(object);
}

fn retain(object: &mut Map<String, Value>, keep: impl Fn(&str) -> bool) {
    let names: Vec<String> = object.keys().filter(|name| !keep(name)).cloned().collect();
    for name in names {
        object.remove(&name);
    }
}

fn mark_subsetted(object: &mut Map<String, Value>) {
    let meta = object.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
                "display": "Resource content not complete"
            }));
        }
    }
}
