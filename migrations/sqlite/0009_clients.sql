-- OAuth clients registered at run time through /admin/clients (the configuration file's
-- and the demo's are not stored). Together they are the client registry.
CREATE TABLE clients (
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    registration TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant, client_id)
);
