//! The authorization server's tables: access and refresh tokens (by digest), authorization
//! requests and codes, EHR launch contexts, used client assertions and the signing keys.
//!
//! Rows only: what a token stands for, whether it is still good and who may have one are
//! decided in `auth`. Nothing here touches resource rows, so nothing here takes a grant.

use sqlx::Row;

use super::Db;

use crate::error::Result;

/// An access token's stored row.
#[derive(Debug, Clone)]
pub struct AccessTokenRow {
    pub tenant: String,
    /// The actor, as JSON.
    pub principal: String,
    pub scope: String,
    pub patient: Option<String>,
    pub client_id: String,
    pub issued_at: String,
    pub expires_at: String,
    pub revoked: bool,
}

/// A new access token's row.
#[derive(Debug, Clone)]
pub struct NewAccessToken<'a> {
    pub digest: &'a str,
    pub tenant: &'a str,
    pub principal: &'a str,
    pub scope: &'a str,
    pub patient: Option<&'a str>,
    pub client_id: &'a str,
    pub issued_at: &'a str,
    pub expires_at: &'a str,
    /// The refresh-token family it was issued from (app tokens).
    pub family: Option<&'a str>,
}

/// Stores an access token, replacing any row with the same digest (the demo's fixed tokens).
pub async fn put_access_token(connection: &mut Db, token: &NewAccessToken<'_>) -> Result<()> {
    // A replaced token (the demo's fixed ones) may be in a gateway's cache.
    let replaced = sqlx::query("DELETE FROM access_tokens WHERE digest = $1").bind(token.digest).execute(&mut connection.0).await?;
    if replaced.rows_affected() > 0 {
        super::bump_generation(connection, super::GENERATION_TOKENS).await?;
    }
    sqlx::query(
        "INSERT INTO access_tokens (digest, tenant, principal, scope, patient, client_id, issued_at, expires_at, revoked, family) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9)",
    )
    .bind(token.digest)
    .bind(token.tenant)
    .bind(token.principal)
    .bind(token.scope)
    .bind(token.patient)
    .bind(token.client_id)
    .bind(token.issued_at)
    .bind(token.expires_at)
    .bind(token.family)
    .execute(&mut connection.0)
    .await?;
    Ok(())
}

pub async fn access_token(connection: &mut Db, digest: &str) -> Result<Option<AccessTokenRow>> {
    let row = sqlx::query(
        "SELECT tenant, principal, scope, patient, client_id, issued_at, expires_at, revoked FROM access_tokens WHERE digest = $1",
    )
    .bind(digest)
    .fetch_optional(&mut connection.0)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(AccessTokenRow {
        tenant: row.try_get("tenant")?,
        principal: row.try_get("principal")?,
        scope: row.try_get("scope")?,
        patient: row.try_get("patient")?,
        client_id: row.try_get("client_id")?,
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked: row.try_get::<i64, _>("revoked")? != 0,
    }))
}

pub async fn revoke_access_token(connection: &mut Db, digest: &str) -> Result<()> {
    sqlx::query("UPDATE access_tokens SET revoked = 1 WHERE digest = $1").bind(digest).execute(&mut connection.0).await?;
    super::bump_generation(connection, super::GENERATION_TOKENS).await
}

/// Revokes every access token a client holds for one actor (an administrator client's, when
/// its registration is removed).
pub async fn revoke_client_tokens(connection: &mut Db, client_id: &str, principal: &str) -> Result<()> {
    sqlx::query("UPDATE access_tokens SET revoked = 1 WHERE client_id = $1 AND principal = $2")
        .bind(client_id)
        .bind(principal)
        .execute(&mut connection.0)
        .await?;
    super::bump_generation(connection, super::GENERATION_TOKENS).await
}

/// Revokes every access token issued to a client at a municipality (its registration was
/// removed; its refresh tokens fail at the token endpoint, which no longer knows the client).
pub async fn revoke_tokens_of_client(connection: &mut Db, tenant: &str, client_id: &str) -> Result<()> {
    sqlx::query("UPDATE access_tokens SET revoked = 1 WHERE tenant = $1 AND client_id = $2")
        .bind(tenant)
        .bind(client_id)
        .execute(&mut connection.0)
        .await?;
    super::bump_generation(connection, super::GENERATION_TOKENS).await
}

