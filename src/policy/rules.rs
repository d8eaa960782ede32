//! The access rule: which clauses an actor gets for one permission, given the facts.
//! Written out as a table in ARCHITECTURE.md ("The access rule"); keep the two in step.

use std::collections::BTreeMap;

use super::facts::World;
use super::{Actor, Authenticated, Clause, Environment, Interaction, Permission, Persons, Reach, ReachLevel, TypeSet};
use crate::identity::scopes::ScopeContext;

/// What kind of information a resource type holds, for the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Patient and every type in the Patient compartment (except AuditEvent): a person's data.
    PatientData,
    /// Facilities and professionals: Organization, Practitioner, PractitionerRole, Location,
    /// HealthcareService, Endpoint.
    Directory,
    /// Contract: wide-area agreements.
    Agreement,
    /// AuditEvent: the audit trail.
    Audit,
    /// Everything else (terminology, Medication, Subscription, …).
    Other,
}

pub const DIRECTORY_TYPES: [&str; 6] =
    ["Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService", "Endpoint"];

/// The types a registering organization may handle for the persons it registered, before a
/// team or consent exists: enough to record the person, the consent and form the team.
pub const REGISTRATION_TYPES: [&str; 3] = ["Patient", "Consent", "CareTeam"];

/// The searches that pick out a person's consent papers (同意書: a DocumentReference of LOINC
/// 59284-0, and the Binary it holds), which the registrar and the municipality's auditors
/// read even when the registrar is not on the team or the consent was withdrawn.
const CONSENT_PAPERS: [(&str, &str); 2] = [
    ("DocumentReference", "type=http://loinc.org|59284-0"),
    ("Binary", "security-context:DocumentReference.type=http://loinc.org|59284-0"),
];

/// `base`'s rows of each consent-paper type, narrowed to the consent papers; `base_for` gives
/// the base clause for one type.
fn consent_papers(environment: &Environment<'_>, scoped: &dyn Fn(&[&str]) -> Vec<String>, base_for: &dyn Fn(&str) -> Clause) -> Vec<Clause> {
    let mut clauses = Vec::new();
    for (resource_type, query) in CONSENT_PAPERS {
        if scoped(&[resource_type]).is_empty() {
            continue;
        }
        let criteria = crate::search::parse::scope_query(environment.registry, resource_type, query, environment.base_url, environment.limits);
        clauses.extend(criteria.map(|criteria| Clause::Filtered {
            resource_type: resource_type.to_owned(),
            any_of: vec![criteria],
            base: Box::new(base_for(resource_type)),
        }));
    }
    clauses
}

pub fn kind(environment: &Environment<'_>, resource_type: &str) -> Kind {
    kind_in(environment.registry, resource_type)
}

/// The kind of `resource_type` by the search parameters of `registry`: agreements, the trail
/// and the directory first (a Contract may name a Patient as its subject, yet it is an
/// agreement), then a person's data — Patient, and every type that can refer to one.
pub fn kind_in(registry: &crate::search::Registry, resource_type: &str) -> Kind {
    match resource_type {
        "Contract" => Kind::Agreement,
        "AuditEvent" => Kind::Audit,
        t if DIRECTORY_TYPES.contains(&t) => Kind::Directory,
        "Patient" => Kind::PatientData,
        t if !registry.person_params(t).is_empty() => Kind::PatientData,
        _ => Kind::Other,
    }
}

/// Every type of a person's data.
fn patient_data_types(environment: &Environment<'_>) -> Vec<String> {
    let mut types: Vec<String> = std::iter::once("Patient")
        .chain(environment.registry.person_types())
        .filter(|t| kind(environment, t) == Kind::PatientData)
        .map(str::to_owned)
        .collect();
    types.sort();
    types.dedup();
    types
}

