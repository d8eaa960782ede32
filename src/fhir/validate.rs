//! Validation of every resource before it is written.
//!
//! Layers, each reporting issues with the FHIRPath-style element path:
//! 1. The official FHIR R4 JSON schema (`profiles/base/fhir.schema.json`), compiled per
//!    resource type with the `jsonschema` crate: unknown elements, JSON types, primitive
//!    formats (id, date, dateTime, instant, code, uri, decimal…), codes of required bindings.
//! 2. Required primitive elements (`profiles/base/required-primitives.json`, derived from the
//!    R4 StructureDefinitions): the schema cannot require them because a primitive may be
//!    present only as its `_element` extension form.
//! 3. fhirbolt's typed R4 model in strict mode, which decides what is a valid resource.
//! 4. The invariants of the R4 resources and data types (`profiles/base/invariants.json`,
//!    derived from the R4 StructureDefinitions), evaluated by [`crate::fhir::fhirpath`] on
//!    every element they are declared on; an invariant fails when it yields `false` (a result
//!    FHIRPath leaves unknown, such as dates of overlapping precision, passes).
//! 5. The profiles in `meta.profile` that the server knows (see [`crate::fhir::profiles`]).
//!
//! Contained resources, Bundle entries and Parameters resources are validated as resources
//! of their own type, with their path prefixed.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::fhir::fhirpath::{Environment, Item};
use crate::outcome::{Issue, IssueCode};
use crate::fhir::profiles::Profiles;

const SCHEMA_JSON: &str = include_str!("../../profiles/base/fhir.schema.json");
const REQUIRED_PRIMITIVES_JSON: &str = include_str!("../../profiles/base/required-primitives.json");
const REQUIRED_BINDINGS_JSON: &str = include_str!("../../profiles/base/required-bindings.json");
const INVARIANTS_JSON: &str = include_str!("../../profiles/base/invariants.json");

/// One invariant of a definition (`profiles/base/invariants.json`): on the object itself,
/// or on each value of one of its elements (`element`, `value[x]` for a choice).
#[derive(Debug, Clone)]
struct Invariant {
    key: String,
    human: String,
    element: Option<String>,
    expression: crate::fhir::fhirpath::Expression,
}

#[derive(serde::Deserialize)]
struct ListedInvariant {
    key: String,
    #[serde(default)]
    human: String,
    expression: String,
    element: Option<String>,
}

/// The invariants by schema definition; an expression the evaluator cannot parse is an
/// error of the data file (the unit test below keeps the file and the evaluator in step).
type Invariants = HashMap<String, Vec<Invariant>>;

/// Where an invariant's focus sits below the object walked: the object itself, or an
/// element's (key, index in its array).
type Place<'k> = Option<(&'k str, Option<usize>)>;

fn load_invariants() -> Result<Invariants, String> {
    #[derive(serde::Deserialize)]
    struct File {
        invariants: HashMap<String, Vec<ListedInvariant>>,
    }
    let file: File = serde_json::from_str(INVARIANTS_JSON).map_err(|e| format!("invariants: {e}"))?;
    let mut loaded = HashMap::new();
    for (definition, listed) in file.invariants {
        let mut compiled = Vec::with_capacity(listed.len());
        for invariant in listed {
            let expression = crate::fhir::fhirpath::Expression::parse(&invariant.expression)
                .map_err(|e| format!("invariant {} of {definition}: {e}", invariant.key))?;
            compiled.push(Invariant { key: invariant.key, human: invariant.human, element: invariant.element, expression });
        }
        loaded.insert(definition, compiled);
    }
    Ok(loaded)
}

/// An element bound to a value set with strength `required` (from the R4 definitions,
/// `profiles/base/required-bindings.json`): the codes allowed, by code system.
#[derive(Debug, Clone, serde::Deserialize)]
struct RequiredBinding {
    #[serde(rename = "type")]
    element_type: String,
    #[serde(rename = "valueSet")]
    value_set: String,
    codes: HashMap<String, BTreeSet<String>>,
}

impl RequiredBinding {
    fn allows(&self, system: Option<&str>, code: &str) -> bool {
        match system {
            Some(system) => self.codes.get(system).is_some_and(|codes| codes.contains(code)),
            None => self.codes.values().any(|codes| codes.contains(code)),
        }
    }

