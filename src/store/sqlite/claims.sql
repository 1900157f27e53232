-- The claim protocol on SQLite (see `store::ops::claims` for what each one is for).
-- Every write about a claimed job checks its claim token, so a feeder never overwrites a
-- job that was taken over by someone else.

-- name: tag_limits
SELECT substr(key, 7), CAST(value AS INTEGER) FROM attributes
 WHERE key > 'limit.' AND key < 'limit/';

-- name: tag_limits_turn
-- Nothing: SQLite's write transactions exclude each other.

-- name: tag_running
SELECT count(*) FROM jobs INDEXED BY jobs_tag WHERE tag = ?1 AND state = 'running';

-- name: candidates
-- ?1 host, ?2 now, ?3 how many, ?4 max attempts, ?5 tags at their limit (a JSON list),
-- ?6 CPUs, ?7 bytes of memory, ?8 GPUs the jobs may need at most. Pending jobs whose
-- retry delay or start time has passed, and dead restartable jobs with attempts left;
-- none while the queue is paused or the host drained. Each branch walks the claim-order
-- index, so picking stays O(log n) however many jobs the queue holds.
SELECT jid, tag, cpus, mem, gpus, submitted FROM jobs WHERE jid IN (
  SELECT jid FROM (
    SELECT jid, priority, submitted FROM (SELECT jid, priority, submitted FROM jobs
      WHERE state = 'pending' AND (hosts IS NULL OR rq_host_ok(hosts, ?1))
        AND (not_before IS NULL OR not_before <= ?2)
        AND (tag IS NULL OR tag NOT IN (SELECT value FROM json_each(?5)))
        AND cpus <= ?6 AND mem <= ?7 AND gpus <= ?8
      ORDER BY priority DESC, submitted, jid LIMIT ?3)
    UNION ALL
    SELECT jid, priority, submitted FROM (SELECT jid, priority, submitted FROM jobs
      WHERE state = 'dead' AND restartable = 1 AND attempts < ?4 AND (hosts IS NULL OR rq_host_ok(hosts, ?1))
        AND (tag IS NULL OR tag NOT IN (SELECT value FROM json_each(?5)))
        AND cpus <= ?6 AND mem <= ?7 AND gpus <= ?8
      ORDER BY priority DESC, submitted, jid LIMIT ?3))
  WHERE NOT EXISTS (SELECT 1 FROM attributes WHERE key IN ('paused', 'drain.' || ?1))
  ORDER BY priority DESC, submitted, jid LIMIT ?3)
ORDER BY priority DESC, submitted, jid;

-- name: claimable
-- The parameters of `candidates`.
SELECT EXISTS (
  SELECT 1 FROM (
    SELECT jid FROM (SELECT jid FROM jobs
      WHERE state = 'pending' AND (hosts IS NULL OR rq_host_ok(hosts, ?1))
        AND (not_before IS NULL OR not_before <= ?2)
        AND (tag IS NULL OR tag NOT IN (SELECT value FROM json_each(?5)))
        AND cpus <= ?6 AND mem <= ?7 AND gpus <= ?8
      ORDER BY priority DESC, submitted, jid LIMIT ?3)
    UNION ALL
    SELECT jid FROM (SELECT jid FROM jobs
      WHERE state = 'dead' AND restartable = 1 AND attempts < ?4 AND (hosts IS NULL OR rq_host_ok(hosts, ?1))
        AND (tag IS NULL OR tag NOT IN (SELECT value FROM json_each(?5)))
        AND cpus <= ?6 AND mem <= ?7 AND gpus <= ?8
      ORDER BY priority DESC, submitted, jid LIMIT ?3))
  WHERE NOT EXISTS (SELECT 1 FROM attributes WHERE key IN ('paused', 'drain.' || ?1)));

-- name: claim
-- ?1 host, ?2 now, ?3 token, ?4 feeder, ?5 the jids (a JSON list), ?6 their devices
-- (a JSON object: "j<jid>" -> "0,1"). `+state`: found by jid (the rowid); an index on
-- state would walk every pending job.
UPDATE jobs SET state = 'running', runner = ?1, started = ?2, claim = ?3 || '-' || jid,
       feeder = ?4, attempts = attempts + 1, stdout = 'stdout/' || jid,
       stderr = 'stderr/' || jid, data = coalesce(data, 'data/' || jid), pid = NULL,
       process = NULL, finished = NULL, elapsed = NULL, exit_status = NULL, signal = NULL,
       timed_out = 0, kill_signal = NULL, not_before = NULL,
       cpu_user = NULL, cpu_system = NULL, max_rss = NULL, read_bytes = NULL,
       write_bytes = NULL, reason = NULL,
       gpu_ids = json_extract(?6, '$.j' || jid)
 WHERE jid IN (SELECT value FROM json_each(?5)) AND +state IN ('pending', 'dead')
RETURNING {job_fields};

-- name: held_back
SELECT key, value FROM attributes WHERE key IN ('paused', 'drain.' || ?1) ORDER BY key DESC;

