-- Access tokens the gateway issued. Only a SHA-256 digest of each token is kept, so a copy
-- of the database does not hand out working tokens. Every request looks its token up here,
-- so a revocation takes effect at once (nothing caches a token's validity).
CREATE TABLE access_tokens (
    digest TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    principal TEXT NOT NULL,
    scope TEXT NOT NULL,
    patient TEXT,
    client_id TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);
