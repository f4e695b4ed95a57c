-- The composite foreign key messages (tenant_id, channel_id) -> channels (tenant_id, id) ran
-- one query per inserted row (Postgres's RI trigger: a planned SELECT ... FOR KEY SHARE on
-- channels): ~7 µs of backend CPU per message, the largest single cost of the persistence
-- worker's inserts (docs/BENCHMARKS.md), although a batch names only a few channels. The
-- same rules are kept with triggers that do that query once per distinct channel of a
-- statement, with the same lock, the same error code and the same cascade:
-- * no message for a channel that does not exist (nor for a tenant: channels.tenant_id is a
--   foreign key), and a message's tenant is its channel's: every inserted (tenant_id,
--   channel_id) must name a channel row, which is locked FOR KEY SHARE until commit, as the
--   RI check locks it. A concurrent DELETE of that channel therefore waits for the insert
--   to commit and then deletes its messages too; an insert that comes after an
--   uncommitted DELETE waits for it and fails if it commits (tests/storage/
--   test_message_channel_check.py runs these interleavings against the database).
-- * deleting a channel deletes its messages (and so does deleting its tenant, through
--   channels.tenant_id's cascade), in the same statement as the RI cascade did;
-- * a channel's key (tenant_id, id) cannot change while it has messages (NO ACTION).
-- The functions run with the rights of whoever writes: row-level security applies to the
-- checks' queries exactly as to the statement that fired them, and a message row that
-- reaches a check has passed the messages policy with its own tenant, which is the tenant
-- of the channel it must find.

CREATE FUNCTION messages_channel_exists() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pair RECORD;
BEGIN
    FOR pair IN SELECT DISTINCT tenant_id, channel_id FROM new_messages LOOP
        PERFORM 1 FROM channels c
            WHERE c.tenant_id = pair.tenant_id AND c.id = pair.channel_id
            FOR KEY SHARE OF c;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'insert or update on table "messages" violates foreign key constraint "messages_channel"'
                USING ERRCODE = 'foreign_key_violation', TABLE = 'messages',
                      CONSTRAINT = 'messages_channel',
                      DETAIL = format('Key (tenant_id, channel_id)=(%s, %s) is not present in table "channels".',
                                      pair.tenant_id, pair.channel_id);
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_channel_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION messages_channel_exists();

-- Updates that move a message to another channel or tenant are checked row by row (none of
-- the application's updates do: erasure and rewrap change other columns, and skip this).
CREATE FUNCTION messages_channel_exists_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM channels c
        WHERE c.tenant_id = NEW.tenant_id AND c.id = NEW.channel_id
        FOR KEY SHARE OF c;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'insert or update on table "messages" violates foreign key constraint "messages_channel"'
            USING ERRCODE = 'foreign_key_violation', TABLE = 'messages',
                  CONSTRAINT = 'messages_channel',
                  DETAIL = format('Key (tenant_id, channel_id)=(%s, %s) is not present in table "channels".',
                                  NEW.tenant_id, NEW.channel_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_channel_update AFTER UPDATE OF tenant_id, channel_id ON messages
    FOR EACH ROW
    WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id OR OLD.channel_id IS DISTINCT FROM NEW.channel_id)
    EXECUTE FUNCTION messages_channel_exists_row();

-- A channel's messages carry its tenant_id (the check above), so with the transaction's
-- tenant set to the channel's, its messages are exactly the rows the DELETE sees. The
-- tenant is set here because the deleting statement's own may differ: deleting a tenant
-- row cascades to its channels as the table owner whatever tenant is set (Postgres runs
-- referential actions without row-level security), and this trigger then fires in the
-- deleting role's context. It is put back before returning.
CREATE FUNCTION channels_delete_messages() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    previous TEXT := coalesce(current_setting('app.tenant_id', true), '');
    tenant TEXT;
BEGIN
    FOR tenant IN SELECT DISTINCT tenant_id FROM old_channels LOOP
        PERFORM set_config('app.tenant_id', tenant, true);
        DELETE FROM messages m USING old_channels o
            WHERE o.tenant_id = tenant AND m.tenant_id = tenant AND m.channel_id = o.id;
    END LOOP;
    PERFORM set_config('app.tenant_id', previous, true);
    RETURN NULL;
END;
$$;

CREATE TRIGGER channels_delete_messages AFTER DELETE ON channels
    REFERENCING OLD TABLE AS old_channels
    FOR EACH STATEMENT EXECUTE FUNCTION channels_delete_messages();

CREATE FUNCTION channels_key_unreferenced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM messages m WHERE m.tenant_id = OLD.tenant_id AND m.channel_id = OLD.id) THEN
        RAISE EXCEPTION 'update on table "channels" violates foreign key constraint "messages_channel" on table "messages"'
            USING ERRCODE = 'foreign_key_violation', TABLE = 'channels',
                  CONSTRAINT = 'messages_channel',
                  DETAIL = format('Key (tenant_id, id)=(%s, %s) is still referenced from table "messages".',
                                  OLD.tenant_id, OLD.id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER channels_key_unreferenced AFTER UPDATE OF tenant_id, id ON channels
    FOR EACH ROW
    WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id OR OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION channels_key_unreferenced();

-- Dropped last: ALTER TABLE ... DROP CONSTRAINT takes an ACCESS EXCLUSIVE lock on messages
-- and channels for the migration's transaction, in which the triggers above already
-- exist, so no insert ever runs unchecked. Nothing is rewritten or scanned.
ALTER TABLE messages DROP CONSTRAINT messages_channel;
