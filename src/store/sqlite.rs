//! Queue storage: the SQLite database of a queue, opened with settings that are safe on
//! NFS, and the transaction discipline every command follows.
//!
//! Rules (see ARCHITECTURE.md):
//! - rollback journal (PERSIST), never WAL; `synchronous=FULL`; no mmap; temp store in memory;
//! - every write is one short `BEGIN IMMEDIATE` transaction, retried as a whole on a fresh
//!   connection after a transient error (busy, I/O, protocol);
//! - waiting for the lock is a jittered exponential back-off, announced on stderr after a
//!   few seconds;
//! - readers fetch, end the transaction, then print.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

use crate::error::{Error, Result};
use crate::lock::{HolderNote, JournalFence};
use crate::store::Tx;

/// A parameter as rusqlite binds it: the store's value, borrowed.
pub struct Bind<'a>(&'a dyn crate::store::ToSql);

impl rusqlite::ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use crate::store::ValueRef as V;
        use rusqlite::types::ValueRef as R;
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            match self.0.to_sql() {
                V::Null => R::Null,
                V::Integer(i) => R::Integer(i),
                V::Real(f) => R::Real(f),
                V::Text(t) => R::Text(t),
                V::Blob(b) => R::Blob(b),
            },
        ))
    }
}

/// A statement's parameters as rusqlite binds them.
pub fn bind<'a>(params: crate::store::Params<'a>) -> rusqlite::ParamsFromIter<Vec<Bind<'a>>> {
    rusqlite::params_from_iter(params.iter().map(|p| Bind(*p)).collect::<Vec<_>>())
}

/// A value as rusqlite read it, as the store's.
pub fn value_of(value: rusqlite::types::ValueRef<'_>) -> crate::store::ValueRef<'_> {
    use crate::store::ValueRef as V;
    use rusqlite::types::ValueRef as R;
    match value {
        R::Null => V::Null,
        R::Integer(i) => V::Integer(i),
        R::Real(f) => V::Real(f),
        R::Text(t) => V::Text(t),
        R::Blob(b) => V::Blob(b),
    }
}

/// `PRAGMA application_id` of an rq queue database ("rq2\0").
pub const APPLICATION_ID: i64 = 0x7271_3200;
/// The schema version this rq writes and understands.
pub const SCHEMA_VERSION: i64 = 9;

/// The schema as first released (version 1); `MIGRATIONS` bring it to `SCHEMA_VERSION`.
/// Also written, with comments, to `Q/db.schema`.
pub const SCHEMA_SQL: &str = r#"
CREATE TABLE jobs (
    jid          INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused, even after delete/rotate
    priority     INTEGER NOT NULL DEFAULT 0,        -- higher runs first; any integer
    state        TEXT NOT NULL CHECK (state IN ('pending','holding','running','finished','dead')),
    submitted    TEXT NOT NULL,                     -- timestamp (see below)
    started      TEXT,                              -- timestamp the current/last run started
    finished     TEXT,                              -- timestamp the last run ended
    elapsed      REAL,                              -- seconds the last run took
    submitter    TEXT NOT NULL,                     -- host that submitted the job
    runner       TEXT,                              -- host running / that ran the job
    stdin        TEXT,                              -- job's stdin file, relative to the queue
    stdout       TEXT,                              -- captured stdout, relative to the queue
    stderr       TEXT,                              -- captured stderr, relative to the queue
    data         TEXT,                              -- job's data directory, relative to the queue
    pid          INTEGER,                           -- pid of the job's shell on the runner
    exit_status  INTEGER,                           -- exit code; NULL if killed by a signal
    tag          TEXT,                              -- free-form label
    restartable  INTEGER NOT NULL DEFAULT 0 CHECK (restartable IN (0,1)),
    command      TEXT NOT NULL,                     -- the shell command
    -- rq additions (after the original 18 fields)
    hosts        TEXT,                              -- comma-separated hosts allowed to run it (--runner); NULL = any
    cwd          TEXT,                              -- directory it was submitted from; it runs there
    signal       TEXT,                              -- signal that ended the last run (e.g. KILL)
    attempts     INTEGER NOT NULL DEFAULT 0,        -- runs started so far
    claim        TEXT,                              -- fencing token of the current run
    feeder       TEXT,                              -- id of the feeder that holds/held the claim
    process      TEXT                               -- boot_id/start time of the job's process (pid-reuse guard)
);
-- The claim order: best priority first, then oldest.
CREATE INDEX jobs_claim_order ON jobs (state, priority DESC, submitted, jid);
CREATE INDEX jobs_runner ON jobs (runner, state);
CREATE INDEX jobs_tag ON jobs (tag);
CREATE TABLE attributes (key TEXT PRIMARY KEY, value TEXT);            -- rq Q configure
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);                  -- schema version, creation
"#;

