//! The subscriptions' delivery state and outbox (`subscription_state`,
//! `subscription_events`, `subscription_bindings`).
//!
//! Every version written enqueues one event per subscription following its type, in the
//! write's own transaction ([`enqueue`], called by the one function that writes versions), so
//! a rolled-back write notifies nobody and a committed one is never lost. Nothing here reads
//! resource rows: an event names a resource, and the service judges it under the
//! subscriber's grant before anything about it leaves (`service::subscriptions`).

use sqlx::Row;

use super::query::Sql;
use super::{Db, NewVersion};
use crate::error::Result;

/// A subscription's server-side row.
#[derive(Debug, Clone)]
pub struct StateRow {
    pub id: String,
    pub tenant: String,
    pub topic: String,
    pub channel: String,
    /// The principal deliveries act for (JSON, `service::subscriptions::Owner`).
    pub owner: String,
    /// What it asks for (JSON, `fhir::subscription::Settings`).
    pub settings: String,
    pub status: String,
    pub heartbeat_ms: i64,
    pub events_since_start: i64,
    pub failures: i64,
    pub last_sent_at: i64,
    pub last_error: String,
}

/// One event of the outbox.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub seq: i64,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: i64,
    pub action: String,
    pub occurred: String,
    pub event_number: Option<i64>,
}

/// What a subscription's row holds apart from its delivery state.
pub struct NewState<'a> {
    pub id: &'a str,
    pub tenant: &'a str,
    pub topic: &'a str,
    pub resource_type: &'a str,
    pub actions: &'a str,
    pub channel: &'a str,
    pub owner: &'a str,
    pub settings: &'a str,
    pub heartbeat_ms: i64,
}

/// Enqueues the events `new` causes: one per subscription (not `off`) that follows its type
/// and interaction. One statement whatever the number of subscriptions; none follow: no row.
pub(crate) async fn enqueue(connection: &mut Db, new: &NewVersion<'_>) -> Result<()> {
    let action = match (new.content.is_none(), new.version_id) {
        (true, _) => "delete",
        (false, 1) => "create",
        (false, _) => "update",
    };
    let enqueued = sqlx::query(
        "INSERT INTO subscription_events (subscription_id, resource_type, resource_id, version_id, action, occurred) \
         SELECT id, $1, $2, $3, $4, $5 FROM subscription_state \
         WHERE resource_type = $6 AND status <> 'off' AND actions LIKE $7",
    )
    .bind(new.resource_type)
    .bind(new.id)
    .bind(new.version_id)
    .bind(action)
    .bind(new.last_updated)
    .bind(new.resource_type)
    .bind(format!("%{action}%"))
    .execute(&mut connection.0)
    .await?;
    if enqueued.rows_affected() > 0 && connection.0.backend_name() == "PostgreSQL" {
        // Wakes the other gateways' delivery tasks when (and only if) the transaction
        // commits; PostgreSQL folds a transaction's identical notifications into one. A
        // wake-up only: the events are in the table, and a gateway that missed it finds
        // them at its next poll.
        sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut connection.0).await?;
    }
    Ok(())
}

/// The PostgreSQL channel on which writes that enqueued events wake the gateways.
const WAKE_CHANNEL: &str = "renraku_notifications";

