//! The gateway's signing keys (RS256, for id_tokens), persisted in the database.
//!
//! The newest unretired key signs. Rotating adds a new key and schedules the old ones'
//! retirement after a grace period longer than any id_token lives, so tokens signed before
//! the rotation still verify against the JWK Set until they expire. The first key is made
//! when it is first needed (RSA key generation takes a moment).

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::fhir::dates::format_instant;
use crate::store::auth as store;

/// How long a retired key stays published after a rotation (longer than any id_token).
pub const RETIREMENT_GRACE_HOURS: i64 = 24;

/// A key that signs.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub kid: String,
    pub private_pem: String,
}

/// A new RSA key pair for `algorithm` (RS256, RS384): its key id, the private key as PKCS#8
/// PEM, and the public key as a JWK. Slow (a moment of CPU): call it off the async workers.
pub fn new_rsa_key(algorithm: &str) -> Result<(String, String, Value)> {
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(Error::internal)?;
    let pem = private.to_pkcs8_pem(LineEnding::LF).map_err(Error::internal)?.to_string();
    let encode = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let kid = uuid::Uuid::new_v4().simple().to_string();
    let jwk = json!({
        "kty": "RSA", "use": "sig", "alg": algorithm, "kid": kid,
        "n": encode(private.n().to_bytes_be()), "e": encode(private.e().to_bytes_be())
    });
    Ok((kid, pem, jwk))
}

async fn insert(connection: &mut crate::store::Db, now: DateTime<Utc>) -> Result<SigningKey> {
    let (kid, pem, jwk) = tokio::task::spawn_blocking(|| new_rsa_key("RS256")).await.map_err(Error::internal)??;
    store::insert_signing_key(connection, &kid, &pem, &jwk.to_string(), &format_instant(now)).await?;
    tracing::info!(target: "renraku::auth", %kid, "signing key created");
    Ok(SigningKey { kid, private_pem: pem })
}

/// The key that signs now (made if there is none).
pub async fn current(connection: &mut crate::store::Db, now: DateTime<Utc>) -> Result<SigningKey> {
    match store::newest_signing_key(connection).await? {
        Some((kid, private_pem)) => Ok(SigningKey { kid, private_pem }),
        None => insert(connection, now).await,
    }
}

/// Makes a new signing key; the previous ones keep verifying for the grace period.
pub async fn rotate(connection: &mut crate::store::Db, now: DateTime<Utc>) -> Result<String> {
    store::retire_signing_keys(connection, &format_instant(now + Duration::hours(RETIREMENT_GRACE_HOURS))).await?;
    Ok(insert(connection, now).await?.kid)
}

/// The published JWK Set: every key not yet past its retirement.
pub async fn jwks(connection: &mut crate::store::Db, now: DateTime<Utc>) -> Result<Value> {
    let keys: Vec<Value> = store::published_signing_keys(connection, &format_instant(now))
        .await?
        .iter()
        .filter_map(|text| serde_json::from_str(text).ok())
        .collect();
    Ok(json!({ "keys": keys }))
}
