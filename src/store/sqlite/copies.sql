-- Whole rows copied from one queue into another: export (`crate::export`) and rotation
-- (`crate::admin`), a page at a time.

-- name: jobs_page
SELECT {job_fields} FROM jobs WHERE jid > ?1 ORDER BY jid LIMIT ?2;

-- name: job_files_page
SELECT jid, stdin, stdout, stderr, data FROM jobs WHERE jid > ?1 ORDER BY jid LIMIT ?2;

-- name: deps_page
SELECT dep, job, kind, met FROM deps WHERE dep > ?1 OR (dep = ?1 AND job > ?2)
 ORDER BY dep, job LIMIT ?3;

-- name: insert_job
INSERT INTO jobs ({job_fields}) VALUES ({job_params});

-- name: insert_dep
INSERT INTO deps (dep, job, kind, met) VALUES (?1, ?2, ?3, ?4);

-- name: note_exported_from
INSERT INTO meta (key, value) VALUES ('exported_from', ?1)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: ended_page
SELECT jid, coalesce(finished, '') FROM jobs WHERE jid > ?1 ORDER BY jid LIMIT ?2;

-- name: delete_archived
DELETE FROM jobs WHERE jid = ?1 AND state IN ('finished', 'dead') AND coalesce(finished, '') = ?2;

-- name: delete_listed
DELETE FROM jobs WHERE jid IN (SELECT value FROM json_each(?1));

-- name: running_and_all
SELECT count(*) FILTER (WHERE state = 'running'), count(*) FROM jobs;
