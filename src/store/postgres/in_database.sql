-- What a PostgreSQL queue without a job-file directory keeps in its database instead of
-- files (see `store::in_database`): heartbeats stamped with the server's clock, feeders'
-- start journals, and job files in chunks. PostgreSQL only: a SQLite queue keeps them as
-- files beside its database.
-- A job's chunks readers see ("visible"): stored input, or for output, the current run's
-- while the job runs (nothing until it uploads some), else the last run's.

-- name: beat_with_info
INSERT INTO hosts (host, beat, info) VALUES ($1, clock_timestamp(), $2)
ON CONFLICT (host) DO UPDATE SET beat = excluded.beat, info = excluded.info
RETURNING CAST(extract(epoch FROM beat) AS float8);

-- name: beat
INSERT INTO hosts (host, beat, info) VALUES ($1, clock_timestamp(), $2)
ON CONFLICT (host) DO UPDATE SET beat = excluded.beat
RETURNING CAST(extract(epoch FROM beat) AS float8);

-- name: server_now
SELECT CAST(extract(epoch FROM clock_timestamp()) AS float8);

-- name: heartbeat_age
SELECT CAST(extract(epoch FROM clock_timestamp() - beat) AS float8) FROM hosts WHERE host = $1;

-- name: known_hosts
SELECT host, info, CAST(extract(epoch FROM clock_timestamp() - beat) AS float8)
  FROM hosts ORDER BY host;

-- Start journals are unlogged (schema 13): a line costs no WAL and its commit no flush
-- of it. A server crash empties them (PostgreSQL truncates unlogged tables in its crash
-- recovery, and a standby has them empty), the marks in `journals` with the lines: a
-- journal without its mark proves nothing (every claim of its feeder may have run), and
-- its live feeder writes it again, whole, with its next lines (`journal_begin`).

-- name: journal_begin
-- Mark the feeder's journal and write $2's lines (one per line; tokens and JSON hold no
-- newline), in one statement: a reader sees the mark with every line or neither.
WITH mark AS (INSERT INTO journals (feeder) VALUES ($1) ON CONFLICT (feeder) DO NOTHING)
INSERT INTO starts (feeder, line)
SELECT $1, line FROM unnest(string_to_array(CAST($2 AS text), chr(10))) AS line
 WHERE line <> '';

-- name: journal_append
-- $2's lines, only to a marked journal: no rows when a server crash emptied it.
INSERT INTO starts (feeder, line)
SELECT $1, unnest(string_to_array(CAST($2 AS text), chr(10)))
 WHERE EXISTS (SELECT 1 FROM journals WHERE feeder = $1);

-- name: journal_marked
SELECT count(*) FROM journals WHERE feeder = $1;

-- name: journal_read
SELECT line FROM starts WHERE feeder = $1;

-- name: journal_remove
-- Its lines (every one recorded in the queue): the mark stays.
DELETE FROM starts WHERE feeder = $1;

-- name: journal_forget
-- Lines and mark: the feeder is gone.
WITH lines AS (DELETE FROM starts WHERE feeder = $1)
DELETE FROM journals WHERE feeder = $1;

-- name: reap_old_journals
-- Lines a day old of feeders without running jobs; marks a day old of feeders without
-- running jobs that no host names as its feeder any more.
WITH lines AS (
    DELETE FROM starts WHERE written < clock_timestamp() - CAST('1 day' AS interval)
       AND feeder NOT IN (SELECT feeder FROM jobs WHERE state = 'running' AND feeder IS NOT NULL))
DELETE FROM journals j WHERE written < clock_timestamp() - CAST('1 day' AS interval)
   AND feeder NOT IN (SELECT feeder FROM jobs WHERE state = 'running' AND feeder IS NOT NULL)
   AND NOT EXISTS (SELECT 1 FROM hosts h WHERE position(j.feeder IN h.info) > 0);

-- name: put_chunk
INSERT INTO job_files (jid, stream, claim, seq, bytes) VALUES ($1, $2, $3, $4, $5);

-- name: drop_stream
DELETE FROM job_files WHERE jid = $1 AND stream = $2 AND claim = $3;

-- name: visible_chunks
SELECT seq FROM job_files
 WHERE jid = $1 AND stream = $2
   AND (stream IN ('stdin', 'data', 'data.tar') AND claim = ''
        OR stream IN ('stdout', 'stderr') AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.jid = job_files.jid AND j.claim IS NOT NULL)
        OR stream IN ('stdout', 'stderr') AND claim = (SELECT j.claim FROM jobs j WHERE j.jid = job_files.jid))
 ORDER BY seq;

-- name: visible_chunk
SELECT bytes FROM job_files
 WHERE jid = $1 AND stream = $2
   AND (stream IN ('stdin', 'data', 'data.tar') AND claim = ''
        OR stream IN ('stdout', 'stderr') AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.jid = job_files.jid AND j.claim IS NOT NULL)
        OR stream IN ('stdout', 'stderr') AND claim = (SELECT j.claim FROM jobs j WHERE j.jid = job_files.jid))
   AND seq = $3;

