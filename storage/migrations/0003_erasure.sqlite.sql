-- Postgres grants the application role what GDPR erasure needs (0003_erasure.postgres.sql);
-- SQLite has no roles. This file keeps the two schema versions in step.
SELECT 1;
