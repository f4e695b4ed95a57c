-- Postgres gets a routine that stores a small batch of messages in one round trip. SQLite
-- runs in the server's own process: a transaction costs no round trip to save.
SELECT 1;
