//! PostgreSQL's schema: the SQLite schema's tables, indexes and triggers in PostgreSQL's
//! terms, its migrations, and what each session sets when it connects. rq's statements
//! for PostgreSQL are its own (`store/postgres/*.sql`); a statement written once for both
//! stores has only its `?` placeholders numbered (`super::numbered_placeholders`).

/// The version of a PostgreSQL queue's schema, stored in its `meta` as `schema_version`.
/// Its own sequence: 5 was the first (the tables of SQLite's version 5); `MIGRATIONS`
/// brings an older queue up to this one. A change to SQLite's tables is made here too, as
/// a new version.
pub const SCHEMA_VERSION: i64 = 13;

/// The statement trigger that keeps `job_counts`: per state, what a statement's rows
/// added and took away. An update subtracts every old row and adds every new one: rows
/// whose counted columns did not change cancel out (joining old and new rows instead was
/// a nested loop over two tuplestores without statistics, quadratic in the rows a
/// statement changes: 16 M comparisons for 4,000 jobs cancelled at once).
macro_rules! job_counts_changed_sql {
    () => {
        r#"
CREATE OR REPLACE FUNCTION job_counts_changed() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_counts_delta
        SELECT state, count(*), count(elapsed), coalesce(sum(elapsed), 0),
               count(*) FILTER (WHERE exit_status = 0)
        FROM new_rows GROUP BY state;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_counts_delta
        SELECT state, -count(*), -count(elapsed), -coalesce(sum(elapsed), 0),
               -count(*) FILTER (WHERE exit_status = 0)
        FROM old_rows GROUP BY state;
    ELSE
        INSERT INTO job_counts_delta
        SELECT state, sum(n), sum(elapsed_n), sum(elapsed_sum), sum(ok) FROM (
            SELECT o.state, -1 AS n, -CAST(o.elapsed IS NOT NULL AS int) AS elapsed_n,
                   -coalesce(o.elapsed, 0) AS elapsed_sum,
                   -CAST(o.exit_status IS NOT DISTINCT FROM 0 AS int) AS ok
            FROM old_rows o
            UNION ALL
            SELECT w.state, 1, CAST(w.elapsed IS NOT NULL AS int), coalesce(w.elapsed, 0),
                   CAST(w.exit_status IS NOT DISTINCT FROM 0 AS int)
            FROM new_rows w
        ) d GROUP BY state
        HAVING sum(n) <> 0 OR sum(elapsed_n) <> 0 OR sum(elapsed_sum) <> 0 OR sum(ok) <> 0;
    END IF;
    RETURN NULL;
END $$;
"#
    };
}
const JOB_COUNTS_CHANGED: &str = job_counts_changed_sql!();

/// The row triggers `deps_met` and `dep_note` as schema 9 made them (see
/// `dep_triggers_sql`, which replaced them in schema 12).
macro_rules! dep_triggers_v9_sql {
    () => {
        r#"
CREATE TRIGGER deps_met AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state AND NEW.state IN ('finished', 'cancelled', 'dead')
          AND current_setting('rq.settling', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION deps_met();
CREATE TRIGGER dep_note AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state AND NEW.state IN ('cancelled', 'finished', 'dead', 'pending', 'holding', 'waiting', 'running')
          AND (NEW.state <> 'running' OR OLD.state IN ('finished', 'dead', 'cancelled'))
          AND (current_setting('rq.settling', true) IS DISTINCT FROM 'on'
               OR (OLD.state = 'waiting' AND NEW.state = 'pending')))
    EXECUTE FUNCTION dep_note();
"#
    };
}

/// The row triggers `deps_met` and `dep_note`, which a batch of `deps::settle` turns off
/// for its own state changes (`rq.settling`, on for one statement) and does their work
/// set-based instead: PL/pgSQL per row cost about 0.1 ms a job (17 s for a chain of
/// 100,000). Releases (waiting -> pending, by array limits) are still noted: they ring
/// the doorbell. Both fire only for jobs someone depends on (`has_dependents`), but for
/// a release: firing for every end cost the server 0.04 ms a job (two PL/pgSQL calls and
/// their statements, finding no `deps` row).
macro_rules! dep_triggers_sql {
    () => {
        r#"
CREATE TRIGGER deps_met AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.has_dependents AND OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state IN ('finished', 'cancelled', 'dead')
          AND current_setting('rq.settling', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION deps_met();
CREATE TRIGGER dep_note AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state AND NEW.state IN ('cancelled', 'finished', 'dead', 'pending', 'holding', 'waiting', 'running')
          AND (NEW.has_dependents OR (OLD.state = 'waiting' AND NEW.state = 'pending'))
          AND (NEW.state <> 'running' OR OLD.state IN ('finished', 'dead', 'cancelled'))
          AND (current_setting('rq.settling', true) IS DISTINCT FROM 'on'
               OR (OLD.state = 'waiting' AND NEW.state = 'pending')))
    EXECUTE FUNCTION dep_note();
"#
    };
}