    /// Whether one value of the element (a code string, a Coding or a CodeableConcept) is
    /// from the value set.
    fn admits(&self, value: &Value) -> bool {
        let coding_admitted = |coding: &Value| match (coding.get("system").and_then(Value::as_str), coding.get("code").and_then(Value::as_str)) {
            (Some(system), Some(code)) => self.allows(Some(system), code),
            _ => false,
        };
        match self.element_type.as_str() {
            "code" => value.as_str().is_none_or(|code| self.allows(None, code)),
            "Coding" => coding_admitted(value),
            _ => value.get("coding").and_then(Value::as_array).is_some_and(|codings| codings.iter().any(coding_admitted)),
        }
    }

    /// A few of the allowed codes, for the message.
    fn examples(&self) -> String {
        let codes: Vec<&str> = self.codes.values().flatten().map(String::as_str).collect();
        let shown: Vec<&str> = codes.iter().take(8).copied().collect();
        let more = if codes.len() > shown.len() { format!(", … ({} codes)", codes.len()) } else { String::new() };
        format!("{}{more}", shown.join(", "))
    }
}

/// A resource that passed validation. Only [`Validator::validate`] makes one, so code that
/// takes a `Validated` cannot be handed unchecked content.
#[derive(Debug, Clone)]
pub struct Validated(Value);

impl Validated {
    pub fn into_inner(self) -> Value {
        self.0
    }

    pub fn as_value(&self) -> &Value {
        &self.0
    }
}

/// Compiled validation state, shared by all requests.
pub struct Validator {
    /// The R4 schema with embedded resources relaxed to "an object with a resourceType";
    /// embedded resources are validated separately against their own type.
    schema: Value,
    required_primitives: HashMap<String, Vec<String>>,
    /// Schema definition → element → its required binding (looked up once per object walked).
    required_bindings: HashMap<String, HashMap<String, RequiredBinding>>,
    invariants: Invariants,
    resource_types: BTreeSet<String>,
    compiled: RwLock<HashMap<String, Arc<jsonschema::Validator>>>,
    profiles: Profiles,
    /// Whether a `meta.profile` this server does not know refuses the write (the
    /// `unknown_profiles = "error"` setting) instead of being accepted with a warning.
    unknown_profile_is_error: bool,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Validator").field("resource_types", &self.resource_types.len()).finish_non_exhaustive()
    }
}

impl Validator {
    /// Loads the embedded schema and the profiles directory's compiled profiles.
    pub fn load() -> Result<Validator, String> {
        let mut schema: Value = serde_json::from_str(SCHEMA_JSON).map_err(|e| format!("R4 schema: {e}"))?;
        let bindings: Value = serde_json::from_str(REQUIRED_BINDINGS_JSON).map_err(|e| format!("required bindings: {e}"))?;
        let profile_bindings: crate::fhir::profiles::ProfileBindings =
            serde_json::from_value(bindings.get("profiles").cloned().unwrap_or(Value::Null)).map_err(|e| format!("required bindings of profiles: {e}"))?;
        let profiles = Profiles::load(&schema, &profile_bindings)?;
        let required_primitives: HashMap<String, Vec<String>> =
            serde_json::from_str(REQUIRED_PRIMITIVES_JSON).map_err(|e| format!("required primitives: {e}"))?;
        let listed: HashMap<String, RequiredBinding> =
            serde_json::from_value(bindings.get("bindings").cloned().unwrap_or(Value::Null)).map_err(|e| format!("required bindings: {e}"))?;
        let mut required_bindings: HashMap<String, HashMap<String, RequiredBinding>> = HashMap::new();
        for (key, binding) in listed {
            let (definition, element) = key.split_once('.').unwrap_or((key.as_str(), ""));
            // Codes the schema already enumerates are reported by the schema, once.
            let property = schema.pointer(&format!("/definitions/{definition}/properties/{element}"));
            if property.is_none_or(|p| p.get("enum").is_none() && p.pointer("/items/enum").is_none()) {
                required_bindings.entry(definition.to_owned()).or_default().insert(element.to_owned(), binding);
            }
        }
        let invariants = load_invariants()?;
        let resource_types: BTreeSet<String> = schema
            .pointer("/discriminator/mapping")
            .and_then(Value::as_object)
            .map(|mapping| mapping.keys().cloned().collect())
            .ok_or("R4 schema has no discriminator mapping")?;
        if let Some(definitions) = schema.get_mut("definitions").and_then(Value::as_object_mut) {
            mend_schema(definitions);
            definitions.insert(
                "ResourceList".to_owned(),
                serde_json::json!({ "type": "object", "required": ["resourceType"] }),
            );
        }
        if let Some(root) = schema.as_object_mut() {
            root.remove("oneOf");
            root.remove("discriminator");
        }
        Ok(Validator {
            schema,
            required_primitives,
            required_bindings,
            invariants,
            resource_types,
            compiled: RwLock::new(HashMap::new()),
            profiles,
            unknown_profile_is_error: false,
        })
    }

