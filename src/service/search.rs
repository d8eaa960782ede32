//! Search: URL parameters parsed (against the search parameter registry) into the store's
//! query model, run, and shaped into a `searchset` Bundle with includes and paging links.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::fhir::elements::{apply_elements, apply_summary, Summary};
use crate::audit::Entity;
use crate::policy::Grant;
use crate::identity::Interaction;
use crate::service::history::link;
use crate::service::Fhir;
use crate::identity::Context;
use crate::store::query;
use crate::store::CurrentRow;
use crate::search::{Criterion, Cursor, KeyValue};

pub use crate::search::parse::{decode_cursor, encode_cursor, parse, Include, ParsedSearch, ResultParameters, DEFAULT_COUNT, MAX_COUNT};
use crate::search::parse::MAX_INCLUDE_ROUNDS;

/// URL query parameters as decoded name/value pairs.
type Pairs = Vec<(String, String)>;

impl Fhir {
    /// `GET [base]/[type]?…` and `POST [base]/[type]/_search`: a `searchset` Bundle.
    pub async fn search(&self, context: &Context, resource_type: &str, pairs: &[(String, String)]) -> Result<Value> {
        let mut audit = self.audit(context, Interaction::Search, "search-type");
        audit.entity(Entity::Query(format!("{resource_type}?{}", query_text(pairs))));
        let result = self.search_unaudited(context, resource_type, pairs).await;
        self.finish_read(context, audit, result, bundle_resources).await
    }

    async fn search_unaudited(&self, context: &Context, resource_type: &str, pairs: &[(String, String)]) -> Result<Value> {
        self.catch_up_audit(context).await?;
        if !self.validator.is_resource_type(resource_type) {
            return Err(Error::NotFound(format!("the resource type '{resource_type}'")));
        }
        let grant = self.decide_now(context, Interaction::Search, Some(resource_type)).await?;
        let parsed = parse(&self.search_params, resource_type, pairs, context.lenient, &context.base_url, &self.config.limits)?;
        self.run_search(context, &grant, resource_type, parsed, resource_type).await
    }

    /// `GET [base]/Patient/[id]/[type]`: a search within the Patient's compartment.
    pub async fn compartment_search(
        &self,
        context: &Context,
        patient_id: &str,
        resource_type: &str,
        pairs: &[(String, String)],
    ) -> Result<Value> {
        let mut audit = self.audit(context, Interaction::Search, "search-type");
        audit.entity(Entity::Query(format!("Patient/{patient_id}/{resource_type}?{}", query_text(pairs))));
        // The person's compartment was searched, whether or not anything was found.
        audit.entity(Entity::Patient(format!("Patient/{patient_id}")));
        let result = self.compartment_search_unaudited(context, patient_id, resource_type, pairs).await;
        self.finish_read(context, audit, result, bundle_resources).await
    }

    async fn compartment_search_unaudited(
        &self,
        context: &Context,
        patient_id: &str,
        resource_type: &str,
        pairs: &[(String, String)],
    ) -> Result<Value> {
        if !self.validator.is_resource_type(resource_type) {
            return Err(Error::NotFound(format!("the resource type '{resource_type}'")));
        }
        self.catch_up_audit(context).await?;
        let mut connection = self.store.connection().await?;
        let grant = self.decide(&mut connection, context, Interaction::Search, Some(resource_type)).await?;
        if crate::store::current(&mut connection, &grant, "Patient", patient_id).await?.is_none_or(|row| row.deleted) {
            return Err(Error::NotFound(format!("Patient/{patient_id}")));
        }
        drop(connection);
        let params = self.search_params.patient_compartment(resource_type).to_vec();
        let mut parsed = parse(&self.search_params, resource_type, pairs, context.lenient, &context.base_url, &self.config.limits)?;
        if resource_type == "Patient" {
            parsed.criteria.push(Criterion::Id(vec![patient_id.to_owned()]));
        } else if params.is_empty() {
            return Err(Error::NotFound(format!("{resource_type} in the Patient compartment")));
        } else {
            parsed.criteria.push(Criterion::Compartment {
                params,
                target_type: "Patient".into(),
                target_id: patient_id.to_owned(),
            });
        }
        self.run_search(context, &grant, resource_type, parsed, &format!("Patient/{patient_id}/{resource_type}")).await
    }