/// `jobs.has_dependents`: set, in the statement that inserts them, for the jobs that
/// `deps` rows wait on (and never cleared: it means "may have dependents"). A transaction
/// that sees a `deps` row sees its job's flag, so a job's end skips the dependency
/// triggers only where no row waits on it.
macro_rules! has_dependents_sql {
    () => {
        r#"
CREATE FUNCTION deps_inserted() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE jobs SET has_dependents = true
     WHERE jid IN (SELECT dep FROM new_rows) AND NOT has_dependents;
    RETURN NULL;
END $$;
CREATE TRIGGER deps_inserted AFTER INSERT ON deps REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deps_inserted();
"#
    };
}

/// The work list of dependency changes not done yet, as in SQLite's schema 6.
macro_rules! dep_work_sql {
    () => {
        r#"
CREATE TABLE dep_work (
    jid bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('cancel', 'rearm')),
    reason text,
    PRIMARY KEY (jid, kind)
);
"#
    };
}
const DEP_WORK_SQL: &str = dep_work_sql!();

/// `MIGRATIONS[i]` turns PostgreSQL schema version `5 + i` into `6 + i`; each runs in the
/// transaction that records the new version, holding the queue's lock, on the queue's
/// schema (first on the search path).
pub const MIGRATIONS: &[&str] = &[
    // 6: jids from the column's default (the trigger only for an explicit NULL), so a
    // submit's COPY needs no PL/pgSQL call per row; array locks keyed by queue too.
    r#"
ALTER TABLE jobs ALTER COLUMN jid SET DEFAULT nextval('jobs_jid_seq');
DROP TRIGGER jid_assign ON jobs;
CREATE TRIGGER jid_assign BEFORE INSERT ON jobs FOR EACH ROW WHEN (NEW.jid IS NULL)
    EXECUTE FUNCTION jid_assign();
CREATE OR REPLACE FUNCTION array_lock(id bigint) RETURNS void LANGUAGE sql SET search_path FROM CURRENT AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || ':array:' || id, 0))
$$;
"#,
    // 7: what a queue without a job-file directory keeps in the database instead.
    IN_DATABASE_SQL,
    // 8: dependency work left for later transactions (see `deps::settle`), and counts
    // kept in linear time however many rows a statement changes.
    concat!(dep_work_sql!(), job_counts_changed_sql!()),
    // 9: a cascade's batches do the dependency triggers' work set-based.
    concat!(
        "DROP TRIGGER deps_met ON jobs; DROP TRIGGER dep_note ON jobs;",
        dep_triggers_v9_sql!()
    ),
    // 10: what each run used (recorded with its end).
    "ALTER TABLE jobs ADD COLUMN cpu_user double precision, ADD COLUMN cpu_system double precision, \
     ADD COLUMN max_rss bigint;",
    // 11: the bytes each run read and wrote.
    "ALTER TABLE jobs ADD COLUMN read_bytes bigint, ADD COLUMN write_bytes bigint;",
    // 12: the dependency triggers fire only for jobs someone depends on.
    concat!(
        "ALTER TABLE jobs ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;\n",
        "UPDATE jobs SET has_dependents = true WHERE jid IN (SELECT dep FROM deps);\n",
        has_dependents_sql!(),
        "DROP TRIGGER deps_met ON jobs; DROP TRIGGER dep_note ON jobs;",
        dep_triggers_sql!()
    ),
    // 13: start journals unlogged, each with its mark.
    UNLOGGED_JOURNALS_SQL,
];

