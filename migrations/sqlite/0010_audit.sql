-- The audit trail (see ARCHITECTURE.md, "The audit chain"). `audit_log` is the journal: it
-- holds every event, chained, and is written on the request path (in a write's own
-- transaction, or by the read path's group commit). The AuditEvent resource rows (resources,
-- resource_versions, index rows) that make the trail readable and searchable are projected
-- from it afterwards, in large batches (`projected` says which rows are done).

-- One row per chain (a municipality's slug, or `_server`): the last link and where the chain
-- starts after pruning (the last pruned event's sequence number and digest).
CREATE TABLE audit_heads (
    chain TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    digest TEXT NOT NULL,
    anchor_seq BIGINT NOT NULL,
    anchor_digest TEXT NOT NULL
);

-- One row per event: its place in the chain, its predecessor's digest, its own digest and
-- the AuditEvent JSON the digest covers.
CREATE TABLE audit_log (
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    recorded TEXT NOT NULL,
    previous TEXT NOT NULL,
    digest TEXT NOT NULL,
    content TEXT NOT NULL,
    projected BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_log_unprojected ON audit_log (chain, seq) WHERE projected = 0;