    /// `GET [base]?_type=A,B&…`: a search across resource types (all types without
    /// `_type`). With more than one type only the common parameters apply.
    pub async fn system_search(&self, context: &Context, pairs: &[(String, String)]) -> Result<Value> {
        let mut audit = self.audit(context, Interaction::Search, "search-system");
        audit.entity(Entity::Query(format!("?{}", query_text(pairs))));
        let result = self.system_search_unaudited(context, pairs).await;
        self.finish_read(context, audit, result, bundle_resources).await
    }

    async fn system_search_unaudited(&self, context: &Context, pairs: &[(String, String)]) -> Result<Value> {
        self.catch_up_audit(context).await?;
        let grant = self.decide_now(context, Interaction::Search, None).await?;
        let (types, rest) = self.split_types(pairs)?;
        let lookup_type = match types.as_slice() {
            [only] => only.clone(),
            _ => "Resource".to_owned(),
        };
        let parsed = parse(&self.search_params, &lookup_type, &rest, context.lenient, &context.base_url, &self.config.limits)?;
        let mut parsed = parsed;
        if let Some(applied) = pairs.iter().find(|(name, _)| name == "_type") {
            parsed.applied.insert(0, applied.clone());
        }
        self.run_search_types(context, &grant, types, &lookup_type, parsed, "").await
    }

    /// `GET [base]/Patient/[id]/$everything`: the Patient and everything in its compartment
    /// (`_type`, `_since`, `_count` and paging apply).
    pub async fn everything(&self, context: &Context, patient_id: &str, pairs: &[(String, String)]) -> Result<Value> {
        let mut audit = self.audit(context, Interaction::Search, "$everything");
        audit.entity(Entity::Query(format!("Patient/{patient_id}/$everything?{}", query_text(pairs))));
        audit.entity(Entity::Patient(format!("Patient/{patient_id}")));
        let result = self.everything_unaudited(context, patient_id, pairs).await;
        self.finish_read(context, audit, result, bundle_resources).await
    }

    async fn everything_unaudited(&self, context: &Context, patient_id: &str, pairs: &[(String, String)]) -> Result<Value> {
        self.catch_up_audit(context).await?;
        let mut connection = self.store.connection().await?;
        let grant = self.decide(&mut connection, context, Interaction::Search, Some("Patient")).await?;
        if crate::store::current(&mut connection, &grant, "Patient", patient_id).await?.is_none_or(|row| row.deleted) {
            return Err(Error::NotFound(format!("Patient/{patient_id}")));
        }
        drop(connection);
        let (requested, mut rest) = self.split_types(pairs)?;
        let mut params_by_type: Vec<(String, Vec<String>)> = self
            .search_params
            .compartment_types()
            .filter(|t| pairs.iter().all(|(n, _)| n != "_type") || requested.iter().any(|r| r == t))
            .map(|t| (t.to_owned(), self.search_params.patient_compartment(t).to_vec()))
            .collect();
        params_by_type.retain(|(t, _)| t != "Patient");
        let mut types: Vec<String> = params_by_type.iter().map(|(t, _)| t.clone()).collect();
        if pairs.iter().all(|(n, _)| n != "_type") || requested.iter().any(|r| r == "Patient") {
            types.push("Patient".into());
        }
        for (name, value) in rest.iter_mut() {
            if name == "_since" {
                *name = "_lastUpdated".into();
                *value = format!("ge{value}");
            }
        }
        let mut parsed = parse(&self.search_params, "Resource", &rest, context.lenient, &context.base_url, &self.config.limits)?;
        parsed.criteria.push(Criterion::Everything { patient_id: patient_id.to_owned(), params_by_type });
        self.run_search_types(context, &grant, types, "Patient", parsed, &format!("Patient/{patient_id}/$everything")).await
    }

