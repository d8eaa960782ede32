//! The audit trail: what is recorded of every interaction, and how it becomes an AuditEvent.
//! Security-sensitive: the trail is the evidence of who saw which person's information.
//!
//! Every request that touches data or security produces one [`Event`] (plus, where the data
//! of a person of another municipality left its municipality, one disclosure event in that
//! municipality's chain). Events are shaped after IHE Basic Audit Log Patterns (BALP) and
//! appended as AuditEvents to their municipality's hash chain ([`chain`]) in the journal —
//! for writes queued by `store::audit::append` in the write's own transaction and chained
//! moments later by `store::audit::chain_queued`, for reads through the runtime's
//! group-commit `Recorder` before the response leaves — with
//! its link in the journal (`audit_log`: sequence, predecessor, digest) and, on SQLite, as an
//! ordinary AuditEvent resource row with its narrow search index at once; on PostgreSQL the
//! journal row carries the JSON until `store::audit::project_journaled` writes the resource
//! rows — fed by the recorder's projector, or by `project_pending` from the journal
//! (`store::audit::insert_events` says why).
//!
//! Architecture invariants:
//! - No HTTP, no SQL and no access decisions here: this module renders and chains what the
//!   service tells it; the store writes it.
//! - `store::audit::append_prepared` (behind the recorder and `chain_queued`) is the only
//!   code that chains events, and `project_journaled` the only other code that writes
//!   AuditEvent resource rows (for journal rows that carry the JSON); nothing updates or
//!   deletes either except retention pruning (`service::audit`), which keeps the chain
//!   verifiable.

use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::identity::{Actor, Principal};
use crate::search::IndexEntry;

pub mod chain;
mod json;

/// The chain of events that belong to no municipality (adding a municipality, rotating the
/// signing keys, requests to an unknown base).
pub const SERVER_CHAIN: &str = "_server";

/// Our code system for the subtypes FHIR and DICOM have no code for (token events,
/// administration, retention).
pub const SUBTYPE_SYSTEM: &str = "https://renraku.example.jp/fhir/CodeSystem/audit-event-subtype";
/// The extension carrying an event's place in its chain: its sequence number and the digest
/// of its predecessor.
pub const CHAIN_EXTENSION: &str = "https://renraku.example.jp/fhir/StructureDefinition/audit-chain";
/// The extension on an agent naming the municipality it acts from (全国地方公共団体コード).
pub const MUNICIPALITY_EXTENSION: &str = "https://renraku.example.jp/fhir/StructureDefinition/audit-agent-municipality";
/// The identifier system of OAuth client ids in agents.
pub const CLIENT_ID_SYSTEM: &str = "https://renraku.example.jp/fhir/sid/oauth-client";
/// The identifier system of administrators' and auditors' user names in agents.
pub const USER_SYSTEM: &str = "https://renraku.example.jp/fhir/sid/user";

const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const LIFECYCLE: &str = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle";
const ENTITY_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";
const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const SECURITY_ROLE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const PURPOSE_OF_USE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The CRUDE letter of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Read,
    Update,
    Delete,
    Execute,
}

impl Action {
    pub fn code(self) -> &'static str {
        match self {
            Action::Create => "C",
            Action::Read => "R",
            Action::Update => "U",
            Action::Delete => "D",
            Action::Execute => "E",
        }
    }
}

/// How the request ended (FHIR R4 `audit-event-outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused or invalid: the client's request did not succeed (denials included).
    MinorFailure,
    /// The server failed.
    SeriousFailure,
}

