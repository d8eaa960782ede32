//! Municipalities added at run time (the configuration file's are not stored).

use sqlx::{AnyConnection, Row};

use crate::config::TenantConfig;
use crate::error::{Error, Result};

pub async fn list(connection: &mut AnyConnection) -> Result<Vec<TenantConfig>> {
    let rows = sqlx::query("SELECT slug, code, name FROM tenants ORDER BY slug").fetch_all(connection).await?;
    rows.iter()
        .map(|row| Ok(TenantConfig { slug: row.try_get("slug")?, code: row.try_get("code")?, name: row.try_get("name")?, login: None }))
        .collect()
}

/// Stores a new municipality; a taken slug or code is a conflict.
pub async fn insert(connection: &mut AnyConnection, tenant: &TenantConfig, created_at: &str) -> Result<()> {
    let result = sqlx::query("INSERT INTO tenants (slug, code, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&tenant.slug)
        .bind(&tenant.code)
        .bind(&tenant.name)
        .bind(created_at)
        .execute(connection)
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            Err(Error::Conflict(format!("a municipality with the slug '{}' or the code '{}' exists", tenant.slug, tenant.code)))
        }
        Err(error) => Err(error.into()),
    }
}
