-- Dependencies between jobs on PostgreSQL (see `store::ops::deps` and `crate::deps`).
-- Each level of a batch's recursive query is a LATERAL subquery behind OFFSET 0 that looks
-- every row up by key (planned as one join, without fresh statistics, it scanned `deps` or
-- the jobs of a state once per level: quadratic); PostgreSQL allows no LIMIT inside the
-- recursion but computes only what the outer LIMIT fetches. OFFSET 0 also keeps the
-- "has dependents" tests from being turned into joins.
-- "f failed, as its `after` dependents see it":
--   f.state = 'cancelled' OR (f.state = 'finished' AND f.exit_status IS DISTINCT FROM 0)
--   OR (f.state = 'dead' AND (f.restartable = 0 OR f.attempts >= <max_attempts>))

-- name: connection_setup (batch)
-- Nothing: the schema's triggers note ends and re-starts, into temporary tables each
-- session makes when it connects (`pg_sql::SESSION_SQL`).

-- name: noted
SELECT EXISTS (SELECT 1 FROM dep_failures) OR EXISTS (SELECT 1 FROM dep_rearms),
       EXISTS (SELECT 1 FROM dep_work), EXISTS (SELECT 1 FROM dep_released);

-- name: released
SELECT EXISTS (SELECT 1 FROM dep_released);

-- name: clear_released (batch)
DELETE FROM dep_released;

-- name: work_left
SELECT EXISTS (SELECT 1 FROM dep_work);

-- name: renote_cancels
-- A job noted again (it failed anew, say) takes its newest reason.
DELETE FROM dep_work WHERE kind = 'cancel' AND jid IN (SELECT jid FROM dep_failures);

-- name: note_cancels
INSERT INTO dep_work (jid, kind, reason) SELECT jid, 'cancel', reason FROM dep_failures
 WHERE true ON CONFLICT (jid, kind) DO NOTHING;

-- name: note_rearms
INSERT INTO dep_work (jid, kind) SELECT jid, 'rearm' FROM dep_rearms
 WHERE true ON CONFLICT (jid, kind) DO NOTHING;

-- name: clear_notes (batch)
DELETE FROM dep_failures; DELETE FROM dep_rearms;