impl Outcome {
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::MinorFailure => "4",
            Outcome::SeriousFailure => "8",
        }
    }

    /// The outcome and the description recorded for a failed request. Internal detail is
    /// recorded (the trail is not shown to clients), denials are marked as such.
    pub fn of_error(error: &Error) -> (Outcome, String) {
        match error {
            Error::Internal(detail) => (Outcome::SeriousFailure, format!("server error: {detail}")),
            Error::BadGateway(detail) => (Outcome::SeriousFailure, format!("upstream failure: {detail}")),
            Error::Unauthorized(reason) => (Outcome::MinorFailure, format!("denied (401): {reason}")),
            Error::Forbidden(reason) => (Outcome::MinorFailure, format!("denied (403): {reason}")),
            other => (Outcome::MinorFailure, format!("{} {}", other.status().as_u16(), other)),
        }
    }
}

/// What kind of event: its AuditEvent `type` and `subtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A FHIR RESTful interaction; the subtype is its `restful-interaction` code (`read`,
    /// `search-type`, `transaction`, …) or an operation name (`$everything`).
    Rest(&'static str),
    /// Sign-in and tokens: `login` (DICOM user authentication), `token-issue`,
    /// `token-refresh`, `token-revoke`, `token-introspect`.
    Security(&'static str),
    /// Administration outside the FHIR API: `tenant-add`, `client-register`,
    /// `client-remove`, `signing-key-rotate`, `audit-prune`.
    Administration(&'static str),
    /// A privacy disclosure recorded at the source: a person's data returned to (or written
    /// by) an actor of another municipality. The inner code is the interaction's subtype.
    Disclosure(&'static str),
}

/// A coding of an event's type or subtype.
struct Coding {
    system: &'static str,
    code: &'static str,
    display: String,
}

impl Coding {
    fn new(system: &'static str, code: &'static str, display: impl Into<String>) -> Coding {
        Coding { system, code, display: display.into() }
    }

    fn to_value(&self) -> Value {
        json!({ "system": self.system, "code": self.code, "display": self.display })
    }
}

impl EventType {
    /// The event's type and its subtypes.
    fn codings(self) -> (Coding, Vec<Coding>) {
        match self {
            EventType::Rest(subtype) => {
                let subtype = if subtype.starts_with('$') {
                    Coding::new(SUBTYPE_SYSTEM, subtype, format!("operation {subtype}"))
                } else {
                    Coding::new(RESTFUL_INTERACTION, subtype, subtype)
                };
                (Coding::new(AUDIT_EVENT_TYPE, "rest", "RESTful Operation"), vec![subtype])
            }
            EventType::Security(subtype) => {
                let subtype = if subtype == "login" { Coding::new(DICOM, "110122", "Login") } else { Coding::new(SUBTYPE_SYSTEM, subtype, subtype) };
                (Coding::new(DICOM, "110114", "User Authentication"), vec![subtype])
            }
            EventType::Administration(subtype) => {
                (Coding::new(DICOM, "110100", "Application Activity"), vec![Coding::new(SUBTYPE_SYSTEM, subtype, subtype)])
            }
            EventType::Disclosure(interaction) => (
                Coding::new(DICOM, "110106", "Export"),
                vec![
                    Coding::new(LIFECYCLE, "disclose", "Disclose Record Lifecycle Event"),
                    Coding::new(RESTFUL_INTERACTION, interaction, interaction),
                ],
            ),
        }
    }

    fn render(self) -> (Value, Value) {
        let (event_type, subtypes) = self.codings();
        (event_type.to_value(), Value::Array(subtypes.iter().map(Coding::to_value).collect()))
    }

    pub fn is_disclosure(self) -> bool {
        matches!(self, EventType::Disclosure(_))
    }
}

/// Who acted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agent {
    /// The FHIR resources acting, most specific first (Practitioner, PractitionerRole,
    /// Organization); the first is the requestor.
    pub references: Vec<String>,
    /// A name for actors without a FHIR resource (administrators, auditors, the operator,
    /// anonymous callers).
    pub name: String,
    /// An administrator's or auditor's user name.
    pub user: Option<String>,
    /// The municipality (slug) the actor acts from.
    pub municipality: Option<String>,
    /// The OAuth client the request came through.
    pub client_id: Option<String>,
    /// The network address the request came from.
    pub address: Option<String>,
    /// Whether the requestor is software acting on its own (a backend-services client), not
    /// a person: its agent type is DICOM's Application, not a human user.
    pub application: bool,
}

impl Agent {
    /// The agent of a request made with `principal` from `address`.
    pub fn of(principal: &Principal, address: Option<&str>) -> Agent {
        let mut agent = Agent { address: address.map(str::to_owned), ..Agent::default() };
        match principal {
            Principal::Anonymous => agent.name = "anonymous (no valid access token)".into(),
            Principal::Operator => agent.name = "operator (Renraku command line or demo seed)".into(),
            Principal::Authenticated(authenticated) => {
                agent.client_id = Some(authenticated.client_id.clone()).filter(|c| !c.is_empty());
                agent.municipality = authenticated.actor.tenant().map(str::to_owned);
                match &authenticated.actor {
                    Actor::Practitioner { practitioner, role, organization, .. } => {
                        agent.references = vec![
                            format!("Practitioner/{practitioner}"),
                            format!("PractitionerRole/{role}"),
                            format!("Organization/{organization}"),
                        ];
                    }
                    Actor::System { client, organization, .. } => {
                        agent.references = vec![format!("Organization/{organization}")];
                        agent.name = format!("system client {client}");
                        agent.application = true;
                    }
                    Actor::MunicipalAdmin { user, .. } => {
                        agent.name = format!("municipal administrator {user}");
                        agent.user = Some(user.clone());
                    }
                    Actor::MunicipalAuditor { user, .. } => {
                        agent.name = format!("municipal auditor {user}");
                        agent.user = Some(user.clone());
                    }
                    Actor::ServerAdmin { user } => {
                        agent.name = format!("server administrator {user}");
                        agent.user = Some(user.clone());
                    }
                    #[cfg(feature = "test-support")]
                    Actor::TestUnrestricted => agent.name = "test suite (unrestricted)".into(),
                }
            }
        }
        agent
    }
}

/// Something an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    /// A person whose data was touched (`Patient/id`).
    Patient(String),
    /// A resource read, written or returned (`Type/id` or `Type/id/_history/v`).
    Resource(String),
    /// The search or operation query as sent.
    Query(String),
    /// The wide-area agreement a disclosure rested on (`Contract/id`).
    Agreement(String),
    /// The person's consent a disclosure rested on (`Consent/id`).
    Consent(String),
    /// A named detail (an OAuth client, a municipality added, an exported file's digest).
    Detail { name: String, value: String },
}

/// One thing that happened, before it has a place in a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The chain (municipality slug, or [`SERVER_CHAIN`]) that records the event.
    pub chain: String,
    pub event_type: EventType,
    pub action: Action,
    pub outcome: Outcome,
    pub outcome_description: Option<String>,
    /// The server clock's time, UTC, fixed-width (`YYYY-MM-DDTHH:MM:SS.ffffffZ`).
    pub recorded: String,
    pub agent: Agent,
    /// The base (municipality slug) the request arrived at.
    pub site: String,
    pub request_id: String,
    /// A v3 PurposeOfUse code the client declared (`X-Purpose-Of-Use`).
    pub purpose_of_use: Option<String>,
    pub entities: Vec<Entity>,
}

