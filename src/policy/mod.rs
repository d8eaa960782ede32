//! THE access decision point. Security-sensitive: read every change to this module twice.
//!
//! Every interaction asks [`decide`] for a [`Grant`] before it touches stored resources.
//! A `Grant` can only be constructed here (its fields are private and it has no public
//! constructor), and every store function that reads or writes resource rows takes one,
//! so the compiler — not review — guarantees that no path reaches data without a decision.
//!
//! A grant is a list of [`Clause`]s for one permission (create, read, update, delete,
//! search): "these resource types in these municipalities", "these resources", "these
//! persons' compartments". The store turns the clauses into one SQL predicate inside every
//! query, so totals and pages never contain rows the caller may not see, and a write is
//! checked against the same clauses in [`Grant::permits_write`]. The rule that produces the
//! clauses is in [`rules`] and written out as a table in ARCHITECTURE.md.
//!
//! The facts the rule needs are judged where they are fresh: support teams, consents and
//! registrations by the database inside every query (the access links, [`Persons::Reached`]);
//! wide-area agreements and the directory entries a token acts through from caches that
//! hold only while their generation counters (bumped by every write of their sources, on any
//! gateway) are unchanged. A withdrawn consent, an ended agreement or a member leaving a team
//! takes effect at the next request.
//!
//! Every decision, allow or deny, is reported through [`record_decision`] (the operational
//! log); the audit trail records each interaction's outcome, denials included, through
//! `service::audit`.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::identity::{Actor, Authenticated, Interaction, Permission, Principal};
use crate::config::TenantConfig;
use crate::error::{Error, Result};
use crate::search::registry::Registry;

pub mod cache;
pub mod facts;
pub mod rules;

use facts::FactSource;

pub use rules::Kind;

/// A set of resource types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeSet {
    Only(Vec<String>),
    AllExcept(Vec<String>),
}

impl TypeSet {
    pub fn contains(&self, resource_type: &str) -> bool {
        match self {
            TypeSet::Only(types) => types.iter().any(|t| t == resource_type),
            TypeSet::AllExcept(types) => !types.iter().any(|t| t == resource_type),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, TypeSet::Only(types) if types.is_empty())
    }
}

/// One part of what a grant allows; a row is visible when any clause covers it.
#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    /// Resources of these types owned by these municipalities.
    Tenants { types: TypeSet, tenants: Vec<String> },
    /// These resources of one type (e.g. the agreements a municipality is party to).
    Ids { resource_type: String, ids: Vec<String> },
    /// The compartments of some persons, for these types: the Patient resources themselves
    /// and the resources linked to them through their compartment parameters.
    Persons {
        persons: Persons,
        /// Compartment types other than Patient, each with its compartment parameters.
        params_by_type: Vec<(String, Vec<String>)>,
        /// Whether the Patient resources themselves are included.
        include_patient: bool,
    },
    /// What `base` covers of one type, and only the resources matching one of the searches
    /// of the token's granular scopes (`patient/Observation.rs?category=…`).
    Filtered { resource_type: String, any_of: Vec<Vec<crate::search::Criterion>>, base: Box<Clause> },
}

/// Whose compartments a [`Clause::Persons`] covers.
#[derive(Debug, Clone, PartialEq)]
pub enum Persons {
    /// These Patient ids (what a write's check resolves a reach to, for the persons the
    /// written content names).
    Listed(Vec<String>),
    /// Whoever the actor reaches, judged by the database row by row from the access links
    /// (`access_links`) and registrations, so the predicate binds the same few values
    /// whether the actor reaches one person or a hundred thousand.
    Reached(Reach),
}

/// How an actor reaches persons: as a member of their active support team (with their
/// consent or as their registrar), or as their registrar alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Reach {
    pub level: ReachLevel,
    /// The references the actor appears as in a CareTeam: `PractitionerRole/…` and
    /// `Organization/…`.
    pub members: Vec<String>,
    /// The actor's Organization id (a Patient's `managingOrganization` names its registrar).
    pub organization: String,
    /// The persons' municipalities this reach covers.
    pub tenants: Vec<String>,
    /// Only this person (the token's patient context, whose `patient/` scopes reach more).
    pub only: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReachLevel {
    /// An active participant of an active CareTeam of the person, while the person has an
    /// active sharing Consent or the actor's Organization registered the person.
    Team,
    /// The actor's Organization registered the person (`Patient.managingOrganization`).
    Registration,
}

