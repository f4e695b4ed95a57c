-- Every stored message paid an entry in messages_key_version (~1.7 µs of backend CPU per
-- row in the persistence worker's inserts, docs/BENCHMARKS.md) for no query: the
-- key-version counts filter by tenant first, and the rewrap sweep walks each channel's
-- primary key (storage/rewrap.py), neither reads an index on key_version alone.
DROP INDEX messages_key_version;