impl Event {
    /// The patients this event names.
    pub fn patients(&self) -> impl Iterator<Item = &str> {
        self.entities.iter().filter_map(|e| match e {
            Entity::Patient(reference) => reference.strip_prefix("Patient/"),
            _ => None,
        })
    }

    /// The AuditEvent resource for this event at `sequence` in its chain after a predecessor
    /// whose digest is `previous`. `owner` is the chain municipality's (code, name), for the
    /// ownership tag every resource carries.
    pub fn to_resource(&self, id: &str, sequence: i64, previous: &str, owner: Option<(&str, &str)>, names: &dyn Fn(&str) -> Option<(String, String)>) -> Value {
        let (event_type, subtype) = self.event_type.render();
        let mut meta = json!({ "versionId": "1", "lastUpdated": self.recorded });
        if let Some((code, name)) = owner {
            crate::fhir::set(&mut meta, "tag", json!([{ "system": crate::fhir::MUNICIPALITY_TAG_SYSTEM, "code": code, "display": name }]));
        }
        let mut resource = Map::new();
        resource.insert("resourceType".into(), json!("AuditEvent"));
        resource.insert("id".into(), json!(id));
        resource.insert("meta".into(), meta);
        resource.insert(
            "extension".into(),
            json!([{
                "url": CHAIN_EXTENSION,
                "extension": [
                    { "url": "chain", "valueString": self.chain },
                    { "url": "sequence", "valueInteger": sequence },
                    { "url": "previous", "valueString": previous }
                ]
            }]),
        );
        resource.insert("type".into(), event_type);
        resource.insert("subtype".into(), subtype);
        resource.insert("action".into(), json!(self.action.code()));
        resource.insert("recorded".into(), json!(self.recorded));
        resource.insert("outcome".into(), json!(self.outcome.code()));
        if let Some(description) = &self.outcome_description {
            resource.insert("outcomeDesc".into(), json!(description));
        }
        if let Some(purpose) = &self.purpose_of_use {
            resource.insert("purposeOfEvent".into(), json!([{ "coding": [{ "system": PURPOSE_OF_USE, "code": purpose }] }]));
        }
        resource.insert("agent".into(), Value::Array(self.render_agents(names)));
        resource.insert(
            "source".into(),
            json!({
                "site": self.site,
                "observer": { "display": format!("Renraku FHIR gateway ({})", self.site) },
                "type": [{ "system": SOURCE_TYPE, "code": "4", "display": "Application Server" }]
            }),
        );
        let mut entities: Vec<Value> = vec![json!({
            "what": { "identifier": { "value": self.request_id } },
            "type": { "system": BALP_ENTITY_TYPE, "code": "XrequestId", "display": "X-Request-Id" }
        })];
        entities.extend(self.entities.iter().map(render_entity));
        resource.insert("entity".into(), Value::Array(entities));
        Value::Object(resource)
    }

