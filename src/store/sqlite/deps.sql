-- Dependencies between jobs on SQLite (see `store::ops::deps` and `crate::deps`).
-- The batch statements join the work list through `deps` to jobs with CROSS JOIN, which
-- SQLite keeps in the order written: its planner, without statistics, may otherwise scan
-- the jobs of a state once per row (quadratic on a long chain).
-- "f failed, as its `after` dependents see it":
--   f.state = 'cancelled' OR (f.state = 'finished' AND f.exit_status IS NOT 0)
--   OR (f.state = 'dead' AND (f.restartable = 0 OR f.attempts >= <max_attempts>))

-- name: connection_setup (batch)
-- Temporary (per-connection) tables and triggers that note, during a write transaction,
-- the jobs whose ends or new starts concern jobs waiting for them. Only rows that have
-- dependents are noted: a job nobody waits for costs one index probe. `dep_batch` holds
-- the jobs one batch changes; a row in `dep_settling` turns the notes off for a batch's
-- own changes. Run once per read-write connection (a batch of statements).
CREATE TEMP TABLE IF NOT EXISTS dep_failures (jid INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS dep_rearms (jid INTEGER NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS dep_batch (jid INTEGER PRIMARY KEY, reason TEXT, skip INTEGER NOT NULL DEFAULT 0);
CREATE TEMP TABLE IF NOT EXISTS dep_settling (batch INTEGER);
CREATE TEMP TRIGGER IF NOT EXISTS dep_failed AFTER UPDATE OF state ON main.jobs
WHEN OLD.state IS NOT NEW.state AND NOT EXISTS (SELECT 1 FROM dep_settling)
 AND (NEW.state = 'cancelled' OR (NEW.state = 'finished' AND NEW.exit_status IS NOT 0)
      OR (NEW.state = 'dead' AND (NEW.restartable = 0
          OR NEW.attempts >= coalesce((SELECT CAST(value AS INTEGER) FROM main.attributes WHERE key = 'max_attempts'), 3))))
 AND EXISTS (SELECT 1 FROM main.deps WHERE dep = NEW.jid AND kind = 'ok')
BEGIN
    INSERT INTO dep_failures (jid, reason) VALUES (NEW.jid, CASE
        WHEN NEW.state = 'cancelled' THEN coalesce(NEW.reason, 'dependency ' || NEW.jid || ' was cancelled')
        WHEN NEW.state = 'finished' AND NEW.exit_status IS NOT NULL
            THEN 'dependency ' || NEW.jid || ' exited ' || NEW.exit_status
        WHEN NEW.signal IS NOT NULL THEN 'dependency ' || NEW.jid || ' was killed by ' || NEW.signal
        ELSE 'dependency ' || NEW.jid || ' died' END);
END;
CREATE TEMP TABLE IF NOT EXISTS dep_released (jid INTEGER NOT NULL);
CREATE TEMP TRIGGER IF NOT EXISTS dep_release AFTER UPDATE OF state ON main.jobs
WHEN OLD.state = 'waiting' AND NEW.state = 'pending'
BEGIN
    INSERT INTO dep_released (jid) VALUES (NEW.jid);
END;
CREATE TEMP TRIGGER IF NOT EXISTS dep_rearmed AFTER UPDATE OF state ON main.jobs
WHEN NOT EXISTS (SELECT 1 FROM dep_settling) AND OLD.state IN ('finished', 'dead', 'cancelled')
 AND NEW.state IN ('pending', 'holding', 'waiting', 'running')
 AND EXISTS (SELECT 1 FROM main.deps WHERE dep = NEW.jid)
BEGIN
    INSERT INTO dep_rearms (jid) VALUES (NEW.jid);
END;

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
-- SQLite plans without statistics (the statements say the order).
SELECT 0;

-- name: refresh_batch_statistics (batch)

-- name: plan_by_key (batch)

-- name: batch_statistics (batch)

-- name: settling_on (batch)
-- A batch's own state changes are not noted as ends or re-starts (the temporary
-- triggers read `dep_settling`).
INSERT INTO dep_settling (batch) VALUES (1);

-- name: settling_off (batch)
DELETE FROM dep_settling;

-- name: has_cancel_work
SELECT EXISTS (SELECT 1 FROM dep_work WHERE kind = 'cancel');

-- name: collect_cancel
-- ?1 the batch size. From the failed jobs on the work list, level by level, to the
-- waiting jobs that need them.
WITH RECURSIVE doomed(jid, reason, skip) AS (
  SELECT d.job, w.reason, 0 FROM dep_work w CROSS JOIN jobs f ON f.jid = w.jid
   CROSS JOIN deps d ON d.dep = w.jid CROSS JOIN jobs j ON j.jid = d.job
   WHERE w.kind = 'cancel'
     AND (f.state = 'cancelled' OR (f.state = 'finished' AND f.exit_status IS NOT 0)
          OR (f.state = 'dead' AND (f.restartable = 0 OR f.attempts >= coalesce((SELECT CAST(value AS INTEGER) FROM attributes WHERE key = 'max_attempts'), 3))))
     AND d.kind = 'ok' AND j.state IN ('waiting', 'holding')
  UNION
  SELECT d.job, doomed.reason, 0 FROM doomed CROSS JOIN deps d ON d.dep = doomed.jid
   CROSS JOIN jobs j ON j.jid = d.job WHERE d.kind = 'ok' AND j.state IN ('waiting', 'holding')
  LIMIT ?1)
INSERT INTO dep_batch SELECT * FROM doomed WHERE true ON CONFLICT (jid) DO NOTHING;

-- name: apply_cancel
UPDATE jobs SET state = 'cancelled',
       reason = (SELECT b.reason FROM dep_batch b WHERE b.jid = jobs.jid)
 WHERE jid IN (SELECT jid FROM dep_batch) AND state IN ('waiting', 'holding');

-- name: drop_changed_meanwhile
DELETE FROM dep_batch WHERE NOT EXISTS (
  SELECT 1 FROM jobs j WHERE j.jid = dep_batch.jid AND j.state = 'cancelled');

-- name: count_any_waits_met
-- Nothing: the schema's triggers count them per row.

-- name: mark_any_waits_met

-- name: carry_on_cancel
-- Where the batch stopped: cancelled jobs with dependents it did not reach.
INSERT INTO dep_work (jid, kind, reason) SELECT b.jid, 'cancel', b.reason
  FROM dep_batch b
 WHERE EXISTS (SELECT 1 FROM deps d WHERE d.dep = b.jid AND d.kind = 'ok'
                AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN ('waiting', 'holding'))
ON CONFLICT (jid, kind) DO NOTHING;

-- name: clear_failures_and_batch (batch)
DELETE FROM dep_failures; DELETE FROM dep_batch;

-- name: done_cancel
DELETE FROM dep_work WHERE kind = 'cancel' AND NOT (
  EXISTS (SELECT 1 FROM jobs f WHERE f.jid = dep_work.jid
           AND (f.state = 'cancelled' OR (f.state = 'finished' AND f.exit_status IS NOT 0)
                OR (f.state = 'dead' AND (f.restartable = 0 OR f.attempts >= coalesce((SELECT CAST(value AS INTEGER) FROM attributes WHERE key = 'max_attempts'), 3)))))
  AND EXISTS (SELECT 1 FROM deps d WHERE d.dep = dep_work.jid AND d.kind = 'ok'
               AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN ('waiting', 'holding')));

-- name: has_rearm_work
SELECT EXISTS (SELECT 1 FROM dep_work WHERE kind = 'rearm');

-- name: collect_rearm
-- ?1 the batch size. From the work list's jobs that are to run again, the cancelled jobs
-- below them, through cancelled jobs.
WITH RECURSIVE revive(jid, reason, skip) AS (
  SELECT d.job, CAST(NULL AS TEXT), 0 FROM deps d CROSS JOIN jobs j ON j.jid = d.job
   WHERE d.dep IN (SELECT w.jid FROM dep_work w CROSS JOIN jobs r ON r.jid = w.jid
                    WHERE w.kind = 'rearm' AND r.state IN ('pending', 'holding', 'waiting', 'running'))
     AND j.state = 'cancelled'
  UNION
  SELECT d.job, CAST(NULL AS TEXT), 0 FROM revive CROSS JOIN deps d ON d.dep = revive.jid
   CROSS JOIN jobs j ON j.jid = d.job WHERE true AND j.state IN ('cancelled')
  LIMIT ?1)
INSERT INTO dep_batch SELECT * FROM revive WHERE true ON CONFLICT (jid) DO NOTHING;

-- name: block_rearm
-- A job that needs one that failed and stays failed (not in this batch) stays cancelled.
UPDATE dep_batch SET skip = 2 WHERE EXISTS (
  SELECT 1 FROM deps d WHERE d.job = dep_batch.jid AND d.kind = 'ok'
    AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = d.dep)
    AND EXISTS (SELECT 1 FROM jobs f WHERE f.jid = d.dep
                 AND (f.state = 'cancelled' OR (f.state = 'finished' AND f.exit_status IS NOT 0)
                      OR (f.state = 'dead' AND (f.restartable = 0 OR f.attempts >= coalesce((SELECT CAST(value AS INTEGER) FROM attributes WHERE key = 'max_attempts'), 3))))));