    /// Splits `_type` off the parameters; no `_type` means every resource type.
    fn split_types(&self, pairs: &[(String, String)]) -> Result<(Vec<String>, Pairs)> {
        let mut types = Vec::new();
        let mut rest = Vec::new();
        for (name, value) in pairs {
            if name == "_type" {
                for resource_type in value.split(',') {
                    if !self.validator.is_resource_type(resource_type) {
                        return Err(Error::bad_request_at(format!("'{resource_type}' is not a resource type"), "_type"));
                    }
                    types.push(resource_type.to_owned());
                }
            } else {
                rest.push((name.clone(), value.clone()));
            }
        }
        if types.is_empty() {
            types = self.validator.resource_types().map(str::to_owned).collect();
        }
        Ok((types, rest))
    }

    async fn run_search(
        &self,
        context: &Context,
        grant: &Grant,
        resource_type: &str,
        parsed: ParsedSearch,
        path: &str,
    ) -> Result<Value> {
        self.run_search_types(context, grant, vec![resource_type.to_owned()], resource_type, parsed, path).await
    }

    /// Runs a parsed search over `types`; `include_type` is the type `_include` starts from.
    async fn run_search_types(
        &self,
        context: &Context,
        grant: &Grant,
        types: Vec<String>,
        include_type: &str,
        parsed: ParsedSearch,
        path: &str,
    ) -> Result<Value> {
        let resource_type = include_type;
        let page_size = parsed.results.count.unwrap_or(DEFAULT_COUNT);
        let summary = parsed.results.summary;
        let mut connection = self.store.connection().await?;
        #[cfg(feature = "test-support")]
        if self.take_failpoint(crate::runtime::Failpoint::SlowStatement) {
            crate::store::slow_statement_for_tests(&mut connection, 30).await?;
        }
        let wants_total = !parsed.results.total_none || summary == Some(Summary::Count);
        let self_pairs: Vec<(String, String)> = parsed.applied.iter().filter(|(name, _)| name != "_page").cloned().collect();
        let mut links = vec![json!({ "relation": "self", "url": link(&context.base_url, path, &parsed.applied) })];
        let mut bundle = json!({ "resourceType": "Bundle", "type": "searchset" });
        if summary == Some(Summary::Count) || page_size == 0 {
            if wants_total {
                let total = query::count(&mut connection, grant, &parsed.query_types(types, 0)).await?;
                crate::fhir::set(&mut bundle, "total", json!(total));
            }
            crate::fhir::set(&mut bundle, "link", Value::Array(links));
            return Ok(bundle);
        }
        let page = query::search(&mut connection, grant, &parsed.query_types(types.clone(), page_size)).await?;
        let has_cursor = parsed.results.cursor.is_some();
        if wants_total {
            // A first page with nothing beyond it holds every match: their number is the
            // total, and the count (which judges every match again) is not run.
            let total = if has_cursor || page.more {
                query::count(&mut connection, grant, &parsed.query_types(types, 0)).await?
            } else {
                i64::try_from(page.matched).unwrap_or(i64::MAX)
            };
            crate::fhir::set(&mut bundle, "total", json!(total));
        }
        links.push(json!({ "relation": "first", "url": link(&context.base_url, path, &self_pairs) }));
        let backwards = parsed.results.cursor.as_ref().is_some_and(|c| c.backwards);
        let (has_next, has_previous) = if backwards { (true, page.more) } else { (page.more, has_cursor) };
        let mut page_link = |relation: &str, keys: &Option<Vec<KeyValue>>, backwards: bool| {
            if let Some(keys) = keys {
                let mut pairs = self_pairs.clone();
                pairs.push(("_page".into(), encode_cursor(&Cursor { backwards, keys: keys.clone() })));
                links.push(json!({ "relation": relation, "url": link(&context.base_url, path, &pairs) }));
            }
        };
        if has_previous {
            page_link("previous", &page.first_keys, true);
        }
        if has_next {
            page_link("next", &page.last_keys, false);
        }
        let matches = page.rows;
        let included = self.includes(&mut connection, grant, resource_type, &matches, &parsed).await?;
        let mut entries = Vec::with_capacity(matches.len() + included.len());
        for (rows, mode) in [(matches, "match"), (included, "include")] {
            for row in rows {
                let Some(content) = row.content else { continue };
                let mut resource: Value = serde_json::from_str(&content)?;
                if let Some(summary) = summary {
                    apply_summary(&mut resource, summary);
                }
                if let Some(elements) = &parsed.results.elements {
                    apply_elements(&mut resource, elements);
                }
                // Built as a map, not with `json!`, which would copy the resource whole
                // (`json!` turns every value it is given into a new `Value` by serialising it).
                let mut entry = serde_json::Map::new();
                entry.insert("fullUrl".into(), Value::String(format!("{}/{}/{}", context.base_url, row.resource_type, row.id)));
                entry.insert("resource".into(), resource);
                entry.insert("search".into(), json!({ "mode": mode }));
                entries.push(Value::Object(entry));
            }
        }
        crate::fhir::set(&mut bundle, "link", Value::Array(links));
        // FHIR forbids empty arrays: an empty page has no `entry` at all.
        if !entries.is_empty() {
            crate::fhir::set(&mut bundle, "entry", Value::Array(entries));
        }
        Ok(bundle)
    }

