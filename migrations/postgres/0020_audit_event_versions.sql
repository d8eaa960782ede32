-- AuditEvents have no version rows (issue #13): an event is written once and never changed
-- (retention pruning aside), so its resource row is its one version; vread and history of
-- an AuditEvent read that row (`store::history`). The second copy of each event's JSON and
-- its compartment rows were a fifth of an audited read's cost. Events written before this
-- migration had them: removed here, so every event is stored the same way.
DELETE FROM version_compartment WHERE resource_type = 'AuditEvent';
DELETE FROM resource_versions WHERE resource_type = 'AuditEvent';
