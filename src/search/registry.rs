//! Search parameters as data: the SearchParameter resources in
//! `conformance/search-parameters.json` (every R4 definition) and
//! `conformance/search-parameters-renraku.json` (our own), compiled into a registry, and the extraction of index values from a
//! resource by evaluating each parameter's expression.
//!
//! Expressions are compiled into path steps where they have the common shapes: paths (with
//! choice types), `|` unions, `ofType(T)` / `as T`, `where(resolve() is T)` and
//! `where(field = 'literal')`; anything else (`extension('…')`, `exists()`, an indexer) is
//! evaluated by [`crate::fhir::fhirpath`], an extension standing for its value. A parameter
//! that neither compiles is left out of the registry and so out of the CapabilityStatement,
//! and a search using it is an unknown parameter (400).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::fhir::text::normalize;
pub use super::index::IndexEntry;
use crate::fhir::dates::{format_instant, precision_range};
pub use crate::fhir::references::split_reference;

/// Every SearchParameter of FHIR R4 (hl7.fhir.r4.core 4.0.1; `conformance/README.md`).
const SEARCH_PARAMETERS_JSON: &str = include_str!("../../conformance/search-parameters.json");
/// Renraku's own SearchParameters.
const RENRAKU_SEARCH_PARAMETERS_JSON: &str = include_str!("../../conformance/search-parameters-renraku.json");
const PATIENT_COMPARTMENT_JSON: &str = include_str!("../../conformance/compartmentdefinition-patient.json");
const NARROW_INDEXES_JSON: &str = include_str!("../../conformance/capabilitystatement-narrow-indexes.json");

/// The FHIR search parameter types we index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Token,
    Reference,
    Date,
    Number,
    Quantity,
    Uri,
}

impl ParamType {
    fn parse(text: &str) -> Option<ParamType> {
        match text {
            "string" => Some(ParamType::String),
            "token" => Some(ParamType::Token),
            "reference" => Some(ParamType::Reference),
            "date" => Some(ParamType::Date),
            "number" => Some(ParamType::Number),
            "quantity" => Some(ParamType::Quantity),
            "uri" => Some(ParamType::Uri),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Date => "date",
            ParamType::Number => "number",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
        }
    }
}

/// One compiled search parameter for one resource type.
#[derive(Debug, Clone)]
pub struct SearchParam {
    pub code: String,
    pub url: String,
    pub kind: ParamType,
    /// Resource types a reference parameter may point at.
    pub targets: Vec<String>,
    paths: Vec<Path>,
}

/// A path expression: steps applied in order from the resource, or, for what the steps do
/// not cover (`extension('…')`, `exists()`, `hasExtension`), the FHIRPath evaluator.
#[derive(Debug, Clone)]
enum Path {
    Steps(Vec<Step>),
    Expression(std::sync::Arc<crate::fhir::fhirpath::Expression>),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    OfType(String),
    ResolveIs(String),
    WhereEquals(String, String),
}

/// The registry: parameters by resource type and code.
#[derive(Debug, Default)]
pub struct Registry {
    by_type: BTreeMap<String, BTreeMap<String, SearchParam>>,
    /// Resource type → the parameters that put it in a Patient's compartment.
    patient_compartment: BTreeMap<String, Vec<String>>,
    /// Resource type → the parameters by which it is a person's data: its compartment
    /// parameters and every other reference parameter that may point at a Patient.
    person_params: BTreeMap<String, Vec<String>>,
    /// Resource type → the only parameters it is indexed (and searchable) by
    /// (`conformance/capabilitystatement-narrow-indexes.json`); types not listed have all of theirs.
    narrowed: BTreeMap<String, Vec<String>>,
    /// The (base type, code) of every definition given beyond the embedded ones.
    extra: Vec<(String, String)>,
    /// Definitions that could not be compiled, for the start-up log.
    pub skipped: Vec<String>,
}

/// Parameters handled by columns of the resource table, not by index rows.
pub const SPECIAL: &[&str] = &["_id", "_lastUpdated"];

