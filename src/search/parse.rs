//! A search's URL parameters parsed against the registry into criteria, sort keys, includes
//! and result parameters — for searches, conditional interactions and the policy's granular
//! scopes alike. Everything malformed or unknown is a 400 naming the parameter; every
//! `[limits]` bound is checked before anything reaches the database.

use chrono::{DateTime, Duration, Utc};

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::fhir::elements::Summary;
use crate::fhir::text::normalize;
use super::registry::{ParamType, Registry};
use super::{Criterion, Cursor, DatePrefix, IndexTable, Match, NumberPrefix, SearchQuery, SortKey};

/// `a=1&b=2` as decoded name/value pairs.
pub fn parse_query_string(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// A granular scope's query (`category=…`) on a type as search criteria, parsed like a
/// search at `base_url`; `None` when the query is not one the server can apply (the scope
/// then grants nothing).
pub fn scope_query(registry: &Registry, resource_type: &str, query: &str, base_url: &str, limits: &Limits) -> Option<Vec<Criterion>> {
    let pairs = parse_query_string(query);
    let parsed = parse(registry, resource_type, &pairs, false, base_url, limits).ok()?;
    (!parsed.criteria.is_empty()).then_some(parsed.criteria)
}

/// Default and maximum page sizes.
pub const DEFAULT_COUNT: i64 = 20;
pub const MAX_COUNT: i64 = 1000;
/// How many rounds `:iterate` includes follow.
pub(crate) const MAX_INCLUDE_ROUNDS: usize = 3;

/// Result-shaping parameters that apply to any search.
#[derive(Debug, Clone, Default)]
pub struct ResultParameters {
    pub count: Option<i64>,
    pub summary: Option<Summary>,
    pub elements: Option<Vec<String>>,
    pub cursor: Option<Cursor>,
    /// `_total=none` suppresses the count query.
    pub total_none: bool,
}

/// `_include` / `_revinclude`: `source:param[:target]`, `param` None for `*`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source_type: String,
    pub param: Option<String>,
    pub target_type: Option<String>,
    pub iterate: bool,
}

/// A parsed search.
#[derive(Debug, Clone, Default)]
pub struct ParsedSearch {
    pub criteria: Vec<Criterion>,
    pub sort: Vec<(SortKey, bool)>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub results: ResultParameters,
    /// The parameters applied, in order, for the `self` link.
    pub applied: Vec<(String, String)>,
}

impl ParsedSearch {
    pub fn query(&self, resource_type: &str, limit: i64) -> SearchQuery {
        self.query_types(vec![resource_type.to_owned()], limit)
    }

    pub fn query_types(&self, resource_types: Vec<String>, limit: i64) -> SearchQuery {
        SearchQuery {
            resource_types,
            criteria: self.criteria.clone(),
            sort: self.sort.clone(),
            cursor: self.results.cursor.clone(),
            limit,
        }
    }
}

