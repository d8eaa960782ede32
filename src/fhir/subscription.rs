//! Topic-based subscriptions (Subscriptions R5 Backport IG 1.1.0 for R4) as FHIR knowledge:
//! the topics this server publishes (`conformance/subscription-topics.json`), what a
//! Subscription resource asks for — read and checked against them, each refusal naming its
//! element — and the notification Bundles a subscriber receives. No HTTP, no SQL and no
//! access rule: which events a subscriber may learn of is decided at delivery
//! (`service::subscriptions`).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::outcome::{Issue, IssueCode};

/// The topics, as canonical JSON in the shape of R5's SubscriptionTopic.
const TOPICS_JSON: &str = include_str!("../../conformance/subscription-topics.json");
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
/// A topic filter that is not a search parameter of its type carries the search it stands
/// for (`{value}` replaced by the filter's value).
const FILTER_SEARCH: &str = "https://renraku.example.jp/fhir/StructureDefinition/topic-filter-search";
/// Who a Subscription belongs to, stamped by the server on every write (a client's own value
/// is replaced): the PractitionerRole or Organization its deliveries act for.
pub const OWNER_EXTENSION: &str = "https://renraku.example.jp/fhir/StructureDefinition/subscription-owner";
/// The profile of the SubscriptionStatus Parameters (first entry of every notification).
const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
const NOTIFICATION_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";
/// The generic topic: any type the filter criteria name.
const ANY_RESOURCE: &str = "http://hl7.org/fhir/StructureDefinition/Resource";
/// The longest heartbeat period and delivery timeout a subscription may ask for, in seconds.
const MAX_HEARTBEAT_SECONDS: u64 = 24 * 60 * 60;
const MAX_TIMEOUT_SECONDS: u64 = 60;
/// The most events one notification may carry.
const MAX_COUNT: u64 = 100;

/// One published topic.
#[derive(Debug, Clone)]
pub struct Topic {
    pub url: String,
    /// The type whose changes it follows; `None` for the generic topic (the filter names it).
    pub resource_type: Option<String>,
    /// `create`, `update`, `delete`.
    pub interactions: Vec<String>,
    /// The search every event's focus must match (e.g. the board's categories).
    pub query: Vec<(String, String)>,
    /// The filters a subscription may use: name → the search it stands for (`None`: the
    /// search parameter of that name; `*`: any search parameter of the type).
    pub filters: Vec<(String, Option<String>)>,
}

/// The published topics.
#[derive(Debug, Clone)]
pub struct Topics {
    topics: Vec<Topic>,
    /// The topics as published (for `GET [base]/metadata` and the README).
    pub definitions: Vec<Value>,
}

impl Topics {
    pub fn load() -> std::result::Result<Topics, String> {
        let bundle: Value = serde_json::from_str(TOPICS_JSON).map_err(|e| format!("subscription-topics.json: {e}"))?;
        let mut topics = Vec::new();
        let mut definitions = Vec::new();
        for entry in bundle.get("entry").and_then(Value::as_array).into_iter().flatten() {
            let definition = &entry["resource"];
            let url = definition["url"].as_str().ok_or("a topic without url")?.to_owned();
            let trigger = definition.pointer("/resourceTrigger/0").unwrap_or(&Value::Null);
            let resource = trigger["resource"].as_str().ok_or("a topic without resourceTrigger.resource")?;
            let resource_type = (resource != ANY_RESOURCE).then(|| resource.rsplit('/').next().unwrap_or_default().to_owned());
            let interactions = strings(&trigger["supportedInteraction"]);
            let query = trigger
                .pointer("/queryCriteria/current")
                .and_then(Value::as_str)
                .map(query_pairs)
                .unwrap_or_default();
            let filters = definition["canFilterBy"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|filter| {
                    let name = filter["filterParameter"].as_str()?.to_owned();
                    let search = filter["extension"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|e| e["url"] == FILTER_SEARCH)
                        .and_then(|e| e["valueString"].as_str())
                        .map(str::to_owned);
                    Some((name, search))
                })
                .collect();
            topics.push(Topic { url, resource_type, interactions, query, filters });
            definitions.push(definition.clone());
        }
        Ok(Topics { topics, definitions })
    }

    pub fn get(&self, url: &str) -> Option<&Topic> {
        self.topics.iter().find(|t| t.url == url)
    }

    pub fn urls(&self) -> Vec<&str> {
        self.topics.iter().map(|t| t.url.as_str()).collect()
    }
}

/// `a=1&b=2` as decoded name/value pairs.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