/// Permission to perform one interaction, with the scope within which it may be performed.
/// Only [`decide`] makes one.
#[derive(Debug, Clone)]
pub struct Grant {
    interaction: Interaction,
    /// The municipality that owns what this request creates, unless the resource belongs
    /// to a person of another municipality (see [`Grant::owner_for_new`]).
    home_tenant: String,
    clauses: Arc<Vec<Clause>>,
    /// Clauses for reading, used to check that the references a write makes point at
    /// resources the caller may see.
    read_clauses: Arc<Vec<Clause>>,
    /// The decision's time, in stored text form, against which links' periods are judged
    /// (a kept decision is stamped with each request's own; see [`cache`]).
    now: String,
    /// Municipalities whose rows may be visible at all (a pre-filter that lets queries use
    /// the tenant-leading indexes).
    tenants: Vec<String>,
    /// The Organization whose actors may register (create) new persons under this grant.
    registrar: Option<String>,
    /// The Organization the actor acts for (`Organization/{id}`), if any.
    organization: Option<String>,
    /// Active agreements, for checks that span municipalities (support-team participants).
    agreements: Arc<Vec<facts::Agreement>>,
    /// The operator's (and the test suite's) grant: everything in one municipality.
    unrestricted: bool,
    /// Who the grant was decided for, as the decision log names them.
    /// Whether the holder may set which Practitioner a sign-in at a municipality's OpenID
    /// Provider becomes (see [`Grant::may_map_sign_ins`]).
    maps_sign_ins: bool,
    /// For a system client keeping its own Organization's directory: that Organization
    /// (`Organization/{id}`), whose roles may name only Practitioners of no other Organization.
    keeps_own_directory: Option<String>,
    actor: String,
}

/// A grant for a write (create, update, patch, delete): the only kind of grant the store's
/// row writers take, so a read's decision can never write. Made only by
/// [`Grant::for_write`] from a decision for a write interaction; it reads as its grant
/// (the row a write replaces must be visible to it).
#[derive(Debug, Clone)]
pub struct WriteGrant(Grant);

impl std::ops::Deref for WriteGrant {
    type Target = Grant;

    fn deref(&self) -> &Grant {
        &self.0
    }
}

impl WriteGrant {
    /// The persons a version with these index rows is the data of, as this grant's clauses
    /// judge it: those its index rows refer to through the clauses' parameters (for a
    /// Patient, its own id).
    pub fn persons_of(&self, resource_type: &str, id: &str, index: &[crate::search::IndexEntry]) -> Vec<String> {
        if resource_type == "Patient" {
            return vec![id.to_owned()];
        }
        let person_params: Vec<&String> = self
            .clauses
            .iter()
            .flat_map(patient_params_of)
            .filter(|(t, _)| t == resource_type)
            .flat_map(|(_, params)| params.iter())
            .collect();
        let mut patients: Vec<String> = Vec::new();
        for entry in index {
            if let crate::search::IndexEntry::Reference { param, target_type, target_id, .. } = entry {
                if target_type == "Patient" && person_params.contains(&param) && !patients.contains(target_id) {
                    patients.push(target_id.clone());
                }
            }
        }
        patients
    }