-- name: block_below
-- And so do the jobs of the batch below it.
WITH RECURSIVE below(jid) AS (
  SELECT jid FROM dep_batch WHERE skip = 2
  UNION SELECT d.job FROM below CROSS JOIN deps d ON d.dep = below.jid
  CROSS JOIN dep_batch b ON b.jid = d.job)
UPDATE dep_batch SET skip = 1 WHERE skip = 0 AND jid IN (SELECT jid FROM below);

-- name: reset_root_waits
-- The waits on the roots start over.
UPDATE deps SET met = 0 WHERE met = 1
   AND dep IN (SELECT w.jid FROM dep_work w CROSS JOIN jobs r ON r.jid = w.jid
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
       waiting_on = (SELECT count(*) FROM deps d CROSS JOIN jobs w ON w.jid = d.dep
                     WHERE d.job = jobs.jid AND d.met = 0)
 WHERE jid IN (SELECT jid FROM dep_batch WHERE skip = 0) AND state = 'cancelled';

-- name: recount_below_roots
UPDATE jobs SET waiting_on = (SELECT count(*) FROM deps d CROSS JOIN jobs w ON w.jid = d.dep
                              WHERE d.job = jobs.jid AND d.met = 0)
 WHERE jid IN (SELECT d.job FROM deps d
                WHERE d.dep IN (SELECT w.jid FROM dep_work w CROSS JOIN jobs r ON r.jid = w.jid
                                 WHERE w.kind = 'rearm'
                                   AND r.state IN ('pending', 'holding', 'waiting', 'running')))
   AND state IN ('waiting', 'holding')
   AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = jobs.jid);

