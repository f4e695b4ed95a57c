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

-- Pre-authentication directory: which tenant a token digest belongs to. No user content;
-- in Postgres the only tenant-free table an unauthenticated lookup may read.
CREATE TABLE token_directory (
    token_hash  TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE
);

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

-- The newest entry of each chain. Appends update it first, which serialises them per
-- tenant (a row lock in Postgres); verification compares it with the last entry, so a
-- removed tail is detected too.
CREATE TABLE audit_heads (
    tenant_id  TEXT PRIMARY KEY REFERENCES tenants (id),
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL
);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