    /// The reaches among this grant's clauses, in the order [`WriteGrant::permits_row`]
    /// expects their resolution (the store looks up which of a write's persons each reaches).
    pub fn reaches(&self) -> Vec<&Reach> {
        fn collect<'a>(clause: &'a Clause, out: &mut Vec<&'a Reach>) {
            match clause {
                Clause::Persons { persons: Persons::Reached(reach), .. } => out.push(reach),
                Clause::Filtered { base, .. } => collect(base, out),
                _ => {}
            }
        }
        let mut out = Vec::new();
        for clause in self.clauses.iter() {
            collect(clause, &mut out);
        }
        out
    }

    /// Whether a version with these index rows may be written (the store asks, on every
    /// insert and replace): its persons are [`WriteGrant::persons_of`], each of which must
    /// be covered; `reached` holds, for each of [`WriteGrant::reaches`] in order, which of
    /// those persons it reaches now; a Patient's registrar is its `organization` row.
    pub fn permits_row(
        &self,
        resource_type: &str,
        id: &str,
        owner: &str,
        index: &[crate::search::IndexEntry],
        reached: &[Vec<String>],
    ) -> bool {
        let patients = self.persons_of(resource_type, id, index);
        let registrar = index.iter().find_map(|entry| match entry {
            crate::search::IndexEntry::Reference { param, target_type, target_id, .. }
                if resource_type == "Patient" && param == "organization" && target_type == "Organization" =>
            {
                Some(format!("Organization/{target_id}"))
            }
            _ => None,
        });
        let mut reached = reached.iter();
        let clauses: Vec<Clause> = self.clauses.iter().map(|clause| resolve(clause, &mut reached)).collect();
        self.0.permits_write(&clauses, resource_type, id, owner, &patients, registrar.as_deref())
    }
}

/// `clause` with each reach replaced by the persons it was found to reach.
fn resolve(clause: &Clause, reached: &mut std::slice::Iter<'_, Vec<String>>) -> Clause {
    match clause {
        Clause::Persons { persons: Persons::Reached(_), params_by_type, include_patient } => Clause::Persons {
            persons: Persons::Listed(reached.next().cloned().unwrap_or_default()),
            params_by_type: params_by_type.clone(),
            include_patient: *include_patient,
        },
        Clause::Filtered { resource_type, any_of, base } => {
            Clause::Filtered { resource_type: resource_type.clone(), any_of: any_of.clone(), base: Box::new(resolve(base, reached)) }
        }
        other => other.clone(),
    }
}

/// The compartment parameters a clause names, by type (a filtered clause's base's).
fn patient_params_of(clause: &Clause) -> Vec<&(String, Vec<String>)> {
    match clause {
        Clause::Persons { params_by_type, .. } => params_by_type.iter().collect(),
        Clause::Filtered { base, .. } => patient_params_of(base),
        Clause::Tenants { .. } | Clause::Ids { .. } => Vec::new(),
    }
}

/// What a disclosure of a person's data across a municipal border rested on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisclosureBasis {
    /// Agreements (Contract ids) in force joining the two municipalities for the type.
    pub agreements: Vec<String>,
    /// The person's active sharing Consents (Consent ids).
    pub consents: Vec<String>,
}

impl Grant {
    pub fn interaction(&self) -> Interaction {
        self.interaction
    }

    /// The tenant new resources written under this grant belong to by default.
    pub fn home_tenant(&self) -> &str {
        &self.home_tenant
    }

    /// Whether this is the operator's grant (everything in the request's municipality)
    /// rather than one bound by the access rule.
    pub fn is_unrestricted(&self) -> bool {
        self.unrestricted
    }

    pub fn clauses(&self) -> &[Clause] {
        &self.clauses
    }

    /// The decision's time (stored text form): links' periods are judged against it.
    pub fn now(&self) -> &str {
        &self.now
    }

    /// Municipalities whose rows may be visible at all.
    pub fn tenants(&self) -> &[String] {
        &self.tenants
    }

    /// This decision as a [`WriteGrant`]; an error (a bug, never a client's doing) for a
    /// decision about reading.
    pub fn for_write(self) -> Result<WriteGrant> {
        match self.interaction {
            Interaction::Create | Interaction::Update | Interaction::Patch | Interaction::Delete => Ok(WriteGrant(self)),
            other => Err(Error::internal(format!("a grant for {} cannot write", other.as_str()))),
        }
    }

    /// The same decision, for reading: what references written under this grant may
    /// point at. Narrower or equal to what a read decision would give, never wider.
    pub fn for_reading(&self) -> Grant {
        Grant { clauses: self.read_clauses.clone(), interaction: Interaction::Read, ..self.clone() }
    }

