//! Batch and transaction Bundles (`POST [base]`).
//!
//! A transaction is atomic: its write entries run through the write pipeline
//! (`service::writes`, the same steps as single writes) in one database transaction, in the
//! order the specification requires (DELETE, POST, PUT/PATCH), with `urn:uuid:` full URLs
//! resolved to the ids the server assigns and references to them rewritten before the
//! resources are validated; its GET entries run after the commit. The first failing entry
//! rolls everything back and its error names the entry (`Bundle.entry[n]…`). A batch runs
//! each entry as its own interaction (a single write is a one-entry transaction); failures
//! become that entry's response.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::identity::Interaction;
use crate::outcome::{Issue, OperationOutcome};
use crate::audit::{Action, Entity};
use crate::service::audit::Audit;
use crate::service::writes::{self, Change, Outcome, WriteEntry};
use crate::service::{parse_query_string, Fhir, Stored};
use crate::identity::Context;

/// The HTTP method of an entry's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    fn parse(text: &str) -> Option<Method> {
        match text {
            "GET" => Some(Method::Get),
            "HEAD" => Some(Method::Head),
            "POST" => Some(Method::Post),
            "PUT" => Some(Method::Put),
            "PATCH" => Some(Method::Patch),
            "DELETE" => Some(Method::Delete),
            _ => None,
        }
    }
}

/// An entry's request, parsed.
#[derive(Debug, Clone)]
struct EntryRequest {
    index: usize,
    method: Method,
    resource_type: String,
    id: Option<String>,
    version: Option<String>,
    /// The query of a conditional or search URL.
    query: Option<String>,
    full_url: Option<String>,
    resource: Option<Value>,
    if_none_exist: Option<String>,
    if_match: Option<i64>,
}

impl EntryRequest {
    fn path(&self) -> String {
        format!("Bundle.entry[{}]", self.index)
    }
}

impl Fhir {
    /// `POST [base]` with a Bundle of type `batch` or `transaction`. Each entry is audited as
    /// its own interaction; the Bundle itself gets one event too.
    pub async fn process_bundle(&self, context: &Context, body: Value) -> Result<Value> {
        let kind = body.get("type").and_then(Value::as_str).unwrap_or_default();
        let subtype = if kind == "batch" { "batch" } else { "transaction" };
        let mut audit = self.audit(context, Interaction::Create, subtype);
        audit.event.action = Action::Execute;
        let result = self.process_bundle_unaudited(context, &mut audit, body).await;
        if subtype == "batch" || result.is_err() {
            // A batch's entries recorded themselves; a failed transaction kept nothing.
            return self.finish_read(context, audit, result, |_| Vec::new()).await;
        }
        self.finish_write(audit, result).await
    }

