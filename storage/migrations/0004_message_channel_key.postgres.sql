-- Every stored message paid two foreign-key checks (tenants, channels), each a per-row
-- trigger running a query that locks the parent row: a third of the database's cost per
-- message in the persistence worker's inserts. One composite key to the channel, whose row
-- in turn must name an existing tenant, keeps every guarantee with one check:
-- * no message for a channel that does not exist (nor for a tenant: its channel's key);
-- * deleting a channel deletes its messages; deleting a tenant deletes its channels
--   (channels.tenant_id cascades) and so their messages;
-- and adds one: a message's tenant is its channel's tenant.
ALTER TABLE channels ADD CONSTRAINT channels_tenant_channel UNIQUE (tenant_id, id);
ALTER TABLE messages ADD CONSTRAINT messages_channel FOREIGN KEY (tenant_id, channel_id)
    REFERENCES channels (tenant_id, id) ON DELETE CASCADE;
ALTER TABLE messages DROP CONSTRAINT messages_tenant_id_fkey;
ALTER TABLE messages DROP CONSTRAINT messages_channel_id_fkey;
