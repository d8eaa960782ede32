-- String searches range over this index alone (the id is in it), so a broad name prefix
-- such as a common kana family name is matched, counted and paged without reading rows.
DROP INDEX search_string_lookup;
CREATE INDEX IF NOT EXISTS search_string_covering ON search_string (tenant, resource_type, param, normalized, id);