-- name: stream_size
SELECT count(*), coalesce(sum(length(bytes)), 0) FROM job_files
 WHERE jid = $1 AND stream = $2
   AND (stream IN ('stdin', 'data', 'data.tar') AND claim = ''
        OR stream IN ('stdout', 'stderr') AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.jid = job_files.jid AND j.claim IS NOT NULL)
        OR stream IN ('stdout', 'stderr') AND claim = (SELECT j.claim FROM jobs j WHERE j.jid = job_files.jid));

-- name: chunk_starts
-- Each visible chunk and the byte it starts at.
SELECT seq, CAST(sum(length(bytes)) OVER (ORDER BY seq) - length(bytes) AS bigint) FROM job_files
 WHERE jid = $1 AND stream = $2
   AND (stream IN ('stdin', 'data', 'data.tar') AND claim = ''
        OR stream IN ('stdout', 'stderr') AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.jid = job_files.jid AND j.claim IS NOT NULL)
        OR stream IN ('stdout', 'stderr') AND claim = (SELECT j.claim FROM jobs j WHERE j.jid = job_files.jid))
 ORDER BY seq;

-- name: hold_if_ours
-- The job's row, held until commit while the claim is ours: a takeover waits for the
-- upload, or the upload sees it.
SELECT 1 FROM jobs WHERE jid = $1 AND claim = $2 FOR SHARE;

-- name: drop_earlier_runs
DELETE FROM job_files WHERE jid = $1 AND stream = $2 AND claim <> $3;

-- name: hold_if_ours_many
-- $1 a JSON list of {jid, claim}: as `hold_if_ours` for each; returns the jids held.
SELECT j.jid FROM jobs j
  JOIN jsonb_to_recordset(CAST($1 AS jsonb)) AS o(jid bigint, claim text)
    ON j.jid = o.jid AND j.claim = o.claim
 WHERE j.jid = ANY (ARRAY(SELECT CAST(x ->> 'jid' AS bigint) FROM jsonb_array_elements(CAST($1 AS jsonb)) AS x))
   FOR SHARE OF j;

-- name: drop_earlier_runs_many
-- $1 a JSON list of {jid, stream, claim}: as `drop_earlier_runs` for each.
DELETE FROM job_files f
 USING jsonb_to_recordset(CAST($1 AS jsonb)) AS d(jid bigint, stream text, claim text)
 WHERE f.jid = d.jid AND f.stream = d.stream AND f.claim <> d.claim
   AND f.jid = ANY (ARRAY(SELECT CAST(x ->> 'jid' AS bigint) FROM jsonb_array_elements(CAST($1 AS jsonb)) AS x));

-- name: put_chunks
-- $1 a JSON list of {jid, stream, claim, seq, hex}: chunks as `put_chunk` stores them,
-- their bytes in hex.
INSERT INTO job_files (jid, stream, claim, seq, bytes)
SELECT c.jid, c.stream, c.claim, c.seq, decode(c.hex, 'hex')
  FROM jsonb_to_recordset(CAST($1 AS jsonb))
       AS c(jid bigint, stream text, claim text, seq bigint, hex text);

-- name: reap_orphans
DELETE FROM job_files f WHERE written < clock_timestamp() - CAST('10 minutes' AS interval)
   AND (NOT EXISTS (SELECT 1 FROM jobs j WHERE j.jid = f.jid)
        OR (stream IN ('stdin', 'data', 'data.tar') AND claim <> ''));

-- name: stored_files
-- Per job of $1: inputs stored, an earlier run's output stored (NULLs: nothing stored).
-- Every stored stream has a first chunk (an empty one if nothing else), so first chunks
-- tell. One index probe per job, as a lateral subquery: a feeder keeps the plan it made
-- while the table was young, and `jid = ANY` over the list was planned as one scan of
-- the whole table (the list's length unknown, the table's size underrated), read by every
-- later claim while the table grew.
SELECT a.jid, f.inputs, f.earlier_output
  FROM (SELECT CAST(jsonb_array_elements_text(CAST($1 AS jsonb)) AS bigint) AS jid) AS a
 CROSS JOIN LATERAL (
       SELECT bool_or(stream IN ('stdin', 'data', 'data.tar') AND claim = '') AS inputs,
              bool_or(stream IN ('stdout', 'stderr')) AS earlier_output
         FROM job_files
        WHERE jid = a.jid AND seq = 0) AS f;

-- name: drop_inputs
-- $2: the streams (a JSON list).
DELETE FROM job_files WHERE jid = $1 AND claim = ''
   AND stream IN (SELECT jsonb_array_elements_text(CAST($2 AS jsonb)));

-- name: promote_staged
-- $3: the streams (a JSON list).
UPDATE job_files SET claim = '' WHERE jid = $1 AND claim = $2
   AND stream IN (SELECT jsonb_array_elements_text(CAST($3 AS jsonb)));

-- name: drop_staged
DELETE FROM job_files WHERE claim = $1;

-- name: remove_files
DELETE FROM job_files WHERE jid >= $1 AND jid < $2;

-- name: drop_outputs
-- A job queued again: its last run's output goes.
DELETE FROM job_files WHERE jid = $1 AND stream IN ('stdout', 'stderr');

-- name: drop_data
-- An input's data replaced: what is stored under claim $2.
DELETE FROM job_files WHERE jid = $1 AND claim = $2 AND stream IN ('data', 'data.tar');
