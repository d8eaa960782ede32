//! The registry of OAuth clients, per municipality: backend-services (system) clients that
//! authenticate with signed JWT assertions and act for an Organization, administrator
//! clients (automation acting as a municipal administrator or auditor, or as the server
//! administrator), and app clients (public, or confidential with keys) that launch for a
//! signed-in user.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::scopes::Scopes;

/// How a client authenticates and whom it acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// SMART Backend Services: `client_credentials` with a JWT assertion; acts for its
    /// Organization.
    System,
    /// An app that cannot keep a secret (authorization code with PKCE, no client
    /// authentication).
    Public,
    /// An app that authenticates with a JWT assertion (`private_key_jwt`).
    ConfidentialAsymmetric,
    /// SMART Backend Services acting in an administrative role (its one `roles` entry): a
    /// municipality's administrator or auditor, or the server administrator (registered
    /// under [`SERVER_CLIENTS`]). Registered by the operator (`renraku admin client add`) or
    /// the server administrator only.
    Administrator,
}

/// The registry name under which clients of the server administrator are kept; such a
/// client may use the token endpoint of every municipality.
pub const SERVER_CLIENTS: &str = "_server";

/// The role a token's holder acts in: what a sign-in or a client may become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A professional of the directory (a Practitioner in a PractitionerRole).
    Practitioner,
    MunicipalAdmin,
    MunicipalAuditor,
    ServerAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Practitioner => "practitioner",
            Role::MunicipalAdmin => "municipal-admin",
            Role::MunicipalAuditor => "municipal-auditor",
            Role::ServerAdmin => "server-admin",
        }
    }

    /// Whether this is one of the administrative roles (everything but practitioner).
    pub fn is_administrative(self) -> bool {
        self != Role::Practitioner
    }
}

/// One registered client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    /// The municipality whose base URL the client's tokens are for.
    pub tenant: String,
    pub kind: ClientKind,
    #[serde(default)]
    pub name: String,
    /// For system clients: the Organization (id) the client acts for.
    #[serde(default)]
    pub organization: Option<String>,
    /// Exact-match redirect URIs (app clients).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// The scopes the client may be granted, space-separated (requests are narrowed to these).
    #[serde(default)]
    pub scopes: String,
    /// The client's public keys (a JWK Set), inline.
    #[serde(default)]
    pub jwks: Option<Value>,
    /// A file holding the client's JWK Set (configuration file only: read at start-up into
    /// `jwks`; an unreadable file stops the start).
    #[serde(default, skip_serializing)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// Where the client publishes its JWK Set; also the only `jku` its assertions may name.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The grant types the client may use; empty means its kind's: `client_credentials` for
    /// system clients, `authorization_code` and `refresh_token` for apps.
    #[serde(default)]
    pub grant_types: Vec<String>,
    /// System clients: whether the client keeps its Organization's own directory entries
    /// (creates and updates its Practitioners, and the PractitionerRoles, Locations and
    /// HealthcareServices that name the Organization), within its `scopes`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maintains_directory: bool,
    /// App clients: the roles a user signed in through the app may act in, tried in this
    /// order against what the sign-in qualifies for (empty: `practitioner` only).
    /// Administrator clients: the one role their tokens carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// For system clients registered through the admin API: who registered the client and
    /// who approved it. Set by the server, never taken from a registration body; `None` for
    /// the configuration file's clients (the operator's own file needs no second pair of eyes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// Dual control over system clients: a backend service acts for an Organization with that
/// Organization's access to persons, and whoever registers it supplies its keys. So one
/// administrator alone never makes a usable system client: a municipal administrator's
/// registration waits for the server administrator's approval, and the server
/// administrator's for an administrator of the client's municipality.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub registered_by: Administrator,
    #[serde(default)]
    pub approved_by: Option<Administrator>,
}

/// An administrator, as the approval record names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Administrator {
    Server { user: String },
    Municipal { tenant: String, user: String },
}

impl Administrator {
    /// The user (sign-in subject, or `client:{id}` for an administrator client).
    pub fn user(&self) -> &str {
        match self {
            Administrator::Server { user } | Administrator::Municipal { user, .. } => user,
        }
    }
}

impl Approval {
    /// Whether `approver` may approve this registration: the other side of the pair.
    pub fn may_be_approved_by(&self, approver: &Administrator, client_tenant: &str) -> bool {
        // One person holding both roles (the same sign-in subject) is still one person.
        if self.registered_by.user() == approver.user() {
            return false;
        }
        match (&self.registered_by, approver) {
            (Administrator::Municipal { .. }, Administrator::Server { .. }) => true,
            (Administrator::Server { .. }, Administrator::Municipal { tenant, .. }) => tenant == client_tenant,
            _ => false,
        }
    }
}

impl ClientConfig {
    /// A public app (authorization code with PKCE) registered at `tenant`, serving
    /// professionals, with nothing else set.
    pub fn public_app(client_id: &str, tenant: &str, name: &str, redirect_uris: &[&str], scopes: &str) -> ClientConfig {
        ClientConfig {
            client_id: client_id.to_owned(),
            tenant: tenant.to_owned(),
            kind: ClientKind::Public,
            name: name.to_owned(),
            organization: None,
            redirect_uris: redirect_uris.iter().map(|uri| (*uri).to_owned()).collect(),
            scopes: scopes.to_owned(),
            jwks: None,
            jwks_url: None,
            jwks_file: None,
            grant_types: Vec::new(),
            roles: Vec::new(),
            maintains_directory: false,
            approval: None,
        }
    }