/// Start journals cost no WAL (a start's line is one unlogged insert, its commit flushes
/// nothing): a journal must be durable against its feeder's host, which the server's
/// memory is, not against the server. A server crash empties unlogged tables, marks
/// with lines, and an unmarked journal proves nothing (see `journal_begin` in
/// `postgres/in_database.sql`). Lines written before this schema have no mark: they
/// prove nothing either, erring towards "may have run".
const UNLOGGED_JOURNALS_SQL: &str = r#"
ALTER TABLE starts SET UNLOGGED;
CREATE UNLOGGED TABLE journals (
    feeder text PRIMARY KEY,
    written timestamptz NOT NULL DEFAULT now()
);
"#;

/// The tables of a queue that keeps no job-file directory (`in_database`): heartbeats
/// stamped with the server's clock, start journals as rows, and job files in chunks.
/// A job's files go with it when it is deleted (one statement-level trigger).
const IN_DATABASE_SQL: &str = r#"
CREATE TABLE hosts (host text PRIMARY KEY, beat timestamptz NOT NULL, info text NOT NULL);
CREATE TABLE starts (
    feeder text NOT NULL,
    line text NOT NULL,
    written timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX starts_feeder ON starts (feeder);
CREATE TABLE job_files (
    jid bigint NOT NULL,
    stream text NOT NULL,
    claim text NOT NULL DEFAULT '',
    seq integer NOT NULL,
    bytes bytea NOT NULL,
    written timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (jid, stream, claim, seq)
);
CREATE FUNCTION job_files_deleted() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM job_files WHERE jid IN (SELECT jid FROM old_rows);
    RETURN NULL;
END $$;
CREATE TRIGGER job_files_deleted AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_files_deleted();
"#;

/// The schema of a PostgreSQL queue, in its own schema `rq_<name>` (the caller created it
/// and put it first on the search path), at `SCHEMA_VERSION`. The same tables and columns
/// as the SQLite schema at its version 5 (integers are `bigint`, reals `double precision`, so values
/// cross the boundary unchanged), with these differences:
/// - `jid` comes from a sequence (never reused): its default, or a trigger when a row
///   gives NULL, as SQLite's AUTOINCREMENT does;
/// - `job_counts` is a view: the counts folded so far plus deltas that statement-level
///   triggers append (one row per state a statement changed), so concurrent claims never
///   wait on a shared counter row; `fold_counts()` folds the deltas in;
/// - the dependency triggers are PL/pgSQL; the ones that note failures for `deps::settle`
///   write to the session's temporary tables (made by `SESSION_SQL`) when they exist;
///   they fire only for jobs with `has_dependents` (a column SQLite's schema has not:
///   its triggers cost little, being in-process).
/// - start journals (rows in `starts`, marked in `journals`) are unlogged tables: a
///   journal file on SQLite is synced to the file server, a row here is kept in the
///   database server's memory (see `UNLOGGED_JOURNALS_SQL`).
pub fn create_sql() -> String {
    r#"
CREATE TABLE meta (key text PRIMARY KEY, value text);
CREATE TABLE attributes (key text PRIMARY KEY, value text);
CREATE SEQUENCE jobs_jid_seq;
CREATE TABLE jobs (
    jid          bigint PRIMARY KEY DEFAULT nextval('jobs_jid_seq'),
    priority     bigint NOT NULL DEFAULT 0,
    state        text NOT NULL CHECK (state IN ('pending','holding','running','finished','dead','waiting','cancelled')),
    submitted    text NOT NULL,
    started      text,
    finished     text,
    elapsed      double precision,
    submitter    text NOT NULL,
    runner       text,
    stdin        text,
    stdout       text,
    stderr       text,
    data         text,
    pid          bigint,
    exit_status  bigint,
    tag          text,
    restartable  bigint NOT NULL DEFAULT 0 CHECK (restartable IN (0,1)),
    command      text NOT NULL,
    hosts        text,
    cwd          text,
    signal       text,
    attempts     bigint NOT NULL DEFAULT 0,
    claim        text,
    feeder       text,
    process      text,
    timeout      double precision,
    timed_out    bigint NOT NULL DEFAULT 0,
    retries      bigint NOT NULL DEFAULT 0,
    retry_delay  double precision,
    retried      bigint NOT NULL DEFAULT 0,
    not_before   text,
    kill_signal  text,
    reclaimed_by text,
    reclaimed_at text,
    "user"       text,
    name         text,
    after        text,
    after_any    text,
    waiting_on   bigint NOT NULL DEFAULT 0,
    reason       text,
    array_id     bigint,
    array_index  bigint,
    array_limit  bigint,
    env          text,
    cpus         bigint NOT NULL DEFAULT 1,
    mem          bigint NOT NULL DEFAULT 0,
    gpus         bigint NOT NULL DEFAULT 0,
    gpu_ids      text,
    cpu_user     double precision,
    cpu_system   double precision,
    max_rss      bigint,
    read_bytes   bigint,
    write_bytes  bigint,
    has_dependents boolean NOT NULL DEFAULT false
);
CREATE INDEX jobs_claim_order ON jobs (state, priority DESC, submitted, jid);
CREATE INDEX jobs_finished_elapsed ON jobs (elapsed, exit_status) WHERE state = 'finished';
CREATE INDEX jobs_ended_at ON jobs (finished) WHERE state IN ('finished', 'dead');
CREATE INDEX jobs_tag ON jobs (tag, state) WHERE tag IS NOT NULL;
CREATE INDEX jobs_array ON jobs (array_id, state, array_index) WHERE array_id IS NOT NULL;
CREATE INDEX jobs_needs ON jobs (state, cpus, gpus, mem) WHERE cpus > 1 OR gpus > 0 OR mem > 0;
CREATE TABLE deps (
    dep  bigint NOT NULL,
    job  bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('ok', 'any')),
    met  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (dep, job)
);
CREATE INDEX deps_job ON deps (job);

CREATE FUNCTION jid_assign() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.jid IS NULL THEN
        NEW.jid := nextval('jobs_jid_seq');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER jid_assign BEFORE INSERT ON jobs FOR EACH ROW WHEN (NEW.jid IS NULL)
    EXECUTE FUNCTION jid_assign();

CREATE TABLE job_counts_folded (
    state       text PRIMARY KEY,
    n           bigint NOT NULL DEFAULT 0,
    elapsed_n   bigint NOT NULL DEFAULT 0,
    elapsed_sum double precision NOT NULL DEFAULT 0,
    ok          bigint NOT NULL DEFAULT 0
);
INSERT INTO job_counts_folded (state) VALUES ('pending'), ('holding'), ('running'),
    ('finished'), ('dead'), ('waiting'), ('cancelled');
CREATE TABLE job_counts_delta (
    state       text NOT NULL,
    n           bigint NOT NULL,
    elapsed_n   bigint NOT NULL,
    elapsed_sum double precision NOT NULL,
    ok          bigint NOT NULL
);
CREATE VIEW job_counts AS
    SELECT state, CAST(sum(n) AS bigint) AS n, CAST(sum(elapsed_n) AS bigint) AS elapsed_n,
           CAST(sum(elapsed_sum) AS double precision) AS elapsed_sum, CAST(sum(ok) AS bigint) AS ok
    FROM (SELECT * FROM job_counts_folded UNION ALL SELECT * FROM job_counts_delta) c
    GROUP BY state;
CREATE FUNCTION fold_counts() RETURNS void LANGUAGE sql SET search_path FROM CURRENT AS $$
    WITH gone AS (DELETE FROM job_counts_delta RETURNING *),
    sums AS (SELECT state, sum(n) AS n, sum(elapsed_n) AS elapsed_n,
                    sum(elapsed_sum) AS elapsed_sum, sum(ok) AS ok FROM gone GROUP BY state)
    UPDATE job_counts_folded f SET n = f.n + s.n, elapsed_n = f.elapsed_n + s.elapsed_n,
        elapsed_sum = f.elapsed_sum + s.elapsed_sum, ok = f.ok + s.ok
    FROM sums s WHERE f.state = s.state;
$$;
"#
    .to_string()
        + JOB_COUNTS_CHANGED
        + r#"
CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_changed();
CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_changed();
CREATE TRIGGER job_counts_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_changed();

CREATE FUNCTION max_attempts() RETURNS bigint LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT coalesce((SELECT CAST(value AS bigint) FROM attributes WHERE key = 'max_attempts'), 3)
$$;
-- Does a job's host list allow `host`? (host::allowed: an entry equals the name or its
-- short name, ignoring case.)
CREATE FUNCTION rq_host_ok(hosts text, host text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT hosts IS NULL OR EXISTS (
        SELECT 1 FROM unnest(string_to_array(hosts, ',')) AS h(name)
        WHERE btrim(h.name) <> ''
          AND (lower(btrim(h.name)) = lower(host)
               OR lower(btrim(h.name)) = lower(split_part(host, '.', 1))
               OR lower(split_part(btrim(h.name), '.', 1)) = lower(host)))
$$;
-- Why no live feeder can run a job that needs these (store::fit::unfit_reason), from the
-- largest live feeder's capacity this session was told (rq.largest_*); NULL otherwise.
CREATE FUNCTION rq_unfit(cpus bigint, mem bigint, gpus bigint) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    big_cpus bigint := nullif(current_setting('rq.largest_cpus', true), '')::bigint;
    big_mem bigint := nullif(current_setting('rq.largest_mem', true), '')::bigint;
    big_gpus bigint := nullif(current_setting('rq.largest_gpus', true), '')::bigint;
BEGIN
    IF big_cpus IS NULL THEN
        RETURN NULL;
    ELSIF gpus > big_gpus THEN
        RETURN format('needs %s %s; the largest feeder has %s', gpus,
                      CASE WHEN gpus = 1 THEN 'GPU' ELSE 'GPUs' END, big_gpus);
    ELSIF cpus > big_cpus THEN
        RETURN format('needs %s %s; the largest feeder has %s', cpus,
                      CASE WHEN cpus = 1 THEN 'CPU' ELSE 'CPUs' END, big_cpus);
    ELSIF mem > big_mem THEN
        RETURN format('needs %s MiB of memory; the largest feeder has %s MiB', mem >> 20, big_mem >> 20);
    END IF;
    RETURN NULL;
END $$;

-- Dependencies (see the SQLite schema's triggers of the same names).
CREATE FUNCTION deps_met() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.state IN ('finished', 'cancelled')
       OR (NEW.state = 'dead' AND (NEW.restartable = 0 OR NEW.attempts >= max_attempts())) THEN
        UPDATE jobs SET waiting_on = waiting_on - 1
        WHERE jid IN (SELECT job FROM deps WHERE dep = NEW.jid AND met = 0
                      AND (kind = 'any' OR (NEW.state = 'finished' AND NEW.exit_status IS NOT DISTINCT FROM 0)));
        UPDATE deps SET met = 1 WHERE dep = NEW.jid AND met = 0
            AND (kind = 'any' OR (NEW.state = 'finished' AND NEW.exit_status IS NOT DISTINCT FROM 0));
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION array_active(id bigint) RETURNS bigint LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT count(*) FROM jobs a WHERE a.array_id = id
      AND (a.state IN ('pending', 'running')
           OR (a.state = 'dead' AND a.restartable = 1 AND a.attempts < max_attempts()))
$$;
-- Jobs of an array are let out (waiting -> pending) by whoever ends one of them, and
-- ends run side by side: the array's own lock (to the end of the transaction) makes
-- each count what the others let out, so the limit holds. PL/pgSQL statements read
-- the latest committed rows, so the count after the lock is current. The key is the
-- queue's and the array's: queues sharing a database never wait on each other's.
CREATE FUNCTION array_lock(id bigint) RETURNS void LANGUAGE sql SET search_path FROM CURRENT AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || ':array:' || id, 0))
$$;
CREATE FUNCTION deps_released() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.array_limit IS NOT NULL THEN
        PERFORM array_lock(NEW.array_id);
    END IF;
    IF NEW.array_limit IS NULL OR NEW.array_limit > array_active(NEW.array_id) THEN
        UPDATE jobs SET state = 'pending' WHERE jid = NEW.jid AND state = 'waiting';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER deps_released AFTER UPDATE OF waiting_on ON jobs FOR EACH ROW
    WHEN (NEW.state = 'waiting' AND NEW.waiting_on <= 0)
    EXECUTE FUNCTION deps_released();

