//! The ground floor: who is asking and what they may ask for. The principal a token
//! speaks for ([`Principal`], [`Actor`]), the SMART permissions and scopes, the FHIR
//! interactions, the registered OAuth clients, and the request's [`Context`]. Everything
//! above (configuration, the policy, the store, authorization, the FHIR service) imports
//! these; this module imports nothing of theirs.

use serde::{Deserialize, Serialize};

pub mod clients;
pub mod scopes;

use scopes::{ScopeContext, Scopes};

/// What a caller may do to a resource: the SMART v2 permissions, in their canonical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    pub const ALL: [Permission; 5] =
        [Permission::Create, Permission::Read, Permission::Update, Permission::Delete, Permission::Search];

    pub fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }

}

/// What the caller wants to do (FHIR RESTful interactions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Read,
    Vread,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    Search,
    Create,
    Update,
    Patch,
    Delete,
}

impl Interaction {
    /// The interaction an agreement's code names (FHIR `restful-interaction` codes; `search`
    /// is read as `search-type`). Each code is its own: an agreement that lists `read` does
    /// not let `vread` or `history-instance` through.
    pub fn from_code(code: &str) -> Option<Interaction> {
        match code {
            "read" => Some(Interaction::Read),
            "vread" => Some(Interaction::Vread),
            "history-instance" => Some(Interaction::HistoryInstance),
            "history-type" => Some(Interaction::HistoryType),
            "history-system" => Some(Interaction::HistorySystem),
            "search" | "search-type" => Some(Interaction::Search),
            "create" => Some(Interaction::Create),
            "update" => Some(Interaction::Update),
            "patch" => Some(Interaction::Patch),
            "delete" => Some(Interaction::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Search => "search-type",
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
        }
    }

    /// The permission this interaction needs.
    pub fn permission(self) -> Permission {
        match self {
            Interaction::Read | Interaction::Vread | Interaction::HistoryInstance => Permission::Read,
            Interaction::HistoryType | Interaction::HistorySystem | Interaction::Search => Permission::Search,
            Interaction::Create => Permission::Create,
            Interaction::Update | Interaction::Patch => Permission::Update,
            Interaction::Delete => Permission::Delete,
        }
    }
}

/// Who a token speaks for. Stored (as JSON) with each access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Actor {
    /// A professional signed in through an app, acting in one PractitionerRole of one
    /// Organization of their municipality.
    Practitioner { tenant: String, practitioner: String, role: String, organization: String },
    /// A backend-services client (an EHR, a vendor's system) acting for one Organization;
    /// `maintains_directory` when its registration lets it keep that Organization's own
    /// directory entries (Practitioners, PractitionerRoles, Locations, HealthcareServices).
    System {
        tenant: String,
        client: String,
        organization: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        maintains_directory: bool,
    },
    /// A municipality's administrator: directory, support-team membership, agreements they
    /// are party to; no clinical content.
    MunicipalAdmin { tenant: String, user: String },
    /// A municipality's auditor: reads and searches that municipality's audit trail and
    /// nothing else.
    MunicipalAuditor { tenant: String, user: String },
    /// The operator of the whole server: tenants, agreements, directories; no clinical content.
    ServerAdmin { user: String },
    /// Sees and writes everything in the municipality of the base it calls. Exists only in builds with the `test-support` feature,
    /// which only the test suite enables; a token naming it fails to parse elsewhere.
    #[cfg(feature = "test-support")]
    TestUnrestricted,
}

impl Actor {
    /// The municipality the actor belongs to (None for the server administrator).
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Actor::Practitioner { tenant, .. }
            | Actor::System { tenant, .. }
            | Actor::MunicipalAdmin { tenant, .. }
            | Actor::MunicipalAuditor { tenant, .. } => Some(tenant),
            Actor::ServerAdmin { .. } => None,
            #[cfg(feature = "test-support")]
            Actor::TestUnrestricted => None,
        }
    }

    /// The Organization a practitioner or system client acts for.
    pub fn organization(&self) -> Option<&str> {
        match self {
            Actor::Practitioner { organization, .. } | Actor::System { organization, .. } => Some(organization),
            _ => None,
        }
    }

    /// The scope contexts whose scopes this actor's tokens may use for the user's or
    /// client's own reach (`patient/` scopes are handled separately). Administrators and
    /// auditors are people (`user/`) or automation registered for their role (`system/`).
    pub fn scope_contexts(&self) -> &'static [ScopeContext] {
        match self {
            Actor::System { .. } => &[ScopeContext::System],
            Actor::MunicipalAdmin { .. } | Actor::MunicipalAuditor { .. } | Actor::ServerAdmin { .. } => {
                &[ScopeContext::User, ScopeContext::System]
            }
            _ => &[ScopeContext::User],
        }
    }
}

/// A verified token's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub actor: Actor,
    pub scopes: Scopes,
    /// The patient context of a launch (`patient/` scopes are confined to it).
    pub patient: Option<String>,
    pub client_id: String,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials were presented.
    Anonymous,
    /// A valid access token was presented.
    Authenticated(Box<Authenticated>),
    /// The gateway process itself, acting for its operator in one municipality: demo
    /// seeding and the command-line tools (`renraku generate`). Never derived from a request.
    Operator,
}


/// Who is asking, where, and under which request id.
#[derive(Debug, Clone)]
pub struct Context {
    pub tenant: String,
    pub principal: Principal,
    /// This tenant's FHIR base URL as clients see it.
    pub base_url: String,
    pub request_id: String,
    /// `Prefer: handling=lenient`.
    pub lenient: bool,
    /// The network address the request came from (for the audit trail).
    pub client_address: Option<String>,
    /// The purpose of use the client declared (`X-Purpose-Of-Use`, a v3 PurposeOfUse code).
    pub purpose_of_use: Option<String>,
}

impl Context {
    /// The operator (command line, demo seed) acting at `tenant`'s base.
    pub fn operator(tenant: &str, base_url: String, request_id: &str) -> Context {
        Context {
            tenant: tenant.to_owned(),
            principal: Principal::Operator,
            base_url,
            request_id: request_id.to_owned(),
            lenient: false,
            client_address: None,
            purpose_of_use: None,
        }
    }
}
