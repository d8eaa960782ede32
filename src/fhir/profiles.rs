//! Profiles: the StructureDefinitions under `profiles/structure-definitions/`, compiled
//! into JSON schemas that the `jsonschema` crate enforces on resources claiming them in
//! `meta.profile`.
//!
//! What the compiler understands from each differential element (and what it ignores):
//! - `min` ≥ 1 → the element must be present (for primitives, the value or its `_element`);
//! - `max` = "0" → the element must be absent;
//! - `fixed[x]` → the value must equal it; `pattern[x]` → the value must contain it (for a
//!   CodeableConcept pattern: some `coding` carries the pattern's system and code).
//!
//! Slicing (elements with a `sliceName`), choice elements (`[x]`), invariants (FHIRPath)
//! and value-set bindings are not compiled: those constraints are skipped, not enforced.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::outcome::Issue;
use crate::fhir::validate::schema_issue;

/// The StructureDefinition files, embedded at build time (see `build.rs`).
const EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/profiles.rs"));

/// One compiled profile.
pub struct CompiledProfile {
    pub url: String,
    pub resource_type: String,
    pub schema: Value,
    validator: jsonschema::Validator,
}

impl CompiledProfile {
    /// Adds an issue for every constraint of the profile that `resource` breaks.
    pub fn check(&self, resource_type: &str, resource: &Value, issues: &mut Vec<Issue>) {
        if resource_type != self.resource_type {
            issues.push(
                Issue::error(
                    crate::outcome::IssueCode::Invalid,
                    format!("the profile '{}' applies to {}, not {resource_type}", self.url, self.resource_type),
                )
                .at(format!("{resource_type}.meta.profile")),
            );
            return;
        }
        for error in self.validator.iter_errors(resource) {
            let mut issue = schema_issue(resource_type, &error);
            issue.diagnostics = format!("profile {}: {}", self.url, issue.diagnostics);
            issues.push(issue);
        }
    }
}

/// All known profiles by canonical URL.
#[derive(Default)]
pub struct Profiles {
    by_url: BTreeMap<String, CompiledProfile>,
}

impl Profiles {
    /// Compiles the embedded StructureDefinitions against the base R4 schema (which tells
    /// which elements are arrays).
    pub fn load(base_schema: &Value) -> Result<Profiles, String> {
        let mut profiles = Profiles::default();
        for (file, text) in EMBEDDED {
            let definition: Value = serde_json::from_str(text).map_err(|e| format!("profile {file}: {e}"))?;
            let compiled = compile(&definition, base_schema).map_err(|e| format!("profile {file}: {e}"))?;
            profiles.by_url.insert(compiled.url.clone(), compiled);
        }
        Ok(profiles)
    }

    pub fn get(&self, url: &str) -> Option<&CompiledProfile> {
        // A canonical may carry a version: `url|1.0`.
        let base = url.split('|').next().unwrap_or(url);
        self.by_url.get(base)
    }

    /// (resource type, canonical URL) of every profile, for the CapabilityStatement.
    pub fn supported(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_url.values().map(|p| (p.resource_type.as_str(), p.url.as_str()))
    }
}

/// Compiles one StructureDefinition's differential into a JSON schema.
pub fn compile(definition: &Value, base_schema: &Value) -> Result<CompiledProfile, String> {
    let url = definition.get("url").and_then(Value::as_str).ok_or("no url")?.to_owned();
    let resource_type = definition.get("type").and_then(Value::as_str).ok_or("no type")?.to_owned();
    let elements =
        definition.pointer("/differential/element").and_then(Value::as_array).ok_or("no differential elements")?;
    let mut schema = json!({ "type": "object" });
    for element in elements {
        let path = element.get("path").and_then(Value::as_str).ok_or("element without path")?;
        let mut segments = path.split('.');
        if segments.next() != Some(resource_type.as_str()) {
            return Err(format!("element path '{path}' is outside {resource_type}"));
        }
        let segments: Vec<&str> = segments.collect();
        if segments.is_empty() || element.get("sliceName").is_some() || path.contains("[x]") {
            continue;
        }
        let (parents, name) = segments.split_at(segments.len() - 1);
        let name = name.first().copied().unwrap_or_default();
        let node = descend(&mut schema, base_schema, &resource_type, parents)?;
        let min = element.get("min").and_then(Value::as_u64).unwrap_or(0);
        let max = element.get("max").and_then(Value::as_str).unwrap_or("*");
        if min >= 1 {
            push_all_of(node, json!({ "anyOf": [ { "required": [name] }, { "required": [format!("_{name}")] } ] }));
            if min >= 2 {
                property(node, name).insert("minItems".into(), json!(min));
            }
        }
        if max == "0" {
            push_all_of(node, json!({ "not": { "required": [name] } }));
        }
        for (key, value) in element.as_object().into_iter().flatten() {
            if key.starts_with("fixed") {
                property(node, name).insert("const".into(), value.clone());
            } else if key.starts_with("pattern") {
                let constraint = pattern_schema(key, value);
                property(node, name).insert("allOf".into(), json!([constraint]));
            }
        }
    }
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&schema)
        .map_err(|e| format!("compiled schema is invalid: {e}"))?;
    Ok(CompiledProfile { url, resource_type, schema, validator })
}

