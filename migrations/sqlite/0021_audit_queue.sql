-- Audit events waiting for their place in the chain (issue #13, session 20). On PostgreSQL a
-- write stores its events here, in its own transaction, instead of chaining them there:
-- chaining takes the municipality's head row, and a write held it from its append through
-- its COMMIT's WAL flush, so a municipality's audited writes committed one at a time
-- (benches/README.md, session 19). A chainer (`store::audit::chain_queued`) moves them
-- into `audit_log` in arrival order, moments later, under the head's lock. SQLite, which
-- has one write lock anyway, chains a write's events in its transaction and leaves this
-- table empty.
-- `content` is the AuditEvent's JSON with the chain extension's placeholder (sequence 0, no
-- predecessor), which chaining fills in.
CREATE TABLE audit_queue (
    queued INTEGER PRIMARY KEY,
    chain TEXT NOT NULL,
    event_id TEXT NOT NULL,
    recorded TEXT NOT NULL,
    content TEXT NOT NULL
);
