//! The facts an access decision rests on besides the query itself: wide-area agreements
//! (Contract) and the standing of the directory entries a token acts through, each cached
//! per generation counter; and the access links CareTeams and Consents write as index rows
//! ([`access_links`]), which the access predicate joins instead of a list of persons.
//!
//! The policy reads its facts through [`FactSource`], which the store implements with its
//! deliberate grant-less reads (`store::facts`): the decision point must see the facts
//! before it can hand out a grant. The policy names what it needs and never runs SQL; it
//! does not import the store (the store imports the policy, to render grants).

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Actor, Environment, Interaction, Permission};
use crate::error::Result;
use crate::fhir::dates::format_instant;
use crate::search::IndexEntry;

/// What the decision point reads from the database. Implemented by the store for a
/// database connection (`store::facts`); inside a write's transaction the facts include the
/// transaction's own earlier writes.
pub trait FactSource: Send {
    /// The generation counters (one read tells which cached facts still hold).
    fn generations(&mut self) -> impl std::future::Future<Output = Result<Generations>> + Send;
    /// `(id, owning municipality, content)` of every live resource of a type.
    fn live_of_type(&mut self, resource_type: &str) -> impl std::future::Future<Output = Result<Vec<(String, String, String)>>> + Send;
    /// `(owning municipality, content)` of one live resource.
    fn live_resource(&mut self, resource_type: &str, id: &str) -> impl std::future::Future<Output = Result<Option<(String, String)>>> + Send;
    /// `(id, owning municipality, content)` of live `source_type` resources whose `param`
    /// refers to one of `targets` (`(type, id)` pairs).
    fn referring(
        &mut self,
        source_type: &str,
        param: &str,
        targets: &[(String, String)],
    ) -> impl std::future::Future<Output = Result<Vec<(String, String, String)>>> + Send;
    /// The municipality owning a live resource.
    fn tenant_of(&mut self, resource_type: &str, id: &str) -> impl std::future::Future<Output = Result<Option<String>>> + Send;
    /// Whether `grant` sees a live resource (`resource_type/id`).
    fn visible(&mut self, grant: &super::Grant, resource_type: &str, id: &str) -> impl std::future::Future<Output = Result<bool>> + Send;
}

tokio::task_local! {
    /// The generation counters this request's token verification read, for its first
    /// decision (see [`verified_generations`]).
    static VERIFIED: std::cell::Cell<Option<Generations>>;
}

/// Runs one request with room for the generation counters its token verification reads
/// (the HTTP layer wraps every request in it).
pub async fn with_request_generations<F: std::future::Future>(request: F) -> F::Output {
    VERIFIED.scope(std::cell::Cell::new(None), request).await
}

/// Notes the counters token verification read (nothing outside a request).
pub fn note_verified_generations(generations: Generations) {
    let _ = VERIFIED.try_with(|cell| cell.set(Some(generations)));
}

/// The counters this request's token verification read, handed out once: the request's
/// first decision uses them instead of reading the counters again, so a request reads them
/// once. Any later decision of the request (a transaction's next entry, after its writes)
/// reads them afresh. None outside a request or where no token was verified.
pub fn verified_generations() -> Option<Generations> {
    VERIFIED.try_with(std::cell::Cell::take).ok().flatten()
}

/// The generation counters as one request read them: each is bumped, in the writing
/// transaction, by every write of the facts it stands for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generations {
    pub agreements: i64,
    pub directory: i64,
    pub tokens: i64,
    /// Municipalities and OAuth clients registered at run time (`runtime::Runtime`'s directories).
    pub registry: i64,
}

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

/// Everything the rule needs beyond the token: the agreements. Which persons an actor
/// reaches is not read here: the access predicate joins the access links in the database
/// (`Persons::Reached`).
#[derive(Debug, Clone, Default)]
pub struct World {
    pub agreements: Vec<Agreement>,
    /// Municipalities that hold agreement resources.
    pub agreement_tenants: Vec<String>,
}