-- name: batch_statistics_stale
-- Batches are planned on what the server knows of `jobs` and `deps`, and a queue's
-- statistics are often older than its jobs (a chain submitted a moment ago: "78 waiting
-- jobs" when there are 40,000): stale once a tenth of a table changed since they were
-- taken.
SELECT coalesce(bool_or(n_mod_since_analyze > greatest(1000, n_live_tup / 10)), false)
  FROM pg_stat_user_tables WHERE relid IN (to_regclass('jobs'), to_regclass('deps'));

-- name: refresh_batch_statistics (batch)
-- From a small sample (3,000 rows: about 20 ms on a 100,000-job queue, where a full
-- ANALYZE took 250-400 ms per batch).
SET LOCAL default_statistics_target = 10; ANALYZE jobs, deps;
SET LOCAL default_statistics_target TO DEFAULT;

-- name: plan_by_key (batch)
-- Nested loops are the only joins until the transaction ends: each level and each batch
-- reaches rows by key.
SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off;

-- name: batch_statistics (batch)
-- The statements that follow are planned by what the server knows of `dep_batch`: told
-- nothing, it scanned every waiting (or cancelled) job once per batch.
ANALYZE dep_batch;

-- name: settling_on (batch)
-- A batch's own state changes are not noted as ends or re-starts: the row triggers
-- `deps_met` and `dep_note` read `rq.settling`, and the batch does `deps_met`'s work
-- itself, set-based (PL/pgSQL per row cost ~0.1 ms a job).
SET LOCAL rq.settling = on;

-- name: settling_off (batch)
SET LOCAL rq.settling = off;

-- name: has_cancel_work
SELECT EXISTS (SELECT 1 FROM dep_work WHERE kind = 'cancel');

-- name: collect_cancel
-- $1 the batch size. From the failed jobs on the work list, level by level, to the
-- waiting jobs that need them.
WITH RECURSIVE doomed(jid, reason, skip) AS (
  SELECT d.job, w.reason, 0 FROM dep_work w JOIN jobs f ON f.jid = w.jid
   JOIN deps d ON d.dep = w.jid JOIN jobs j ON j.jid = d.job
   WHERE w.kind = 'cancel'
     AND (f.state = 'cancelled' OR (f.state = 'finished' AND f.exit_status IS DISTINCT FROM 0)
          OR (f.state = 'dead' AND (f.restartable = 0 OR f.attempts >= coalesce((SELECT CAST(value AS bigint) FROM attributes WHERE key = 'max_attempts'), 3))))
     AND d.kind = 'ok' AND j.state IN ('waiting', 'holding')
  UNION
  SELECT x.job, doomed.reason, 0 FROM doomed CROSS JOIN LATERAL (
    SELECT d.job FROM deps d WHERE d.dep = doomed.jid AND d.kind = 'ok'
       AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN ('waiting', 'holding')
    OFFSET 0) x)
INSERT INTO dep_batch SELECT * FROM doomed LIMIT $1 ON CONFLICT (jid) DO NOTHING;

-- name: apply_cancel
UPDATE jobs SET state = 'cancelled',
       reason = (SELECT b.reason FROM dep_batch b WHERE b.jid = jobs.jid)
 WHERE jid IN (SELECT jid FROM dep_batch) AND state IN ('waiting', 'holding');

-- name: drop_changed_meanwhile
DELETE FROM dep_batch WHERE NOT EXISTS (
  SELECT 1 FROM jobs j WHERE j.jid = dep_batch.jid AND j.state = 'cancelled');

-- name: count_any_waits_met
-- `deps_met`'s work, skipped per row: the `after_any` waits on these jobs are over.
UPDATE jobs SET waiting_on = jobs.waiting_on - c.n FROM (
  SELECT d.job, count(*) AS n FROM dep_batch b JOIN deps d ON d.dep = b.jid
   WHERE d.met = 0 AND d.kind = 'any' GROUP BY d.job) c
 WHERE jobs.jid = c.job;

-- name: mark_any_waits_met
UPDATE deps SET met = 1 WHERE met = 0 AND kind = 'any' AND dep IN (SELECT jid FROM dep_batch);

-- name: carry_on_cancel
-- Where the batch stopped: cancelled jobs with dependents it did not reach.
INSERT INTO dep_work (jid, kind, reason) SELECT b.jid, 'cancel', b.reason
  FROM dep_batch b
 WHERE EXISTS (SELECT 1 FROM deps d WHERE d.dep = b.jid AND d.kind = 'ok'
                AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN ('waiting', 'holding') OFFSET 0)
ON CONFLICT (jid, kind) DO NOTHING;

-- name: clear_failures_and_batch (batch)
DELETE FROM dep_failures; DELETE FROM dep_batch;

-- name: done_cancel
DELETE FROM dep_work WHERE kind = 'cancel' AND NOT (
  EXISTS (SELECT 1 FROM jobs f WHERE f.jid = dep_work.jid
           AND (f.state = 'cancelled' OR (f.state = 'finished' AND f.exit_status IS DISTINCT FROM 0)
                OR (f.state = 'dead' AND (f.restartable = 0 OR f.attempts >= coalesce((SELECT CAST(value AS bigint) FROM attributes WHERE key = 'max_attempts'), 3)))))
  AND EXISTS (SELECT 1 FROM deps d WHERE d.dep = dep_work.jid AND d.kind = 'ok'
               AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN ('waiting', 'holding') OFFSET 0));

-- name: has_rearm_work
SELECT EXISTS (SELECT 1 FROM dep_work WHERE kind = 'rearm');

-- name: collect_rearm
-- $1 the batch size. From the work list's jobs that are to run again, the cancelled jobs
-- below them, through cancelled jobs.
WITH RECURSIVE revive(jid, reason, skip) AS (
  SELECT d.job, CAST(NULL AS TEXT), 0 FROM deps d JOIN jobs j ON j.jid = d.job
   WHERE d.dep IN (SELECT w.jid FROM dep_work w JOIN jobs r ON r.jid = w.jid
                    WHERE w.kind = 'rearm' AND r.state IN ('pending', 'holding', 'waiting', 'running'))
     AND j.state = 'cancelled'
  UNION
  SELECT x.job, CAST(NULL AS TEXT), 0 FROM revive CROSS JOIN LATERAL (
    SELECT d.job FROM deps d WHERE d.dep = revive.jid AND true
       AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN ('cancelled')
    OFFSET 0) x)
INSERT INTO dep_batch SELECT * FROM revive LIMIT $1 ON CONFLICT (jid) DO NOTHING;

-- name: block_rearm
-- A job that needs one that failed and stays failed (not in this batch) stays cancelled.
UPDATE dep_batch SET skip = 2 WHERE EXISTS (
  SELECT 1 FROM deps d WHERE d.job = dep_batch.jid AND d.kind = 'ok'
    AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = d.dep)
    AND EXISTS (SELECT 1 FROM jobs f WHERE f.jid = d.dep
                 AND (f.state = 'cancelled' OR (f.state = 'finished' AND f.exit_status IS DISTINCT FROM 0)
                      OR (f.state = 'dead' AND (f.restartable = 0 OR f.attempts >= coalesce((SELECT CAST(value AS bigint) FROM attributes WHERE key = 'max_attempts'), 3))))));

