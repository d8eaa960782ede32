//! The one engine that turns a parsed message into FHIR resources, interpreting the
//! declarative mappings of `mappings/` (their format: `mappings/README.md`).
//!
//! A mapping is a FHIR resource written as a template: strings hold expressions in braces
//! (`{PID-7|date}`, `{.8|table:name-representation}`, `{$patientSystem}`), an object in an
//! array with `"$each": "PID-5"` is repeated for every repetition of that field,
//! `{"$first": [...]}` takes the first alternative that is not empty, and
//! `{"$if": "{…}", "$value": …}` is `$value` only when the condition is not empty (`$unless`: only
//! when it is empty). Whatever comes out
//! empty is left out, so optional fields need no conditions. Adding a field is an edit of the
//! template; this file knows no message type.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::hl7::{Message, Problem, Repetition};

/// One data type's mapping (e.g. `mappings/ssmix2/ADT-00.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct Mapping {
    /// Where the correspondences come from (provenance), for people.
    #[allow(dead_code)]
    pub about: String,
    /// The data types (SS-MIX2 データ種別, e.g. `ADT-00`) it converts.
    #[serde(rename = "dataTypes")]
    pub data_types: Vec<String>,
    /// The MSH-9 message types (`ADT^A08`) it accepts.
    #[serde(rename = "messageTypes")]
    pub message_types: Vec<String>,
    /// Message types that withdraw what the data type recorded (e.g. `ADT^A23`): not mapped.
    #[serde(rename = "ignoredMessageTypes", default)]
    pub ignored_message_types: Vec<String>,
    /// Named values, evaluated in order once per message (each may use the ones before it).
    #[serde(default)]
    pub variables: Vec<Variable>,
    /// CSV files: the columns (1-based) whose equal values make rows one message (one
    /// transaction), e.g. a care plan's person and date; without it, each row is one.
    #[serde(rename = "groupBy", default)]
    pub group_by: Vec<usize>,
    /// CSV files: whether the first row names the columns.
    #[serde(default)]
    pub header: bool,
    /// Code tables: name → code → value.
    #[serde(default)]
    pub tables: HashMap<String, HashMap<String, Value>>,
    pub resources: Vec<ResourceMapping>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Variable {
    pub name: String,
    pub value: String,
}

/// One kind of resource a message yields.
#[derive(Debug, Clone, Deserialize)]
pub struct ResourceMapping {
    /// A name by which later resources of the same message refer to this one (`{@key}`:
    /// its placeholder `fullUrl`, rewritten by the gateway to the resource's id).
    #[serde(default)]
    pub key: Option<String>,
    /// One resource per segment of this name (`PRB`, `RXE`); without it, one per message.
    #[serde(rename = "forEach", default)]
    pub for_each: Option<String>,
    /// `{#}` counts the `forEach` segments since the last segment of this name (`ORC`: the
    /// drug's place in its Rp); without it, in the whole message. 1-based.
    #[serde(rename = "ordinalWithin", default)]
    pub ordinal_within: Option<String>,
    /// A FHIRPath into the resource giving the time of the event it records (an HL7
    /// dateTime). When the server already holds the resource (by its identifier) from a
    /// later event, the importer leaves it as it is: an admission sent again after its
    /// discharge does not reopen the stay.
    #[serde(rename = "keepLater", default)]
    pub keep_later: Option<String>,
    pub template: Value,
}

/// A resource made from a message, identified by its first identifier.
#[derive(Debug, Clone, PartialEq)]
pub struct Produced {
    pub resource_type: String,
    pub system: String,
    pub value: String,
    pub resource: Value,
    /// The mapping's `keepLater` for it.
    pub keep_later: Option<String>,
}

impl Produced {
    /// The same `urn:uuid:` placeholder for the same identifier in every run (reproducible
    /// dry runs; references between a message's resources).
    pub fn placeholder(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{}|{}|{}", self.resource_type, self.system, self.value));
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
        format!("urn:uuid:{}", uuid::Builder::from_random_bytes(bytes).into_uuid())
    }
}

impl Produced {
    /// The time of the event it records, by the mapping's `keepLater` (None without one).
    pub fn event_time(&self) -> Option<String> {
        event_time(self.keep_later.as_deref()?, &self.resource)
    }
}

