-- Current state of every resource (one row per resource, tombstoned on delete).
CREATE TABLE resources (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated TEXT NOT NULL,
    deleted BIGINT NOT NULL,
    content TEXT,
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX resources_by_tenant_type_updated ON resources (tenant, resource_type, last_updated);

-- Every version ever written, in write order; deletes have no content.
CREATE TABLE resource_versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    last_updated TEXT NOT NULL,
    method TEXT NOT NULL,
    content TEXT,
    UNIQUE (resource_type, id, version_id)
);
CREATE INDEX resource_versions_by_tenant_seq ON resource_versions (tenant, seq);
CREATE INDEX resource_versions_by_tenant_type_seq ON resource_versions (tenant, resource_type, seq);

-- Token search index (system|code pairs per search parameter) of current versions.
CREATE TABLE search_token (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    param TEXT NOT NULL,
    system TEXT NOT NULL,
    code TEXT NOT NULL
);
CREATE INDEX search_token_lookup ON search_token (tenant, resource_type, param, code, system);
CREATE INDEX search_token_owner ON search_token (resource_type, id);

-- Rows that writers update first to serialise conditional interactions on one key.
CREATE TABLE write_locks (
    name TEXT PRIMARY KEY,
    counter BIGINT NOT NULL
);