/// `MIGRATIONS[i]` turns schema version `i + 1` into `i + 2`. New fields are only ever
/// appended, so the original's 18 fields keep their order.
pub const MIGRATIONS: &[&str] = &[
    // 2: timeouts, retries, kill requests, reclaim records.
    r#"
ALTER TABLE jobs ADD COLUMN timeout REAL;                      -- seconds before TERM (then KILL)
ALTER TABLE jobs ADD COLUMN timed_out INTEGER NOT NULL DEFAULT 0; -- 1 if the last run hit its timeout
ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;   -- re-queue a failed run up to this often
ALTER TABLE jobs ADD COLUMN retry_delay REAL;                  -- seconds before the first retry (doubling)
ALTER TABLE jobs ADD COLUMN retried INTEGER NOT NULL DEFAULT 0;   -- failed runs re-queued so far
ALTER TABLE jobs ADD COLUMN not_before TEXT;                   -- timestamp: not claimed before (retry delay)
ALTER TABLE jobs ADD COLUMN kill_signal TEXT;                  -- rq kill: signal its runner should send
ALTER TABLE jobs ADD COLUMN reclaimed_by TEXT;                 -- host that took the job from a dead host
ALTER TABLE jobs ADD COLUMN reclaimed_at TEXT;                 -- when (reclaimer's clock)
-- Running jobs are few: the claim index finds them by state; one index less to update.
DROP INDEX IF EXISTS jobs_runner;
-- status on millions of jobs: finished jobs by run time (min/max/avg, exit counts) and ended
-- jobs by end time. Partial indexes, so claiming and running a job never touches them.
CREATE INDEX IF NOT EXISTS jobs_finished_elapsed ON jobs (elapsed, exit_status) WHERE state = 'finished';
CREATE INDEX IF NOT EXISTS jobs_ended_at ON jobs (finished) WHERE state IN ('finished', 'dead');
"#,
    // 3: counts kept by triggers, so status answers at once on millions of jobs; the tag
    // index only for tagged jobs (one index less to update per untagged job).
    r#"
CREATE TABLE job_counts (
    state        TEXT PRIMARY KEY,               -- one row per state
    n            INTEGER NOT NULL DEFAULT 0,     -- jobs in this state
    elapsed_n    INTEGER NOT NULL DEFAULT 0,     -- of them with a run time (elapsed)
    elapsed_sum  REAL NOT NULL DEFAULT 0,        -- their run times, summed
    ok           INTEGER NOT NULL DEFAULT 0      -- of them with exit status 0
) WITHOUT ROWID;
INSERT INTO job_counts (state) VALUES ('pending'), ('holding'), ('running'), ('finished'), ('dead');
UPDATE job_counts SET (n, elapsed_n, elapsed_sum, ok) = (
    SELECT count(*), count(elapsed), coalesce(sum(elapsed), 0), count(*) FILTER (WHERE exit_status = 0)
    FROM jobs WHERE jobs.state = job_counts.state);
-- Every insert, delete and change of state, run time or exit status keeps the counts, in
-- the same transaction, whatever wrote it (rq, or SQL through rq execute or sqlite3).
-- (A new job has no run time nor exit status, unless SQL put them there: the common
-- insert updates one column.)
CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN
    UPDATE job_counts SET n = n + 1 WHERE state = NEW.state;
END;
CREATE TRIGGER job_counts_insert_ended AFTER INSERT ON jobs
WHEN NEW.elapsed IS NOT NULL OR NEW.exit_status IS NOT NULL
BEGIN
    UPDATE job_counts SET elapsed_n = elapsed_n + (NEW.elapsed IS NOT NULL),
        elapsed_sum = elapsed_sum + coalesce(NEW.elapsed, 0), ok = ok + (NEW.exit_status IS 0)
    WHERE state = NEW.state;
END;
CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1, elapsed_n = elapsed_n - (OLD.elapsed IS NOT NULL),
        elapsed_sum = elapsed_sum - coalesce(OLD.elapsed, 0), ok = ok - (OLD.exit_status IS 0)
    WHERE state = OLD.state;
END;
CREATE TRIGGER job_counts_update AFTER UPDATE OF state, elapsed, exit_status ON jobs
WHEN OLD.state IS NOT NEW.state OR OLD.elapsed IS NOT NEW.elapsed OR OLD.exit_status IS NOT NEW.exit_status
BEGIN
    UPDATE job_counts SET n = n - 1, elapsed_n = elapsed_n - (OLD.elapsed IS NOT NULL),
        elapsed_sum = elapsed_sum - coalesce(OLD.elapsed, 0), ok = ok - (OLD.exit_status IS 0)
    WHERE state = OLD.state;
    UPDATE job_counts SET n = n + 1, elapsed_n = elapsed_n + (NEW.elapsed IS NOT NULL),
        elapsed_sum = elapsed_sum + coalesce(NEW.elapsed, 0), ok = ok + (NEW.exit_status IS 0)
    WHERE state = NEW.state;
END;
DROP INDEX IF EXISTS jobs_tag;
CREATE INDEX jobs_tag ON jobs (tag) WHERE tag IS NOT NULL;
"#,
    // 4: workflows. (Before this runs, rq widens the CHECK on `state` to the states
    // 'waiting' and 'cancelled': see `widen_states`.)
    r#"
ALTER TABLE jobs ADD COLUMN user TEXT;          -- login name of the user who submitted it
ALTER TABLE jobs ADD COLUMN name TEXT;          -- its name in the job list it came in (for after:)
ALTER TABLE jobs ADD COLUMN after TEXT;         -- JSON list of jids that must finish with exit 0 first
ALTER TABLE jobs ADD COLUMN after_any TEXT;     -- JSON list of jids that must have ended first
ALTER TABLE jobs ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0; -- of those, how many have not
ALTER TABLE jobs ADD COLUMN reason TEXT;        -- why it was cancelled
ALTER TABLE jobs ADD COLUMN array_id INTEGER;   -- jid of the first job of its array
ALTER TABLE jobs ADD COLUMN array_index INTEGER; -- its index in the array
ALTER TABLE jobs ADD COLUMN array_limit INTEGER; -- at most this many of the array run at once
ALTER TABLE jobs ADD COLUMN env TEXT;           -- JSON object: environment given at submit
-- Who waits for whom: one row per (job it waits for, waiting job). `met` once the wait is
-- over (kind 'ok': finished with exit 0; kind 'any': ended, whatever the result).
CREATE TABLE deps (
    dep          INTEGER NOT NULL,               -- the job waited for
    job          INTEGER NOT NULL,               -- the waiting job
    kind         TEXT NOT NULL CHECK (kind IN ('ok', 'any')),
    met          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dep, job)
) WITHOUT ROWID;
CREATE INDEX deps_job ON deps (job);
CREATE INDEX jobs_array ON jobs (array_id, state, array_index) WHERE array_id IS NOT NULL;
INSERT INTO job_counts (state) VALUES ('waiting'), ('cancelled');
-- A job ends (finished; cancelled; dead for good: not restartable, or no attempts left,
-- max_attempts being a setting): the waits on it that this end satisfies are met, in the
-- same transaction, whoever recorded the end.
CREATE TRIGGER deps_met AFTER UPDATE OF state ON jobs
WHEN OLD.state IS NOT NEW.state
 AND (NEW.state IN ('finished', 'cancelled')
      OR (NEW.state = 'dead' AND (NEW.restartable = 0 OR NEW.attempts >= coalesce((SELECT CAST(value AS INTEGER) FROM attributes WHERE key = 'max_attempts'), 3))))
BEGIN
    UPDATE jobs SET waiting_on = waiting_on - 1
    WHERE jid IN (SELECT job FROM deps WHERE dep = NEW.jid AND met = 0
                  AND (kind = 'any' OR (NEW.state = 'finished' AND NEW.exit_status IS 0)));
    UPDATE deps SET met = 1 WHERE dep = NEW.jid AND met = 0
        AND (kind = 'any' OR (NEW.state = 'finished' AND NEW.exit_status IS 0));
END;
-- The last wait is over: the job joins the claim path (unless its array is at its limit).
CREATE TRIGGER deps_released AFTER UPDATE OF waiting_on ON jobs
WHEN NEW.state = 'waiting' AND NEW.waiting_on <= 0
 AND (NEW.array_limit IS NULL OR NEW.array_limit > (SELECT count(*) FROM jobs a
      WHERE a.array_id = NEW.array_id
        AND (a.state IN ('pending', 'running')
             OR (a.state = 'dead' AND a.restartable = 1 AND a.attempts < coalesce((SELECT CAST(value AS INTEGER) FROM attributes WHERE key = 'max_attempts'), 3)))))
BEGIN
    UPDATE jobs SET state = 'pending' WHERE jid = NEW.jid;
END;
-- A job of an array with a limit ends: the next ones of the array (by index) whose waits
-- are over take its place. So at most `array_limit` of an array are ever pending or running.
CREATE TRIGGER array_next AFTER UPDATE OF state ON jobs
WHEN NEW.array_limit IS NOT NULL AND OLD.state IS NOT NEW.state
 AND NEW.state NOT IN ('pending', 'running')
 AND NOT (NEW.state = 'dead' AND NEW.restartable = 1 AND NEW.attempts < coalesce((SELECT CAST(value AS INTEGER) FROM attributes WHERE key = 'max_attempts'), 3))
BEGIN
    UPDATE jobs SET state = 'pending' WHERE jid IN (
        SELECT jid FROM jobs WHERE array_id = NEW.array_id AND state = 'waiting' AND waiting_on <= 0
        ORDER BY array_index
        LIMIT max(0, NEW.array_limit - (SELECT count(*) FROM jobs a WHERE a.array_id = NEW.array_id
              AND (a.state IN ('pending', 'running')
                   OR (a.state = 'dead' AND a.restartable = 1 AND a.attempts < coalesce((SELECT CAST(value AS INTEGER) FROM attributes WHERE key = 'max_attempts'), 3))))));
END;
-- A deleted job waits for nothing any more.
CREATE TRIGGER deps_deleted AFTER DELETE ON jobs BEGIN
    DELETE FROM deps WHERE job = OLD.jid;
END;
"#,
    // 5: what a job needs of its host; a feeder claims only what fits.
    r#"
ALTER TABLE jobs ADD COLUMN cpus INTEGER NOT NULL DEFAULT 1;  -- CPUs it needs
ALTER TABLE jobs ADD COLUMN mem INTEGER NOT NULL DEFAULT 0;   -- bytes of memory it needs (0: not counted)
ALTER TABLE jobs ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;  -- GPUs it needs
ALTER TABLE jobs ADD COLUMN gpu_ids TEXT;                     -- the devices its run was given (e.g. 0,1)
-- Jobs that need more than one CPU, any memory or GPUs (few): to tell at once which
-- ones no live feeder can run. One-CPU jobs are not in it.
CREATE INDEX jobs_needs ON jobs (state, cpus, gpus, mem) WHERE cpus > 1 OR gpus > 0 OR mem > 0;
-- A claim counts the running jobs of each tag with a limit (limit.TAG): by tag and state.
DROP INDEX IF EXISTS jobs_tag;
CREATE INDEX jobs_tag ON jobs (tag, state) WHERE tag IS NOT NULL;
"#,
    // 6: dependency work left for later transactions (see `settle::settle`).
    DEP_WORK_SQL,
    // 7: `deps_met` runs its two statements only when a wait is met: most ends meet none
    // (no job waits for them, or a cancellation and only `after` waits), and the
    // statements cost ~6 us a row (a third of a cascade's time on a long chain).
    r#"
DROP TRIGGER deps_met;
CREATE TRIGGER deps_met AFTER UPDATE OF state ON jobs
WHEN OLD.state IS NOT NEW.state
 AND (NEW.state IN ('finished', 'cancelled')
      OR (NEW.state = 'dead' AND (NEW.restartable = 0 OR NEW.attempts >= coalesce((SELECT CAST(value AS INTEGER) FROM attributes WHERE key = 'max_attempts'), 3))))
 AND EXISTS (SELECT 1 FROM deps WHERE dep = NEW.jid AND met = 0
             AND (kind = 'any' OR (NEW.state = 'finished' AND NEW.exit_status IS 0)))
BEGIN
    UPDATE jobs SET waiting_on = waiting_on - 1
    WHERE jid IN (SELECT job FROM deps WHERE dep = NEW.jid AND met = 0
                  AND (kind = 'any' OR (NEW.state = 'finished' AND NEW.exit_status IS 0)));
    UPDATE deps SET met = 1 WHERE dep = NEW.jid AND met = 0
        AND (kind = 'any' OR (NEW.state = 'finished' AND NEW.exit_status IS 0));
END;
"#,
    // 8: what each run used (recorded with its end).
    r#"
ALTER TABLE jobs ADD COLUMN cpu_user REAL;    -- seconds of user CPU the last run took (its processes and their waited-for children)
ALTER TABLE jobs ADD COLUMN cpu_system REAL;  -- seconds of system CPU likewise
ALTER TABLE jobs ADD COLUMN max_rss INTEGER;  -- bytes: the peak resident memory of the last run (see README, "What jobs use")
"#,
    // 9: the bytes each run read and wrote.
    r#"
ALTER TABLE jobs ADD COLUMN read_bytes INTEGER;   -- bytes the last run read (read calls: files, pipes, network filesystems)
ALTER TABLE jobs ADD COLUMN write_bytes INTEGER;  -- bytes the last run wrote likewise
"#,
];