/// Parses URL query pairs for a search on `resource_type`. An unknown parameter, modifier
/// or malformed value is a 400 naming it, unless `lenient`, in which case it is dropped
/// (and left out of `applied`).
pub fn parse(
    registry: &Registry,
    resource_type: &str,
    pairs: &[(String, String)],
    lenient: bool,
    base_url: &str,
    limits: &Limits,
) -> Result<ParsedSearch> {
    check_limits(pairs, limits)?;
    let mut parsed = ParsedSearch::default();
    for (name, value) in pairs {
        match parse_one(registry, resource_type, name, value, base_url, limits, &mut parsed) {
            Ok(()) => parsed.applied.push((name.clone(), value.clone())),
            Err(error) if lenient => {
                tracing::debug!(parameter = %name, %error, "ignored under Prefer: handling=lenient");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(parsed)
}

/// The `[limits]` a search must stay within (whatever `Prefer: handling=lenient` says):
/// the number of parameters, of values of one parameter, of includes, and the depth of
/// chains and `_has`. Each query costs in proportion to these, so they are refused before
/// anything reaches the database.
fn check_limits(pairs: &[(String, String)], limits: &Limits) -> Result<()> {
    let exceeded = |limit: &'static str, allowed: usize, what: String| Err(Error::LimitExceeded { limit, allowed: allowed as u64, what });
    let counted: Vec<&(String, String)> = pairs.iter().filter(|(name, _)| !matches!(name.as_str(), "_format" | "_pretty")).collect();
    if counted.len() > limits.search_parameters {
        return exceeded("search_parameters", limits.search_parameters, format!("the search has {} parameters", counted.len()));
    }
    let includes = counted.iter().filter(|(name, _)| name.starts_with("_include") || name.starts_with("_revinclude")).count();
    if includes > limits.includes {
        return exceeded("includes", limits.includes, format!("the search has {includes} _include/_revinclude parameters"));
    }
    for (name, value) in counted {
        let values = value.split(',').count();
        if values > limits.values_per_parameter {
            return exceeded("values_per_parameter", limits.values_per_parameter, format!("the parameter '{name}' has {values} values"));
        }
        let depth = name.matches('.').count() + name.matches("_has:").count();
        if depth > limits.chain_depth {
            return exceeded("chain_depth", limits.chain_depth, format!("the parameter '{name}' chains {depth} levels deep"));
        }
    }
    Ok(())
}

fn parse_one(
    registry: &Registry,
    resource_type: &str,
    name: &str,
    value: &str,
    base_url: &str,
    limits: &Limits,
    parsed: &mut ParsedSearch,
) -> Result<()> {
    match name {
        "_count" => {
            let count: i64 = value
                .parse()
                .ok()
                .filter(|count| *count >= 0)
                .ok_or_else(|| Error::bad_request_at(format!("_count must be a non-negative integer, not '{value}'"), name))?;
            parsed.results.count = Some(count.min(limits.max_count as i64));
        }
        "_summary" => parsed.results.summary = Some(Summary::parse(value)?),
        "_elements" => {
            parsed.results.elements =
                Some(value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        }
        "_total" => match value {
            "none" => parsed.results.total_none = true,
            "estimate" | "accurate" => parsed.results.total_none = false,
            other => {
                return Err(Error::bad_request_at(format!("_total must be none, estimate or accurate, not '{other}'"), name))
            }
        },
        "_page" => {
            parsed.results.cursor =
                Some(decode_cursor(value).ok_or_else(|| Error::bad_request_at("the paging cursor is not valid", name))?)
        }
        "_sort" => {
            for key in value.split(',').filter(|k| !k.is_empty()) {
                let (descending, code) = match key.strip_prefix('-') {
                    Some(code) => (true, code),
                    None => (false, key),
                };
                let sort_key = match code {
                    "_id" => SortKey::Id,
                    "_lastUpdated" => SortKey::LastUpdated,
                    other => {
                        let param = registry.get(resource_type, other).ok_or_else(|| {
                            Error::bad_request_at(format!("cannot sort by unknown parameter '{other}'"), name)
                        })?;
                        SortKey::Index { table: table_for(param.kind), param: other.to_owned() }
                    }
                };
                parsed.sort.push((sort_key, descending));
            }
        }
        "_include" | "_include:iterate" | "_revinclude" | "_revinclude:iterate" => {
            let include = parse_include(registry, value, name.ends_with(":iterate"), name)?;
            if name.starts_with("_revinclude") {
                parsed.revincludes.push(include);
            } else {
                if !include.iterate && include.source_type != resource_type && include.source_type != "*" {
                    return Err(Error::bad_request_at(
                        format!("_include must start with the searched type {resource_type} (or use :iterate)"),
                        name,
                    ));
                }
                parsed.includes.push(include);
            }
        }
        // Format parameters are handled by the HTTP layer.
        "_format" | "_pretty" => {}
        _ => parsed.criteria.push(parse_criterion(registry, resource_type, name, value, base_url)?),
    }
    Ok(())
}

fn parse_include(registry: &Registry, value: &str, iterate: bool, name: &str) -> Result<Include> {
    let parts: Vec<&str> = value.split(':').collect();
    let invalid = || Error::bad_request_at(format!("'{value}' is not Type:parameter[:targetType]"), name);
    let (source_type, param, target_type) = match parts.as_slice() {
        ["*"] => ("*".to_owned(), None, None),
        [source, "*"] => ((*source).to_owned(), None, None),
        [source, param] => ((*source).to_owned(), Some((*param).to_owned()), None),
        [source, param, target] => ((*source).to_owned(), Some((*param).to_owned()), Some((*target).to_owned())),
        _ => return Err(invalid()),
    };
    if let Some(param) = &param {
        match registry.get(&source_type, param) {
            Some(definition) if definition.kind == ParamType::Reference => {}
            _ => return Err(Error::bad_request_at(format!("{source_type} has no reference parameter '{param}'"), name)),
        }
    }
    Ok(Include { source_type, param, target_type, iterate })
}

/// One search parameter (with modifier, chain or `_has`) as a criterion.
fn parse_criterion(registry: &Registry, resource_type: &str, name: &str, value: &str, base_url: &str) -> Result<Criterion> {
    if let Some(rest) = name.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let (Some(source_type), Some(param), Some(inner)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::bad_request_at("_has needs _has:Type:reference-parameter:parameter", name));
        };
        match registry.get(source_type, param) {
            Some(definition) if definition.kind == ParamType::Reference => {}
            _ => return Err(Error::bad_request_at(format!("{source_type} has no reference parameter '{param}'"), name)),
        }
        let criterion = parse_criterion(registry, source_type, inner, value, base_url)?;
        return Ok(Criterion::Has { source_type: source_type.to_owned(), param: param.to_owned(), criteria: vec![criterion] });
    }
    if let Some((head, rest)) = split_chain(name) {
        let (code, modifier) = head.split_once(':').map_or((head, None), |(c, m)| (c, Some(m)));
        let definition = registry
            .get(resource_type, code)
            .filter(|d| d.kind == ParamType::Reference)
            .ok_or_else(|| Error::bad_request_at(format!("'{code}' is not a reference parameter of {resource_type}"), name))?;
        let rest_code = rest.split(['.', ':']).next().unwrap_or(rest);
        let target_type = match modifier {
            Some(target) => target.to_owned(),
            None => {
                let candidates: Vec<&String> =
                    definition.targets.iter().filter(|t| registry.get(t, rest_code).is_some() || rest_code.starts_with('_')).collect();
                match candidates.as_slice() {
                    [only] => (*only).clone(),
                    [] => return Err(Error::bad_request_at(format!("no target of '{code}' has a parameter '{rest_code}'"), name)),
                    _ => {
                        return Err(Error::bad_request_at(
                            format!("'{code}' may point at several types; name one, e.g. {code}:{}.{rest}", candidates.first().map_or("Patient", |c| c.as_str())),
                            name,
                        ))
                    }
                }
            }
        };
        let inner = parse_criterion(registry, &target_type, rest, value, base_url)?;
        return Ok(Criterion::Chain { param: code.to_owned(), target_type: Some(target_type), criteria: vec![inner] });
    }
    let (code, modifier) = name.split_once(':').map_or((name, None), |(c, m)| (c, Some(m)));
    let values = split_values(value, name)?;
    match code {
        "_id" => {
            reject_modifier(modifier, name)?;
            return Ok(Criterion::Id(values));
        }
        "_lastUpdated" => {
            reject_modifier(modifier, name)?;
            let mut ranges = Vec::new();
            for alternative in &values {
                ranges.extend(last_updated_ranges(alternative, name)?);
            }
            return Ok(Criterion::LastUpdated(ranges));
        }
        _ => {}
    }
    let definition = registry.get(resource_type, code).ok_or_else(|| {
        Error::bad_request_at(format!("the search parameter '{code}' is not supported for {resource_type}"), name)
    })?;
    let table = table_for(definition.kind);
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(Error::bad_request_at(":missing takes true or false", name)),
        };
        return Ok(Criterion::Missing { table, param: code.to_owned(), missing });
    }
    let mut matches = Vec::with_capacity(values.len());
    let mut negate = false;
    let mut param = code.to_owned();
    for text in &values {
        let found = match (definition.kind, modifier) {
            (ParamType::String, None) => {
                let normalized = normalize(text);
                Match::StringRange { high: format!("{normalized}\u{10FFFF}"), low: normalized }
            }
            (ParamType::String, Some("exact")) => Match::StringExact(text.clone()),
            (ParamType::String, Some("contains")) => Match::StringContains(normalize(text)),
            (ParamType::Token, None) => token_match(text),
            (ParamType::Token, Some("not")) => {
                negate = true;
                token_match(text)
            }
            (ParamType::Token, Some("text")) => Match::TokenText(normalize(text)),
            (ParamType::Token, Some("of-type")) => {
                let parts: Vec<&str> = text.splitn(3, '|').collect();
                let [system, type_code, identifier] = parts.as_slice() else {
                    return Err(Error::bad_request_at(":of-type takes system|code|value", name));
                };
                param = format!("{code}:of-type");
                Match::Token { system: Some((*system).to_owned()), code: Some(format!("{type_code}|{identifier}")) }
            }
            (ParamType::Reference, None) => reference_match(text, None, definition.targets.as_slice(), base_url),
            (ParamType::Reference, Some("identifier")) => {
                let (system, value) = split_token(text);
                Match::ReferenceIdentifier { system, value: value.unwrap_or_default() }
            }
            (ParamType::Reference, Some(target)) if target.chars().next().is_some_and(char::is_uppercase) => {
                if !definition.targets.iter().any(|t| t == target) {
                    return Err(Error::bad_request_at(format!("'{code}' cannot point at {target}"), name));
                }
                reference_match(text, Some(target), definition.targets.as_slice(), base_url)
            }
            (ParamType::Date, None) => date_match(text, name)?,
            (ParamType::Number, None) => number_match(text, None, None, name)?,
            (ParamType::Quantity, None) => {
                let mut parts = text.splitn(3, '|');
                let number = parts.next().unwrap_or_default();
                let system = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
                let unit = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
                number_match(number, system, unit, name)?
            }
            (ParamType::Uri, None) => Match::UriEquals(text.clone()),
            (ParamType::Uri, Some("below")) => Match::UriBelow(text.clone()),
            (ParamType::Uri, Some("above")) => {
                let mut prefixes = Vec::new();
                let mut current = text.trim_end_matches('/').to_owned();
                while let Some((parent, _)) = current.rsplit_once('/') {
                    prefixes.push(current.clone());
                    if parent.ends_with(':') || parent.ends_with("/") {
                        break;
                    }
                    current = parent.to_owned();
                }
                Match::UriAbove(prefixes)
            }
            (kind, Some(other)) => {
                return Err(Error::bad_request_at(
                    format!("the modifier ':{other}' is not supported on the {} parameter '{code}'", kind.as_str()),
                    name,
                ))
            }
        };
        matches.push(found);
    }
    Ok(Criterion::Index { table, param, matches, negate })
}

