-- Runs once, on first start of an empty Postgres data volume
-- (mounted into /docker-entrypoint-initdb.d by infra/compose.yaml).
-- One database per service; both are owned by POSTGRES_USER.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;

-- Prefect server requires the pg_trgm extension in its database.
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
