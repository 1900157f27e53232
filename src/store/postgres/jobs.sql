-- PostgreSQL: changes to jobs by the queue's modes (see `store::ops::jobs`).

-- name: reserve_jids_prepare (batch)
-- Inserts take ROW EXCLUSIVE on jobs, which this lock excludes: no jid is drawn from the
-- sequence between the two statements.
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

-- name: reserve_jids
-- $1 jids drawn at once; the last of them.
SELECT setval('jobs_jid_seq', nextval('jobs_jid_seq') + $1 - 1);

-- name: twin
-- `submit --unique`: a pending job with this command ($1) and tag ($2, or NULL).
SELECT jid FROM jobs WHERE state = 'pending' AND command = $1 AND tag IS NOT DISTINCT FROM CAST($2 AS text) ORDER BY jid LIMIT 1;

-- name: merge_twin
-- $1 priority, $2 hosts (NULL: unchanged), $3 restartable (only ever turned on), $4 jid.
UPDATE jobs SET priority = coalesce($1, priority), hosts = coalesce($2, hosts),
       restartable = greatest(restartable, $3)
 WHERE jid = $4;

-- name: insert_one
-- $1 priority, $2 state, $3 submitted, $4 submitter, $5 tag, $6 restartable, $7 command,
-- $8 hosts, $9 cwd, $10 user; the new jid.
INSERT INTO jobs (priority, state, submitted, submitter, tag, restartable, command, hosts, cwd, "user")
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING jid;

-- name: delete
DELETE FROM jobs WHERE jid = $1;

-- name: resubmit
-- $1 state, $2 submitted, $3 submitter, $4 priority, $5 tag, $6 hosts (NULL: unchanged),
-- $7 restartable (only ever turned on), $8 jid.
UPDATE jobs SET state = $1, submitted = $2, submitter = $3, started = NULL,
       finished = NULL, elapsed = NULL, runner = NULL, stdout = NULL, stderr = NULL,
       pid = NULL, exit_status = NULL, signal = NULL, attempts = 0, claim = NULL,
       feeder = NULL, process = NULL, timed_out = 0, retried = 0, not_before = NULL,
       kill_signal = NULL, reclaimed_by = NULL, reclaimed_at = NULL,
       cpu_user = NULL, cpu_system = NULL, max_rss = NULL, read_bytes = NULL,
       write_bytes = NULL, reason = NULL,
       priority = coalesce($4, priority), tag = coalesce($5, tag),
       hosts = coalesce($6, hosts), restartable = greatest(restartable, $7)
 WHERE jid = $8;

-- name: request_kill
-- $1 the signal, $2 the jids (a JSON list): the running ones.
UPDATE jobs SET kill_signal = $1 WHERE state = 'running' AND jid = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST($2 AS jsonb)) AS bigint)));

-- name: restricted_pending
-- Of the jids $1 (a JSON list), the pending ones restricted to hosts: jid, hosts.
SELECT jid, hosts FROM jobs WHERE jid = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST($1 AS jsonb)) AS bigint)))
   AND state = 'pending' AND hosts IS NOT NULL ORDER BY jid;

-- name: count_failed
-- Of the jids $1 (a JSON list), those that failed, died or were cancelled.
SELECT count(*) FROM jobs WHERE jid = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST($1 AS jsonb)) AS bigint)))
   AND (state IN ('dead', 'cancelled') OR (state = 'finished' AND exit_status IS DISTINCT FROM 0));

-- name: highest_jid_given
-- The highest jid the queue ever gave (deleted and rotated jobs' too: never reused).
SELECT greatest((SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM jobs_jid_seq),
                coalesce((SELECT max(jid) FROM jobs), 0));

-- name: jid_counter_exists (batch)
-- Nothing: the sequence is part of the schema.

-- name: continue_jids_above
-- The next jid comes after $1 (never lowered).
SELECT setval('jobs_jid_seq', greatest(CAST($1 AS bigint),
  (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM jobs_jid_seq)));