    /// The same validator, refusing resources that claim a profile it does not know.
    pub fn refusing_unknown_profiles(mut self, refuse: bool) -> Validator {
        self.unknown_profile_is_error = refuse;
        self
    }

    /// Warnings about `resource` that do not stop a write: the profiles it claims that this
    /// server does not know, so did not check (empty where unknown profiles are refused).
    pub fn warnings(&self, resource: &Value) -> Vec<Issue> {
        if self.unknown_profile_is_error {
            return Vec::new();
        }
        let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        let profiles = resource.pointer("/meta/profile").and_then(Value::as_array).into_iter().flatten();
        profiles
            .enumerate()
            .filter_map(|(index, profile)| profile.as_str().filter(|url| self.profiles.get(url).is_none()).map(|url| (index, url)))
            .map(|(index, url)| {
                Issue::warning(IssueCode::NotSupported, format!("the profile '{url}' is not known to this server and was not checked"))
                    .at(format!("{resource_type}.meta.profile[{index}]"))
            })
            .collect()
    }

    /// Whether `name` is an R4 resource type.
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.resource_types.contains(name)
    }

    /// Whether the base definition of `resource_type` has a top-level element `name`.
    pub fn has_element(&self, resource_type: &str, name: &str) -> bool {
        self.schema.pointer(&format!("/definitions/{resource_type}/properties/{name}")).is_some()
    }

    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.resource_types.iter().map(String::as_str)
    }

    /// Checks `resource` completely; on failure every issue found is returned.
    pub fn validate(&self, resource: Value) -> Result<Validated, Vec<Issue>> {
        let mut issues = Vec::new();
        self.check_resource(&resource, "", &resource, &mut issues);
        if issues.is_empty() {
            self.check_profiles(&resource, &mut issues);
        }
        if issues.is_empty() {
            let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or("Resource");
            match crate::fhir::format::to_model(resource.clone(), fhirbolt::serde::DeserializationMode::Strict) {
                Ok(_) => {}
                Err(error) => issues.push(
                    Issue::error(IssueCode::Structure, format!("not a valid R4 resource: {error}")).at(resource_type),
                ),
            }
        }
        if issues.is_empty() {
            Ok(Validated(resource))
        } else {
            // A profile and the profile it derives from may state the same rule.
            let mut seen = std::collections::HashSet::new();
            issues.retain(|issue| seen.insert((issue.expression.clone(), issue.diagnostics.clone())));
            Err(issues)
        }
    }

    /// Validates one (possibly embedded) resource; `prefix` is the path of the resource
    /// itself, e.g. `Bundle.entry[0].resource.` (empty at the top level).
    fn check_resource<'a>(&self, resource: &'a Value, prefix: &str, root: &'a Value, issues: &mut Vec<Issue>) {
        let Some(object) = resource.as_object() else {
            issues.push(Issue::error(IssueCode::Structure, "a resource must be a JSON object").at(prefix_name(prefix)));
            return;
        };
        let Some(resource_type) = object.get("resourceType").and_then(Value::as_str) else {
            issues.push(
                Issue::error(IssueCode::Required, "the resource has no resourceType")
                    .at(format!("{prefix}resourceType")),
            );
            return;
        };
        if !self.is_resource_type(resource_type) {
            issues.push(
                Issue::error(IssueCode::NotSupported, format!("'{resource_type}' is not an R4 resource type"))
                    .at(format!("{prefix}resourceType")),
            );
            return;
        }
        let validator = match self.compiled_for(resource_type) {
            Ok(validator) => validator,
            Err(message) => {
                issues.push(Issue::error(IssueCode::Exception, message));
                return;
            }
        };
        let root_path = if prefix.is_empty() { resource_type.to_owned() } else { prefix_name(prefix) };
        let mut found: Vec<Issue> = validator.iter_errors(resource).map(|error| schema_issue(&root_path, &error)).collect();
        // A value of the wrong JSON type also fails its format pattern; report it once.
        let wrong_type: Vec<Vec<String>> = found
            .iter()
            .filter(|issue| issue.code == IssueCode::Structure && issue.diagnostics.starts_with("wrong JSON type"))
            .map(|issue| issue.expression.clone())
            .collect();
        found.retain(|issue| !(issue.code == IssueCode::Value && wrong_type.contains(&issue.expression)));
        issues.extend(found);
        check_not_empty(resource, &root_path, issues);
        let environment = Environment { resource, root_resource: root };
        self.walk(resource_type, resource, &root_path, environment, issues);
        if self.has_element(resource_type, "contained") {
            self.check_invariants("DomainResource", resource, &root_path, environment, issues);
        }
    }

    /// The invariants declared on `definition`, evaluated on `value` (or on the values of the
    /// element they are declared on); each that yields `false` is an issue at its element.
    fn check_invariants<'a>(&self, definition: &str, value: &'a Value, path: &str, environment: Environment<'a>, issues: &mut Vec<Issue>) {
        let Some(invariants) = self.invariants.get(definition) else { return };
        let Some(object) = value.as_object() else { return };
        for invariant in invariants {
            // (key, index) of each focus; the element path is spelt out only for an issue.
            let mut focus: Vec<(Place<'_>, Item<'a>)> = Vec::new();
            match invariant.element.as_deref() {
                None => focus.push((None, Item::node(value))),
                Some(element) => {
                    let stem = element.trim_end_matches("[x]");
                    for (key, child) in object.iter().filter(|(key, _)| {
                        key.as_str() == stem || (element.ends_with("[x]") && key.strip_prefix(stem).is_some_and(|t| t.starts_with(|c: char| c.is_ascii_uppercase())))
                    }) {
                        match child {
                            Value::Array(items) => focus.extend(items.iter().enumerate().map(|(i, item)| (Some((key.as_str(), Some(i))), Item::node(item)))),
                            single => focus.push((Some((key.as_str(), None)), Item::node(single))),
                        }
                    }
                }
            }
            for (place, item) in focus {
                let at = || match place {
                    None => path.to_owned(),
                    Some((key, None)) => format!("{path}.{key}"),
                    Some((key, Some(index))) => format!("{path}.{key}[{index}]"),
                };
                match invariant.expression.holds(item, environment) {
                    Ok(Some(false)) => issues.push(Issue::error(IssueCode::Invariant, format!("{}: {}", invariant.key, invariant.human)).at(at())),
                    Ok(_) => {}
                    Err(error) => tracing::debug!(key = %invariant.key, at = %at(), %error, "an invariant could not be evaluated"),
                }
            }
        }
    }

    /// Walks the instance alongside the schema's definitions: required primitives, and
    /// embedded resources validated as resources.
    fn walk<'a>(&self, definition: &str, value: &'a Value, path: &str, environment: Environment<'a>, issues: &mut Vec<Issue>) {
        let Some(object) = value.as_object() else { return };
        check_extension_urls(definition, object, path, issues);
        if definition == "Bundle_Entry" {
            check_full_url(object, path, issues);
        }
        self.check_invariants(definition, value, path, environment, issues);
        if let Some(required) = self.required_primitives.get(definition) {
            for name in required {
                if !object.contains_key(name) && !object.contains_key(&format!("_{name}")) {
                    issues.push(
                        Issue::error(IssueCode::Required, format!("the required element '{name}' is missing"))
                            .at(format!("{path}.{name}")),
                    );
                }
            }
        }
        let properties = self.schema.pointer(&format!("/definitions/{definition}/properties"));
        let bindings = self.required_bindings.get(definition);
        for (key, child) in object {
            if let Some(binding) = bindings.and_then(|bindings| bindings.get(key)) {
                let values: Vec<(String, &Value)> = match child {
                    Value::Array(items) => items.iter().enumerate().map(|(index, item)| (format!("{path}.{key}[{index}]"), item)).collect(),
                    single => vec![(format!("{path}.{key}"), single)],
                };
                for (value_path, value) in values.into_iter().filter(|(_, value)| !binding.admits(value)) {
                    let shown = value.as_str().map_or_else(|| "the value".to_owned(), |code| format!("'{code}'"));
                    let value_set = binding.value_set.split('|').next().unwrap_or_default();
                    issues.push(
                        Issue::error(
                            IssueCode::CodeInvalid,
                            format!("{shown} is not from the required value set {value_set} ({})", binding.examples()),
                        )
                        .at(value_path),
                    );
                }
            }
            let Some(property) = properties.and_then(|p| p.get(key)) else { continue };
            let reference = property
                .get("$ref")
                .or_else(|| property.pointer("/items/$ref"))
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/definitions/"));
            let Some(child_definition) = reference else { continue };
            let children: Vec<(String, &Value)> = match child {
                Value::Array(items) => {
                    items.iter().enumerate().map(|(index, item)| (format!("{path}.{key}[{index}]"), item)).collect()
                }
                single => vec![(format!("{path}.{key}"), single)],
            };
            for (child_path, item) in children {
                if child_definition == "ResourceList" {
                    self.check_resource(item, &format!("{child_path}."), environment.root_resource, issues);
                } else if !is_primitive_definition(child_definition) {
                    self.walk(child_definition, item, &child_path, environment, issues);
                }
            }
        }
    }

    fn check_profiles(&self, resource: &Value, issues: &mut Vec<Issue>) {
        let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        // Board posts, replies and chat messages meet the board's profile whatever they claim.
        if resource_type == "Communication" && crate::fhir::board::kind_of(resource).is_some() {
            let claimed = resource.pointer("/meta/profile").and_then(Value::as_array).is_some_and(|p| p.iter().any(|u| u == crate::fhir::board::BOARD_PROFILE));
            if !claimed {
                self.profiles.check(crate::fhir::board::BOARD_PROFILE, resource_type, resource, issues);
            }
        }
        let Some(profiles) = resource.pointer("/meta/profile").and_then(Value::as_array) else { return };
        for (index, profile) in profiles.iter().enumerate() {
            let Some(url) = profile.as_str() else { continue };
            match self.profiles.check(url, resource_type, resource, issues) {
                true => {}
                false if !self.unknown_profile_is_error => {}
                false => issues.push(
                    Issue::error(
                        IssueCode::NotSupported,
                        format!("the profile '{url}' is not known to this server; see the CapabilityStatement for supported profiles"),
                    )
                    .at(format!("{resource_type}.meta.profile[{index}]")),
                ),
            }
        }
    }

    fn compiled_for(&self, resource_type: &str) -> Result<Arc<jsonschema::Validator>, String> {
        if let Ok(compiled) = self.compiled.read() {
            if let Some(validator) = compiled.get(resource_type) {
                return Ok(validator.clone());
            }
        }
        let mut schema = self.schema.clone();
        if let Some(root) = schema.as_object_mut() {
            root.insert("$ref".to_owned(), Value::String(format!("#/definitions/{resource_type}")));
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft6)
            .build(&schema)
            .map_err(|e| format!("cannot compile the R4 schema for {resource_type}: {e}"))?;
        let validator = Arc::new(validator);
        if let Ok(mut compiled) = self.compiled.write() {
            compiled.insert(resource_type.to_owned(), validator.clone());
        }
        Ok(validator)
    }

    /// The profile registry (for the CapabilityStatement).
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }
}