/// The family of the refresh token with this digest, if there is one.
pub async fn refresh_family_of(connection: &mut Db, digest: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT family FROM refresh_tokens WHERE digest = $1").bind(digest).fetch_optional(&mut connection.0).await?;
    Ok(row.map(|row| row.try_get("family")).transpose()?)
}

/// Revokes a refresh-token family and the access tokens issued from it.
pub async fn revoke_family(connection: &mut Db, family: &str) -> Result<()> {
    sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family = $1").bind(family).execute(&mut connection.0).await?;
    sqlx::query("UPDATE access_tokens SET revoked = 1 WHERE family = $1").bind(family).execute(&mut connection.0).await?;
    super::bump_generation(connection, super::GENERATION_TOKENS).await
}

/// Records a client assertion's `jti`; false when it was recorded before (a replay).
/// Assertions that expired before `forget_before` are forgotten first.
pub async fn record_assertion(connection: &mut Db, forget_before: i64, client_id: &str, jti: &str, expires_at: i64) -> Result<bool> {
    sqlx::query("DELETE FROM client_assertions WHERE expires_at < $1").bind(forget_before).execute(&mut connection.0).await?;
    let inserted = sqlx::query("INSERT INTO client_assertions (client_id, jti, expires_at) VALUES ($1, $2, $3)")
        .bind(client_id)
        .bind(jti)
        .bind(expires_at)
        .execute(&mut connection.0)
        .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// A pending authorization request's row: the request (JSON), the signed-in actor (JSON)
/// and the expiry.
#[derive(Debug, Clone)]
pub struct AuthorizationRequestRow {
    pub request: String,
    pub actor: Option<String>,
    pub expires_at: String,
}

pub async fn insert_authorization_request(connection: &mut Db, id: &str, tenant: &str, request: &str, expires_at: &str) -> Result<()> {
    sqlx::query("INSERT INTO authorization_requests (id, tenant, request, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(tenant)
        .bind(request)
        .bind(expires_at)
        .execute(&mut connection.0)
        .await?;
    Ok(())
}

pub async fn authorization_request(connection: &mut Db, id: &str, tenant: &str) -> Result<Option<AuthorizationRequestRow>> {
    let row = sqlx::query("SELECT request, actor, expires_at FROM authorization_requests WHERE id = $1 AND tenant = $2")
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut connection.0)
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(AuthorizationRequestRow { request: row.try_get("request")?, actor: row.try_get("actor")?, expires_at: row.try_get("expires_at")? }))
}

pub async fn set_authorization_actor(connection: &mut Db, id: &str, tenant: &str, actor: &str) -> Result<()> {
    sqlx::query("UPDATE authorization_requests SET actor = $1 WHERE id = $2 AND tenant = $3")
        .bind(actor)
        .bind(id)
        .bind(tenant)
        .execute(&mut connection.0)
        .await?;
    Ok(())
}

pub async fn delete_authorization_request(connection: &mut Db, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM authorization_requests WHERE id = $1").bind(id).execute(&mut connection.0).await?;
    Ok(())
}

/// The single-use values the authorization server hands out: authorization codes (whose
/// payload is the grant, as JSON) and EHR launch values (whose payload is the patient).
/// Both are stored by digest with their municipality and expiry, and used at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingleUse {
    AuthorizationCode,
    LaunchContext,
}

impl SingleUse {
    fn table(self) -> &'static str {
        match self {
            SingleUse::AuthorizationCode => "authorization_codes",
            SingleUse::LaunchContext => "launch_contexts",
        }
    }

    fn payload(self) -> &'static str {
        match self {
            SingleUse::AuthorizationCode => "grant_json",
            SingleUse::LaunchContext => "patient",
        }
    }
}

pub async fn insert_single_use(connection: &mut Db, kind: SingleUse, digest: &str, tenant: &str, payload: &str, expires_at: &str) -> Result<()> {
    let statement = format!("INSERT INTO {} (digest, tenant, {}, expires_at) VALUES ($1, $2, $3, $4)", kind.table(), kind.payload());
    sqlx::query(&statement).bind(digest).bind(tenant).bind(payload).bind(expires_at).execute(&mut connection.0).await?;
    Ok(())
}