impl Registry {
    /// Compiles the embedded SearchParameter bundle (plus any extra SearchParameters).
    pub fn load(extra: &[Value]) -> Result<Registry, String> {
        let bundle: Value = serde_json::from_str(SEARCH_PARAMETERS_JSON).map_err(|e| format!("search parameters: {e}"))?;
        let own: Value = serde_json::from_str(RENRAKU_SEARCH_PARAMETERS_JSON).map_err(|e| format!("search parameters: {e}"))?;
        let mut registry = Registry::default();
        let definitions: Vec<&Value> = [&bundle, &own]
            .into_iter()
            .filter_map(|bundle| bundle.get("entry").and_then(Value::as_array))
            .flatten()
            .filter_map(|entry| entry.get("resource"))
            .chain(extra.iter())
            .collect();
        for definition in definitions {
            registry.add(definition);
        }
        for definition in extra {
            let code = definition["code"].as_str().unwrap_or_default();
            for base in definition["base"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                registry.extra.push((base.to_owned(), code.to_owned()));
            }
        }
        let compartment: Value =
            serde_json::from_str(PATIENT_COMPARTMENT_JSON).map_err(|e| format!("patient compartment: {e}"))?;
        for resource in compartment.get("resource").and_then(Value::as_array).into_iter().flatten() {
            let (Some(code), Some(params)) = (resource["code"].as_str(), resource["param"].as_array()) else { continue };
            let params: Vec<String> = params.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect();
            if !params.is_empty() {
                registry.patient_compartment.insert(code.to_owned(), params);
            }
        }
        let narrow: Value = serde_json::from_str(NARROW_INDEXES_JSON).map_err(|e| format!("narrow indexes: {e}"))?;
        let narrowed_types = narrow.pointer("/rest/0/resource").and_then(Value::as_array).into_iter().flatten();
        for resource in narrowed_types {
            let Some(resource_type) = resource.get("type").and_then(Value::as_str).map(str::to_owned) else { continue };
            let codes: Vec<String> = resource
                .get("searchParam")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect();
            if let Some(params) = registry.by_type.get_mut(&resource_type) {
                params.retain(|code, _| codes.contains(code));
            }
            registry.narrowed.insert(resource_type, codes);
        }
        registry.person_params = registry.derive_person_params();
        Ok(registry)
    }

    /// Whether `code` applies to `resource_type` at all (a narrowed type keeps only its list,
    /// the common parameters of Resource included).
    fn kept(&self, resource_type: &str, code: &str) -> bool {
        self.narrowed.get(resource_type).is_none_or(|codes| codes.iter().any(|c| c == code))
    }

    /// The compartment parameters of each type, plus its reference parameters whose targets
    /// include Patient (a `Device.patient`, a `Binary.securityContext`, a Bundle's entries'
    /// subjects): what makes a resource a person's data for the access rule.
    fn derive_person_params(&self) -> BTreeMap<String, Vec<String>> {
        let mut person: BTreeMap<String, Vec<String>> = self.patient_compartment.clone();
        for (resource_type, params) in &self.by_type {
            if resource_type == "Resource" || resource_type == "Patient" {
                continue;
            }
            for param in params.values() {
                if param.kind == ParamType::Reference && param.targets.iter().any(|t| t == "Patient") {
                    let codes = person.entry(resource_type.clone()).or_default();
                    if !codes.contains(&param.code) {
                        codes.push(param.code.clone());
                    }
                }
            }
        }
        person
    }

    /// Adds one SearchParameter definition (a later definition of the same code wins).
    pub fn add(&mut self, definition: &Value) {
        let code = definition["code"].as_str().unwrap_or_default().to_owned();
        let url = definition["url"].as_str().unwrap_or_default().to_owned();
        let Some(kind) = definition["type"].as_str().and_then(ParamType::parse) else {
            self.skipped.push(format!("{url}: type {} is not indexed", definition["type"]));
            return;
        };
        let expression = definition["expression"].as_str().unwrap_or_default();
        let targets: Vec<String> =
            definition["target"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect();
        for base in definition["base"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if SPECIAL.contains(&code.as_str()) {
                continue;
            }
            match compile_for(expression, base) {
                Ok(paths) if !paths.is_empty() => {
                    let param = SearchParam { code: code.clone(), url: url.clone(), kind, targets: targets.clone(), paths };
                    self.by_type.entry(base.to_owned()).or_default().insert(code.clone(), param);
                }
                Ok(_) => {}
                Err(problem) => self.skipped.push(format!("{url} for {base}: {problem}")),
            }
        }
    }

    /// The parameter `code` for `resource_type` (including those defined on Resource).
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        self.by_type
            .get(resource_type)
            .and_then(|params| params.get(code))
            .or_else(|| self.by_type.get("Resource").and_then(|params| params.get(code)))
            .filter(|_| self.kept(resource_type, code))
    }