/// The work list of dependency changes not done yet: each row a job whose `after`
/// dependents are still to be cancelled (`cancel`, with the reason they get) or to wait
/// again for its new run (`rearm`). A long chain is done a batch per write transaction,
/// so it never holds the queue's lock for long; the writer that started it goes on, and
/// feeders' ticks finish what a stopped writer left.
pub const DEP_WORK_SQL: &str = r#"
CREATE TABLE dep_work (
    jid          INTEGER NOT NULL,               -- the job whose dependents are concerned
    kind         TEXT NOT NULL CHECK (kind IN ('cancel', 'rearm')),
    reason       TEXT,                           -- cancel: the reason its dependents get
    PRIMARY KEY (jid, kind)
) WITHOUT ROWID;
"#;

/// The CHECK on `jobs.state` as written by schema versions 1 to 3, and as widened by 4.
const STATES_CHECK_V1: &str = "CHECK (state IN ('pending','holding','running','finished','dead'))";
const STATES_CHECK_V4: &str =
    "CHECK (state IN ('pending','holding','running','finished','dead','waiting','cancelled'))";

/// Let `jobs.state` hold the states of schema 4. SQLite cannot alter a CHECK; a CHECK that
/// only accepts more values changes nothing stored, so SQLite's documented procedure for
/// such changes applies (ALTER TABLE, "other kinds of table schema changes"): rewrite the
/// table's SQL in `sqlite_schema` and bump the schema version, in the migration's
/// transaction. Instant on a queue of any size, where copying the table would not be.
fn widen_states(tx: &Transaction<'_>) -> Result<()> {
    let sql: String = tx.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'jobs'",
        [],
        |r| r.get(0),
    )?;
    if sql.contains(STATES_CHECK_V4) {
        return Ok(());
    }
    if !sql.contains(STATES_CHECK_V1) {
        return Err(Error::Conflict(
            "cannot upgrade this queue: its jobs table is not the one rq made (the CHECK on \
             state was changed)"
                .into(),
        ));
    }
    let version: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    tx.execute_batch("PRAGMA writable_schema = ON")?;
    let changed = tx.execute(
        "UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = 'jobs'",
        [sql.replace(STATES_CHECK_V1, STATES_CHECK_V4)],
    );
    tx.execute_batch(&format!("PRAGMA schema_version = {}", version + 1))?;
    tx.execute_batch("PRAGMA writable_schema = OFF")?;
    changed?;
    Ok(())
}

/// Human-readable description written to `Q/db.schema`.
pub fn schema_file_text() -> String {
    format!(
        "-- rq queue database schema, version {SCHEMA_VERSION}\n\
         -- (PRAGMA application_id = {APPLICATION_ID}, PRAGMA user_version = schema version)\n\
         --\n\
         -- Timestamps (submitted, started, finished) are TEXT in UTC, ISO-8601 with\n\
         -- microseconds and a Z suffix, fixed width: 2026-11-27T21:05:03.123456Z.\n\
         -- They sort and compare correctly as text and work with SQLite's date functions,\n\
         -- e.g.  rq Q query \"finished > '2026-11-27'\".\n\
         -- States: pending -> running -> finished | dead; holding jobs never run; waiting\n\
         -- jobs wait for other jobs (table deps) or for their array's limit, and become\n\
         -- pending (or cancelled, when a job they need failed).\n\
         --\n\
         -- Connection settings: journal_mode=PERSIST, synchronous=FULL, mmap_size=0,\n\
         -- temp_store=MEMORY; auto_vacuum=INCREMENTAL (set at creation: deletes give space\n\
         -- back in short steps). Never switch this database to WAL: it is shared over the network.\n\
         {SCHEMA_SQL}\n-- Migrations applied after version 1:\n{}",
        MIGRATIONS.join("\n")
    )
}

/// `Q/damaged`: written when an rq process confirms the database is damaged (one line:
/// when, and what SQLite said); while it exists, writers refuse. `recover` removes it.
pub fn damage_mark(db_path: &Path) -> PathBuf {
    db_path.with_file_name("damaged")
}

/// `PRAGMA quick_check` on a connection of its own: does the file hold a sound database?
fn file_checks_out(db_path: &Path) -> bool {
    let Ok(conn) = Connection::open_with_flags(db_path, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return false;
    };
    let _ = conn.busy_timeout(Duration::from_secs(60));
    conn.query_row("PRAGMA quick_check(1)", [], |r| r.get::<_, String>(0))
        .is_ok_and(|text| text == "ok")
}

/// How a store connection may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// `PRAGMA query_only`: nothing can be written, whatever SQL is run.
    ReadOnly,
}

