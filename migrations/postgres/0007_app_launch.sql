-- The gateway's own signing keys (id_tokens). The newest key signs; every key stays in the
-- JWK Set until `retired_at`, so a rotation never invalidates an unexpired id_token.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL,
    private_pem TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at TEXT NOT NULL,
    retired_at TEXT
);

-- Authorization requests between /authorize and the code: what the app asked for, while
-- the user signs in and consents. Referred to by a random id carried through the pages.
CREATE TABLE authorization_requests (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    request TEXT NOT NULL,
    actor TEXT,
    expires_at TEXT NOT NULL
);

-- Authorization codes (by digest), single use.
CREATE TABLE authorization_codes (
    digest TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    grant_json TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0
);

-- Refresh tokens (by digest). Each use rotates the token; a rotated token used again
-- revokes its whole family (reuse detection).
CREATE TABLE refresh_tokens (
    digest TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    tenant TEXT NOT NULL,
    grant_json TEXT NOT NULL,
    expires_at TEXT,
    rotated BIGINT NOT NULL DEFAULT 0,
    revoked BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