/// Whether any of the token's scopes reaches `resource_type` with `permission` at all
/// (checked before any data is looked at, so a refusal reveals nothing).
pub fn scopes_reach(authenticated: &Authenticated, resource_type: &str, permission: Permission) -> bool {
    #[cfg(feature = "test-support")]
    if authenticated.actor == Actor::TestUnrestricted {
        return true;
    }
    applicable_contexts(authenticated).iter().any(|c| {
        authenticated.scopes.permits(*c, resource_type, permission)
            || !authenticated.scopes.granular_queries(*c, resource_type, permission).is_empty()
    })
}

/// The scope contexts that count for this token: the actor's own, and `patient/` when the
/// token has a patient context.
fn applicable_contexts(authenticated: &Authenticated) -> Vec<ScopeContext> {
    let mut contexts = authenticated.actor.scope_contexts().to_vec();
    if authenticated.patient.is_some() {
        contexts.push(ScopeContext::Patient);
    }
    contexts
}

/// Splits the types that only granular scopes reach out of `clauses` into `Filtered`
/// clauses carrying the scopes' searches; a query the server cannot apply grants nothing.
/// Only the scopes of `contexts` count: a `patient/` scope reaches the token's patient
/// context and nobody else, so it never lifts a granular `user/` restriction on others.
fn apply_granular(
    environment: &Environment<'_>,
    authenticated: &Authenticated,
    permission: Permission,
    contexts: &[ScopeContext],
    clauses: Vec<Clause>,
) -> Vec<Clause> {
    // Whether a blanket (query-free) scope of `contexts` reaches the type.
    let blanket = |resource_type: &str| contexts.iter().any(|c| authenticated.scopes.permits(*c, resource_type, permission));
    let filtered = |resource_type: &str, base: Clause| -> Option<Clause> {
        let queries: Vec<String> = contexts
            .iter()
            .flat_map(|c| authenticated.scopes.granular_queries(*c, resource_type, permission))
            .collect();
        let any_of: Vec<_> = queries.iter().filter_map(|q| crate::search::parse::scope_query(environment.registry, resource_type, q, environment.base_url, environment.limits)).collect();
        (!any_of.is_empty()).then(|| Clause::Filtered { resource_type: resource_type.to_owned(), any_of, base: Box::new(base) })
    };
    let mut result = Vec::new();
    for clause in clauses {
        match clause {
            Clause::Tenants { types: TypeSet::Only(types), tenants } => {
                let (full, partial): (Vec<String>, Vec<String>) = types.into_iter().partition(|t| blanket(t));
                for t in partial {
                    result.extend(filtered(&t, Clause::Tenants { types: TypeSet::Only(vec![t.clone()]), tenants: tenants.clone() }));
                }
                result.push(Clause::Tenants { types: TypeSet::Only(full), tenants });
            }
            Clause::Ids { resource_type, ids } if !blanket(&resource_type) => {
                result.extend(filtered(&resource_type.clone(), Clause::Ids { resource_type, ids }));
            }
            Clause::Persons { persons, params_by_type, include_patient } => {
                let (full, partial): (Vec<_>, Vec<_>) =
                    params_by_type.into_iter().partition(|(t, _)| blanket(t));
                for (t, params) in partial {
                    let base = Clause::Persons { persons: persons.clone(), params_by_type: vec![(t.clone(), params)], include_patient: false };
                    result.extend(filtered(&t, base));
                }
                let patient_full = blanket("Patient");
                if include_patient && !patient_full {
                    let base = Clause::Persons { persons: persons.clone(), params_by_type: Vec::new(), include_patient: true };
                    result.extend(filtered("Patient", base));
                }
                result.push(Clause::Persons { persons, params_by_type: full, include_patient: include_patient && patient_full });
            }
            other => result.push(other),
        }
    }
    result
}