impl World {
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

/// An agreement's terms as read from its Contract, before the decision's time says whether
/// it is in force.
#[derive(Debug, Clone)]
pub struct AgreementTerms {
    id: String,
    owner: String,
    executed: bool,
    applies: Option<Value>,
    parties: Vec<String>,
    allows: Vec<(Option<String>, Interaction)>,
}

impl AgreementTerms {
    fn at(&self, now: DateTime<Utc>) -> Agreement {
        Agreement {
            id: self.id.clone(),
            owner: self.owner.clone(),
            active: self.executed && period_covers(self.applies.as_ref(), now),
            parties: self.parties.clone(),
            allows: self.allows.clone(),
        }
    }
}

/// The agreements as last read from the database, kept while the `agreements` generation
/// (bumped in the transaction of every Contract write, on any gateway sharing the
/// database) and the set of municipalities are unchanged. Checking costs one primary-key
/// read per decision instead of reading and parsing every Contract.
#[derive(Debug, Default)]
pub struct AgreementCache(std::sync::Mutex<Option<CachedAgreements>>);

#[derive(Debug)]
struct CachedAgreements {
    generation: i64,
    tenants: usize,
    terms: std::sync::Arc<Vec<AgreementTerms>>,
}

impl AgreementCache {
    fn get(&self, generation: i64, tenants: usize) -> Option<std::sync::Arc<Vec<AgreementTerms>>> {
        let cached = self.0.lock().ok()?;
        cached.as_ref().filter(|c| c.generation == generation && c.tenants == tenants).map(|c| c.terms.clone())
    }

    fn put(&self, generation: i64, tenants: usize, terms: std::sync::Arc<Vec<AgreementTerms>>) {
        // A poisoned cache is only a cache: the next decision reads the database again.
        if let Ok(mut cached) = self.0.lock() {
            *cached = Some(CachedAgreements { generation, tenants, terms });
        }
    }
}

/// Every wide-area agreement (in force or not), as of the decision's time.
pub async fn agreements(connection: &mut impl FactSource, environment: &Environment<'_>) -> Result<Vec<Agreement>> {
    let generation = connection.generations().await?.agreements;
    agreements_at(connection, environment, generation).await
}

/// [`agreements`], with the generation the request read.
async fn agreements_at(connection: &mut impl FactSource, environment: &Environment<'_>, generation: i64) -> Result<Vec<Agreement>> {
    let terms = match environment.agreements.get(generation, environment.tenants.len()) {
        Some(terms) => terms,
        None => {
            let mut terms = Vec::new();
            for (id, owner, content) in connection.live_of_type("Contract").await? {
                terms.extend(agreement_terms(&id, &owner, &content, environment.tenants));
            }
            let terms = std::sync::Arc::new(terms);
            environment.agreements.put(generation, environment.tenants.len(), terms.clone());
            terms
        }
    };
    Ok(terms.iter().map(|t| t.at(environment.now)).collect())
}

/// Reads the facts for a decision (`generation`: the agreements' generation it read).
pub async fn load(connection: &mut impl FactSource, environment: &Environment<'_>, generation: i64) -> Result<World> {
    let mut world = World { agreements: agreements_at(connection, environment, generation).await?, ..World::default() };
    world.agreement_tenants = world.agreements.iter().map(|a| a.owner.clone()).collect();
    world.agreement_tenants.sort();
    world.agreement_tenants.dedup();
    Ok(world)
}

/// Whether the directory entries `actor` acts through still stand: for a professional, their
/// PractitionerRole (active, in its period, naming the token's Practitioner and
/// Organization), that Practitioner and that Organization; for a system client, its
/// Organization — each live and owned by the actor's municipality. `Err(reason)` when not:
/// a professional who left, a role set inactive or deleted, an Organization of another
/// municipality. Checked at every decision and every refresh, so departures act at once.
pub async fn actor_standing(connection: &mut impl FactSource, actor: &Actor, now: DateTime<Utc>) -> Result<Result<(), String>> {
    Ok(judge(actor, &standing_terms(connection, actor).await?, now))
}

/// [`actor_standing`] from the decision's cache while the directory's generation is the one
/// the cache was filled at (every Organization, Practitioner and PractitionerRole write bumps
/// it, on whichever gateway); the role's period is judged against `now` every time.
pub async fn actor_standing_cached(
    connection: &mut impl FactSource,
    environment: &Environment<'_>,
    generation: i64,
    actor: &Actor,
) -> Result<Result<(), String>> {
    if matches!(actor, Actor::Practitioner { .. } | Actor::System { .. }) {
        let key = format!("{actor:?}");
        let terms = match environment.standing.get(generation, &key) {
            Some(terms) => terms,
            None => {
                let terms = standing_terms(connection, actor).await?;
                environment.standing.put(generation, key, terms.clone());
                terms
            }
        };
        return Ok(judge(actor, &terms, environment.now));
    }
    Ok(Ok(()))
}

/// An actor's standing apart from time: `Ok(the role's period)` when every entry stands.
type StandingTerms = Result<Option<Value>, String>;

/// Standings as last read, valid while the directory's generation is unchanged.
#[derive(Debug, Default)]
pub struct StandingCache(std::sync::Mutex<(i64, std::collections::HashMap<String, StandingTerms>)>);

impl StandingCache {
    const CAPACITY: usize = 100_000;

