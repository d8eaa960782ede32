//! Search parameters as this server understands them (for now `_id`, `_lastUpdated` and the
//! `identifier` token), parsed into the store's [`SearchQuery`], and the token index
//! extracted from resources on write.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::fhir::elements::Summary;
use crate::store::{Criterion, SearchQuery, TokenEntry};

/// Default and maximum page sizes.
pub const DEFAULT_COUNT: i64 = 20;
pub const MAX_COUNT: i64 = 1000;

/// Result-shaping parameters that apply to any search.
#[derive(Debug, Clone, Default)]
pub struct ResultParameters {
    pub count: Option<i64>,
    pub summary: Option<Summary>,
    pub elements: Option<Vec<String>>,
    pub cursor: Option<String>,
    /// `_total=none` suppresses the count query.
    pub total_none: bool,
}

/// A parsed search: the store query, the result parameters, and the parameters actually
/// applied (for the `self` link).
#[derive(Debug, Clone)]
pub struct ParsedSearch {
    pub criteria: Vec<Criterion>,
    pub results: ResultParameters,
    pub applied: Vec<(String, String)>,
}

impl ParsedSearch {
    pub fn query(&self, resource_type: &str, limit: i64) -> SearchQuery {
        SearchQuery {
            resource_type: resource_type.to_owned(),
            criteria: self.criteria.clone(),
            after_id: self.results.cursor.clone(),
            limit,
        }
    }
}