    /// Whether a resource with this content may be written: `patients` are the persons
    /// whose compartments it is in (for a Patient, its own id), `owner` the municipality
    /// that owns (or will own) it, `managing_organization` a Patient's registrar.
    fn permits_write(
        &self,
        clauses: &[Clause],
        resource_type: &str,
        id: &str,
        owner: &str,
        patients: &[String],
        managing_organization: Option<&str>,
    ) -> bool {
        // A registering organization records a new person (or keeps its own registration).
        if matches!(self.interaction, Interaction::Create | Interaction::Update | Interaction::Patch)
            && resource_type == "Patient"
            && self.registrar.is_some()
            && managing_organization.is_some_and(|m| Some(m) == self.registrar.as_deref())
            && owner == self.home_tenant
        {
            return true;
        }
        clauses.iter().any(|clause| match clause {
            Clause::Tenants { types, tenants } => types.contains(resource_type) && tenants.iter().any(|t| t == owner),
            Clause::Ids { resource_type: allowed, ids } => allowed == resource_type && ids.iter().any(|i| i == id),
            Clause::Persons { .. } | Clause::Filtered { .. } => clause_permits(clause, resource_type, id, patients),
        })
    }

    /// Whether this grant's holder may record a person's consent or change their
    /// registration: the organization that registered the person (`registrar` is the
    /// person's `managingOrganization`), or the operator. A team member who is not the
    /// registrar may read both and add to the record, but cannot keep their own access
    /// alive by recording a second consent or moving the registration to themselves.
    pub fn may_manage_registration(&self, registrar: Option<&str>) -> bool {
        self.unrestricted || (self.organization.is_some() && registrar.is_some() && self.organization.as_deref() == registrar)
    }

    /// Whether the holder may change which Practitioner a sign-in becomes (a Practitioner's
    /// identifier in a municipality's `login.subject_system`): the server administrator and
    /// the operator. A municipal administrator keeps the directory and the support teams,
    /// but cannot also decide who signs in as a practitioner — else one person could make
    /// themselves a team member and read the person's records; the two duties stay with
    /// two administrators, as for system clients.
    pub fn may_map_sign_ins(&self) -> bool {
        self.maps_sign_ins
    }

    /// The Organization a system client keeps the directory of, when this grant is such a
    /// client's (its PractitionerRoles may name only Practitioners of no other Organization).
    pub fn keeps_own_directory(&self) -> Option<&str> {
        self.keeps_own_directory.as_deref()
    }

    /// Whether a granular scope filters what may be written of `resource_type`: the write
    /// must then leave the resource matching the filter (the service checks it in the
    /// write's transaction, before committing).
    /// Whether every clause that can cover rows of `resource_type` judges them by their
    /// persons alone (no granular filter, no id list, no municipality-wide clause): then a
    /// person's rows of the type are all visible or none is, and one of them stands for all.
    pub fn judges_by_person(&self, resource_type: &str) -> bool {
        self.clauses.iter().all(|clause| match clause {
            Clause::Persons { .. } => true,
            Clause::Tenants { types, .. } => !types.contains(resource_type),
            Clause::Ids { resource_type: t, .. } | Clause::Filtered { resource_type: t, .. } => t != resource_type,
        })
    }

    pub fn filters(&self, resource_type: &str) -> bool {
        self.clauses.iter().any(|c| matches!(c, Clause::Filtered { resource_type: t, .. } if t == resource_type))
    }

    /// Whether an active wide-area agreement joins the two municipalities (for adding a
    /// support-team participant of another municipality).
    pub fn agreement_joins(&self, tenant_a: &str, tenant_b: &str) -> bool {
        tenant_a == tenant_b || self.agreements.iter().any(|a| a.joins(tenant_a, tenant_b))
    }
}