    fn get(&self, generation: i64, key: &str) -> Option<StandingTerms> {
        let cached = self.0.lock().ok()?;
        (cached.0 == generation).then(|| cached.1.get(key).cloned()).flatten()
    }

    fn put(&self, generation: i64, key: String, terms: StandingTerms) {
        // A poisoned cache is only a cache: the database answers next time.
        let Ok(mut cached) = self.0.lock() else { return };
        if cached.0 != generation || cached.1.len() >= Self::CAPACITY {
            cached.1.clear();
            cached.0 = generation;
        }
        cached.1.insert(key, terms);
    }
}

fn judge(actor: &Actor, terms: &StandingTerms, now: DateTime<Utc>) -> Result<(), String> {
    match (terms, actor) {
        (Err(reason), _) => Err(reason.clone()),
        (Ok(period), Actor::Practitioner { role, organization, .. }) if !period_covers(period.as_ref(), now) => {
            Err(format!("PractitionerRole/{role} no longer places this professional in Organization/{organization}"))
        }
        (Ok(_), _) => Ok(()),
    }
}

async fn standing_terms(connection: &mut impl FactSource, actor: &Actor) -> Result<StandingTerms> {
    let (tenant, organization) = match actor {
        Actor::Practitioner { tenant, organization, .. } | Actor::System { tenant, organization, .. } => (tenant, organization),
        _ => return Ok(Ok(None)),
    };
    let active = |content: &str| -> Option<Value> {
        let value: Value = serde_json::from_str(content).ok()?;
        (value.get("active").and_then(Value::as_bool) != Some(false)).then_some(value)
    };
    let owned_and_active = |found: Option<(String, String)>| found.filter(|(owner, _)| owner == tenant).and_then(|(_, content)| active(&content));
    if owned_and_active(connection.live_resource("Organization", organization).await?).is_none() {
        return Ok(Err(format!("Organization/{organization} is not an active organization of this municipality")));
    }
    let Actor::Practitioner { practitioner, role, .. } = actor else { return Ok(Ok(None)) };
    let Some(role_resource) = owned_and_active(connection.live_resource("PractitionerRole", role).await?) else {
        return Ok(Err(format!("PractitionerRole/{role} is no longer active")));
    };
    let names = |element: &str, expected: String| reference_of(&role_resource, element).as_deref() == Some(expected.as_str());
    if !names("organization", format!("Organization/{organization}")) || !names("practitioner", format!("Practitioner/{practitioner}")) {
        return Ok(Err(format!("PractitionerRole/{role} no longer places this professional in Organization/{organization}")));
    }
    if owned_and_active(connection.live_resource("Practitioner", practitioner).await?).is_none() {
        return Ok(Err(format!("Practitioner/{practitioner} is no longer active")));
    }
    Ok(Ok(role_resource.get("period").cloned()))
}

/// The ids of the active sharing Consents of `patients`.
pub async fn active_consents(connection: &mut impl FactSource, environment: &Environment<'_>, patients: &[String]) -> Result<Vec<String>> {
    let targets: Vec<(String, String)> = patients.iter().map(|id| ("Patient".to_owned(), id.clone())).collect();
    let mut consents = Vec::new();
    for (id, _, content) in connection.referring("Consent", "patient", &targets).await? {
        if active_consent_patient(&content, environment.now).is_some() {
            consents.push(id);
        }
    }
    consents.sort();
    Ok(consents)
}

/// Reads an agreement from a Contract carrying the agreement profile; other Contracts are
/// not agreements and allow nothing.
fn agreement_terms(id: &str, owner: &str, content: &str, tenants: &[crate::config::TenantConfig]) -> Option<AgreementTerms> {
    let contract: Value = serde_json::from_str(content).ok()?;
    let profiles = contract.pointer("/meta/profile").and_then(Value::as_array)?;
    if !profiles.iter().any(|p| p.as_str() == Some(AGREEMENT_PROFILE_URL)) {
        return None;
    }
    let executed = contract.get("status").and_then(Value::as_str) == Some("executed");
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
            tenants.iter().find(|t| t.code == code).map(|t| t.slug.clone())
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
    Some(AgreementTerms { id: id.to_owned(), owner: owner.to_owned(), executed, applies: contract.get("applies").cloned(), parties, allows })
}

fn extensions<'a>(element: &'a Value, url: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    element
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |e| e.get("url").and_then(Value::as_str) == Some(url))
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