/// A single-use value's payload and expiry (used or not: [`claim_single_use`] decides).
pub async fn single_use(connection: &mut Db, kind: SingleUse, digest: &str, tenant: &str) -> Result<Option<(String, String)>> {
    let statement = format!("SELECT {} AS payload, expires_at FROM {} WHERE digest = $1 AND tenant = $2", kind.payload(), kind.table());
    let row = sqlx::query(&statement).bind(digest).bind(tenant).fetch_optional(&mut connection.0).await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some((row.try_get("payload")?, row.try_get("expires_at")?)))
}

/// Marks a value used; true only for the one caller that did.
pub async fn claim_single_use(connection: &mut Db, kind: SingleUse, digest: &str) -> Result<bool> {
    let statement = format!("UPDATE {} SET used = 1 WHERE digest = $1 AND used = 0", kind.table());
    let claimed = sqlx::query(&statement).bind(digest).execute(&mut connection.0).await?;
    Ok(claimed.rows_affected() == 1)
}

/// A refresh token's row.
#[derive(Debug, Clone)]
pub struct RefreshTokenRow {
    pub family: String,
    /// What it stands for, as JSON.
    pub grant: String,
    pub expires_at: Option<String>,
    pub revoked: bool,
}

pub async fn refresh_token(connection: &mut Db, digest: &str, tenant: &str) -> Result<Option<RefreshTokenRow>> {
    let row = sqlx::query("SELECT family, grant_json, expires_at, revoked FROM refresh_tokens WHERE digest = $1 AND tenant = $2")
        .bind(digest)
        .bind(tenant)
        .fetch_optional(&mut connection.0)
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(RefreshTokenRow {
        family: row.try_get("family")?,
        grant: row.try_get("grant_json")?,
        expires_at: row.try_get("expires_at")?,
        revoked: row.try_get::<i64, _>("revoked")? != 0,
    }))
}

/// Marks a refresh token rotated; true only for the one caller that did (a second
/// presentation of the same token is a reuse).
pub async fn claim_refresh_token(connection: &mut Db, digest: &str) -> Result<bool> {
    let claimed = sqlx::query("UPDATE refresh_tokens SET rotated = 1 WHERE digest = $1 AND rotated = 0").bind(digest).execute(&mut connection.0).await?;
    Ok(claimed.rows_affected() == 1)
}

pub async fn insert_refresh_token(connection: &mut Db, digest: &str, family: &str, tenant: &str, grant: &str, expires_at: &str) -> Result<()> {
    sqlx::query("INSERT INTO refresh_tokens (digest, family, tenant, grant_json, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(digest)
        .bind(family)
        .bind(tenant)
        .bind(grant)
        .bind(expires_at)
        .execute(&mut connection.0)
        .await?;
    Ok(())
}

pub async fn insert_signing_key(connection: &mut Db, kid: &str, private_pem: &str, public_jwk: &str, created_at: &str) -> Result<()> {
    sqlx::query("INSERT INTO signing_keys (kid, algorithm, private_pem, public_jwk, created_at) VALUES ($1, 'RS256', $2, $3, $4)")
        .bind(kid)
        .bind(private_pem)
        .bind(public_jwk)
        .bind(created_at)
        .execute(&mut connection.0)
        .await?;
    Ok(())
}

/// The newest unretired key: `(kid, private key PEM)`.
pub async fn newest_signing_key(connection: &mut Db) -> Result<Option<(String, String)>> {
    let row = sqlx::query("SELECT kid, private_pem FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, kid LIMIT 1")
        .fetch_optional(&mut connection.0)
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some((row.try_get("kid")?, row.try_get("private_pem")?)))
}

/// Schedules every unretired key's retirement at `retired_at`.
pub async fn retire_signing_keys(connection: &mut Db, retired_at: &str) -> Result<()> {
    sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL").bind(retired_at).execute(&mut connection.0).await?;
    Ok(())
}

/// The public JWKs (JSON) of every key not yet past its retirement at `now`.
pub async fn published_signing_keys(connection: &mut Db, now: &str) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT public_jwk FROM signing_keys WHERE retired_at IS NULL OR retired_at > $1 ORDER BY created_at")
        .bind(now)
        .fetch_all(&mut connection.0)
        .await?;
    rows.iter().map(|row| Ok(row.try_get("public_jwk")?)).collect()
}
