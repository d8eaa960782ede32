//! Access tokens: opaque random strings whose SHA-256 digests are stored with what they
//! grant. Every request checks its token: from the runtime's [`TokenCache`] while the `tokens`
//! generation (bumped in the transaction of every revocation, on whichever gateway) is the
//! one the cache was filled at, else from the database; expiry is judged at every request,
//! so expiry and revocation act at the next request on every gateway.

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

use crate::identity::scopes::Scopes;
use crate::error::{Error, Result};
use crate::identity::{Actor, Authenticated, Principal};
use crate::runtime::{CachedToken, TokenCache};
use crate::store::auth as store;

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
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: 244 bits from the operating system's generator (two UUIDv4s).
fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Issues a new access token.
pub async fn issue(connection: &mut crate::store::Db, now: DateTime<Utc>, grant: &TokenGrant) -> Result<Issued> {
    let token = random_token();
    insert(connection, now, grant, &token, None).await
}

/// Issues a new access token of an app's refresh-token family: revoking the family (a
/// refresh token revoked, or reused) revokes this token too.
pub async fn issue_in_family(connection: &mut crate::store::Db, now: DateTime<Utc>, grant: &TokenGrant, family: &str) -> Result<Issued> {
    let token = random_token();
    insert(connection, now, grant, &token, Some(family)).await
}

/// Stores `token` (chosen by the caller) for `grant`; only the demo's documented tokens
/// are made this way.
pub async fn store(connection: &mut crate::store::Db, now: DateTime<Utc>, grant: &TokenGrant, token: &str) -> Result<Issued> {
    insert(connection, now, grant, token, None).await
}

async fn insert(connection: &mut crate::store::Db, now: DateTime<Utc>, grant: &TokenGrant, token: &str, family: Option<&str>) -> Result<Issued> {
    let expires_at = now + grant.lifetime;
    let principal = serde_json::to_string(&grant.actor)?;
    let row = store::NewAccessToken {
        digest: &digest(token),
        tenant: &grant.tenant,
        principal: &principal,
        scope: &grant.scopes.to_string(),
        patient: grant.patient.as_deref(),
        client_id: &grant.client_id,
        issued_at: &crate::fhir::dates::format_instant(now),
        expires_at: &crate::fhir::dates::format_instant(expires_at),
        family,
    };
    store::put_access_token(connection, &row).await?;
    Ok(Issued { access_token: token.to_owned(), expires_at })
}

/// Revokes a token, access or refresh; unknown tokens are ignored (RFC 7009). A refresh
/// token takes its whole family with it: every refresh token rotated from the same
/// authorization and every access token issued from them (RFC 7009 §2.1).
pub async fn revoke(connection: &mut crate::store::Db, token: &str) -> Result<()> {
    store::revoke_access_token(connection, &digest(token)).await?;
    if let Some(family) = store::refresh_family_of(connection, &digest(token)).await? {
        revoke_family(connection, &family).await?;
    }
    Ok(())
}

/// Revokes a refresh-token family and the access tokens issued from it.
pub async fn revoke_family(connection: &mut crate::store::Db, family: &str) -> Result<()> {
    store::revoke_family(connection, family).await
}

/// The principal a bearer token presented at `tenant`'s base stands for (`None` for the
/// gateway's own administrative endpoints, which check the principal themselves). Every
/// failure is the same 401 to the client (the log says which), so probing learns nothing.
pub async fn verify(
    store: &crate::store::Store,
    connection: &mut crate::store::Db,
    cache: &TokenCache,
    now: DateTime<Utc>,
    tenant: Option<&str>,
    token: &str,
) -> Result<Principal> {
    let tenant_label = tenant.unwrap_or("-");
    let invalid = |why: &str| {
        tracing::info!(target: "renraku::auth", tenant = tenant_label, why, "access token refused");
        Error::Unauthorized("the access token is invalid, expired or revoked".into())
    };
    let digest = digest(token);
    let generations = store.counters(connection).await?;
    crate::policy::facts::note_verified_generations(generations);
    let generation = generations.tokens;
    let found = match cache.get(generation, &digest) {
        Some(found) => found,
        None => {
            let Some(row) = store::access_token(connection, &digest).await? else { return Err(invalid("unknown token")) };
            if row.revoked {
                return Err(invalid("revoked"));
            }
            let actor: Actor = serde_json::from_str(&row.principal).map_err(|_| invalid("unknown principal kind"))?;
            let scopes = Scopes::parse(&row.scope).map_err(|_| invalid("stored scope unreadable"))?;
            let found = CachedToken {
                tenant: row.tenant,
                expires_at: row.expires_at,
                authenticated: Authenticated { actor, scopes, patient: row.patient, client_id: row.client_id },
            };
            cache.put(generation, digest, found.clone());
            found
        }
    };
    if found.expires_at <= crate::fhir::dates::format_instant(now) {
        return Err(invalid("expired"));
    }
    // A server administrator's token is valid at every base; every other token only at its own.
    if tenant.is_some_and(|tenant| tenant != found.tenant) && !matches!(found.authenticated.actor, Actor::ServerAdmin { .. }) {
        return Err(invalid("token for another tenant"));
    }
    Ok(Principal::Authenticated(Box::new(found.authenticated)))
}

/// Records that `client_id` used the assertion `jti` (expiring at `expires_at`, seconds
/// since the epoch). False if it was used before: a replay.
pub async fn record_assertion(
    connection: &mut crate::store::Db,
    now: DateTime<Utc>,
    client_id: &str,
    jti: &str,
    expires_at: i64,
) -> Result<bool> {
    // Assertions expire within minutes; forgetting them afterwards keeps the table small
    // (an expired assertion is refused for its exp anyway).
    store::record_assertion(connection, now.timestamp() - 3600, client_id, jti, expires_at).await
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
pub async fn describe(connection: &mut crate::store::Db, now: DateTime<Utc>, tenant: &str, token: &str) -> Result<Option<TokenInfo>> {
    let Some(row) = store::access_token(connection, &digest(token)).await? else { return Ok(None) };
    if row.revoked || row.expires_at <= crate::fhir::dates::format_instant(now) || row.tenant != tenant {
        return Ok(None);
    }
    let Ok(actor) = serde_json::from_str::<Actor>(&row.principal) else { return Ok(None) };
    let parse = |text: &str| chrono::DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(Error::internal);
    Ok(Some(TokenInfo {
        actor,
        scope: row.scope,
        patient: row.patient,
        client_id: row.client_id,
        issued_at: parse(&row.issued_at)?,
        expires_at: parse(&row.expires_at)?,
    }))
}
