-- The audit trail's hash chains (see ARCHITECTURE.md, "The audit chain"). Every AuditEvent
-- is also an ordinary resource row (resources, resource_versions, index rows) so that it can
-- be read and searched; these tables hold what makes the trail tamper-evident.

-- One row per chain (a municipality's slug, or `_server`): the last link and where the chain
-- starts after pruning (the last pruned event's sequence number and digest).
CREATE TABLE audit_heads (
    chain TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    digest TEXT NOT NULL,
    anchor_seq BIGINT NOT NULL,
    anchor_digest TEXT NOT NULL
);

-- One row per event: its place in the chain, its predecessor's digest and its own.
CREATE TABLE audit_log (
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    recorded TEXT NOT NULL,
    previous TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
);