-- name: recount_below_revived
UPDATE jobs SET waiting_on = (SELECT count(*) FROM deps d CROSS JOIN jobs w ON w.jid = d.dep
                              WHERE d.job = jobs.jid AND d.met = 0)
 WHERE jid IN (SELECT d.job FROM deps d WHERE d.dep IN (SELECT jid FROM dep_batch WHERE skip = 0))
   AND state IN ('waiting', 'holding')
   AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = jobs.jid);

-- name: kept_cancelled
SELECT jid FROM dep_batch WHERE skip = 2;

-- name: set_reason
UPDATE jobs SET reason = ?1 WHERE jid = ?2;

-- name: carry_on_rearm
-- Where the batch stopped: jobs that run again with cancelled dependents it did not reach.
INSERT INTO dep_work (jid, kind) SELECT r.jid, 'rearm' FROM dep_batch r
 WHERE r.skip = 0
   AND EXISTS (SELECT 1 FROM deps d WHERE d.dep = r.jid
                AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = d.job)
                AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN ('cancelled'))
ON CONFLICT (jid, kind) DO NOTHING;

-- name: done_rearm
-- The roots are done once none is left below them.
DELETE FROM dep_work WHERE kind = 'rearm' AND NOT (
  EXISTS (SELECT 1 FROM jobs r WHERE r.jid = dep_work.jid
           AND r.state IN ('pending', 'holding', 'waiting', 'running'))
  AND EXISTS (SELECT 1 FROM deps d WHERE d.dep = dep_work.jid
               AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = d.job)
               AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN ('cancelled')));

