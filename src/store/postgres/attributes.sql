-- Queue-wide settings, pause and drain marks, on PostgreSQL (see `store::ops::attributes`).

-- name: every
SELECT key, value FROM attributes;

-- name: every_sorted
SELECT key, value FROM attributes ORDER BY key;

-- name: get
SELECT value FROM attributes WHERE key = $1;

-- name: set
INSERT INTO attributes (key, value) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: set_if_absent
-- A flag (`paused`, `drain.HOST`) keeps the time it was first set.
INSERT INTO attributes (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING;

-- name: remove
DELETE FROM attributes WHERE key = $1;