    fn render_agents(&self, names: &dyn Fn(&str) -> Option<(String, String)>) -> Vec<Value> {
        let agent = &self.agent;
        let mut requestor = Map::new();
        let requestor_type = if agent.application {
            json!({ "coding": [{ "system": DICOM, "code": "110150", "display": "Application" }] })
        } else {
            json!({ "coding": [{ "system": SECURITY_ROLE_TYPE, "code": "humanuser", "display": "human user" }] })
        };
        requestor.insert("type".into(), requestor_type);
        match agent.references.first() {
            Some(reference) => requestor.insert("who".into(), json!({ "reference": reference })),
            None => requestor.insert("who".into(), json!({ "display": agent.name })),
        };
        if let Some(user) = &agent.user {
            requestor.insert("altId".into(), json!(user));
            requestor.insert("name".into(), json!(agent.name));
        }
        requestor.insert("requestor".into(), json!(true));
        if let Some(address) = &agent.address {
            requestor.insert("network".into(), json!({ "address": address, "type": "2" }));
        }
        if let Some((code, name)) = agent.municipality.as_deref().and_then(names) {
            requestor.insert(
                "extension".into(),
                json!([{ "url": MUNICIPALITY_EXTENSION, "valueCoding": { "system": crate::fhir::MUNICIPALITY_TAG_SYSTEM, "code": code, "display": name } }]),
            );
        }
        let mut agents = vec![Value::Object(requestor)];
        for reference in agent.references.iter().skip(1) {
            agents.push(json!({ "who": { "reference": reference }, "requestor": false }));
        }
        if let Some(client_id) = &agent.client_id {
            agents.push(json!({
                "type": { "coding": [{ "system": DICOM, "code": "110150", "display": "Application" }] },
                "who": { "identifier": { "system": CLIENT_ID_SYSTEM, "value": client_id } },
                "requestor": false
            }));
        }
        agents
    }

