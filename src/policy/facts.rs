//! The facts an access decision rests on, read fresh from the database at every decision:
//! wide-area agreements (Contract), support teams (CareTeam), sharing consents (Consent) and
//! who registered each person (Patient.managingOrganization).
//!
//! The reads here are the store's deliberate grant-less paths (`store::facts`): the
//! decision point must see the facts before it can hand out a grant. They return only what
//! the rule needs and never leave this module except as a [`World`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::AnyConnection;

use super::{Actor, Environment, Interaction, Permission};
use crate::error::Result;
use crate::store::facts as store_facts;

/// The identifier system of a municipality's 全国地方公共団体コード in agreements.
pub const MUNICIPALITY_CODE_SYSTEM: &str = "https://renraku.example.jp/fhir/sid/municipality-code";
/// The extension on an agreement (Contract) that says what may cross between its parties.
pub const AGREEMENT_SCOPE_URL: &str = "https://renraku.example.jp/fhir/StructureDefinition/agreement-scope";
/// The profile every wide-area agreement carries.
pub const AGREEMENT_PROFILE_URL: &str = "https://renraku.example.jp/fhir/StructureDefinition/renraku-wide-area-agreement";

/// A wide-area agreement (広域連携協定) as the rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    pub id: String,
    /// The municipality whose base holds the resource.
    pub owner: String,
    /// Whether it is in force now (status `executed`, period covering now).
    pub active: bool,
    /// The participating municipalities' slugs.
    pub parties: Vec<String>,
    /// What may cross: (resource type, `None` for every type of a person's data; interaction).
    pub allows: Vec<(Option<String>, Interaction)>,
}

impl Agreement {
    /// Whether this agreement is in force and joins both municipalities.
    pub fn joins(&self, tenant_a: &str, tenant_b: &str) -> bool {
        self.active && self.parties.iter().any(|p| p == tenant_a) && self.parties.iter().any(|p| p == tenant_b)
    }

    /// Whether `resource_type` may cross with `interaction` under this agreement.
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.allows.iter().any(|(t, i)| *i == interaction && t.as_deref().is_none_or(|t| t == resource_type))
    }

    /// Whether some interaction needing `permission` may cross for `resource_type` (what a
    /// disclosure record cites).
    pub fn allows_permission(&self, resource_type: &str, permission: Permission) -> bool {
        self.allows.iter().any(|(t, i)| i.permission() == permission && t.as_deref().is_none_or(|t| t == resource_type))
    }
}

/// What the rule knows about one person the actor may be connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonFacts {
    /// The person's municipality (the tenant owning the Patient).
    pub tenant: String,
    /// The actor's organization registered the person (Patient.managingOrganization).
    pub registered_by_actor: bool,
    /// The actor (their PractitionerRole or Organization) is an active participant of an
    /// active CareTeam whose subject is the person.
    pub on_team: bool,
    /// The person has an active sharing Consent.
    pub consent: bool,
}

/// Everything the rule needs for one actor.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub agreements: Vec<Agreement>,
    /// Municipalities that hold agreement resources.
    pub agreement_tenants: Vec<String>,
    /// Persons connected to the actor, by Patient id.
    pub patients: BTreeMap<String, PersonFacts>,
}

impl World {
    pub fn patient_tenant(&self, id: &str) -> Option<&str> {
        self.patients.get(id).map(|p| p.tenant.as_str())
    }

    /// Municipalities that share an agreement in force with `tenant` (not `tenant` itself).
    pub fn partners(&self, tenant: &str) -> Vec<String> {
        let mut partners: Vec<String> = self
            .agreements
            .iter()
            .filter(|a| a.active && a.parties.iter().any(|p| p == tenant))
            .flat_map(|a| a.parties.iter().cloned())
            .filter(|p| p != tenant)
            .collect();
        partners.sort();
        partners.dedup();
        partners
    }
}

/// Every wide-area agreement (in force or not).
pub async fn agreements(connection: &mut AnyConnection, environment: &Environment<'_>) -> Result<Vec<Agreement>> {
    let mut agreements = Vec::new();
    for (id, owner, content) in store_facts::live_of_type(connection, "Contract").await? {
        agreements.extend(agreement_from(&id, &owner, &content, environment));
    }
    Ok(agreements)
}