/// The person clauses (and a filtered clause's base) for a write; the filter itself is
/// checked on the written row.
fn clause_permits(clause: &Clause, resource_type: &str, id: &str, patients: &[String]) -> bool {
    match clause {
        Clause::Persons { persons, params_by_type, include_patient } => {
            // A reach not resolved by the store covers nobody.
            let allowed: &[String] = match persons {
                Persons::Listed(ids) => ids,
                Persons::Reached(_) => &[],
            };
            if resource_type == "Patient" {
                *include_patient && allowed.iter().any(|p| p == id)
            } else {
                params_by_type.iter().any(|(t, _)| t == resource_type)
                    && !patients.is_empty()
                    && patients.iter().all(|p| allowed.contains(p))
            }
        }
        Clause::Filtered { resource_type: filtered, base, .. } => {
            filtered == resource_type
                && match base.as_ref() {
                    Clause::Tenants { types, .. } => types.contains(resource_type),
                    Clause::Ids { ids, .. } => ids.iter().any(|i| i == id),
                    other => clause_permits(other, resource_type, id, patients),
                }
        }
        Clause::Tenants { .. } | Clause::Ids { .. } => false,
    }
}

/// What a decision needs besides the request: the search-parameter registry (compartment
/// definitions), the configured municipalities and the current time.
pub struct Environment<'a> {
    pub registry: &'a Registry,
    pub tenants: &'a [TenantConfig],
    pub now: DateTime<Utc>,
    /// The request's FHIR base URL and the search limits, against which granular scopes'
    /// queries are parsed into search criteria.
    pub base_url: &'a str,
    pub limits: &'a crate::config::Limits,
    /// The agreements as last read (checked against their generation at every decision).
    pub agreements: &'a facts::AgreementCache,
    /// The actors' directory standing as last read (checked against the directory's
    /// generation at every decision).
    pub standing: &'a facts::StandingCache,
    /// Decisions already made, kept while the agreements they were made under hold.
    pub decisions: &'a cache::DecisionCache,
}

/// Decides whether `principal` may perform `interaction` on `resource_type` (None for
/// system-level interactions) at `tenant`'s base URL, and within what.
pub async fn decide(
    connection: &mut impl FactSource,
    environment: &Environment<'_>,
    principal: &Principal,
    tenant: &str,
    interaction: Interaction,
    resource_type: Option<&str>,
) -> Result<Grant> {
    let decision = decide_inner(connection, environment, principal, tenant, interaction, resource_type).await;
    record_decision(principal, tenant, interaction, resource_type, &decision);
    decision
}

