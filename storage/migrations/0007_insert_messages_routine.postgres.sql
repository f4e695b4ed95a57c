-- A small batch of the persistence worker (a quiet or steady log: one tenant, a few hundred
-- messages at most) took three round trips: BEGIN with RESET ALL and the tenant, the
-- INSERT, COMMIT. On a busy host each is a wait for two processes to be scheduled, and the
-- acks of the whole batch wait for all three (docs/BENCHMARKS.md, the eighth session).
-- This routine does the same work in one call, which the engine sends on its own: Postgres
-- runs it in an implicit transaction, committed when the call returns. Nothing about the
-- checks changes:
-- * it runs with the caller's rights (SECURITY INVOKER, the default): row-level security
--   checks every row against the tenant set here, exactly as in the transaction it
--   replaces, and the statement triggers of 0006 fire as before;
-- * RESET ALL first, as every engine transaction opens: no session setting left on a
--   pooled connection reaches the insert; the tenant is then set for this transaction only;
-- * the insert is the engine's own (storage/postgres.py, _insert_sql): tenant_id and
--   key_version once, one array per column of storage/messages.py ROW_COLUMNS, in that
--   order. A row whose id is stored already is skipped (a batch replayed after a crash)
--   as the engine skips it: a plain INSERT first, and only if that meets a unique
--   violation (rare: a crash between commit and the log's ``done``) the same rows again
--   with ON CONFLICT DO NOTHING, which probes the arbiter index once more per row (~4 µs
--   of backend CPU per message). The exception block is a subtransaction, as the
--   engine's savepoint is, without the savepoint's two round trips.
CREATE FUNCTION insert_messages(
    p_tenant_id TEXT,
    p_key_version INTEGER,
    p_channel_ids TEXT[],
    p_seqs BIGINT[],
    p_ids TEXT[],
    p_sender_ids TEXT[],
    p_client_msg_ids TEXT[],
    p_envelopes BYTEA[],
    p_sent_ats BIGINT[]
) RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    RESET ALL;
    PERFORM pg_catalog.set_config('app.tenant_id', p_tenant_id, true);
    BEGIN
        INSERT INTO public.messages (tenant_id, key_version, channel_id, seq, id, sender_id,
                                     client_msg_id, envelope, sent_at)
        SELECT p_tenant_id, p_key_version, unnest(p_channel_ids), unnest(p_seqs),
               unnest(p_ids), unnest(p_sender_ids), unnest(p_client_msg_ids),
               unnest(p_envelopes), unnest(p_sent_ats);
    EXCEPTION WHEN unique_violation THEN
        INSERT INTO public.messages (tenant_id, key_version, channel_id, seq, id, sender_id,
                                     client_msg_id, envelope, sent_at)
        SELECT p_tenant_id, p_key_version, unnest(p_channel_ids), unnest(p_seqs),
               unnest(p_ids), unnest(p_sender_ids), unnest(p_client_msg_ids),
               unnest(p_envelopes), unnest(p_sent_ats)
        ON CONFLICT (id) DO NOTHING;
    END;
END;
$$;

REVOKE ALL ON FUNCTION insert_messages(TEXT, INTEGER, TEXT[], BIGINT[], TEXT[], TEXT[], TEXT[], BYTEA[], BIGINT[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION insert_messages(TEXT, INTEGER, TEXT[], BIGINT[], TEXT[], TEXT[], TEXT[], BYTEA[], BIGINT[]) TO __APP_ROLE__;