/// FHIR forbids empty arrays and empty objects: an element is present only with a value or
/// children. Embedded resources are checked when they are validated themselves.
fn check_not_empty(value: &Value, path: &str, issues: &mut Vec<Issue>) {
    match value {
        Value::Array(items) if items.is_empty() => issues.push(
            Issue::error(IssueCode::Structure, "an array must not be empty; leave the element out instead").at(path),
        ),
        Value::Object(object) if object.is_empty() => issues.push(
            Issue::error(IssueCode::Structure, "an element must have a value or children; leave it out instead").at(path),
        ),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                check_not_empty(item, &format!("{path}[{index}]"), issues);
            }
        }
        Value::Object(object) => {
            for (key, child) in object {
                if child.get("resourceType").is_some() {
                    continue;
                }
                let child_path = format!("{path}.{key}");
                if let Value::Array(items) = child {
                    if items.iter().any(|item| item.get("resourceType").is_some()) {
                        continue;
                    }
                }
                check_not_empty(child, &child_path, issues);
            }
        }
        _ => {}
    }
}

fn is_primitive_definition(name: &str) -> bool {
    name.chars().next().is_some_and(char::is_lowercase)
}

fn prefix_name(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('.');
    if trimmed.is_empty() {
        "Resource".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Turns a JSON pointer such as `/name/0/given` into `Patient.name[0].given`.
pub fn pointer_to_path(root: &str, pointer: &str) -> String {
    let mut path = root.to_owned();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            path.push('.');
            path.push_str(&segment);
        }
    }
    path
}

