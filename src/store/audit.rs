//! The audit trail's rows: chain heads, the journal of chained events (`audit_log`), and the
//! AuditEvent resource rows projected from it.
//!
//! These functions take no `Grant`, deliberately: appending is done for every caller
//! (including callers who may not read the trail), and verification, export and pruning are
//! maintenance run by the operator's command line. They touch AuditEvent rows only; nothing
//! here reads or writes any other resource type.

use sqlx::Row;

use super::Db;

use super::query::BulkValue as V;
use super::query::{Sql, Statements};
use super::BulkRow;
use crate::audit::chain::{Head, Link, GENESIS};
use crate::audit::{Chained, Event, Rendered};
use crate::search::IndexEntry;
use crate::error::Result;

/// Takes the chain's head (creating it at the genesis), locking it until the transaction
/// ends, and moves it `count` events on. Returns the new last sequence number and the digest
/// of the event before the first new one.
pub async fn advance_head(connection: &mut Db, chain: &str, count: i64) -> Result<(i64, String)> {
    let row = sqlx::query(
        "INSERT INTO audit_heads (chain, seq, digest, anchor_seq, anchor_digest) VALUES ($1, $2, $3, 0, $3) \
         ON CONFLICT (chain) DO UPDATE SET seq = audit_heads.seq + $2 RETURNING seq, digest",
    )
    .bind(chain)
    .bind(count)
    .bind(GENESIS)
    .fetch_one(&mut connection.0)
    .await?;
    Ok((row.try_get("seq")?, row.try_get("digest")?))
}

/// Sets the chain head's digest (sent with the events' inserts, see [`append_prepared`]).
fn set_head_digest(statements: &mut Statements, chain: &str, digest: &str) {
    let mut sql = Sql::new("UPDATE audit_heads SET digest = ");
    sql.bind(digest.to_owned()).push(" WHERE chain = ").bind(chain.to_owned());
    statements.push(sql);
}

/// Inserts chained events. On SQLite each is stored once, as an AuditEvent resource row with
/// its narrow index rows (no version row: see `store::history`), beside its link in the
/// journal (chain, sequence, predecessor, digest; `content` empty): SQLite has one write lock, and a projection after
/// the fact held it about half the time under audited reads, with every read's events
/// waiting behind it. On PostgreSQL the journal row carries the JSON and
/// [`project_pending`] writes the resource rows later: there the chain head's row lock is what
/// serialises appenders, and writing some twenty rows an event under it cut audited reads by
/// a fifth (benches/README.md, session 12), while a projection in parallel blocks nobody; the
/// projection then empties the link's copy of the JSON ([`project`]).
fn insert_events(statements: &mut Statements, inline: bool, events: Vec<(Chained, Vec<IndexEntry>)>) {
    let links: Vec<Vec<V>> = events
        .iter()
        .map(|(event, _)| {
            vec![
                V::Text(event.chain.clone()),
                V::Integer(event.seq),
                V::Text(event.id.clone()),
                V::Text(event.recorded.clone()),
                V::Text(event.previous.clone()),
                V::Text(event.digest.clone()),
                V::Text(if inline { String::new() } else { event.content.clone() }),
                V::Integer(i64::from(inline)),
            ]
        })
        .collect();
    statements.insert_many("audit_log (chain, seq, event_id, recorded, previous, digest, content, projected)", links);
    if !inline {
        return;
    }
    let rows: Vec<(String, String, BulkRow)> = events
        .into_iter()
        .map(|(event, index)| {
            let row = BulkRow { resource_type: "AuditEvent".to_owned(), id: event.id, index, content: event.content };
            (event.chain, event.recorded, row)
        })
        .collect();
    super::push_new_rows(statements, rows);
}

fn backend_of(connection: &Db) -> super::Backend {
    if connection.0.backend_name() == "SQLite" {
        super::Backend::Sqlite
    } else {
        super::Backend::Postgres
    }
}

/// Whether [`insert_events`] writes an event's resource rows with its link (SQLite) or leaves
/// them to the projection (PostgreSQL).
fn stores_resource_rows_at_once(connection: &Db) -> bool {
    indexed_for(backend_of(connection))
}

