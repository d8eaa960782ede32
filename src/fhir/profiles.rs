//! Profiles: the StructureDefinitions under `profiles/structure-definitions/` (the project's
//! own, and R4's own under `core/`), compiled into JSON schemas that the `jsonschema` crate
//! enforces on resources claiming them in `meta.profile`, plus the FHIRPath invariants they
//! add. A profile of a profile (`bodytemp` of `vitalsigns`) is checked with its bases.
//!
//! What the compiler understands from each differential element:
//! - `min` ≥ 1 → the element must be present (for primitives, the value or its `_element`);
//!   `max` = "0" → it must be absent;
//! - `fixed[x]` → the value must equal it; `pattern[x]` → the value must contain it (for a
//!   CodeableConcept pattern: some `coding` carries the pattern's system and code);
//! - a choice element `value[x]`: `min` ≥ 1 → one of its typed keys; `type` → only those
//!   types;
//! - a reference's `targetProfile`s → the reference points at one of their types (a
//!   profile's target counts as the type it profiles; a target the server cannot place
//!   leaves the reference unchecked);
//! - slices: a slice with `min` ≥ 1 → some repetition matches everything the slice says
//!   (its discriminator values and the rest of its constraints; inside a slice, a repeating
//!   element's constraints likewise hold for some repetition); `max` = "0" → none does; and
//!   every repetition that a `value` or `pattern` discriminator picks for the slice meets the
//!   whole slice (`if`/`then`);
//! - `constraint`s of severity error that the profile itself adds, evaluated by
//!   [`crate::fhir::fhirpath`] on each element at their path;
//! - required bindings of elements of type code, Coding or CodeableConcept to the value sets
//!   the R4 package holds (`profiles/base/required-bindings.json`, "profiles").
//!
//! Not compiled: other value-set bindings, a slice's `max` above 0, `type`/`profile`/`exists`
//! discriminators, `ordered` and closed slicing,
//! type profiles of elements.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::fhir::fhirpath::{Environment, Item};
use crate::fhir::validate::schema_issue;
use crate::outcome::Issue;

/// The StructureDefinition files, embedded at build time (see `build.rs`).
const EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/profiles.rs"));

/// One compiled profile.
pub struct CompiledProfile {
    pub url: String,
    pub resource_type: String,
    /// The profile it constrains further (`baseDefinition`), when that is a profile too.
    pub base: Option<String>,
    pub schema: Value,
    validator: jsonschema::Validator,
    invariants: Vec<ProfileInvariant>,
    /// Messages for the constraints whose schema errors would say too little, by the
    /// schema location of the failing keyword.
    messages: BTreeMap<String, String>,
}

/// An invariant a profile adds, with the FHIRPath that selects the elements it is on.
struct ProfileInvariant {
    key: String,
    human: String,
    at: String,
    select: Option<crate::fhir::fhirpath::Expression>,
    expression: crate::fhir::fhirpath::Expression,
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
            match self.messages.get(error.schema_path().as_str()) {
                Some(message) => {
                    issue.code = crate::outcome::IssueCode::Invariant;
                    issue.diagnostics = format!("profile {}: {message}", self.url);
                }
                None => issue.diagnostics = format!("profile {}: {}", self.url, issue.diagnostics),
            }
            issues.push(issue);
        }
        let environment = Environment { resource, root_resource: resource };
        for invariant in &self.invariants {
            let focus = match &invariant.select {
                None => vec![Item::node(resource)],
                Some(select) => select.evaluate(Item::node(resource), environment).unwrap_or_default(),
            };
            for item in focus {
                if invariant.expression.holds(item, environment) == Ok(Some(false)) {
                    issues.push(
                        Issue::error(crate::outcome::IssueCode::Invariant, format!("profile {}: {}: {}", self.url, invariant.key, invariant.human))
                            .at(invariant.at.clone()),
                    );
                }
            }
        }
    }
}

/// A required binding a profile adds (`profiles/base/required-bindings.json`, "profiles"):
/// the element's type and the codes of its value set, by code system.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProfileBinding {
    #[serde(rename = "type")]
    pub element_type: String,
    #[serde(rename = "valueSet")]
    pub value_set: String,
    pub codes: BTreeMap<String, Vec<String>>,
}

/// Profile URL → element id → its required binding.
pub type ProfileBindings = BTreeMap<String, BTreeMap<String, ProfileBinding>>;

/// All known profiles by canonical URL.
#[derive(Default)]
pub struct Profiles {
    by_url: BTreeMap<String, CompiledProfile>,
}