-- name: clear_rearms_and_batch (batch)
DELETE FROM dep_rearms; DELETE FROM dep_batch;

-- name: failed_dependency
-- The first job ?1 waits for with `after` that failed: jid, state, exit, signal, reason.
SELECT f.jid, f.state, f.exit_status, f.signal, f.reason FROM deps d
  JOIN jobs f ON f.jid = d.dep
 WHERE d.job = ?1 AND d.kind = 'ok'
   AND (f.state = 'cancelled' OR (f.state = 'finished' AND f.exit_status IS NOT 0)
        OR (f.state = 'dead' AND (f.restartable = 0 OR f.attempts >= coalesce((SELECT CAST(value AS INTEGER) FROM attributes WHERE key = 'max_attempts'), 3))))
 ORDER BY f.jid LIMIT 1;

-- name: outcome
-- How job ?1 ended: state, exit, signal, reason, whether it runs again.
SELECT state, exit_status, signal, reason,
       restartable = 1 AND attempts < coalesce((SELECT CAST(value AS INTEGER) FROM attributes WHERE key = 'max_attempts'), 3)
  FROM jobs WHERE jid = ?1;

-- name: array_jobs
SELECT jid FROM jobs WHERE array_id = ?1 ORDER BY jid;

-- name: insert_waits
-- ?1 a JSON array of [dep, job, kind, met]: a submit's waits, many in one statement.
INSERT INTO deps (dep, job, kind, met)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1);

-- name: note_failure
INSERT INTO dep_failures (jid, reason) VALUES (?1, ?2);

-- name: restate_look
SELECT state, array_id, array_limit FROM jobs WHERE jid = ?1;

-- name: unmet
-- The waits of job ?1 not over yet, on jobs still in the queue.
SELECT (SELECT count(*) FROM deps d JOIN jobs w ON w.jid = d.dep WHERE d.job = ?1 AND d.met = 0);

-- name: cancel_for
UPDATE jobs SET state = 'cancelled', reason = ?1, waiting_on = ?2 WHERE jid = ?3;

-- name: array_active
SELECT count(*) FROM jobs WHERE array_id = ?1 AND jid != ?2
   AND (state IN ('pending', 'running')
        OR (state = 'dead' AND restartable = 1 AND attempts < coalesce((SELECT CAST(value AS INTEGER) FROM attributes WHERE key = 'max_attempts'), 3)));

-- name: restate
UPDATE jobs SET state = ?1, waiting_on = ?2, reason = NULL WHERE jid = ?3;

-- name: waiting_for
SELECT d.job, d.kind FROM deps d JOIN jobs j ON j.jid = d.job
 WHERE d.dep = ?1 AND d.met = 0 AND j.state IN ('waiting', 'holding');

-- name: forget_cancel
UPDATE jobs SET state = 'cancelled', reason = 'dependency ' || ?1 || ' was deleted'
 WHERE jid IN (SELECT job FROM deps WHERE dep = ?1 AND kind = 'ok' AND met = 0)
   AND state IN ('waiting', 'holding');

-- name: forget_any
UPDATE jobs SET waiting_on = waiting_on - 1
 WHERE jid IN (SELECT job FROM deps WHERE dep = ?1 AND kind = 'any' AND met = 0);

-- name: forget_waits
DELETE FROM deps WHERE dep = ?1;