/// An event rendered and, where its resource rows are written with its link or handed to the
/// projection, indexed: ready for [`append_prepared`]. Preparing is CPU work that needs no
/// connection; the recorder does it in each request's own task so that the single appender
/// only chains and stores.
#[derive(Debug, Clone)]
pub struct Prepared {
    rendered: Rendered,
    index: Vec<IndexEntry>,
    /// Stored as its resource rows with its link (else journaled for the projection).
    indexed: bool,
}

/// How [`prepare`] indexes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indexing {
    /// Not at all: the backend leaves their resource rows to the projection.
    None,
    /// With the registry's AuditEvent parameters, from the rendered JSON.
    Registry,
    /// From the events themselves (`audit::Event::index_entries`): the same entries while
    /// the registry's AuditEvent parameters are the embedded ones, without walking the JSON.
    Direct,
    /// As `Direct`, for a backend that journals the events: the entries go to the projection
    /// with the journaled events ([`append_prepared`], [`project_journaled`]), which then
    /// neither reads the JSON back nor parses it.
    ForProjection,
}

impl Indexing {
    /// How to index events for `backend` with `registry` (see [`indexed_for`]).
    pub fn choose(backend: super::Backend, registry: &crate::search::Registry) -> Indexing {
        if !indexed_for(backend) {
            if registry.has_builtin_params("AuditEvent") {
                Indexing::ForProjection
            } else {
                Indexing::None
            }
        } else if registry.has_builtin_params("AuditEvent") {
            Indexing::Direct
        } else {
            Indexing::Registry
        }
    }
}

/// Renders `events` and indexes them as `indexing` says (whether the backend stores resource
/// rows with the link: see [`insert_events`]).
pub fn prepare(registry: &crate::search::Registry, tenants: &[crate::config::TenantConfig], events: &[Event], indexing: Indexing) -> Result<Vec<Prepared>> {
    let names = |slug: &str| tenants.iter().find(|t| t.slug == slug).map(|t| (t.code.clone(), t.name.clone()));
    events
        .iter()
        .map(|event| {
            let owner = names(&event.chain);
            let owner = owner.as_ref().map(|(c, n)| (c.as_str(), n.as_str()));
            let rendered = Rendered::new(event, owner, &names)?;
            let index = match indexing {
                Indexing::None => Vec::new(),
                Indexing::Registry => registry.extract(&event.to_resource(&rendered.id, 0, "", owner, &names)),
                Indexing::Direct | Indexing::ForProjection => event.index_entries(),
            };
            Ok(Prepared { rendered, index, indexed: matches!(indexing, Indexing::Registry | Indexing::Direct) })
        })
        .collect()
}

/// Whether events prepared for `backend` are indexed: whether it stores their resource rows
/// with their links (see [`insert_events`]). The one place this choice is made.
pub fn indexed_for(backend: super::Backend) -> bool {
    matches!(backend, super::Backend::Sqlite)
}

/// The columns of a queued event.
const QUEUE_COLUMNS: &str = "audit_queue (chain, event_id, recorded, content)";

/// Stores events in the queue with the transaction's commit: no chain head is taken. Returns
/// their ids.
fn enqueue(transaction: &mut super::Transaction, events: &[Prepared]) -> Vec<String> {
    let rows: Vec<Vec<V>> = events
        .iter()
        .map(|event| {
            let rendered = &event.rendered;
            vec![V::Text(rendered.chain.clone()), V::Text(rendered.id.clone()), V::Text(rendered.recorded.clone()), V::Text(rendered.unchained())]
        })
        .collect();
    let mut statements = Statements::default();
    statements.insert_many(QUEUE_COLUMNS, rows);
    transaction.defer(statements);
    events.iter().map(|event| event.rendered.id.clone()).collect()
}

