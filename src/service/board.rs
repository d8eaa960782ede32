//! Read state (既読) of a person's board and chat, as three operations returning Parameters
//! (`conformance/operationdefinition-*.json`):
//! - `POST [base]/Patient/[id]/$mark-read` — the caller marks items read (`communication`),
//!   or everything sent up to a point (`through`);
//! - `GET [base]/Patient/[id]/$read-status?communication=…` — per item: replies, how many of
//!   the team read it and who (names from the directory), who of the team has not;
//! - `GET [base]/Patient/[id]/$unread` and `GET [base]/Patient/$unread` — the caller's unread
//!   board and chat items, for one person or for everyone the caller reaches.
//!
//! Every item is judged by the caller's own read (or search) decision on Communication, as
//! a read of it would be; an item the caller cannot see answers 404 like a missing one.
//! Marking read writes no version of the clinical record (only `read_marks` and the audit
//! trail); each operation is audited like a read.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::audit::{Action, Entity};
use crate::error::{Error, Result};
use crate::identity::{Actor, Context, Interaction, Principal};
use crate::service::Fhir;
use crate::store::{self, CurrentRow};

/// The most items one `$mark-read` or `$read-status` names.
const MAX_ITEMS: usize = 100;

impl Fhir {
    /// `POST [base]/Patient/[id]/$mark-read`
    pub async fn mark_read(&self, context: &Context, patient: &str, parameters: Value) -> Result<Value> {
        let mut audit = self.audit(context, Interaction::Read, "$mark-read");
        audit.event.action = Action::Execute;
        audit.requested(Entity::Patient(format!("Patient/{patient}")));
        let result = self.mark_read_unaudited(context, patient, &parameters).await;
        self.finish_read(context, audit, result, |(_, items)| items.iter().collect()).await.map(|(outcome, _)| outcome)
    }