/// The access links a CareTeam or Consent version establishes, as index rows: for an
/// active CareTeam about a Patient, one row per participant that is a PractitionerRole or
/// an Organization, valid while both the team's and the participation's periods hold; for
/// an active sharing Consent (not a denial), one row valid in its provision's period.
/// Status changes are writes, so only the periods need judging at request time, which the
/// access predicate does against the decision's `now`. A period that cannot be read holds
/// never (as [`period_covers`] judges it).
pub fn access_links(resource_type: &str, id: &str, resource: &Value) -> Vec<IndexEntry> {
    let link = |kind: &str, patient: &str, member: String, period: Option<(String, String)>| {
        period.map(|(valid_from, valid_to)| IndexEntry::AccessLink {
            kind: kind.to_owned(),
            patient: patient.to_owned(),
            member,
            valid_from,
            valid_to,
        })
    };
    match resource_type {
        "CareTeam" => {
            if resource.get("status").and_then(Value::as_str) != Some("active") {
                return Vec::new();
            }
            let Some(patient) = reference_of(resource, "subject").as_deref().and_then(patient_id) else { return Vec::new() };
            let team_period = period_bounds(resource.get("period"));
            let mut links: Vec<IndexEntry> = resource
                .get("participant")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|participant| {
                    let member = participant.get("member")?.get("reference")?.as_str().and_then(local_reference)?;
                    if !(member.starts_with("PractitionerRole/") || member.starts_with("Organization/")) {
                        return None;
                    }
                    let period = intersect(team_period.clone(), period_bounds(participant.get("period")));
                    link(crate::search::LINK_TEAM, &patient, member, period)
                })
                .collect();
            links.dedup();
            links
        }
        "Consent" => {
            let Some(patient) = resource
                .get("status")
                .and_then(Value::as_str)
                .filter(|status| *status == "active")
                .and_then(|_| reference_of(resource, "patient"))
                .as_deref()
                .and_then(patient_id)
            else {
                return Vec::new();
            };
            let provision = resource.get("provision");
            if provision.and_then(|p| p.get("type")).and_then(Value::as_str) == Some("deny") {
                return Vec::new();
            }
            link(crate::search::LINK_CONSENT, &patient, String::new(), period_bounds(provision.and_then(|p| p.get("period"))))
                .into_iter()
                .collect()
        }
        "Patient" => {
            let Some(registrar) = reference_of(resource, "managingOrganization").as_deref().and_then(local_reference) else {
                return Vec::new();
            };
            if !registrar.starts_with("Organization/") {
                return Vec::new();
            }
            link(crate::search::LINK_REGISTRATION, id, registrar, period_bounds(None)).into_iter().collect()
        }
        _ => Vec::new(),
    }
}

/// The links a deleted version keeps: a Patient's registration (the registrar still sees
/// the tombstone and the person's versions); a team's or consent's end with it.
pub fn links_kept_on_delete(resource_type: &str, id: &str, deleted: &Value) -> Vec<IndexEntry> {
    access_links(resource_type, id, deleted)
        .into_iter()
        .filter(|link| matches!(link, IndexEntry::AccessLink { kind, .. } if kind == crate::search::LINK_REGISTRATION))
        .collect()
}

/// Since always, in the stored text form of `valid_from`.
pub const ALWAYS_FROM: &str = "";
/// For ever, in the stored text form of `valid_to`.
pub const FOREVER: &str = "9999-12-31T23:59:59.999999Z";

/// A Period (absent = always) as `[from, to)` in stored text form; `None` when it holds
/// never (an unreadable date, or an end before the start).
fn period_bounds(period: Option<&Value>) -> Option<(String, String)> {
    let Some(period) = period else { return Some((ALWAYS_FROM.to_owned(), FOREVER.to_owned())) };
    let from = match period.get("start").and_then(Value::as_str) {
        Some(start) => format_instant(crate::fhir::dates::precision_range(start)?.0),
        None => ALWAYS_FROM.to_owned(),
    };
    let to = match period.get("end").and_then(Value::as_str) {
        Some(end) => format_instant(crate::fhir::dates::precision_range(end)?.1),
        None => FOREVER.to_owned(),
    };
    (from < to).then_some((from, to))
}