CREATE FUNCTION array_next() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NOT (NEW.state = 'dead' AND NEW.restartable = 1 AND NEW.attempts < max_attempts()) THEN
        PERFORM array_lock(NEW.array_id);
        UPDATE jobs SET state = 'pending' WHERE jid IN (
            SELECT jid FROM jobs WHERE array_id = NEW.array_id AND state = 'waiting' AND waiting_on <= 0
            ORDER BY array_index
            LIMIT greatest(0, NEW.array_limit - array_active(NEW.array_id)))
          AND state = 'waiting';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER array_next AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.array_limit IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state NOT IN ('pending', 'running'))
    EXECUTE FUNCTION array_next();

CREATE FUNCTION deps_deleted() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM deps WHERE job IN (SELECT jid FROM old_rows);
    RETURN NULL;
END $$;
CREATE TRIGGER deps_deleted AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION deps_deleted();

-- What deps::settle carries out before commit, noted in the session's temporary tables
-- (rq's connections make them; other sessions' changes are not noted, as on SQLite).
CREATE FUNCTION dep_note() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF (NEW.state = 'cancelled' OR (NEW.state = 'finished' AND NEW.exit_status IS DISTINCT FROM 0)
        OR (NEW.state = 'dead' AND (NEW.restartable = 0 OR NEW.attempts >= max_attempts())))
       AND to_regclass('pg_temp.dep_failures') IS NOT NULL
       AND EXISTS (SELECT 1 FROM deps WHERE dep = NEW.jid AND kind = 'ok') THEN
        INSERT INTO pg_temp.dep_failures (jid, reason) VALUES (NEW.jid, CASE
            WHEN NEW.state = 'cancelled' THEN coalesce(NEW.reason, 'dependency ' || NEW.jid || ' was cancelled')
            WHEN NEW.state = 'finished' AND NEW.exit_status IS NOT NULL
                THEN 'dependency ' || NEW.jid || ' exited ' || NEW.exit_status
            WHEN NEW.signal IS NOT NULL THEN 'dependency ' || NEW.jid || ' was killed by ' || NEW.signal
            ELSE 'dependency ' || NEW.jid || ' died' END);
    END IF;
    IF OLD.state = 'waiting' AND NEW.state = 'pending'
       AND to_regclass('pg_temp.dep_released') IS NOT NULL THEN
        INSERT INTO pg_temp.dep_released (jid) VALUES (NEW.jid);
    END IF;
    IF OLD.state IN ('finished', 'dead', 'cancelled')
       AND NEW.state IN ('pending', 'holding', 'waiting', 'running')
       AND to_regclass('pg_temp.dep_rearms') IS NOT NULL
       AND EXISTS (SELECT 1 FROM deps WHERE dep = NEW.jid) THEN
        INSERT INTO pg_temp.dep_rearms (jid) VALUES (NEW.jid);
    END IF;
    RETURN NULL;