/// How notifications travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Channel {
    /// POSTed to `endpoint` with the subscription's `channel.header`s.
    RestHook { endpoint: String, headers: Vec<(String, String)> },
    /// Sent to the websocket clients bound to the subscription (`$get-ws-binding-token`).
    Websocket,
}

impl Channel {
    pub fn code(&self) -> &'static str {
        match self {
            Channel::RestHook { .. } => "rest-hook",
            Channel::Websocket => "websocket",
        }
    }
}

/// How much of the focus a notification carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Payload {
    Empty,
    IdOnly,
    FullResource,
}

impl Payload {
    pub fn code(self) -> &'static str {
        match self {
            Payload::Empty => "empty",
            Payload::IdOnly => "id-only",
            Payload::FullResource => "full-resource",
        }
    }
}

/// What a Subscription asks for, as the server keeps it (`subscription_state.settings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub topic: String,
    /// The type whose changes are followed.
    pub resource_type: String,
    /// `create`, `update`, `delete`: which of them notify.
    pub interactions: Vec<String>,
    /// The search every focus must match: the topic's own query and the subscription's
    /// filters, as search parameters of `resource_type`.
    pub query: Vec<(String, String)>,
    /// The filters as the subscription wrote them (for `$status` and the README).
    pub filters: Vec<(String, String)>,
    pub channel: Channel,
    pub payload: Payload,
    /// `application/fhir+json` (the only format notifications are sent in).
    pub content_type: String,
    pub heartbeat_seconds: Option<u64>,
    pub timeout_seconds: Option<u64>,
    /// The most events one notification carries.
    pub max_count: Option<u64>,
    /// `Subscription.end`: no notification after it.
    #[serde(default)]
    pub end: Option<String>,
}

fn refuse(message: impl Into<String>, expression: &str) -> Error {
    Error::Unprocessable(vec![Issue::error(IssueCode::NotSupported, message).at(expression)])
}

fn extension<'a>(element: &'a Value, name: &str) -> Option<&'a Value> {
    let url = format!("{BACKPORT}{name}");
    element["extension"].as_array().into_iter().flatten().find(|e| e["url"] == url.as_str())
}

fn unsigned(element: &Value, name: &str, path: &str) -> Result<Option<u64>> {
    let Some(found) = extension(element, name) else { return Ok(None) };
    let value = found.get("valueUnsignedInt").or_else(|| found.get("valuePositiveInt")).and_then(Value::as_u64);
    value.map(Some).ok_or_else(|| refuse(format!("{name} must carry a non-negative integer"), path))
}