-- name: block_below
-- And so do the jobs of the batch below it.
WITH RECURSIVE below(jid) AS (
  SELECT jid FROM dep_batch WHERE skip = 2
  UNION SELECT d.job FROM below JOIN deps d ON d.dep = below.jid
  JOIN dep_batch b ON b.jid = d.job)
UPDATE dep_batch SET skip = 1 WHERE skip = 0 AND jid IN (SELECT jid FROM below);

-- name: reset_root_waits
-- The waits on the roots start over.
UPDATE deps SET met = 0 WHERE met = 1
   AND dep IN (SELECT w.jid FROM dep_work w JOIN jobs r ON r.jid = w.jid
                WHERE w.kind = 'rearm' AND r.state IN ('pending', 'holding', 'waiting', 'running'))
   AND EXISTS (SELECT 1 FROM jobs j WHERE j.jid = deps.job
                AND j.state IN ('waiting', 'holding', 'cancelled'));

-- name: reset_revived_waits
-- The waits on the jobs that run again start over.
UPDATE deps SET met = 0 WHERE met = 1
   AND dep IN (SELECT jid FROM dep_batch WHERE skip = 0)
   AND EXISTS (SELECT 1 FROM jobs j WHERE j.jid = deps.job
                AND j.state IN ('waiting', 'holding', 'cancelled'));

-- name: apply_rearm
UPDATE jobs SET state = 'waiting', reason = NULL,
       waiting_on = (SELECT count(*) FROM deps d JOIN jobs w ON w.jid = d.dep
                     WHERE d.job = jobs.jid AND d.met = 0)
 WHERE jid IN (SELECT jid FROM dep_batch WHERE skip = 0) AND state = 'cancelled';

-- name: recount_below_roots
UPDATE jobs SET waiting_on = (SELECT count(*) FROM deps d JOIN jobs w ON w.jid = d.dep
                              WHERE d.job = jobs.jid AND d.met = 0)
 WHERE jid IN (SELECT d.job FROM deps d
                WHERE d.dep IN (SELECT w.jid FROM dep_work w JOIN jobs r ON r.jid = w.jid
                                 WHERE w.kind = 'rearm'
                                   AND r.state IN ('pending', 'holding', 'waiting', 'running')))
   AND state IN ('waiting', 'holding')
   AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = jobs.jid);

-- name: recount_below_revived
UPDATE jobs SET waiting_on = (SELECT count(*) FROM deps d JOIN jobs w ON w.jid = d.dep
                              WHERE d.job = jobs.jid AND d.met = 0)
 WHERE jid IN (SELECT d.job FROM deps d WHERE d.dep IN (SELECT jid FROM dep_batch WHERE skip = 0))
   AND state IN ('waiting', 'holding')
   AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = jobs.jid);

-- name: kept_cancelled
SELECT jid FROM dep_batch WHERE skip = 2;

-- name: set_reason
UPDATE jobs SET reason = $1 WHERE jid = $2;

-- name: carry_on_rearm
-- Where the batch stopped: jobs that run again with cancelled dependents it did not reach.
INSERT INTO dep_work (jid, kind) SELECT r.jid, 'rearm' FROM dep_batch r
 WHERE r.skip = 0
   AND EXISTS (SELECT 1 FROM deps d WHERE d.dep = r.jid
                AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = d.job)
                AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN ('cancelled') OFFSET 0)