/// Parses URL query pairs. Unknown parameters are a 400 unless `lenient`, in which case
/// they are dropped (and left out of `applied`).
pub fn parse(pairs: &[(String, String)], lenient: bool) -> Result<ParsedSearch> {
    let mut criteria = Vec::new();
    let mut results = ResultParameters::default();
    let mut applied = Vec::new();
    for (name, value) in pairs {
        let outcome = parse_one(name, value, &mut criteria, &mut results);
        match outcome {
            Ok(()) => applied.push((name.clone(), value.clone())),
            Err(error) if lenient => {
                tracing::debug!(parameter = %name, %error, "ignored under Prefer: handling=lenient");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(ParsedSearch { criteria, results, applied })
}

fn parse_one(name: &str, value: &str, criteria: &mut Vec<Criterion>, results: &mut ResultParameters) -> Result<()> {
    let (base, modifier) = match name.split_once(':') {
        Some((base, modifier)) => (base, Some(modifier)),
        None => (name, None),
    };
    if let Some(modifier) = modifier {
        return Err(Error::bad_request_at(format!("the modifier ':{modifier}' is not supported on '{base}'"), name));
    }
    match base {
        "_id" => criteria.push(Criterion::Id(split_or(value, name)?)),
        "_lastUpdated" => {
            let mut ranges = Vec::new();
            for alternative in split_or(value, name)? {
                ranges.extend(date_ranges(&alternative, name)?);
            }
            criteria.push(Criterion::LastUpdated(ranges));
        }
        "identifier" => {
            let alternatives = split_or(value, name)?.iter().map(|token| parse_token(token)).collect();
            criteria.push(Criterion::Token { param: "identifier".into(), alternatives });
        }
        "_count" => {
            let count: i64 = value
                .parse()
                .ok()
                .filter(|count| *count >= 0)
                .ok_or_else(|| Error::bad_request_at(format!("_count must be a non-negative integer, not '{value}'"), name))?;
            results.count = Some(count.min(MAX_COUNT));
        }
        "_summary" => results.summary = Some(Summary::parse(value)?),
        "_elements" => {
            results.elements = Some(value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        }
        "_total" => match value {
            "none" => results.total_none = true,
            "estimate" | "accurate" => results.total_none = false,
            other => return Err(Error::bad_request_at(format!("_total must be none, estimate or accurate, not '{other}'"), name)),
        },
        "_page" => results.cursor = Some(decode_cursor(value).ok_or_else(|| Error::bad_request_at("the paging cursor is not valid", name))?),
        // Format parameters are handled by the HTTP layer.
        "_format" | "_pretty" => {}
        other => {
            return Err(Error::bad_request_at(
                format!("the search parameter '{other}' is not supported for this resource type"),
                other,
            ))
        }
    }
    Ok(())
}

fn split_or(value: &str, name: &str) -> Result<Vec<String>> {
    let parts: Vec<String> = value.split(',').map(|part| part.replace("\\,", ",")).collect();
    if parts.iter().any(String::is_empty) {
        return Err(Error::bad_request_at(format!("the parameter '{name}' has an empty value"), name));
    }
    Ok(parts)
}

fn parse_token(token: &str) -> (Option<String>, Option<String>) {
    match token.split_once('|') {
        None => (None, Some(token.to_owned())),
        Some((system, code)) => (
            Some(system.to_owned()),
            if code.is_empty() { None } else { Some(code.to_owned()) },
        ),
    }
}

/// The stored timestamp form: fixed-width UTC with microseconds, so text order is time order.
pub fn format_instant(instant: DateTime<Utc>) -> String {
    instant.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A date search value with prefix, as half-open ranges over stored instants.
fn date_ranges(value: &str, name: &str) -> Result<Vec<(Option<String>, Option<String>)>> {
    let (prefix, date) = if value.len() > 2 && value.as_bytes()[..2].iter().all(u8::is_ascii_lowercase) {
        value.split_at(2)
    } else {
        ("eq", value)
    };
    let (low, high) = precision_range(date)
        .ok_or_else(|| Error::bad_request_at(format!("'{date}' is not a valid date, dateTime or instant"), name))?;
    let (low_text, high_text) = (format_instant(low), format_instant(high));
    let ranges = match prefix {
        "eq" => vec![(Some(low_text), Some(high_text))],
        "ne" => vec![(None, Some(low_text)), (Some(high_text), None)],
        "gt" | "sa" => vec![(Some(high_text), None)],
        "lt" | "eb" => vec![(None, Some(low_text))],
        "ge" => vec![(Some(low_text), None)],
        "le" => vec![(None, Some(high_text))],
        "ap" => {
            // "Approximately": the value's range widened by a tenth of its distance from now,
            // and by at least a day.
            let margin = ((Utc::now() - low).abs() / 10).max(Duration::days(1));
            vec![(Some(format_instant(low - margin)), Some(format_instant(high + margin)))]
        }
        other => return Err(Error::bad_request_at(format!("'{other}' is not a search prefix"), name)),
    };
    Ok(ranges)
}

/// The interval `[low, high)` that a date/dateTime/instant of any precision covers.
pub fn precision_range(text: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let bytes = text.as_bytes();
    match bytes.len() {
        4 => {
            let year: i32 = text.parse().ok()?;
            let low = Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).single()?;
            let high = Utc.with_ymd_and_hms(year + 1, 1, 1, 0, 0, 0).single()?;
            Some((low, high))
        }
        7 => {
            let date = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok()?;
            let next = if date.month() == 12 {
                NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)?
            };
            Some((Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?), Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0)?)))
        }
        10 => {
            let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
            let low = Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?);
            Some((low, low + Duration::days(1)))
        }
        _ => {
            if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
                let instant = instant.with_timezone(&Utc);
                let has_fraction = text.contains('.');
                let width = if has_fraction { Duration::microseconds(1) } else { Duration::seconds(1) };
                return Some((instant, instant + width));
            }
            // Minute precision with zone, e.g. 2026-11-25T10:00+09:00, or no zone (UTC).
            let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M").ok();
            if let Some(naive) = naive {
                let low = Utc.from_utc_datetime(&naive);
                return Some((low, low + Duration::minutes(1)));
            }
            let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").ok()?;
            let low = Utc.from_utc_datetime(&naive);
            Some((low, low + Duration::seconds(1)))
        }
    }
}

