-- Agents (bots) and their API tokens. Only SHA-256 digests of tokens are stored.
CREATE TABLE agents (
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    disabled_at  BIGINT,
    UNIQUE (tenant_id, name)
);
ALTER TABLE agents ENABLE ROW LEVEL SECURITY;
ALTER TABLE agents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON agents
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
GRANT SELECT, INSERT, UPDATE ON agents TO __APP_ROLE__;

CREATE TABLE agent_tokens (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    last_four   TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX agent_tokens_agent ON agent_tokens (tenant_id, agent_id);
ALTER TABLE agent_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON agent_tokens
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
GRANT SELECT, INSERT, UPDATE ON agent_tokens TO __APP_ROLE__;

-- Pre-authentication directory: which tenant a token digest belongs to, and nothing else.
-- Writes are confined to the transaction's tenant like everywhere else; reads are open by
-- a second, named policy, because a token is looked up before any tenant is known.
CREATE TABLE token_directory (
    token_hash  TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE
);
ALTER TABLE token_directory ENABLE ROW LEVEL SECURITY;
ALTER TABLE token_directory FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON token_directory
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY directory_lookup ON token_directory FOR SELECT USING (true);
GRANT SELECT, INSERT ON token_directory TO __APP_ROLE__;

-- The audit log: append-only, one hash chain per tenant (storage/auditchain.py).
-- No cascade from tenants: deleting a tenant must decide what happens to its audit trail.
CREATE TABLE audit_log (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    seq         BIGINT NOT NULL,
    id          TEXT NOT NULL UNIQUE,
    at          BIGINT NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    ip          TEXT NOT NULL,
    result      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
GRANT SELECT, INSERT ON audit_log TO __APP_ROLE__;

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- The newest entry of each chain. Appends update it first, which serialises them per
-- tenant (a row lock); verification compares it with the last entry, so a removed tail is
-- detected too.
CREATE TABLE audit_heads (
    tenant_id  TEXT PRIMARY KEY REFERENCES tenants (id),
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL
);
ALTER TABLE audit_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_heads
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
GRANT SELECT, INSERT, UPDATE ON audit_heads TO __APP_ROLE__;