/// `subject.name` or `subject:Patient.name` → (`subject:Patient`, `name`); `None` when the
/// name has no chain. Dots inside values are not part of names, so any dot chains.
fn split_chain(name: &str) -> Option<(&str, &str)> {
    name.split_once('.')
}

fn reject_modifier(modifier: Option<&str>, name: &str) -> Result<()> {
    match modifier {
        None => Ok(()),
        Some(modifier) => Err(Error::bad_request_at(format!("the modifier ':{modifier}' is not supported here"), name)),
    }
}

fn table_for(kind: ParamType) -> IndexTable {
    match kind {
        ParamType::String => IndexTable::String,
        ParamType::Token => IndexTable::Token,
        ParamType::Reference => IndexTable::Reference,
        ParamType::Date => IndexTable::Date,
        ParamType::Number | ParamType::Quantity => IndexTable::Number,
        ParamType::Uri => IndexTable::Uri,
    }
}

fn split_values(value: &str, name: &str) -> Result<Vec<String>> {
    let mut values = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|n| matches!(n, ',' | '|' | '$' | '\\')) => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' => values.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    values.push(current);
    if values.iter().any(String::is_empty) {
        return Err(Error::bad_request_at(format!("the parameter '{name}' has an empty value"), name));
    }
    Ok(values)
}