/// What a system client registered to keep its Organization's directory may write, in its
/// own municipality: the PractitionerRoles, Locations and HealthcareServices that name the
/// Organization (before and after the write: the filter is checked on the written row), and
/// new Practitioners (a Practitioner grants nothing until a role names it). It does not
/// change existing Practitioners (one may also work elsewhere), and a role it writes may name
/// only a Practitioner no other Organization's role names (`Grant::keeps_own_directory`,
/// checked by the service). Who signs in as a Practitioner stays the server administrator's.
fn own_directory(
    environment: &Environment<'_>,
    organization: &str,
    tenant: &str,
    interaction: Interaction,
    scoped: &dyn Fn(&[&str]) -> Vec<String>,
) -> Vec<Clause> {
    let named = format!("organization=Organization/{organization}");
    let filters = [("PractitionerRole", named.as_str()), ("Location", named.as_str()), ("HealthcareService", named.as_str())];
    let mut clauses = Vec::new();
    if interaction == Interaction::Create && !scoped(&["Practitioner"]).is_empty() {
        clauses.push(Clause::Tenants { types: TypeSet::Only(vec!["Practitioner".to_owned()]), tenants: vec![tenant.to_owned()] });
    }
    for (resource_type, query) in filters {
        if scoped(&[resource_type]).is_empty() {
            continue;
        }
        let base = Clause::Tenants { types: TypeSet::Only(vec![resource_type.to_owned()]), tenants: vec![tenant.to_owned()] };
        let criteria = crate::search::parse::scope_query(environment.registry, resource_type, query, environment.base_url, environment.limits);
        clauses.extend(criteria.map(|criteria| Clause::Filtered { resource_type: resource_type.to_owned(), any_of: vec![criteria], base: Box::new(base) }));
    }
    clauses
}

/// A practitioner's or system client's own Subscriptions, in its municipality: those whose
/// owner (stamped by the server, `fhir::subscription::OWNER_EXTENSION`) is its
/// PractitionerRole or, for a system client, its Organization. Nobody else sees another's
/// endpoint and headers, or changes whom its notifications act for.
fn own_subscriptions(environment: &Environment<'_>, actor: &Actor, tenant: &str, scoped: &dyn Fn(&[&str]) -> Vec<String>) -> Vec<Clause> {
    let owner = match actor {
        Actor::Practitioner { role, .. } => format!("PractitionerRole/{role}"),
        Actor::System { organization, .. } => format!("Organization/{organization}"),
        _ => return Vec::new(),
    };
    if scoped(&["Subscription"]).is_empty() {
        return Vec::new();
    }
    let base = Clause::Tenants { types: TypeSet::Only(vec!["Subscription".to_owned()]), tenants: vec![tenant.to_owned()] };
    let query = format!("owner={owner}");
    let criteria = crate::search::parse::scope_query(environment.registry, "Subscription", &query, environment.base_url, environment.limits);
    criteria.map(|criteria| Clause::Filtered { resource_type: "Subscription".to_owned(), any_of: vec![criteria], base: Box::new(base) }).into_iter().collect()
}