/// PostgreSQL: calls `wake` whenever another session's committed write enqueued events
/// (`LISTEN`), until `wake` answers false; reconnects after a lost connection (the poll
/// covers the gap). Returns at once on SQLite, where every write happens in this process.
pub async fn listen_for_wake_ups(database_url: &str, wake: impl Fn() -> bool + Send) {
    if !(database_url.starts_with("postgres:") || database_url.starts_with("postgresql:")) {
        return;
    }
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect(database_url).await?;
            listener.listen(WAKE_CHANNEL).await?;
            loop {
                listener.recv().await?;
                if !wake() {
                    return Ok::<(), sqlx::Error>(());
                }
            }
        };
        match listening.await {
            Ok(()) => return,
            Err(error) => {
                tracing::debug!(target: "renraku::notify", %error, "listening for wake-ups failed; reconnecting");
                if !wake() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Creates or replaces a subscription's row. A changed subscription starts over as
/// `requested` (a rest-hook endpoint is greeted again), keeping its event count.
pub async fn put_state(connection: &mut Db, new: &NewState<'_>) -> Result<()> {
    let status = if new.channel == "websocket" { "active" } else { "requested" };
    sqlx::query(
        "INSERT INTO subscription_state (id, tenant, topic, resource_type, actions, channel, owner, settings, status, heartbeat_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (id) DO UPDATE SET tenant = excluded.tenant, topic = excluded.topic, resource_type = excluded.resource_type, \
         actions = excluded.actions, channel = excluded.channel, owner = excluded.owner, settings = excluded.settings, \
         status = excluded.status, heartbeat_ms = excluded.heartbeat_ms, failures = 0, next_attempt_at = 0, last_sent_at = 0, last_error = ''",
    )
    .bind(new.id)
    .bind(new.tenant)
    .bind(new.topic)
    .bind(new.resource_type)
    .bind(new.actions)
    .bind(new.channel)
    .bind(new.owner)
    .bind(new.settings)
    .bind(status)
    .bind(new.heartbeat_ms)
    .execute(&mut connection.0)
    .await?;
    Ok(())
}

/// Turns a subscription off (its Subscription was set `off` or deleted): it gets no new
/// events, and those not yet delivered are dropped.
pub async fn turn_off(connection: &mut Db, id: &str) -> Result<()> {
    sqlx::query("UPDATE subscription_state SET status = 'off' WHERE id = $1").bind(id).execute(&mut connection.0).await?;
    sqlx::query("DELETE FROM subscription_events WHERE subscription_id = $1 AND delivered = 0").bind(id).execute(&mut connection.0).await?;
    sqlx::query("DELETE FROM subscription_bindings WHERE subscription_id = $1").bind(id).execute(&mut connection.0).await?;
    Ok(())
}

/// The row of subscription `id`.
pub async fn state(connection: &mut Db, id: &str) -> Result<Option<StateRow>> {
    let row = sqlx::query(
        "SELECT id, tenant, topic, channel, owner, settings, status, heartbeat_ms, events_since_start, failures, last_sent_at, last_error \
         FROM subscription_state WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut connection.0)
    .await?;
    row.map(|row| {
        Ok(StateRow {
            id: row.try_get("id")?,
            tenant: row.try_get("tenant")?,
            topic: row.try_get("topic")?,
            channel: row.try_get("channel")?,
            owner: row.try_get("owner")?,
            settings: row.try_get("settings")?,
            status: row.try_get("status")?,
            heartbeat_ms: row.try_get("heartbeat_ms")?,
            events_since_start: row.try_get("events_since_start")?,
            failures: row.try_get("failures")?,
            last_sent_at: row.try_get("last_sent_at")?,
            last_error: row.try_get("last_error")?,
        })
    })
    .transpose()
}

/// Subscriptions with work for a gateway at `now` (unix ms): not leased by another, not
/// waiting for a retry, and with a greeting (a rest-hook endpoint nothing was delivered to
/// yet), events or a heartbeat due. Rest-hook ones on
/// any gateway; websocket ones only where a client is bound (`bound`).
pub async fn due(connection: &mut Db, now: i64, bound: &[String], limit: i64) -> Result<Vec<String>> {
    let mut sql = Sql::new("SELECT s.id FROM subscription_state s WHERE s.status <> 'off' AND s.lease_until < ");
    sql.bind_i64(now).push(" AND s.next_attempt_at <= ").bind_i64(now);
    if bound.is_empty() {
        sql.push(" AND s.channel = 'rest-hook'");
    } else {
        sql.push(" AND (s.channel = 'rest-hook' OR s.id IN (").bind_list(bound).push(")");
    }
    sql.push(" AND ((s.channel = 'rest-hook' AND s.last_sent_at = 0) OR EXISTS (SELECT 1 FROM subscription_events e WHERE e.subscription_id = s.id AND e.delivered = 0)");
    sql.push(" OR (s.heartbeat_ms > 0 AND s.last_sent_at + s.heartbeat_ms <= ").bind_i64(now).push("))");
    sql.push(" ORDER BY s.next_attempt_at, s.id LIMIT ").bind_i64(limit);
    let rows = sql.fetch_all(connection).await?;
    rows.iter().map(|row| Ok(row.try_get("id")?)).collect()
}

/// Takes the lease of subscription `id` for `node` until `until` (unix ms) if nobody else
/// holds one at `now`: only its holder delivers it.
pub async fn lease(connection: &mut Db, id: &str, node: &str, now: i64, until: i64) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE subscription_state SET lease_owner = $1, lease_until = $2 WHERE id = $3 AND (lease_until < $4 OR lease_owner = $5)",
    )
    .bind(node)
    .bind(until)
    .bind(id)
    .bind(now)
    .bind(node)
    .execute(&mut connection.0)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Gives the lease back.
pub async fn release(connection: &mut Db, id: &str, node: &str) -> Result<()> {
    sqlx::query("UPDATE subscription_state SET lease_until = 0, lease_owner = '' WHERE id = $1 AND lease_owner = $2")
        .bind(id)
        .bind(node)
        .execute(&mut connection.0)
        .await?;
    Ok(())
}

fn event_of(row: &sqlx::any::AnyRow) -> Result<EventRow> {
    Ok(EventRow {
        seq: row.try_get("seq")?,
        resource_type: row.try_get("resource_type")?,
        resource_id: row.try_get("resource_id")?,
        version_id: row.try_get("version_id")?,
        action: row.try_get("action")?,
        occurred: row.try_get("occurred")?,
        event_number: row.try_get("event_number")?,
    })
}

const EVENT_COLUMNS: &str = "seq, resource_type, resource_id, version_id, action, occurred, event_number";

/// The oldest `limit` undelivered events of subscription `id`, numbered ones first (a retry
/// sends what it sent before, in order).
pub async fn pending(connection: &mut Db, id: &str, limit: i64) -> Result<Vec<EventRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM subscription_events WHERE subscription_id = $1 AND delivered = 0 \
         ORDER BY CASE WHEN event_number IS NULL THEN 1 ELSE 0 END, event_number, seq LIMIT $2"
    ))
    .bind(id)
    .bind(limit)
    .fetch_all(&mut connection.0)
    .await?;
    rows.iter().map(event_of).collect()
}

