-- The board (掲示板) and chat of a person's support team: every board post, reply and chat
-- message (a Communication with a category of communication-kind) as an index row derived
-- at each write (src/fhir/board.rs), and who has read what (既読). Read marks are not
-- versions of the clinical record: marking an item read writes only here (and the audit
-- trail).
CREATE TABLE board_items (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    patient TEXT NOT NULL,
    kind TEXT NOT NULL,
    sent TEXT NOT NULL,
    sender TEXT NOT NULL,
    parent TEXT NOT NULL
);
CREATE INDEX board_items_by_resource ON board_items (resource_type, id);
CREATE INDEX board_items_by_person ON board_items (patient, sent);
CREATE INDEX board_items_by_parent ON board_items (parent);

-- One row per item a reader marked read; `reader` is the actor's reference
-- (PractitionerRole/…, Organization/…).
CREATE TABLE read_marks (
    item TEXT NOT NULL,
    reader TEXT NOT NULL,
    patient TEXT NOT NULL,
    read_at TEXT NOT NULL,
    PRIMARY KEY (item, reader)
);
CREATE INDEX read_marks_by_reader ON read_marks (reader, patient);

-- "Everything up to here is read": per reader and person, the latest `sent` read through.
CREATE TABLE read_through (
    patient TEXT NOT NULL,
    reader TEXT NOT NULL,
    through TEXT NOT NULL,
    read_at TEXT NOT NULL,
    PRIMARY KEY (patient, reader)
);