    /// The search index entries of the event's AuditEvent, made from the event itself: the
    /// entries [`crate::search::Registry::extract`] finds in [`Event::to_resource`]'s JSON with
    /// the server's own AuditEvent parameters (`conformance/capabilitystatement-narrow-indexes.json`:
    /// action, agent, date, entity, outcome, patient, subtype, type), sorted and without
    /// repeats as it returns them — a test holds the two equal for every kind of event.
    /// Walking the JSON tree with the parameters' paths was a tenth of an audited read's work
    /// in the gateway. The recorder uses this only while the registry's AuditEvent parameters
    /// are those definitions (`Registry::has_builtin_params`).
    pub fn index_entries(&self) -> Vec<IndexEntry> {
        // Built kind by kind in `IndexEntry::order`'s order (tokens, references, the date),
        // each kind sorted on its own: a search's event names each person twice (the resource
        // returned and its person), so its references are compared as slices of the event and
        // made into entries once each.
        let (event_type, subtypes) = self.event_type.codings();
        let mut tokens: Vec<(&str, &str, &str, &str)> = vec![("action", "", self.action.code(), ""), ("outcome", "", self.outcome.code(), "")];
        let texts: Vec<String> = std::iter::once(&event_type).chain(&subtypes).map(|coding| crate::fhir::text::normalize(&coding.display)).collect();
        for ((param, coding), text) in std::iter::once(("type", &event_type)).chain(subtypes.iter().map(|coding| ("subtype", coding))).zip(&texts) {
            tokens.push((param, coding.system, coding.code, text));
        }
        tokens.sort_unstable();
        tokens.dedup();
        // A `who` or `what` that is a reference: the parameter's entry, and `patient`'s where
        // it points at a Patient (`where(resolve() is Patient)`); an identifier: the
        // parameter's entry with the identifier's system and value.
        let mut references: Vec<[&str; 6]> = Vec::new();
        let entity_references = self.entities.iter().filter_map(|entity| match entity {
            Entity::Patient(what) | Entity::Resource(what) | Entity::Agreement(what) | Entity::Consent(what) => Some(("entity", what.as_str())),
            Entity::Query(_) | Entity::Detail { .. } => None,
        });
        for (param, reference) in self.agent.references.iter().map(|who| ("agent", who.as_str())).chain(entity_references) {
            if reference.is_empty() {
                continue;
            }
            let (target_type, target_id, url) = crate::fhir::references::reference_parts(reference);
            if target_type == "Patient" {
                references.push(["patient", target_type, target_id, url, "", ""]);
            }
            references.push([param, target_type, target_id, url, "", ""]);
        }
        if let Some(client_id) = self.agent.client_id.as_deref().filter(|c| !c.is_empty()) {
            references.push(["agent", "", "", "", CLIENT_ID_SYSTEM, client_id]);
        }
        if !self.request_id.is_empty() {
            references.push(["entity", "", "", "", "", &self.request_id]);
        }
        references.sort_unstable();
        references.dedup();
        let mut entries = Vec::with_capacity(tokens.len() + references.len() + 1);
        entries.extend(tokens.into_iter().map(|(param, system, code, text)| IndexEntry::Token {
            param: param.to_owned(),
            system: system.to_owned(),
            code: code.to_owned(),
            text: text.to_owned(),
        }));
        entries.extend(references.into_iter().map(|[param, target_type, target_id, url, identifier_system, identifier_value]| IndexEntry::Reference {
            param: param.to_owned(),
            target_type: target_type.to_owned(),
            target_id: target_id.to_owned(),
            url: url.to_owned(),
            identifier_system: identifier_system.to_owned(),
            identifier_value: identifier_value.to_owned(),
        }));
        if let Some((low, high)) = crate::fhir::dates::precision_range(&self.recorded) {
            entries.push(IndexEntry::Date {
                param: "date".to_owned(),
                low: crate::fhir::dates::format_instant(low),
                high: crate::fhir::dates::format_instant(high),
            });
        }
        entries
    }
}

