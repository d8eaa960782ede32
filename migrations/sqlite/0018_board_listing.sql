-- A person's board read newest first from its own index (issue #16): the board items are
-- ordered by (patient, sent, id), which a page of `Communication?subject=…&category=…board
-- &_sort=-sent` walks and stops after the page, instead of sorting the person's every item.
-- Items entered in error are listed too (a search finds them), marked `live = 0`: they are
-- nobody's unread item and count as no reply. The rows are derived: the server re-indexes
-- at its next start (the index fingerprint changed with this migration).
ALTER TABLE board_items ADD COLUMN live INTEGER NOT NULL DEFAULT 1;
DROP INDEX board_items_by_person;
CREATE INDEX board_items_by_person ON board_items (patient, sent, id);