/// Reads a Subscription resource against the published topics. Anything the server would
/// not honour — an unknown topic, a filter the topic does not offer, a channel, payload or
/// content type it does not send — is a 422 naming the element, never silently stored.
/// `endpoint_allowed` judges a rest-hook endpoint (scheme and host; its addresses are judged
/// again at every delivery).
pub fn read(topics: &Topics, resource: &Value, endpoint_allowed: impl Fn(&url::Url) -> std::result::Result<(), String>) -> Result<Settings> {
    let criteria = resource["criteria"].as_str().unwrap_or_default();
    let topic = topics.get(criteria).ok_or_else(|| {
        refuse(format!("'{criteria}' is not a topic this server publishes (one of: {})", topics.urls().join(", ")), "Subscription.criteria")
    })?;
    // Filters: `Type?a=1&b=2` or `a=1`, each pair one the topic offers.
    let mut filters = Vec::new();
    let mut resource_type = topic.resource_type.clone();
    let criteria_element = resource.get("_criteria").cloned().unwrap_or(Value::Null);
    for filter in criteria_element.get("extension").and_then(Value::as_array).into_iter().flatten() {
        if filter["url"] != format!("{BACKPORT}backport-filter-criteria").as_str() {
            continue;
        }
        let path = "Subscription.criteria.extension('backport-filter-criteria')";
        let text = filter["valueString"].as_str().ok_or_else(|| refuse("a filter criteria extension must have a valueString", path))?;
        let (named_type, query) = match text.split_once('?') {
            Some((named, query)) => (Some(named.trim()), query),
            None => (None, text),
        };
        if let Some(named) = named_type.filter(|n| !n.is_empty()) {
            match &resource_type {
                Some(known) if known != named => {
                    return Err(refuse(format!("the topic is about {known}, not {named}"), path));
                }
                _ => resource_type = Some(named.to_owned()),
            }
        }
        for (name, value) in query_pairs(query) {
            let base_name = name.split(':').next().unwrap_or_default();
            let offered = topic.filters.iter().any(|(offered, _)| offered == base_name || offered == "*");
            if !offered || (base_name == "_interaction" && topic.resource_type.is_some()) {
                let names: Vec<&str> = topic.filters.iter().map(|(n, _)| n.as_str()).collect();
                return Err(refuse(format!("the topic offers no filter '{name}' (it offers: {})", names.join(", ")), path));
            }
            filters.push((name, value));
        }
    }
    let resource_type = resource_type.ok_or_else(|| {
        refuse("this topic follows the type its filter criteria name: add a backport-filter-criteria such as 'Observation?patient=Patient/123'", "Subscription.criteria")
    })?;
    let mut interactions = topic.interactions.clone();
    let mut query = topic.query.clone();
    for (name, value) in &filters {
        if name == "_interaction" {
            let asked: Vec<String> = value.split(',').map(|v| v.trim().to_owned()).collect();
            if asked.iter().any(|a| !topic.interactions.contains(a)) {
                return Err(refuse(format!("_interaction must be among {}", topic.interactions.join(", ")), "Subscription.criteria.extension('backport-filter-criteria')"));
            }
            interactions = asked;
            continue;
        }
        match topic.filters.iter().find(|(offered, _)| offered == name.split(':').next().unwrap_or_default()) {
            Some((_, Some(search))) => {
                let expanded = search.replace("{value}", value);
                query.extend(query_pairs(&expanded));
            }
            _ => query.push((name.clone(), value.clone())),
        }
    }

    let channel_element = &resource["channel"];
    let channel_type = channel_element["type"].as_str().unwrap_or_default();
    let other_type = channel_element.get("_type").and_then(|t| extension(t, "backport-channel-type")).and_then(|e| e.pointer("/valueCoding/code")).and_then(Value::as_str);
    if let Some(other) = other_type {
        return Err(refuse(format!("the channel type '{other}' is not one this server sends (rest-hook, websocket)"), "Subscription.channel.type"));
    }
    let channel = match channel_type {
        "rest-hook" => {
            let endpoint = channel_element["endpoint"].as_str().unwrap_or_default();
            let parsed = url::Url::parse(endpoint).map_err(|_| refuse("a rest-hook channel needs an absolute endpoint URL", "Subscription.channel.endpoint"))?;
            endpoint_allowed(&parsed).map_err(|why| refuse(why, "Subscription.channel.endpoint"))?;
            let mut headers = Vec::new();
            for (index, header) in channel_element["header"].as_array().into_iter().flatten().enumerate() {
                let path = format!("Subscription.channel.header[{index}]");
                let text = header.as_str().unwrap_or_default();
                let (name, value) = text.split_once(':').ok_or_else(|| refuse("a header is 'Name: value'", &path))?;
                let name = name.trim();
                let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                let value = value.trim();
                if !valid_name || value.bytes().any(|b| b == b'\r' || b == b'\n') {
                    return Err(refuse("a header is 'Name: value' with a token name and a one-line value", &path));
                }
                if ["host", "content-length", "content-type", "transfer-encoding", "connection"].contains(&name.to_ascii_lowercase().as_str()) {
                    return Err(refuse(format!("the header '{name}' is the server's to set"), &path));
                }
                headers.push((name.to_owned(), value.to_owned()));
            }
            Channel::RestHook { endpoint: endpoint.to_owned(), headers }
        }
        "websocket" => {
            if channel_element.get("endpoint").is_some() {
                return Err(refuse("a websocket channel has no endpoint: clients bind with $get-ws-binding-token", "Subscription.channel.endpoint"));
            }
            Channel::Websocket
        }
        other => return Err(refuse(format!("the channel type '{other}' is not one this server sends (rest-hook, websocket)"), "Subscription.channel.type")),
    };
    let content_type = channel_element["payload"].as_str().unwrap_or("application/fhir+json");
    if !matches!(content_type, "application/fhir+json" | "application/json") {
        return Err(refuse(format!("notifications are sent as application/fhir+json, not {content_type}"), "Subscription.channel.payload"));
    }
    let payload_element = channel_element.get("_payload").cloned().unwrap_or(Value::Null);
    let payload = match extension(&payload_element, "backport-payload-content").map(|e| e["valueCode"].as_str().unwrap_or_default()) {
        None | Some("id-only") => Payload::IdOnly,
        Some("empty") => Payload::Empty,
        Some("full-resource") => Payload::FullResource,
        Some(other) => {
            return Err(refuse(format!("the payload content '{other}' is not one of empty, id-only, full-resource"), "Subscription.channel.payload.extension('backport-payload-content')"))
        }
    };
    let heartbeat_seconds = unsigned(channel_element, "backport-heartbeat-period", "Subscription.channel.extension('backport-heartbeat-period')")?;
    if heartbeat_seconds.is_some_and(|h| h == 0 || h > MAX_HEARTBEAT_SECONDS) {
        return Err(refuse(format!("the heartbeat period must be 1 to {MAX_HEARTBEAT_SECONDS} seconds"), "Subscription.channel.extension('backport-heartbeat-period')"));
    }
    let timeout_seconds = unsigned(channel_element, "backport-timeout", "Subscription.channel.extension('backport-timeout')")?;
    if timeout_seconds.is_some_and(|t| t == 0 || t > MAX_TIMEOUT_SECONDS) {
        return Err(refuse(format!("the timeout must be 1 to {MAX_TIMEOUT_SECONDS} seconds"), "Subscription.channel.extension('backport-timeout')"));
    }
    let max_count = unsigned(channel_element, "backport-max-count", "Subscription.channel.extension('backport-max-count')")?;
    if max_count.is_some_and(|m| m == 0 || m > MAX_COUNT) {
        return Err(refuse(format!("the max count must be 1 to {MAX_COUNT}"), "Subscription.channel.extension('backport-max-count')"));
    }
    let end = resource.get("end").and_then(Value::as_str).map(str::to_owned);
    Ok(Settings {
        topic: topic.url.clone(),
        resource_type,
        interactions,
        query,
        filters,
        channel,
        payload,
        content_type: "application/fhir+json".to_owned(),
        heartbeat_seconds,
        timeout_seconds,
        max_count,
        end,
    })
}