ON CONFLICT (jid, kind) DO NOTHING;

-- name: done_rearm
-- The roots are done once none is left below them.
DELETE FROM dep_work WHERE kind = 'rearm' AND NOT (
  EXISTS (SELECT 1 FROM jobs r WHERE r.jid = dep_work.jid
           AND r.state IN ('pending', 'holding', 'waiting', 'running'))
  AND EXISTS (SELECT 1 FROM deps d WHERE d.dep = dep_work.jid
               AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = d.job)
               AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN ('cancelled') OFFSET 0));

-- name: clear_rearms_and_batch (batch)
DELETE FROM dep_rearms; DELETE FROM dep_batch;

-- name: failed_dependency
-- The first job $1 waits for with `after` that failed: jid, state, exit, signal, reason.
SELECT f.jid, f.state, f.exit_status, f.signal, f.reason FROM deps d
  JOIN jobs f ON f.jid = d.dep
 WHERE d.job = $1 AND d.kind = 'ok'
   AND (f.state = 'cancelled' OR (f.state = 'finished' AND f.exit_status IS DISTINCT FROM 0)
        OR (f.state = 'dead' AND (f.restartable = 0 OR f.attempts >= coalesce((SELECT CAST(value AS bigint) FROM attributes WHERE key = 'max_attempts'), 3))))
 ORDER BY f.jid LIMIT 1;

-- name: outcome
-- How job $1 ended: state, exit, signal, reason, whether it runs again.
SELECT state, exit_status, signal, reason,
       restartable = 1 AND attempts < coalesce((SELECT CAST(value AS bigint) FROM attributes WHERE key = 'max_attempts'), 3)
  FROM jobs WHERE jid = $1;

-- name: array_jobs
SELECT jid FROM jobs WHERE array_id = $1 ORDER BY jid;

-- name: insert_waits
-- $1 a JSON array of [dep, job, kind, met]: a submit's waits, many in one statement (one
-- round trip each took 20 s of a 100,000-job chain's submit).
INSERT INTO deps (dep, job, kind, met)
SELECT CAST(e ->> 0 AS bigint), CAST(e ->> 1 AS bigint), e ->> 2, CAST(e ->> 3 AS bigint)
  FROM jsonb_array_elements(CAST($1 AS jsonb)) AS e;

-- name: note_failure
INSERT INTO dep_failures (jid, reason) VALUES ($1, $2);

-- name: restate_look
SELECT state, array_id, array_limit FROM jobs WHERE jid = $1;

-- name: unmet
-- The waits of job $1 not over yet, on jobs still in the queue.
SELECT (SELECT count(*) FROM deps d JOIN jobs w ON w.jid = d.dep WHERE d.job = $1 AND d.met = 0);

-- name: cancel_for
UPDATE jobs SET state = 'cancelled', reason = $1, waiting_on = $2 WHERE jid = $3;

-- name: array_active
SELECT count(*) FROM jobs WHERE array_id = $1 AND jid != $2
   AND (state IN ('pending', 'running')
        OR (state = 'dead' AND restartable = 1 AND attempts < coalesce((SELECT CAST(value AS bigint) FROM attributes WHERE key = 'max_attempts'), 3)));

-- name: restate
UPDATE jobs SET state = $1, waiting_on = $2, reason = NULL WHERE jid = $3;

-- name: waiting_for
SELECT d.job, d.kind FROM deps d JOIN jobs j ON j.jid = d.job
 WHERE d.dep = $1 AND d.met = 0 AND j.state IN ('waiting', 'holding');

-- name: forget_cancel
UPDATE jobs SET state = 'cancelled', reason = 'dependency ' || CAST($1 AS bigint) || ' was deleted'
 WHERE jid IN (SELECT job FROM deps WHERE dep = $1 AND kind = 'ok' AND met = 0)
   AND state IN ('waiting', 'holding');

-- name: forget_any
UPDATE jobs SET waiting_on = waiting_on - 1
 WHERE jid IN (SELECT job FROM deps WHERE dep = $1 AND kind = 'any' AND met = 0);

-- name: forget_waits
DELETE FROM deps WHERE dep = $1;
