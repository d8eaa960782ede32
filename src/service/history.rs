//! The history interactions (instance, type, system) as `history` Bundles.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::identity::Interaction;
use crate::fhir::dates::{format_instant, precision_range};
use crate::service::search::{DEFAULT_COUNT, MAX_COUNT};
use crate::service::Fhir;
use crate::identity::Context;
use crate::store::{self, HistoryFilter, VersionRow};

/// Which history: of the whole tenant, of a type, or of one resource.
#[derive(Debug, Clone, Copy)]
pub enum Level<'a> {
    System,
    Type(&'a str),
    Instance(&'a str, &'a str),
}

impl Fhir {
    /// `GET [base]/_history`, `[base]/[type]/_history`, `[base]/[type]/[id]/_history`
    pub async fn history(&self, context: &Context, level: Level<'_>, pairs: &[(String, String)]) -> Result<Value> {
        let (interaction, subtype, target) = match level {
            Level::System => (Interaction::HistorySystem, "history-system", String::new()),
            Level::Type(resource_type) => (Interaction::HistoryType, "history-type", resource_type.to_owned()),
            Level::Instance(resource_type, id) => (Interaction::HistoryInstance, "history-instance", format!("{resource_type}/{id}")),
        };
        let mut audit = self.audit(context, interaction, subtype);
        audit.entity(crate::audit::Entity::Query(format!("{target}/_history?{}", super::search::query_text(pairs))));
        let result = self.history_unaudited(context, level, pairs).await;
        self.finish_read(context, audit, result, super::search::bundle_resources).await
    }

    async fn history_unaudited(&self, context: &Context, level: Level<'_>, pairs: &[(String, String)]) -> Result<Value> {
        self.catch_up_audit(context).await?;
        let (interaction, resource_type, id) = match level {
            Level::System => (Interaction::HistorySystem, None, None),
            Level::Type(resource_type) => (Interaction::HistoryType, Some(resource_type), None),
            Level::Instance(resource_type, id) => (Interaction::HistoryInstance, Some(resource_type), Some(id)),
        };
        if let Some(resource_type) = resource_type {
            if !self.validator.is_resource_type(resource_type) {
                return Err(Error::NotFound(format!("the resource type '{resource_type}'")));
            }
        }
        let grant = self.decide_now(context, interaction, resource_type).await?;
        let mut filter = HistoryFilter {
            resource_type: resource_type.map(str::to_owned),
            id: id.map(str::to_owned),
            limit: DEFAULT_COUNT,
            ..HistoryFilter::default()
        };
        let mut applied = Vec::new();
        for (name, value) in pairs {
            let result = match name.as_str() {
                "_since" => precision_range(value)
                    .map(|(low, _)| filter.since = Some(format_instant(low)))
                    .ok_or_else(|| Error::bad_request_at(format!("_since '{value}' is not an instant"), "_since")),
                "_count" => value
                    .parse::<i64>()
                    .ok()
                    .filter(|count| *count > 0)
                    .map(|count| filter.limit = count.min(MAX_COUNT))
                    .ok_or_else(|| Error::bad_request_at("_count must be a positive integer", "_count")),
                "_page" => filter
                    .resume_after(value)
                    .then_some(())
                    .ok_or_else(|| Error::bad_request_at("the paging cursor is not valid", "_page")),
                "_format" | "_pretty" => Ok(()),
                other => Err(Error::bad_request_at(format!("the parameter '{other}' is not supported on history"), other)),
            };
            match result {
                Ok(()) => applied.push((name.clone(), value.clone())),
                Err(_) if context.lenient => {}
                Err(error) => return Err(error),
            }
        }
        let mut connection = self.store.connection().await?;
        if let (Some(resource_type), Some(id)) = (resource_type, id) {
            // A resource is there for the caller when one of its versions is (each version
            // is judged by its own content, a deletion by the version it deleted).
            let any_version = HistoryFilter { since: None, before_seq: None, before_event: None, ..filter.clone() };
            if store::history_count(&mut connection, &grant, &any_version).await? == 0 {
                return Err(Error::NotFound(format!("{resource_type}/{id}")));
            }
        }
        let total = store::history_count(&mut connection, &grant, &filter).await?;
        let limit = filter.limit;
        let mut rows = store::history(&mut connection, &grant, &HistoryFilter { limit: limit + 1, ..filter.clone() }).await?;
        let has_next = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let path = match level {
            Level::System => "_history".to_owned(),
            Level::Type(resource_type) => format!("{resource_type}/_history"),
            Level::Instance(resource_type, id) => format!("{resource_type}/{id}/_history"),
        };
        let self_query: Vec<(String, String)> = applied.iter().filter(|(n, _)| n != "_page").cloned().collect();
        let mut links = vec![json!({ "relation": "self", "url": link(&context.base_url, &path, &applied) })];
        links.push(json!({ "relation": "first", "url": link(&context.base_url, &path, &self_query) }));
        if has_next {
            if let Some(last) = rows.last() {
                let mut next = self_query.clone();
                next.push(("_page".into(), last.cursor()));
                links.push(json!({ "relation": "next", "url": link(&context.base_url, &path, &next) }));
            }
        }
        let entries: Vec<Value> = rows.iter().map(|row| history_entry(&context.base_url, row)).collect::<Result<_>>()?;
        let mut bundle = json!({ "resourceType": "Bundle", "type": "history", "total": total });
        crate::fhir::set(&mut bundle, "link", Value::Array(links));
        // FHIR forbids empty arrays: an empty page has no `entry` at all (and `json!` would
        // copy every entry whole).
        if !entries.is_empty() {
            crate::fhir::set(&mut bundle, "entry", Value::Array(entries));
        }
        Ok(bundle)
    }
}

fn history_entry(base_url: &str, row: &VersionRow) -> Result<Value> {
    let full_url = format!("{base_url}/{}/{}", row.resource_type, row.id);
    let (url, status) = match row.method.as_str() {
        "POST" => (row.resource_type.clone(), "201 Created"),
        "DELETE" => (format!("{}/{}", row.resource_type, row.id), "204 No Content"),
        _ if row.version_id == 1 => (format!("{}/{}", row.resource_type, row.id), "201 Created"),
        _ => (format!("{}/{}", row.resource_type, row.id), "200 OK"),
    };
    let mut entry = json!({
        "fullUrl": full_url,
        "request": { "method": row.method, "url": url },
        "response": {
            "status": status,
            "etag": format!("W/\"{}\"", row.version_id),
            "lastModified": row.last_updated,
        },
    });
    if let Some(content) = &row.content {
        crate::fhir::set(&mut entry, "resource", serde_json::from_str(content)?);
    }
    Ok(entry)
}

/// A link URL: `base/path?name=value&…` with values percent-encoded.
pub fn link(base_url: &str, path: &str, pairs: &[(String, String)]) -> String {
    let mut url = if path.is_empty() { base_url.to_owned() } else { format!("{base_url}/{path}") };
    if !pairs.is_empty() {
        let query: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        url.push('?');
        url.push_str(&query);
    }
    url
}