impl Profiles {
    /// Compiles the embedded StructureDefinitions against the base R4 schema (which tells
    /// which elements are arrays).
    pub fn load(base_schema: &Value, bindings: &ProfileBindings) -> Result<Profiles, String> {
        let mut profiles = Profiles::default();
        let mut definitions = Vec::with_capacity(EMBEDDED.len());
        for (file, text) in EMBEDDED {
            let definition: Value = serde_json::from_str(text).map_err(|e| format!("profile {file}: {e}"))?;
            definitions.push((file, definition));
        }
        // What each profile is a profile of, for references whose target is a profile.
        let types: BTreeMap<String, String> = definitions
            .iter()
            .filter_map(|(_, d)| Some((d.get("url")?.as_str()?.to_owned(), d.get("type")?.as_str()?.to_owned())))
            .collect();
        for (file, definition) in &definitions {
            let own = definition.get("url").and_then(Value::as_str).and_then(|url| bindings.get(url));
            let compiled = compile(definition, base_schema, &types, own).map_err(|e| format!("profile {file}: {e}"))?;
            profiles.by_url.insert(compiled.url.clone(), compiled);
        }
        Ok(profiles)
    }

    /// Checks `resource` against the profile `url` and the profiles it derives from;
    /// `false` if the server does not know `url`.
    pub fn check(&self, url: &str, resource_type: &str, resource: &Value, issues: &mut Vec<Issue>) -> bool {
        let Some(profile) = self.get(url) else { return false };
        profile.check(resource_type, resource, issues);
        let mut base = profile.base.as_deref();
        for _ in 0..8 {
            let Some(parent) = base.and_then(|url| self.get(url)) else { break };
            parent.check(resource_type, resource, issues);
            base = parent.base.as_deref();
        }
        true
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

/// One differential element: its id's steps below the resource (element name, slice name).
type Steps = Vec<(String, Option<String>)>;

/// The steps of an element id (`Observation.component:SystolicBP.code` →
/// `[("component", "SystolicBP"), ("code", None)]`), from `id`, else from `path`.
fn steps_of(element: &Value, resource_type: &str) -> Result<Steps, String> {
    let id = element.get("id").or_else(|| element.get("path")).and_then(Value::as_str).ok_or("element without id or path")?;
    let mut parts = id.split('.');
    if parts.next().map(|root| root.split(':').next().unwrap_or(root)) != Some(resource_type) {
        return Err(format!("element '{id}' is outside {resource_type}"));
    }
    Ok(parts
        .map(|part| match part.split_once(':') {
            Some((name, slice)) => (name.to_owned(), Some(slice.to_owned())),
            None => (part.to_owned(), None),
        })
        .collect())
}

/// What compiling a profile collects besides the schema: the profile's own invariants, and
/// a message for each constraint whose schema error would say too little.
#[derive(Default)]
struct Collected {
    invariants: Vec<ProfileInvariant>,
    messages: BTreeMap<String, String>,
}

/// Compiles one StructureDefinition's differential into a JSON schema.
pub fn compile(
    definition: &Value,
    base_schema: &Value,
    profile_types: &BTreeMap<String, String>,
    bindings: Option<&BTreeMap<String, ProfileBinding>>,
) -> Result<CompiledProfile, String> {
    let url = definition.get("url").and_then(Value::as_str).ok_or("no url")?.to_owned();
    let resource_type = definition.get("type").and_then(Value::as_str).ok_or("no type")?.to_owned();
    let base = definition.get("baseDefinition").and_then(Value::as_str).map(str::to_owned);
    let elements =
        definition.pointer("/differential/element").and_then(Value::as_array).ok_or("no differential elements")?;
    let mut listed: Vec<(Steps, &Value)> = Vec::with_capacity(elements.len());
    let mut collected = Collected::default();
    for element in elements {
        let steps = steps_of(element, &resource_type)?;
        collect_invariants(element, &steps, &url, &resource_type, &mut collected)?;
        listed.push((steps, element));
    }
    let context = Context { base_schema, url: &url, profile_types, bindings };
    let schema = context.compile_level(&listed, &resource_type, false, "", &mut collected)?;
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&schema)
        .map_err(|e| format!("compiled schema is invalid: {e}"))?;
    Ok(CompiledProfile { url, resource_type, base, schema, validator, invariants: collected.invariants, messages: collected.messages })
}

/// The profile's own error-level invariants (not those it inherits), evaluated on each
/// element at their path.
fn collect_invariants(element: &Value, steps: &Steps, url: &str, resource_type: &str, collected: &mut Collected) -> Result<(), String> {
    for constraint in element.get("constraint").and_then(Value::as_array).into_iter().flatten() {
        let source = constraint.get("source").and_then(Value::as_str).unwrap_or(url);
        let (Some(key), Some(expression)) = (constraint.get("key").and_then(Value::as_str), constraint.get("expression").and_then(Value::as_str)) else {
            continue;
        };
        if source != url || constraint.get("severity").and_then(Value::as_str) != Some("error") {
            continue;
        }
        let path: Vec<&str> = steps.iter().map(|(name, _)| name.trim_end_matches("[x]")).collect();
        let select = if path.is_empty() { None } else { Some(crate::fhir::fhirpath::Expression::parse(&path.join(".")).map_err(|e| format!("{key}: {e}"))?) };
        collected.invariants.push(ProfileInvariant {
            key: key.to_owned(),
            human: constraint.get("human").and_then(Value::as_str).unwrap_or_default().to_owned(),
            at: std::iter::once(resource_type).chain(path).collect::<Vec<_>>().join("."),
            select,
            expression: crate::fhir::fhirpath::Expression::parse(expression).map_err(|e| format!("{key}: {e}"))?,
        });
    }
    Ok(())
}

struct Context<'a> {
    base_schema: &'a Value,
    url: &'a str,
    profile_types: &'a BTreeMap<String, String>,
    bindings: Option<&'a BTreeMap<String, ProfileBinding>>,
}

