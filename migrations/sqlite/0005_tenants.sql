-- Municipalities added at run time by a server administrator (POST /admin/tenants). The
-- configuration file's tenants are not stored here; both together are the tenants served.
CREATE TABLE tenants (
    slug TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