    /// Every parameter that applies to `resource_type`.
    pub fn for_type<'a>(&'a self, resource_type: &str) -> Vec<&'a SearchParam> {
        let own = self.by_type.get(resource_type).into_iter().flat_map(|params| params.values());
        let common = self.by_type.get("Resource").into_iter().flat_map(|params| params.values());
        common.filter(|param| self.kept(resource_type, &param.code)).chain(own).collect()
    }

    /// Whether `resource_type`'s parameters are those of the embedded definitions alone: no
    /// extra definition given at start-up replaced or added one it is indexed by (one that
    /// only repeats an embedded definition counts as a change: the answer errs towards no). (Code that
    /// makes a type's index entries without this registry, as `audit::Event::index_entries`
    /// does, holds only while this is true.)
    pub fn has_builtin_params(&self, resource_type: &str) -> bool {
        !self.extra.iter().any(|(base, code)| (base == resource_type || base == "Resource") && self.kept(resource_type, code))
    }

    /// A digest of every compiled parameter, stored with the index so that a change of
    /// parameters triggers a reindex (FNV-1a over the definitions, stable across builds).
    pub fn fingerprint(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (resource_type, params) in &self.by_type {
            for param in params.values() {
                let text = format!("{resource_type}|{}|{}|{}|{:?}", param.code, param.url, param.kind.as_str(), param.paths);
                for byte in text.bytes() {
                    hash ^= u64::from(byte);
                    hash = hash.wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        for (resource_type, codes) in &self.narrowed {
            for byte in format!("narrow|{resource_type}|{codes:?}").bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }

    /// The parameters linking `resource_type` into a Patient's compartment.
    pub fn patient_compartment(&self, resource_type: &str) -> &[String] {
        self.patient_compartment.get(resource_type).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn compartment_types(&self) -> impl Iterator<Item = &str> {
        self.patient_compartment.keys().map(String::as_str)
    }

    /// The parameters by which a resource of `resource_type` is a person's data (see
    /// `derive_person_params`); empty for a type that never refers to a Patient.
    pub fn person_params(&self, resource_type: &str) -> &[String] {
        self.person_params.get(resource_type).map(Vec::as_slice).unwrap_or_default()
    }

    /// Every type that can be a person's data (besides Patient).
    pub fn person_types(&self) -> impl Iterator<Item = &str> {
        self.person_params.keys().map(String::as_str)
    }

    /// The index rows of only the parameters `codes` of `resource` (unsorted): far cheaper
    /// than [`Registry::extract`] when only a few parameters matter (the audit trail's
    /// question "whose data is this?" needs only the compartment parameters).
    pub fn extract_params(&self, resource: &Value, codes: &[String]) -> Vec<IndexEntry> {
        let resource_type = resource["resourceType"].as_str().unwrap_or_default();
        let mut entries = Vec::new();
        for param in self.for_type(resource_type).into_iter().filter(|p| codes.contains(&p.code)) {
            for value in param.paths.iter().flat_map(|path| evaluate(path, resource)) {
                index_value(param, &value, &mut entries);
            }
        }
        entries
    }

    /// The index rows of `resource`.
    pub fn extract(&self, resource: &Value) -> Vec<IndexEntry> {
        let resource_type = resource["resourceType"].as_str().unwrap_or_default();
        let mut entries = Vec::new();
        for param in self.for_type(resource_type) {
            for value in param.paths.iter().flat_map(|path| evaluate(path, resource)) {
                index_value(param, &value, &mut entries);
            }
        }
        entries.sort_by(IndexEntry::order);
        entries.dedup();
        entries
    }
}

/// The lowest and highest instants, for open-ended periods.
pub const MIN_INSTANT: &str = "0001-01-01T00:00:00.000000Z";
pub const MAX_INSTANT: &str = "9999-12-31T23:59:59.999999Z";

fn index_value(param: &SearchParam, value: &Value, out: &mut Vec<IndexEntry>) {
    let code = param.code.clone();
    match param.kind {
        ParamType::String => {
            let mut texts = Vec::new();
            match value {
                Value::String(text) => texts.push(text.clone()),
                Value::Object(object) => {
                    // HumanName and Address: every part, and for names the whole name
                    // (family then given) so that "山田太郎" finds 山田 + 太郎.
                    for key in ["text", "family", "line", "city", "district", "state", "postalCode", "country", "prefix", "suffix", "given"] {
                        collect_strings(object.get(key), &mut texts);
                    }
                    if let Some(family) = object.get("family").and_then(Value::as_str) {
                        let mut whole = family.to_owned();
                        let mut given = Vec::new();
                        collect_strings(object.get("given"), &mut given);
                        whole.push_str(&given.concat());
                        texts.push(whole);
                    }
                }
                _ => {}
            }
            for text in texts {
                out.push(IndexEntry::String { param: code.clone(), normalized: normalize(&text), exact: text });
            }
        }
        ParamType::Token => match value {
            Value::String(text) => out.push(IndexEntry::Token { param: code, system: String::new(), code: text.clone(), text: String::new() }),
            Value::Bool(flag) => out.push(IndexEntry::Token { param: code, system: String::new(), code: flag.to_string(), text: String::new() }),
            Value::Object(object) => {
                let text_of = |o: &serde_json::Map<String, Value>| o.get("text").and_then(Value::as_str).map(normalize).unwrap_or_default();
                if let Some(codings) = object.get("coding").and_then(Value::as_array) {
                    let text = text_of(object);
                    for coding in codings {
                        token_from_coding(&code, coding, &text, out);
                    }
                    if codings.is_empty() && !text.is_empty() {
                        out.push(IndexEntry::Token { param: code.clone(), system: String::new(), code: String::new(), text });
                    }
                } else if object.contains_key("code") || object.contains_key("system") && !object.contains_key("value") {
                    token_from_coding(&code, value, "", out);
                } else if let Some(token_value) = object.get("value").and_then(Value::as_str) {
                    // Identifier (system|value, type text for :text) or ContactPoint (value).
                    let system = if is_contact_point(object) {
                        String::new()
                    } else {
                        object.get("system").and_then(Value::as_str).unwrap_or_default().to_owned()
                    };
                    let text = object.get("type").and_then(|t| t.get("text")).and_then(Value::as_str).map(normalize).unwrap_or_default();
                    out.push(IndexEntry::Token { param: code.clone(), system, code: token_value.to_owned(), text });
                    if let Some(type_codings) = value.pointer("/type/coding").and_then(Value::as_array) {
                        // For :of-type: system|code of the identifier type, joined with the value.
                        for coding in type_codings {
                            let (Some(system), Some(type_code)) = (coding["system"].as_str(), coding["code"].as_str()) else { continue };
                            out.push(IndexEntry::Token {
                                param: format!("{code}:of-type"),
                                system: system.to_owned(),
                                code: format!("{type_code}|{token_value}"),
                                text: String::new(),
                            });
                        }
                    }
                }
            }
            _ => {}
        },
        ParamType::Reference => match value {
            Value::Object(object) => {
                let reference = object.get("reference").and_then(Value::as_str).unwrap_or_default();
                let (target_type, target_id, url) = split_reference(reference);
                let identifier_system = value.pointer("/identifier/system").and_then(Value::as_str).unwrap_or_default().to_owned();
                let identifier_value = value.pointer("/identifier/value").and_then(Value::as_str).unwrap_or_default().to_owned();
                if !reference.is_empty() || !identifier_value.is_empty() {
                    out.push(IndexEntry::Reference { param: code, target_type, target_id, url, identifier_system, identifier_value });
                }
            }
            Value::String(canonical) => out.push(IndexEntry::Reference {
                param: code,
                target_type: String::new(),
                target_id: String::new(),
                url: canonical.clone(),
                identifier_system: String::new(),
                identifier_value: String::new(),
            }),
            _ => {}
        },
        ParamType::Date => match value {
            Value::String(text) => {
                if let Some((low, high)) = precision_range(text) {
                    out.push(IndexEntry::Date { param: code, low: format_instant(low), high: format_instant(high) });
                }
            }
            Value::Object(object) => {
                let start = object.get("start").and_then(Value::as_str).and_then(precision_range);
                let end = object.get("end").and_then(Value::as_str).and_then(precision_range);
                if start.is_some() || end.is_some() {
                    out.push(IndexEntry::Date {
                        param: code,
                        low: start.map(|(low, _)| format_instant(low)).unwrap_or_else(|| MIN_INSTANT.to_owned()),
                        high: end.map(|(_, high)| format_instant(high)).unwrap_or_else(|| MAX_INSTANT.to_owned()),
                    });
                }
            }
            _ => {}
        },
        ParamType::Number | ParamType::Quantity => match value {
            Value::Number(number) => {
                if let Some(value) = number.as_f64() {
                    out.push(IndexEntry::Number { param: code, value, system: String::new(), code: String::new() });
                }
            }
            Value::Object(object) => {
                if let Some(number) = object.get("value").and_then(Value::as_f64) {
                    let system = object.get("system").and_then(Value::as_str).unwrap_or_default().to_owned();
                    let unit_code = object.get("code").or_else(|| object.get("unit")).and_then(Value::as_str).unwrap_or_default().to_owned();
                    out.push(IndexEntry::Number { param: code, value: number, system, code: unit_code });
                }
            }
            _ => {}
        },
        ParamType::Uri => {
            if let Value::String(uri) = value {
                out.push(IndexEntry::Uri { param: code, uri: uri.clone() });
            }
        }
    }
}

fn is_contact_point(object: &serde_json::Map<String, Value>) -> bool {
    matches!(
        object.get("system").and_then(Value::as_str),
        Some("phone" | "fax" | "email" | "pager" | "url" | "sms" | "other")
    )
}

fn token_from_coding(param: &str, coding: &Value, text: &str, out: &mut Vec<IndexEntry>) {
    let system = coding["system"].as_str().unwrap_or_default().to_owned();
    let code = coding["code"].as_str().unwrap_or_default().to_owned();
    let display = coding["display"].as_str().map(normalize).unwrap_or_default();
    let text = if text.is_empty() { display } else if display.is_empty() { text.to_owned() } else { format!("{text} {display}") };
    out.push(IndexEntry::Token { param: param.to_owned(), system, code, text });
}

fn collect_strings(value: Option<&Value>, out: &mut Vec<String>) {
    match value {
        Some(Value::String(text)) => out.push(text.clone()),
        Some(Value::Array(items)) => {
            for item in items {
                collect_strings(Some(item), out);
            }
        }
        _ => {}
    }
}

/// Splits an expression into the paths that apply to `base`.
fn compile_for(expression: &str, base: &str) -> Result<Vec<Path>, String> {
    let mut paths = Vec::new();
    for part in split_top_level(expression, '|') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let applies = |first: &str| first == base || (base == "Resource" && (first == "Resource" || first == "DomainResource"));
        match parse_path(part) {
            Ok(steps) => {
                let Some((Step::Field(first), rest)) = steps.split_first() else {
                    return Err(format!("'{part}' does not start with a type"));
                };
                if applies(first) {
                    paths.push(Path::Steps(rest.to_vec()));
                }
            }
            Err(problem) => {
                let first = part.trim_start_matches('(').split(['.', ' ']).next().unwrap_or_default();
                let expression = crate::fhir::fhirpath::Expression::parse(part).map_err(|e| format!("{problem}; as FHIRPath: {e}"))?;
                if applies(first) {
                    paths.push(Path::Expression(std::sync::Arc::new(expression)));
                }
            }
        }
    }
    Ok(paths)
}

fn split_top_level(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    for (index, c) in text.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == separator && depth == 0 && !quoted => {
                parts.push(&text[start..index]);
                start = index + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Parses `A.b.ofType(T)`, `(A.b as T)`, `(A.b.ofType(T)).c`, `A.b.where(resolve() is T)`,
/// `A.b.where(c='x')`.
fn parse_path(text: &str) -> Result<Vec<Step>, String> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('(') {
        let close = matching_paren(rest).ok_or_else(|| format!("unbalanced parentheses in '{text}'"))?;
        let mut steps = parse_path(&rest[..close])?;
        let after = rest[close + 1..].trim();
        if let Some(after) = after.strip_prefix('.') {
            steps.extend(parse_path_steps(after)?);
        } else if !after.is_empty() {
            return Err(format!("unsupported expression '{text}'"));
        }
        return Ok(steps);
    }
    if let Some((path, type_name)) = text.split_once(" as ") {
        let mut steps = parse_path(path)?;
        steps.push(Step::OfType(type_name.trim().to_owned()));
        return Ok(steps);
    }
    parse_path_steps(text)
}

fn parse_path_steps(text: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for segment in split_top_level(text, '.') {
        let segment = segment.trim();
        if let Some(inner) = segment.strip_prefix("ofType(").or_else(|| segment.strip_prefix("as(")).and_then(|s| s.strip_suffix(')')) {
            steps.push(Step::OfType(inner.trim().to_owned()));
        } else if let Some(inner) = segment.strip_prefix("where(").and_then(|s| s.strip_suffix(')')) {
            if let Some(type_name) = inner.trim().strip_prefix("resolve() is ") {
                steps.push(Step::ResolveIs(type_name.trim().to_owned()));
            } else if let Some((field, literal)) = inner.split_once('=') {
                let literal = literal.trim().trim_matches('\'');
                steps.push(Step::WhereEquals(field.trim().to_owned(), literal.to_owned()));
            } else {
                return Err(format!("unsupported where() in '{text}'"));
            }
        } else if !segment.is_empty() && segment.chars().all(|c| c.is_alphanumeric() || c == '_') {
            steps.push(Step::Field(segment.to_owned()));
        } else {
            return Err(format!("unsupported step '{segment}'"));
        }
    }
    Ok(steps)
}

fn matching_paren(text: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (index, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(index),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Evaluates a path. An extension found by an expression stands for its value.
fn evaluate<'a>(path: &Path, resource: &'a Value) -> Vec<std::borrow::Cow<'a, Value>> {
    use std::borrow::Cow;
    use crate::fhir::fhirpath::{Environment, Item};
    let steps = match path {
        Path::Steps(steps) => steps,
        Path::Expression(expression) => {
            let environment = Environment { resource, root_resource: resource };
            let items = expression.evaluate(Item::node(resource), environment).unwrap_or_default();
            return items
                .into_iter()
                .filter_map(|item| match item {
                    Item::Node { value, .. } => {
                        let extension_value = value.as_object().filter(|o| o.contains_key("url")).and_then(|o| {
                            o.iter().find(|(key, _)| key.strip_prefix("value").is_some_and(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))).map(|(_, v)| v)
                        });
                        Some(Cow::Borrowed(extension_value.unwrap_or(value)))
                    }
                    Item::Boolean(b) => Some(Cow::Owned(Value::Bool(b))),
                    Item::String(text) | Item::DateTime(text) => Some(Cow::Owned(Value::String(text))),
                    Item::Integer(i) => Some(Cow::Owned(Value::from(i))),
                    Item::Decimal(_) | Item::Quantity(..) => None,
                })
                .collect();
        }
    };
    let mut current: Vec<(&Value, Option<String>)> = vec![(resource, None)];
    for step in steps {
        let mut next = Vec::new();
        for (value, choice) in current {
            match step {
                Step::Field(name) => {
                    let Some(object) = value.as_object() else { continue };
                    if let Some(child) = object.get(name) {
                        push_flat(child, None, &mut next);
                    } else {
                        for (key, child) in object {
                            if let Some(suffix) = key.strip_prefix(name.as_str()) {
                                if suffix.chars().next().is_some_and(char::is_uppercase) {
                                    push_flat(child, Some(suffix.to_owned()), &mut next);
                                }
                            }
                        }
                    }
                }
                Step::OfType(type_name) => {
                    let keep = match &choice {
                        Some(suffix) => suffix.eq_ignore_ascii_case(type_name),
                        None => true,
                    };
                    if keep {
                        next.push((value, choice));
                    }
                }
                Step::ResolveIs(type_name) => {
                    let reference = value.get("reference").and_then(Value::as_str).unwrap_or_default();
                    let (target_type, _, _) = split_reference(reference);
                    if target_type == *type_name {
                        next.push((value, choice));
                    }
                }
                Step::WhereEquals(field, literal) => {
                    if value.get(field).and_then(Value::as_str) == Some(literal.as_str()) {
                        next.push((value, choice));
                    }
                }
            }
        }
        current = next;
    }
    current.into_iter().map(|(value, _)| std::borrow::Cow::Borrowed(value)).collect()
}

fn push_flat<'a>(value: &'a Value, choice: Option<String>, out: &mut Vec<(&'a Value, Option<String>)>) {
    match value {
        Value::Array(items) => out.extend(items.iter().map(|item| (item, choice.clone()))),
        single => out.push((single, choice)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Registry {
        Registry::load(&[]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_type_has_builtin_params_until_an_extra_definition_changes_one_it_is_indexed_by() {
        assert!(registry().has_builtin_params("AuditEvent"));
        let definition = |code: &str, expression: &str| {
            json!({ "resourceType": "SearchParameter", "url": format!("https://example.jp/sp/{code}"), "code": code,
                    "base": ["AuditEvent"], "type": "reference", "expression": expression })
        };
        let replaced = Registry::load(&[definition("agent", "AuditEvent.source.observer")]).unwrap();
        assert!(!replaced.has_builtin_params("AuditEvent"));
        assert!(replaced.has_builtin_params("Patient"));
        // A new code for a type indexed only by its listed parameters is not indexed at all.
        let added = Registry::load(&[definition("observer", "AuditEvent.source.observer")]).unwrap();
        assert!(added.has_builtin_params("AuditEvent"));
    }

    #[test]
    fn compiles_the_expressions_we_serve() {
        let registry = registry();
        for (resource_type, code) in [
            ("Patient", "name"),
            ("Patient", "family"),
            ("Patient", "identifier"),
            ("Patient", "birthdate"),
            ("Patient", "email"),
            ("Patient", "death-date"),
            ("Communication", "subject"),
            ("Communication", "sent"),
            ("Communication", "patient"),
            ("Observation", "value-quantity"),
            ("Observation", "code"),
            ("Patient", "_tag"),
            ("CareTeam", "participant"),
        ] {
            assert!(registry.get(resource_type, code).is_some(), "{resource_type}.{code}: {:?}", registry.skipped);
        }
        // What the path steps do not cover goes to the FHIRPath evaluator.
        for (resource_type, code) in [("Patient", "deceased"), ("Patient", "mothersMaidenName"), ("Observation", "gene-identifier")] {
            assert!(registry.get(resource_type, code).is_some(), "{resource_type}.{code}: {:?}", registry.skipped);
        }
        let not_composite: Vec<&String> = registry.skipped.iter().filter(|s| !s.contains("is not indexed")).collect();
        assert!(not_composite.is_empty(), "{not_composite:#?}");
    }

    #[test]
    fn extracts_what_fhirpath_finds() {
        let registry = registry();
        // The extension's url as R4's SearchParameter publishes it (not the extension's own).
        let patient = json!({ "resourceType": "Patient", "deceasedDateTime": "2026-01-01",
            "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/patient-extensions-Patient-mothersMaidenName", "valueString": "Yamada" }] });
        let entries = registry.extract_params(&patient, &["deceased".to_owned(), "mothersMaidenName".to_owned()]);
        let shown = format!("{entries:?}");
        assert!(shown.contains("deceased") && shown.contains("true"), "{shown}");
        assert!(shown.contains("mothersMaidenName") && shown.contains("yamada"), "{shown}");
        let alive = registry.extract_params(&json!({ "resourceType": "Patient", "deceasedBoolean": false }), &["deceased".to_owned()]);
        assert!(format!("{alive:?}").contains("false"), "{alive:?}");
    }

    #[test]
    fn an_event_naming_a_person_twice_indexes_the_person_once() {
        let registry = registry();
        // An audit event of a search: every person found, one of them twice.
        let person = |id: &str| {
            json!({ "what": { "reference": format!("Patient/{id}") },
                "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1" },
                "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1" } })
        };
        let event = json!({ "resourceType": "AuditEvent", "recorded": "2026-12-06T00:00:00Z",
            "agent": [{ "who": { "reference": "PractitionerRole/r1" }, "requestor": true }],
            "source": { "observer": { "display": "x" } },
            "entity": [person("p1"), person("p2"), person("p1"), person("p3")] });
        let entries = registry.extract(&event);
        // What indexing every value, repeats and all, and dropping equal entries gives.
        let mut every = Vec::new();
        for param in registry.for_type("AuditEvent") {
            for value in param.paths.iter().flat_map(|path| evaluate(path, &event)) {
                index_value(param, &value, &mut every);
            }
        }
        every.sort_by(IndexEntry::order);
        every.dedup();
        assert_eq!(entries, every);
        let persons = entries.iter().filter(|e| matches!(e, IndexEntry::Reference { param, .. } if param == "entity")).count();
        assert_eq!(persons, 3, "{entries:?}");
    }

    #[test]
    fn extracts_index_values() {
        let registry = registry();
        let patient = json!({
            "resourceType": "Patient",
            "identifier": [{ "system": "urn:a", "value": "001" }],
            "name": [{ "family": "山田", "given": ["太郎"] }, { "family": "ヤマダ", "given": ["タロウ"] }],
            "telecom": [{ "system": "email", "value": "t@example.jp" }],
            "birthDate": "1938-04-12",
            "managingOrganization": { "reference": "Organization/o1" },
            "meta": { "tag": [{ "system": "urn:t", "code": "x" }] }
        });
        let entries = registry.extract(&patient);
        let has = |wanted: &IndexEntry| entries.contains(wanted);
        assert!(has(&IndexEntry::String { param: "name".into(), normalized: "山田太郎".into(), exact: "山田太郎".into() }));
        assert!(has(&IndexEntry::String { param: "name".into(), normalized: "やまだ".into(), exact: "ヤマダ".into() }));
        assert!(has(&IndexEntry::Token { param: "identifier".into(), system: "urn:a".into(), code: "001".into(), text: String::new() }));
        assert!(has(&IndexEntry::Token { param: "email".into(), system: String::new(), code: "t@example.jp".into(), text: String::new() }));
        assert!(has(&IndexEntry::Token { param: "_tag".into(), system: "urn:t".into(), code: "x".into(), text: String::new() }));
        assert!(has(&IndexEntry::Date { param: "birthdate".into(), low: "1938-04-12T00:00:00.000000Z".into(), high: "1938-04-13T00:00:00.000000Z".into() }));
        assert!(has(&IndexEntry::Reference {
            param: "organization".into(),
            target_type: "Organization".into(),
            target_id: "o1".into(),
            url: String::new(),
            identifier_system: String::new(),
            identifier_value: String::new()
        }));
        let observation = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "t" },
            "subject": { "reference": "Patient/p1" }, "valueQuantity": { "value": 36.5, "system": "http://unitsofmeasure.org", "code": "Cel" } });
        let entries = registry.extract(&observation);
        assert!(entries.contains(&IndexEntry::Number { param: "value-quantity".into(), value: 36.5, system: "http://unitsofmeasure.org".into(), code: "Cel".into() }));
        assert!(entries.iter().any(|e| matches!(e, IndexEntry::Reference { param, target_id, .. } if param == "patient" && target_id == "p1")));
    }

    #[test]
    fn splits_references() {
        assert_eq!(split_reference("Patient/1"), ("Patient".into(), "1".into(), String::new()));
        assert_eq!(split_reference("Patient/1/_history/2"), ("Patient".into(), "1".into(), String::new()));
        assert_eq!(
            split_reference("https://x.example/fhir/Patient/9"),
            ("Patient".into(), "9".into(), "https://x.example/fhir/Patient/9".into())
        );
        assert_eq!(split_reference("urn:uuid:1"), (String::new(), String::new(), "urn:uuid:1".into()));
    }
}
