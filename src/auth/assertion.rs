//! Client assertions (RFC 7523, SMART Backend Services): a JWT signed with one of the
//! client's registered keys, proving the client's identity to the token endpoint.
//!
//! What is checked: the algorithm is RS384 or ES384 (never `none`, never a symmetric one);
//! the key comes from the client's registered JWK Set (by `kid`, or the only key), and a
//! `jku` header is accepted only when it names the registered `jwks_url`; `iss` = `sub` =
//! the client id; `aud` is this token endpoint; `exp` is in the future and no more than
//! five minutes ahead; `jti` is present (its single use is enforced by the caller, which
//! stores it).

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::identity::clients::ClientConfig;
use super::OAuthError;

/// The longest an assertion may live, and the clock skew tolerated beyond it.
pub const MAX_LIFETIME_SECONDS: i64 = 300;
const SKEW_SECONDS: i64 = 10;

/// A verified assertion.
#[derive(Debug, Clone)]
pub struct Verified {
    pub client_id: String,
    pub jti: String,
    /// Seconds since the epoch.
    pub expires_at: i64,
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Value>,
    exp: Option<i64>,
    jti: Option<String>,
}

/// The `iss` of an assertion, read without verifying it (to find the client whose keys
/// will verify it).
pub fn unverified_issuer(assertion: &str) -> Option<String> {
    let payload = assertion.split('.').nth(1)?;
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss").and_then(Value::as_str).map(str::to_owned)
}

/// The client's registered JWK Set: inline, or fetched from its `jwks_url` (at every token
/// request: a client rotating its keys is heard at once; redirects are not followed).
pub async fn client_keys(client: &ClientConfig) -> Result<JwkSet, OAuthError> {
    let unusable = |why: &str| OAuthError::invalid_client(format!("the client's registered keys {why}"));
    if let Some(jwks) = &client.jwks {
        return serde_json::from_value(jwks.clone()).map_err(|_| unusable("are not a readable JWK Set"));
    }
    let url = client.jwks_url.as_deref().ok_or_else(|| unusable("are missing"))?;
    let http = reqwest::ClientBuilder::new()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(OAuthError::server_error)?;
    let response = http.get(url).send().await.map_err(|e| {
        tracing::info!(target: "renraku::auth", client = %client.client_id, error = %e, "fetching the client's JWK Set failed");
        unusable("could not be fetched from its jwks_url")
    })?;
    if !response.status().is_success() {
        return Err(unusable("could not be fetched from its jwks_url"));
    }
    response.json::<JwkSet>().await.map_err(|_| unusable("at its jwks_url are not a readable JWK Set"))
}

/// Verifies `assertion` as `client`'s (signed by one of `jwks`), for the token endpoint
/// `token_url`, at `now` (seconds since the epoch).
pub fn verify(assertion: &str, client: &ClientConfig, jwks: &JwkSet, token_url: &str, now: i64) -> Result<Verified, OAuthError> {
    let invalid = |why: &str| OAuthError::invalid_client(format!("the client assertion {why}"));
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| invalid("is not a signed JWT"))?;
    if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
        return Err(invalid("must be signed with RS384 or ES384"));
    }
    if let Some(jku) = &header.jku {
        if client.jwks_url.as_deref() != Some(jku.as_str()) {
            return Err(invalid("names a jku that is not the client's registered JWK Set URL"));
        }
    }
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid),
        None if jwks.keys.len() == 1 => jwks.keys.first(),
        None => None,
    }
    .ok_or_else(|| invalid("is signed with a key that is not among the client's registered keys"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| invalid("names a registered key that cannot verify signatures"))?;
    let mut validation = Validation::new(header.alg);
    // Time and audience are checked below, against our clock and our exact endpoint.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Claims>(assertion, &key, &validation)
        .map_err(|_| invalid("has a signature that does not verify with the client's key"))?
        .claims;
    if claims.iss.as_deref() != Some(client.client_id.as_str()) || claims.sub.as_deref() != Some(client.client_id.as_str()) {
        return Err(invalid("must have iss and sub equal to the client id"));
    }
    let audience_matches = match &claims.aud {
        Some(Value::String(aud)) => aud == token_url,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(token_url)),
        _ => false,
    };
    if !audience_matches {
        return Err(invalid(&format!("must have aud = {token_url}")));
    }
    let expires_at = claims.exp.ok_or_else(|| invalid("has no exp"))?;
    if expires_at <= now - SKEW_SECONDS {
        return Err(invalid("has expired"));
    }
    if expires_at > now + MAX_LIFETIME_SECONDS + SKEW_SECONDS {
        return Err(invalid("expires more than five minutes from now"));
    }
    let jti = claims.jti.filter(|j| !j.is_empty()).ok_or_else(|| invalid("has no jti"))?;
    Ok(Verified { client_id: client.client_id.clone(), jti, expires_at })
}
