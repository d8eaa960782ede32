-- The municipalities and OAuth clients registered at run time are held in every gateway's
-- memory; `registry` is bumped in the transaction of every change to `tenants` or `clients`,
-- so that another gateway sharing the database (or one running while `renraku admin`
-- changes a registration) reloads them before it looks one up.
INSERT INTO generations (name, counter) VALUES ('registry', 0);
