-- Topic-based subscriptions (R4 Backport IG): the server's side of each Subscription
-- resource, and the outbox of events for it. A write inserts the events of the
-- subscriptions following its type in its own transaction (src/store/subscriptions.rs), so a
-- rolled-back write notifies nobody and an acknowledged one is never forgotten.

-- One row per live Subscription: whose it is (the principal it acts for, as JSON), what it
-- follows and how it is delivered (JSON), and its delivery state. `lease_owner` and
-- `lease_until` (unix ms) let exactly one gateway deliver it at a time.
CREATE TABLE subscription_state (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    topic TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    actions TEXT NOT NULL,
    channel TEXT NOT NULL,
    owner TEXT NOT NULL,
    settings TEXT NOT NULL,
    status TEXT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    events_since_start BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    last_sent_at BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT NOT NULL DEFAULT '',
    lease_until BIGINT NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX subscription_state_by_type ON subscription_state (resource_type);

-- The outbox: one row per event per subscription following the event's type. An event is
-- numbered (`event_number`, gap-free per subscription) when the delivering gateway has
-- judged it visible to the subscriber; an event the subscriber may not read is removed
-- unnumbered. `delivered` is set once a receiver acknowledged it; delivered events stay
-- for `$events`.
CREATE TABLE subscription_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    action TEXT NOT NULL,
    occurred TEXT NOT NULL,
    event_number BIGINT,
    delivered BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX subscription_events_pending ON subscription_events (subscription_id, delivered, seq);
-- Partial: an event is inserted unnumbered, so the writes that enqueue do not touch it.
CREATE UNIQUE INDEX subscription_events_numbered ON subscription_events (subscription_id, event_number) WHERE event_number IS NOT NULL;

-- Websocket binding tokens ($get-ws-binding-token), by SHA-256: valid on every gateway
-- until they expire, and never longer than the access token they were issued to
-- (`token_digest`: a binding ends when that token is revoked).
CREATE TABLE subscription_bindings (
    digest TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    token_digest TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