fn split_token(token: &str) -> (Option<String>, Option<String>) {
    match token.split_once('|') {
        None => (None, Some(token.to_owned())),
        Some((system, code)) => (Some(system.to_owned()), if code.is_empty() { None } else { Some(code.to_owned()) }),
    }
}

fn token_match(token: &str) -> Match {
    let (system, code) = split_token(token);
    Match::Token { system, code }
}

fn reference_match(text: &str, target: Option<&str>, targets: &[String], base_url: &str) -> Match {
    let relative = text.strip_prefix(base_url).map(|rest| rest.trim_start_matches('/')).unwrap_or(text);
    if relative.contains("://") || relative.starts_with("urn:") {
        return Match::ReferenceUrl(text.to_owned());
    }
    let relative = relative.split("/_history/").next().unwrap_or(relative);
    match relative.split_once('/') {
        Some((resource_type, id)) => Match::Reference { target_type: Some(resource_type.to_owned()), target_id: id.to_owned() },
        None => {
            let target_type = target.map(str::to_owned).or_else(|| match targets { [only] => Some(only.clone()), _ => None });
            Match::Reference { target_type, target_id: relative.to_owned() }
        }
    }
}

fn split_prefix(value: &str) -> (&str, &str) {
    let prefixes = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
    match value.get(..2) {
        Some(prefix) if prefixes.contains(&prefix) && value.len() > 2 => (prefix, &value[2..]),
        _ => ("eq", value),
    }
}

