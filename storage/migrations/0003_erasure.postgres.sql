-- GDPR erasure (DELETE /api/v1/me) runs in the application: it rewrites the user's messages
-- as tombstones, hands their channels to no one, and deletes their sessions, refresh
-- tokens, memberships and profile. Row-level security still confines each statement to the
-- transaction's tenant. (Key rewrap and tenant purges run as the owner role.)
GRANT UPDATE ON messages TO __APP_ROLE__;
GRANT UPDATE ON channels TO __APP_ROLE__;
GRANT DELETE ON users TO __APP_ROLE__;
GRANT DELETE ON sessions TO __APP_ROLE__;
GRANT DELETE ON refresh_tokens TO __APP_ROLE__;
GRANT DELETE ON channel_members TO __APP_ROLE__;
-- Agents and tokens the user created are handed to no one as well.
GRANT UPDATE ON agent_tokens TO __APP_ROLE__;

-- A deleted tenant's row stays, renamed, as the anchor of its append-only audit chain.
ALTER TABLE tenants ADD COLUMN deleted_at BIGINT;
