-- The bytes of Binary resources, stored once by their SHA-256 (hex): a Binary's JSON keeps
-- no `data`, only the digest and size in `meta.extension` (src/fhir/binary.rs). Rows are
-- never updated; every version that names a digest can read its content back.
CREATE TABLE binary_content (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    content BLOB NOT NULL
);