fn date_match(value: &str, name: &str) -> Result<Match> {
    let (prefix, date) = split_prefix(value);
    let (low, high) = precision_range(date)
        .ok_or_else(|| Error::bad_request_at(format!("'{date}' is not a valid date, dateTime or instant"), name))?;
    let prefix = match prefix {
        "eq" => DatePrefix::Eq,
        "ne" => DatePrefix::Ne,
        "gt" => DatePrefix::Gt,
        "lt" => DatePrefix::Lt,
        "ge" => DatePrefix::Ge,
        "le" => DatePrefix::Le,
        "sa" => DatePrefix::Sa,
        "eb" => DatePrefix::Eb,
        _ => {
            let margin = approximate_margin(low);
            return Ok(Match::Date { prefix: DatePrefix::Ap, low: format_instant(low - margin), high: format_instant(high + margin) });
        }
    };
    Ok(Match::Date { prefix, low: format_instant(low), high: format_instant(high) })
}

/// "Approximately": a tenth of the distance from now, at least a day.
fn approximate_margin(instant: DateTime<Utc>) -> Duration {
    ((Utc::now() - instant).abs() / 10).max(Duration::days(1))
}

fn number_match(value: &str, system: Option<String>, code: Option<String>, name: &str) -> Result<Match> {
    let (prefix, number) = split_prefix(value);
    let parsed: f64 = number.parse().map_err(|_| Error::bad_request_at(format!("'{number}' is not a number"), name))?;
    // The precision of the search value: 100 means [99.5, 100.5), 100.0 means [99.95, 100.05).
    let decimals = number.split_once('.').map_or(0, |(_, fraction)| fraction.len()) as i32;
    let half = 0.5 * 10f64.powi(-decimals);
    let (prefix, low, high) = match prefix {
        "eq" => (NumberPrefix::Within, parsed - half, parsed + half),
        "ne" => (NumberPrefix::Outside, parsed - half, parsed + half),
        "gt" | "sa" => (NumberPrefix::Gt, parsed, parsed),
        "lt" | "eb" => (NumberPrefix::Lt, parsed, parsed),
        "ge" => (NumberPrefix::Ge, parsed, parsed),
        "le" => (NumberPrefix::Le, parsed, parsed),
        _ => {
            let margin = (parsed.abs() * 0.1).max(half);
            (NumberPrefix::Within, parsed - margin, parsed + margin)
        }
    };
    Ok(Match::Number { prefix, low, high, system, code })
}