/// What the FHIRPath `path` gives on `resource`, as text: the time of the event a resource
/// records (see [`ResourceMapping::keep_later`]).
pub fn event_time(path: &str, resource: &Value) -> Option<String> {
    use crate::fhir::fhirpath::{Environment, Expression, Item};
    let expression = Expression::parse(path).ok()?;
    let items = expression.evaluate(Item::node(resource), Environment { resource, root_resource: resource }).ok()?;
    match items.first()? {
        Item::Node { value: Value::String(text), .. } => Some(text.clone()),
        Item::String(text) | Item::DateTime(text) => Some(text.clone()),
        _ => None,
    }
}

/// Whether the event at `stored` came after the one at `incoming` (FHIR dateTimes; compared as
/// instants when both have a time and zone, else as text, which orders dates of one form).
pub fn later(stored: &str, incoming: &str) -> bool {
    match (chrono::DateTime::parse_from_rfc3339(stored), chrono::DateTime::parse_from_rfc3339(incoming)) {
        (Ok(stored), Ok(incoming)) => stored > incoming,
        _ => stored > incoming,
    }
}

/// A set of mappings, by data type, with the shared code tables.
#[derive(Debug, Clone, Default)]
pub struct Mappings {
    by_data_type: HashMap<String, Mapping>,
}

impl Mappings {
    /// Reads `tables.json` (shared code tables, optional) and every other `*.json` file of
    /// `files` (name, text).
    pub fn from_files(files: &[(String, String)]) -> Result<Mappings, String> {
        let mut shared: HashMap<String, HashMap<String, Value>> = HashMap::new();
        if let Some((_, text)) = files.iter().find(|(name, _)| name == "tables.json") {
            let tables: SharedTables = serde_json::from_str(text).map_err(|e| format!("tables.json: {e}"))?;
            shared = tables.tables;
        }
        let mut by_data_type = HashMap::new();
        for (name, text) in files.iter().filter(|(name, _)| name != "tables.json" && name.ends_with(".json")) {
            let mut mapping: Mapping = serde_json::from_str(text).map_err(|e| format!("{name}: {e}"))?;
            for path in mapping.resources.iter().filter_map(|r| r.keep_later.as_deref()) {
                crate::fhir::fhirpath::Expression::parse(path).map_err(|e| format!("{name}: keepLater '{path}' is not FHIRPath: {e}"))?;
            }
            for (table, codes) in &shared {
                mapping.tables.entry(table.clone()).or_insert_with(|| codes.clone());
            }
            for data_type in &mapping.data_types {
                by_data_type.insert(data_type.clone(), mapping.clone());
            }
        }
        Ok(Mappings { by_data_type })
    }

    /// The mappings shipped in `mappings/` (SS-MIX2, care plans, rosters), compiled in.
    pub fn builtin() -> Mappings {
        let files: Vec<(String, String)> = BUILTIN_FILES.iter().map(|(name, text)| ((*name).to_owned(), (*text).to_owned())).collect();
        // The shipped files are checked by the unit tests below.
        Mappings::from_files(&files).unwrap_or_default()
    }

    /// Reads the mappings of a directory instead (an operator's edited copy).
    pub fn from_directory(directory: &std::path::Path) -> Result<Mappings, String> {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(directory).map_err(|e| format!("{}: {e}", directory.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                let text = std::fs::read_to_string(entry.path()).map_err(|e| format!("{name}: {e}"))?;
                files.push((name, text));
            }
        }
        Mappings::from_files(&files)
    }

    pub fn for_data_type(&self, data_type: &str) -> Option<&Mapping> {
        self.by_data_type.get(data_type)
    }
}

#[derive(Deserialize)]
struct SharedTables {
    tables: HashMap<String, HashMap<String, Value>>,
}

const BUILTIN_FILES: [(&str, &str); 12] = [
    ("tables.json", include_str!("../../mappings/ssmix2/tables.json")),
    ("ADT-00.json", include_str!("../../mappings/ssmix2/ADT-00.json")),
    ("ADT-22.json", include_str!("../../mappings/ssmix2/ADT-22.json")),
    ("PPR-01.json", include_str!("../../mappings/ssmix2/PPR-01.json")),
    ("OMP-01.json", include_str!("../../mappings/ssmix2/OMP-01.json")),
    ("OMP-12.json", include_str!("../../mappings/ssmix2/OMP-12.json")),
    ("OML-11.json", include_str!("../../mappings/ssmix2/OML-11.json")),
    ("UPHOSOKU.json", include_str!("../../mappings/careplan/UPHOSOKU.json")),
    ("UP1KYO.json", include_str!("../../mappings/careplan/UP1KYO.json")),
    ("UP2KYO.json", include_str!("../../mappings/careplan/UP2KYO.json")),
    ("UPPLAN.json", include_str!("../../mappings/careplan/UPPLAN.json")),
    ("roster.json", include_str!("../../mappings/roster/roster.json")),
];

