-- Who reaches which person, as rows the access predicate joins (issue #13): one row per
-- active participant (a PractitionerRole or an Organization) of an active CareTeam, and one
-- per active sharing Consent, with the period in which the link holds as fixed-width UTC
-- text ('' = since always, '9999-12-31T23:59:59.999999Z' = for ever). Derived from the
-- CareTeam or Consent `resource_type`/`id` and replaced with its other index rows on every
-- write; a person's registration is the Patient's own `organization` reference row.
CREATE TABLE access_links (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    patient TEXT NOT NULL,
    member TEXT NOT NULL,
    valid_from TEXT NOT NULL,
    valid_to TEXT NOT NULL
);
CREATE INDEX access_links_source ON access_links (resource_type, id);
-- Judged per person (the predicate asks "is this person linked to one of these members?"),
-- so the person leads; an index led by the member would tempt planners into ranging over
-- every person an office reaches for each row.
CREATE INDEX access_links_patient ON access_links (patient, kind, member, valid_from);

-- The same question of registrations ("did Organization O register Patient P?") must range
-- over one Patient's rows: with only (resource_type, id), SQLite preferred the target index
-- (target_type, target_id, param, resource_type) and scanned all 20,000 Patients an office
-- registered for every row it judged.
DROP INDEX search_reference_owner;
CREATE INDEX search_reference_owner ON search_reference (resource_type, id, param, target_type, target_id);

-- Counters bumped in the transaction of every write that changes what a cache holds
-- (`agreements`: every Contract write; `directory`: every Organization, Practitioner and
-- PractitionerRole write; `tokens`: every revocation), read at each request: a cache is
-- used only while its counter is unchanged, on every gateway sharing the database.
CREATE TABLE generations (
    name TEXT PRIMARY KEY,
    counter BIGINT NOT NULL
);
INSERT INTO generations (name, counter) VALUES ('agreements', 0), ('directory', 0), ('tokens', 0);
