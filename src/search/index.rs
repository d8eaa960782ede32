//! The index rows a resource version contributes: one per value of each search parameter,
//! and the access links the policy derives from support teams and consents.

/// One index row of a resource, for one of the index tables (see `migrations/`).
#[derive(Debug, Clone, PartialEq)]
pub enum IndexEntry {
    String { param: String, normalized: String, exact: String },
    Token { param: String, system: String, code: String, text: String },
    Reference { param: String, target_type: String, target_id: String, url: String, identifier_system: String, identifier_value: String },
    Date { param: String, low: String, high: String },
    Number { param: String, value: f64, system: String, code: String },
    Uri { param: String, uri: String },
    /// A link by which an actor (`member`: `PractitionerRole/…` or `Organization/…`) or,
    /// for a consent, the person's team (`member` empty) reaches a person, in `[valid_from,
    /// valid_to)` (fixed-width UTC text; see `migrations/*/0013_access_links.sql`). Derived by
    /// the policy (`policy::facts::access_links`) from CareTeams, Consents and Patients; the access
    /// predicate joins these rows instead of binding the persons an actor reaches.
    AccessLink { kind: String, patient: String, member: String, valid_from: String, valid_to: String },
    /// A board post, reply or chat message of a person (`crate::fhir::board`), which read
    /// state and unread counts join (`migrations/*/0016_board.sql`).
    BoardItem { patient: String, kind: String, sent: String, sender: String, parent: String, live: bool },
}

/// The `kind` of an [`IndexEntry::AccessLink`] that places an actor on a person's team.
pub const LINK_TEAM: &str = "team";
/// The `kind` of an [`IndexEntry::AccessLink`] recording who registered the person (the
/// Patient's `managingOrganization`). Unlike the person's other index rows it outlives the
/// Patient's deletion, so the registrar still sees the tombstone and the versions.
pub const LINK_REGISTRATION: &str = "registration";
/// The `kind` of an [`IndexEntry::AccessLink`] recording the person's active sharing consent.
pub const LINK_CONSENT: &str = "consent";