/// What a message is: its MSH-9 type (`ADT^A08`).
pub fn message_type(message: &Message) -> String {
    let msh = message.repetitions(0, 9);
    match msh.first() {
        Some(repetition) => format!("{}^{}", repetition.value(1, 1), repetition.value(2, 1)),
        None => String::new(),
    }
}

/// Whether the mapping skips this message (a withdrawal it does not map).
pub fn ignored(mapping: &Mapping, message: &Message) -> bool {
    mapping.ignored_message_types.contains(&message_type(message))
}

/// The resources `mapping` makes of `message`; `given` are the importer's variables
/// (`facility`, `patientId`, `orderNo`, …).
pub fn convert(mapping: &Mapping, message: &Message, given: &HashMap<String, String>) -> Result<Vec<Produced>, Problem> {
    let kind = message_type(message);
    if !mapping.message_types.is_empty() && !mapping.message_types.contains(&kind) {
        return Err(Problem::new(
            "MSH-9",
            format!("message type '{kind}' is not one of {} ({})", mapping.message_types.join(", "), mapping.data_types.join(", ")),
        ));
    }
    let names = message.segment_names();
    let mut variables = given.clone();
    let mut produced: Vec<Produced> = Vec::new();
    let mut placeholders: HashMap<String, String> = HashMap::new();
    for variable in &mapping.variables {
        let scope = Scope { message, names: &names, segment: None, group_end: names.len(), ordinal: 1, repetition: None, variables: &variables, placeholders: &placeholders, tables: &mapping.tables };
        let value = scope.string(&variable.value)?.unwrap_or_default();
        variables.insert(variable.name.clone(), value);
    }
    for resource_mapping in &mapping.resources {
        let segments: Vec<Option<usize>> = match &resource_mapping.for_each {
            None => vec![None],
            Some(name) => names.iter().enumerate().filter(|(_, n)| *n == name).map(|(i, _)| Some(i)).collect(),
        };
        for segment in segments {
            let own = segment.and_then(|at| names.get(at)).copied();
            let group_end = match segment {
                // Up to the next segment of its own name or of the one it is counted within
                // (the next drug's RXE, or the next Rp's ORC).
                Some(at) => names
                    .iter()
                    .enumerate()
                    .skip(at + 1)
                    .find(|(_, n)| Some(**n) == own || Some(**n) == resource_mapping.ordinal_within.as_deref())
                    .map_or(names.len(), |(i, _)| i),
                None => names.len(),
            };
            let ordinal = segment.map_or(1, |at| {
                let since = resource_mapping
                    .ordinal_within
                    .as_deref()
                    .and_then(|within| names.iter().take(at).rposition(|n| *n == within))
                    .map_or(0, |found| found + 1);
                names.iter().take(at + 1).skip(since).filter(|n| Some(**n) == own).count()
            });
            let scope = Scope { message, names: &names, segment, group_end, ordinal, repetition: None, variables: &variables, placeholders: &placeholders, tables: &mapping.tables };
            // A template whose `$if` is empty makes nothing for this segment.
            let Some(resource) = scope.value(&resource_mapping.template)? else { continue };
            let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
            let identifier = resource.pointer("/identifier/0").cloned().unwrap_or(Value::Null);
            let (Some(system), Some(value)) = (identifier.get("system").and_then(Value::as_str), identifier.get("value").and_then(Value::as_str)) else {
                let at = own.map_or_else(|| resource_type.clone(), str::to_owned);
                return Err(Problem::new(at, format!("the {resource_type} has no identifier (system and value) to be found by")));
            };
            let made = Produced { resource_type, system: system.to_owned(), value: value.to_owned(), resource, keep_later: resource_mapping.keep_later.clone() };
            if let Some(key) = &resource_mapping.key {
                // `{@key}` in the scope of that segment names the resource made for it.
                let name = segment.map_or_else(|| key.clone(), |at| format!("{key}#{at}"));
                placeholders.insert(name, made.placeholder());
            }
            // Rows repeating a need or a goal name it once.
            if produced.iter().any(|p| p.resource_type == made.resource_type && p.system == made.system && p.value == made.value) {
                continue;
            }
            produced.push(made);
        }
    }
    Ok(produced)
}