/// `_lastUpdated` ranges over the stored instants (an instant column, not an index table).
fn last_updated_ranges(value: &str, name: &str) -> Result<Vec<(Option<String>, Option<String>)>> {
    let (prefix, date) = split_prefix(value);
    let (low, high) = precision_range(date)
        .ok_or_else(|| Error::bad_request_at(format!("'{date}' is not a valid date, dateTime or instant"), name))?;
    let (low_text, high_text) = (format_instant(low), format_instant(high));
    Ok(match prefix {
        "eq" => vec![(Some(low_text), Some(high_text))],
        "ne" => vec![(None, Some(low_text)), (Some(high_text), None)],
        "gt" | "sa" => vec![(Some(high_text), None)],
        "lt" | "eb" => vec![(None, Some(low_text))],
        "ge" => vec![(Some(low_text), None)],
        "le" => vec![(None, Some(high_text))],
        _ => {
            let margin = approximate_margin(low);
            vec![(Some(format_instant(low - margin)), Some(format_instant(high + margin)))]
        }
    })
}


pub use crate::fhir::dates::{format_instant, precision_range};

/// Opaque paging cursor: hex of the cursor's JSON.
pub fn encode_cursor(cursor: &Cursor) -> String {
    hex::encode(serde_json::to_vec(cursor).unwrap_or_default())
}