/// Stamps who the Subscription belongs to (replacing a client's own value).
pub fn stamp_owner(resource: &mut Value, owner: &str) {
    let Some(object) = resource.as_object_mut() else { return };
    let mut extensions: Vec<Value> = object
        .remove("extension")
        .and_then(|e| e.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["url"] != OWNER_EXTENSION)
        .collect();
    extensions.push(json!({ "url": OWNER_EXTENSION, "valueReference": { "reference": owner } }));
    object.insert("extension".into(), Value::Array(extensions));
}

/// What kind of notification a Bundle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationType {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl NotificationType {
    fn code(self) -> &'static str {
        match self {
            NotificationType::Handshake => "handshake",
            NotificationType::Heartbeat => "heartbeat",
            NotificationType::EventNotification => "event-notification",
            NotificationType::QueryStatus => "query-status",
            NotificationType::QueryEvent => "query-event",
        }
    }
}

/// One event as a notification carries it.
#[derive(Debug, Clone)]
pub struct NotifiedEvent {
    pub number: i64,
    pub timestamp: String,
    /// `Type/id` of the focus.
    pub focus: String,
    /// The interaction that caused it (`create`, `update`, `delete`).
    pub action: String,
    /// The focus as a read returns it now (full-resource only; None for a deletion).
    pub resource: Option<Value>,
}

/// The subscription's state as a notification's status names it.
#[derive(Debug, Clone)]
pub struct StatusOf<'a> {
    pub base_url: &'a str,
    pub subscription: &'a str,
    pub topic: &'a str,
    /// `requested`, `active`, `error`, `off`.
    pub status: &'a str,
    pub events_since_start: i64,
    pub error: Option<&'a str>,
}

/// The SubscriptionStatus (R4: Parameters) of a notification or `$status`.
pub fn status_parameters(status: &StatusOf<'_>, kind: NotificationType, events: &[NotifiedEvent], payload: Payload) -> Value {
    let mut parameters = vec![
        json!({ "name": "subscription", "valueReference": { "reference": format!("{}/Subscription/{}", status.base_url, status.subscription) } }),
        json!({ "name": "topic", "valueCanonical": status.topic }),
        json!({ "name": "status", "valueCode": status.status }),
        json!({ "name": "type", "valueCode": kind.code() }),
        json!({ "name": "events-since-subscription-start", "valueString": status.events_since_start.to_string() }),
    ];
    for event in events {
        let mut parts = vec![
            json!({ "name": "event-number", "valueString": event.number.to_string() }),
            json!({ "name": "timestamp", "valueInstant": event.timestamp }),
        ];
        if payload != Payload::Empty {
            parts.push(json!({ "name": "focus", "valueReference": { "reference": format!("{}/{}", status.base_url, event.focus) } }));
        }
        parameters.push(json!({ "name": "notification-event", "part": parts }));
    }
    if let Some(error) = status.error.filter(|e| !e.is_empty()) {
        parameters.push(json!({ "name": "error", "valueCodeableConcept": { "text": error } }));
    }
    json!({
        "resourceType": "Parameters",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": { "profile": [STATUS_PROFILE] },
        "parameter": parameters
    })
}