/// Where expressions are evaluated: the message, the segment a resource is made for and
/// its group (up to the next segment of the same name or of its `ordinalWithin`), the
/// repetition of an `$each`.
#[derive(Clone, Copy)]
struct Scope<'s, 'a, 'm> {
    message: &'s Message<'m>,
    names: &'s [&'m str],
    segment: Option<usize>,
    group_end: usize,
    /// The value of `{#}`.
    ordinal: usize,
    repetition: Option<(&'s Repetition<'a, 'm>, &'s str)>,
    variables: &'s HashMap<String, String>,
    /// `{@key}`: the placeholders of the resources made before, by key.
    placeholders: &'s HashMap<String, String>,
    tables: &'s HashMap<String, HashMap<String, Value>>,
}

/// A field reference: `PID-5.1.2` (segment, field, component, subcomponent) or `.8`.
struct Path<'e> {
    segment: Option<&'e str>,
    field: usize,
    component: usize,
    subcomponent: usize,
}

impl<'s, 'a, 'm> Scope<'s, 'a, 'm> {
    /// A template value: None when it comes out empty.
    fn value(&self, template: &Value) -> Result<Option<Value>, Problem> {
        match template {
            Value::String(text) => self.typed(text),
            Value::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    let made = match item.get("$each").and_then(Value::as_str) {
                        Some(field) => self.each(field, item)?,
                        None => self.value(item)?.into_iter().collect(),
                    };
                    // Rows naming the same goal twice list it once.
                    for value in made {
                        if !out.contains(&value) {
                            out.push(value);
                        }
                    }
                }
                Ok((!out.is_empty()).then_some(Value::Array(out)))
            }
            Value::Object(members) => {
                // `"$if": "{…}"`: the object (or its `$value`) only when that is not empty.
                if let Some(condition) = members.get("$if") {
                    if self.value(condition)?.is_none() {
                        return Ok(None);
                    }
                }
                // `"$unless": "{…}"`: only when that is empty (a problem's status unless the
                // problem was entered in error).
                if let Some(condition) = members.get("$unless") {
                    if self.value(condition)?.is_some() {
                        return Ok(None);
                    }
                }
                if let Some(value) = members.get("$value") {
                    return self.value(value);
                }
                if let Some(Value::Array(alternatives)) = members.get("$first") {
                    for alternative in alternatives {
                        if let Some(value) = self.value(alternative)? {
                            return Ok(Some(value));
                        }
                    }
                    return Ok(None);
                }
                let mut out = Map::new();
                for (key, member) in members.iter().filter(|(key, _)| !key.starts_with('$')) {
                    if let Some(value) = self.value(member)? {
                        out.insert(key.clone(), value);
                    }
                }
                // An object whose data members all came out empty (a `system` without its
                // `code`) is empty; one of fixed values only (a category) stands.
                let mut data = members.iter().filter(|(key, member)| !key.starts_with('$') && carries_data(member)).peekable();
                let keep = data.peek().is_none() || data.any(|(key, _)| out.contains_key(key));
                Ok((keep && !out.is_empty()).then_some(Value::Object(out)))
            }
            other => Ok(Some(other.clone())),
        }
    }

    /// `item` (without `$each`) once for every repetition of `field` (`PID-5`).
    fn each(&self, field: &str, item: &Value) -> Result<Vec<Value>, Problem> {
        if is_segment_name(field) {
            // Every segment of that name (a care plan's rows), each as the current segment.
            let mut out = Vec::new();
            for (at, _) in self.names.iter().enumerate().filter(|(_, n)| **n == field) {
                let scope = Scope { segment: Some(at), group_end: at + 1, repetition: None, ..*self };
                out.extend(scope.value(item)?);
            }
            return Ok(out);
        }
        let path = parse_path(field).ok_or_else(|| Problem::new(field, "not a field reference"))?;
        let Some(at) = self.locate(path.segment) else { return Ok(Vec::new()) };
        let repetitions = self.message.repetitions(at, path.field);
        let mut out = Vec::new();
        for repetition in &repetitions {
            let scope = Scope { repetition: Some((repetition, field)), ..*self };
            out.extend(scope.value(item)?);
        }
        Ok(out)
    }

    /// A string template: a single expression keeps its type (a number stays a number);
    /// text around expressions makes a string. Empty when every expression is empty.
    fn typed(&self, text: &str) -> Result<Option<Value>, Problem> {
        let trimmed = text.trim();
        if let Some(inner) = trimmed.strip_prefix('{').and_then(|t| t.strip_suffix('}')).filter(|inner| !inner.contains(['{', '}'])) {
            return self.expression(inner);
        }
        Ok(self.string(text)?.map(Value::String))
    }

    fn string(&self, text: &str) -> Result<Option<String>, Problem> {
        let mut out = String::new();
        let mut rest = text;
        let mut expressions = 0;
        let mut filled = 0;
        while let Some((before, after)) = rest.split_once('{') {
            out.push_str(before);
            let (inner, next) = after.split_once('}').ok_or_else(|| Problem::new(text, "an expression is not closed"))?;
            expressions += 1;
            if let Some(value) = self.expression(inner)? {
                filled += 1;
                match value {
                    Value::String(s) => out.push_str(&s),
                    other => out.push_str(&other.to_string()),
                }
            }
            rest = next;
        }
        out.push_str(rest);
        if expressions > 0 && filled == 0 {
            return Ok(None);
        }
        let out = out.trim().to_owned();
        Ok((!out.is_empty()).then_some(out))
    }

    /// `source|filter|filter:argument`.
    fn expression(&self, expression: &str) -> Result<Option<Value>, Problem> {
        let mut parts = expression.split('|');
        let source = parts.next().unwrap_or_default().trim();
        let (mut value, location) = self.source(source)?;
        for filter in parts {
            value = apply(filter.trim(), value, &location, self.tables)?;
        }
        Ok(value)
    }

    /// A source's value and its location for messages.
    fn source(&self, source: &str) -> Result<(Option<Value>, String), Problem> {
        if let Some(name) = source.strip_prefix('$') {
            let value = self.variables.get(name).filter(|v| !v.is_empty()).cloned().map(Value::String);
            return Ok((value, format!("${name}")));
        }
        if let Some(key) = source.strip_prefix('@') {
            let placeholder = match self.segment {
                Some(at) if !self.placeholders.contains_key(key) => self.placeholders.get(&format!("{key}#{at}")),
                _ => self.placeholders.get(key),
            };
            return Ok((placeholder.cloned().map(Value::String), String::new()));
        }
        if source == "#" {
            return Ok((Some(Value::String(self.ordinal.to_string())), "#".to_owned()));
        }
        if let Some(literal) = source.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            return Ok((Some(Value::String(literal.to_owned())), String::new()));
        }
        let path = match (parse_path(source), self.message.column(source)) {
            (Some(path), _) => path,
            // A CSV column by its header name.
            (None, Some(field)) => Path { segment: Some("ROW"), field, component: 1, subcomponent: 1 },
            (None, None) => return Err(Problem::new(source, "not a field reference, variable or column of the file")),
        };
        if path.segment.is_none() {
            let Some((repetition, field)) = self.repetition else {
                return Err(Problem::new(source, "a relative reference outside `$each`"));
            };
            let text = repetition.value(path.component, path.subcomponent);
            return Ok((non_empty(text), format!("{field}{source}")));
        }
        let location = source.to_owned();
        let Some(at) = self.locate(path.segment) else { return Ok((None, location)) };
        let repetitions = self.message.repetitions(at, path.field);
        let text = repetitions.first().map(|r| r.value(path.component, path.subcomponent)).unwrap_or_default();
        Ok((non_empty(text), location))
    }

    /// The segment a name refers to: the resource's own, else the first of that name in its
    /// group, else the nearest one before it, else the first in the message.
    fn locate(&self, name: Option<&str>) -> Option<usize> {
        let name = name?;
        if let Some(at) = self.segment {
            if self.names.get(at) == Some(&name) {
                return Some(at);
            }
            if let Some(found) = (at + 1..self.group_end).find(|&i| self.names.get(i) == Some(&name)) {
                return Some(found);
            }
            if let Some(found) = (0..at).rev().find(|&i| self.names.get(i) == Some(&name)) {
                return Some(found);
            }
        }
        self.names.iter().position(|n| *n == name)
    }
}

