-- The database roles of jit-elevation (docs/security.md): a migration role that owns the schema, and the
-- daemons' runtime role, which may read and write the working tables but only INSERT into the audit trail.
--
-- Once, as a superuser, connected to the (empty) database:
--   psql -v owner=jit_owner -v runtime=jit_runtime -v database=jit -d jit -f deploy/postgres/roles.sql
-- then migrate as the owner:  JIT_DATABASE_URL=postgresql+psycopg://jit_owner@db/jit jitctl db upgrade
-- then, after every upgrade, as the owner:  psql -v runtime=jit_runtime -d jit -f deploy/postgres/grants.sql
-- The daemons connect as the runtime role (JIT_DATABASE_URL=postgresql+psycopg://jit_runtime@db/jit?sslmode=verify-full).
\set ON_ERROR_STOP on
CREATE ROLE :"owner" LOGIN;
CREATE ROLE :"runtime" LOGIN;
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO :"owner", :"runtime";
ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"runtime";
