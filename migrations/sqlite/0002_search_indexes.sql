-- Index tables for every search parameter type, extracted from each current version by the
-- parameters in conformance/ (see src/fhir/search_params.rs).
ALTER TABLE search_token ADD COLUMN text TEXT NOT NULL DEFAULT '';

CREATE TABLE search_string (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    param TEXT NOT NULL,
    normalized TEXT NOT NULL,
    exact TEXT NOT NULL
);
CREATE INDEX search_string_lookup ON search_string (tenant, resource_type, param, normalized);
CREATE INDEX search_string_owner ON search_string (resource_type, id);

CREATE TABLE search_reference (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    param TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    url TEXT NOT NULL,
    identifier_system TEXT NOT NULL,
    identifier_value TEXT NOT NULL
);
CREATE INDEX search_reference_target ON search_reference (target_type, target_id, param, resource_type);
CREATE INDEX search_reference_owner ON search_reference (resource_type, id);

CREATE TABLE search_date (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    param TEXT NOT NULL,
    low TEXT NOT NULL,
    high TEXT NOT NULL
);
CREATE INDEX search_date_lookup ON search_date (tenant, resource_type, param, low);
CREATE INDEX search_date_owner ON search_date (resource_type, id);

CREATE TABLE search_number (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    param TEXT NOT NULL,
    value REAL NOT NULL,
    system TEXT NOT NULL,
    code TEXT NOT NULL
);
CREATE INDEX search_number_lookup ON search_number (tenant, resource_type, param, value);
CREATE INDEX search_number_owner ON search_number (resource_type, id);

CREATE TABLE search_uri (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    param TEXT NOT NULL,
    uri TEXT NOT NULL
);
CREATE INDEX search_uri_lookup ON search_uri (tenant, resource_type, param, uri);
CREATE INDEX search_uri_owner ON search_uri (resource_type, id);

-- Server settings, e.g. the fingerprint of the search parameters the index was built with.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