async fn decide_inner(
    connection: &mut impl FactSource,
    environment: &Environment<'_>,
    principal: &Principal,
    tenant: &str,
    interaction: Interaction,
    resource_type: Option<&str>,
) -> Result<Grant> {
    // Everything in the request's municipality except its audit trail (which only auditors
    // read, and nobody writes through a grant), and nothing outside it. Agreements are still
    // read: a support team it writes may include another municipality's professionals only
    // under one.
    let unrestricted = |agreements: Vec<facts::Agreement>| {
        let everything =
            vec![Clause::Tenants { types: TypeSet::AllExcept(vec!["AuditEvent".to_owned()]), tenants: vec![tenant.to_owned()] }];
        // References may point into every municipality's directory (a team's members).
        let all_tenants: Vec<String> = environment.tenants.iter().map(|t| t.slug.clone()).collect();
        let mut read_clauses = everything.clone();
        read_clauses.push(Clause::Tenants {
            types: TypeSet::Only(rules::DIRECTORY_TYPES.iter().map(|t| (*t).to_owned()).collect()),
            tenants: all_tenants.clone(),
        });
        Grant {
            interaction,
            home_tenant: tenant.to_owned(),
            clauses: Arc::new(everything),
            read_clauses: Arc::new(read_clauses),
            now: crate::fhir::dates::format_instant(environment.now),
            tenants: all_tenants,
            registrar: None,
            organization: None,
            agreements: Arc::new(agreements),
            unrestricted: true,
            maps_sign_ins: true,
            keeps_own_directory: None,
            actor: actor_label(principal),
        }
    };
    let authenticated = match principal {
        Principal::Anonymous => {
            return Err(Error::Unauthorized("this request needs an access token (Authorization: Bearer …)".into()))
        }
        Principal::Operator => return Ok(unrestricted(facts::agreements(connection, environment).await?)),
        Principal::Authenticated(authenticated) => authenticated,
    };
    #[cfg(feature = "test-support")]
    if authenticated.actor == Actor::TestUnrestricted {
        return Ok(unrestricted(facts::agreements(connection, environment).await?));
    }
    precheck(principal, tenant, interaction, resource_type)?;
    // One read of the generation counters tells which cached facts still hold: token
    // verification's, a moment ago in this request, where this is its first decision.
    let generations = match facts::verified_generations() {
        Some(generations) => generations,
        None => connection.generations().await?,
    };
    if let Err(reason) = facts::actor_standing_cached(connection, environment, generations.directory, &authenticated.actor).await? {
        return Err(Error::Unauthorized(format!("the access token no longer speaks for anyone: {reason}")));
    }
    let world = facts::load(connection, environment, generations.agreements).await?;
    let now = crate::fhir::dates::format_instant(environment.now);
    let key = format!("{authenticated:?}\u{1f}{tenant}\u{1f}{interaction:?}\u{1f}{}", environment.base_url);
    let basis = cache::Basis {
        agreements_generation: generations.agreements,
        municipalities: environment.tenants.len(),
        in_force: world.agreements.iter().map(|a| a.active).collect(),
    };
    if let Some(grant) = environment.decisions.get(&key, &basis, &now) {
        return Ok(grant);
    }
    let clauses = rules::clauses(environment, authenticated, tenant, &world, interaction);
    let read_clauses = if matches!(interaction, Interaction::Read) {
        clauses.clone()
    } else {
        rules::clauses(environment, authenticated, tenant, &world, Interaction::Read)
    };
    let mut tenants = BTreeSet::new();
    for clause in clauses.iter().chain(&read_clauses) {
        let mut clause = clause;
        while let Clause::Filtered { base, .. } = clause {
            clause = base;
        }
        match clause {
            Clause::Tenants { tenants: listed, .. } => tenants.extend(listed.iter().cloned()),
            Clause::Ids { .. } => tenants.extend(world.agreement_tenants.iter().cloned()),
            Clause::Persons { persons: Persons::Reached(reach), .. } => tenants.extend(reach.tenants.iter().cloned()),
            // Decisions list no persons (writes resolve reaches after deciding).
            Clause::Persons { persons: Persons::Listed(_), .. } => {}
            Clause::Filtered { .. } => {}
        }
    }
    let registrar = match &authenticated.actor {
        Actor::Practitioner { organization, .. } | Actor::System { organization, .. }
            if rules::scopes_reach(authenticated, "Patient", Permission::Create) =>
        {
            Some(format!("Organization/{organization}"))
        }
        _ => None,
    };
    let grant = Grant {
        interaction,
        home_tenant: tenant.to_owned(),
        clauses: Arc::new(clauses),
        read_clauses: Arc::new(read_clauses),
        now,
        tenants: tenants.into_iter().collect(),
        registrar,
        organization: authenticated.actor.organization().map(|o| format!("Organization/{o}")),
        agreements: Arc::new(world.agreements.clone()),
        unrestricted: false,
        maps_sign_ins: matches!(authenticated.actor, Actor::ServerAdmin { .. }),
        keeps_own_directory: match &authenticated.actor {
            Actor::System { organization, maintains_directory: true, .. } => Some(format!("Organization/{organization}")),
            _ => None,
        },
        actor: actor_label(principal),
    };
    environment.decisions.put(key, basis, grant.clone());
    Ok(grant)
}

/// The part of a decision that needs no facts: a token at all, for this municipality's
/// base, whose scopes reach the type with the interaction's permission. Writes run it before
/// validating a body, so an unentitled caller hears 401/403 before anything about its
/// content; the decision itself is taken inside the write's transaction.
pub fn precheck(principal: &Principal, tenant: &str, interaction: Interaction, resource_type: Option<&str>) -> Result<()> {
    let authenticated = match principal {
        Principal::Anonymous => {
            return Err(Error::Unauthorized("this request needs an access token (Authorization: Bearer …)".into()))
        }
        Principal::Operator => return Ok(()),
        Principal::Authenticated(authenticated) => authenticated,
    };
    if authenticated.actor.tenant().is_some_and(|home| home != tenant) {
        return Err(Error::Unauthorized(format!("the access token is not valid at the base of '{tenant}'")));
    }
    let permission = interaction.permission();
    match resource_type {
        Some(resource_type) if !rules::scopes_reach(authenticated, resource_type, permission) => Err(Error::Forbidden(format!(
            "the access token's scopes do not allow '{}' on {resource_type}",
            permission.letter()
        ))),
        _ => Ok(()),
    }
}