/// The clauses `authenticated` gets for `permission` at `tenant`'s base.
pub fn clauses(
    environment: &Environment<'_>,
    authenticated: &Authenticated,
    tenant: &str,
    world: &World,
    interaction: Interaction,
) -> Vec<Clause> {
    let permission = interaction.permission();
    let contexts = authenticated.actor.scope_contexts();
    let scopes = &authenticated.scopes;
    let scoped = |types: &[&str]| -> Vec<String> {
        types
            .iter()
            .filter(|t| contexts.iter().any(|c| scopes.permits(*c, t, permission) || !scopes.granular_queries(*c, t, permission).is_empty()))
            .map(|t| (*t).to_owned())
            .collect()
    };
    let reading = matches!(permission, Permission::Read | Permission::Search);
    let mut home_and_partners = vec![tenant.to_owned()];
    home_and_partners.extend(world.partners(tenant));
    let all_tenants: Vec<String> = environment.tenants.iter().map(|t| t.slug.clone()).collect();
    let mut clauses = Vec::new();
    match &authenticated.actor {
        Actor::Practitioner { .. } | Actor::System { .. } => {
            if reading {
                clauses.push(Clause::Tenants { types: TypeSet::Only(scoped(&DIRECTORY_TYPES)), tenants: home_and_partners });
            }
            let mut excluded = patient_data_types(environment);
            excluded.extend(DIRECTORY_TYPES.iter().map(|t| (*t).to_owned()));
            excluded.extend(["Contract".to_owned(), "AuditEvent".to_owned(), "Subscription".to_owned()]);
            let other = if contexts.iter().any(|c| scopes.permits_all_types(*c, permission)) {
                TypeSet::AllExcept(excluded)
            } else {
                let named: Vec<String> = contexts
                    .iter()
                    .flat_map(|c| scopes.named_types(*c, permission))
                    .filter(|t| !excluded.contains(t))
                    .collect();
                TypeSet::Only(named)
            };
            clauses.push(Clause::Tenants { types: other, tenants: vec![tenant.to_owned()] });
            clauses.extend(own_subscriptions(environment, &authenticated.actor, tenant, &scoped));
            if let Actor::System { organization, maintains_directory: true, .. } = &authenticated.actor {
                if !reading {
                    clauses.extend(own_directory(environment, organization, tenant, interaction, &scoped));
                }
            }
        }
        Actor::MunicipalAdmin { .. } => {
            clauses.push(Clause::Tenants { types: TypeSet::Only(scoped(&DIRECTORY_TYPES)), tenants: vec![tenant.to_owned()] });
            if reading {
                let partners = world.partners(tenant);
                clauses.push(Clause::Tenants { types: TypeSet::Only(scoped(&DIRECTORY_TYPES)), tenants: partners });
                let party_to: Vec<String> =
                    world.agreements.iter().filter(|a| a.parties.iter().any(|p| p == tenant)).map(|a| a.id.clone()).collect();
                if !scoped(&["Contract"]).is_empty() {
                    clauses.push(Clause::Ids { resource_type: "Contract".into(), ids: party_to });
                }
                clauses.push(Clause::Tenants { types: TypeSet::Only(scoped(&["Patient"])), tenants: vec![tenant.to_owned()] });
            }
            clauses.push(Clause::Tenants { types: TypeSet::Only(scoped(&["CareTeam"])), tenants: vec![tenant.to_owned()] });
        }
        Actor::MunicipalAuditor { .. } => {
            if reading {
                clauses.push(Clause::Tenants { types: TypeSet::Only(scoped(&["AuditEvent"])), tenants: vec![tenant.to_owned()] });
                let home = |resource_type: &str| Clause::Tenants { types: TypeSet::Only(vec![resource_type.to_owned()]), tenants: vec![tenant.to_owned()] };
                clauses.extend(consent_papers(environment, &scoped, &home));
            }
        }
        Actor::ServerAdmin { .. } => {
            clauses.push(Clause::Tenants { types: TypeSet::Only(scoped(&DIRECTORY_TYPES)), tenants: all_tenants.clone() });
            clauses.push(Clause::Tenants { types: TypeSet::Only(scoped(&["Contract"])), tenants: all_tenants });
        }
        #[cfg(feature = "test-support")]
        Actor::TestUnrestricted => clauses.push(Clause::Tenants {
            types: TypeSet::AllExcept(vec!["AuditEvent".to_owned()]),
            tenants: vec![tenant.to_owned()],
        }),
    }
    let mut clauses = apply_granular(environment, authenticated, permission, &applicable_contexts(authenticated), clauses);
    if matches!(authenticated.actor, Actor::Practitioner { .. } | Actor::System { .. }) {
        clauses.extend(patient_clauses(environment, authenticated, tenant, world, interaction));
    }
    clauses.retain(|clause| match clause {
        Clause::Tenants { types, tenants } => !types.is_empty() && !tenants.is_empty(),
        Clause::Ids { ids, .. } => !ids.is_empty(),
        Clause::Persons { persons, params_by_type, include_patient } => {
            let nobody = match persons {
                Persons::Listed(ids) => ids.is_empty(),
                Persons::Reached(reach) => reach.tenants.is_empty(),
            };
            !nobody && (*include_patient || !params_by_type.is_empty())
        }
        Clause::Filtered { .. } => true,
    });
    clauses
}

