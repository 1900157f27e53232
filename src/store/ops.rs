//! Named store operations: each store's SQL, side by side by name, in its own files
//! (`src/store/sqlite/*.sql`, `src/store/postgres/*.sql`), the way River keeps each
//! driver's queries. Protocol code runs an operation by name (`tx.op(claims::FINISH)`),
//! never SQL text, and each store runs its own statement as written: PostgreSQL's are in
//! PostgreSQL's dialect (`$N` placeholders, `FOR UPDATE SKIP LOCKED`, jsonb), not
//! translated from SQLite's.
//!
//! A file is a list of statements, each under a line `-- name: NAME` (comments after that
//! line document it); `-- name: NAME (batch)` marks a statement made of several, run
//! without parameters (`Stmt::execute_batch`). A statement with an empty body means
//! "nothing to do on this store" (running it changes and returns nothing);
//! `-- name: NAME (fragment)` is text the store's statements take in as `{NAME}`. The
//! expansions made, once, when a file is read: `{job_fields}` becomes every stored job
//! field in `job::FIELDS` order (quoted where the store needs it), the columns
//! `Row::from_sql` reads back; `{job_params}` a numbered parameter for each;
//! `{listed_fields}` the fields as modes list them (`reason` from the `waiting_reason`
//! fragment). `{filter}` is left for `Tx::scan`, which writes a `store::filter::Filter` there.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::Dialect;

/// The name of one operation; its SQL is in each store's file of that family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Op(pub &'static str);

