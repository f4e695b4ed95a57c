-- Postgres replaces its per-row foreign-key check of messages -> channels with triggers
-- that check each distinct channel of a statement once (same guarantees, same lock). SQLite
-- checks a foreign key with an index probe and no row lock, and keeps its keys.
SELECT 1;