/// Chains up to `limit` queued events, oldest first, in one transaction: claims them (a row
/// another chainer — another gateway's, or this one's background task — has claimed is
/// waited for, and left out once that chainer has removed it: no event is chained twice, and
/// a pass that returns has seen every event queued before it began chained), appends them to
/// their chains as [`append_prepared`] does for the recorder, stores them as AuditEvent rows
/// with their index, and removes them from the queue. Returns how many it chained.
///
/// The transaction is [`super::Store::begin_derived`]'s, whose commit is not synced: a crash
/// may undo the newest such commits, whole — the claimed rows come back to the queue with
/// them, and are chained again. SQLite's one write lock serialises chainers there.
pub async fn chain_queued(store: &super::Store, registry: &crate::search::Registry, limit: i64) -> Result<usize> {
    let mut transaction = store.begin_derived().await?;
    // PostgreSQL locks the claimed rows; SQLite's one write lock already keeps other chainers out.
    let lock = match store.backend() {
        super::Backend::Postgres => " FOR UPDATE",
        super::Backend::Sqlite => "",
    };
    let claim = format!(
        "DELETE FROM audit_queue WHERE queued IN (SELECT queued FROM audit_queue ORDER BY queued LIMIT $1{lock}) \
         RETURNING queued, chain, event_id, recorded, content"
    );
    let rows = sqlx::query(&claim)
    .bind(limit)
    .fetch_all(&mut transaction.0)
    .await?;
    if rows.is_empty() {
        transaction.commit().await?;
        return Ok(0);
    }
    // Indexed here, the events are stored as AuditEvent rows with their links: no projection
    // pass copies them again.
    let mut claimed = rows
        .iter()
        .map(|row| {
            let content: String = row.try_get("content")?;
            let index = registry.extract(&serde_json::from_str(&content)?);
            let rendered = Rendered::unchained_from(row.try_get("chain")?, row.try_get("event_id")?, row.try_get("recorded")?, &content)?;
            Ok((row.try_get::<i64, _>("queued")?, Prepared { rendered, index, indexed: true }))
        })
        .collect::<Result<Vec<_>>>()?;
    claimed.sort_by_key(|(queued, _)| *queued);
    let events: Vec<Prepared> = claimed.into_iter().map(|(_, event)| event).collect();
    let count = events.len();
    append_prepared(&mut transaction, events).await?;
    transaction.commit().await?;
    Ok(count)
}

/// How many events wait in the queue for their place in a chain.
pub async fn queued(connection: &mut Db) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM audit_queue").fetch_one(&mut connection.0).await?;
    Ok(row.try_get("n")?)
}

/// A journal row not yet projected into AuditEvent resource rows.
#[derive(Debug, Clone)]
pub struct Pending {
    pub chain: String,
    pub event_id: String,
    pub recorded: String,
    pub content: String,
}

/// Up to `limit` journal rows that have no AuditEvent resource rows yet, in chain order.
/// How many journaled events are not yet projected as AuditEvent rows.
pub async fn unprojected(connection: &mut Db) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM audit_log WHERE projected = 0").fetch_one(&mut connection.0).await?;
    Ok(row.try_get("n")?)
}

pub async fn pending(connection: &mut Db, limit: i64) -> Result<Vec<Pending>> {
    let rows = sqlx::query(
        "SELECT chain, event_id, recorded, content FROM audit_log WHERE projected = 0 AND content <> '' ORDER BY chain, seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut connection.0)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Pending {
                chain: row.try_get("chain")?,
                event_id: row.try_get("event_id")?,
                recorded: row.try_get("recorded")?,
                content: row.try_get("content")?,
            })
        })
        .collect()
}

/// Which of these journaled events are not projected yet (read inside the projection's
/// transaction: another projector may have written some since they were read).
///
/// The rows are found by their ids alone and the projected ones left out here: with
/// `projected = 0` in the query, PostgreSQL's generic plan for it walked the partial index
/// of unprojected rows, comparing each with every id asked for, and under sustained audited
/// reads that backlog grew faster than a projection slowed by walking it could shrink it
/// (benches/README.md, session 26).
pub async fn still_pending(connection: &mut Db, event_ids: &[String]) -> Result<std::collections::BTreeSet<String>> {
    let mut found = std::collections::BTreeSet::new();
    for chunk in event_ids.chunks(500) {
        let mut sql = super::query::Sql::new("SELECT event_id, projected FROM audit_log WHERE event_id IN (");
        for (index, id) in chunk.iter().enumerate() {
            if index > 0 {
                sql.push(", ");
            }
            sql.bind(id.clone());
        }
        sql.push(")");
        for row in sql.fetch_all(connection).await? {
            if row.try_get::<i64, _>("projected")? == 0 {
                found.insert(row.try_get("event_id")?);
            }
        }
    }
    Ok(found)
}