/// Records the judgement of unnumbered events: `visible` get the next numbers in order,
/// `hidden` are removed unnumbered. Returns the numbers given.
/// Only while `node` holds the subscription's lease: `None` when it lost it (another
/// gateway took over; nothing is numbered, the caller stops). The state row is written
/// first, as everywhere, so that concurrent writers lock in one order.
pub async fn number(connection: &mut Db, id: &str, node: &str, now: i64, visible: &[i64], hidden: &[i64]) -> Result<Option<Vec<i64>>> {
    let count = i64::try_from(visible.len()).unwrap_or(i64::MAX);
    let row = sqlx::query(
        "UPDATE subscription_state SET events_since_start = events_since_start + $1 \
         WHERE id = $2 AND lease_owner = $3 AND lease_until > $4 RETURNING events_since_start",
    )
    .bind(count)
    .bind(id)
    .bind(node)
    .bind(now)
    .fetch_optional(&mut connection.0)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let last: i64 = row.try_get("events_since_start")?;
    for seq in hidden {
        sqlx::query("DELETE FROM subscription_events WHERE seq = $1 AND subscription_id = $2 AND event_number IS NULL")
            .bind(*seq)
            .bind(id)
            .execute(&mut connection.0)
            .await?;
    }
    let mut numbers = Vec::with_capacity(visible.len());
    for (offset, seq) in (0_i64..).zip(visible) {
        let number = last - count + 1 + offset;
        let result = sqlx::query("UPDATE subscription_events SET event_number = $1 WHERE seq = $2 AND subscription_id = $3 AND event_number IS NULL")
            .bind(number)
            .bind(*seq)
            .bind(id)
            .execute(&mut connection.0)
            .await?;
        if result.rows_affected() != 1 {
            return Err(crate::error::Error::internal(format!("subscription {id}: event {seq} was numbered concurrently")));
        }
        numbers.push(number);
    }
    Ok(Some(numbers))
}