impl Context<'_> {
    /// The base definition of element `name` of `definition`: its type's schema definition
    /// and whether it repeats.
    fn child(&self, definition: &str, name: &str) -> Result<(String, bool), String> {
        let property = self
            .base_schema
            .pointer(&format!("/definitions/{definition}/properties/{name}"))
            .ok_or_else(|| format!("{definition} has no element '{name}'"))?;
        let target = property
            .get("$ref")
            .or_else(|| property.pointer("/items/$ref"))
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/definitions/"))
            .unwrap_or_default()
            .to_owned();
        Ok((target, property.get("items").is_some()))
    }

    /// The keys of choice element `stem[x]` of `definition` (`valueQuantity`, …).
    fn choice_keys(&self, definition: &str, stem: &str) -> Vec<String> {
        let properties = self.base_schema.pointer(&format!("/definitions/{definition}/properties")).and_then(Value::as_object);
        properties
            .into_iter()
            .flatten()
            .map(|(key, _)| key)
            .filter(|key| key.strip_prefix(stem).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())))
            .cloned()
            .collect()
    }

    /// The schema of an object of type `definition` under the differential `elements`
    /// (their steps relative to it). Inside a slice, a repeating element's constraints say
    /// what some repetition holds (`contains`): the slice is the CodeableConcept that has
    /// a coding with this system and code.
    fn compile_level(&self, elements: &[(Steps, &Value)], definition: &str, in_slice: bool, pointer: &str, collected: &mut Collected) -> Result<Value, String> {
        let mut node = json!({ "type": "object" });
        let mut firsts: Vec<(String, Option<String>)> = Vec::new();
        for (steps, _) in elements {
            if let Some(first) = steps.first() {
                if !firsts.contains(first) {
                    firsts.push(first.clone());
                }
            }
        }
        for (name, slice) in firsts {
            let own = elements.iter().find(|(steps, _)| steps.len() == 1 && steps.first() == Some(&(name.clone(), slice.clone()))).map(|(_, e)| *e);
            let children: Vec<(Steps, &Value)> = elements
                .iter()
                .filter(|(steps, _)| steps.len() > 1 && steps.first() == Some(&(name.clone(), slice.clone())))
                .map(|(steps, element)| (steps.get(1..).unwrap_or_default().to_vec(), *element))
                .collect();
            if name.ends_with("[x]") {
                if let Some(own) = own {
                    self.choice(ensure_object(&mut node), definition, &name, own, pointer, collected);
                }
                continue;
            }
            let (child_definition, repeats) = self.child(definition, &name)?;
            let object = ensure_object(&mut node);
            match &slice {
                None => {
                    if let Some(own) = own {
                        self.apply(object, &name, own, repeats, pointer, collected);
                    }
                    if !children.is_empty() {
                        let at = format!("{pointer}/properties/{name}/allOf/{}", all_of_len(property(object, &name)));
                        let keyword = if in_slice { "contains" } else { "items" };
                        let inner_at = if repeats { format!("{at}/{keyword}") } else { at };
                        if repeats && in_slice {
                            collected.messages.insert(inner_at.clone(), format!("no {name} here has what the profile's slice requires of it"));
                        }
                        let inner = self.compile_level(&children, &child_definition, in_slice, &inner_at, collected)?;
                        let constraint = if repeats { json!({ keyword: inner }) } else { inner };
                        push_all_of(property(object, &name), constraint);
                    }
                }
                Some(slice_name) => {
                    let min = own.and_then(|e| e.get("min")).and_then(Value::as_u64).unwrap_or(0);
                    let max = own.and_then(|e| e.get("max")).and_then(Value::as_str).unwrap_or("*");
                    let at = format!("{pointer}/properties/{name}/allOf/{}", all_of_len(property(object, &name)));
                    let inner = self.compile_level(&children, &child_definition, true, &format!("{at}/contains"), collected)?;
                    if min >= 1 {
                        push_all_of(object, json!({ "required": [name] }));
                        collected.messages.insert(format!("{at}/contains"), format!("no {name} matches the profile's slice '{slice_name}'"));
                        push_all_of(property(object, &name), json!({ "contains": inner }));
                    } else if max == "0" {
                        collected.messages.insert(format!("{at}/not"), format!("the profile's slice '{slice_name}' is not allowed here"));
                        push_all_of(property(object, &name), json!({ "not": { "contains": inner.clone() } }));
                    }
                    // Every repetition the discriminator picks for the slice meets the
                    // whole slice (`value`/`pattern` discriminators on the slice's paths).
                    let discriminators: Vec<String> = elements
                        .iter()
                        .filter(|(steps, _)| steps.len() == 1 && steps.first() == Some(&(name.clone(), None)))
                        .flat_map(|(_, element)| element.pointer("/slicing/discriminator").and_then(Value::as_array).cloned().unwrap_or_default())
                        .filter(|d| matches!(d.get("type").and_then(Value::as_str), Some("value" | "pattern")))
                        .filter_map(|d| d.get("path").and_then(Value::as_str).map(str::to_owned))
                        .collect();
                    let picking: Vec<(Steps, &Value)> = children
                        .iter()
                        .filter(|(steps, _)| {
                            let path: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
                            let path = path.join(".");
                            discriminators.iter().any(|d| *d == path || d.starts_with(&format!("{path}.")))
                        })
                        .cloned()
                        .collect();
                    let picks_something = picking.iter().any(|(_, e)| e.as_object().is_some_and(|o| o.keys().any(|k| k.starts_with("fixed") || k.starts_with("pattern"))));
                    if picks_something && picking.len() < children.len() {
                        let at = format!("{pointer}/properties/{name}/allOf/{}", all_of_len(property(object, &name)));
                        let picked = self.compile_level(&picking, &child_definition, true, &format!("{at}/items/if"), collected)?;
                        let whole = self.compile_level(&children, &child_definition, true, &format!("{at}/items/then"), collected)?;
                        push_all_of(property(object, &name), json!({ "items": { "if": picked, "then": whole } }));
                    }
                }
            }
        }
        Ok(node)
    }

    /// min, max, fixed and pattern values, and the targets of a reference, of element `name`.
    fn apply(&self, node: &mut Map<String, Value>, name: &str, element: &Value, repeats: bool, pointer: &str, collected: &mut Collected) {
        let min = element.get("min").and_then(Value::as_u64).unwrap_or(0);
        let max = element.get("max").and_then(Value::as_str).unwrap_or("*");
        let id = element.get("id").and_then(Value::as_str).unwrap_or_default();
        if let Some(binding) = self.bindings.and_then(|bindings| bindings.get(id)) {
            let coding = |binding: &ProfileBinding| {
                let any: Vec<Value> = binding
                    .codes
                    .iter()
                    .map(|(system, codes)| json!({ "properties": { "system": { "const": system }, "code": { "enum": codes } }, "required": ["system", "code"] }))
                    .collect();
                json!({ "anyOf": any })
            };
            let at = format!("{pointer}/properties/{name}/allOf/{}", all_of_len(property(node, name)));
            let wrap = |constraint: Value| if repeats { json!({ "items": constraint }) } else { constraint };
            let value_set = binding.value_set.split('|').next().unwrap_or_default();
            let constraint = match binding.element_type.as_str() {
                "code" => json!({ "enum": binding.codes.values().flatten().collect::<Vec<_>>() }),
                "Coding" => coding(binding),
                _ => json!({ "required": ["coding"], "properties": { "coding": { "contains": coding(binding) } } }),
            };
            let inner = if repeats { format!("{at}/items") } else { at };
            let message = format!("not from the value set {value_set}, which the profile {} requires here", self.url);
            for keyword in ["enum", "anyOf", "required", "properties/coding/contains"] {
                collected.messages.insert(format!("{inner}/{keyword}"), message.clone());
            }
            push_all_of(property(node, name), wrap(constraint));
        }
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
            let constraint = if key.starts_with("fixed") {
                json!({ "const": value })
            } else if key.starts_with("pattern") {
                pattern_schema(key, value)
            } else {
                continue;
            };
            push_all_of(property(node, name), if repeats { json!({ "items": constraint }) } else { constraint });
        }
        // The types a reference may point at: a core type's URL names it; a profile's, the
        // type it profiles. One target the server cannot place leaves the reference unchecked.
        let target_profiles: Vec<&str> = element
            .get("type")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|t| t.get("code").and_then(Value::as_str) == Some("Reference"))
            .flat_map(|t| t.get("targetProfile").and_then(Value::as_array).into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        let placed: Vec<Option<String>> = target_profiles
            .iter()
            .map(|profile| {
                let core = profile
                    .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
                    .filter(|target| self.base_schema.pointer(&format!("/definitions/{target}/properties/resourceType")).is_some() || *target == "Resource");
                core.map(str::to_owned).or_else(|| self.profile_types.get(*profile).cloned())
            })
            .collect();
        let mut targets: Vec<String> = if placed.iter().all(Option::is_some) { placed.into_iter().flatten().collect() } else { Vec::new() };
        targets.sort();
        targets.dedup();
        if !targets.is_empty() && !targets.iter().any(|t| t == "Resource") {
            let pattern = format!("^(#.*|urn:.*|(.*/)?({})/[^/]+(/_history/[^/]+)?)$", targets.join("|"));
            let reference = json!({ "properties": { "reference": { "pattern": pattern } } });
            let at = format!("{pointer}/properties/{name}/allOf/{}", all_of_len(property(node, name)));
            let inner = if repeats { format!("{at}/items/properties/reference/pattern") } else { format!("{at}/properties/reference/pattern") };
            collected.messages.insert(inner, format!("the profile {} allows a reference to {} here", self.url, targets.join(" or ")));
            push_all_of(property(node, name), if repeats { json!({ "items": reference }) } else { reference });
        }
    }

    /// A choice element `stem[x]`: required (some typed key present), and only the types
    /// the profile lists.
    fn choice(&self, node: &mut Map<String, Value>, definition: &str, name: &str, element: &Value, pointer: &str, collected: &mut Collected) {
        let stem = name.trim_end_matches("[x]");
        let keys = self.choice_keys(definition, stem);
        let allowed: Vec<String> = element
            .get("type")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("code").and_then(Value::as_str))
            .map(|code| {
                let mut chars = code.chars();
                let first: String = chars.next().map(|c| c.to_uppercase().collect()).unwrap_or_default();
                format!("{stem}{first}{}", chars.as_str())
            })
            .collect();
        let permitted: Vec<&String> = if allowed.is_empty() { keys.iter().collect() } else { keys.iter().filter(|k| allowed.contains(k)).collect() };
        let min = element.get("min").and_then(Value::as_u64).unwrap_or(0);
        let max = element.get("max").and_then(Value::as_str).unwrap_or("*");
        if min >= 1 && !permitted.is_empty() {
            let at = format!("{pointer}/allOf/{}", all_of_len(node));
            collected.messages.insert(at.clone(), format!("{name} is required by the profile {}", self.url));
            let any: Vec<Value> = permitted.iter().map(|k| json!({ "required": [k] })).collect();
            push_all_of(node, json!({ "anyOf": any }));
        }
        for key in keys.iter().filter(|k| max == "0" || (!allowed.is_empty() && !allowed.contains(k))) {
            let at = format!("{pointer}/allOf/{}", all_of_len(node));
            collected.messages.insert(format!("{at}/not"), format!("{key} is not allowed by the profile {}", self.url));
            push_all_of(node, json!({ "not": { "required": [key] } }));
        }
    }
}

fn all_of_len(node: &Map<String, Value>) -> usize {
    node.get("allOf").and_then(Value::as_array).map_or(0, Vec::len)
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