pub fn decode_cursor(text: &str) -> Option<Cursor> {
    serde_json::from_slice(&hex::decode(text).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::dates::{format_instant, precision_range};
    use crate::search::KeyValue;

    #[test]
    fn date_precision_ranges() {
        let cases = [
            ("2026", "2026-01-01T00:00:00.000000Z", "2027-01-01T00:00:00.000000Z"),
            ("2026-02", "2026-02-01T00:00:00.000000Z", "2026-03-01T00:00:00.000000Z"),
            ("2026-12", "2026-12-01T00:00:00.000000Z", "2027-01-01T00:00:00.000000Z"),
            ("2026-11-25", "2026-11-25T00:00:00.000000Z", "2026-11-26T00:00:00.000000Z"),
            ("2026-11-25T09:00:00+09:00", "2026-11-25T00:00:00.000000Z", "2026-11-25T00:00:01.000000Z"),
        ];
        for (text, low, high) in cases {
            let (l, h) = precision_range(text).unwrap_or_else(|| panic!("{text} parses"));
            assert_eq!((format_instant(l).as_str(), format_instant(h).as_str()), (low, high), "{text}");
        }
        assert!(precision_range("2026-13").is_none());
        assert!(precision_range("yesterday").is_none());
    }

    #[test]
    fn cursor_round_trips() {
        let cursor = Cursor { backwards: true, keys: vec![KeyValue::Text("a".into()), KeyValue::Number(1.5)] };
        assert_eq!(decode_cursor(&encode_cursor(&cursor)), Some(cursor));
        assert_eq!(decode_cursor("zz"), None);
    }

    /// One line per criterion, compact enough to read in a table.
    fn describe(criterion: &Criterion) -> String {
        match criterion {
            Criterion::Id(ids) => format!("_id in {ids:?}"),
            Criterion::LastUpdated(ranges) => format!("_lastUpdated {ranges:?}"),
            Criterion::Index { table, param, matches, negate } => {
                format!("{}{} {param} {matches:?}", if *negate { "not " } else { "" }, table.name())
            }
            Criterion::Missing { param, missing, .. } => format!("{param} missing={missing}"),
            Criterion::Chain { param, target_type, criteria } => {
                format!("{param}->{} ({})", target_type.as_deref().unwrap_or("?"), criteria.iter().map(describe).collect::<Vec<_>>().join("; "))
            }
            Criterion::Has { source_type, param, criteria } => {
                format!("has {source_type}.{param} ({})", criteria.iter().map(describe).collect::<Vec<_>>().join("; "))
            }
            Criterion::Compartment { target_type, target_id, .. } => format!("in {target_type}/{target_id}"),
            Criterion::Everything { patient_id, .. } => format!("everything of {patient_id}"),
        }
    }

    /// The parser as data: (type, query, the criteria it becomes, or the parameter a 400
    /// names). No database.
    #[test]
    fn queries_become_criteria() {
        let registry = Registry::load(&[]).unwrap_or_else(|e| panic!("registry: {e}"));
        let limits = Limits::default();
        let base = "http://renraku.test/ina/fhir";
        let check = |resource_type: &str, query: &str, expected: Result<&[&str], &str>| {
            let pairs = crate::service::parse_query_string(query);
            let parsed = parse(&registry, resource_type, &pairs, false, base, &limits);
            match (parsed, expected) {
                (Ok(parsed), Ok(expected)) => {
                    let found: Vec<String> = parsed.criteria.iter().map(describe).collect();
                    assert_eq!(found, expected, "{resource_type}?{query}");
                }
                (Err(Error::BadRequest(issue)), Err(parameter)) => assert_eq!(issue.expression, vec![parameter.to_owned()], "{resource_type}?{query}"),
                (Err(Error::LimitExceeded { limit, .. }), Err(parameter)) => assert_eq!(limit, parameter, "{resource_type}?{query}"),
                (other, expected) => panic!("{resource_type}?{query}: {other:?}, expected {expected:?}"),
            }
        };
        check("Patient", "_id=a,b", Ok(&["_id in [\"a\", \"b\"]"]));
        check("Patient", "family=ヤマダ", Ok(&["search_string family [StringRange { low: \"やまだ\", high: \"やまだ\\u{10ffff}\" }]"]));
        check("Patient", "family:exact=山田", Ok(&["search_string family [StringExact(\"山田\")]"]));
        check("Patient", "gender:not=male", Ok(&["not search_token gender [Token { system: None, code: Some(\"male\") }]"]));
        check("Patient", "identifier=urn:x|1", Ok(&["search_token identifier [Token { system: Some(\"urn:x\"), code: Some(\"1\") }]"]));
        check("Observation", "subject=Patient/p1", Ok(&["search_reference subject [Reference { target_type: Some(\"Patient\"), target_id: \"p1\" }]"]));
        check("Observation", "subject:Patient.family=山田", Ok(&["subject->Patient (search_string family [StringRange { low: \"山田\", high: \"山田\\u{10ffff}\" }])"]));
        check("Patient", "_has:Observation:subject:code=x", Ok(&["has Observation.subject (search_token code [Token { system: None, code: Some(\"x\") }])"]));
        check("Patient", "birthdate:missing=true", Ok(&["birthdate missing=true"]));
        check("Patient", "_count=10&_sort=-_lastUpdated", Ok(&[]));
        check("Patient", "nickname=x", Err("nickname"));
        check("Patient", "gender:fuzzy=x", Err("gender:fuzzy"));
        check("Observation", "subject:Patient.name=x", Ok(&["subject->Patient (search_string name [StringRange { low: \"x\", high: \"x\\u{10ffff}\" }])"]));
        // R4's Observation.subject may be a Patient or a Location, both of which have `name`.
        check("Observation", "subject.name=x", Err("subject.name"));
        check("Observation", "performer.name=x", Err("performer.name"));
        check("Patient", "_count=-1", Err("_count"));
        check("Observation", "subject:Patient.organization.partof.partof.partof.name=x", Err("chain_depth"));
    }

    #[test]
    fn escaped_commas_stay_in_values() {
        assert_eq!(split_values(r"a\,b,c", "x").ok(), Some(vec!["a,b".to_owned(), "c".to_owned()]));
        assert!(split_values("a,,b", "x").is_err());
    }
}