    async fn mark_read_unaudited(&self, context: &Context, patient: &str, parameters: &Value) -> Result<(Value, Vec<Value>)> {
        let reader = reader_of(&context.principal)?;
        if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(Error::bad_request_at("the body of $mark-read is a Parameters resource", "Parameters"));
        }
        let mut ids = Vec::new();
        let mut through = None;
        for (index, parameter) in parameters.get("parameter").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let at = format!("Parameters.parameter[{index}]");
            match parameter.get("name").and_then(Value::as_str) {
                Some("communication") => {
                    let reference = parameter.pointer("/valueReference/reference").and_then(Value::as_str).unwrap_or_default();
                    ids.push(communication_id(reference).ok_or_else(|| {
                        Error::bad_request_at("communication is a reference to a Communication (Communication/[id])", format!("{at}.valueReference"))
                    })?);
                }
                Some("through") => {
                    let text = parameter.get("valueInstant").or_else(|| parameter.get("valueDateTime")).and_then(Value::as_str).unwrap_or_default();
                    let (_, high) = crate::fhir::dates::precision_range(text)
                        .ok_or_else(|| Error::bad_request_at("through is an instant (valueInstant or valueDateTime)", format!("{at}.valueInstant")))?;
                    through = Some(crate::fhir::dates::format_instant(high));
                }
                _ => return Err(Error::bad_request_at("$mark-read takes 'communication' and 'through'", format!("{at}.name"))),
            }
        }
        if ids.is_empty() && through.is_none() {
            return Err(Error::bad_request_at("name the items read ('communication') or a point in time ('through')", "Parameters.parameter"));
        }
        check_count(&ids)?;
        let mut transaction = self.store.begin().await?;
        let items = self.visible_items(&mut transaction, context, patient, &ids).await?;
        if through.is_some() {
            // Marking "everything up to here" of a person needs the person's board to be the caller's.
            let grant = self.decide(&mut transaction, context, Interaction::Read, Some("Patient")).await?;
            if store::current(&mut transaction, &grant, "Patient", patient).await?.is_none_or(|row| row.deleted) {
                return Err(Error::NotFound(format!("Patient/{patient}")));
            }
        }
        let now = self.now();
        let marked = store::board::mark(&mut transaction, &reader, patient, &ids, &now).await?;
        if let Some(through) = &through {
            store::board::mark_through(&mut transaction, &reader, patient, through, &now).await?;
        }
        transaction.commit().await?;
        let _ = self.board_events.send(crate::fhir::board::BoardEvent {
            tenant: context.tenant.clone(),
            patient: patient.to_owned(),
            change: crate::fhir::board::BoardChange::Read { reader, items: ids, through },
        });
        let outcome = json!({
            "resourceType": "Parameters",
            "parameter": [{ "name": "marked", "valueInteger": marked }]
        });
        Ok((outcome, items))
    }

    /// Announces newly created board and chat items (after their transaction committed).
    pub(crate) fn announce_posted<'a>(&self, context: &Context, created: impl IntoIterator<Item = &'a Value>) {
        for resource in created {
            if let Some(event) = crate::fhir::board::posted(&context.tenant, resource) {
                // Nobody listening is no error: the event is a seam, not a queue.
                let _ = self.board_events.send(event);
            }
        }
    }

    /// `GET [base]/Patient/[id]/$read-status?communication=…`
    pub async fn read_status(&self, context: &Context, patient: &str, query: &[(String, String)]) -> Result<Value> {
        let mut audit = self.audit(context, Interaction::Read, "$read-status");
        audit.requested(Entity::Patient(format!("Patient/{patient}")));
        let result = self.read_status_unaudited(context, patient, query).await;
        self.finish_read(context, audit, result, |(_, items)| items.iter().collect()).await.map(|(status, _)| status)
    }

    async fn read_status_unaudited(&self, context: &Context, patient: &str, query: &[(String, String)]) -> Result<(Value, Vec<Value>)> {
        let mut ids = Vec::new();
        for (name, value) in query {
            match name.as_str() {
                "communication" => {
                    for reference in value.split(',').filter(|v| !v.is_empty()) {
                        ids.push(communication_id(reference).ok_or_else(|| Error::bad_request_at("communication lists Communication ids", "communication"))?);
                    }
                }
                "_format" | "_pretty" => {}
                other => return Err(Error::bad_request_at(format!("$read-status takes 'communication', not '{other}'"), other.to_owned())),
            }
        }
        if ids.is_empty() {
            return Err(Error::bad_request_at("name the items ('communication=id1,id2,…')", "communication"));
        }
        check_count(&ids)?;
        let mut connection = self.store.connection().await?;
        let items = self.visible_items(&mut connection, context, patient, &ids).await?;
        let states = store::board::states(&mut connection, &ids).await?;
        let team = self.team_of(&mut connection, context, patient).await?;
        let mut members: Vec<String> = team.clone();
        members.extend(states.values().flat_map(|s| s.readers.keys().cloned()));
        members.sort();
        members.dedup();
        let names = store::board::member_names(&mut connection, &members).await?;
        let reference = |who: &str| json!({ "reference": who, "display": names.get(who).cloned().unwrap_or_default() });
        let mut parameters = Vec::new();
        for id in &ids {
            let state = states.get(id).cloned().unwrap_or_default();
            let others: Vec<&String> = team.iter().filter(|m| **m != state.sender).collect();
            let readers: Vec<(&String, &String)> = state.readers.iter().filter(|(who, _)| **who != state.sender).collect();
            let mut parts = vec![
                json!({ "name": "communication", "valueReference": { "reference": format!("Communication/{id}") } }),
                json!({ "name": "replies", "valueInteger": state.replies }),
                json!({ "name": "readCount", "valueInteger": readers.len() }),
                json!({ "name": "teamSize", "valueInteger": others.len() }),
            ];
            for (who, when) in &readers {
                parts.push(json!({ "name": "reader", "part": [
                    { "name": "who", "valueReference": reference(who) },
                    { "name": "when", "valueInstant": when },
                    { "name": "onTeam", "valueBoolean": team.contains(who) }
                ]}));
            }
            for member in others.iter().filter(|m| !state.readers.contains_key(**m)) {
                parts.push(json!({ "name": "unread", "valueReference": reference(member) }));
            }
            parameters.push(json!({ "name": "item", "part": parts }));
        }
        Ok((json!({ "resourceType": "Parameters", "parameter": parameters }), items))
    }

    /// `GET [base]/Patient/[id]/$unread` (one person; with `items=true` also the newest 100
    /// unread items themselves) and `GET [base]/Patient/$unread` (all).
    pub async fn unread(&self, context: &Context, patient: Option<&str>, query: &[(String, String)]) -> Result<Value> {
        let mut audit = self.audit(context, Interaction::Search, "$unread");
        if let Some(patient) = patient {
            audit.requested(Entity::Patient(format!("Patient/{patient}")));
        }
        let result = self.unread_unaudited(context, patient, query).await;
        self.finish_read(context, audit, result, |_| Vec::new()).await
    }

    async fn unread_unaudited(&self, context: &Context, patient: Option<&str>, query: &[(String, String)]) -> Result<Value> {
        let mut list = false;
        for (name, value) in query {
            match (name.as_str(), value.as_str(), patient) {
                ("items", "true", Some(_)) => list = true,
                ("items", "false", _) | ("_format" | "_pretty", _, _) => {}
                ("items", _, Some(_)) => return Err(Error::bad_request_at("items is true or false", "items")),
                (other, _, _) => {
                    return Err(Error::bad_request_at(format!("$unread takes 'items' (for one person), not '{other}'"), other.to_owned()))
                }
            }
        }
        let reader = reader_of(&context.principal)?;
        let mut connection = self.store.connection().await?;
        let grant = self.decide(&mut connection, context, Interaction::Search, Some("Communication")).await?;
        let rows = store::board::unread(&mut connection, &grant, &reader, patient).await?;
        let items = match (list, patient) {
            (true, Some(patient)) => store::board::unread_items(&mut connection, &grant, &reader, patient, MAX_ITEMS as i64).await?,
            _ => Vec::new(),
        };
        let mut by_person: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (person, kind, count) in rows {
            let counts = by_person.entry(person).or_default();
            if kind == "chat" {
                counts.1 += count;
            } else {
                counts.0 += count;
            }
        }
        let total: i64 = by_person.values().map(|(board, chat)| board + chat).sum();
        let mut parameters = vec![json!({ "name": "total", "valueInteger": total })];
        for (person, (board, chat)) in by_person {
            parameters.push(json!({ "name": "person", "part": [
                { "name": "patient", "valueReference": { "reference": format!("Patient/{person}") } },
                { "name": "board", "valueInteger": board },
                { "name": "chat", "valueInteger": chat }
            ]}));
        }
        parameters.extend(items.into_iter().map(|id| json!({ "name": "item", "valueReference": { "reference": format!("Communication/{id}") } })));
        Ok(json!({ "resourceType": "Parameters", "parameter": parameters }))
    }

    /// The Communications `ids` of `patient` as the caller's read decision sees them (one
    /// query): any the caller cannot see, or of another person, is a 404 exactly as a
    /// missing one. Returned in the order of `ids`.
    async fn visible_items(&self, connection: &mut store::Db, context: &Context, patient: &str, ids: &[String]) -> Result<Vec<Value>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let grant = self.decide(connection, context, Interaction::Read, Some("Communication")).await?;
        let found = self.rows_by_id(connection, &grant, "Communication", ids).await?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            let content = found.get(id).filter(|item| crate::fhir::board::item_of(item).is_some_and(|item| item.patient == patient));
            match content {
                Some(content) => items.push(content.clone()),
                None => return Err(Error::NotFound(format!("Communication/{id} on the board of Patient/{patient}"))),
            }
        }
        Ok(items)
    }

    /// The live resources `ids` of one type that `grant` sees, by id, in one query.
    async fn rows_by_id(&self, connection: &mut store::Db, grant: &crate::policy::Grant, resource_type: &str, ids: &[String]) -> Result<BTreeMap<String, Value>> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let query = crate::search::SearchQuery {
            resource_types: vec![resource_type.to_owned()],
            criteria: vec![crate::search::Criterion::Id(ids.to_vec())],
            sort: Vec::new(),
            cursor: None,
            limit: i64::try_from(ids.len()).unwrap_or(i64::MAX),
        };
        let rows = store::query::search(connection, grant, &query).await?.rows;
        Ok(rows
            .into_iter()
            .filter(|row| !row.deleted)
            .filter_map(|row: CurrentRow| Some((row.id, serde_json::from_str(row.content.as_deref()?).ok()?)))
            .collect())
    }

    /// The members of the person's active support teams the caller may see.
    async fn team_of(&self, connection: &mut store::Db, context: &Context, patient: &str) -> Result<Vec<String>> {
        let grant = self.decide(connection, context, Interaction::Search, Some("CareTeam")).await?;
        let pairs = vec![("subject".to_owned(), format!("Patient/{patient}")), ("status".to_owned(), "active".to_owned())];
        let parsed = crate::search::parse::parse(&self.search_params, "CareTeam", &pairs, false, &context.base_url, &self.config.limits)?;
        let teams = store::query::search(connection, &grant, &parsed.query("CareTeam", 50)).await?.rows;
        let mut members = Vec::new();
        for team in teams {
            let Some(content) = team.content.and_then(|c| serde_json::from_str::<Value>(&c).ok()) else { continue };
            for participant in content.get("participant").and_then(Value::as_array).into_iter().flatten() {
                let Some(member) = participant.pointer("/member/reference").and_then(Value::as_str) else { continue };
                if (member.starts_with("PractitionerRole/") || member.starts_with("Organization/")) && !members.iter().any(|m| m == member) {
                    members.push(member.to_owned());
                }
            }
        }
        Ok(members)
    }
}

/// Whose read state a request keeps: a practitioner's PractitionerRole, a system client's
/// Organization. Others (administrators, auditors) keep none.
fn reader_of(principal: &Principal) -> Result<String> {
    match principal {
        Principal::Authenticated(authenticated) => match &authenticated.actor {
            Actor::Practitioner { role, .. } => Ok(format!("PractitionerRole/{role}")),
            Actor::System { organization, .. } => Ok(format!("Organization/{organization}")),
            _ => Err(Error::Forbidden("read state is kept for the members of a support team (practitioners and their organizations' systems)".into())),
        },
        _ => Err(Error::Unauthorized("this request needs an access token (Authorization: Bearer …)".into())),
    }
}

/// `Communication/[id]` or a bare id.
fn communication_id(reference: &str) -> Option<String> {
    let id = reference.trim().strip_prefix("Communication/").unwrap_or(reference.trim());
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

fn check_count(ids: &[String]) -> Result<()> {
    if ids.len() > MAX_ITEMS {
        return Err(Error::LimitExceeded { limit: "read-state items", allowed: MAX_ITEMS as u64, what: format!("{} items were named", ids.len()) });
    }
    Ok(())
}