/// Reads the facts for `actor`.
pub async fn load(connection: &mut AnyConnection, environment: &Environment<'_>, actor: &Actor) -> Result<World> {
    let mut world = World { agreements: agreements(connection, environment).await?, ..World::default() };
    world.agreement_tenants = world.agreements.iter().map(|a| a.owner.clone()).collect();
    world.agreement_tenants.sort();
    world.agreement_tenants.dedup();
    let (members, organization) = match actor {
        Actor::Practitioner { role, organization, .. } => (
            vec![("PractitionerRole".to_owned(), role.clone()), ("Organization".to_owned(), organization.clone())],
            organization,
        ),
        Actor::System { organization, .. } => (vec![("Organization".to_owned(), organization.clone())], organization),
        _ => return Ok(world),
    };
    let member_references: Vec<String> = members.iter().map(|(t, id)| format!("{t}/{id}")).collect();
    let mut on_team: Vec<String> = Vec::new();
    for (_, _, content) in store_facts::referring(connection, "CareTeam", "participant", &members).await? {
        if let Some(patient) = team_subject_with_member(&content, &member_references, environment.now) {
            on_team.push(patient);
        }
    }
    // Who the organization registered comes from the index alone (no resource bodies): an
    // office that registered thousands of persons must not load them all at every request.
    let registered: BTreeSet<String> = store_facts::referring_keys(
        connection,
        "Patient",
        "organization",
        &[("Organization".to_owned(), organization.clone())],
    )
    .await?
    .into_iter()
    .map(|(id, _)| id)
    .collect();
    on_team.sort();
    on_team.dedup();
    // Consent matters only where the actor is on the team (a registrar alone reaches the
    // registration, with or without consent).
    let team_targets: Vec<(String, String)> = on_team.iter().map(|id| ("Patient".to_owned(), id.clone())).collect();
    let mut consented: BTreeSet<String> = BTreeSet::new();
    for (_, _, content) in store_facts::referring(connection, "Consent", "patient", &team_targets).await? {
        if let Some(patient) = active_consent_patient(&content, environment.now) {
            consented.insert(patient);
        }
    }
    let on_team: BTreeSet<String> = on_team.into_iter().collect();
    let candidates: Vec<String> = on_team.union(&registered).cloned().collect();
    for (id, tenant) in store_facts::live_tenants(connection, "Patient", &candidates).await? {
        let facts = PersonFacts {
            tenant,
            registered_by_actor: registered.contains(&id),
            on_team: on_team.contains(&id),
            consent: consented.contains(&id),
        };
        world.patients.insert(id, facts);
    }
    Ok(world)
}

/// Whether the directory entries `actor` acts through still stand: for a professional, their
/// PractitionerRole (active, in its period, naming the token's Practitioner and
/// Organization), that Practitioner and that Organization; for a system client, its
/// Organization — each live and owned by the actor's municipality. `Err(reason)` when not:
/// a professional who left, a role set inactive or deleted, an Organization of another
/// municipality. Checked at every decision and every refresh, so departures act at once.
pub async fn actor_standing(connection: &mut AnyConnection, actor: &Actor, now: DateTime<Utc>) -> Result<Result<(), String>> {
    let (tenant, organization) = match actor {
        Actor::Practitioner { tenant, organization, .. } | Actor::System { tenant, organization, .. } => (tenant, organization),
        _ => return Ok(Ok(())),
    };
    let active = |content: &str| -> Option<Value> {
        let value: Value = serde_json::from_str(content).ok()?;
        (value.get("active").and_then(Value::as_bool) != Some(false)).then_some(value)
    };
    let owned_and_active = |found: Option<(String, String)>| found.filter(|(owner, _)| owner == tenant).and_then(|(_, content)| active(&content));
    if owned_and_active(store_facts::live_resource(connection, "Organization", organization).await?).is_none() {
        return Ok(Err(format!("Organization/{organization} is not an active organization of this municipality")));
    }
    if let Actor::Practitioner { practitioner, role, .. } = actor {
        let Some(role_resource) = owned_and_active(store_facts::live_resource(connection, "PractitionerRole", role).await?) else {
            return Ok(Err(format!("PractitionerRole/{role} is no longer active")));
        };
        let names = |element: &str, expected: String| reference_of(&role_resource, element).as_deref() == Some(expected.as_str());
        if !names("organization", format!("Organization/{organization}"))
            || !names("practitioner", format!("Practitioner/{practitioner}"))
            || !period_covers(role_resource.get("period"), now)
        {
            return Ok(Err(format!("PractitionerRole/{role} no longer places this professional in Organization/{organization}")));
        }
        if owned_and_active(store_facts::live_resource(connection, "Practitioner", practitioner).await?).is_none() {
            return Ok(Err(format!("Practitioner/{practitioner} is no longer active")));
        }
    }
    Ok(Ok(()))
}

