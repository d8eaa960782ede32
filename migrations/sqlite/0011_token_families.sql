-- Access tokens issued from an app's refresh-token family carry the family, so that
-- revoking the family (a refresh token revoked per RFC 7009, or reused) revokes them too.
ALTER TABLE access_tokens ADD COLUMN family TEXT;
CREATE INDEX access_tokens_family ON access_tokens (family);
