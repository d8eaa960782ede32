-- The compartment of every version, by which the access rule judges that version (a
-- correction that moves an Observation to another person does not let the new person's
-- team read what was written about the first). One row per reference to a Patient.
CREATE TABLE version_compartment (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    param TEXT NOT NULL,
    patient TEXT NOT NULL
);
CREATE INDEX version_compartment_version ON version_compartment (resource_type, id, version_id);
CREATE INDEX version_compartment_patient ON version_compartment (patient, resource_type);

-- Existing current versions take the compartment of the current index; earlier versions
-- get none (no person's team sees them) until `renraku reindex` rebuilds them from their
-- own content.
INSERT INTO version_compartment (resource_type, id, version_id, param, patient)
SELECT DISTINCT r.resource_type, r.id, r.version_id, x.param, x.target_id
FROM resources r JOIN search_reference x ON x.resource_type = r.resource_type AND x.id = r.id
WHERE x.target_type = 'Patient';