/// The ids of the active sharing Consents of `patients`.
pub async fn active_consents(connection: &mut AnyConnection, environment: &Environment<'_>, patients: &[String]) -> Result<Vec<String>> {
    let targets: Vec<(String, String)> = patients.iter().map(|id| ("Patient".to_owned(), id.clone())).collect();
    let mut consents = Vec::new();
    for (id, _, content) in store_facts::referring(connection, "Consent", "patient", &targets).await? {
        if active_consent_patient(&content, environment.now).is_some() {
            consents.push(id);
        }
    }
    consents.sort();
    Ok(consents)
}

/// Reads an agreement from a Contract carrying the agreement profile; other Contracts are
/// not agreements and allow nothing.
pub fn agreement_from(id: &str, owner: &str, content: &str, environment: &Environment<'_>) -> Option<Agreement> {
    let contract: Value = serde_json::from_str(content).ok()?;
    let profiles = contract.pointer("/meta/profile").and_then(Value::as_array)?;
    if !profiles.iter().any(|p| p.as_str() == Some(AGREEMENT_PROFILE_URL)) {
        return None;
    }
    let executed = contract.get("status").and_then(Value::as_str) == Some("executed");
    let active = executed && period_covers(contract.get("applies"), environment.now);
    let parties: Vec<String> = contract
        .get("authority")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|authority| {
            let identifier = authority.get("identifier")?;
            if identifier.get("system").and_then(Value::as_str) != Some(MUNICIPALITY_CODE_SYSTEM) {
                return None;
            }
            let code = identifier.get("value").and_then(Value::as_str)?;
            environment.tenants.iter().find(|t| t.code == code).map(|t| t.slug.clone())
        })
        .collect();
    let mut allows = Vec::new();
    for scope in extensions(&contract, AGREEMENT_SCOPE_URL) {
        let resource_type = extensions(scope, "resourceType").next().and_then(|e| e.get("valueCode")).and_then(Value::as_str);
        let resource_type = match resource_type {
            Some("*") => None,
            Some(name) => Some(name.to_owned()),
            None => continue,
        };
        for interaction in extensions(scope, "interaction") {
            if let Some(permission) =
                interaction.get("valueCode").and_then(Value::as_str).and_then(Interaction::from_code)
            {
                allows.push((resource_type.clone(), permission));
            }
        }
    }
    Some(Agreement { id: id.to_owned(), owner: owner.to_owned(), active, parties, allows })
}

fn extensions<'a>(element: &'a Value, url: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    element
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |e| e.get("url").and_then(Value::as_str) == Some(url))
}

/// The Patient id of an active CareTeam's subject when one of `members` is an active
/// participant.
pub fn team_subject_with_member(content: &str, members: &[String], now: DateTime<Utc>) -> Option<String> {
    let team: Value = serde_json::from_str(content).ok()?;
    if team.get("status").and_then(Value::as_str) != Some("active") || !period_covers(team.get("period"), now) {
        return None;
    }
    let participates = team.get("participant").and_then(Value::as_array).into_iter().flatten().any(|participant| {
        let member = participant.get("member").and_then(|m| m.get("reference")).and_then(Value::as_str).and_then(local_reference);
        member.is_some_and(|m| members.contains(&m)) && period_covers(participant.get("period"), now)
    });
    if !participates {
        return None;
    }
    patient_id(&reference_of(&team, "subject")?)
}