/// Writes the AuditEvent resource and index rows of journal rows and marks them
/// projected, emptying their copy of the JSON: from then on the resource row is the event,
/// as it is from the start on SQLite, and verification checks it against the digest. The
/// update cannot be a HOT one (the partial index of unprojected rows covers `projected`),
/// so it writes a new version of the journal row; without the JSON that is a short one
/// (benches/README.md, session 23). The caller holds the projection lock (see
/// [`project_pending`]).
pub async fn project(connection: &mut Db, rows: Vec<(String, String, BulkRow)>) -> Result<()> {
    let ids: Vec<String> = rows.iter().map(|(_, _, row)| row.id.clone()).collect();
    super::insert_new_rows(connection, rows).await?;
    for chunk in ids.chunks(500) {
        let mut sql = super::query::Sql::new("UPDATE audit_log SET projected = 1, content = '' WHERE event_id IN (");
        for (index, id) in chunk.iter().enumerate() {
            if index > 0 {
                sql.push(", ");
            }
            sql.bind(id.clone());
        }
        sql.push(")");
        sql.execute(connection).await?;
    }
    Ok(())
}

/// Every chain's head.
pub async fn heads(connection: &mut Db) -> Result<Vec<Head>> {
    let rows = sqlx::query("SELECT chain, seq, digest, anchor_seq, anchor_digest FROM audit_heads ORDER BY chain")
        .fetch_all(&mut connection.0)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Head {
                chain: row.try_get("chain")?,
                seq: row.try_get("seq")?,
                digest: row.try_get("digest")?,
                anchor_seq: row.try_get("anchor_seq")?,
                anchor_digest: row.try_get("anchor_digest")?,
            })
        })
        .collect()
}

/// Up to `limit` links of `chain` after sequence `after`, with the AuditEvent's JSON (the
/// link's own where it holds one, else the resource row's) and its resource row.
pub async fn links(connection: &mut Db, chain: &str, after: i64, limit: i64) -> Result<Vec<Link>> {
    let rows = sqlx::query(
        "SELECT l.seq, l.event_id, l.previous, l.digest, l.content, l.projected, r.content AS resource_content \
         FROM audit_log l \
         LEFT JOIN resources r ON r.resource_type = 'AuditEvent' AND r.id = l.event_id \
         WHERE l.chain = $1 AND l.seq > $2 ORDER BY l.seq LIMIT $3",
    )
    .bind(chain)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut connection.0)
    .await?;
    rows.iter()
        .map(|row| {
            let journaled: String = row.try_get("content")?;
            let resource_content: Option<String> = row.try_get("resource_content")?;
            Ok(Link {
                seq: row.try_get("seq")?,
                event_id: row.try_get("event_id")?,
                previous: row.try_get("previous")?,
                digest: row.try_get("digest")?,
                // Where the link holds no JSON (SQLite stores the event as its resource row
                // at once), the resource row is the event.
                in_journal: !journaled.is_empty(),
                content: if journaled.is_empty() { resource_content.clone().unwrap_or_default() } else { journaled },
                projected: row.try_get::<i64, _>("projected")? != 0,
                resource_content,
            })
        })
        .collect()
}

/// AuditEvent resources of `chain` that no link protects (inserted behind the trail's back).
pub async fn unlinked_events(connection: &mut Db, chain: &str) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT r.id FROM resources r WHERE r.resource_type = 'AuditEvent' AND r.tenant = $1 \
         AND NOT EXISTS (SELECT 1 FROM audit_log l WHERE l.event_id = r.id) ORDER BY r.id LIMIT 10",
    )
    .bind(chain)
    .fetch_all(&mut connection.0)
    .await?;
    rows.iter().map(|row| Ok(row.try_get("id")?)).collect()
}