fn non_empty(text: String) -> Option<Value> {
    let text = text.trim().to_owned();
    // `""` is HL7's explicit null: nothing to record.
    (!text.is_empty() && text != "\"\"").then_some(Value::String(text))
}

/// Whether a template member can be empty (holds an expression or data), as opposed to a
/// fixed value that alone does not make an element.
fn carries_data(template: &Value) -> bool {
    match template {
        Value::String(text) => text.contains('{'),
        Value::Array(items) => items.iter().any(carries_data),
        Value::Object(members) => members.contains_key("$each") || members.iter().any(|(_, m)| carries_data(m)),
        _ => false,
    }
}

fn is_segment_name(text: &str) -> bool {
    text.len() == 3 && text.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn parse_path(text: &str) -> Option<Path<'_>> {
    let (segment, rest) = match text.split_once('-') {
        Some((segment, rest)) if is_segment_name(segment) => (Some(segment), rest),
        _ => (None, text.strip_prefix('.')?),
    };
    let mut numbers = rest.split('.').map(|n| n.parse::<usize>().ok().filter(|n| *n > 0));
    match segment {
        Some(segment) => {
            let field = numbers.next()??;
            let component = numbers.next().map_or(Some(1), |n| n)?;
            let subcomponent = numbers.next().map_or(Some(1), |n| n)?;
            Some(Path { segment: Some(segment), field, component, subcomponent })
        }
        None => {
            let component = numbers.next()??;
            let subcomponent = numbers.next().map_or(Some(1), |n| n)?;
            Some(Path { segment: None, field: 0, component, subcomponent })
        }
    }
}

