-- PostgreSQL: what `status`, `wait`, the status screen and the dashboard read (see `store::ops::status`).
-- Counts come from `job_counts`, which triggers keep in step with every change: no scan,
-- however many jobs there are; the rest from the ends of indexes.

-- name: counts
SELECT state, n, elapsed_n, elapsed_sum, ok FROM job_counts;

-- name: count_in_state
SELECT n FROM job_counts WHERE state = $1;

-- name: highest_priority
-- Of the jobs in state $1 (a skip-scan of the claim index, one priority at a time).
SELECT priority FROM jobs WHERE state = $1 ORDER BY priority DESC LIMIT 1;

-- name: next_priority_below
SELECT priority FROM jobs WHERE state = $1 AND priority < $2 ORDER BY priority DESC LIMIT 1;

-- name: newest_at_priority
-- jid, submitted.
SELECT jid, submitted FROM jobs WHERE state = $1 AND priority = $2
 ORDER BY submitted DESC, jid DESC LIMIT 1;

-- name: oldest_at_priority
SELECT jid, submitted FROM jobs WHERE state = $1 AND priority = $2 ORDER BY submitted, jid LIMIT 1;

-- name: newest_in_state
-- With more priorities than a skip-scan is worth: the state's jobs.
SELECT jid, submitted FROM jobs WHERE state = $1 ORDER BY submitted DESC, jid DESC LIMIT 1;

-- name: oldest_in_state
SELECT jid, submitted FROM jobs WHERE state = $1 ORDER BY submitted, jid LIMIT 1;

-- name: latest_started
SELECT jid, started FROM jobs WHERE state = 'running' AND started IS NOT NULL
 ORDER BY started DESC LIMIT 1;

-- name: earliest_started
SELECT jid, started FROM jobs WHERE state = 'running' AND started IS NOT NULL
 ORDER BY started ASC LIMIT 1;

-- name: shortest_finished
SELECT jid, elapsed FROM jobs WHERE state = 'finished'
   AND elapsed IS NOT NULL ORDER BY elapsed ASC LIMIT 1;

-- name: longest_finished
SELECT jid, elapsed FROM jobs WHERE state = 'finished'
   AND elapsed IS NOT NULL ORDER BY elapsed DESC LIMIT 1;

-- name: shortest_dead
SELECT jid, elapsed FROM jobs WHERE state = 'dead' AND elapsed IS NOT NULL ORDER BY elapsed ASC LIMIT 1;

-- name: longest_dead
SELECT jid, elapsed FROM jobs WHERE state = 'dead' AND elapsed IS NOT NULL ORDER BY elapsed DESC LIMIT 1;

-- name: ended_since
-- Jobs that ended after $1.
SELECT count(*) FROM jobs WHERE state IN ('finished', 'dead') AND finished > $1;

-- name: ended_per_minute
-- Since $1: minute (the first 16 characters of the end time), count.
SELECT substr(finished, 1, 16), count(*) FROM jobs 
 WHERE state IN ('finished', 'dead') AND finished >= $1 GROUP BY 1;

-- name: ended_per_minute_and_host
-- Since $1: minute, host, count.
SELECT substr(finished, 1, 16), coalesce(runner, '?'), count(*) FROM jobs 
 WHERE state IN ('finished', 'dead') AND finished >= $1 GROUP BY 1, 2;

-- name: finished_with_codes
-- $1: exit codes, a JSON list.
SELECT count(*) FROM jobs 
 WHERE state = 'finished' AND exit_status IN (SELECT CAST(jsonb_array_elements_text(CAST($1 AS jsonb)) AS bigint));

-- name: running_per_host
-- host ('?' for none), count.
SELECT coalesce(runner, '?'), count(*) FROM jobs WHERE state = 'running' GROUP BY 1 ORDER BY 1;

-- name: held_back
-- The pause mark and the drained hosts (`drain.HOST`): key, since.
SELECT key, value FROM attributes WHERE key = 'paused' OR (key > 'drain.' AND key < 'drain/')
 ORDER BY key;

-- name: liveness_settings
SELECT key, value FROM attributes WHERE key IN ('heartbeat', 'lease', 'max_attempts');

-- name: lock_recovered
SELECT value FROM meta WHERE key = 'lock_recovered';

-- name: progress
-- $1: jids, a JSON list: state, count, how many finished failed.
SELECT state, count(*), count(*) FILTER (WHERE exit_status IS DISTINCT FROM 0) FROM jobs
 WHERE jid = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST($1 AS jsonb)) AS bigint))) GROUP BY state;

-- name: any_needy
-- Jobs waiting to run that need more than one CPU, or GPUs or memory ($1: only these jids,
-- a JSON list, or NULL). One index probe when none does.
SELECT EXISTS (SELECT 1 FROM jobs WHERE (cpus > 1 OR gpus > 0 OR mem > 0)
                  AND state IN ('pending', 'waiting')
                  AND (CAST($1 AS text) IS NULL OR jid = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST($1 AS jsonb)) AS bigint)))));

-- name: needy_beyond
-- Those that need more than $2 CPUs, $3 bytes or $4 GPUs: jid, cpus, mem, gpus.
SELECT jid, cpus, mem, gpus FROM jobs WHERE (cpus > 1 OR gpus > 0 OR mem > 0)
   AND state IN ('pending', 'waiting')
   AND (CAST($1 AS text) IS NULL OR jid = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST($1 AS jsonb)) AS bigint))))
   AND (cpus > $2 OR mem > $3 OR gpus > $4) ORDER BY jid;

-- name: timeline
-- The dashboard's bars: jobs that ended since $1 (the latest $2) and the running ones:
-- jid, host ('?' for none), started, finished, state, exit status, signal, CPU seconds
-- (user and system), peak memory and bytes read and written of the run.
SELECT jid, coalesce(runner, '?'), started, finished, state, exit_status, signal,
       cpu_user + cpu_system, max_rss, read_bytes, write_bytes FROM jobs
 WHERE jid IN (SELECT jid FROM jobs WHERE state IN ('finished', 'dead')
                AND finished >= $1 ORDER BY finished DESC LIMIT $2)
    OR (state = 'running' AND started IS NOT NULL);

-- name: size_bytes
-- The queue's tables and indexes.
SELECT CAST(coalesce(sum(pg_total_relation_size(c.oid)), 0) AS bigint) FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm');