/// The last sequence number of the prefix of `chain` recorded before `before`.
pub async fn expired_through(connection: &mut Db, chain: &str, before: &str) -> Result<Option<i64>> {
    // The prefix ends just before the first event recorded at or after the cut-off.
    let first_kept: Option<i64> = sqlx::query("SELECT MIN(seq) AS seq FROM audit_log WHERE chain = $1 AND recorded >= $2")
        .bind(chain)
        .bind(before)
        .fetch_one(&mut connection.0)
        .await?
        .try_get("seq")?;
    let last: Option<i64> = match first_kept {
        Some(seq) => sqlx::query("SELECT MAX(seq) AS seq FROM audit_log WHERE chain = $1 AND seq < $2")
            .bind(chain)
            .bind(seq)
            .fetch_one(&mut connection.0)
            .await?
            .try_get("seq")?,
        None => sqlx::query("SELECT MAX(seq) AS seq FROM audit_log WHERE chain = $1").bind(chain).fetch_one(&mut connection.0).await?.try_get("seq")?,
    };
    Ok(last)
}

/// Removes the events of `chain` up to `through` (resource, version, index and link rows)
/// and moves the chain's anchor to the last removed event.
pub async fn prune(connection: &mut Db, chain: &str, through: i64, anchor_digest: &str) -> Result<u64> {
    let ids = "SELECT event_id FROM audit_log WHERE chain = $1 AND seq <= $2";
    for table in ["search_string", "search_token", "search_reference", "search_date", "search_number", "search_uri", "resource_versions", "resources"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE resource_type = 'AuditEvent' AND id IN ({ids})"))
            .bind(chain)
            .bind(through)
            .execute(&mut connection.0)
            .await?;
    }
    // The events' own index: its terms are keyed by value, so this walks the table once.
    for table in ["audit_terms", "audit_index"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE id IN ({ids})")).bind(chain).bind(through).execute(&mut connection.0).await?;
    }
    let removed = sqlx::query("DELETE FROM audit_log WHERE chain = $1 AND seq <= $2").bind(chain).bind(through).execute(&mut connection.0).await?;
    sqlx::query("UPDATE audit_heads SET anchor_seq = $1, anchor_digest = $2 WHERE chain = $3")
        .bind(through)
        .bind(anchor_digest)
        .bind(chain)
        .execute(&mut connection.0)
        .await?;
    Ok(removed.rows_affected())
}

/// The newest `limit` AuditEvents (of every chain) that name `patient`, newest first.
pub async fn events_about_patient(connection: &mut Db, patient: &str, limit: i64) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT r.content FROM resources r WHERE r.resource_type = 'AuditEvent' AND r.deleted = 0 AND r.id IN ( \
           SELECT x.id FROM audit_terms x WHERE x.param IN ('patient', 'entity') AND x.b = $1 AND x.a = 'Patient' AND x.kind = 'r') \
         ORDER BY r.last_updated DESC, r.id LIMIT $2",
    )
    .bind(patient)
    .bind(limit)
    .fetch_all(&mut connection.0)
    .await?;
    rows.iter().map(|row| Ok(row.try_get("content")?)).collect()
}

/// Stores a write's `events` with the caller's transaction, queued for the chainer
/// ([`chain_queued`]): they commit or roll back with the write but take no chain head. On
/// PostgreSQL chaining in the write held the municipality's chain head from the append
/// through the COMMIT's WAL flush, so a municipality's audited writes committed one at a time
/// (migration 0021); on SQLite a write's synced commit wrote the pages of half a dozen index
/// trees for its event, where queued it writes one row and the chainer stores many events at
/// once with a commit that does not wait for the disk (benches/README.md, sessions 19 to 21).
/// Returns the events' ids.
pub fn append(
    transaction: &mut super::Transaction,
    registry: &crate::search::Registry,
    tenants: &[crate::config::TenantConfig],
    events: &[Event],
) -> Result<Vec<String>> {
    let prepared = prepare(registry, tenants, events, Indexing::None)?;
    Ok(enqueue(transaction, &prepared))
}

