-- EHR launch: a `launch` value (by digest) minted by the gateway for a patient context,
-- redeemed once at /authorize within five minutes.
CREATE TABLE launch_contexts (
    digest TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    patient TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0
);
