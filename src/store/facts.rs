//! Grant-less reads for the access decision point, and for nothing else.
//!
//! The policy must see support teams, consents, agreements and registrations before it can
//! hand out a grant, so these reads cannot take one. They are `pub(crate)`, named here in
//! one module, and called only from `policy::facts`, from the write path (a new resource's
//! owner, a team member's municipality) and from sign-in (`auth::upstream`: which
//! Practitioner an identity provider's subject is); ARCHITECTURE.md lists them among the
//! deliberate bypasses.

use sqlx::Row;

use super::Db;

use super::query::Sql;
use crate::error::Result;
use crate::policy::facts::{FactSource, Generations};
use crate::policy::Grant;

/// The policy's facts, read in a database session (a connection, or inside a transaction).
impl FactSource for Db {
    async fn generations(&mut self) -> Result<Generations> {
        super::generations(self).await
    }

    async fn live_of_type(&mut self, resource_type: &str) -> Result<Vec<(String, String, String)>> {
        live_of_type(self, resource_type).await
    }

    async fn live_resource(&mut self, resource_type: &str, id: &str) -> Result<Option<(String, String)>> {
        live_resource(self, resource_type, id).await
    }

    async fn referring(&mut self, source_type: &str, param: &str, targets: &[(String, String)]) -> Result<Vec<(String, String, String)>> {
        referring(self, source_type, param, targets).await
    }

    async fn tenant_of(&mut self, resource_type: &str, id: &str) -> Result<Option<String>> {
        tenant_of(self, resource_type, id).await
    }

    async fn visible(&mut self, grant: &Grant, resource_type: &str, id: &str) -> Result<bool> {
        Ok(super::current(self, grant, resource_type, id).await?.is_some_and(|row| !row.deleted))
    }
}

/// `(id, tenant, content)` of every live resource of a type.
pub(crate) async fn live_of_type(connection: &mut Db, resource_type: &str) -> Result<Vec<(String, String, String)>> {
    let mut sql = Sql::new("SELECT id, tenant, content FROM resources WHERE deleted = 0 AND resource_type = ");
    sql.bind(resource_type.to_owned());
    rows(&sql, connection).await
}

/// `(id, tenant, content)` of live `source_type` resources whose `param` refers to one of
/// `targets` (`(type, id)` pairs).
pub(crate) async fn referring(
    connection: &mut Db,
    source_type: &str,
    param: &str,
    targets: &[(String, String)],
) -> Result<Vec<(String, String, String)>> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new("SELECT r.id, r.tenant, r.content FROM resources r WHERE r.deleted = 0 AND r.resource_type = ");
    sql.bind(source_type.to_owned());
    sql.push(" AND r.id IN (SELECT x.id FROM search_reference x WHERE x.resource_type = ").bind(source_type.to_owned());
    sql.push(" AND x.param = ").bind(param.to_owned()).push(" AND ");
    push_targets(&mut sql, targets);
    sql.push(")");
    rows(&sql, connection).await
}

/// `(type, id)` of up to `limit` live resources that refer to `target_type/target_id`
/// through any reference parameter (AuditEvents, which record accesses, and Subscriptions,
/// which refer to their owner — a stamp nobody else sees, not data they depend on; one whose
/// owning role or Organization is gone delivers nothing — left out), for a delete's
/// referential integrity. Only the pairs: the service names in a refusal only those
/// the caller's read grant sees.
pub(crate) async fn referrers(connection: &mut Db, target_type: &str, target_id: &str, limit: i64) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT DISTINCT resource_type, id FROM search_reference WHERE target_type = $1 AND target_id = $2 \
         AND resource_type NOT IN ('AuditEvent', 'Subscription') AND NOT (resource_type = $1 AND id = $2) ORDER BY resource_type, id LIMIT $3",
    )
    .bind(target_type)
    .bind(target_id)
    .bind(limit)
    .fetch_all(&mut connection.0)
    .await?;
    rows.iter().map(|row| Ok((row.try_get("resource_type")?, row.try_get("id")?))).collect()
}

/// The id of the live Practitioner of `tenant` whose `identifier` is `system|value`.
pub(crate) async fn practitioner_by_identifier(
    connection: &mut Db,
    tenant: &str,
    system: &str,
    value: &str,
) -> Result<Option<String>> {
    let row = sqlx::query(
        "SELECT id FROM search_token WHERE tenant = $1 AND resource_type = 'Practitioner' AND param = 'identifier' \
         AND system = $2 AND code = $3 ORDER BY id LIMIT 1",
    )
    .bind(tenant)
    .bind(system)
    .bind(value)
    .fetch_optional(&mut connection.0)
    .await?;
    Ok(row.map(|row| row.try_get("id")).transpose()?)
}

/// The municipality owning a live resource, if there is one.
pub(crate) async fn tenant_of(connection: &mut Db, resource_type: &str, id: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT tenant FROM resources WHERE deleted = 0 AND resource_type = $1 AND id = $2")
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&mut connection.0)
        .await?;
    Ok(row.map(|row| row.try_get("tenant")).transpose()?)
}

/// `(tenant, content)` of a live resource, if there is one (the decision point's check that
/// the directory entries a token acts through still stand).
pub(crate) async fn live_resource(connection: &mut Db, resource_type: &str, id: &str) -> Result<Option<(String, String)>> {
    let row = sqlx::query("SELECT tenant, content FROM resources WHERE deleted = 0 AND resource_type = $1 AND id = $2")
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&mut connection.0)
        .await?;
    match row {
        Some(row) => Ok(Some((row.try_get("tenant")?, row.try_get::<Option<String>, _>("content")?.unwrap_or_default()))),
        None => Ok(None),
    }
}

async fn rows(sql: &Sql, connection: &mut Db) -> Result<Vec<(String, String, String)>> {
    let mut found = Vec::new();
    for row in sql.fetch_all(connection).await? {
        let content: Option<String> = row.try_get("content")?;
        found.push((row.try_get("id")?, row.try_get("tenant")?, content.unwrap_or_default()));
    }
    Ok(found)
}

/// `(x.target_type = ? AND x.target_id IN (…)) OR …`, one disjunct per target type (a chain
/// of one OR per target would exceed SQLite's expression depth for long lists).
fn push_targets(sql: &mut Sql, targets: &[(String, String)]) {
    let mut types: Vec<&String> = targets.iter().map(|(t, _)| t).collect();
    types.sort();
    types.dedup();
    sql.push("(");
    for (index, target_type) in types.iter().enumerate() {
        if index > 0 {
            sql.push(" OR ");
        }
        sql.push("(x.target_type = ").bind((*target_type).clone()).push(" AND x.target_id IN (");
        let ids: Vec<&String> = targets.iter().filter(|(t, _)| t == *target_type).map(|(_, id)| id).collect();
        for (position, id) in ids.iter().enumerate() {
            if position > 0 {
                sql.push(", ");
            }
            sql.bind((*id).clone());
        }
        sql.push("))");
    }
    sql.push(")");
}