/// The persons' compartments an actor with an organization may reach: for each level of
/// reach (team, registration) one clause per set of types the persons' municipalities allow
/// (the home municipality, and each partner under the agreements in force for the
/// interaction). Which persons are reached is left to the database (`Persons::Reached`), so
/// the clauses are the same few whether the actor reaches one person or a hundred thousand.
fn patient_clauses(
    environment: &Environment<'_>,
    authenticated: &Authenticated,
    tenant: &str,
    world: &World,
    interaction: Interaction,
) -> Vec<Clause> {
    let (members, organization) = match &authenticated.actor {
        Actor::Practitioner { role, organization, .. } => {
            (vec![format!("PractitionerRole/{role}"), format!("Organization/{organization}")], organization.clone())
        }
        Actor::System { organization, .. } => (vec![format!("Organization/{organization}")], organization.clone()),
        _ => return Vec::new(),
    };
    let permission = interaction.permission();
    let all_types = patient_data_types(environment);
    let registration_types: Vec<String> = REGISTRATION_TYPES.iter().map(|t| (*t).to_owned()).collect();
    let contexts = authenticated.actor.scope_contexts();
    let scopes = &authenticated.scopes;
    let mut person_tenants = vec![tenant.to_owned()];
    person_tenants.extend(world.partners(tenant));
    // Everyone the actor reaches under its own scopes; and, for a token with a patient
    // context, that person again under the `patient/` scopes too (which count for them alone).
    let mut passes: Vec<Option<String>> = vec![None];
    if let Some(patient) = &authenticated.patient {
        passes.push(Some(patient.clone()));
    }
    let mut clauses = Vec::new();
    for only in passes {
        let mut contexts_for_person = contexts.to_vec();
        if only.is_some() {
            contexts_for_person.push(ScopeContext::Patient);
        }
        for (level, base) in [(ReachLevel::Team, &all_types), (ReachLevel::Registration, &registration_types)] {
            // Person municipalities grouped by the types reached there.
            let mut groups: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
            for person_tenant in &person_tenants {
                let types: Vec<String> = base
                    .iter()
                    .filter(|t| {
                        person_tenant == tenant
                            || world.agreements.iter().any(|a| a.joins(tenant, person_tenant) && a.allows(t, interaction))
                    })
                    .filter(|t| {
                        contexts_for_person
                            .iter()
                            .any(|c| scopes.permits(*c, t, permission) || !scopes.granular_queries(*c, t, permission).is_empty())
                    })
                    .cloned()
                    .collect();
                if !types.is_empty() {
                    groups.entry(types).or_default().push(person_tenant.clone());
                }
            }
            for (types, tenants) in groups {
                let reach = Reach {
                    level,
                    members: members.clone(),
                    organization: organization.clone(),
                    tenants,
                    only: only.clone(),
                };
                let clause = Clause::Persons {
                    persons: Persons::Reached(reach),
                    include_patient: types.iter().any(|t| t == "Patient"),
                    params_by_type: types
                        .iter()
                        .filter(|t| *t != "Patient")
                        .map(|t| (t.clone(), environment.registry.person_params(t).to_vec()))
                        .collect(),
                };
                clauses.extend(apply_granular(environment, authenticated, permission, &contexts_for_person, vec![clause]));
            }
        }
        // The registrar reads the consent papers of the persons it registered, on the team
        // or not, consent withdrawn or not (the record of what was agreed).
        if matches!(permission, Permission::Read | Permission::Search) {
            let scoped = |types: &[&str]| -> Vec<String> {
                types
                    .iter()
                    .filter(|t| contexts_for_person.iter().any(|c| scopes.permits(*c, t, permission)))
                    .map(|t| (*t).to_owned())
                    .collect()
            };
            let registered = |resource_type: &str| Clause::Persons {
                persons: Persons::Reached(Reach {
                    level: ReachLevel::Registration,
                    members: members.clone(),
                    organization: organization.clone(),
                    tenants: vec![tenant.to_owned()],
                    only: only.clone(),
                }),
                include_patient: false,
                params_by_type: vec![(resource_type.to_owned(), environment.registry.person_params(resource_type).to_vec())],
            };
            clauses.extend(consent_papers(environment, &scoped, &registered));
        }
    }
    clauses
}
