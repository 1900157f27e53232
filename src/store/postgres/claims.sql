-- The claim protocol on PostgreSQL (see `store::ops::claims` for what each one is for).
-- Feeders claim side by side here (their writes take the queue's advisory lock shared):
-- each locks the rows it reads for a claim and skips rows another feeder holds, and
-- every write about a claimed job checks its claim token.

-- name: tag_limits
SELECT substr(key, 7), CAST(value AS bigint) FROM attributes
 WHERE key > 'limit.' AND key < 'limit/';

-- name: tag_limits_turn
-- Claims on a queue with tag limits take turns, so that each counts the jobs the others
-- claimed (committed before its count). The key is this queue's schema: other queues in
-- the database claim on.
SELECT 1 FROM pg_advisory_xact_lock(hashtextextended(current_schema() || ':tag-limits', 0));

-- name: tag_running
SELECT count(*) FROM jobs WHERE tag = $1 AND state = 'running';

-- name: candidates
-- $1 host, $2 now, $3 how many, $4 max attempts, $5 tags at their limit (a JSON list),
-- $6 CPUs, $7 bytes of memory, $8 GPUs the jobs may need at most. The rows are locked,
-- those another feeder is claiming skipped: feeders take different jobs instead of all
-- reading the same best ones and all but one coming away empty.
SELECT jid, tag, cpus, mem, gpus, submitted FROM jobs WHERE jid IN (
  SELECT jid FROM (
    SELECT jid, priority, submitted FROM (SELECT jid, priority, submitted FROM jobs
      WHERE state = 'pending' AND (hosts IS NULL OR rq_host_ok(hosts, $1))
        AND (not_before IS NULL OR not_before <= $2)
        AND (tag IS NULL OR tag NOT IN (SELECT jsonb_array_elements_text(CAST($5 AS jsonb))))
        AND cpus <= $6 AND mem <= $7 AND gpus <= $8
      ORDER BY priority DESC, submitted, jid LIMIT $3 FOR UPDATE SKIP LOCKED) AS pending
    UNION ALL
    SELECT jid, priority, submitted FROM (SELECT jid, priority, submitted FROM jobs
      WHERE state = 'dead' AND restartable = 1 AND attempts < $4 AND (hosts IS NULL OR rq_host_ok(hosts, $1))
        AND (tag IS NULL OR tag NOT IN (SELECT jsonb_array_elements_text(CAST($5 AS jsonb))))
        AND cpus <= $6 AND mem <= $7 AND gpus <= $8
      ORDER BY priority DESC, submitted, jid LIMIT $3 FOR UPDATE SKIP LOCKED) AS restartable
  ) AS found
  WHERE NOT EXISTS (SELECT 1 FROM attributes WHERE key IN ('paused', 'drain.' || $1))
  ORDER BY priority DESC, submitted, jid LIMIT $3)
ORDER BY priority DESC, submitted, jid;

-- name: claimable
-- The parameters of `candidates`; a look that locks nothing.
SELECT EXISTS (
  SELECT 1 FROM (
    SELECT jid FROM (SELECT jid FROM jobs
      WHERE state = 'pending' AND (hosts IS NULL OR rq_host_ok(hosts, $1))
        AND (not_before IS NULL OR not_before <= $2)
        AND (tag IS NULL OR tag NOT IN (SELECT jsonb_array_elements_text(CAST($5 AS jsonb))))
        AND cpus <= $6 AND mem <= $7 AND gpus <= $8
      ORDER BY priority DESC, submitted, jid LIMIT $3) AS pending
    UNION ALL
    SELECT jid FROM (SELECT jid FROM jobs
      WHERE state = 'dead' AND restartable = 1 AND attempts < $4 AND (hosts IS NULL OR rq_host_ok(hosts, $1))
        AND (tag IS NULL OR tag NOT IN (SELECT jsonb_array_elements_text(CAST($5 AS jsonb))))
        AND cpus <= $6 AND mem <= $7 AND gpus <= $8
      ORDER BY priority DESC, submitted, jid LIMIT $3) AS restartable
  ) AS found
  WHERE NOT EXISTS (SELECT 1 FROM attributes WHERE key IN ('paused', 'drain.' || $1)));

-- name: claim
-- $1 host, $2 now, $3 token, $4 feeder, $5 the jids (a JSON list), $6 their devices
-- (a JSON object: "j<jid>" -> "0,1"). Rows another feeder is claiming right now are
-- skipped rather than waited for (its claim is re-checked by the state test once it
-- commits).
UPDATE jobs SET state = 'running', runner = $1, started = $2,
       claim = CAST($3 AS text) || '-' || jid, feeder = $4, attempts = attempts + 1,
       stdout = 'stdout/' || jid, stderr = 'stderr/' || jid,
       data = coalesce(data, 'data/' || jid), pid = NULL, process = NULL, finished = NULL,
       elapsed = NULL, exit_status = NULL, signal = NULL, timed_out = 0,
       kill_signal = NULL, not_before = NULL,
       cpu_user = NULL, cpu_system = NULL, max_rss = NULL, read_bytes = NULL,
       write_bytes = NULL, reason = NULL,
       gpu_ids = CAST($6 AS jsonb) ->> ('j' || jid)
 WHERE jid IN (SELECT jid FROM jobs
                WHERE jid = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST($5 AS jsonb)) AS bigint)))
                  AND state IN ('pending', 'dead')
                FOR UPDATE SKIP LOCKED)