/// Appends prepared events to their chains inside the caller's transaction: each chain's head
/// is locked (in chain order, so two appenders never wait on each other crosswise), every
/// event gets the next sequence number and its predecessor's digest, and the chained events
/// are stored with the transaction's commit (links and, on SQLite, AuditEvent rows:
/// [`insert_events`]; sent with the COMMIT, `Transaction::defer`). Call it once per
/// transaction, last before the commit, so the head lock is held briefly. Returns the
/// journaled events that were prepared with their index ([`Indexing::ForProjection`]) as
/// the rows [`project_journaled`] writes once the transaction has committed.
pub async fn append_prepared(transaction: &mut super::Transaction, events: Vec<Prepared>) -> Result<Vec<(String, String, BulkRow)>> {
    let connection: &mut Db = transaction;
    // Events prepared with their index are stored as resource rows at once (all of SQLite's;
    // on PostgreSQL those the chainer takes from the queue), the others in the journal for the
    // projection. An event stored as its resource row must come with its index rows, or
    // auditors could never find it.
    let inline = events.iter().all(|e| e.indexed);
    if !inline && (stores_resource_rows_at_once(connection) || events.iter().any(|e| e.indexed)) {
        return Err(crate::error::Error::internal("audit events prepared without their index for a backend that stores them at once"));
    }
    let mut chains: Vec<String> = events.iter().map(|e| e.rendered.chain.clone()).collect();
    chains.sort_unstable();
    chains.dedup();
    let mut events: Vec<Option<Prepared>> = events.into_iter().map(Some).collect();
    let mut rows = Vec::with_capacity(events.len());
    let mut statements = Statements::default();
    for chain in &chains {
        // The chain's events in the order they came, taken out of the batch.
        let members: Vec<Prepared> = events.iter_mut().filter(|e| e.as_ref().is_some_and(|e| e.rendered.chain == *chain)).filter_map(Option::take).collect();
        let count = i64::try_from(members.len()).map_err(crate::error::Error::internal)?;
        let (last_seq, mut previous) = advance_head(connection, chain, count).await?;
        let mut seq = last_seq - count;
        for event in members {
            seq += 1;
            let Prepared { rendered, index, .. } = event;
            let content = rendered.content(seq, &previous);
            let digest = crate::audit::chain::digest(chain, seq, &previous, &content);
            let chained = Chained {
                chain: rendered.chain,
                seq,
                id: rendered.id,
                recorded: rendered.recorded,
                previous: std::mem::replace(&mut previous, digest.clone()),
                digest,
                content,
            };
            rows.push((chained, index));
        }
        set_head_digest(&mut statements, chain, &previous);
    }
    let to_project = if inline {
        Vec::new()
    } else {
        rows.iter()
            .filter(|(_, index)| !index.is_empty())
            .map(|(chained, index)| {
                let row = BulkRow { resource_type: "AuditEvent".to_owned(), id: chained.id.clone(), index: index.clone(), content: chained.content.clone() };
                (chained.chain.clone(), chained.recorded.clone(), row)
            })
            .collect()
    };
    insert_events(&mut statements, inline, rows);
    transaction.defer(statements);
    Ok(to_project)
}

/// Writes up to `limit` journaled events as AuditEvent resource rows with their search index
/// (the projection). The events are read, parsed and indexed before the write transaction
/// begins, so that on SQLite the write lock — which every read's journal commit also needs —
/// is held only for the inserts; inside it, projectors are serialised and events another
/// projector wrote meanwhile are left out. Returns how many events were pending (fewer than
/// `limit`: the journal was fully projected when this pass began).
pub async fn project_pending(store: &super::Store, registry: &crate::search::Registry, limit: i64) -> Result<usize> {
    let started = std::time::Instant::now();
    let pending = {
        let mut connection = store.connection().await?;
        pending(&mut connection, limit).await?
    };
    if pending.is_empty() {
        return Ok(0);
    }
    let count = pending.len();
    let mut rows = Vec::with_capacity(count);
    for event in pending {
        let resource: serde_json::Value = serde_json::from_str(&event.content)?;
        let row = BulkRow {
            resource_type: "AuditEvent".to_owned(),
            id: event.event_id,
            index: registry.extract(&resource),
            content: event.content,
        };
        rows.push((event.chain, event.recorded, row));
    }
    tracing::debug!(target: "renraku::audit", events = count, prepare_us = started.elapsed().as_micros(), "journaled audit events read and indexed");
    project_journaled(store, rows).await?;
    Ok(count)
}