    /// `_include` and `_revinclude` (with `:iterate`) for a page of matches; every
    /// included resource is read under the same grant as the matches.
    async fn includes(
        &self,
        connection: &mut crate::store::Db,
        grant: &Grant,
        resource_type: &str,
        matches: &[CurrentRow],
        parsed: &ParsedSearch,
    ) -> Result<Vec<CurrentRow>> {
        if parsed.includes.is_empty() && parsed.revincludes.is_empty() {
            return Ok(Vec::new());
        }
        let mut seen: HashSet<(String, String)> = matches.iter().map(|r| (r.resource_type.clone(), r.id.clone())).collect();
        let mut included = Vec::new();
        let mut frontier: Vec<CurrentRow> = matches.to_vec();
        for round in 0..MAX_INCLUDE_ROUNDS {
            let mut found = Vec::new();
            let types: HashSet<String> = frontier.iter().map(|r| r.resource_type.clone()).collect();
            for source_type in &types {
                let ids: Vec<String> = frontier.iter().filter(|r| &r.resource_type == source_type).map(|r| r.id.clone()).collect();
                for include in parsed.includes.iter().filter(|i| (round == 0 && source_type == resource_type) || i.iterate) {
                    if include.source_type != "*" && &include.source_type != source_type {
                        continue;
                    }
                    found.extend(
                        query::referenced(connection, grant, source_type, &ids, include.param.as_deref(), include.target_type.as_deref())
                            .await?,
                    );
                }
                for include in parsed.revincludes.iter().filter(|i| round == 0 || i.iterate) {
                    if let Some(target) = &include.target_type {
                        if target != source_type {
                            continue;
                        }
                    }
                    found.extend(
                        query::referring(connection, grant, &include.source_type, include.param.as_deref(), source_type, &ids).await?,
                    );
                }
            }
            let fresh: Vec<CurrentRow> =
                found.into_iter().filter(|row| seen.insert((row.resource_type.clone(), row.id.clone()))).collect();
            if fresh.is_empty() {
                break;
            }
            included.extend(fresh.iter().cloned());
            frontier = fresh;
            if !parsed.includes.iter().chain(parsed.revincludes.iter()).any(|i| i.iterate) {
                break;
            }
        }
        Ok(included)
    }
}

/// The resources of a Bundle's entries (what a search, history or operation returned).
pub(crate) fn bundle_resources(bundle: &Value) -> Vec<&Value> {
    bundle.get("entry").and_then(Value::as_array).into_iter().flatten().filter_map(|entry| entry.get("resource")).collect()
}

/// Query parameters as they are written in a URL.
pub(crate) fn query_text(pairs: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}