/// A grant that sees every resource of `tenant` (except its audit trail), for one purpose
/// only: a conditional create must not duplicate a resource the caller cannot see, so the
/// service asks whether such a resource matches. Grant-less by design and named loudly;
/// what it finds never leaves the service as content — only as the refusal "a matching
/// resource exists that you cannot see".
pub fn duplicate_probe_unchecked(tenant: &str) -> Grant {
    let everything = vec![Clause::Tenants { types: TypeSet::AllExcept(vec!["AuditEvent".to_owned()]), tenants: vec![tenant.to_owned()] }];
    Grant {
        interaction: Interaction::Search,
        home_tenant: tenant.to_owned(),
        clauses: Arc::new(everything.clone()),
        read_clauses: Arc::new(everything),
        now: String::new(),
        tenants: vec![tenant.to_owned()],
        registrar: None,
        organization: None,
        agreements: Arc::new(Vec::new()),
        unrestricted: true,
        maps_sign_ins: false,
        keeps_own_directory: None,
        actor: "duplicate-probe".to_owned(),
    }
}

/// What a disclosure of persons' data from `owner` to an actor at `home`'s base rests on:
/// the agreements in force joining the two for one of the types with the permission, and
/// the persons' active sharing consents. Read from the facts, like a decision.
pub async fn disclosure_basis(
    connection: &mut impl FactSource,
    environment: &Environment<'_>,
    home: &str,
    owner: &str,
    permission: Permission,
    resource_types: &[String],
    patients: &[String],
) -> Result<DisclosureBasis> {
    let agreements = facts::agreements(connection, environment)
        .await?
        .into_iter()
        .filter(|a| a.joins(home, owner) && resource_types.iter().any(|t| a.allows_permission(t, permission)))
        .map(|a| a.id)
        .collect();
    let consents = facts::active_consents(connection, environment, patients).await?;
    Ok(DisclosureBasis { agreements, consents })
}

/// Who may read a person's `$access-report`: whoever may read the Patient, and the
/// auditors of the person's municipality. Everyone else hears what a read would answer
/// for a resource that is not there (404), or 401/403 for a refused token.
pub async fn decide_access_report(
    connection: &mut impl FactSource,
    environment: &Environment<'_>,
    principal: &Principal,
    tenant: &str,
    patient: &str,
) -> Result<()> {
    let read = decide(connection, environment, principal, tenant, Interaction::Read, Some("Patient")).await;
    let readable = match &read {
        Ok(grant) => connection.visible(grant, "Patient", patient).await?,
        Err(_) => false,
    };
    let auditor_of_owner = match principal {
        Principal::Authenticated(authenticated) => match &authenticated.actor {
            Actor::MunicipalAuditor { tenant: home, .. } => {
                connection.tenant_of("Patient", patient).await?.as_deref() == Some(home.as_str())
            }
            _ => false,
        },
        _ => false,
    };
    let decision = if readable || auditor_of_owner {
        Ok(())
    } else {
        match read {
            Err(error @ (Error::Unauthorized(_) | Error::Forbidden(_))) if !matches!(principal, Principal::Authenticated(_)) => Err(error),
            _ => Err(Error::NotFound(format!("Patient/{patient}"))),
        }
    };
    report(principal, tenant, "access-report", Some("Patient"), decision.as_ref().map(|()| 0));
    decision
}