END $$;
"#
        + dep_triggers_sql!()
        + has_dependents_sql!()
        + IN_DATABASE_SQL
        + DEP_WORK_SQL
        + UNLOGGED_JOURNALS_SQL
}

/// What rq's schema makes (kind, name), read off its own statements (every version's):
/// what `foreign_objects` compares a queue's schema with. Every table's primary key index
/// (`TABLE_pkey`) counts as rq's.
pub fn own_objects() -> &'static std::collections::HashSet<(String, String)> {
    static OWN: std::sync::OnceLock<std::collections::HashSet<(String, String)>> =
        std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let made = regex::Regex::new(
            r"(?i)CREATE\s+(?:OR\s+REPLACE\s+)?(?:UNIQUE\s+|UNLOGGED\s+)?(FUNCTION|TRIGGER|TABLE|VIEW|INDEX|SEQUENCE)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)",
        )
        .expect("a valid pattern");
        let mut own = std::collections::HashSet::new();
        let all = std::iter::once(create_sql()).chain(MIGRATIONS.iter().map(|m| m.to_string()));
        for sql in all {
            for found in made.captures_iter(&sql) {
                let kind = found[1].to_ascii_lowercase();
                let name = found[2].to_string();
                if kind == "table" {
                    own.insert(("index".to_string(), format!("{name}_pkey")));
                }
                own.insert((kind, name));
            }
        }
        own
    })
}

/// Run on each read-write connection: the temporary tables `dep_note` writes to.
pub const SESSION_SQL: &str = "
CREATE TEMP TABLE IF NOT EXISTS dep_failures (jid bigint NOT NULL, reason text NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS dep_rearms (jid bigint NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS dep_released (jid bigint NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS dep_batch (jid bigint PRIMARY KEY, reason text, skip int NOT NULL DEFAULT 0);
";
