//! An event's AuditEvent JSON written straight from the event (`Event::to_json`), without
//! building the `serde_json::Value` tree that `Event::to_resource` builds: the same text as
//! `serde_json::to_string(&event.to_resource(…))`, field for field in the same order (a test
//! holds the two equal for every kind of event). `to_resource` stays the readable definition
//! of the shape; this is what the recorder renders every read's event with.

use serde::Serialize;

use super::*;

#[derive(Serialize)]
struct CodingJson<'a> {
    system: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

fn coding<'a>(system: &'a str, code: &'a str, display: &'a str) -> CodingJson<'a> {
    CodingJson { system, code, display: Some(display) }
}

#[derive(Serialize)]
struct Concept<'a> {
    coding: [CodingJson<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditEventJson<'a> {
    resource_type: &'static str,
    id: &'a str,
    meta: Meta<'a>,
    extension: [ChainExtension<'a>; 1],
    #[serde(rename = "type")]
    event_type: CodingJson<'a>,
    subtype: Vec<CodingJson<'a>>,
    action: &'static str,
    recorded: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome_desc: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purpose_of_event: Option<[PurposeCoding<'a>; 1]>,
    agent: Vec<AgentJson<'a>>,
    source: Source<'a>,
    entity: Vec<EntityJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta<'a> {
    version_id: &'static str,
    last_updated: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<[CodingJson<'a>; 1]>,
}

#[derive(Serialize)]
struct ChainExtension<'a> {
    url: &'static str,
    extension: (StringEntry<'a>, IntegerEntry, StringEntry<'a>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StringEntry<'a> {
    url: &'static str,
    value_string: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IntegerEntry {
    url: &'static str,
    value_integer: i64,
}

#[derive(Serialize)]
struct PurposeCoding<'a> {
    coding: [PurposeCode<'a>; 1],
}

#[derive(Serialize)]
struct PurposeCode<'a> {
    system: &'static str,
    code: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentJson<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    agent_type: Option<Concept<'a>>,
    who: Who<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alt_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    requestor: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<Network<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extension: Option<[MunicipalityExtension<'a>; 1]>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Who<'a> {
    Reference(&'a str),
    Display(&'a str),
    Identifier(Identifier<'a>),
}

#[derive(Serialize)]
struct Identifier<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    value: &'a str,
}

#[derive(Serialize)]
struct Network<'a> {
    address: &'a str,
    #[serde(rename = "type")]
    network_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MunicipalityExtension<'a> {
    url: &'static str,
    value_coding: CodingJson<'a>,
}

#[derive(Serialize)]
struct Source<'a> {
    site: &'a str,
    observer: Observer,
    #[serde(rename = "type")]
    source_type: [CodingJson<'static>; 1],
}

#[derive(Serialize)]
struct Observer {
    display: String,
}

#[derive(Serialize)]
struct EntityJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    what: Option<Who<'a>>,
    #[serde(rename = "type")]
    entity_type: CodingJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<CodingJson<'static>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<String>,
}

/// An agent other than the requestor.
fn other(who: Who<'_>) -> AgentJson<'_> {
    AgentJson { agent_type: None, who, alt_id: None, name: None, requestor: false, network: None, extension: None }
}

impl Event {
    /// `serde_json::to_string(&self.to_resource(id, sequence, previous, owner, names))`,
    /// written without the JSON tree (see the module's documentation).
    pub fn to_json(&self, id: &str, sequence: i64, previous: &str, owner: Option<(&str, &str)>, names: &dyn Fn(&str) -> Option<(String, String)>) -> Result<String, Error> {
        let (event_type, subtypes) = self.event_type.codings();
        let agent = &self.agent;
        let municipality = agent.municipality.as_deref().and_then(names);
        let requestor_type = if agent.application { coding(DICOM, "110150", "Application") } else { coding(SECURITY_ROLE_TYPE, "humanuser", "human user") };
        let mut agents = vec![AgentJson {
            agent_type: Some(Concept { coding: [requestor_type] }),
            who: match agent.references.first() {
                Some(reference) => Who::Reference(reference),
                None => Who::Display(&agent.name),
            },
            alt_id: agent.user.as_deref(),
            name: agent.user.as_ref().map(|_| agent.name.as_str()),
            requestor: true,
            network: agent.address.as_deref().map(|address| Network { address, network_type: "2" }),
            extension: municipality.as_ref().map(|(code, name)| {
                [MunicipalityExtension { url: MUNICIPALITY_EXTENSION, value_coding: coding(crate::fhir::MUNICIPALITY_TAG_SYSTEM, code, name) }]
            }),
        }];
        agents.extend(agent.references.iter().skip(1).map(|reference| other(Who::Reference(reference))));
        if let Some(client_id) = &agent.client_id {
            agents.push(AgentJson {
                agent_type: Some(Concept { coding: [coding(DICOM, "110150", "Application")] }),
                ..other(Who::Identifier(Identifier { system: Some(CLIENT_ID_SYSTEM), value: client_id }))
            });
        }
        let mut entities = vec![EntityJson {
            what: Some(Who::Identifier(Identifier { system: None, value: &self.request_id })),
            entity_type: coding(BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id"),
            role: None,
            name: None,
            description: None,
            query: None,
        }];
        entities.extend(self.entities.iter().map(entity_json));
        let resource = AuditEventJson {
            resource_type: "AuditEvent",
            id,
            meta: Meta {
                version_id: "1",
                last_updated: &self.recorded,
                tag: owner.map(|(code, name)| [coding(crate::fhir::MUNICIPALITY_TAG_SYSTEM, code, name)]),
            },
            extension: [ChainExtension {
                url: CHAIN_EXTENSION,
                extension: (
                    StringEntry { url: "chain", value_string: &self.chain },
                    IntegerEntry { url: "sequence", value_integer: sequence },
                    StringEntry { url: "previous", value_string: previous },
                ),
            }],
            event_type: coding(event_type.system, event_type.code, &event_type.display),
            subtype: subtypes.iter().map(|c| coding(c.system, c.code, &c.display)).collect(),
            action: self.action.code(),
            recorded: &self.recorded,
            outcome: self.outcome.code(),
            outcome_desc: self.outcome_description.as_deref(),
            purpose_of_event: self.purpose_of_use.as_deref().map(|code| [PurposeCoding { coding: [PurposeCode { system: PURPOSE_OF_USE, code }] }]),
            agent: agents,
            source: Source {
                site: &self.site,
                observer: Observer { display: format!("Renraku FHIR gateway ({})", self.site) },
                source_type: [coding(SOURCE_TYPE, "4", "Application Server")],
            },
            entity: entities,
        };
        Ok(serde_json::to_string(&resource)?)
    }
}

fn entity_json(entity: &Entity) -> EntityJson<'_> {
    let plain = |what: Option<Who<'static>>| EntityJson { what, entity_type: coding(ENTITY_TYPE, "2", "System Object"), role: None, name: None, description: None, query: None };
    match entity {
        Entity::Patient(reference) => EntityJson {
            what: Some(Who::Reference(reference)),
            entity_type: coding(ENTITY_TYPE, "1", "Person"),
            role: Some(coding(ENTITY_ROLE, "1", "Patient")),
            ..plain(None)
        },
        Entity::Resource(reference) => EntityJson {
            what: Some(Who::Reference(reference)),
            entity_type: CodingJson { system: RESOURCE_TYPES, code: reference.split('/').next().unwrap_or_default(), display: None },
            role: Some(coding(ENTITY_ROLE, "4", "Domain Resource")),
            ..plain(None)
        },
        Entity::Query(query) => {
            use base64::Engine as _;
            EntityJson {
                role: Some(coding(ENTITY_ROLE, "24", "Query")),
                description: Some(query),
                query: Some(base64::engine::general_purpose::STANDARD.encode(query.as_bytes())),
                ..plain(None)
            }
        }
        Entity::Agreement(reference) | Entity::Consent(reference) => {
            let (code, description) = if matches!(entity, Entity::Agreement(_)) {
                ("Contract", "the wide-area agreement (広域連携協定) the disclosure rests on")
            } else {
                ("Consent", "the person's consent the disclosure rests on")
            };
            EntityJson {
                what: Some(Who::Reference(reference)),
                entity_type: CodingJson { system: RESOURCE_TYPES, code, display: None },
                role: Some(coding(ENTITY_ROLE, "13", "Security Resource")),
                description: Some(description),
                ..plain(None)
            }
        }
        Entity::Detail { name, value } => EntityJson { name: Some(name), description: Some(value), ..plain(None) },
    }
}