fn render_entity(entity: &Entity) -> Value {
    let resource_type_of = |reference: &str| reference.split('/').next().unwrap_or_default().to_owned();
    match entity {
        Entity::Patient(reference) => json!({
            "what": { "reference": reference },
            "type": { "system": ENTITY_TYPE, "code": "1", "display": "Person" },
            "role": { "system": ENTITY_ROLE, "code": "1", "display": "Patient" }
        }),
        Entity::Resource(reference) => json!({
            "what": { "reference": reference },
            "type": { "system": RESOURCE_TYPES, "code": resource_type_of(reference) },
            "role": { "system": ENTITY_ROLE, "code": "4", "display": "Domain Resource" }
        }),
        Entity::Query(query) => {
            use base64::Engine as _;
            json!({
                "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
                "role": { "system": ENTITY_ROLE, "code": "24", "display": "Query" },
                "description": query,
                "query": base64::engine::general_purpose::STANDARD.encode(query.as_bytes())
            })
        }
        Entity::Agreement(reference) => json!({
            "what": { "reference": reference },
            "type": { "system": RESOURCE_TYPES, "code": "Contract" },
            "role": { "system": ENTITY_ROLE, "code": "13", "display": "Security Resource" },
            "description": "the wide-area agreement (広域連携協定) the disclosure rests on"
        }),
        Entity::Consent(reference) => json!({
            "what": { "reference": reference },
            "type": { "system": RESOURCE_TYPES, "code": "Consent" },
            "role": { "system": ENTITY_ROLE, "code": "13", "display": "Security Resource" },
            "description": "the person's consent the disclosure rests on"
        }),
        Entity::Detail { name, value } => json!({
            "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
            "name": name,
            "description": value
        }),
    }
}

/// An event rendered as its AuditEvent JSON before it has a place in its chain: the text
/// on either side of the `audit-chain` extension's sequence and predecessor, which only the
/// chain's appender knows. Rendering (and indexing) happens in the request that produced
/// the event, in parallel with other requests; the appender, which every event of a chain
/// passes through one at a time, only fills in the two values, hashes and stores.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub chain: String,
    pub id: String,
    pub recorded: String,
    /// The JSON up to where the chain extension's `sequence` entry begins.
    head: String,
    /// The JSON after the chain extension's `previous` entry.
    tail: String,
}

/// The chain extension's `sequence` and `previous` entries as `serde_json` writes them for
/// sequence 0 and an empty predecessor (JSON strings cannot contain an unescaped `"`, so this
/// text occurs only as the extension itself).
const CHAIN_PLACEHOLDER: &str = r#"{"url":"sequence","valueInteger":0},{"url":"previous","valueString":""}"#;

impl Rendered {
    /// Renders `event` with a new time-ordered id (UUID version 7: inserts into every
    /// (resource_type, id) index land at the index's right edge), written without a JSON tree
    /// (`Event::to_json`).
    pub fn new(event: &Event, owner: Option<(&str, &str)>, names: &dyn Fn(&str) -> Option<(String, String)>) -> Result<Rendered, Error> {
        let id = uuid::Uuid::now_v7().to_string();
        let text = event.to_json(&id, 0, "", owner, names)?;
        Rendered::unchained_from(event.chain.clone(), id, event.recorded.clone(), &text)
    }