/// One schema error as an issue at the element it concerns.
pub(crate) fn schema_issue(root_path: &str, error: &jsonschema::ValidationError<'_>) -> Issue {
    use jsonschema::error::ValidationErrorKind as Kind;
    let path = pointer_to_path(root_path, error.instance_path().as_str());
    match error.kind() {
        Kind::AdditionalProperties { unexpected } => {
            let mut issue = Issue::error(
                IssueCode::Structure,
                format!("unknown element{} {}", if unexpected.len() > 1 { "s" } else { "" }, quote_list(unexpected)),
            );
            for name in unexpected {
                issue = issue.at(format!("{path}.{name}"));
            }
            issue
        }
        Kind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            Issue::error(IssueCode::Required, format!("the required element '{name}' is missing"))
                .at(format!("{path}.{name}"))
        }
        Kind::Enum { options } => Issue::error(
            IssueCode::Value,
            format!("{} is not one of the codes allowed here: {}", error.instance(), options),
        )
        .at(path),
        Kind::Pattern { .. } => {
            Issue::error(IssueCode::Value, format!("{} is not a valid value for this element's type", error.instance()))
                .at(path)
        }
        Kind::Type { .. } => Issue::error(IssueCode::Structure, format!("wrong JSON type: {error}")).at(path),
        // Profiles express "required primitive" as anyOf(required name, required _name).
        Kind::AnyOf { context } => {
            let missing = context.first().and_then(|errors| errors.first()).and_then(|first| match first.kind() {
                Kind::Required { property } => property.as_str().map(str::to_owned),
                _ => None,
            });
            match missing {
                Some(name) => Issue::error(IssueCode::Required, format!("the required element '{name}' is missing"))
                    .at(format!("{path}.{name}")),
                None => Issue::error(IssueCode::Invalid, error.to_string()).at(path),
            }
        }
        _ => Issue::error(IssueCode::Invalid, error.to_string()).at(path),
    }
}