    async fn process_bundle_unaudited(&self, context: &Context, audit: &mut Audit, body: Value) -> Result<Value> {
        match body.get("resourceType").and_then(Value::as_str) {
            Some("Bundle") => {}
            _ => return Err(Error::bad_request_at("only a Bundle may be posted to the base URL", "resourceType")),
        }
        let kind = body.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
        let entries = body.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
        let allowed = self.config.limits.bundle_entries;
        if entries.len() > allowed {
            return Err(Error::LimitExceeded {
                limit: "bundle_entries",
                allowed: allowed as u64,
                what: format!("the Bundle has {} entries", entries.len()),
            });
        }
        let mut requests = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            requests.push(self.parse_entry(context, index, entry)?);
        }
        audit.entity(Entity::Detail { name: "entries".into(), value: requests.len().to_string() });
        match kind.as_str() {
            "transaction" => self.transaction(context, audit, requests).await,
            "batch" => Ok(self.batch(context, requests).await),
            other => Err(Error::bad_request_at(
                format!("a Bundle posted to the base must be a batch or transaction, not '{other}'"),
                "Bundle.type",
            )),
        }
    }

    fn parse_entry(&self, context: &Context, index: usize, entry: Value) -> Result<EntryRequest> {
        let at = |field: &str| format!("Bundle.entry[{index}].{field}");
        let request = entry.get("request").ok_or_else(|| Error::bad_request_at("the entry has no request", at("request")))?;
        let method = request
            .get("method")
            .and_then(Value::as_str)
            .and_then(Method::parse)
            .ok_or_else(|| Error::bad_request_at("request.method must be GET, HEAD, POST, PUT, PATCH or DELETE", at("request.method")))?;
        let url = request
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_request_at("the entry has no request.url", at("request.url")))?;
        let relative = url.strip_prefix(context.base_url.as_str()).unwrap_or(url).trim_start_matches('/');
        let (path, query) = match relative.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (relative, None),
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (resource_type, id, version) = match segments.as_slice() {
            [resource_type] => ((*resource_type).to_owned(), None, None),
            [resource_type, id] => ((*resource_type).to_owned(), Some((*id).to_owned()), None),
            [resource_type, id, "_history", version] => {
                ((*resource_type).to_owned(), Some((*id).to_owned()), Some((*version).to_owned()))
            }
            _ => return Err(Error::bad_request_at(format!("'{url}' is not a URL this server can process in a Bundle"), at("request.url"))),
        };
        if !self.validator.is_resource_type(&resource_type) {
            return Err(Error::bad_request_at(format!("'{resource_type}' is not a resource type"), at("request.url")));
        }
        let if_match = match request.get("ifMatch").and_then(Value::as_str) {
            Some(etag) => Some(parse_etag(etag).ok_or_else(|| Error::bad_request_at("ifMatch must be an ETag such as W/\"3\"", at("request.ifMatch")))?),
            None => None,
        };
        let resource = entry.get("resource").cloned();
        if matches!(method, Method::Post | Method::Put | Method::Patch) && resource.is_none() {
            return Err(Error::bad_request_at("this entry needs a resource", at("resource")));
        }
        Ok(EntryRequest {
            index,
            method,
            resource_type,
            id,
            version,
            query,
            full_url: entry.get("fullUrl").and_then(Value::as_str).map(str::to_owned),
            resource,
            if_none_exist: request.get("ifNoneExist").and_then(Value::as_str).map(str::to_owned),
            if_match,
        })
    }

    /// A transaction: its write entries run through the write pipeline in one database
    /// transaction (see `service::writes`), committed with each entry's event; its reads
    /// run after the commit.
    async fn transaction(&self, context: &Context, audit: &mut Audit, requests: Vec<EntryRequest>) -> Result<Value> {
        let mut writes = Vec::new();
        let mut positions = Vec::new();
        let mut reads = Vec::new();
        for request in &requests {
            match write_entry(request)? {
                Some(entry) => {
                    writes.push(entry);
                    positions.push(request.index);
                }
                None => reads.push(request),
            }
        }
        let mut responses: Vec<Option<Value>> = vec![None; requests.len()];
        let (mut transaction, outcomes) = self.write_entries(context, writes).await?;
        // Each entry's own event, with what it wrote, matched or deleted.
        let mut entry_audits: Vec<(Audit, Option<Value>)> = Vec::new();
        let mut created_resources: Vec<Value> = Vec::new();
        for (&index, outcome) in positions.iter().zip(outcomes) {
            let Some(request) = requests.get(index) else { continue };
            let response = match outcome {
                Outcome::Written { stored, created, unchanged } => {
                    let (interaction, subtype) = match request.method {
                        Method::Post => (Interaction::Create, "create"),
                        Method::Patch => (Interaction::Patch, "patch"),
                        _ => (Interaction::Update, "update"),
                    };
                    entry_audits.push((self.audit(context, interaction, subtype), Some(stored.resource.clone())));
                    if created && stored.resource_type == "Communication" {
                        created_resources.push(stored.resource.clone());
                    }
                    let mut response = entry_response(&stored, if created { "201 Created" } else { "200 OK" });
                    if unchanged {
                        // As HAPI FHIR says it: the client learns that no version was written.
                        let note = format!("no change: {}/{} stays at version {}", stored.resource_type, stored.id, stored.version_id);
                        if let Some(answer) = response.get_mut("response").and_then(Value::as_object_mut) {
                            answer.insert("outcome".into(), OperationOutcome::new(vec![Issue::information(note)]).to_json());
                        }
                    }
                    response
                }
                Outcome::Deleted { target, deleted, cascaded } => {
                    let matched = target.is_some();
                    for (target, deleted) in target.map(|t| (t, deleted)).into_iter().chain(cascaded) {
                        let mut entry_audit = self.audit(context, Interaction::Delete, "delete");
                        entry_audit.entity(Entity::Resource(target));
                        entry_audits.push((entry_audit, deleted));
                    }
                    if matched {
                        json!({ "response": { "status": "204 No Content" } })
                    } else {
                        // A conditional delete that matched nothing (as HAPI FHIR, a note, not
                        // an error): a client keeping its data in step can tell it from a delete.
                        let note = OperationOutcome::new(vec![Issue::information("no match: nothing was deleted".to_owned())]).to_json();
                        json!({ "response": { "status": "204 No Content", "outcome": note } })
                    }
                }
            };
            if let Some(slot) = responses.get_mut(index) {
                *slot = Some(response);
            }
        }
        let entry_events = self.entry_events(&mut transaction, context, entry_audits).await?;
        self.commit_audited(transaction, context, audit, &[], entry_events).await?;
        self.announce_posted(context, &created_resources);
        for request in reads {
            let response = match self.read_entry(context, request).await {
                Ok(value) => value,
                Err(error) => error_entry(&error, &context.request_id),
            };
            if let Some(slot) = responses.get_mut(request.index) {
                *slot = Some(response);
            }
        }
        let entries: Vec<Value> = responses.into_iter().map(|r| r.unwrap_or_else(|| json!({}))).collect();
        Ok(response_bundle("transaction-response", entries))
    }

    async fn batch(&self, context: &Context, requests: Vec<EntryRequest>) -> Value {
        let mut entries = Vec::with_capacity(requests.len());
        for request in &requests {
            let result = match request.method {
                Method::Get | Method::Head => self.read_entry(context, request).await,
                Method::Post => {
                    let resource = request.resource.clone().unwrap_or(Value::Null);
                    self.create(context, &request.resource_type, resource, request.if_none_exist.as_deref())
                        .await
                        .map(|w| entry_response(&w.stored, if w.created { "201 Created" } else { "200 OK" }))
                }
                Method::Put => {
                    let resource = request.resource.clone().unwrap_or(Value::Null);
                    let written = match (&request.id, &request.query) {
                        (Some(id), _) => self.update(context, &request.resource_type, id, resource, request.if_match).await,
                        (None, Some(query)) => self.conditional_update(context, &request.resource_type, query, resource, request.if_match).await,
                        (None, None) => Err(Error::bad_request_at("a PUT entry needs Type/id or a condition", format!("{}.request.url", request.path()))),
                    };
                    written.map(|w| entry_response(&w.stored, if w.created { "201 Created" } else { "200 OK" }))
                }
                Method::Patch => match (&request.id, patch_document(request)) {
                    (Some(id), Ok(patch)) => self
                        .patch(context, &request.resource_type, id, patch, request.if_match)
                        .await
                        .map(|w| entry_response(&w.stored, "200 OK")),
                    (None, _) => Err(Error::bad_request_at("a PATCH entry needs Type/id", format!("{}.request.url", request.path()))),
                    (_, Err(error)) => Err(error),
                },
                Method::Delete => {
                    let deleted = match (&request.id, &request.query) {
                        (Some(id), query) => {
                            self.delete(context, &request.resource_type, id, request.if_match, cascade_requested(query.as_deref())).await
                        }
                        (None, Some(query)) => self.conditional_delete(context, &request.resource_type, query).await,
                        (None, None) => Err(Error::bad_request_at("a DELETE entry needs Type/id or a condition", format!("{}.request.url", request.path()))),
                    };
                    deleted.map(|()| json!({ "response": { "status": "204 No Content" } }))
                }
            };
            entries.push(match result {
                Ok(entry) => entry,
                Err(error) => error_entry(&in_entry(error, request), &context.request_id),
            });
        }
        response_bundle("batch-response", entries)
    }

    /// A GET entry: read, vread, or search.
    async fn read_entry(&self, context: &Context, request: &EntryRequest) -> Result<Value> {
        match (&request.id, &request.version) {
            (Some(id), Some(version)) => {
                let stored = self.vread(context, &request.resource_type, id, version).await?;
                Ok(entry_response(&stored, "200 OK"))
            }
            (Some(id), None) => {
                let stored = self.read(context, &request.resource_type, id).await?;
                Ok(entry_response(&stored, "200 OK"))
            }
            (None, _) => {
                let pairs = parse_query_string(request.query.as_deref().unwrap_or_default());
                let bundle = self.search(context, &request.resource_type, &pairs).await?;
                Ok(json!({ "resource": bundle, "response": { "status": "200 OK" } }))
            }
        }
    }
}