/// Shared state of the lock-wait announcer.
#[derive(Debug, Default)]
struct WaitNotice {
    announced: AtomicBool,
    full: AtomicBool,
    /// `try_write` is running: the busy handler gives up at once.
    no_wait: AtomicBool,
    /// A write transaction is committing: a wait now is at commit, holding the write
    /// lock (`RESERVED`), for readers or for a lock nobody holds any more (see the busy
    /// handler).
    committing: AtomicBool,
    /// When the wait under way was last announced (each attempt's connection has a
    /// handler of its own; a wait goes on over several).
    last_word: std::sync::Mutex<Option<Instant>>,
    /// Since when this process has waited for the lock (over attempts and connections).
    blocked_since: std::sync::Mutex<Option<Instant>>,
    /// Taking a dead host's lock back (`lock_recovery`) is possible on this filesystem.
    recoverable: bool,
    /// The inode of the database file the current connection has open.
    db_ino: AtomicU64,
    /// When the busy handler last looked at the database file and the lock's holder.
    last_look: std::sync::Mutex<Option<Instant>>,
    /// The busy handler found the database on a new inode: reconnect.
    moved: AtomicBool,
    /// The busy handler judged the lock's holder dead: take the lock back.
    dead_holder: std::sync::Mutex<Option<crate::store::lock_recovery::Evidence>>,
    /// Judge the holder again no sooner than this (another host is taking the lock back,
    /// or our attempt failed).
    judge_after: std::sync::Mutex<Option<Instant>>,
}

impl WaitNotice {
    fn blocked_for(&self) -> Duration {
        let mut since = self.blocked_since.lock().unwrap_or_else(|e| e.into_inner());
        since.get_or_insert_with(Instant::now).elapsed()
    }

    fn not_blocked(&self) {
        *self.blocked_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

pub struct Store {
    db_path: PathBuf,
    access: Access,
    conn: Option<Connection>,
    /// Locks the rollback journal in each write transaction (see `JournalFence`).
    fence: JournalFence,
    /// Says who holds the write lock (see `HolderNote`).
    holder_note: HolderNote,
    notice: Arc<WaitNotice>,
    /// Give up waiting for the lock after this long (None: wait forever).
    pub lock_timeout: Option<Duration>,
    /// Wait for space when the filesystem is full instead of failing (feeders: a job's end
    /// must be recorded once there is room again).
    pub wait_when_full: bool,
    /// The last write left dependency work for later transactions (`settle::settle`).
    pub dep_work_left: bool,
    /// Writes also do dependency work others left (`settle::settle`'s `carry_on`).
    pub carry_on_dep_work: bool,
    /// The transaction's body does more than SQL (`with_lock` runs a command): never run
    /// it again.
    body_has_effects: bool,
}

/// Errors worth retrying the whole transaction for, on a fresh connection.
fn is_transient(err: &rusqlite::Error) -> bool {
    is_moved(err)
        || matches!(
            err.sqlite_error_code(),
            Some(
                ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::FileLockingProtocolFailed
            )
        )
}

/// Errors that say the database file is damaged. Seen on a connection that was open for a
/// while they may instead mean the connection went bad under us: after an NFS client
/// lost its locks (a partition longer than the server's lease), reads on the old file
/// descriptor fail or return garbage until it is reopened. Only a fresh connection's
/// word is taken as damage.
fn is_damage(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

fn is_full(err: &rusqlite::Error) -> bool {
    err.sqlite_error_code() == Some(ErrorCode::DiskFull)
}

/// SQLite found, as it opened the journal, that the database file is no longer the one at
/// its path: the lock was taken back from a dead host (`lock_recovery`).
fn is_moved(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _)
        if e.extended_code == rusqlite::ffi::SQLITE_READONLY_DBMOVED)
}

fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn jitter_sleep(attempt: u32) {
    // 0.25 ms growing by half each time up to 50 ms, each sleep uniformly jittered between
    // 50 % and 150 %: a transaction holds the lock about a millisecond, so a waiter first
    // looks again soon (SQLite's locks are polled, not queued, and a long first sleep both
    // wastes the lock's idle time and lets the last holder win again), while hundreds of
    // waiting hosts still back off to a few polls a second.
    let base = 0.25 * 1.5f64.powi(attempt.min(14) as i32);
    let ms = base.min(50.0) * rand::random_range(0.5..1.5);
    std::thread::sleep(Duration::from_secs_f64(ms / 1000.0));
}

impl Store {
    /// Open the database of an existing queue.
    pub fn open(db_path: &Path, access: Access) -> Result<Store> {
        let recoverable = crate::store::lock_recovery::enabled(db_path.parent().unwrap_or(db_path));
        let mut store = Store {
            db_path: db_path.to_path_buf(),
            access,
            conn: None,
            fence: JournalFence::new(db_path),
            holder_note: HolderNote::new(db_path),
            notice: Arc::new(WaitNotice {
                recoverable,
                ..WaitNotice::default()
            }),
            lock_timeout: crate::time::lock_timeout_from_env()?,
            wait_when_full: false,
            dep_work_left: false,
            carry_on_dep_work: false,
            body_has_effects: false,
        };
        // Damage some process already confirmed (perhaps in pages this one would not
        // read) stops every writer, so nothing is built on it before `recover`.
        if access == Access::ReadWrite
            && let Ok(text) = std::fs::read_to_string(damage_mark(db_path))
        {
            let why = text
                .split_once(' ')
                .map_or(text.trim(), |(_, why)| why.trim());
            return Err(store.corrupt(why.to_string()));
        }
        store.first_connect()?;
        Ok(store)
    }

    /// Connect, waiting for a lock held by another process as a transaction does (each
    /// attempt gives up after 30 s; the next starts afresh) until `lock_timeout`: opening
    /// reads the schema, which a writer holding the lock for longer would otherwise turn
    /// into "database is locked" after 30 s.
    fn first_connect(&mut self) -> Result<()> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let connected = self.connect();
            crate::lock::done_waiting();
            match connected {
                Err(Error::Sql(e)) if is_transient(&e) && crate::lock::interrupted() => {
                    return Err(interrupted_error());
                }
                Err(Error::Sql(e)) if is_transient(&e) => {
                    if self.after_busy() {
                        continue;
                    }
                    if let Some(limit) = self.lock_timeout
                        && started.elapsed() > limit
                    {
                        return Err(self.gave_up(started, &e.to_string()));
                    }
                    attempt += 1;
                    jitter_sleep(attempt);
                }
                other => {
                    self.notice.not_blocked();
                    if other.is_ok() && self.notice.announced.swap(false, Ordering::Relaxed) {
                        crate::note!(
                            "rq: got the queue lock after {:.1}s; continuing",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return other;
                }
            }
        }
    }

    /// After a failed attempt: reconnect at once if the busy handler found the database on
    /// a new inode, or take the lock back if it judged the holder dead (true: try again
    /// now).
    fn after_busy(&mut self) -> bool {
        if self.notice.moved.swap(false, Ordering::Relaxed) {
            self.conn = None;
            self.fence.close();
            crate::note!(
                "rq: {} was put on a new file (the queue's lock was taken back from a dead host); reopened",
                self.db_path.display()
            );
            self.notice.not_blocked();
            return true;
        }
        let dead = self
            .notice
            .dead_holder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(evidence) = dead else {
            return false;
        };
        // No connection of ours may hold the old file's lock while its copy is made.
        self.conn = None;
        self.fence.close();
        let announce = || {
            crate::note!(
                "rq: the queue's lock is held by a process that is gone ({}): taking it back",
                evidence.describe()
            )
        };
        let judge_later = |after: Duration| {
            *self
                .notice
                .judge_after
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + after);
        };
        match crate::store::lock_recovery::recover(&self.db_path, &evidence, &announce) {
            Ok(crate::store::lock_recovery::Outcome::Recovered(report)) => {
                crate::note!(
                    "rq: took the queue's lock back: {} and its journal are new files now ({report})",
                    self.db_path.display()
                );
                self.notice.not_blocked();
                true
            }
            Ok(crate::store::lock_recovery::Outcome::NotNeeded(why)) => {
                crate::note!("rq: did not take the lock back: {why}");
                self.notice.not_blocked();
                true
            }
            // Another process is at it: wait for its new file, away from the lock.
            Ok(crate::store::lock_recovery::Outcome::InProgress) => {
                if crate::store::lock_recovery::await_recovery(&self.db_path, evidence.db_ino) {
                    crate::note!(
                        "rq: {} was put on a new file (another process took the queue's lock back from a dead host); reopened",
                        self.db_path.display()
                    );
                    self.notice.not_blocked();
                } else {
                    judge_later(Duration::from_secs(10));
                }
                true
            }
            Err(e) => {
                crate::note!("rq: could not take the queue's lock back: {e}");
                judge_later(Duration::from_secs(60));
                false
            }
        }
    }

