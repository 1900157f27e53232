-- Queue-wide settings, pause and drain marks, on PostgreSQL (see `store::ops::attributes`).

-- name: all
SELECT key, value FROM attributes;