/// The JSON Patch of a PATCH entry: a Binary whose data is the base64 patch document.
fn patch_document(request: &EntryRequest) -> Result<Value> {
    let at = format!("{}.resource", request.path());
    let resource = request.resource.as_ref().ok_or_else(|| Error::bad_request_at("a PATCH entry needs a resource", at.clone()))?;
    if resource.get("resourceType").and_then(Value::as_str) != Some("Binary") {
        return Err(Error::bad_request_at(
            "a PATCH entry carries its JSON Patch as a Binary (contentType application/json-patch+json)",
            at,
        ));
    }
    let data = resource.get("data").and_then(Value::as_str).unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| Error::bad_request_at("Binary.data is not base64", format!("{at}.data")))?;
    serde_json::from_slice(&bytes).map_err(|error| Error::bad_request_at(format!("the patch is not JSON: {error}"), format!("{at}.data")))
}

/// A response Bundle; FHIR forbids empty arrays, so no entries means no `entry`.
fn response_bundle(kind: &str, entries: Vec<Value>) -> Value {
    let mut bundle = json!({ "resourceType": "Bundle", "type": kind });
    if !entries.is_empty() {
        crate::fhir::set(&mut bundle, "entry", Value::Array(entries));
    }
    bundle
}

fn entry_response(stored: &Stored, status: &str) -> Value {
    json!({
        "resource": stored.resource,
        "response": {
            "status": status,
            "location": format!("{}/{}/_history/{}", stored.resource_type, stored.id, stored.version_id),
            "etag": format!("W/\"{}\"", stored.version_id),
            "lastModified": stored.last_updated,
        }
    })
}

