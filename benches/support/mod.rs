//! What both benchmarks share: access tokens for the callers they measure.

use renraku::identity::scopes::Scopes;
use renraku::auth::tokens::{self, TokenGrant};
use renraku::identity::Actor;

/// A twelve-hour token at 伊那市's base for `actor` with `user/*.cruds`.
pub async fn token(fhir: &renraku::service::Fhir, actor: Actor) -> String {
    let grant = TokenGrant {
        tenant: "ina".into(),
        actor,
        scopes: Scopes::parse("user/*.cruds").unwrap_or_default(),
        patient: None,
        client_id: "bench".into(),
        lifetime: chrono::Duration::hours(12),
    };
    let mut connection = fhir.store.connection().await.unwrap_or_else(|e| panic!("{e}"));
    tokens::issue(&mut connection, fhir.clock.now(), &grant).await.unwrap_or_else(|e| panic!("{e}")).access_token
}