RETURNING {job_fields};

-- name: held_back
SELECT key, value FROM attributes WHERE key IN ('paused', 'drain.' || $1) ORDER BY key DESC;

-- name: finish
-- $1 ended at, $2 elapsed, $3 exit status, $4 signal, $5 timed out, $6 jid, $7 claim,
-- $8 user CPU, $9 system CPU (seconds), $10 peak memory (bytes), $11 why the
-- feeder ended it (NULL: it ended by itself), $12 and $13 bytes read and written,
-- $14 pid and $15 process identity when the start was not recorded (NULL: keep them).
UPDATE jobs SET state = 'finished', finished = $1, elapsed = $2, exit_status = $3,
       signal = $4, timed_out = $5, claim = NULL, kill_signal = NULL,
       cpu_user = $8, cpu_system = $9, max_rss = $10, reason = $11,
       read_bytes = $12, write_bytes = $13,
       pid = coalesce($14, pid), process = coalesce($15, process)
 WHERE jid = $6 AND claim = $7;

-- name: finish_retry
-- As `finish`, and $16 not before.
UPDATE jobs SET state = 'pending', finished = $1, elapsed = $2, exit_status = $3,
       signal = $4, timed_out = $5, claim = NULL, kill_signal = NULL,
       cpu_user = $8, cpu_system = $9, max_rss = $10, reason = $11,
       read_bytes = $12, write_bytes = $13,
       pid = coalesce($14, pid), process = coalesce($15, process),
       retried = retried + 1, not_before = $16
 WHERE jid = $6 AND claim = $7;

-- name: finish_many
-- (Each of these batches also names its jobs `= ANY` an array of their jids: the
-- planner then looks them up by index, where it takes the JSON list for a hundred rows
-- and would scan and hash the whole table.)
-- $1 a JSON list of ends, each {jid, claim, ended_at, elapsed, exit_status, signal,
-- timed_out, retry_at, cpu_user, cpu_system, max_rss, reason, read_bytes, write_bytes,
-- pid, process}:
-- each recorded as `finish` does (as `finish_retry` where retry_at is set), under its
-- claim, in one statement; returns the jids recorded.
UPDATE jobs AS j
   SET state = CASE WHEN e.retry_at IS NULL THEN 'finished' ELSE 'pending' END,
       finished = e.ended_at, elapsed = e.elapsed, exit_status = e.exit_status,
       signal = e.signal, timed_out = e.timed_out, claim = NULL, kill_signal = NULL,
       cpu_user = e.cpu_user, cpu_system = e.cpu_system, max_rss = e.max_rss,
       reason = e.reason, read_bytes = e.read_bytes, write_bytes = e.write_bytes,
       retried = j.retried + CASE WHEN e.retry_at IS NULL THEN 0 ELSE 1 END,
       not_before = CASE WHEN e.retry_at IS NULL THEN j.not_before ELSE e.retry_at END,
       pid = coalesce(e.pid, j.pid), process = coalesce(e.process, j.process)
  FROM jsonb_to_recordset(CAST($1 AS jsonb)) AS e(jid bigint, claim text, ended_at text,
       elapsed double precision, exit_status bigint, signal text, timed_out bigint,
       retry_at text, cpu_user double precision, cpu_system double precision,
       max_rss bigint, reason text, read_bytes bigint, write_bytes bigint, pid bigint,
       process text)
 WHERE j.jid = e.jid AND j.claim = e.claim
   AND j.jid = ANY (ARRAY(SELECT CAST(x ->> 'jid' AS bigint) FROM jsonb_array_elements(CAST($1 AS jsonb)) AS x))