    fn gave_up(&self, started: Instant, err: &str) -> Error {
        Error::Conflict(format!(
            "gave up waiting for the queue lock on {} after {:.0}s ({err}); {}",
            self.db_path.display(),
            started.elapsed().as_secs_f64(),
            describe_holder(&self.db_path, self.notice.recoverable)
        ))
    }

    /// Damage confirmed (by a fresh connection): say so, and leave the mark that makes
    /// every later writer refuse until `recover` (see `damage_mark`).
    fn corrupt(&self, why: impl Into<String>) -> Error {
        let why = why.into();
        // Marked only when a whole check of the file agrees: on NFS a connection can read
        // garbage for a moment after its client lost its locks, and a mark would stop
        // every writer until someone runs `recover`.
        let mark = damage_mark(&self.db_path);
        if !mark.exists()
            && !file_checks_out(&self.db_path)
            && let Ok(mut file) = crate::beats::create_new(&mark)
        {
            use std::io::Write;
            let _ = writeln!(file, "{} {why}", crate::time::now());
        }
        Error::Corrupt {
            path: self.db_path.parent().unwrap_or(&self.db_path).to_path_buf(),
            why,
        }
    }

    /// Open a connection with the shared-filesystem settings and check it is an rq queue
    /// of a schema this rq understands.
    fn connect(&mut self) -> Result<()> {
        self.connect_checked().map_err(|e| self.classify(e))
    }

    /// Database corruption found anywhere becomes one clear error.
    fn classify(&self, err: Error) -> Error {
        match &err {
            Error::Sql(e) if is_damage(e) => self.corrupt(e.to_string()),
            Error::Sql(e) if is_full(e) => Error::Conflict(format!(
                "the filesystem of {} is full; nothing was changed: free some space and try again",
                self.db_path.parent().unwrap_or(&self.db_path).display()
            )),
            _ => err,
        }
    }

