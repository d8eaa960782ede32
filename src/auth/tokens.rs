//! Access tokens: opaque random strings whose SHA-256 digests are stored with what they
//! grant. Every request looks its token up, so expiry and revocation act immediately.

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use super::scopes::Scopes;
use crate::error::{Error, Result};
use crate::policy::{Actor, Authenticated, Principal};

/// What a new token stands for.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// The municipality whose base URL the token is for (its audience).
    pub tenant: String,
    pub actor: Actor,
    pub scopes: Scopes,
    pub patient: Option<String>,
    pub client_id: String,
    pub lifetime: Duration,
}

/// An issued token.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_token: String,
    pub expires_at: DateTime<Utc>,
}

fn digest(token: &str) -> String {
    let hash = Sha256::digest(token.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token: 244 bits from the operating system's generator (two UUIDv4s).
fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Issues a new access token.
pub async fn issue(connection: &mut AnyConnection, now: DateTime<Utc>, grant: &TokenGrant) -> Result<Issued> {
    let token = random_token();
    insert(connection, now, grant, &token, None).await
}

/// Issues a new access token of an app's refresh-token family: revoking the family (a
/// refresh token revoked, or reused) revokes this token too.
pub async fn issue_in_family(connection: &mut AnyConnection, now: DateTime<Utc>, grant: &TokenGrant, family: &str) -> Result<Issued> {
    let token = random_token();
    insert(connection, now, grant, &token, Some(family)).await
}

/// Stores `token` (chosen by the caller) for `grant`; only the demo's documented tokens
/// are made this way.
pub async fn store(connection: &mut AnyConnection, now: DateTime<Utc>, grant: &TokenGrant, token: &str) -> Result<Issued> {
    insert(connection, now, grant, token, None).await
}

async fn insert(connection: &mut AnyConnection, now: DateTime<Utc>, grant: &TokenGrant, token: &str, family: Option<&str>) -> Result<Issued> {
    let expires_at = now + grant.lifetime;
    let principal = serde_json::to_string(&grant.actor)?;
    sqlx::query("DELETE FROM access_tokens WHERE digest = $1").bind(digest(token)).execute(&mut *connection).await?;
    sqlx::query(
        "INSERT INTO access_tokens (digest, tenant, principal, scope, patient, client_id, issued_at, expires_at, revoked, family) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9)",
    )
    .bind(digest(token))
    .bind(&grant.tenant)
    .bind(principal)
    .bind(grant.scopes.to_string())
    .bind(grant.patient.clone())
    .bind(&grant.client_id)
    .bind(crate::fhir::dates::format_instant(now))
    .bind(crate::fhir::dates::format_instant(expires_at))
    .bind(family)
    .execute(&mut *connection)
    .await?;
    Ok(Issued { access_token: token.to_owned(), expires_at })
}

/// Revokes a token, access or refresh; unknown tokens are ignored (RFC 7009). A refresh
/// token takes its whole family with it: every refresh token rotated from the same
/// authorization and every access token issued from them (RFC 7009 §2.1).
pub async fn revoke(connection: &mut AnyConnection, token: &str) -> Result<()> {
    sqlx::query("UPDATE access_tokens SET revoked = 1 WHERE digest = $1").bind(digest(token)).execute(&mut *connection).await?;
    let family = sqlx::query("SELECT family FROM refresh_tokens WHERE digest = $1").bind(digest(token)).fetch_optional(&mut *connection).await?;
    if let Some(row) = family {
        revoke_family(connection, &row.try_get::<String, _>("family")?).await?;
    }
    Ok(())
}

/// Revokes a refresh-token family and the access tokens issued from it.
pub async fn revoke_family(connection: &mut AnyConnection, family: &str) -> Result<()> {
    sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family = $1").bind(family).execute(&mut *connection).await?;
    sqlx::query("UPDATE access_tokens SET revoked = 1 WHERE family = $1").bind(family).execute(&mut *connection).await?;
    Ok(())
}

/// The principal a bearer token presented at `tenant`'s base stands for (`None` for the
/// gateway's own administrative endpoints, which check the principal themselves). Every
/// failure is the same 401 to the client (the log says which), so probing learns nothing.
pub async fn verify(connection: &mut AnyConnection, now: DateTime<Utc>, tenant: Option<&str>, token: &str) -> Result<Principal> {
    let tenant_label = tenant.unwrap_or("-");
    let invalid = |why: &str| {
        tracing::info!(target: "renraku::auth", tenant = tenant_label, why, "access token refused");
        Error::Unauthorized("the access token is invalid, expired or revoked".into())
    };
    let row = sqlx::query(
        "SELECT tenant, principal, scope, patient, client_id, expires_at, revoked FROM access_tokens WHERE digest = $1",
    )
    .bind(digest(token))
    .fetch_optional(connection)
    .await?;
    let Some(row) = row else { return Err(invalid("unknown token")) };
    if row.try_get::<i64, _>("revoked")? != 0 {
        return Err(invalid("revoked"));
    }
    let expires_at: String = row.try_get("expires_at")?;
    if expires_at <= crate::fhir::dates::format_instant(now) {
        return Err(invalid("expired"));
    }
    let audience: String = row.try_get("tenant")?;
    let actor: Actor = serde_json::from_str(&row.try_get::<String, _>("principal")?).map_err(|_| invalid("unknown principal kind"))?;
    // A server administrator's token is valid at every base; every other token only at its own.
    if tenant.is_some_and(|tenant| tenant != audience) && !matches!(actor, Actor::ServerAdmin { .. }) {
        return Err(invalid("token for another tenant"));
    }
    let scopes = Scopes::parse(&row.try_get::<String, _>("scope")?).map_err(|_| invalid("stored scope unreadable"))?;
    Ok(Principal::Authenticated(Box::new(Authenticated {
        actor,
        scopes,
        patient: row.try_get("patient")?,
        client_id: row.try_get("client_id")?,
    })))
}

/// Records that `client_id` used the assertion `jti` (expiring at `expires_at`, seconds
/// since the epoch). False if it was used before: a replay.
pub async fn record_assertion(
    connection: &mut AnyConnection,
    now: DateTime<Utc>,
    client_id: &str,
    jti: &str,
    expires_at: i64,
) -> Result<bool> {
    // Assertions expire within minutes; forgetting them afterwards keeps the table small
    // (an expired assertion is refused for its exp anyway).
    sqlx::query("DELETE FROM client_assertions WHERE expires_at < $1")
        .bind(now.timestamp() - 3600)
        .execute(&mut *connection)
        .await?;
    let inserted = sqlx::query("INSERT INTO client_assertions (client_id, jti, expires_at) VALUES ($1, $2, $3)")
        .bind(client_id)
        .bind(jti)
        .bind(expires_at)
        .execute(&mut *connection)
        .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// What introspection reports about an active token.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub actor: Actor,
    pub scope: String,
    pub patient: Option<String>,
    pub client_id: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The token's details if it is active (known, unexpired, unrevoked) and for `tenant`.
pub async fn describe(connection: &mut AnyConnection, now: DateTime<Utc>, tenant: &str, token: &str) -> Result<Option<TokenInfo>> {
    let row = sqlx::query(
        "SELECT tenant, principal, scope, patient, client_id, issued_at, expires_at, revoked FROM access_tokens WHERE digest = $1",
    )
    .bind(digest(token))
    .fetch_optional(connection)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let expires_text: String = row.try_get("expires_at")?;
    if row.try_get::<i64, _>("revoked")? != 0 || expires_text <= crate::fhir::dates::format_instant(now) {
        return Ok(None);
    }
    if row.try_get::<String, _>("tenant")? != tenant {
        return Ok(None);
    }
    let Ok(actor) = serde_json::from_str::<Actor>(&row.try_get::<String, _>("principal")?) else { return Ok(None) };
    let parse = |text: String| {
        chrono::DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc)).map_err(Error::internal)
    };
    Ok(Some(TokenInfo {
        actor,
        scope: row.try_get("scope")?,
        patient: row.try_get("patient")?,
        client_id: row.try_get("client_id")?,
        issued_at: parse(row.try_get("issued_at")?)?,
        expires_at: parse(expires_text)?,
    }))
}