-- name: finish
-- ?1 ended at, ?2 elapsed, ?3 exit status, ?4 signal, ?5 timed out, ?6 jid, ?7 claim,
-- ?8 user CPU, ?9 system CPU (seconds), ?10 peak memory (bytes), ?11 why the
-- feeder ended it (NULL: it ended by itself), ?12 and ?13 bytes read and written,
-- ?14 pid and ?15 process identity when the start was not recorded (NULL: keep them).
UPDATE jobs SET state = 'finished', finished = ?1, elapsed = ?2, exit_status = ?3,
       signal = ?4, timed_out = ?5, claim = NULL, kill_signal = NULL,
       cpu_user = ?8, cpu_system = ?9, max_rss = ?10, reason = ?11,
       read_bytes = ?12, write_bytes = ?13,
       pid = coalesce(?14, pid), process = coalesce(?15, process)
 WHERE jid = ?6 AND claim = ?7;

-- name: finish_retry
-- As `finish`, and ?16 not before.
UPDATE jobs SET state = 'pending', finished = ?1, elapsed = ?2, exit_status = ?3,
       signal = ?4, timed_out = ?5, claim = NULL, kill_signal = NULL,
       cpu_user = ?8, cpu_system = ?9, max_rss = ?10, reason = ?11,
       read_bytes = ?12, write_bytes = ?13,
       pid = coalesce(?14, pid), process = coalesce(?15, process),
       retried = retried + 1, not_before = ?16
 WHERE jid = ?6 AND claim = ?7;

-- name: finish_many
-- Not used on SQLite (see `Capabilities::ends_in_one_statement`).

-- name: record_starts
-- Not used on SQLite likewise.

-- name: record_start
UPDATE jobs SET pid = ?1, process = ?2 WHERE jid = ?3 AND claim = ?4;

-- name: failed_to_start
UPDATE jobs SET state = 'finished', finished = ?1, elapsed = 0, exit_status = 127,
       claim = NULL
 WHERE jid = ?2 AND claim = ?3;

-- name: requeue_crashed
-- ?1 signal, ?2 jid, ?3 claim (NULL: a job claimed without a token), ?4 max attempts.
UPDATE jobs SET state = 'pending', runner = NULL, started = NULL, pid = NULL,
       process = NULL, claim = NULL, signal = ?1
 WHERE jid = ?2 AND claim IS ?3 AND state = 'running' AND restartable = 1
   AND attempts < ?4;

-- name: mark_dead
-- ?1 now, ?2 signal, ?3 jid, ?4 claim (or NULL).
UPDATE jobs SET state = 'dead', finished = ?1, claim = NULL, signal = ?2
 WHERE jid = ?3 AND claim IS ?4 AND state = 'running';

-- name: release
-- ?1 reclaimed by, ?2 reclaimed at (both NULL: released by its own host), ?3 jid, ?4 claim.
UPDATE jobs SET state = 'pending', runner = NULL, started = NULL, pid = NULL,
       process = NULL, claim = NULL, feeder = NULL, attempts = max(attempts - 1, 0),
       kill_signal = NULL, reclaimed_by = coalesce(?1, reclaimed_by),
       reclaimed_at = coalesce(?2, reclaimed_at)
 WHERE jid = ?3 AND claim = ?4 AND state = 'running' AND pid IS NULL;

-- name: running_on
SELECT jid, claim, feeder, pid IS NOT NULL FROM jobs
 WHERE state = 'running' AND runner = ?1 ORDER BY jid;

-- name: note_reclaimed
UPDATE jobs SET reclaimed_by = ?1, reclaimed_at = ?2 WHERE jid = ?3;

-- name: requeue_host
-- ?1 reclaimer, ?2 now, ?3 the dead host, ?4 max attempts.
UPDATE jobs SET state = 'pending', runner = NULL, started = NULL, pid = NULL,
       process = NULL, claim = NULL, reclaimed_by = ?1, reclaimed_at = ?2
 WHERE state = 'running' AND runner = ?3 AND restartable = 1 AND attempts < ?4;

-- name: bury_host
-- ?1 reclaimer, ?2 now, ?3 the dead host.
UPDATE jobs SET state = 'dead', finished = ?2, claim = NULL, reclaimed_by = ?1,
       reclaimed_at = ?2
 WHERE state = 'running' AND runner = ?3;

-- name: held_by
SELECT jid FROM jobs WHERE runner = ?1 AND state = 'running' AND feeder = ?2;

-- name: current_claims
SELECT jid, claim, kill_signal FROM jobs WHERE jid IN (SELECT value FROM json_each(?1));

-- name: busy_hosts
SELECT DISTINCT runner FROM jobs WHERE state = 'running' AND runner IS NOT NULL;

-- name: held_by_feeder
SELECT {job_fields} FROM jobs WHERE state = 'running' AND feeder = ?1 ORDER BY jid;

-- name: orphans
SELECT {job_fields} FROM jobs
 WHERE state = 'running' AND runner = ?1 AND (feeder IS NULL OR feeder <> ?2)
 ORDER BY jid;

-- name: job_files
SELECT jid, stdin, stdout, stderr, data FROM jobs WHERE jid IN (SELECT value FROM json_each(?1));

-- name: running_feeders
SELECT DISTINCT feeder FROM jobs WHERE state = 'running' AND feeder IS NOT NULL;
