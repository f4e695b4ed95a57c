-- A deleted tenant's row stays, renamed, as the anchor of its append-only audit chain.
-- (Postgres also grants the application role what GDPR erasure needs.)
ALTER TABLE tenants ADD COLUMN deleted_at BIGINT;
