-- AuditEvents' own index (issue #13, item 3): every audited read writes an event, and the
-- generic index rows of one (twelve rows in four tables, each row in its table and two
-- indexes) were most of the audit writer's work. An event now has one row in `audit_index`
-- (its date and its one-valued tokens) and one row in `audit_terms` per reference or extra
-- value (agents, entities, patients), each table a single B-tree. The views give the search
-- engine the shape of the generic tables, so criteria on AuditEvents read these instead
-- (see `store::query::index_source`). The rows are derived: the server re-indexes at
-- its next start (the index fingerprint changed with this migration).
CREATE TABLE audit_index (
    id TEXT NOT NULL PRIMARY KEY,
    tenant TEXT NOT NULL,
    date_low TEXT NOT NULL,
    date_high TEXT NOT NULL,
    action_system TEXT NOT NULL,
    action_code TEXT NOT NULL,
    outcome_system TEXT NOT NULL,
    outcome_code TEXT NOT NULL,
    type_system TEXT NOT NULL,
    type_code TEXT NOT NULL,
    subtype_system TEXT NOT NULL,
    subtype_code TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX audit_index_by_date ON audit_index (tenant, date_low);

-- kind: 'r' a reference (a = target type, b = target id), 'i' a reference by identifier
-- (a = system, b = value), 't' a token (a = system, b = code), 'd' a date (a = low, b = high).
CREATE TABLE audit_terms (
    param TEXT NOT NULL,
    b TEXT NOT NULL,
    a TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    PRIMARY KEY (param, b, a, kind, id)
) WITHOUT ROWID;

CREATE VIEW audit_search_token (resource_type, id, tenant, param, system, code, text) AS
    SELECT 'AuditEvent', id, tenant, 'action', action_system, action_code, '' FROM audit_index WHERE action_code <> ''
    UNION ALL SELECT 'AuditEvent', id, tenant, 'outcome', outcome_system, outcome_code, '' FROM audit_index WHERE outcome_code <> ''
    UNION ALL SELECT 'AuditEvent', id, tenant, 'type', type_system, type_code, '' FROM audit_index WHERE type_code <> ''
    UNION ALL SELECT 'AuditEvent', id, tenant, 'subtype', subtype_system, subtype_code, '' FROM audit_index WHERE subtype_code <> ''
    UNION ALL SELECT 'AuditEvent', id, tenant, param, a, b, '' FROM audit_terms WHERE kind = 't';

-- `patient` is every Patient an entity or agent names: an entity's is not stored twice, the
-- view reads it from the entity's row.
CREATE VIEW audit_search_reference (resource_type, id, tenant, param, target_type, target_id, url, identifier_system, identifier_value) AS
    SELECT 'AuditEvent', id, tenant, param, a, b, '', '', '' FROM audit_terms WHERE kind = 'r'
    UNION ALL SELECT 'AuditEvent', id, tenant, 'patient', a, b, '', '', '' FROM audit_terms WHERE kind = 'r' AND param = 'entity' AND a = 'Patient'
    UNION ALL SELECT 'AuditEvent', id, tenant, param, '', '', '', a, b FROM audit_terms WHERE kind = 'i';

CREATE VIEW audit_search_date (resource_type, id, tenant, param, low, high) AS
    SELECT 'AuditEvent', id, tenant, 'date', date_low, date_high FROM audit_index WHERE date_low <> ''
    UNION ALL SELECT 'AuditEvent', id, tenant, param, a, b FROM audit_terms WHERE kind = 'd';