fn error_entry(error: &Error, request_id: &str) -> Value {
    let status = error.status();
    json!({
        "response": {
            "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or_default()),
            "outcome": error.to_outcome(request_id).to_json(),
        }
    })
}

/// Locates an entry's error: issue expressions get the entry's resource path.
fn in_entry(error: Error, request: &EntryRequest) -> Error {
    writes::in_entry(error, request.index)
}

/// Whether a DELETE's query asks to delete what refers to the target too (`_cascade=delete`).
pub(crate) fn cascade_requested(query: Option<&str>) -> bool {
    query.is_some_and(|query| parse_query_string(query).iter().any(|(name, value)| name == "_cascade" && value == "delete"))
}

/// A transaction entry's write, for the write pipeline (None for a read).
fn write_entry(request: &EntryRequest) -> Result<Option<WriteEntry>> {
    let missing = |what: &str| Error::bad_request_at(format!("a {what}"), format!("{}.request.url", request.path()));
    let change = match (request.method, &request.id, &request.query) {
        (Method::Get | Method::Head, _, _) => return Ok(None),
        (Method::Post, _, _) => Change::Create { if_none_exist: request.if_none_exist.clone() },
        (Method::Put, Some(id), _) => Change::Update { id: id.clone() },
        (Method::Put, None, Some(condition)) => Change::ConditionalUpdate { condition: condition.clone() },
        (Method::Patch, Some(id), _) => Change::Patch { id: id.clone(), patch: patch_document(request)? },
        (Method::Delete, Some(id), query) => Change::Delete { id: id.clone(), cascade: cascade_requested(query.as_deref()) },
        (Method::Delete, None, Some(condition)) => Change::ConditionalDelete { condition: condition.clone() },
        (Method::Put, None, None) => return Err(missing("PUT entry needs Type/id or a condition")),
        (Method::Patch, None, _) => return Err(missing("PATCH entry needs Type/id")),
        (Method::Delete, None, None) => return Err(missing("DELETE entry needs Type/id or a condition")),
    };
    let body = match request.method {
        Method::Post | Method::Put => Some(request.resource.clone().unwrap_or(Value::Null)),
        _ => None,
    };
    Ok(Some(WriteEntry {
        resource_type: request.resource_type.clone(),
        change,
        body,
        if_match: request.if_match,
        full_url: request.full_url.clone(),
        index: Some(request.index),
    }))
}

/// Reads `W/"3"`, `"3"` or `3`.
pub fn parse_etag(text: &str) -> Option<i64> {
    text.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}
