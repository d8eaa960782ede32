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

impl IndexEntry {
    /// A total order of entries — by kind, then field by field (a number by its value last) —
    /// in which equal entries are adjacent: a resource's entries are sorted by it and their
    /// repeats dropped. Until session 22 they were sorted by their `Debug` text, formatted
    /// for every entry of every write and audit event.
    pub fn order(&self, other: &IndexEntry) -> std::cmp::Ordering {
        let (kind, fields, number) = self.key();
        let (other_kind, other_fields, other_number) = other.key();
        kind.cmp(&other_kind).then_with(|| fields.cmp(&other_fields)).then_with(|| {
            if number == other_number {
                std::cmp::Ordering::Equal
            } else {
                number.total_cmp(&other_number)
            }
        })
    }

    fn key(&self) -> (u8, [&str; 6], f64) {
        match self {
            IndexEntry::String { param, normalized, exact } => (0, [param, normalized, exact, "", "", ""], 0.0),
            IndexEntry::Token { param, system, code, text } => (1, [param, system, code, text, "", ""], 0.0),
            IndexEntry::Reference { param, target_type, target_id, url, identifier_system, identifier_value } => {
                (2, [param, target_type, target_id, url, identifier_system, identifier_value], 0.0)
            }
            IndexEntry::Date { param, low, high } => (3, [param, low, high, "", "", ""], 0.0),
            IndexEntry::Number { param, value, system, code } => (4, [param, system, code, "", "", ""], *value),
            IndexEntry::Uri { param, uri } => (5, [param, uri, "", "", "", ""], 0.0),
            IndexEntry::AccessLink { kind, patient, member, valid_from, valid_to } => (6, [kind, patient, member, valid_from, valid_to, ""], 0.0),
            IndexEntry::BoardItem { patient, kind, sent, sender, parent, live } => {
                (7, [patient, kind, sent, sender, parent, if *live { "1" } else { "0" }], 0.0)
            }
        }
    }
}

/// The `kind` of an [`IndexEntry::AccessLink`] that places an actor on a person's team.
pub const LINK_TEAM: &str = "team";
/// The `kind` of an [`IndexEntry::AccessLink`] recording who registered the person (the
/// Patient's `managingOrganization`). Unlike the person's other index rows it outlives the
/// Patient's deletion, so the registrar still sees the tombstone and the versions.
pub const LINK_REGISTRATION: &str = "registration";
/// The `kind` of an [`IndexEntry::AccessLink`] recording the person's active sharing consent.
pub const LINK_CONSENT: &str = "consent";

#[cfg(test)]
mod tests {
    use super::*;

    fn token(param: &str, code: &str) -> IndexEntry {
        IndexEntry::Token { param: param.into(), system: "s".into(), code: code.into(), text: String::new() }
    }

    fn number(value: f64) -> IndexEntry {
        IndexEntry::Number { param: "n".into(), value, system: String::new(), code: String::new() }
    }

    #[test]
    fn sorted_by_their_order_equal_entries_are_adjacent_and_dropped_once_each() {
        let reference = IndexEntry::Reference {
            param: "patient".into(),
            target_type: "Patient".into(),
            target_id: "p1".into(),
            url: String::new(),
            identifier_system: String::new(),
            identifier_value: String::new(),
        };
        let mut entries = vec![
            token("code", "b"),
            number(2.5),
            reference.clone(),
            token("code", "a"),
            number(-1.0),
            token("code", "b"),
            number(2.5),
            reference.clone(),
            number(0.0),
            number(-0.0),
        ];
        entries.sort_by(IndexEntry::order);
        entries.dedup();
        // One of each distinct entry (0.0 and -0.0 are the same number), in a total order.
        assert_eq!(entries, vec![token("code", "a"), token("code", "b"), reference, number(-1.0), number(0.0), number(2.5)]);
        assert!(entries.windows(2).all(|pair| pair[0].order(&pair[1]) == std::cmp::Ordering::Less));
    }
}