    /// Checks a registration; the message names the field at fault.
    pub fn check(&self) -> Result<(), String> {
        let id_ok = !self.client_id.is_empty()
            && self.client_id.len() <= 100
            && self.client_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !id_ok {
            return Err("client_id: 1 to 100 unreserved URL characters".into());
        }
        Scopes::parse(&self.scopes).map_err(|e| format!("scopes: {e}"))?;
        match self.kind {
            ClientKind::System => {
                if self.organization.as_deref().is_none_or(str::is_empty) {
                    return Err("organization: a system client acts for an Organization".into());
                }
                if self.jwks.is_none() && self.jwks_url.is_none() {
                    return Err("jwks: a system client needs its public keys (jwks or jwks_url)".into());
                }
            }
            ClientKind::ConfidentialAsymmetric => {
                if self.jwks.is_none() && self.jwks_url.is_none() {
                    return Err("jwks: a confidential client needs its public keys (jwks or jwks_url)".into());
                }
                if self.redirect_uris.is_empty() {
                    return Err("redirect_uris: an app client needs at least one".into());
                }
            }
            ClientKind::Public => {
                if self.redirect_uris.is_empty() {
                    return Err("redirect_uris: an app client needs at least one".into());
                }
            }
            ClientKind::Administrator => {
                if self.jwks.is_none() && self.jwks_url.is_none() {
                    return Err("jwks: an administrator client needs its public keys (jwks or jwks_url)".into());
                }
                match self.roles.as_slice() {
                    [Role::ServerAdmin] if self.tenant != SERVER_CLIENTS => {
                        return Err(format!("tenant: a server administrator's client is registered under '{SERVER_CLIENTS}'"))
                    }
                    [Role::MunicipalAdmin | Role::MunicipalAuditor] if self.tenant == SERVER_CLIENTS => {
                        return Err("tenant: a municipal administrator's or auditor's client belongs to a municipality".into())
                    }
                    [Role::ServerAdmin | Role::MunicipalAdmin | Role::MunicipalAuditor] => {}
                    _ => {
                        return Err(
                            "roles: an administrator client acts in exactly one of municipal-admin, municipal-auditor, server-admin".into()
                        )
                    }
                }
            }
        }
        if self.kind != ClientKind::Administrator && self.tenant == SERVER_CLIENTS {
            return Err(format!("tenant: only administrator clients are registered under '{SERVER_CLIENTS}'"));
        }
        if self.maintains_directory && self.kind != ClientKind::System {
            return Err("maintains_directory: only a system client keeps its Organization's directory".into());
        }
        if matches!(self.kind, ClientKind::System) && !self.roles.is_empty() {
            return Err("roles: a system client acts for its Organization, in no user role".into());
        }
        for grant_type in &self.grant_types {
            if !matches!(grant_type.as_str(), "client_credentials" | "authorization_code" | "refresh_token") {
                return Err(format!("grant_types: '{grant_type}' is not supported"));
            }
        }
        if let Some(jwks) = &self.jwks {
            if !jwks.get("keys").is_some_and(Value::is_array) {
                return Err("jwks: must be a JWK Set ({\"keys\": [...]})".into());
            }
        }
        Ok(())
    }

    /// Whether the client is a system client whose registration still awaits its second
    /// administrator (it gets no token until then).
    pub fn awaits_approval(&self) -> bool {
        self.kind == ClientKind::System && self.approval.as_ref().is_some_and(|a| a.approved_by.is_none())
    }

    /// Whether the client authenticates at the token endpoint with `client_credentials` and
    /// acts on its own (system and administrator clients).
    pub fn is_backend_service(&self) -> bool {
        matches!(self.kind, ClientKind::System | ClientKind::Administrator)
    }

    /// The roles a user signed in through this app may act in, in order of preference.
    pub fn sign_in_roles(&self) -> Vec<Role> {
        if self.roles.is_empty() {
            vec![Role::Practitioner]
        } else {
            self.roles.clone()
        }
    }

    /// Whether the client may use `grant_type`.
    pub fn may_use(&self, grant_type: &str) -> bool {
        if self.grant_types.is_empty() {
            return match self.kind {
                ClientKind::System | ClientKind::Administrator => grant_type == "client_credentials",
                ClientKind::Public | ClientKind::ConfidentialAsymmetric => matches!(grant_type, "authorization_code" | "refresh_token"),
            };
        }
        let kind_allows = match self.kind {
            ClientKind::System | ClientKind::Administrator => grant_type == "client_credentials",
            ClientKind::Public | ClientKind::ConfidentialAsymmetric => grant_type != "client_credentials",
        };
        kind_allows && self.grant_types.iter().any(|g| g == grant_type)
    }

    /// The scopes the client may be granted.
    pub fn allowed_scopes(&self) -> Scopes {
        Scopes::parse(&self.scopes).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dual control: the other kind of administrator approves, never the same person.
    #[test]
    fn approvals_need_the_other_administrator() {
        let server = |user: &str| Administrator::Server { user: user.into() };
        let municipal = |tenant: &str, user: &str| Administrator::Municipal { tenant: tenant.into(), user: user.into() };
        let cases = [
            (municipal("ina", "a"), server("b"), true),
            (municipal("ina", "a"), municipal("ina", "b"), false),
            (server("a"), municipal("ina", "b"), true),
            (server("a"), municipal("minowa", "b"), false),
            (server("a"), server("b"), false),
            // One person holding both roles at one provider is one person.
            (municipal("ina", "https://idp|kato"), server("https://idp|kato"), false),
            (server("https://idp|kato"), municipal("ina", "https://idp|kato"), false),
        ];
        for (registered_by, approver, expected) in cases {
            let approval = Approval { registered_by: registered_by.clone(), approved_by: None };
            assert_eq!(approval.may_be_approved_by(&approver, "ina"), expected, "{registered_by:?} approved by {approver:?}");
        }
    }
}