/// The schema node for the object that holds an element nested under `parents`, creating
/// it as needed. Where the base schema says an element repeats, the node is its `items`.
fn descend<'a>(
    schema: &'a mut Value,
    base_schema: &Value,
    resource_type: &str,
    parents: &[&str],
) -> Result<&'a mut Map<String, Value>, String> {
    let mut node = schema;
    let mut definition = resource_type.to_owned();
    for parent in parents {
        let base_property = base_schema
            .pointer(&format!("/definitions/{definition}/properties/{parent}"))
            .ok_or_else(|| format!("{definition} has no element '{parent}'"))?;
        let repeats = base_property.get("items").is_some();
        definition = base_property
            .get("$ref")
            .or_else(|| base_property.pointer("/items/$ref"))
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/definitions/"))
            .ok_or_else(|| format!("{definition}.{parent} is not a complex element"))?
            .to_owned();
        let object = ensure_object(node);
        let properties = ensure_object(object.entry("properties").or_insert_with(|| json!({})));
        let child = properties.entry(parent.to_string()).or_insert_with(|| json!({}));
        node = if repeats { ensure_object(child).entry("items").or_insert_with(|| json!({})) } else { child };
    }
    Ok(ensure_object(node))
}

fn property<'a>(node: &'a mut Map<String, Value>, name: &str) -> &'a mut Map<String, Value> {
    let properties = ensure_object(node.entry("properties").or_insert_with(|| json!({})));
    ensure_object(properties.entry(name.to_owned()).or_insert_with(|| json!({})))
}

fn push_all_of(node: &mut Map<String, Value>, constraint: Value) {
    let all_of = node.entry("allOf").or_insert_with(|| json!([]));
    if let Some(array) = all_of.as_array_mut() {
        array.push(constraint);
    }
}

fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if let Value::Object(_) = value {
    } else {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        // Runs only at start-up while compiling profiles, and cannot happen: the value was
        // made an object just above.
        _ => unreachable!("ensure_object made the value an object"),
    }
}

/// The schema for `pattern[x]`: primitives must equal it; a CodeableConcept must have a
/// coding containing each pattern coding; other complex values must contain the pattern's
/// properties.
fn pattern_schema(key: &str, pattern: &Value) -> Value {
    match pattern {
        Value::Object(fields) if key == "patternCodeableConcept" => {
            let codings = fields.get("coding").and_then(Value::as_array).cloned().unwrap_or_default();
            let contains: Vec<Value> = codings
                .iter()
                .map(|coding| json!({ "properties": { "coding": { "contains": object_pattern(coding) } }, "required": ["coding"] }))
                .collect();
            json!({ "allOf": contains })
        }
        Value::Object(_) => object_pattern(pattern),
        primitive => json!({ "const": primitive }),
    }
}

fn object_pattern(pattern: &Value) -> Value {
    let Some(fields) = pattern.as_object() else { return json!({ "const": pattern }) };
    let mut properties = Map::new();
    for (name, value) in fields {
        properties.insert(name.clone(), if value.is_object() { object_pattern(value) } else { json!({ "const": value }) });
    }
    let required: Vec<&String> = fields.keys().collect();
    json!({ "type": "object", "properties": properties, "required": required })
}