/// Events numbered earlier that the owner may no longer read: never sent, not retried.
pub async fn withhold(connection: &mut Db, id: &str, seqs: &[i64]) -> Result<()> {
    for seq in seqs {
        sqlx::query("UPDATE subscription_events SET delivered = 1 WHERE subscription_id = $1 AND seq = $2")
            .bind(id)
            .bind(*seq)
            .execute(&mut connection.0)
            .await?;
    }
    Ok(())
}

/// A receiver acknowledged a notification (`seqs` may be empty: a handshake or heartbeat):
/// the events are delivered and the subscription is `active`.
pub async fn delivered(connection: &mut Db, id: &str, seqs: &[i64], now: i64) -> Result<()> {
    sqlx::query("UPDATE subscription_state SET status = 'active', failures = 0, next_attempt_at = 0, last_sent_at = $1, last_error = '' WHERE id = $2 AND status <> 'off'")
        .bind(now)
        .bind(id)
        .execute(&mut connection.0)
        .await?;
    if !seqs.is_empty() {
        let mut sql = Sql::new("UPDATE subscription_events SET delivered = 1 WHERE subscription_id = ");
        sql.bind(id).push(" AND seq IN (");
        // Numbers, not text: bound as integers so PostgreSQL compares bigint with bigint.
        for (index, seq) in seqs.iter().enumerate() {
            if index > 0 {
                sql.push(", ");
            }
            sql.bind_i64(*seq);
        }
        sql.push(")");
        sql.execute(connection).await?;
    }
    Ok(())
}

/// A delivery failed: the next attempt waits until `next_attempt_at`; `status` is `error`
/// once failures reach the configured count.
pub async fn failed(connection: &mut Db, id: &str, failures: i64, next_attempt_at: i64, status: &str, error: &str) -> Result<()> {
    sqlx::query("UPDATE subscription_state SET failures = $1, next_attempt_at = $2, status = $3, last_error = $4 WHERE id = $5 AND status <> 'off'")
        .bind(failures)
        .bind(next_attempt_at)
        .bind(status)
        .bind(error)
        .bind(id)
        .execute(&mut connection.0)
        .await?;
    Ok(())
}

/// The numbered events of subscription `id` from `since` to `until` (inclusive), oldest
/// first, at most `limit`.
pub async fn numbered(connection: &mut Db, id: &str, since: i64, until: i64, limit: i64) -> Result<Vec<EventRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM subscription_events WHERE subscription_id = $1 AND event_number >= $2 AND event_number <= $3 \
         ORDER BY event_number LIMIT $4"
    ))
    .bind(id)
    .bind(since)
    .bind(until)
    .bind(limit)
    .fetch_all(&mut connection.0)
    .await?;
    rows.iter().map(event_of).collect()
}

/// Stores a websocket binding token's digest.
pub async fn put_binding(connection: &mut Db, digest: &str, id: &str, tenant: &str, token_digest: &str, expires_at: i64) -> Result<()> {
    sqlx::query("INSERT INTO subscription_bindings (digest, subscription_id, tenant, token_digest, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(digest)
        .bind(id)
        .bind(tenant)
        .bind(token_digest)
        .bind(expires_at)
        .execute(&mut connection.0)
        .await?;
    sqlx::query("DELETE FROM subscription_bindings WHERE expires_at < $1").bind(0_i64.max(expires_at - 24 * 3_600_000)).execute(&mut connection.0).await?;
    Ok(())
}

/// The subscription a binding token (by digest) binds to at `tenant`, with the access
/// token's digest and the binding's expiry, if it has not expired at `now`.
pub async fn binding(connection: &mut Db, digest: &str, tenant: &str, now: i64) -> Result<Option<(String, String, i64)>> {
    let row = sqlx::query("SELECT subscription_id, token_digest, expires_at FROM subscription_bindings WHERE digest = $1 AND tenant = $2 AND expires_at > $3")
        .bind(digest)
        .bind(tenant)
        .bind(now)
        .fetch_optional(&mut connection.0)
        .await?;
    row.map(|row| Ok((row.try_get("subscription_id")?, row.try_get("token_digest")?, row.try_get("expires_at")?))).transpose()
}

/// Undelivered events across all subscriptions (the outbox depth, for metrics).
pub async fn depth(connection: &mut Db) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM subscription_events WHERE delivered = 0").fetch_one(&mut connection.0).await?;
    Ok(row.try_get("n")?)
}
