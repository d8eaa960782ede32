//! THE access decision point. Security-sensitive: read every change to this module twice.
//!
//! Every interaction asks [`decide`] for a [`Grant`] before it touches stored resources.
//! A `Grant` can only be constructed here (its fields are private and it has no public
//! constructor), and every store function that reads or writes resource rows takes one,
//! so the compiler — not review — guarantees that no path reaches data without a decision.
//! The grant carries the scope the decision allows (for now: which tenants' rows are
//! visible), and the store applies that scope inside its SQL, so totals and pages never
//! contain rows the caller may not see.
//!
//! Every decision, allow or deny, is reported through [`record_decision`], the single path
//! the audit trail will persist.
//!
//! Current rule (until the tenancy/consent and SMART issues land): a request addressed to a
//! tenant's base URL may act on that tenant's resources and on nothing else. There is no
//! authentication yet, so `Principal::Anonymous` is the only principal.

use crate::error::{Error, Result};

/// Who is asking. Tokens (SMART) will add system clients, practitioners and administrators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials were presented.
    Anonymous,
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
}

/// Permission to perform one interaction, with the scope within which it may be performed.
/// Only [`decide`] makes one.
#[derive(Debug, Clone)]
pub struct Grant {
    interaction: Interaction,
    /// The tenant that owns what this request creates.
    home_tenant: String,
    /// The tenants whose resources the request may see.
    visible_tenants: Vec<String>,
}

impl Grant {
    pub fn interaction(&self) -> Interaction {
        self.interaction
    }

    /// The tenant new resources written under this grant belong to.
    pub fn home_tenant(&self) -> &str {
        &self.home_tenant
    }

    pub fn visible_tenants(&self) -> &[String] {
        &self.visible_tenants
    }

    pub fn may_see_tenant(&self, tenant: &str) -> bool {
        self.visible_tenants.iter().any(|visible| visible == tenant)
    }
}

/// Decides whether `principal` may perform `interaction` on `resource_type` (None for
/// system-level interactions) at `tenant`'s base URL.
pub fn decide(principal: &Principal, tenant: &str, interaction: Interaction, resource_type: Option<&str>) -> Result<Grant> {
    let decision = match principal {
        Principal::Anonymous => Ok(Grant {
            interaction,
            home_tenant: tenant.to_owned(),
            visible_tenants: vec![tenant.to_owned()],
        }),
    };
    record_decision(principal, tenant, interaction, resource_type, &decision);
    decision
}

/// The one path through which allow and deny decisions are reported.
fn record_decision(
    principal: &Principal,
    tenant: &str,
    interaction: Interaction,
    resource_type: Option<&str>,
    decision: &Result<Grant, Error>,
) {
    let allowed = decision.is_ok();
    tracing::debug!(
        target: "renraku::policy",
        ?principal,
        tenant,
        interaction = interaction.as_str(),
        resource_type = resource_type.unwrap_or("-"),
        allowed,
        "access decision"
    );
}