RETURNING j.jid;

-- name: record_starts
-- $1 a JSON list of {jid, claim, pid, process}: each recorded as `record_start` does,
-- in one statement; returns the jids recorded.
UPDATE jobs AS j SET pid = s.pid, process = s.process
  FROM jsonb_to_recordset(CAST($1 AS jsonb))
       AS s(jid bigint, claim text, pid bigint, process text)
 WHERE j.jid = s.jid AND j.claim = s.claim
   AND j.jid = ANY (ARRAY(SELECT CAST(x ->> 'jid' AS bigint) FROM jsonb_array_elements(CAST($1 AS jsonb)) AS x))
RETURNING j.jid;

-- name: record_start
UPDATE jobs SET pid = $1, process = $2 WHERE jid = $3 AND claim = $4;

-- name: failed_to_start
UPDATE jobs SET state = 'finished', finished = $1, elapsed = 0, exit_status = 127,
       claim = NULL
 WHERE jid = $2 AND claim = $3;

-- name: requeue_crashed
-- $1 signal, $2 jid, $3 claim (NULL: a job claimed without a token), $4 max attempts.
UPDATE jobs SET state = 'pending', runner = NULL, started = NULL, pid = NULL,
       process = NULL, claim = NULL, signal = $1
 WHERE jid = $2 AND claim IS NOT DISTINCT FROM CAST($3 AS text) AND state = 'running'
   AND restartable = 1 AND attempts < $4;

-- name: mark_dead
-- $1 now, $2 signal, $3 jid, $4 claim (or NULL).
UPDATE jobs SET state = 'dead', finished = $1, claim = NULL, signal = $2
 WHERE jid = $3 AND claim IS NOT DISTINCT FROM CAST($4 AS text) AND state = 'running';

-- name: release
-- $1 reclaimed by, $2 reclaimed at (both NULL: released by its own host), $3 jid, $4 claim.
UPDATE jobs SET state = 'pending', runner = NULL, started = NULL, pid = NULL,
       process = NULL, claim = NULL, feeder = NULL, attempts = greatest(attempts - 1, 0),
       kill_signal = NULL, reclaimed_by = coalesce($1, reclaimed_by),
       reclaimed_at = coalesce($2, reclaimed_at)
 WHERE jid = $3 AND claim = $4 AND state = 'running' AND pid IS NULL;

-- name: running_on
SELECT jid, claim, feeder, pid IS NOT NULL FROM jobs
 WHERE state = 'running' AND runner = $1 ORDER BY jid;

-- name: note_reclaimed
UPDATE jobs SET reclaimed_by = $1, reclaimed_at = $2 WHERE jid = $3;

-- name: requeue_host
-- $1 reclaimer, $2 now, $3 the dead host, $4 max attempts.
UPDATE jobs SET state = 'pending', runner = NULL, started = NULL, pid = NULL,
       process = NULL, claim = NULL, reclaimed_by = $1, reclaimed_at = $2
 WHERE state = 'running' AND runner = $3 AND restartable = 1 AND attempts < $4;

-- name: bury_host
-- $1 reclaimer, $2 now, $3 the dead host.
UPDATE jobs SET state = 'dead', finished = $2, claim = NULL, reclaimed_by = $1,
       reclaimed_at = $2
 WHERE state = 'running' AND runner = $3;

-- name: held_by
SELECT jid FROM jobs WHERE runner = $1 AND state = 'running' AND feeder = $2;

-- name: current_claims
SELECT jid, claim, kill_signal FROM jobs
 WHERE jid = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST($1 AS jsonb)) AS bigint)));

-- name: busy_hosts
SELECT DISTINCT runner FROM jobs WHERE state = 'running' AND runner IS NOT NULL;

-- name: held_by_feeder
SELECT {job_fields} FROM jobs WHERE state = 'running' AND feeder = $1 ORDER BY jid;

-- name: orphans
SELECT {job_fields} FROM jobs
 WHERE state = 'running' AND runner = $1 AND (feeder IS NULL OR feeder <> $2)
 ORDER BY jid;

-- name: job_files
SELECT jid, stdin, stdout, stderr, data FROM jobs WHERE jid = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST($1 AS jsonb)) AS bigint)));

-- name: running_feeders
SELECT DISTINCT feeder FROM jobs WHERE state = 'running' AND feeder IS NOT NULL;