    /// The event again from its [`Rendered::unchained`] text (as queued for the chainer).
    pub fn unchained_from(chain: String, id: String, recorded: String, text: &str) -> Result<Rendered, Error> {
        let at = text.find(CHAIN_PLACEHOLDER).ok_or_else(|| Error::internal("the audit chain extension is missing from a rendered event"))?;
        let (head, rest) = text.split_at(at);
        let tail = rest.get(CHAIN_PLACEHOLDER.len()..).unwrap_or_default();
        Ok(Rendered { chain, id, recorded, head: head.to_owned(), tail: tail.to_owned() })
    }

    /// The AuditEvent JSON before it has a place in its chain: sequence 0, no predecessor.
    pub fn unchained(&self) -> String {
        [self.head.as_str(), CHAIN_PLACEHOLDER, self.tail.as_str()].concat()
    }

    /// The AuditEvent JSON at `sequence` after a predecessor whose digest is `previous` —
    /// the same text as `serde_json::to_string(&event.to_resource(id, sequence, previous, …))`.
    pub fn content(&self, sequence: i64, previous: &str) -> String {
        // Digests are lowercase hexadecimal: nothing to escape.
        let mut content = String::with_capacity(self.head.len() + self.tail.len() + previous.len() + 96);
        content.push_str(&self.head);
        content.push_str(r#"{"url":"sequence","valueInteger":"#);
        content.push_str(&sequence.to_string());
        content.push_str(r#"},{"url":"previous","valueString":""#);
        content.push_str(previous);
        content.push_str(r#""}"#);
        content.push_str(&self.tail);
        content
    }
}

/// An event with its place in the chain, ready to store.
#[derive(Debug, Clone)]
pub struct Chained {
    pub chain: String,
    pub seq: i64,
    pub id: String,
    pub recorded: String,
    pub previous: String,
    pub digest: String,
    pub content: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            chain: "ina".into(),
            event_type: EventType::Rest("read"),
            action: Action::Read,
            outcome: Outcome::Success,
            outcome_description: None,
            recorded: "2026-12-05T04:00:00.000000Z".into(),
            agent: Agent {
                references: vec!["PractitionerRole/r1".into(), "Organization/o1".into()],
                name: "田中 \"一郎\" {\"url\":\"sequence\"}".into(),
                user: Some("tanaka".into()),
                municipality: Some("ina".into()),
                client_id: Some("app".into()),
                address: Some("127.0.0.1".into()),
                application: false,
            },
            site: "ina".into(),
            request_id: "req-1".into(),
            purpose_of_use: Some("TREAT".into()),
            entities: vec![Entity::Patient("Patient/p1".into()), Entity::Query("family=\"x\"".into())],
        }
    }

    #[test]
    fn a_rendered_event_takes_its_place_in_the_chain_as_the_full_rendering_would() {
        let names = |slug: &str| (slug == "ina").then(|| ("202096".to_owned(), "伊那市".to_owned()));
        let event = event();
        let rendered = Rendered::new(&event, Some(("202096", "伊那市")), &names).unwrap();
        let unchained: Value = serde_json::from_str(&rendered.unchained()).unwrap();
        assert_eq!(unchained.pointer("/extension/0/extension/1/valueInteger"), Some(&json!(0)));
        for (sequence, previous) in [(1, chain::GENESIS.to_owned()), (123_456_789, "ab".repeat(32))] {
            let whole = event.to_resource(&rendered.id, sequence, &previous, Some(("202096", "伊那市")), &names);
            assert_eq!(rendered.content(sequence, &previous), serde_json::to_string(&whole).unwrap());
        }
    }

    #[test]
    fn an_events_json_and_index_entries_are_its_resources_as_the_tree_and_the_registry_make_them() {
        let registry = crate::search::Registry::load(&[]).unwrap();
        assert!(registry.has_builtin_params("AuditEvent"));
        let names = |slug: &str| (slug == "ina").then(|| ("202096".to_owned(), "伊那市".to_owned()));
        let types = [
            EventType::Rest("read"),
            EventType::Rest("search-type"),
            EventType::Rest("$everything"),
            EventType::Security("login"),
            EventType::Security("token-issue"),
            EventType::Administration("tenant-add"),
            EventType::Disclosure("vread"),
        ];
        let actions = [Action::Create, Action::Read, Action::Update, Action::Delete, Action::Execute];
        let outcomes = [Outcome::Success, Outcome::MinorFailure, Outcome::SeriousFailure];
        let practitioner = event().agent;
        let agents = [
            Agent {
                references: vec!["Practitioner/d1".into(), "PractitionerRole/r1".into(), "Organization/o1".into()],
                ..practitioner.clone()
            },
            Agent { references: vec!["Organization/hospital".into()], name: "system client ehr".into(), client_id: Some("ehr".into()), application: true, ..Agent::default() },
            Agent { name: "municipal auditor a".into(), user: Some("a".into()), municipality: Some("ina".into()), client_id: Some(String::new()), ..Agent::default() },
            Agent { references: vec!["Patient/self".into()], client_id: Some("patient-app".into()), ..Agent::default() },
            Agent { name: "anonymous (no valid access token)".into(), ..Agent::default() },
        ];
        let entities = [
            vec![],
            vec![Entity::Resource("Patient/p1/_history/3".into()), Entity::Patient("Patient/p1".into())],
            vec![
                Entity::Query("family=山田&_count=20".into()),
                Entity::Resource("Communication/c1/_history/1".into()),
                Entity::Patient("Patient/p2".into()),
                Entity::Resource("Patient/p3/_history/1".into()),
                Entity::Patient("Patient/p3".into()),
                Entity::Agreement("Contract/k1".into()),
                Entity::Consent("Consent/c9".into()),
                Entity::Detail { name: "client".into(), value: "app".into() },
                Entity::Resource("https://other.example.jp/fhir/Patient/x1".into()),
                Entity::Resource(String::new()),
            ],
        ];
        let mut checked = 0;
        for (n, event_type) in types.into_iter().enumerate() {
            for (m, agent) in agents.iter().enumerate() {
                for (k, entities) in entities.iter().enumerate() {
                    let event = Event {
                        event_type,
                        action: actions[(n + m) % actions.len()],
                        outcome: outcomes[(n + k) % outcomes.len()],
                        outcome_description: (k == 1).then(|| "denied".to_owned()),
                        recorded: format!("2026-12-0{}T0{}:00:00.{:06}Z", 1 + n % 9, m, k * 1234),
                        agent: agent.clone(),
                        request_id: if (n + m + k) % 4 == 0 { String::new() } else { format!("req-{n}{m}{k}") },
                        entities: entities.clone(),
                        ..event()
                    };
                    let owner = (k != 1).then_some(("202096", "伊那市"));
                    let resource = event.to_resource("e1", 7, chain::GENESIS, owner, &names);
                    assert_eq!(event.index_entries(), registry.extract(&resource), "{event:?}");
                    assert_eq!(event.to_json("e1", 7, chain::GENESIS, owner, &names).unwrap(), serde_json::to_string(&resource).unwrap());
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 7 * 5 * 3);
    }

    #[test]
    fn a_backend_services_client_is_recorded_as_an_application_and_a_person_as_a_human_user() {
        let mut event = event();
        let requestor_type = |event: &Event| {
            let resource = event.to_resource("e1", 1, chain::GENESIS, None, &|_: &str| None);
            resource.pointer("/agent/0/type/coding/0/code").and_then(Value::as_str).map(str::to_owned)
        };
        assert_eq!(requestor_type(&event).as_deref(), Some("humanuser"));
        event.agent = Agent {
            references: vec!["Organization/hospital".into()],
            name: "system client ehr".into(),
            client_id: Some("ehr".into()),
            municipality: Some("ina".into()),
            application: true,
            ..Agent::default()
        };
        assert_eq!(requestor_type(&event).as_deref(), Some("110150"));
    }
}
