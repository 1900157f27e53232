-- Jobs as modes list them. `{filter}` is where `Tx::scan` writes the filter
-- (`store::filter`) in this store's SQL, its parameters numbered after the operation's own;
-- `{listed_fields}` is every field, `reason` as `waiting_reason` says.

-- name: waiting_reason (fragment)
-- For a waiting job, what it waits for (up to five jobs and their states, or its array's
-- limit); for a pending job no live feeder can run, why; for a pending job not to start
-- yet, when it starts.
CASE WHEN state = 'waiting' THEN coalesce(
    (SELECT 'waits for ' || group_concat(x, ', ')
        || CASE WHEN jobs.waiting_on > 5 THEN ' and ' || (jobs.waiting_on - 5) || ' more' ELSE '' END
     FROM (SELECT d.dep || ' (' || coalesce(w.state, 'gone') || ')' AS x FROM deps d
           LEFT JOIN jobs w ON w.jid = d.dep WHERE d.job = jobs.jid AND d.met = 0
           ORDER BY d.dep LIMIT 5)),
    CASE WHEN array_limit IS NOT NULL THEN 'waits for a place: at most ' || array_limit
        || ' of array ' || array_id || ' run at once' END,
    reason)
  WHEN state = 'pending' AND (cpus > 1 OR gpus > 0 OR mem > 0)
       AND rq_unfit(cpus, mem, gpus) IS NOT NULL THEN rq_unfit(cpus, mem, gpus)
  WHEN state = 'pending' AND not_before > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
  THEN 'starts at ' || not_before ELSE reason END AS reason

-- name: page
SELECT {listed_fields} FROM jobs WHERE jid > ?1 AND {filter} ORDER BY jid LIMIT ?2;

-- name: every
SELECT {listed_fields} FROM jobs WHERE {filter} ORDER BY jid;

-- name: first_up
SELECT {listed_fields} FROM jobs WHERE {filter} ORDER BY jid LIMIT ?1;

-- name: first_down
SELECT {listed_fields} FROM jobs WHERE {filter} ORDER BY jid DESC LIMIT ?1;

-- name: counts
SELECT state, count(*), count(*) FILTER (WHERE state = 'finished' AND exit_status IS 0),
       count(*) FILTER (WHERE state = 'finished' AND exit_status IS NOT 0)
  FROM jobs WHERE {filter} GROUP BY state;

-- name: one
SELECT {listed_fields} FROM jobs WHERE jid = ?1;

-- name: highest_jid
SELECT max(jid) FROM jobs;

-- name: state_of
SELECT state FROM jobs WHERE jid = ?1;

-- name: failed_of
SELECT {listed_fields} FROM jobs
 WHERE jid IN (SELECT value FROM json_each(?1))
   AND (state IN ('dead', 'cancelled') OR (state = 'finished' AND exit_status IS NOT 0))
 ORDER BY jid LIMIT ?2;

-- name: view_running
SELECT {listed_fields} FROM jobs WHERE state = 'running'
 ORDER BY started IS NULL, started, jid LIMIT ?1;

-- name: view_pending
SELECT {listed_fields} FROM jobs WHERE state = 'pending'
 ORDER BY priority DESC, submitted, jid LIMIT ?1;

-- name: view_ended
SELECT {listed_fields} FROM jobs
 WHERE jid IN (SELECT jid FROM jobs INDEXED BY jobs_ended_at WHERE state IN ('finished', 'dead')
                ORDER BY finished DESC LIMIT ?1)
 ORDER BY finished DESC, jid DESC;

-- name: view_dead
SELECT {listed_fields} FROM jobs WHERE state IN ('dead', 'cancelled')
 ORDER BY coalesce(finished, submitted) DESC, jid DESC LIMIT ?1;

-- name: outcomes
SELECT jid, state, exit_status, signal FROM jobs WHERE {filter} ORDER BY jid;

-- name: any
SELECT jid FROM jobs WHERE {filter} LIMIT 1;

-- name: usage_page
-- Ended runs after jid ?1 (at most ?2), by jid, as `usage` reads them: jid, tag, array,
-- CPUs and memory asked, elapsed, CPU seconds (user + system), peak memory.
SELECT jid, tag, array_id, cpus, mem, elapsed, cpu_user + cpu_system, max_rss FROM jobs
 WHERE jid > ?1 AND {filter} AND elapsed IS NOT NULL ORDER BY jid LIMIT ?2;