/// One filter of an expression.
fn apply(filter: &str, value: Option<Value>, location: &str, tables: &HashMap<String, HashMap<String, Value>>) -> Result<Option<Value>, Problem> {
    let (name, argument) = filter.split_once(':').unwrap_or((filter, ""));
    if name == "required" {
        return match value {
            Some(value) => Ok(Some(value)),
            None => Err(Problem::new(location, "is empty, and the mapping needs it")),
        };
    }
    let Some(value) = value else { return Ok(None) };
    let text = match &value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let bad = |what: &str| Problem::new(location, format!("'{text}' is not {what}"));
    match name {
        // The care-plan CSVs write 00000000 for a date that does not apply.
        "date" | "dateTime" | "time" if text.chars().all(|c| c == '0') => Ok(None),
        "date" => Ok(Some(Value::String(hl7_date(&text).ok_or_else(|| bad("an HL7 date"))?))),
        "time" => match text.as_str() {
            // HHMM; 9999 is a service without a time.
            "9999" => Ok(None),
            hhmm if hhmm.len() == 4 && hhmm.chars().all(|c| c.is_ascii_digit()) && part(hhmm, 0, 2) < "24" && part(hhmm, 2, 4) < "60" => {
                Ok(Some(Value::String(format!("{}:{}:00", part(hhmm, 0, 2), part(hhmm, 2, 4)))))
            }
            _ => Err(bad("a time (HHMM)")),
        },
        "dateTime" => Ok(Some(Value::String(hl7_date_time(&text).ok_or_else(|| bad("an HL7 date and time"))?))),
        "decimal" => {
            let number: Number = serde_json::from_str(text.trim_start_matches('+')).ok().filter(|_| !text.starts_with('.')).ok_or_else(|| bad("a number"))?;
            Ok(Some(Value::Number(number)))
        }
        "integer" => Ok(Some(Value::Number(text.parse::<i64>().map_err(|_| bad("an integer"))?.into()))),
        "trimZeros" => {
            let trimmed = text.trim_start_matches('0');
            Ok(Some(Value::String(if trimmed.is_empty() { "0".to_owned() } else { trimmed.to_owned() })))
        }
        "word" => {
            // A name's family or given part: words split at ASCII or ideographic spaces.
            let n: usize = argument.parse().map_err(|_| Problem::new(location, format!("the mapping's word filter needs a number, not '{argument}'")))?;
            Ok(n.checked_sub(1).and_then(|i| text.split(char::is_whitespace).filter(|w| !w.is_empty()).nth(i)).map(|w| Value::String(w.to_owned())))
        }
        "postalCode" => {
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            Ok(Some(Value::String(if digits.len() == 7 { format!("{}-{}", part(&digits, 0, 3), part(&digits, 3, 7)) } else { text })))
        }
        "table" | "table?" => {
            let table = tables.get(argument).ok_or_else(|| Problem::new(location, format!("the mapping names no table '{argument}'")))?;
            match table.get(&text) {
                Some(found) => Ok(Some(found.clone())),
                None if name == "table?" => Ok(None),
                None => Err(Problem::new(location, format!("code '{text}' is not in table {argument}"))),
            }
        }
        other => Err(Problem::new(location, format!("the mapping uses an unknown filter '{other}'"))),
    }
}