/// Declare a family of operations: a constant for each (`family.name`, the name its SQL
/// carries in each store's file of that family) and `ALL`, every one of them.
macro_rules! family {
    ($family:literal { $($(#[$doc:meta])* $name:ident = $op:literal,)* }) => {
        $($(#[$doc])* pub const $name: super::Op = super::Op(concat!($family, ".", $op));)*
        /// Every operation of the family.
        pub const ALL: &[super::Op] = &[$($name),*];
    };
}

/// The claim protocol: what feeders read and change about the jobs they claim, run and
/// end (`crate::claims`).
pub mod claims {
    family!("claims" {
        /// The limits set per tag (`configure limit.TAG=N`): rows (tag, limit).
        TAG_LIMITS = "tag_limits",
        /// Claims on a queue with tag limits take turns (PostgreSQL, where claims run side by
        /// side; nothing on SQLite, whose writes exclude each other anyway).
        TAG_LIMITS_TURN = "tag_limits_turn",
        /// How many jobs of tag `$1` run now.
        TAG_RUNNING = "tag_running",
        /// The best candidates a host may claim (see `crate::claims::claim`), with their
        /// needs: jid, tag, cpus, mem, gpus, submitted. PostgreSQL locks them, skipping those
        /// another feeder is claiming.
        CANDIDATES = "candidates",
        /// Whether any candidate exists (a read-only look).
        CLAIMABLE = "claimable",
        /// Claim the chosen jobs (`$5`, a JSON list of jids) still pending or dead, with
        /// their GPU devices (`$6`); returns each claimed job's fields.
        CLAIM = "claim",
        /// Why this host claims nothing: the queue paused, or the host drained.
        HELD_BACK = "held_back",
        /// Record a run's end (finished).
        FINISH = "finish",
        /// Record a run's end, the job to be retried after a delay (pending again).
        FINISH_RETRY = "finish_retry",
        /// Record a started job's pid and process identity.
        RECORD_START = "record_start",
        /// Record the ends of several runs in one statement (`$1`, a JSON list; see
        /// `crate::claims::finish_all`): the jids recorded. Only where
        /// `Capabilities::ends_in_one_statement`.
        FINISH_MANY = "finish_many",
        /// Record the pids of several started jobs in one statement likewise.
        RECORD_STARTS = "record_starts",
        /// A shell that could not be started: finished with 127.
        FAILED_TO_START = "failed_to_start",
        /// A crashed run of a restartable job with attempts left: pending again.
        REQUEUE_CRASHED = "requeue_crashed",
        /// A crashed run otherwise: dead.
        MARK_DEAD = "mark_dead",
        /// A claimed job that never started: pending again, its attempt returned.
        RELEASE = "release",
        /// A host's running jobs: jid, claim, feeder, whether a pid was recorded.
        RUNNING_ON = "running_on",
        /// Note who reclaimed a job and when.
        NOTE_RECLAIMED = "note_reclaimed",
        /// A dead host's restartable running jobs with attempts left: pending again.
        REQUEUE_HOST = "requeue_host",
        /// A dead host's other running jobs: dead.
        BURY_HOST = "bury_host",
        /// The jobs a feeder is running or holds unstarted.
        HELD_BY = "held_by",
        /// The claim tokens and kill requests of jobs (`$1`, a JSON list of jids).
        CURRENT_CLAIMS = "current_claims",
        /// Hosts with running jobs.
        BUSY_HOSTS = "busy_hosts",
        /// Every field of the jobs the queue says feeder `$1` runs.
        HELD_BY_FEEDER = "held_by_feeder",
        /// Every field of the running jobs of host `$1` claimed by other feeders than `$2`
        /// (earlier feeders of this host).
        ORPHANS = "orphans",
        /// The files of jobs (`$1`, a JSON list of jids): jid, stdin, stdout, stderr, data.
        JOB_FILES = "job_files",
        /// The feeders with running jobs.
        RUNNING_FEEDERS = "running_feeders",
    });
}

/// Dependencies between jobs (`crate::deps`): noting ends and re-starts, the cascades a
/// failure or a re-run sets off (a batch at a time, through the work list `dep_work`),
/// and the waits of new and changed jobs. Each statement's comment in the SQL files says
/// what it does; the names follow `crate::deps`'s steps.
pub mod deps {
    family!("deps" {
        CONNECTION_SETUP = "connection_setup",
        NOTED = "noted",
        RELEASED = "released",
        CLEAR_RELEASED = "clear_released",
        WORK_LEFT = "work_left",
        RENOTE_CANCELS = "renote_cancels",
        NOTE_CANCELS = "note_cancels",
        NOTE_REARMS = "note_rearms",
        CLEAR_NOTES = "clear_notes",
        BATCH_STATISTICS_STALE = "batch_statistics_stale",
        REFRESH_BATCH_STATISTICS = "refresh_batch_statistics",
        PLAN_BY_KEY = "plan_by_key",
        BATCH_STATISTICS = "batch_statistics",
        SETTLING_ON = "settling_on",
        SETTLING_OFF = "settling_off",
        HAS_CANCEL_WORK = "has_cancel_work",
        COLLECT_CANCEL = "collect_cancel",
        APPLY_CANCEL = "apply_cancel",
        DROP_CHANGED_MEANWHILE = "drop_changed_meanwhile",
        COUNT_ANY_WAITS_MET = "count_any_waits_met",
        MARK_ANY_WAITS_MET = "mark_any_waits_met",
        CARRY_ON_CANCEL = "carry_on_cancel",
        CLEAR_FAILURES_AND_BATCH = "clear_failures_and_batch",
        DONE_CANCEL = "done_cancel",
        HAS_REARM_WORK = "has_rearm_work",
        COLLECT_REARM = "collect_rearm",
        BLOCK_REARM = "block_rearm",
        BLOCK_BELOW = "block_below",
        RESET_ROOT_WAITS = "reset_root_waits",
        RESET_REVIVED_WAITS = "reset_revived_waits",
        APPLY_REARM = "apply_rearm",
        RECOUNT_BELOW_ROOTS = "recount_below_roots",
        RECOUNT_BELOW_REVIVED = "recount_below_revived",
        KEPT_CANCELLED = "kept_cancelled",
        SET_REASON = "set_reason",
        CARRY_ON_REARM = "carry_on_rearm",
        DONE_REARM = "done_rearm",
        CLEAR_REARMS_AND_BATCH = "clear_rearms_and_batch",
        FAILED_DEPENDENCY = "failed_dependency",
        OUTCOME = "outcome",
        ARRAY_JOBS = "array_jobs",
        INSERT_WAITS = "insert_waits",
        NOTE_FAILURE = "note_failure",
        RESTATE_LOOK = "restate_look",
        UNMET = "unmet",
        CANCEL_FOR = "cancel_for",
        ARRAY_ACTIVE = "array_active",
        RESTATE = "restate",
        WAITING_FOR = "waiting_for",
        FORGET_CANCEL = "forget_cancel",
        FORGET_ANY = "forget_any",
        FORGET_WAITS = "forget_waits",
    });
}

/// Changes to jobs by the queue's modes: drawing jids, `submit --unique`, delete,
/// resubmit, kill requests; and the checks `wait` reports with.
pub mod jobs {
    family!("jobs" {
        RESERVE_JIDS_PREPARE = "reserve_jids_prepare",
        RESERVE_JIDS = "reserve_jids",
        TWIN = "twin",
        MERGE_TWIN = "merge_twin",
        INSERT_ONE = "insert_one",
        DELETE = "delete",
        RESUBMIT = "resubmit",
        REQUEST_KILL = "request_kill",
        RESTRICTED_PENDING = "restricted_pending",
        COUNT_FAILED = "count_failed",
        HIGHEST_JID_GIVEN = "highest_jid_given",
        JID_COUNTER_EXISTS = "jid_counter_exists",
        CONTINUE_JIDS_ABOVE = "continue_jids_above",
    });
}

/// What `status`, `wait`, the status screen and the dashboard read: kept counts, the
/// ends of indexes, pause and drain marks.
pub mod status {
    family!("status" {
        COUNTS = "counts",
        COUNT_IN_STATE = "count_in_state",
        HIGHEST_PRIORITY = "highest_priority",
        NEXT_PRIORITY_BELOW = "next_priority_below",
        NEWEST_AT_PRIORITY = "newest_at_priority",
        OLDEST_AT_PRIORITY = "oldest_at_priority",
        NEWEST_IN_STATE = "newest_in_state",
        OLDEST_IN_STATE = "oldest_in_state",
        LATEST_STARTED = "latest_started",
        EARLIEST_STARTED = "earliest_started",
        SHORTEST_FINISHED = "shortest_finished",
        LONGEST_FINISHED = "longest_finished",
        SHORTEST_DEAD = "shortest_dead",
        LONGEST_DEAD = "longest_dead",
        ENDED_SINCE = "ended_since",
        ENDED_PER_MINUTE = "ended_per_minute",
        ENDED_PER_MINUTE_AND_HOST = "ended_per_minute_and_host",
        FINISHED_WITH_CODES = "finished_with_codes",
        RUNNING_PER_HOST = "running_per_host",
        HELD_BACK = "held_back",
        LIVENESS_SETTINGS = "liveness_settings",
        LOCK_RECOVERED = "lock_recovered",
        PROGRESS = "progress",
        ANY_NEEDY = "any_needy",
        NEEDY_BEYOND = "needy_beyond",
        TIMELINE = "timeline",
        SIZE_BYTES = "size_bytes",
    });
}

/// What a PostgreSQL queue without a job-file directory keeps in its database
/// (`store::in_database`): heartbeats, start journals, job files. PostgreSQL only.
pub mod in_database {
    family!("in_database" {
        BEAT_WITH_INFO = "beat_with_info",
        BEAT = "beat",
        SERVER_NOW = "server_now",
        HEARTBEAT_AGE = "heartbeat_age",
        KNOWN_HOSTS = "known_hosts",
        JOURNAL_BEGIN = "journal_begin",
        JOURNAL_APPEND = "journal_append",
        JOURNAL_MARKED = "journal_marked",
        JOURNAL_READ = "journal_read",
        JOURNAL_REMOVE = "journal_remove",
        JOURNAL_FORGET = "journal_forget",
        REAP_OLD_JOURNALS = "reap_old_journals",
        PUT_CHUNK = "put_chunk",
        DROP_STREAM = "drop_stream",
        VISIBLE_CHUNKS = "visible_chunks",
        VISIBLE_CHUNK = "visible_chunk",
        STREAM_SIZE = "stream_size",
        CHUNK_STARTS = "chunk_starts",
        HOLD_IF_OURS = "hold_if_ours",
        DROP_EARLIER_RUNS = "drop_earlier_runs",
        /// `hold_if_ours`, `drop_earlier_runs` and `put_chunk` for several runs at once
        /// (`crate::store::in_database::upload_outputs`), each with a JSON list.
        HOLD_IF_OURS_MANY = "hold_if_ours_many",
        DROP_EARLIER_RUNS_MANY = "drop_earlier_runs_many",
        PUT_CHUNKS = "put_chunks",
        REAP_ORPHANS = "reap_orphans",
        /// Of the jobs of the JSON list $1 just claimed: which have stdin or data stored
        /// (a feeder fetches only theirs) and which an earlier run's output (only that
        /// is removed when the new run's output comes).
        STORED_FILES = "stored_files",
        DROP_INPUTS = "drop_inputs",
        PROMOTE_STAGED = "promote_staged",
        DROP_STAGED = "drop_staged",
        REMOVE_FILES = "remove_files",
        DROP_OUTPUTS = "drop_outputs",
        DROP_DATA = "drop_data",
    });
}

/// Jobs read as modes list them, chosen by a filter (`Tx::scan` writes the filter into
/// `{filter}`, its parameters numbered after the operation's own) or by jid.
pub mod scan {
    family!("scan" {
        /// A page: jobs after jid $1, by jid, at most $2.
        PAGE = "page",
        /// Every job the filter chooses, by jid.
        EVERY = "every",
        /// The first $1 jobs, by jid, up or down (the dashboard's keyset pages).
        FIRST_UP = "first_up",
        FIRST_DOWN = "first_down",
        /// Counts by state, successes, failures (`status` of a selection).
        COUNTS = "counts",
        /// Job $1.
        ONE = "one",
        /// The highest jid (NULL in an empty queue).
        HIGHEST_JID = "highest_jid",
        /// Job $1's state.
        STATE_OF = "state_of",
        /// The first $2 jobs of the JSON list $1 that failed, died or were cancelled.
        FAILED_OF = "failed_of",
        /// A view's lists, at most $1 each: running, pending, the newest ended, and the
        /// newest dead or cancelled.
        VIEW_RUNNING = "view_running",
        VIEW_PENDING = "view_pending",
        VIEW_ENDED = "view_ended",
        VIEW_DEAD = "view_dead",
        /// How each chosen job stands: jid, state, exit_status, signal, by jid (`state`).
        OUTCOMES = "outcomes",
        /// One job the filter chooses, if any (is a named array, tag or term empty?).
        ANY = "any",
        /// A page of ended runs after jid $1, at most $2, with what they asked and used.
        USAGE_PAGE = "usage_page",
    });
}

/// Whole rows copied from one queue into another: export and rotation.
pub mod copies {
    family!("copies" {
        /// Export and rotation: a page of whole jobs after jid $1, at most $2.
        JOBS_PAGE = "jobs_page",
        /// A page of jobs' file names (jid, stdin, stdout, stderr, data) after jid $1.
        JOB_FILES_PAGE = "job_files_page",
        /// A page of waits (dep, job, kind, met) after ($1, $2), at most $3.
        DEPS_PAGE = "deps_page",
        /// Insert a whole job ({job_fields}, in order).
        INSERT_JOB = "insert_job",
        /// Insert a wait (dep, job, kind, met).
        INSERT_DEP = "insert_dep",
        /// Where an exported queue came from: $1.
        NOTE_EXPORTED_FROM = "note_exported_from",
        /// Rotation: a page of (jid, finished or '') after jid $1, at most $2.
        ENDED_PAGE = "ended_page",
        /// Rotation: delete job $1 if it ended at $2 (still the row that was archived).
        DELETE_ARCHIVED = "delete_archived",
        /// Delete the jobs of the JSON list $1.
        DELETE_LISTED = "delete_listed",
        /// Jobs running, and jobs in all.
        RUNNING_AND_ALL = "running_and_all",
    });
}

/// Queue-wide settings (`configure`), pause and drain marks.
pub mod attributes {
    family!("attributes" {
        /// Every attribute: key, value.
        EVERY = "every",
        /// Every attribute, by key.
        EVERY_SORTED = "every_sorted",
        /// The value of `$1`.
        GET = "get",
        /// Set `$1` to `$2`.
        SET = "set",
        /// Set `$1` to `$2` unless it is set.
        SET_IF_ABSENT = "set_if_absent",
        /// Remove `$1`.
        REMOVE = "remove",
    });
}

/// What differs between stores beyond their SQL, as numbers the protocol uses.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Jobs one batch of dependency work changes at most, so that a batch holds the
    /// queue's lock about 0.3 s on 2 cores (`crate::deps`).
    pub dep_batch: i64,
    /// New jobs per insert when submitting: SQLite's multi-row INSERT (fewer statements,
    /// each also updating the jid sequence, for one longer text); PostgreSQL's COPY, a
    /// round trip per batch, so larger (the memory stays bounded: a few MB).
    pub insert_batch: usize,
    /// A transaction's ends and pids are recorded with one statement each
    /// (`FINISH_MANY`, `RECORD_STARTS`) rather than one per job: on PostgreSQL every
    /// statement costs the server a round of planning, locking and triggers; SQLite runs
    /// a prepared statement per job for less than it would take to read a JSON list.
    pub ends_in_one_statement: bool,
}

pub fn capabilities(dialect: Dialect) -> Capabilities {
    match dialect {
        Dialect::Sqlite => Capabilities {
            dep_batch: 20_000,
            insert_batch: 64,
            ends_in_one_statement: false,
        },
        Dialect::Postgres => Capabilities {
            dep_batch: 5_000,
            insert_batch: 4096,
            ends_in_one_statement: true,
        },
    }
}

/// Every operation of one store.
pub fn all_in(dialect: Dialect) -> Vec<Op> {
    let mut ops: Vec<Op> = all().collect();
    if dialect == Dialect::Postgres {
        ops.extend_from_slice(in_database::ALL);
    }
    ops
}

/// Every operation both stores have.
pub fn all() -> impl Iterator<Item = Op> {
    claims::ALL
        .iter()
        .chain(attributes::ALL)
        .chain(deps::ALL)
        .chain(status::ALL)
        .chain(jobs::ALL)
        .chain(copies::ALL)
        .chain(scan::ALL)
        .copied()
}

/// The SQL files of each store: (family, text).
const SQLITE_FILES: &[(&str, &str)] = &[
    ("claims", include_str!("sqlite/claims.sql")),
    ("attributes", include_str!("sqlite/attributes.sql")),
    ("deps", include_str!("sqlite/deps.sql")),
    ("status", include_str!("sqlite/status.sql")),
    ("jobs", include_str!("sqlite/jobs.sql")),
    ("copies", include_str!("sqlite/copies.sql")),
    ("scan", include_str!("sqlite/scan.sql")),
];
const POSTGRES_FILES: &[(&str, &str)] = &[
    ("claims", include_str!("postgres/claims.sql")),
    ("attributes", include_str!("postgres/attributes.sql")),
    ("deps", include_str!("postgres/deps.sql")),
    ("in_database", include_str!("postgres/in_database.sql")),
    ("status", include_str!("postgres/status.sql")),
    ("jobs", include_str!("postgres/jobs.sql")),
    ("copies", include_str!("postgres/copies.sql")),
    ("scan", include_str!("postgres/scan.sql")),
];

/// One store's statement of an operation.
#[derive(Debug)]
pub struct Statement {
    pub sql: String,
    /// Several statements, run without parameters.
    pub batch: bool,
}

static SQLITE: LazyLock<HashMap<String, Statement>> =
    LazyLock::new(|| catalog(SQLITE_FILES, Dialect::Sqlite));
static POSTGRES: LazyLock<HashMap<String, Statement>> =
    LazyLock::new(|| catalog(POSTGRES_FILES, Dialect::Postgres));

/// The statements of one store, by `family.name`.
pub fn statements(dialect: Dialect) -> &'static HashMap<String, Statement> {
    match dialect {
        Dialect::Sqlite => &SQLITE,
        Dialect::Postgres => &POSTGRES,
    }
}

/// The statement of `op` on a store. Every operation has SQL in both stores' files (a
/// test checks), so a missing one is a bug in rq, not an input error.
pub fn statement(dialect: Dialect, op: Op) -> &'static Statement {
    statements(dialect)
        .get(op.0)
        .unwrap_or_else(|| panic!("no {dialect:?} SQL for the store operation {}", op.0))
}

/// The SQL of `op` on a store.
pub fn sql(dialect: Dialect, op: Op) -> &'static str {
    &statement(dialect, op).sql
}

fn catalog(files: &[(&str, &str)], dialect: Dialect) -> HashMap<String, Statement> {
    // `user` is a reserved word in PostgreSQL: the column is quoted there.
    let fields = crate::job::FIELDS
        .iter()
        .map(|f| match (dialect, *f) {
            (Dialect::Postgres, "user") => "\"user\"",
            (_, f) => f,
        })
        .collect::<Vec<_>>()
        .join(", ");
    // A parameter per field, numbered.
    let params = (1..=crate::job::FIELDS.len())
        .map(|i| match dialect {
            Dialect::Sqlite => format!("?{i}"),
            Dialect::Postgres => format!("${i}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let listed = fields
        .split(", ")
        .map(|f| if f == "reason" { "{waiting_reason}" } else { f })
        .collect::<Vec<_>>()
        .join(", ");
    // Fragments (`-- name: NAME (fragment)`): text other statements of the store take in
    // as `{NAME}`; not statements themselves.
    let mut fragments = Vec::new();
    let mut statements = Vec::new();
    for (family, text) in files {
        for (name, body) in parse(text) {
            match name.strip_suffix("(fragment)") {
                Some(name) => fragments.push((format!("{{{}}}", name.trim_end()), body)),
                None => statements.push((family, name, body)),
            }
        }
    }
    let mut out = HashMap::new();
    for (family, name, body) in statements {
        let (name, batch) = match name.strip_suffix("(batch)") {
            Some(name) => (name.trim_end(), true),
            None => (name.as_str(), false),
        };
        // Every field as modes list jobs: `reason` says what a waiting job waits for
        // (the store's fragment `waiting_reason`).
        let mut sql = body.replace("{listed_fields}", &listed);
        for (slot, text) in &fragments {
            sql = sql.replace(slot, text);
        }
        let sql = sql
            .replace("{job_fields}", &fields)
            .replace("{job_params}", &params);
        out.insert(format!("{family}.{name}"), Statement { sql, batch });
    }
    out
}

/// The statements of one file: (name, SQL without comments' leading lines or the final
/// `;`).
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("-- name:") {
            out.push((name.trim().to_string(), String::new()));
            continue;
        }
        let Some((_, body)) = out.last_mut() else {
            continue;
        };
        let code = line.trim();
        if code.starts_with("--") || (code.is_empty() && body.is_empty()) {
            continue;
        }
        if !body.is_empty() {
            body.push('\n');
        }
        body.push_str(line.trim_end());
    }
    for (_, body) in &mut out {
        let trimmed = body.trim_end().trim_end_matches(';').trim_end().to_string();
        *body = trimmed;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_as_named_statements() {
        let text = "-- about the file\n-- name: one\n-- what it does\nSELECT 1\n  FROM t;\n\n-- name: none\n\n-- name: two\nSELECT {job_fields};\n";
        let parsed = parse(text);
        assert_eq!(
            parsed[0],
            ("one".to_string(), "SELECT 1\n  FROM t".to_string())
        );
        assert_eq!(parsed[1], ("none".to_string(), String::new()));
        assert_eq!(parsed[2].0, "two");
    }

    #[test]
    fn every_operation_has_sql_in_each_store_and_nothing_else_is_there() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let known: Vec<&str> = all_in(dialect).iter().map(|op| op.0).collect();
            for op in all_in(dialect) {
                assert!(
                    statements(dialect).contains_key(op.0),
                    "{dialect:?} has no SQL for {}",
                    op.0
                );
            }
            for name in statements(dialect).keys() {
                assert!(
                    known.contains(&name.as_str()),
                    "{dialect:?} has SQL for {name}, which is no operation"
                );
            }
        }
        for op in all() {
            assert_eq!(
                statement(Dialect::Sqlite, op).batch,
                statement(Dialect::Postgres, op).batch,
                "{} is a batch in one store only",
                op.0
            );
        }
        // PostgreSQL's statements are written for it: no SQLite placeholders or hints.
        for (name, Statement { sql, .. }) in statements(Dialect::Postgres) {
            // Outside quoted text (a '?' may be a value).
            let code: String = sql.split('\'').step_by(2).collect();
            assert!(!code.contains('?'), "{name} has a SQLite placeholder");
            assert!(
                !sql.contains("INDEXED BY"),
                "{name} has a SQLite index hint"
            );
            assert!(!sql.contains("json_each"), "{name} uses SQLite's json_each");
        }
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            assert!(sql(dialect, claims::CLAIM).contains("RETURNING jid, priority, state,"));
        }
    }
}
