-- An event's agents stored once for every event that has the same ones (issue #13, session
-- 27). Every request of one actor is recorded with the same four agents (the practitioner,
-- their role, their organization, the client), and each was an `audit_terms` row per event:
-- four of a read's six term rows. A set of agents is now stored once, keyed by a digest of
-- its rows (`store::audit::IndexOfEvent`), and an event names its set in `audit_index`.
-- Searches see the same rows as before through the view. The rows are derived: the server
-- re-indexes at its next start (the index fingerprint changed with this migration).
CREATE TABLE audit_agent_sets (
    param TEXT NOT NULL,
    b TEXT NOT NULL,
    a TEXT NOT NULL,
    kind TEXT NOT NULL,
    agents TEXT NOT NULL,
    PRIMARY KEY (param, b, a, kind, agents)
);
ALTER TABLE audit_index ADD COLUMN agents TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_index_by_agents ON audit_index (agents);

-- As in 0019, with each event's agents read from its set.
DROP VIEW audit_search_reference;
CREATE VIEW audit_search_reference (resource_type, id, tenant, param, target_type, target_id, url, identifier_system, identifier_value) AS
    SELECT 'AuditEvent', id, tenant, param, a, b, '', '', '' FROM audit_terms WHERE kind = 'r'
    UNION ALL SELECT 'AuditEvent', id, tenant, 'patient', a, b, '', '', '' FROM audit_terms WHERE kind = 'r' AND param = 'entity' AND a = 'Patient'
    UNION ALL SELECT 'AuditEvent', id, tenant, param, '', '', '', a, b FROM audit_terms WHERE kind = 'i'
    UNION ALL SELECT 'AuditEvent', i.id, i.tenant, s.param, s.a, s.b, '', '', '' FROM audit_agent_sets s JOIN audit_index i ON i.agents = s.agents WHERE s.kind = 'r'
    UNION ALL SELECT 'AuditEvent', i.id, i.tenant, s.param, '', '', '', s.a, s.b FROM audit_agent_sets s JOIN audit_index i ON i.agents = s.agents WHERE s.kind = 'i';