/// Characters `from..to` of an ASCII string (empty when out of range).
fn part(text: &str, from: usize, to: usize) -> &str {
    text.get(from..to).unwrap_or_default()
}

/// HL7 DT/DTM (`YYYY[MM[DD…]]`) as a FHIR date.
fn hl7_date(text: &str) -> Option<String> {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    let date = match digits.len() {
        4 => digits.clone(),
        6 => format!("{}-{}", part(&digits, 0, 4), part(&digits, 4, 6)),
        n if n >= 8 => format!("{}-{}-{}", part(&digits, 0, 4), part(&digits, 4, 6), part(&digits, 6, 8)),
        _ => return None,
    };
    crate::fhir::dates::precision_range(&date).map(|_| date)
}

/// HL7 DTM (`YYYYMMDD[HHMM[SS[.S…]]][+ZZZZ]`) as a FHIR dateTime; without a zone, Japan's
/// (+09:00), SS-MIX2 being a Japanese storage.
fn hl7_date_time(text: &str) -> Option<String> {
    let (stamp, zone) = match text.find(['+', '-']) {
        Some(at) => (part(text, 0, at), Some(part(text, at, text.len()))),
        None => (text, None),
    };
    let (whole, fraction) = stamp.split_once('.').unwrap_or((stamp, ""));
    if !whole.chars().all(|c| c.is_ascii_digit()) || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if whole.len() <= 8 {
        return hl7_date(whole);
    }
    let zone = match zone {
        None => "+09:00".to_owned(),
        Some(zone) if zone.len() == 5 => format!("{}:{}", part(zone, 0, 3), part(zone, 3, 5)),
        Some(_) => return None,
    };
    let (hours, minutes, seconds) = (part(whole, 8, 10), part(whole, 10, 12), part(whole, 12, 14));
    let time = match whole.len() {
        12 => format!("{hours}:{minutes}:00"),
        14 => format!("{hours}:{minutes}:{seconds}"),
        // SS-MIX2's 17-digit 発生日時: milliseconds after the seconds.
        17 => format!("{hours}:{minutes}:{seconds}.{}", part(whole, 14, 17)),
        _ => return None,
    };
    let time = if fraction.is_empty() { time } else { format!("{time}.{fraction}") };
    let value = format!("{}T{time}{zone}", hl7_date(part(whole, 0, 8))?);
    crate::fhir::dates::precision_range(&value).map(|_| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_mappings_load() {
        let files: Vec<(String, String)> = BUILTIN_FILES.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect();
        let mappings = Mappings::from_files(&files).expect("the shipped mappings parse");
        for data_type in ["ADT-00", "ADT-22", "ADT-42", "ADT-51", "ADT-52", "PPR-01", "OMP-01", "OMP-12", "OML-11", "UPHOSOKU", "UP1KYO", "UP2KYO", "UPPLAN", "UPJSK", "roster"] {
            assert!(mappings.for_data_type(data_type).is_some(), "{data_type}");
        }
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(hl7_date("19480405").as_deref(), Some("1948-04-05"));
        assert_eq!(hl7_date("194804").as_deref(), Some("1948-04"));
        assert_eq!(hl7_date("19481305"), None);
        assert_eq!(hl7_date_time("20110701103045").as_deref(), Some("2011-07-01T10:30:45+09:00"));
        assert_eq!(hl7_date_time("201107011030+0000").as_deref(), Some("2011-07-01T10:30:00+00:00"));
        assert_eq!(hl7_date_time("20111220224447.3399").as_deref(), Some("2011-12-20T22:44:47.3399+09:00"));
        assert_eq!(hl7_date_time("20110701").as_deref(), Some("2011-07-01"));
        assert_eq!(hl7_date_time("2011070x"), None);
    }

    fn mapping(template: Value) -> Mapping {
        serde_json::from_value(serde_json::json!({
            "about": "test", "dataTypes": ["X"], "messageTypes": ["ADT^A08"],
            "variables": [{ "name": "system", "value": "urn:test:{$facility}" }],
            "tables": { "sex": { "M": "male", "F": "female" } },
            "resources": [{ "template": template }]
        }))
        .expect("a mapping")
    }

    #[test]
    fn templates_repeat_skip_empty_and_report_their_field() {
        let text = "MSH|^~\\&|A||||20240401||ADT^A08|1|P|2.5\rPID|||77||山田^太郎^^^^^L^I~ヤマダ^タロウ^^^^^L^P||19400101|M\r";
        let message = Message::parse(text).expect("parses");
        let given = HashMap::from([("facility".to_owned(), "1".to_owned())]);
        let template = serde_json::json!({
            "resourceType": "Patient",
            "identifier": [{ "system": "{$system}", "value": "{PID-3.1|required}" }],
            "name": [{ "$each": "PID-5", "family": "{.1}", "given": ["{.2}"], "text": "{.1} {.2}", "use": "{.8|table?:none}" }],
            "gender": "{PID-8|table:sex}",
            "birthDate": "{PID-7|date}",
            "deceasedDateTime": "{PID-29|dateTime}",
            "telecom": [{ "system": "phone", "value": "{PID-13.12}" }]
        });
        let mut tables = mapping(template.clone());
        tables.tables.insert("none".into(), HashMap::new());
        let produced = convert(&tables, &message, &given).expect("converts");
        assert_eq!(produced.len(), 1);
        assert_eq!(produced[0].system, "urn:test:1");
        assert_eq!(produced[0].value, "77");
        assert_eq!(
            produced[0].resource,
            serde_json::json!({
                "resourceType": "Patient",
                "identifier": [{ "system": "urn:test:1", "value": "77" }],
                "name": [
                    { "family": "山田", "given": ["太郎"], "text": "山田 太郎" },
                    { "family": "ヤマダ", "given": ["タロウ"], "text": "ヤマダ タロウ" }
                ],
                "gender": "male",
                "birthDate": "1940-01-01"
            })
        );
        let unknown_sex = Message::parse("MSH|^~\\&|A||||20240401||ADT^A08|1|P|2.5\rPID|||77||||19400101|X\r").expect("parses");
        let problem = convert(&tables, &unknown_sex, &given).expect_err("refused");
        assert_eq!(problem, Problem::new("PID-8", "code 'X' is not in table sex"));
        let no_id = Message::parse("MSH|^~\\&|A||||20240401||ADT^A08|1|P|2.5\rPID|||||||19400101|M\r").expect("parses");
        assert_eq!(convert(&tables, &no_id, &given).expect_err("refused").location, "PID-3.1");
        let wrong_type = Message::parse("MSH|^~\\&|A||||20240401||PPR^ZD1|1|P|2.5\rPID|||77\r").expect("parses");
        assert_eq!(convert(&tables, &wrong_type, &given).expect_err("refused").location, "MSH-9");
    }

    /// `keepLater` reads the event's time from the resource the template made, and events
    /// are ordered as instants (not as text) across zones.
    #[test]
    fn a_stay_records_the_time_of_its_event() {
        let mappings = Mappings::builtin();
        let stay = mappings.for_data_type("ADT-52").expect("the stay's mapping");
        let text = "MSH|^~\\&|HIS||||20240410||ADT^A03^ADT_A03|1|P|2.5\rEVN||20240410150500||||20240410150000\rPID|||77\rPV1||I|32^302\r";
        let message = Message::parse(text).expect("parses");
        let given = HashMap::from([("facility".to_owned(), "2010012345".to_owned())]);
        let problem = convert(stay, &message, &given).expect_err("a stay without its admission time");
        assert_eq!(problem.location, "PV1-44");
        let admitted = format!("{}{}20240401100000|20240410150000\r", text.trim_end_matches('\r'), "|".repeat(41));
        let message = Message::parse(&admitted).expect("parses");
        let produced = convert(stay, &message, &given).expect("converts");
        assert_eq!(produced[0].value, "2010012345-ADT-77-20240401100000");
        assert_eq!(produced[0].resource["status"], "finished");
        assert_eq!(produced[0].resource["period"]["end"], "2024-04-10T15:00:00+09:00");
        assert_eq!(produced[0].event_time().as_deref(), Some("2024-04-10T15:00:00+09:00"), "EVN-6, not EVN-2");
        assert!(!later("2024-04-10T15:00:00+09:00", "2024-04-10T07:00:00+00:00"), "06:00Z is before 07:00Z (as text it would be after)");
        assert!(later("2024-04-10T15:00:00+09:00", "2024-04-10T05:00:00+00:00"));
        assert!(!later("2024-04-10T15:00:00+09:00", "2024-04-10T06:00:00+00:00"), "the same instant");
        assert!(later("2024-04-11", "2024-04-10"));
    }
}
