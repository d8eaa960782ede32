//! Read state (既読) of board and chat items: marks by item, "read through" by person, and
//! the counts joined against `board_items` (index rows derived from the Communications).
//!
//! Marks are facts about a reader, not resource rows: they are written only for items the
//! service has just read under the caller's grant, and unread counts judge each item by the
//! caller's grant in the SQL ([`unread`]) — so nothing here reveals an item the caller
//! cannot see.

use std::collections::BTreeMap;

use sqlx::Row;

use super::query::{Person, Sql};
use super::Db;
use crate::error::Result;
use crate::policy::Grant;

/// What the team has done with one item.
#[derive(Debug, Clone, Default)]
pub struct ItemState {
    /// The item's sender, as written.
    pub sender: String,
    /// Replies to it (board items naming it in `inResponseTo`).
    pub replies: i64,
    /// Who read it (actor references), with when they first did.
    pub readers: BTreeMap<String, String>,
}

/// Marks `items` (Communication ids on `patient`'s board or chat) read by `reader`; items
/// that are not board items of that person are ignored. Returns how many marks are new.
pub async fn mark(connection: &mut Db, reader: &str, patient: &str, items: &[String], now: &str) -> Result<u64> {
    if items.is_empty() {
        return Ok(0);
    }
    let mut sql = Sql::new("INSERT INTO read_marks (item, reader, patient, read_at) SELECT b.id, ");
    sql.bind(reader).push(", b.patient, ").bind(now);
    sql.push(" FROM board_items b WHERE b.resource_type = 'Communication' AND b.live = 1 AND b.patient = ").bind(patient);
    sql.push(" AND b.id IN (").bind_list(items);
    sql.push(" ON CONFLICT (item, reader) DO NOTHING");
    sql.execute_counting(connection).await
}

/// Marks everything on `patient`'s board and chat sent up to `through` (a stored instant)
/// read by `reader`; a later mark never moves the point back.
pub async fn mark_through(connection: &mut Db, reader: &str, patient: &str, through: &str, now: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO read_through (patient, reader, through, read_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (patient, reader) DO UPDATE SET \
         through = CASE WHEN excluded.through > read_through.through THEN excluded.through ELSE read_through.through END, \
         read_at = CASE WHEN excluded.through > read_through.through THEN excluded.read_at ELSE read_through.read_at END",
    )
    .bind(patient)
    .bind(reader)
    .bind(through)
    .bind(now)
    .execute(&mut connection.0)
    .await?;
    Ok(())
}

/// The state of `items` (board items the caller has just read under its grant): sender,
/// replies, and readers by mark or by a "read through" point at or after the item's `sent`.
pub async fn states(connection: &mut Db, items: &[String]) -> Result<BTreeMap<String, ItemState>> {
    let mut states: BTreeMap<String, ItemState> = BTreeMap::new();
    if items.is_empty() {
        return Ok(states);
    }
    let list = |sql: &mut Sql| {
        sql.push("(").bind_list(items);
    };
    // The items are looked up by id alone (the caller already read them as this person's):
    // a condition on the person would lead the planner through the person's every item.
    let mut own = Sql::new("SELECT b.id, b.sender FROM board_items b WHERE b.resource_type = 'Communication' AND b.id IN ");
    list(&mut own);
    for row in own.fetch_all(connection).await? {
        let id: String = row.try_get("id")?;
        states.entry(id).or_default().sender = row.try_get("sender")?;
    }
    let mut replies = Sql::new("SELECT b.parent, COUNT(*) AS n FROM board_items b WHERE b.live = 1 AND b.parent IN ");
    list(&mut replies);
    replies.push(" GROUP BY b.parent");
    for row in replies.fetch_all(connection).await? {
        let parent: String = row.try_get("parent")?;
        if let Some(state) = states.get_mut(&parent) {
            state.replies = row.try_get("n")?;
        }
    }
    let mut marked = Sql::new("SELECT m.item, m.reader, m.read_at FROM read_marks m WHERE m.item IN ");
    list(&mut marked);
    let mut through = Sql::new(
        "SELECT b.id AS item, t.reader, t.read_at FROM board_items b JOIN read_through t ON t.patient = b.patient AND t.through >= b.sent \
         WHERE b.resource_type = 'Communication' AND b.id IN ",
    );
    list(&mut through);
    for query in [marked, through] {
        for row in query.fetch_all(connection).await? {
            let item: String = row.try_get("item")?;
            let reader: String = row.try_get("reader")?;
            let read_at: String = row.try_get("read_at")?;
            if let Some(state) = states.get_mut(&item) {
                let earliest = state.readers.entry(reader).or_insert_with(|| read_at.clone());
                if read_at < *earliest {
                    *earliest = read_at;
                }
            }
        }
    }
    Ok(states)
}