/// The token index rows of a resource: its `identifier`s.
pub fn extract_tokens(resource: &Value) -> Vec<TokenEntry> {
    let identifiers = match resource.get("identifier") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(single @ Value::Object(_)) => vec![single],
        _ => Vec::new(),
    };
    identifiers
        .into_iter()
        .filter_map(|identifier| {
            let code = identifier.get("value")?.as_str()?;
            let system = identifier.get("system").and_then(Value::as_str).unwrap_or_default();
            Some(TokenEntry { param: "identifier".into(), system: system.to_owned(), code: code.to_owned() })
        })
        .collect()
}

/// Opaque paging cursor: the hex of the last id on the page.
pub fn encode_cursor(last: &str) -> String {
    last.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_cursor(text: &str) -> Option<String> {
    if text.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(decode_cursor(&encode_cursor("abc-1")).as_deref(), Some("abc-1"));
        assert_eq!(decode_cursor("zz"), None);
    }
}

impl crate::service::Fhir {
    /// `GET [base]/[type]?…` and `POST [base]/[type]/_search`: a `searchset` Bundle.
    pub async fn search(
        &self,
        context: &crate::service::Context,
        resource_type: &str,
        pairs: &[(String, String)],
    ) -> Result<Value> {
        use serde_json::json;

        use crate::fhir::elements::{apply_elements, apply_summary};
        use crate::policy::{self, Interaction};
        use crate::service::history::link;
        use crate::store::query;

        if !self.validator.is_resource_type(resource_type) {
            return Err(Error::NotFound(format!("the resource type '{resource_type}'")));
        }
        let grant = policy::decide(&context.principal, &context.tenant, Interaction::Search, Some(resource_type))?;
        let parsed = parse(pairs, context.lenient)?;
        let page_size = parsed.results.count.unwrap_or(DEFAULT_COUNT);
        let mut connection = self.store.connection().await?;
        let summary = parsed.results.summary;
        let total = if parsed.results.total_none && summary != Some(Summary::Count) {
            None
        } else {
            Some(query::count(&mut connection, &grant, &parsed.query(resource_type, 0)).await?)
        };
        let self_pairs: Vec<(String, String)> =
            parsed.applied.iter().filter(|(name, _)| name != "_page").cloned().collect();
        let mut links = vec![json!({ "relation": "self", "url": link(&context.base_url, resource_type, &parsed.applied) })];
        let mut bundle = json!({ "resourceType": "Bundle", "type": "searchset" });
        if let Some(total) = total {
            bundle["total"] = json!(total);
        }
        if summary == Some(Summary::Count) || page_size == 0 {
            bundle["link"] = json!(links);
            return Ok(bundle);
        }
        let mut rows = query::search(&mut connection, &grant, &parsed.query(resource_type, page_size + 1)).await?;
        let has_next = rows.len() as i64 > page_size;
        rows.truncate(page_size as usize);
        links.push(json!({ "relation": "first", "url": link(&context.base_url, resource_type, &self_pairs) }));
        if has_next {
            if let Some(last) = rows.last() {
                let mut next = self_pairs.clone();
                next.push(("_page".into(), encode_cursor(&last.id)));
                links.push(json!({ "relation": "next", "url": link(&context.base_url, resource_type, &next) }));
            }
        }
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(content) = row.content else { continue };
            let mut resource: Value = serde_json::from_str(&content)?;
            if let Some(summary) = summary {
                apply_summary(&mut resource, summary);
            }
            if let Some(elements) = &parsed.results.elements {
                apply_elements(&mut resource, elements);
            }
            entries.push(json!({
                "fullUrl": format!("{}/{}/{}", context.base_url, row.resource_type, row.id),
                "resource": resource,
                "search": { "mode": "match" },
            }));
        }
        bundle["link"] = json!(links);
        // FHIR forbids empty arrays: an empty page has no `entry` at all.
        if !entries.is_empty() {
            bundle["entry"] = json!(entries);
        }
        Ok(bundle)
    }
}