/// The Patient id of an active sharing Consent (status active, not a denial, period
/// covering now).
pub fn active_consent_patient(content: &str, now: DateTime<Utc>) -> Option<String> {
    let consent: Value = serde_json::from_str(content).ok()?;
    if consent.get("status").and_then(Value::as_str) != Some("active") {
        return None;
    }
    let provision = consent.get("provision");
    if provision.and_then(|p| p.get("type")).and_then(Value::as_str) == Some("deny") {
        return None;
    }
    if !period_covers(provision.and_then(|p| p.get("period")), now) {
        return None;
    }
    patient_id(&reference_of(&consent, "patient")?)
}

/// `element.reference` of a top-level Reference element, as `Type/id`.
fn reference_of(value: &Value, element: &str) -> Option<String> {
    value.get(element).and_then(|r| r.get("reference")).and_then(Value::as_str).and_then(local_reference)
}

/// `Type/id` of a literal reference (relative or absolute, without `_history`).
pub fn local_reference(reference: &str) -> Option<String> {
    let path = reference.split("/_history/").next()?;
    let mut segments = path.rsplit('/');
    let id = segments.next()?;
    let resource_type = segments.next()?;
    (!id.is_empty() && resource_type.starts_with(|c: char| c.is_ascii_uppercase())).then(|| format!("{resource_type}/{id}"))
}

fn patient_id(reference: &str) -> Option<String> {
    reference.strip_prefix("Patient/").map(str::to_owned)
}

/// Whether a Period (absent = always) covers `now`; dates of any precision count whole
/// (an end of `2027-03-31` covers that whole day).
pub fn period_covers(period: Option<&Value>, now: DateTime<Utc>) -> bool {
    let Some(period) = period else { return true };
    if let Some(start) = period.get("start").and_then(Value::as_str) {
        match crate::fhir::dates::precision_range(start) {
            Some((low, _)) if low <= now => {}
            _ => return false,
        }
    }
    if let Some(end) = period.get("end").and_then(Value::as_str) {
        match crate::fhir::dates::precision_range(end) {
            Some((_, high)) if now < high => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).single().unwrap_or_default()
    }

    #[test]
    fn periods_count_whole_days() {
        let check = |period: Value, expected: bool| assert_eq!(period_covers(Some(&period), now()), expected, "{period}");
        check(serde_json::json!({}), true);
        check(serde_json::json!({"start": "2026-11-25"}), true);
        check(serde_json::json!({"end": "2026-11-25"}), true);
        check(serde_json::json!({"end": "2026-11-24"}), false);
        check(serde_json::json!({"start": "2026-11-26"}), false);
        check(serde_json::json!({"start": "2026", "end": "2026-11"}), true);
        check(serde_json::json!({"end": "2026-11-25T11:59:59Z"}), false);
        check(serde_json::json!({"start": "garbage"}), false);
    }

    #[test]
    fn references_are_read_relative_or_absolute() {
        assert_eq!(local_reference("Patient/p1").as_deref(), Some("Patient/p1"));
        assert_eq!(local_reference("http://x/ina/fhir/Patient/p1/_history/2").as_deref(), Some("Patient/p1"));
        assert_eq!(local_reference("#contained"), None);
        assert_eq!(local_reference("p1"), None);
    }

    #[test]
    fn teams_count_only_active_participants_of_active_teams() {
        let members = vec!["PractitionerRole/r1".to_owned()];
        let team = |status: &str, participant_end: &str| {
            serde_json::json!({
                "resourceType": "CareTeam", "status": status, "subject": {"reference": "Patient/p1"},
                "participant": [{"member": {"reference": "PractitionerRole/r1"}, "period": {"end": participant_end}}]
            })
            .to_string()
        };
        assert_eq!(team_subject_with_member(&team("active", "2027"), &members, now()).as_deref(), Some("p1"));
        assert_eq!(team_subject_with_member(&team("inactive", "2027"), &members, now()), None);
        assert_eq!(team_subject_with_member(&team("active", "2026-01"), &members, now()), None);
        assert_eq!(team_subject_with_member(&team("active", "2027"), &["Organization/o".to_owned()], now()), None);
    }
}