/// Administrative operations outside the FHIR API. With `municipality` None (municipalities,
/// signing keys) only the server administrator may; with Some (that municipality's OAuth
/// clients) also that municipality's administrator.
pub fn require_administrator(principal: &Principal, municipality: Option<&str>) -> Result<()> {
    let decision = match principal {
        Principal::Anonymous => Err(Error::Unauthorized("this request needs an access token (Authorization: Bearer …)".into())),
        Principal::Operator => Ok(()),
        Principal::Authenticated(authenticated) => match (&authenticated.actor, municipality) {
            (Actor::ServerAdmin { .. }, _) => Ok(()),
            (Actor::MunicipalAdmin { tenant: home, .. }, Some(tenant)) if home == tenant => Ok(()),
            (_, Some(tenant)) => Err(Error::Forbidden(format!("only an administrator of '{tenant}' may manage its clients"))),
            (_, None) => Err(Error::Forbidden("only the server administrator may do this".into())),
        },
    };
    let what = municipality.map_or("administer the server", |_| "administer a municipality");
    report(principal, municipality.unwrap_or("-"), what, None, decision.as_ref().map(|()| 0));
    decision
}

/// The administrator a principal is, for the approval records of system clients (`None`
/// for the operator, whose command-line registrations need no second administrator, and
/// for everyone who is not an administrator).
pub fn administrator_of(principal: &Principal) -> Option<crate::identity::clients::Administrator> {
    use crate::identity::clients::Administrator;
    match principal {
        Principal::Authenticated(authenticated) => match &authenticated.actor {
            Actor::ServerAdmin { user } => Some(Administrator::Server { user: user.clone() }),
            Actor::MunicipalAdmin { tenant, user } => Some(Administrator::Municipal { tenant: tenant.clone(), user: user.clone() }),
            _ => None,
        },
        Principal::Anonymous | Principal::Operator => None,
    }
}

/// Reports a decision of [`decide`].
fn record_decision(principal: &Principal, tenant: &str, interaction: Interaction, resource_type: Option<&str>, decision: &Result<Grant, Error>) {
    report(principal, tenant, interaction.as_str(), resource_type, decision.as_ref().map(|grant| grant.clauses.len()));
}

impl Grant {
    /// Reports a refusal the service makes on this grant's terms after the decision (a
    /// write whose content the grant does not cover), through the same path as decisions.
    pub fn record_refusal(&self, what: &str, resource_type: &str, error: &Error) {
        emit(&self.actor, &self.home_tenant, what, Some(resource_type), Err(error));
    }
}

fn actor_label(principal: &Principal) -> String {
    match principal {
        Principal::Anonymous => "anonymous".to_owned(),
        Principal::Operator => "operator".to_owned(),
        Principal::Authenticated(authenticated) => serde_json::to_string(&authenticated.actor).unwrap_or_default(),
    }
}

/// The one path through which allow and deny decisions are reported: `clauses` of an
/// allowed decision, or the reason of a refusal.
fn report(principal: &Principal, tenant: &str, interaction: &str, resource_type: Option<&str>, decision: Result<usize, &Error>) {
    emit(&actor_label(principal), tenant, interaction, resource_type, decision);
}

fn emit(actor: &str, tenant: &str, interaction: &str, resource_type: Option<&str>, decision: Result<usize, &Error>) {
    match decision {
        Ok(clauses) => tracing::debug!(
            target: "renraku::policy",
            actor,
            tenant,
            interaction,
            resource_type = resource_type.unwrap_or("-"),
            clauses,
            "access allowed"
        ),
        Err(error) => tracing::info!(
            target: "renraku::policy",
            actor,
            tenant,
            interaction,
            resource_type = resource_type.unwrap_or("-"),
            reason = %error,
            "access denied"
        ),
    }
}

#[cfg(test)]
impl Grant {
    /// A grant of exactly these clauses, for the store's rendering tables (compiled only into
    /// unit tests; every grant a running server uses comes from `decide`).
    pub(crate) fn with_clauses_for_tests(interaction: Interaction, clauses: Vec<Clause>) -> Grant {
        Grant {
            interaction,
            home_tenant: "ina".to_owned(),
            read_clauses: Arc::new(clauses.clone()),
            clauses: Arc::new(clauses),
            now: "2026-12-02T00:00:00.000000Z".to_owned(),
            tenants: vec!["ina".to_owned()],
            registrar: None,
            organization: None,
            agreements: Arc::new(Vec::new()),
            unrestricted: false,
            maps_sign_ins: false,
            keeps_own_directory: None,
            actor: "test".to_owned(),
        }
    }
}