fn quote_list(names: &[String]) -> String {
    names.iter().map(|name| format!("'{name}'")).collect::<Vec<_>>().join(", ")
}

/// Defects of the official R4 JSON schema: base64Binary has no pattern (so any text was
/// taken for content), and two that refuse data HL7's own validator accepts:
/// - its patterns use `\s`/`\S`, which the schema's authors meant as ASCII whitespace (as
///   Java reads them) but a Unicode regular expression reads as every space character, so a
///   no-break space or the ideographic space of Japanese text (U+3000) in a string or code was
///   refused; they are rewritten with ASCII classes;
/// - the 72 `canonical` elements have no `_element` twin for their extensions; one is added.
fn mend_schema(definitions: &mut serde_json::Map<String, Value>) {
    // The schema gives base64Binary no pattern; the R4 definition's regex, anchored.
    if let Some(base64) = definitions.get_mut("base64Binary") {
        crate::fhir::set(base64, "pattern", Value::String("^(\\s*([0-9a-zA-Z\\+/=]){4}\\s*)+$".to_owned()));
    }
    for definition in definitions.values_mut() {
        ascii_whitespace(definition);
        // Choice elements (`valueString`, …) carry their type's pattern inline.
        for property in definition.get_mut("properties").and_then(Value::as_object_mut).into_iter().flat_map(|p| p.values_mut()) {
            ascii_whitespace(property);
            if let Some(items) = property.get_mut("items") {
                ascii_whitespace(items);
            }
        }
        let Some(properties) = definition.get_mut("properties").and_then(Value::as_object_mut) else { continue };
        let canonical: Vec<(String, bool)> = properties
            .iter()
            .filter_map(|(name, property)| {
                let single = property.get("$ref").and_then(Value::as_str) == Some("#/definitions/canonical");
                let many = property.pointer("/items/$ref").and_then(Value::as_str) == Some("#/definitions/canonical");
                (single || many).then(|| (name.clone(), many))
            })
            .collect();
        for (name, many) in canonical {
            let element = serde_json::json!({ "$ref": "#/definitions/Element" });
            let twin = if many { serde_json::json!({ "type": "array", "items": element }) } else { element };
            properties.entry(format!("_{name}")).or_insert(twin);
        }
    }
}

