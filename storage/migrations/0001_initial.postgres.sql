-- The schema of 0001_initial.sqlite.sql, plus what only Postgres can enforce: row-level
-- security on every table that has a tenant_id, and grants to the application role.
-- Runs as the owner role. __APP_ROLE__ is replaced by the migration runner with the quoted
-- name of the application role (the user of BAYCHAT_DATABASE_URL).

-- Tenants are the directory every other table hangs off; they hold no user content, and a
-- login must find its tenant by slug before it has a tenant: no row-level security here.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    plan        TEXT NOT NULL CHECK (plan IN ('free', 'paid')),
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    tenant_id      TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id             TEXT PRIMARY KEY,
    email          TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL,
    UNIQUE (tenant_id, email)
);

CREATE TABLE channels (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    private     BOOLEAN NOT NULL DEFAULT FALSE,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE channel_members (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    channel_id  TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    added_at    BIGINT NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_members_user ON channel_members (tenant_id, user_id);

-- Bodies are stored only as AES-256-GCM envelopes (storage/crypto.py).
CREATE TABLE messages (
    tenant_id      TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    channel_id     TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    seq            BIGINT NOT NULL,
    id             TEXT NOT NULL UNIQUE,
    sender_id      TEXT NOT NULL,
    client_msg_id  TEXT,
    key_version    INTEGER NOT NULL,
    envelope       BYTEA NOT NULL,
    sent_at        BIGINT NOT NULL,
    PRIMARY KEY (channel_id, seq)
);
CREATE INDEX messages_sender ON messages (tenant_id, sender_id);
CREATE INDEX messages_key_version ON messages (key_version);

-- A session is one refresh-token family: every rotation issues a new token in it.
CREATE TABLE sessions (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    user_agent    TEXT NOT NULL DEFAULT '',
    ip            TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_id);

-- Only SHA-256 digests of refresh tokens are stored.
CREATE TABLE refresh_tokens (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    token_hash  TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Row-level security: a transaction sees and writes only the rows of the tenant it set with
-- set_config('app.tenant_id', ..., true); with none set, the setting is NULL or '' and
-- matches nothing. FORCE makes the policies bind the owner role too.
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE channels ENABLE ROW LEVEL SECURITY;
ALTER TABLE channels FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON channels
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE channel_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE channel_members FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON channel_members
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE messages FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON messages
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sessions
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE refresh_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON refresh_tokens
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

-- The application role gets exactly what the code does today; a later migration that
-- adds a statement (a DELETE for erasure, say) grants it there.
GRANT USAGE ON SCHEMA public TO __APP_ROLE__;
GRANT SELECT ON schema_version TO __APP_ROLE__;
GRANT SELECT, INSERT ON tenants TO __APP_ROLE__;
GRANT SELECT, INSERT, UPDATE ON users TO __APP_ROLE__;
GRANT SELECT, INSERT ON channels TO __APP_ROLE__;
GRANT SELECT, INSERT ON channel_members TO __APP_ROLE__;
GRANT SELECT, INSERT ON messages TO __APP_ROLE__;
GRANT SELECT, INSERT, UPDATE ON sessions TO __APP_ROLE__;
GRANT SELECT, INSERT, UPDATE ON refresh_tokens TO __APP_ROLE__;