/// A notification Bundle (type `history`): the status first, then one entry per event's focus
/// (`id-only`: its URL and the request; `full-resource`: also the resource).
pub fn notification(status: &StatusOf<'_>, kind: NotificationType, events: &[NotifiedEvent], payload: Payload, timestamp: &str) -> Value {
    let status_resource = status_parameters(status, kind, events, payload);
    let status_url = format!("urn:uuid:{}", status_resource.get("id").and_then(Value::as_str).unwrap_or_default());
    let mut entries = vec![json!({
        "fullUrl": status_url,
        "resource": status_resource,
        "request": { "method": "GET", "url": format!("{}/Subscription/{}/$status", status.base_url, status.subscription) },
        "response": { "status": "200" }
    })];
    if payload != Payload::Empty {
        for event in events {
            let (method, code) = match event.action.as_str() {
                "create" => ("POST", "201"),
                "delete" => ("DELETE", "204"),
                _ => ("PUT", "200"),
            };
            let url = match event.action.as_str() {
                "create" => event.focus.split('/').next().unwrap_or_default().to_owned(),
                _ => event.focus.clone(),
            };
            let mut entry = json!({
                "fullUrl": format!("{}/{}", status.base_url, event.focus),
                "request": { "method": method, "url": url },
                "response": { "status": code }
            });
            if payload == Payload::FullResource {
                if let Some(resource) = &event.resource {
                    crate::fhir::set(&mut entry, "resource", resource.clone());
                }
            }
            entries.push(entry);
        }
    }
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": { "profile": [NOTIFICATION_PROFILE] },
        "type": "history",
        "timestamp": timestamp,
        "entry": entries
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(criteria: &str, filters: &[&str], channel: Value) -> Value {
        let filters: Vec<Value> =
            filters.iter().map(|f| json!({ "url": format!("{BACKPORT}backport-filter-criteria"), "valueString": f })).collect();
        json!({ "resourceType": "Subscription", "status": "requested", "reason": "test", "criteria": criteria,
                "_criteria": { "extension": filters }, "channel": channel })
    }

    fn expression(result: Result<Settings>) -> String {
        match result {
            Err(Error::Unprocessable(issues)) => issues.first().and_then(|i| i.expression.first().cloned()).unwrap_or_default(),
            other => format!("not refused: {other:?}"),
        }
    }

    #[test]
    fn topics_load_and_filters_become_searches() -> std::result::Result<(), String> {
        let topics = Topics::load()?;
        let board = "https://renraku.example.jp/fhir/SubscriptionTopic/board-message";
        let hook = json!({ "type": "rest-hook", "endpoint": "https://ehr.example.jp/hook", "payload": "application/fhir+json",
                           "header": ["Authorization: Bearer x"] });
        let settings = read(&topics, &subscription(board, &["Communication?subject=Patient/p1&sender-municipality=202096"], hook.clone()), |_| Ok(()))
            .map_err(|e| format!("{e:?}"))?;
        assert_eq!(settings.resource_type, "Communication");
        assert_eq!(settings.payload, Payload::IdOnly);
        assert!(settings.query.contains(&("subject".to_owned(), "Patient/p1".to_owned())));
        assert!(settings.query.iter().any(|(name, value)| name == "sender:PractitionerRole._tag" && value.ends_with("|202096")));
        assert_eq!(settings.channel, Channel::RestHook { endpoint: "https://ehr.example.jp/hook".into(), headers: vec![("Authorization".into(), "Bearer x".into())] });

        assert_eq!(expression(read(&topics, &subscription("https://example.org/nope", &[], hook.clone()), |_| Ok(()))), "Subscription.criteria");
        assert_eq!(
            expression(read(&topics, &subscription(board, &["code=1"], hook.clone()), |_| Ok(()))),
            "Subscription.criteria.extension('backport-filter-criteria')"
        );
        let generic = "https://renraku.example.jp/fhir/SubscriptionTopic/resource-changed";
        assert_eq!(expression(read(&topics, &subscription(generic, &[], hook.clone()), |_| Ok(()))), "Subscription.criteria");
        let email = json!({ "type": "email", "endpoint": "mailto:a@example.jp" });
        assert_eq!(expression(read(&topics, &subscription(board, &[], email), |_| Ok(()))), "Subscription.channel.type");
        assert_eq!(expression(read(&topics, &subscription(board, &[], hook), |_| Err("no".into()))), "Subscription.channel.endpoint");
        Ok(())
    }
}