/// A Bundle entry's `fullUrl` agrees with its resource's id (R4, Bundle.entry.fullUrl): an
/// absolute URL ends with the resource's type and id; a `urn:uuid:`/`urn:oid:` is free.
fn check_full_url(entry: &serde_json::Map<String, Value>, path: &str, issues: &mut Vec<Issue>) {
    let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) else { return };
    let Some(resource) = entry.get("resource") else { return };
    let (Some(resource_type), Some(id)) = (resource.get("resourceType").and_then(Value::as_str), resource.get("id").and_then(Value::as_str)) else {
        return;
    };
    if full_url.starts_with("urn:") {
        return;
    }
    let expected = format!("/{resource_type}/{id}");
    if !full_url.split("/_history/").next().unwrap_or(full_url).ends_with(&expected) {
        issues.push(
            Issue::error(IssueCode::Invariant, format!("the fullUrl '{full_url}' does not agree with the resource's type and id ({resource_type}/{id})"))
                .at(format!("{path}.fullUrl")),
        );
    }
}

/// A schema node's `pattern` with `\s`/`\S` read as ASCII whitespace (see [`mend_schema`]).
fn ascii_whitespace(node: &mut Value) {
    const ASCII_SPACE: &str = "[ \\t\\n\\r\\x0B\\x0C]";
    const NOT_ASCII_SPACE: &str = "[^ \\t\\n\\r\\x0B\\x0C]";
    if let Some(pattern) = node.get("pattern").and_then(Value::as_str) {
        let mended = pattern
            .replace("[ \\r\\n\\t\\S]", "[^\\x0B\\x0C]")
            .replace("[^\\s]", NOT_ASCII_SPACE)
            .replace("\\S", NOT_ASCII_SPACE)
            .replace("\\s", ASCII_SPACE);
        crate::fhir::set(node, "pattern", Value::String(mended));
    }
}

/// The R4 extensibility rules the invariants do not state: an extension's `url` is absolute,
/// except the simple name of a complex extension's part, which must not be empty.
fn check_extension_urls(definition: &str, object: &serde_json::Map<String, Value>, path: &str, issues: &mut Vec<Issue>) {
    if definition == "Extension" {
        for (index, part) in object.get("extension").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let url = part.get("url").and_then(Value::as_str).unwrap_or_default();
            if url.is_empty() {
                issues.push(Issue::error(IssueCode::Required, "a complex extension's part needs a url").at(format!("{path}.extension[{index}].url")));
            }
        }
        return;
    }
    for key in ["extension", "modifierExtension"] {
        for (index, extension) in object.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let url = extension.get("url").and_then(Value::as_str).unwrap_or_default();
            let absolute = url.split_once(':').is_some_and(|(scheme, rest)| {
                !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b)) && !rest.is_empty()
            });
            if !absolute {
                issues.push(
                    Issue::error(IssueCode::Value, format!("an extension's url must be an absolute URI, not '{url}'")).at(format!("{path}.{key}[{index}].url")),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pointer_to_path;

    #[test]
    fn every_listed_invariant_parses() {
        let invariants = super::load_invariants().unwrap_or_else(|e| panic!("{e}"));
        assert!(invariants.values().map(Vec::len).sum::<usize>() >= 190, "the R4 invariants are listed");
    }

    #[test]
    fn pointers_become_fhir_paths() {
        assert_eq!(pointer_to_path("Patient", "/name/0/given/1"), "Patient.name[0].given[1]");
        assert_eq!(pointer_to_path("Patient", ""), "Patient");
    }
}


