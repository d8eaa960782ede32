//! The bytes of Binary resources, kept once per distinct content under its SHA-256.
//!
//! A grant-less path, deliberately: content is looked up only by the digest a stored Binary
//! version names, after the caller's grant returned that version (`Fhir::binary_content`);
//! a digest is never taken from a request.

use sqlx::Row;

use super::Db;
use crate::error::Result;

/// Stores `content` under `sha256` unless it is there already (two Binaries with the same
/// bytes share one row).
pub async fn put(connection: &mut Db, sha256: &str, content: &[u8]) -> Result<()> {
    sqlx::query("INSERT INTO binary_content (sha256, size, content) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING")
        .bind(sha256)
        .bind(i64::try_from(content.len()).unwrap_or(i64::MAX))
        .bind(content)
        .execute(&mut connection.0)
        .await?;
    Ok(())
}

/// The content stored under `sha256`.
pub async fn get(connection: &mut Db, sha256: &str) -> Result<Option<Vec<u8>>> {
    let row = sqlx::query("SELECT content FROM binary_content WHERE sha256 = $1").bind(sha256).fetch_optional(&mut connection.0).await?;
    Ok(match row {
        Some(row) => Some(row.try_get::<Vec<u8>, _>("content")?),
        None => None,
    })
}
