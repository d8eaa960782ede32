//! Municipalities and OAuth clients added at run time (the configuration file's are not
//! stored). Every write bumps the `registry` generation; callers run them in a transaction,
//! so a gateway that sees the new counter also sees the change.

use sqlx::Row;

use super::Db;

use crate::config::TenantConfig;
use crate::error::{Error, Result};

pub async fn list(connection: &mut Db) -> Result<Vec<TenantConfig>> {
    let rows = sqlx::query("SELECT slug, code, name FROM tenants ORDER BY slug").fetch_all(&mut connection.0).await?;
    rows.iter()
        .map(|row| Ok(TenantConfig { slug: row.try_get("slug")?, code: row.try_get("code")?, name: row.try_get("name")?, login: None }))
        .collect()
}

/// Stores a new municipality; a taken slug or code is a conflict.
pub async fn insert(connection: &mut Db, tenant: &TenantConfig, created_at: &str) -> Result<()> {
    let result = sqlx::query("INSERT INTO tenants (slug, code, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&tenant.slug)
        .bind(&tenant.code)
        .bind(&tenant.name)
        .bind(created_at)
        .execute(&mut connection.0)
        .await;
    conflict_if_taken(result, || format!("a municipality with the slug '{}' or the code '{}' exists", tenant.slug, tenant.code))?;
    super::bump_generation(connection, super::GENERATION_REGISTRY).await
}

/// OAuth clients registered at run time.
pub async fn list_clients(connection: &mut Db) -> Result<Vec<crate::identity::clients::ClientConfig>> {
    let rows = sqlx::query("SELECT registration FROM clients ORDER BY tenant, client_id").fetch_all(&mut connection.0).await?;
    rows.iter().map(|row| Ok(serde_json::from_str(&row.try_get::<String, _>("registration")?)?)).collect()
}

/// Stores a client registration; a taken id at the municipality is a conflict.
pub async fn insert_client(connection: &mut Db, client: &crate::identity::clients::ClientConfig, created_at: &str) -> Result<()> {
    let result = sqlx::query("INSERT INTO clients (tenant, client_id, registration, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&client.tenant)
        .bind(&client.client_id)
        .bind(serde_json::to_string(client)?)
        .bind(created_at)
        .execute(&mut connection.0)
        .await;
    conflict_if_taken(result, || format!("a client '{}' is already registered at '{}'", client.client_id, client.tenant))?;
    super::bump_generation(connection, super::GENERATION_REGISTRY).await
}

/// Replaces a stored registration (its approval changed).
pub async fn update_client(connection: &mut Db, client: &crate::identity::clients::ClientConfig) -> Result<()> {
    sqlx::query("UPDATE clients SET registration = $1 WHERE tenant = $2 AND client_id = $3")
        .bind(serde_json::to_string(client)?)
        .bind(&client.tenant)
        .bind(&client.client_id)
        .execute(&mut connection.0)
        .await?;
    super::bump_generation(connection, super::GENERATION_REGISTRY).await
}

/// Removes a run-time registration; false if there was none.
pub async fn delete_client(connection: &mut Db, tenant: &str, client_id: &str) -> Result<bool> {
    let result = sqlx::query("DELETE FROM clients WHERE tenant = $1 AND client_id = $2").bind(tenant).bind(client_id).execute(&mut connection.0).await?;
    if result.rows_affected() == 0 {
        return Ok(false);
    }
    super::bump_generation(connection, super::GENERATION_REGISTRY).await?;
    Ok(true)
}

/// A unique violation becomes a 409 with `message`; other failures stay internal.
fn conflict_if_taken<T>(result: Result<T, sqlx::Error>, message: impl FnOnce() -> String) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Err(Error::Conflict(message())),
        Err(error) => Err(error.into()),
    }
}
