//! The board (掲示板) and chat of a person's support team, as FHIR Communications.
//!
//! - A **board post**: `category` = [`KIND_SYSTEM`]`|board`, `subject` = the person,
//!   `sender` = the author's PractitionerRole (or Organization), `sent`, `payload` (text,
//!   attachments as `contentAttachment` with `url` = `Binary/…`). A **reply** is a board
//!   item whose `inResponseTo` names the post (threads are one level deep: a reply to a
//!   reply names the same post).
//! - A **chat message**: `category` = `…|chat`, the same elements, `recipient` = the team
//!   members it is addressed to (absent: the whole team).
//!
//! Both are checked against the profile `renraku-board-message` whatever their
//! `meta.profile` says (`Validator::validate`). Each board or chat item is also a
//! [`BoardItem`] row (`board_items`), derived at every write like the search index, which
//! read state (既読) and unread counts join.

use serde_json::Value;

/// The code system of board and chat categories (`conformance/codesystem-communication-kind.json`).
pub const KIND_SYSTEM: &str = "https://renraku.example.jp/fhir/CodeSystem/communication-kind";
/// The profile every board post, reply and chat message is checked against.
pub const BOARD_PROFILE: &str = "https://renraku.example.jp/fhir/StructureDefinition/renraku-board-message";

/// What a board or chat item is, for read state and unread counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardItem {
    /// The person (Patient id) whose board or chat it is on.
    pub patient: String,
    /// `board` or `chat`.
    pub kind: String,
    /// `sent`, as a stored instant (fixed-width UTC text, comparable as text).
    pub sent: String,
    /// Who sent it (`PractitionerRole/…`, `Organization/…`), as written.
    pub sender: String,
    /// For a reply, the post it answers (a Communication id); empty otherwise.
    pub parent: String,
    /// False for an item entered in error: still listed on the board (a search finds it),
    /// but nobody's unread item and no reply.
    pub live: bool,
}

/// A change on a person's board or chat, announced once it has committed
/// (`Runtime::board_events`): the seam through which notifications (issue #17) learn of new
/// posts, replies and chat messages and of read state. It names ids only; whoever acts on it
/// reads the item under their own grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardEvent {
    /// The municipality at whose base the change was made.
    pub tenant: String,
    /// The person (Patient id) whose board or chat it is.
    pub patient: String,
    pub change: BoardChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoardChange {
    /// A new board post, reply (`reply_to`: the post) or chat message (`kind` = `chat`).
    Posted { item: String, kind: String, reply_to: Option<String> },
    /// `reader` marked `items` read, or everything up to `through`.
    Read { reader: String, items: Vec<String>, through: Option<String> },
}

/// The event announcing a newly created Communication, if it is a board or chat item.
pub fn posted(tenant: &str, resource: &Value) -> Option<BoardEvent> {
    let item = item_of(resource)?;
    let id = resource.get("id").and_then(Value::as_str)?.to_owned();
    let reply_to = (!item.parent.is_empty()).then(|| item.parent.clone());
    Some(BoardEvent { tenant: tenant.to_owned(), patient: item.patient, change: BoardChange::Posted { item: id, kind: item.kind, reply_to } })
}

/// The board kind of a Communication (`board` or `chat`), if it is one.
pub fn kind_of(resource: &Value) -> Option<&'static str> {
    let categories = resource.get("category").and_then(Value::as_array)?;
    categories
        .iter()
        .flat_map(|category| category.get("coding").and_then(Value::as_array).into_iter().flatten())
        .filter(|coding| coding.get("system").and_then(Value::as_str) == Some(KIND_SYSTEM))
        .find_map(|coding| match coding.get("code").and_then(Value::as_str) {
            Some("board") => Some("board"),
            Some("chat") => Some("chat"),
            _ => None,
        })
}

/// The board item a Communication is, if it is a live board post, reply or chat message of
/// one person (one entered in error is nobody's unread item).
pub fn item_of(resource: &Value) -> Option<BoardItem> {
    listed_of(resource).filter(|item| item.live)
}

/// The board item a Communication is listed as on its person's board, live or entered in
/// error: the row of the board's index (`board_items`), which a board page is read from.
pub fn listed_of(resource: &Value) -> Option<BoardItem> {
    if resource.get("resourceType").and_then(Value::as_str) != Some("Communication") {
        return None;
    }
    let kind = kind_of(resource)?;
    let live = resource.get("status").and_then(Value::as_str) != Some("entered-in-error");
    // The person as the search index reads the reference (a version or an absolute URL
    // ending in Patient/[id] names it too): a board page is read from these rows, so every
    // Communication a `subject=Patient/[id]` search matches must have its row here.
    let (target_type, patient, _) = crate::fhir::references::split_reference(resource.pointer("/subject/reference").and_then(Value::as_str)?);
    if target_type != "Patient" {
        return None;
    }
    let sent_text = resource.get("sent").and_then(Value::as_str)?;
    let (sent, _) = crate::fhir::dates::precision_range(sent_text)?;
    let sender = resource.pointer("/sender/reference").and_then(Value::as_str).unwrap_or_default().to_owned();
    let parent = resource
        .get("inResponseTo")
        .and_then(Value::as_array)
        .and_then(|items| items.first())
        .and_then(|item| item.get("reference").and_then(Value::as_str))
        .and_then(|reference| reference.strip_prefix("Communication/"))
        .unwrap_or_default()
        .to_owned();
    Some(BoardItem { patient, kind: kind.to_owned(), sent: crate::fhir::dates::format_instant(sent), sender, parent, live })
}

/// A Practitioner's name as a team sees it: its first name's text, else family and given
/// names.
pub fn person_name(practitioner: &Value) -> String {
    let name = practitioner.get("name").and_then(Value::as_array).and_then(|names| names.first()).cloned().unwrap_or_default();
    if let Some(text) = name.get("text").and_then(Value::as_str) {
        return text.to_owned();
    }
    let family = name.get("family").and_then(Value::as_str).unwrap_or_default();
    let given: Vec<&str> = name.get("given").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    std::iter::once(family).chain(given).filter(|p| !p.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn board_items() {
        let reply = json!({
            "resourceType": "Communication", "status": "completed",
            "category": [{ "coding": [{ "system": KIND_SYSTEM, "code": "board" }] }],
            "subject": { "reference": "Patient/p1" }, "sender": { "reference": "PractitionerRole/r1" },
            "sent": "2026-11-20T10:00:00+09:00", "inResponseTo": [{ "reference": "Communication/c0" }],
            "payload": [{ "contentString": "了解しました" }]
        });
        let item = item_of(&reply);
        assert_eq!(item.as_ref().map(|i| (i.patient.as_str(), i.kind.as_str(), i.parent.as_str())), Some(("p1", "board", "c0")));
        assert!(item.is_some_and(|i| i.sent.starts_with("2026-11-20T01:00:00")), "sent is stored as UTC");
        let mut withdrawn = reply.clone();
        withdrawn["status"] = json!("entered-in-error");
        assert_eq!(item_of(&withdrawn), None);
        assert_eq!(listed_of(&withdrawn).map(|i| (i.live, i.parent)), Some((false, "c0".to_owned())), "listed on the board, not live");
        let mut note = reply;
        note["category"] = json!([{ "text": "申し送り" }]);
        assert_eq!(item_of(&note), None);
    }
}