/// Writes journaled events' AuditEvent resource and index rows, indexed already (by
/// [`project_pending`] from their JSON, or by the recorder as it prepared them:
/// [`Indexing::ForProjection`]), and marks their links projected: inside the transaction,
/// projectors are serialised and events another projector wrote meanwhile are left out.
/// Returns how many it wrote.
pub async fn project_journaled(store: &super::Store, mut rows: Vec<(String, String, BulkRow)>) -> Result<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let started = std::time::Instant::now();
    let mut transaction = store.begin_derived().await?;
    let locked = started.elapsed();
    super::lock(&mut transaction, "audit-projection").await?;
    let ids: Vec<String> = rows.iter().map(|(_, _, row)| row.id.clone()).collect();
    let still_pending = still_pending(&mut transaction, &ids).await?;
    rows.retain(|(_, _, row)| still_pending.contains(&row.id));
    let count = rows.len();
    project(&mut transaction, rows).await?;
    transaction.commit().await?;
    tracing::debug!(
        target: "renraku::audit",
        events = count,
        lock_wait_us = locked.as_micros(),
        locked_us = (started.elapsed() - locked).as_micros(),
        "audit events projected"
    );
    Ok(count)
}

/// The columns of an event's row in `audit_index`, for a multi-row insert.
pub(super) const INDEX_COLUMNS: &str = "audit_index (id, tenant, date_low, date_high, action_system, action_code, outcome_system, \
     outcome_code, type_system, type_code, subtype_system, subtype_code, agents)";
/// The columns of `audit_terms` rows, for a multi-row insert.
pub(super) const TERMS_COLUMNS: &str = "audit_terms (param, b, a, kind, id, tenant)";
/// The columns of `audit_agent_sets` rows, for a multi-row insert.
pub(super) const AGENT_SET_COLUMNS: &str = "audit_agent_sets (param, b, a, kind, agents)";

/// The one-valued tokens `audit_index` has columns for, in column order.
pub(super) const TOKEN_COLUMNS: [&str; 4] = ["action", "outcome", "type", "subtype"];

/// An AuditEvent's index rows in the tables of its own (migration 0019, read through the
/// views `audit_search_*` that have the generic tables' shape): one `audit_index` row with
/// its date and its one-valued tokens, and an `audit_terms` row for each reference and each
/// further token or date — except its `agent` references, which are the same for every
/// request of one actor: they are a set stored once in `audit_agent_sets` (migration 0022 on
/// SQLite, 0023 on PostgreSQL), keyed by a digest of its rows, which the event's
/// `audit_index` row names. Entries of other kinds (no AuditEvent parameter the server
/// indexes has one) stay in `rest`, for the generic tables.
pub(super) struct IndexOfEvent {
    pub row: Vec<V>,
    pub terms: Vec<Vec<V>>,
    /// The event's set of agents (its key, and its rows), if it has agents.
    pub agents: Option<(String, Vec<Vec<V>>)>,
    pub rest: Vec<IndexEntry>,
}

