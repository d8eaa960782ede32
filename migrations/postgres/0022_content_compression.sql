-- JSON columns compressed with LZ4 instead of PostgreSQL's own pglz (issue #13, session 26).
-- Every audited read stores its AuditEvent's JSON twice on PostgreSQL (the journal's copy,
-- then the projected resource row), and at some 2.6 kB each crosses the size at which
-- PostgreSQL compresses a row: pglz_compress was 6 % of the machine's samples under audited
-- reads (benches/README.md, session 26). LZ4 compresses several times faster for a similar
-- size. Only values written from now on are compressed so; older ones stay readable as they
-- are. A server built without LZ4 (feature_not_supported) or older than PostgreSQL 14
-- (syntax_error: the statements are run with EXECUTE so that the error is raised, and
-- caught, when they run) keeps pglz.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE resources ALTER COLUMN content SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE resource_versions ALTER COLUMN content SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE audit_log ALTER COLUMN content SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE audit_queue ALTER COLUMN content SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'LZ4 is not available: JSON columns keep pglz';
END $$;