    fn connect_checked(&mut self) -> Result<()> {
        self.conn = None;
        self.fence.close();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&self.db_path, flags)?;
        if self.notice.recoverable {
            // The file this connection has is the one at the path (see `has_moved`).
            let ino = crate::store::lock_recovery::db_inode(&self.db_path).unwrap_or(0);
            if has_moved(&conn, &self.db_path) {
                return Err(moved_error());
            }
            self.notice.db_ino.store(ino, Ordering::Relaxed);
        }
        configure_connection(
            &mut conn,
            &self.db_path,
            self.notice.clone(),
            self.lock_timeout,
        )?;
        let journal: std::result::Result<String, rusqlite::Error> =
            conn.query_row("PRAGMA journal_mode = PERSIST", [], |r| r.get(0));
        let journal = match journal {
            Ok(mode) => mode,
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) => {
                return Err(self.corrupt("not a database file"));
            }
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseCorrupt) => {
                return Err(self.corrupt(e.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        if !journal.eq_ignore_ascii_case("persist") {
            return Err(Error::Conflict(format!(
                "{}: the database is in {journal} journal mode (someone switched it); rq needs a \
                 rollback journal on a shared filesystem: run  sqlite3 {} 'PRAGMA journal_mode=DELETE'",
                self.db_path.display(),
                self.db_path.display()
            )));
        }
        let check = |sql: &str| -> Result<i64> {
            conn.query_row(sql, [], |r| r.get(0))
                .map_err(|e| match e.sqlite_error_code() {
                    Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                        self.corrupt(e.to_string())
                    }
                    _ => e.into(),
                })
        };
        let app_id = check("PRAGMA application_id")?;
        let version = check("PRAGMA user_version")?;
        let dir = self.db_path.parent().unwrap_or(&self.db_path).to_path_buf();
        if app_id != APPLICATION_ID {
            return Err(Error::NotAQueue {
                path: dir,
                why: "its db is not an rq database".into(),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(Error::NewerSchema {
                path: dir,
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            migrate(&mut conn, version, Some(&mut self.fence))?;
        }
        if self.access == Access::ReadOnly {
            conn.pragma_update(None, "query_only", true)?;
        } else {
            // A trigger (or any object) someone planted would run inside every write.
            let foreign = foreign_objects(&conn)?;
            if !foreign.is_empty() {
                return Err(Error::Conflict(format!(
                    "{} holds what rq did not make ({}), which would run inside rq's writes: \
                     nothing was changed; 'rq {} recover' removes it (and says what it removed)",
                    self.db_path.display(),
                    describe_objects(&foreign),
                    dir.display()
                )));
            }
            super::settle::install(&conn)?;
        }
        self.conn = Some(conn);
        Ok(())
    }

    fn conn(&mut self) -> Result<&mut Connection> {
        if self.conn.is_none() {
            self.connect()?;
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Run `body` in one `BEGIN IMMEDIATE` transaction and commit it. Transient failures
    /// (lock time-outs, I/O errors) roll back and rerun the whole body on a fresh
    /// connection, so the body must do nothing but SQL. An I/O error during COMMIT itself
    /// is reported, not retried: its outcome is unknown.
    pub fn write<T>(&mut self, mut body: impl FnMut(&Tx<'_>) -> Result<T>) -> Result<T> {
        self.run(TransactionBehavior::Immediate, &mut body)
    }

    /// Like `write`, but only if the lock is free right now: `None` when another process
    /// holds it (nothing was done). For work that can as well be done a little later, so
    /// a feeder keeps its jobs going instead of waiting for the lock.
    pub fn try_write<T>(
        &mut self,
        mut body: impl FnMut(&Tx<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        self.notice.no_wait.store(true, Ordering::Relaxed);
        let outcome = self.try_once(TransactionBehavior::Immediate, &mut body);
        self.notice.no_wait.store(false, Ordering::Relaxed);
        match outcome {
            Ok(value) => Ok(Some(value)),
            Err(Attempt::Retry(_)) => Ok(None),
            // Checked on a fresh connection by the next `write`.
            Err(Attempt::Suspect(_)) => {
                self.conn = None;
                Ok(None)
            }
            // Not now either; a later `write` waits for space.
            Err(Attempt::Fail(Error::Sql(e))) if self.wait_when_full && is_full(&e) => Ok(None),
            Err(Attempt::Fail(err)) => Err(self.classify(err)),
        }
    }

    /// Hold the queue lock while `body` runs (`rq Q lock`): shared (readers go on, writers
    /// wait) or exclusive (everyone waits). The one place rq runs a command under the lock,
    /// because that is what the user asked for.
    pub fn with_lock<T>(
        &mut self,
        exclusive: bool,
        mut body: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        self.body_has_effects = true;
        let outcome = if exclusive {
            self.run(TransactionBehavior::Exclusive, &mut |_| body())
        } else {
            let (recoverable, db_path) = (self.notice.recoverable, self.db_path.clone());
            self.run(TransactionBehavior::Deferred, &mut |tx| {
                // A read makes the deferred transaction take the shared lock.
                tx.query_row("SELECT count(*) FROM meta", [], |r| r.get::<_, i64>(0))?;
                // On the queue's file, not one whose lock was taken back (`lock_recovery`).
                if recoverable
                    && let Tx::Sqlite(conn) = tx
                    && has_moved(conn, &db_path)
                {
                    return Err(moved_error());
                }
                body()
            })
        };
        self.body_has_effects = false;
        outcome
    }

    /// Give the space of deleted rows back to the filesystem: on a database made with
    /// incremental auto-vacuum (queues created since 2026-12-03), free pages are cut off
    /// the end of the file, `VACUUM_STEP` pages per short write transaction, so other
    /// processes wait at most one step. Does nothing on older queues (their files only
    /// shrink with a full `VACUUM`). Returns the pages given back.
    pub fn reclaim_space(&mut self) -> Result<i64> {
        const VACUUM_STEP: i64 = 2048;
        let incremental: i64 =
            self.read(|tx| tx.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)))?;
        if incremental != 2 {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let (freed, left) = self.write(|tx| {
                let free = |tx: &Tx<'_>| -> Result<i64> {
                    tx.query_row("PRAGMA freelist_count", [], |r| r.get(0))
                };
                let before = free(tx)?;
                if before > 0 {
                    // Stepped to the end: the pragma frees a page per step.
                    tx.query_each(
                        &format!("PRAGMA incremental_vacuum({VACUUM_STEP})"),
                        [],
                        |_| Ok(()),
                    )?;
                }
                let after = free(tx)?;
                Ok((before - after, after))
            })?;
            total += freed;
            if left == 0 || freed == 0 {
                return Ok(total);
            }
        }
    }

    /// Run `body` in one read transaction. Print nothing inside it.
    pub fn read<T>(&mut self, mut body: impl FnMut(&Tx<'_>) -> Result<T>) -> Result<T> {
        self.run(TransactionBehavior::Deferred, &mut body)
    }

    fn run<T>(
        &mut self,
        behavior: TransactionBehavior,
        body: &mut dyn FnMut(&Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut damage_seen = false;
        loop {
            let outcome = self.try_once(behavior, body);
            crate::lock::done_waiting();
            match outcome {
                Ok(value) => {
                    self.notice.not_blocked();
                    if self.notice.full.swap(false, Ordering::Relaxed) {
                        crate::note!("rq: there is space again; continuing");
                    }
                    if self.notice.announced.swap(false, Ordering::Relaxed) {
                        crate::note!(
                            "rq: got the queue lock after {:.1}s; continuing",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(value);
                }
                // Damage reported by a connection that had been open: ask a fresh one once.
                Err(Attempt::Suspect(err)) if !damage_seen => {
                    damage_seen = true;
                    self.conn = None;
                    if std::env::var_os("RQ_SQL_DEBUG").is_some() {
                        crate::note!("rq: {err}: reopening the database to check");
                    }
                }
                Err(Attempt::Suspect(err)) => return Err(self.corrupt(err)),
                Err(Attempt::Retry(_)) if crate::lock::interrupted() => {
                    return Err(interrupted_error());
                }
                Err(Attempt::Retry(err)) => {
                    if self.after_busy() {
                        continue;
                    }
                    if let Some(limit) = self.lock_timeout
                        && started.elapsed() > limit
                    {
                        return Err(self.gave_up(started, &err));
                    }
                    // A fresh connection: after an NFS lease loss, I/O on the old file
                    // descriptor keeps failing until it is reopened. The journal too: it
                    // may be a new file since (`lock_recovery`).
                    self.conn = None;
                    self.fence.close();
                    attempt += 1;
                    jitter_sleep(attempt);
                }
                Err(Attempt::Fail(Error::Sql(e))) if self.wait_when_full && is_full(&e) => {
                    if !self.notice.full.swap(true, Ordering::Relaxed) {
                        crate::note!(
                            "rq: the filesystem of {} is full; waiting for space",
                            self.db_path.display()
                        );
                    }
                    self.conn = None;
                    std::thread::sleep(Duration::from_millis(rand::random_range(500..1500)));
                }
                Err(Attempt::Fail(err)) => return Err(self.classify(err)),
            }
        }
    }

    fn try_once<T>(
        &mut self,
        behavior: TransactionBehavior,
        body: &mut dyn FnMut(&Tx<'_>) -> Result<T>,
    ) -> std::result::Result<T, Attempt> {
        // A connection opened now that reports damage is believed (connect() says so).
        if let Err(e) = self.conn() {
            return Err(match e {
                Error::Sql(e) if is_transient(&e) => Attempt::Retry(e.to_string()),
                e => Attempt::Fail(e),
            });
        }
        let conn = self.conn.as_mut().expect("connected above");
        let tx = match conn.transaction_with_behavior(behavior) {
            Ok(tx) => tx,
            Err(e) if is_transient(&e) => return Err(Attempt::Retry(e.to_string())),
            Err(e) if is_damage(&e) => return Err(Attempt::Suspect(e.to_string())),
            Err(e) => return Err(Attempt::Fail(e.into())),
        };
        crate::lock::done_waiting();
        // While this transaction holds the lock, a thread says so now and then.
        let _holding = crate::lock::holding(&self.db_path);
        if !matches!(behavior, TransactionBehavior::Deferred) {
            // A write on a file whose lock was taken back from a dead host (see
            // `lock_recovery`) would be lost: checked once we hold the lock, before the
            // first write.
            if self.notice.recoverable && has_moved(&tx, &self.db_path) {
                self.notice.moved.store(true, Ordering::Relaxed);
                return Err(Attempt::Retry(moved_error().to_string()));
            }
            // Before the body writes the first page to the journal.
            if let Err(e) = self.fence.hold() {
                return Err(fence_failed(&self.db_path, e));
            }
            self.holder_note.mark();
        }
        let mut settled_deps = super::settle::Settled::default();
        let carry_on = self.carry_on_dep_work;
        let settled = |value: T| -> Result<T> {
            // What the ends and re-starts in this transaction mean for jobs waiting on
            // them is part of the same transaction.
            if !matches!(behavior, TransactionBehavior::Deferred)
                && self.access == Access::ReadWrite
            {
                settled_deps = super::settle::settle(&Tx::Sqlite(&tx), carry_on)?;
            }
            Ok(value)
        };
        let value = match body(&Tx::Sqlite(&tx)).and_then(settled) {
            Ok(v) => v,
            Err(Error::Sql(e)) if is_transient(&e) => return Err(Attempt::Retry(e.to_string())),
            Err(Error::Sql(e)) if is_damage(&e) => return Err(Attempt::Suspect(e.to_string())),
            Err(e) => return Err(Attempt::Fail(e)),
        };
        self.notice.committing.store(true, Ordering::Relaxed);
        let committed = tx.commit();
        crate::lock::done_waiting();
        self.notice.committing.store(false, Ordering::Relaxed);
        match committed {
            // Done on a file that is no longer the queue's (its lock was taken back while
            // this process was cut off or stopped): nothing of it counts. Run again on
            // the queue's file, unless the body did more than SQL.
            Ok(()) if self.notice.recoverable && has_moved(conn, &self.db_path) => {
                self.conn = None;
                if self.body_has_effects {
                    Err(Attempt::Fail(Error::Conflict(format!(
                        "the queue's lock was taken back from this process while it held it \
                         (it was stopped, or its host lost the file server for longer than the \
                         lease): what ran under the lock saw a copy that is no longer {}",
                        self.db_path.display()
                    ))))
                } else {
                    self.notice.moved.store(true, Ordering::Relaxed);
                    Err(Attempt::Retry(moved_error().to_string()))
                }
            }
            Ok(()) => {
                // Jobs became claimable without a submit: wake the idle feeders.
                if settled_deps.released
                    && let Some(dir) = self.db_path.parent()
                {
                    super::ring_doorbell(dir);
                }
                self.dep_work_left = settled_deps.more;
                Ok(value)
            }
            // Busy at commit: nothing was written (the transaction is rolled back on drop).
            Err(e) if is_busy(&e) => Err(Attempt::Retry(e.to_string())),
            // A full disk at commit leaves the transaction rolled back.
            Err(e) if is_full(&e) => Err(Attempt::Fail(e.into())),
            // The commit failed on a file whose lock was taken back from this process
            // while it was cut off (its held-back writes fail there): it cannot have
            // reached the queue, whose file was copied while this one held the lock
            // without a word. Run again on the queue's file.
            Err(_)
                if self.notice.recoverable
                    && !self.body_has_effects
                    && has_moved(conn, &self.db_path) =>
            {
                self.conn = None;
                self.notice.moved.store(true, Ordering::Relaxed);
                Err(Attempt::Retry(moved_error().to_string()))
            }
            Err(e) => {
                // The connection is suspect now; the next transaction uses a fresh one.
                self.conn = None;
                Err(Attempt::Fail(Error::CommitUnknown {
                    path: self.db_path.clone(),
                    why: e.to_string(),
                }))
            }
        }
    }
}

/// A wait for the lock that INT, TERM or HUP ended (`lock::end_waits_on_interrupt`).
fn interrupted_error() -> Error {
    Error::Conflict(
        "interrupted while waiting for the queue's lock: what was waiting for it was not done"
            .into(),
    )
}

/// Whether the database file `conn` has open is no longer the one at `db_path` (the lock
/// was taken back from a dead host: `lock_recovery`). The directory's attributes are asked
/// of the server first, so that SQLite's look at the path is not answered from a name this
/// host cached before another host renamed the new file into place.
fn has_moved(conn: &Connection, db_path: &Path) -> bool {
    crate::store::lock_recovery::refresh_directory(db_path);
    let mut moved: std::ffi::c_int = 0;
    match conn.file_control(Some("main"), rusqlite::FileControl::HasMoved(&mut moved)) {
        Ok(()) => moved != 0,
        // Cannot tell: take it that it moved (a fresh connection costs little).
        Err(_) => true,
    }
}

fn moved_error() -> Error {
    Error::Sql(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY_DBMOVED),
        Some("the queue's database was replaced (its lock was taken back from a dead host)".into()),
    ))
}

/// The journal could not be locked: an NFS fault is worth another try on a fresh
/// connection; anything else (e.g. something that is not a file planted as the journal)
/// is reported.
fn fence_failed(db_path: &Path, err: std::io::Error) -> Attempt {
    let transient = matches!(
        err.raw_os_error(),
        Some(
            libc::EIO | libc::ESTALE | libc::ENOLCK | libc::ETIMEDOUT | libc::EAGAIN | libc::EACCES
        )
    );
    if transient {
        Attempt::Retry(format!("cannot lock the journal: {err}"))
    } else {
        Attempt::Fail(Error::Io {
            context: format!("cannot lock the journal of {}", db_path.display()),
            source: err,
        })
    }
}

enum Attempt {
    /// Transient (busy, I/O, locking protocol): roll back, reconnect, run it again.
    Retry(String),
    /// The database looked damaged: believed only when a fresh connection agrees.
    Suspect(String),
    Fail(Error),
}

/// Bring a queue at schema version `from` up to `SCHEMA_VERSION`, in one write
/// transaction (every other process waits; the check is redone under the lock, so two
/// processes upgrading at once do it once).
fn migrate(conn: &mut Connection, from: i64, fence: Option<&mut JournalFence>) -> Result<()> {
    // Defensive mode forbids the schema rewrite of `widen_states`; on again right after.
    use rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE;
    conn.set_db_config(SQLITE_DBCONFIG_DEFENSIVE, false)?;
    let outcome = migrate_steps(conn, from, fence);
    conn.set_db_config(SQLITE_DBCONFIG_DEFENSIVE, true)?;
    outcome
}

fn migrate_steps(conn: &mut Connection, from: i64, fence: Option<&mut JournalFence>) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(fence) = fence {
        fence.hold().map_err(|source| Error::Io {
            context: "cannot lock the journal for the schema upgrade".into(),
            source,
        })?;
    }
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for version in current.max(from)..SCHEMA_VERSION {
        let step = MIGRATIONS.get((version - 1) as usize).ok_or_else(|| {
            Error::Conflict(format!("no migration from schema version {version}"))
        })?;
        if version + 1 == 4 {
            widen_states(&tx)?;
        }
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Settings every rq connection uses.
fn configure_connection(
    conn: &mut Connection,
    db_path: &Path,
    notice: Arc<WaitNotice>,
    lock_timeout: Option<Duration>,
) -> Result<()> {
    // First, before any statement can touch the file and meet another process's lock.
    install_busy_handler(conn, db_path.to_path_buf(), notice, lock_timeout)?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA journal_size_limit = 8388608;
         PRAGMA mmap_size = 0;
         PRAGMA temp_store = MEMORY;
         PRAGMA locking_mode = NORMAL;
         PRAGMA foreign_keys = ON;",
    )?;
    // rq_host_ok(hosts, host): may `host` run a job restricted to `hosts`? (the claim query)
    conn.create_scalar_function(
        "rq_host_ok",
        2,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8
            | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let hosts: Option<String> = ctx.get(0)?;
            let host: String = ctx.get(1)?;
            Ok(crate::host::allowed(hosts.as_deref(), &host))
        },
    )?;
    // rq_unfit(cpus, mem, gpus): why no live feeder can run a job that needs these, as a
    // listing shows it (see `fit::set_largest_live`); NULL when it fits or nobody asked.
    conn.create_scalar_function(
        "rq_unfit",
        3,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8,
        |ctx| {
            let (cpus, mem, gpus): (i64, i64, i64) = (ctx.get(0)?, ctx.get(1)?, ctx.get(2)?);
            Ok(super::fit::largest_live_known()
                .and_then(|largest| super::fit::unfit_reason(cpus, mem, gpus, &largest)))
        },
    )?;
    if std::env::var_os("RQ_SQL_DEBUG").is_some_and(|v| !v.is_empty()) {
        conn.trace_v2(
            rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT,
            Some(|event: rusqlite::trace::TraceEvent<'_>| {
                if let rusqlite::trace::TraceEvent::Stmt(_, sql) = event {
                    crate::note!("rq sql: {sql}");
                }
            }),
        )?;
    }
    Ok(())
}

/// How often a long wait for the lock says again whom it waits for.
const LOCK_WORD_EVERY: Duration = Duration::from_secs(60);

/// Whom a process waiting for the queue's lock waits for, as far as the holder note
/// (`lock::HolderNote`) and the heartbeats (server clock) tell: the last process that
/// took the write lock, how long ago, and whether its host still beats. (A process
/// holding only a read lock leaves no note: the words say "last taken for writing".)
fn describe_holder(db_path: &Path, recoverable: bool) -> String {
    let Some(holder) = crate::lock::read_holder(db_path) else {
        return "another process holds it".to_string();
    };
    let me = crate::host::name();
    if holder.is_this_process() {
        // Our own note: we hold the write lock and wait at commit for readers to finish.
        return "this process holds the write lock and waits for readers to finish".to_string();
    }
    let queue = db_path.parent().unwrap_or(Path::new("."));
    let now = crate::beats::server_now(queue, &me).ok();
    let ago = |at: Option<jiff::Timestamp>| -> Option<String> {
        let secs = crate::time::seconds_between(at?, now?);
        Some(crate::time::duration_text(secs.max(0.0)))
    };
    let mut text = format!(
        "last taken for writing by {} (pid {} on {})",
        holder.role, holder.pid, holder.host
    );
    // The note's time: when a writer took the lock, or when a process holding it for
    // long (read or write) last said so.
    if let Some(age) = ago(holder.since) {
        text += &format!(", last heard of {age} ago");
    }
    if holder.host == me {
        text += ", on this host";
    } else {
        match now.and_then(|now| crate::beats::heartbeat_age(queue, &holder.host, now)) {
            Some(age) => {
                text += &format!(
                    "; {}'s last heartbeat: {} ago",
                    holder.host,
                    crate::time::duration_text(age.max(0.0))
                )
            }
            None => text += &format!("; {} has no heartbeat (no feeder runs there)", holder.host),
        }
    }
    if recoverable {
        let lease = crate::store::lock_recovery::lease(queue);
        text += &format!(
            "; on this filesystem a dead host's lock is not freed: rq takes it back once nobody \
             has heard of its holder for {}",
            crate::time::duration_text(crate::store::lock_recovery::dead_after(lease))
        );
    }
    crate::secrets::redact(&text)
}

/// After waiting this long on NFSv3 a waiter polls the lock about once a second.
const NLM_PATIENCE: Duration = Duration::from_secs(2);

/// How often a waiter on a filesystem where a dead host's lock can outlive it looks at the
/// database file (was it put on a new inode?) and at the lock's holder (is it dead?).
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The busy handler's look (see `LOOK_EVERY`): false to stop waiting on this connection.
fn look_at_holder(notice: &WaitNotice, db_path: &Path) -> bool {
    let blocked = notice.blocked_for();
    {
        let mut last = notice.last_look.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < LOOK_EVERY) {
            return true;
        }
        *last = Some(Instant::now());
    }
    crate::store::lock_recovery::refresh_directory(db_path);
    let ino = crate::store::lock_recovery::db_inode(db_path);
    if ino.is_some_and(|ino| ino != notice.db_ino.load(Ordering::Relaxed)) {
        notice.moved.store(true, Ordering::Relaxed);
        return false;
    }
    let later = notice
        .judge_after
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|at| Instant::now() < at);
    if later {
        return true;
    }
    match crate::store::lock_recovery::judge(db_path, blocked.as_secs_f64()) {
        crate::store::lock_recovery::Judgement::Wait => true,
        crate::store::lock_recovery::Judgement::Dead(evidence) => {
            *notice.dead_holder.lock().unwrap_or_else(|e| e.into_inner()) = Some(evidence);
            false
        }
    }
}

/// Waiting for another process's lock: jittered exponential back-off; after a few seconds
/// say whom we wait for on stderr (and again every minute); give up this attempt after
/// 30 s so the caller can reconnect.
fn install_busy_handler(
    conn: &mut Connection,
    db_path: PathBuf,
    notice: Arc<WaitNotice>,
    lock_timeout: Option<Duration>,
) -> Result<()> {
    let announce_after = Duration::from_secs(
        std::env::var("RQ_LOCK_NOTICE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    );
    // Tests shorten an attempt with RQ_TEST_LOCK_ATTEMPT (seconds).
    let attempt = std::env::var("RQ_TEST_LOCK_ATTEMPT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs_f64);
    let attempt_limit = lock_timeout.unwrap_or(attempt).min(attempt);
    let mut wait_started = Instant::now();
    let handler = move |count: i32| -> bool {
        if notice.no_wait.load(Ordering::Relaxed) || crate::lock::interrupted() {
            return false;
        }
        if count == 0 {
            wait_started = Instant::now();
        }
        let waited = wait_started.elapsed();
        crate::lock::waiting_for_lock();
        if notice.recoverable && !look_at_holder(&notice, &db_path) {
            return false;
        }
        // Said once a wait is long, then again every minute while it goes on (each
        // attempt ends after 30 s and the next starts afresh, on a new connection).
        let mut last_word = notice.last_word.lock().unwrap_or_else(|e| e.into_inner());
        let due = if notice.announced.load(Ordering::Relaxed) {
            last_word.is_none_or(|at| at.elapsed() >= LOCK_WORD_EVERY)
        } else {
            waited >= announce_after
        };
        if due {
            notice.announced.store(true, Ordering::Relaxed);
            *last_word = Some(Instant::now());
            drop(last_word);
            crate::note!(
                "rq: waiting for the queue's lock: {}; rq keeps trying, Ctrl-C to give up",
                describe_holder(&db_path, notice.recoverable)
            );
        }
        // A writer waiting at commit holds the write lock: giving up would let the next
        // writer take it, and each would say anew that the lock's holder is alive. On
        // NFSv3 the server can keep a lock nobody holds (a lock call cut short when its
        // process was killed, answered after the unlock that cleaned it up): every
        // commit then waits for ever behind it, and only a waiter that stays put lets
        // the others see the holder fall silent and take the lock back (`lock_recovery`).
        let limit = if notice.recoverable && notice.committing.load(Ordering::Relaxed) {
            lock_timeout
        } else {
            Some(attempt_limit)
        };
        if limit.is_some_and(|limit| waited >= limit) {
            return false;
        }
        // (Counted over attempts: each ends after 30 s, or at a look that acts.)
        if notice.recoverable && notice.blocked_for() >= NLM_PATIENCE {
            // NLM (NFSv3) lock calls are costly: measured in the lab, one process polling a
            // held lock 25 times a second made every other lock call from its host take
            // 4-5 s. A wait this long is for a long holder: look about once a second.
            std::thread::sleep(Duration::from_millis(rand::random_range(500..1500)));
        } else {
            jitter_sleep(count.max(0) as u32);
        }
        true
    };
    conn.busy_handler(Some(handler))?;
    Ok(())
}

/// Create a new queue database at `db_path` (which must not exist): built under a
/// temporary name and renamed into place, so a `db` file always holds a complete schema.
/// The objects of a database (type, name) that rq's schema does not make: a planted
/// trigger, view, index or table. SQLite's own (`sqlite_*`) are not counted.
pub fn foreign_objects(conn: &Connection) -> Result<Vec<(String, String)>> {
    static OWN: std::sync::OnceLock<std::result::Result<Vec<(String, String)>, String>> =
        std::sync::OnceLock::new();
    let own = OWN
        .get_or_init(|| own_objects().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Conflict(format!("cannot build rq's schema to compare: {e}")))?;
    let mut stmt = conn.prepare(
        "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         ORDER BY type, name",
    )?;
    let found = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(found.into_iter().filter(|o| !own.contains(o)).collect())
}

/// What rq's schema makes: a database built from it in memory, as `create` builds one.
fn own_objects() -> Result<Vec<(String, String)>> {
    let mut conn = Connection::open_in_memory()?;
    conn.execute_batch(&format!(
        "BEGIN; PRAGMA user_version = 1; {SCHEMA_SQL} COMMIT;"
    ))?;
    migrate(&mut conn, 1, None)?;
    let mut stmt = conn.prepare("SELECT type, name FROM sqlite_master")?;
    let own = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(own)
}

/// "trigger evil, view x" (the first few).
pub fn describe_objects(objects: &[(String, String)]) -> String {
    let mut named: Vec<String> = objects
        .iter()
        .take(5)
        .map(|(kind, name)| format!("{kind} {name}"))
        .collect();
    if objects.len() > 5 {
        named.push(format!("and {} more", objects.len() - 5));
    }
    named.join(", ")
}

pub fn create_database(db_path: &Path) -> Result<()> {
    let tmp = db_path.with_extension("creating");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut conn = Connection::open(&tmp)?;
        configure_connection(&mut conn, db_path, Arc::new(WaitNotice::default()), None)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = PERSIST", [], |r| r.get(0))?;
        debug_assert_eq!(mode, "persist");
        // Incremental auto-vacuum (only settable before the first table): space freed by
        // deleting jobs can be given back in short steps (`Store::reclaim_space`).
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = 1;
             {SCHEMA_SQL}
             COMMIT;"
        ))?;
        migrate(&mut conn, 1, None)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('created', ?1), ('rq_version', ?2)",
            (crate::time::now(), env!("CARGO_PKG_VERSION")),
        )?;
    }
    // The journal of the temporary name is not needed (it is empty after the commit).
    let _ = std::fs::remove_file(tmp.with_extension("creating-journal"));
    std::fs::rename(&tmp, db_path).map_err(|source| Error::Io {
        context: format!("cannot create {}", db_path.display()),
        source,
    })
}
