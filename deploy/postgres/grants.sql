-- The runtime role's privileges on the tables the migrations made (deploy/postgres/roles.sql says when to run
-- this): read and write every working table, only read the schema version, and only INSERT (and read) the
-- audit trail: no UPDATE, DELETE or TRUNCATE, and, not being the owner, no ALTER, DROP or trigger change.
-- As the owner, after every `jitctl db upgrade`:  psql -v runtime=jit_runtime -d jit -f deploy/postgres/grants.sql
\set ON_ERROR_STOP on
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"runtime";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"runtime";
REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM :"runtime";
REVOKE UPDATE, DELETE ON audit FROM :"runtime";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"runtime";