impl IndexOfEvent {
    pub fn new<'e>(id: &str, tenant: &str, entries: &'e [IndexEntry]) -> IndexOfEvent {
        let mut date: Option<(String, String)> = None;
        let mut tokens: [Option<(String, String)>; 4] = Default::default();
        let mut terms: Vec<Vec<V>> = Vec::new();
        // Two entries can make one row (a versioned and a plain reference to one resource);
        // the key is the row's primary key without the event's id.
        let mut stored: std::collections::HashSet<(&'e str, &'e str, &'e str, &'static str)> = std::collections::HashSet::new();
        let mut rest = Vec::new();
        let mut agents: Vec<(&'e str, &'e str, &'e str, &'static str)> = Vec::new();
        let mut term = |param: &'e str, b: &'e str, a: &'e str, kind: &'static str| {
            if stored.insert((param, b, a, kind)) {
                if param == "agent" {
                    agents.push((param, b, a, kind));
                } else {
                    terms.push(vec![V::Text(param.to_owned()), V::Text(b.to_owned()), V::Text(a.to_owned()), V::Text(kind.to_owned()), V::Text(id.to_owned()), V::Text(tenant.to_owned())]);
                }
            }
        };
        // The view `audit_search_reference` finds every Patient an entity names as `patient`
        // too: such a `patient` row would be stored twice (a search's event names each person
        // found).
        let named_by_entity = |target_type: &str, target_id: &str| {
            target_type == "Patient"
                && entries.iter().any(|e| {
                    matches!(e, IndexEntry::Reference { param, target_type: t, target_id: i, .. } if param == "entity" && t == target_type && i == target_id)
                })
        };
        for entry in entries {
            match entry {
                IndexEntry::Reference { param, target_type, target_id, identifier_value, .. }
                    if param == "patient" && identifier_value.is_empty() && named_by_entity(target_type, target_id) => {}
                IndexEntry::Token { param, system, code, .. } => {
                    let slot = TOKEN_COLUMNS.iter().position(|p| p == param).and_then(|at| tokens.get_mut(at)).filter(|slot| slot.is_none());
                    match slot {
                        Some(slot) => *slot = Some((system.clone(), code.clone())),
                        None => term(param, code, system, "t"),
                    }
                }
                IndexEntry::Date { param, low, high } => {
                    if param == "date" && date.is_none() {
                        date = Some((low.clone(), high.clone()));
                    } else {
                        term(param, high, low, "d");
                    }
                }
                IndexEntry::Reference { param, target_type, target_id, identifier_system, identifier_value, .. } => {
                    if !target_id.is_empty() {
                        term(param, target_id, target_type, "r");
                    }
                    if !identifier_value.is_empty() {
                        term(param, identifier_value, identifier_system, "i");
                    }
                }
                other => rest.push(other.clone()),
            }
        }
        let (low, high) = date.unwrap_or_default();
        let mut row = vec![V::Text(id.to_owned()), V::Text(tenant.to_owned()), V::Text(low), V::Text(high)];
        for token in tokens {
            let (system, code) = token.unwrap_or_default();
            row.extend([V::Text(system), V::Text(code)]);
        }
        let agents = agent_set(agents);
        row.push(V::Text(agents.as_ref().map(|(key, _)| key.clone()).unwrap_or_default()));
        IndexOfEvent { row, terms, agents, rest }
    }
}

/// A set of agents' rows and its key: the first 128 bits of the SHA-256 digest of its rows,
/// sorted, each field followed by a separator no value holds.
fn agent_set(mut agents: Vec<(&str, &str, &str, &'static str)>) -> Option<(String, Vec<Vec<V>>)> {
    use sha2::{Digest, Sha256};
    if agents.is_empty() {
        return None;
    }
    agents.sort_unstable();
    let mut hasher = Sha256::new();
    for (param, b, a, kind) in &agents {
        for field in [param, b, a, kind] {
            hasher.update(field.as_bytes());
            hasher.update([0u8]);
        }
    }
    let digest = hasher.finalize();
    let key = hex::encode(digest.get(..16).unwrap_or_default());
    let rows = agents
        .into_iter()
        .map(|(param, b, a, kind)| vec![V::Text(param.to_owned()), V::Text(b.to_owned()), V::Text(a.to_owned()), V::Text(kind.to_owned()), V::Text(key.clone())])
        .collect();
    Some((key, rows))
}

/// Empties AuditEvents' own index before a re-index rebuilds it (the rows of an event are
/// found by their values, not by the event: a re-index cannot replace one event's rows).
pub async fn clear_index_unchecked_for_maintenance(connection: &mut Db) -> Result<()> {
    sqlx::query("DELETE FROM audit_terms").execute(&mut connection.0).await?;
    sqlx::query("DELETE FROM audit_agent_sets").execute(&mut connection.0).await?;
    sqlx::query("DELETE FROM audit_index").execute(&mut connection.0).await?;
    Ok(())
}
