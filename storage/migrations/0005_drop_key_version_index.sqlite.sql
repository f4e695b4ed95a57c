-- As on Postgres: no query reads an index on key_version alone (the counts filter by
-- tenant, the rewrap sweep walks each channel's primary key), and each insert paid for it.
DROP INDEX messages_key_version;
