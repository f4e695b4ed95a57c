-- Postgres replaces the two foreign keys of messages (tenants, channels) with one composite
-- key to the channel, to halve the per-row trigger work of its bulk inserts. SQLite checks a
-- foreign key with an index probe and no row lock, and changing one means rebuilding the
-- table: its two keys stay, and they give the same guarantees (no message for a missing
-- channel or tenant; deleting either deletes the messages).
SELECT 1;