fn intersect(a: Option<(String, String)>, b: Option<(String, String)>) -> Option<(String, String)> {
    let ((a_from, a_to), (b_from, b_to)) = (a?, b?);
    let (from, to) = (a_from.max(b_from), a_to.min(b_to));
    (from < to).then_some((from, to))
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
    fn teams_link_only_active_participants_of_active_teams() {
        let team = |status: &str, participant_end: &str| {
            serde_json::json!({
                "resourceType": "CareTeam", "status": status, "subject": {"reference": "Patient/p1"},
                "period": {"start": "2026-04-01"},
                "participant": [
                    {"member": {"reference": "PractitionerRole/r1"}, "period": {"end": participant_end}},
                    {"member": {"reference": "https://x/ina/fhir/Organization/o1"}},
                    {"member": {"reference": "Practitioner/someone"}}
                ]
            })
        };
        let link = |member: &str, valid_to: &str| IndexEntry::AccessLink {
            kind: "team".into(),
            patient: "p1".into(),
            member: member.into(),
            valid_from: "2026-04-01T00:00:00.000000Z".into(),
            valid_to: valid_to.into(),
        };
        assert_eq!(
            access_links("CareTeam", "x", &team("active", "2027")),
            vec![link("PractitionerRole/r1", "2028-01-01T00:00:00.000000Z"), link("Organization/o1", FOREVER)]
        );
        assert_eq!(access_links("CareTeam", "x", &team("inactive", "2027")), Vec::new());
        // A participation that ended before the team began links nobody.
        assert_eq!(access_links("CareTeam", "x", &team("active", "2026-01")), vec![link("Organization/o1", FOREVER)]);
    }

    #[test]
    fn consents_link_while_active_and_not_a_denial() {
        let consent = |status: &str, kind: &str, end: &str| {
            serde_json::json!({
                "resourceType": "Consent", "status": status, "patient": {"reference": "Patient/p1"},
                "provision": {"type": kind, "period": {"end": end}}
            })
        };
        let expected = vec![IndexEntry::AccessLink {
            kind: "consent".into(),
            patient: "p1".into(),
            member: String::new(),
            valid_from: ALWAYS_FROM.into(),
            valid_to: "2027-04-01T00:00:00.000000Z".into(),
        }];
        assert_eq!(access_links("Consent", "x", &consent("active", "permit", "2027-03-31")), expected);
        assert_eq!(access_links("Consent", "x", &consent("inactive", "permit", "2027-03-31")), Vec::new());
        assert_eq!(access_links("Consent", "x", &consent("active", "deny", "2027-03-31")), Vec::new());
        assert_eq!(access_links("Consent", "x", &consent("active", "permit", "garbage")), Vec::new());
    }

    #[test]
    fn registrations_link_the_registrar_and_outlive_the_deletion() {
        let patient = |registrar: &str| serde_json::json!({ "resourceType": "Patient", "managingOrganization": { "reference": registrar } });
        let registration = vec![IndexEntry::AccessLink {
            kind: "registration".into(),
            patient: "p1".into(),
            member: "Organization/office".into(),
            valid_from: ALWAYS_FROM.into(),
            valid_to: FOREVER.into(),
        }];
        assert_eq!(access_links("Patient", "p1", &patient("Organization/office")), registration);
        assert_eq!(access_links("Patient", "p1", &patient("https://x/ina/fhir/Organization/office")), registration);
        assert_eq!(access_links("Patient", "p1", &patient("Practitioner/someone")), Vec::new());
        assert_eq!(access_links("Patient", "p1", &serde_json::json!({ "resourceType": "Patient" })), Vec::new());
        // Kept by a deleted Patient; a deleted team or consent links nobody.
        assert_eq!(links_kept_on_delete("Patient", "p1", &patient("Organization/office")), registration);
        let team = serde_json::json!({ "resourceType": "CareTeam", "status": "active", "subject": { "reference": "Patient/p1" },
                                       "participant": [{ "member": { "reference": "Organization/office" } }] });
        assert_eq!(access_links("CareTeam", "t1", &team).len(), 1);
        assert_eq!(links_kept_on_delete("CareTeam", "t1", &team), Vec::new());
    }
}