/// The names of support-team members as their directory has them: a PractitionerRole's
/// Practitioner (its name's text, else family and given names), an Organization's name.
/// Only names leave this function, and only for `members` the caller met through its own
/// reads: the members of the person's team it just read, and the readers of items it just
/// read (marks are made only by those who could read the item). A team spans the
/// municipalities an agreement joins, and each member's directory is its own
/// municipality's: the member is named to the team whichever directory the caller may
/// read. Returns the names found (a member whose entries are gone stays unnamed).
pub async fn member_names(connection: &mut Db, members: &[String]) -> Result<BTreeMap<String, String>> {
    let ids = |prefix: &str| -> Vec<String> { members.iter().filter_map(|m| m.strip_prefix(prefix)).map(str::to_owned).collect() };
    let (organizations, roles) = (ids("Organization/"), ids("PractitionerRole/"));
    let mut names = BTreeMap::new();
    if !organizations.is_empty() {
        let mut sql = Sql::new("SELECT r.id, r.content FROM resources r WHERE r.resource_type = 'Organization' AND r.deleted = 0 AND r.id IN (");
        sql.bind_list(&organizations);
        for row in sql.fetch_all(connection).await? {
            let id: String = row.try_get("id")?;
            let content: Option<String> = row.try_get("content")?;
            let organization: serde_json::Value = serde_json::from_str(content.as_deref().unwrap_or("{}")).unwrap_or_default();
            let name = organization.get("name").and_then(serde_json::Value::as_str).unwrap_or_default();
            if !name.is_empty() {
                names.insert(format!("Organization/{id}"), name.to_owned());
            }
        }
    }
    if !roles.is_empty() {
        // The role's Practitioner through the role's reference index row.
        let mut sql = Sql::new(
            "SELECT x.id AS role, p.content FROM search_reference x JOIN resources r ON r.resource_type = x.resource_type AND r.id = x.id AND r.deleted = 0 \
             JOIN resources p ON p.resource_type = 'Practitioner' AND p.id = x.target_id AND p.deleted = 0 \
             WHERE x.resource_type = 'PractitionerRole' AND x.param = 'practitioner' AND x.target_type = 'Practitioner' AND x.id IN (",
        );
        sql.bind_list(&roles);
        for row in sql.fetch_all(connection).await? {
            let role: String = row.try_get("role")?;
            let content: Option<String> = row.try_get("content")?;
            let practitioner: serde_json::Value = serde_json::from_str(content.as_deref().unwrap_or("{}")).unwrap_or_default();
            let name = crate::fhir::board::person_name(&practitioner);
            if !name.is_empty() {
                names.insert(format!("PractitionerRole/{role}"), name);
            }
        }
    }
    Ok(names)
}

/// `reader`'s unread board and chat items, by person and kind: items the grant lets the
/// caller read, not sent by the reader, neither marked nor sent at or before the reader's
/// "read through" point for the person; only `patient`'s when given. See [`push_unread`].
pub async fn unread(connection: &mut Db, grant: &Grant, reader: &str, patient: Option<&str>) -> Result<Vec<(String, String, i64)>> {
    let mut sql = Sql::new("SELECT b.patient, b.kind, COUNT(*) AS n");
    push_unread(&mut sql, grant, reader, patient);
    sql.push(" GROUP BY b.patient, b.kind ORDER BY b.patient, b.kind");
    let rows = sql.fetch_all(connection).await?;
    rows.iter().map(|row| Ok((row.try_get("patient")?, row.try_get("kind")?, row.try_get("n")?))).collect()
}

/// The newest `limit` of `reader`'s unread items on `patient`'s board and chat (ids), by the
/// same rule as [`unread`].
pub async fn unread_items(connection: &mut Db, grant: &Grant, reader: &str, patient: &str, limit: i64) -> Result<Vec<String>> {
    let mut sql = Sql::new("SELECT b.id");
    push_unread(&mut sql, grant, reader, Some(patient));
    sql.push(" ORDER BY b.sent DESC, b.id LIMIT ").bind_i64(limit);
    let rows = sql.fetch_all(connection).await?;
    rows.iter().map(|row| Ok(row.try_get("id")?)).collect()
}

/// `FROM board_items b WHERE …`: the unread items of [`unread`], read from the board's index
/// (whose rows exist only for live Communications). Each item is visible when the grant
/// reaches its person through `subject` (`Sql::reaches_through`: for one person, judged once
/// for the statement), else by the grant's predicate on the item itself. For one person only
/// the items after the reader's point are read (an index range); for everyone, under a grant
/// that covers Communications only through persons, only the persons it may reach
/// (`Sql::candidate_persons`): 63 ms → see benches/README.md for 5,400 unread items.
fn push_unread(sql: &mut Sql, grant: &Grant, reader: &str, patient: Option<&str>) {
    let types = ["Communication".to_owned()];
    sql.push(" FROM board_items b WHERE b.resource_type = 'Communication' AND b.live = 1 AND ");
    sql.tenant_scope("b.tenant", grant);
    sql.push(" AND b.sent > COALESCE((SELECT t.through FROM read_through t WHERE t.reader = ").bind(reader);
    let person = match patient {
        Some(patient) => {
            sql.push(" AND t.patient = ").bind(patient).push("), '') AND b.patient = ").bind(patient);
            Person::Id(patient)
        }
        None => {
            sql.push(" AND t.patient = b.patient), '')");
            if grant.judges_by_person("Communication") {
                sql.push(" AND ");
                sql.candidate_persons("b.patient", grant, "Communication");
            }
            Person::Column("b.patient")
        }
    };
    sql.push(" AND b.sender <> ").bind(reader);
    sql.push(" AND NOT EXISTS (SELECT 1 FROM read_marks m WHERE m.item = b.id AND m.reader = ").bind(reader).push(")");
    sql.push(" AND (");
    sql.reaches_through(person, grant, "Communication", "subject");
    sql.push(" OR ");
    sql.access_scope("b", grant, Some(&types));
    sql.push(")");
}
