//! Named store operations: each store's SQL, side by side by name, in its own files
//! (`src/store/sqlite/*.sql`, `src/store/postgres/*.sql`), the way River keeps each
//! driver's queries. Protocol code runs an operation by name (`tx.op(claims::FINISH)`),
//! never SQL text, and each store runs its own statement as written: PostgreSQL's are in
//! PostgreSQL's dialect (`$N` placeholders, `FOR UPDATE SKIP LOCKED`, jsonb), not
//! translated from SQLite's.
//!
//! A file is a list of statements, each under a line `-- name: NAME` (comments after that
//! line document it); `-- name: NAME (batch)` marks a statement made of several, run
//! without parameters (`Stmt::execute_batch`). A statement with an empty body means "nothing to do on this store"
//! (running it changes and returns nothing). The one expansion made, once, when a file is
//! read: `{job_fields}` becomes every stored job field in `job::FIELDS` order (quoted where
//! the store needs it), the columns `Row::from_sql` reads back.
//!
//! Statements not yet moved here are still written in SQLite's dialect in the modules
//! that use them and translated for PostgreSQL (`pg_sql`); each module moved here drops
//! its SQL from the protocol side.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::Dialect;

/// The name of one operation; its SQL is in each store's file of that family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Op(pub &'static str);

/// The claim protocol: what feeders read and change about the jobs they claim, run and
/// end (`crate::claims`).
pub mod claims {
    use super::Op;

    /// The limits set per tag (`configure limit.TAG=N`): rows (tag, limit).
    pub const TAG_LIMITS: Op = Op("claims.tag_limits");
    /// Claims on a queue with tag limits take turns (PostgreSQL, where claims run side by
    /// side; nothing on SQLite, whose writes exclude each other anyway).
    pub const TAG_LIMITS_TURN: Op = Op("claims.tag_limits_turn");
    /// How many jobs of tag `$1` run now.
    pub const TAG_RUNNING: Op = Op("claims.tag_running");
    /// The best candidates a host may claim (see `crate::claims::claim`), with their
    /// needs: jid, tag, cpus, mem, gpus, submitted. PostgreSQL locks them, skipping those
    /// another feeder is claiming.
    pub const CANDIDATES: Op = Op("claims.candidates");
    /// Whether any candidate exists (a read-only look).
    pub const CLAIMABLE: Op = Op("claims.claimable");
    /// Claim the chosen jobs (`$5`, a JSON list of jids) still pending or dead, with
    /// their GPU devices (`$6`); returns each claimed job's fields.
    pub const CLAIM: Op = Op("claims.claim");
    /// Why this host claims nothing: the queue paused, or the host drained.
    pub const HELD_BACK: Op = Op("claims.held_back");
    /// Record a run's end (finished).
    pub const FINISH: Op = Op("claims.finish");
    /// Record a run's end, the job to be retried after a delay (pending again).
    pub const FINISH_RETRY: Op = Op("claims.finish_retry");
    /// Record a started job's pid and process identity.
    pub const RECORD_START: Op = Op("claims.record_start");
    /// A shell that could not be started: finished with 127.
    pub const FAILED_TO_START: Op = Op("claims.failed_to_start");
    /// A crashed run of a restartable job with attempts left: pending again.
    pub const REQUEUE_CRASHED: Op = Op("claims.requeue_crashed");
    /// A crashed run otherwise: dead.
    pub const MARK_DEAD: Op = Op("claims.mark_dead");
    /// A claimed job that never started: pending again, its attempt returned.
    pub const RELEASE: Op = Op("claims.release");
    /// A host's running jobs: jid, claim, feeder, whether a pid was recorded.
    pub const RUNNING_ON: Op = Op("claims.running_on");
    /// Note who reclaimed a job and when.
    pub const NOTE_RECLAIMED: Op = Op("claims.note_reclaimed");
    /// A dead host's restartable running jobs with attempts left: pending again.
    pub const REQUEUE_HOST: Op = Op("claims.requeue_host");
    /// A dead host's other running jobs: dead.
    pub const BURY_HOST: Op = Op("claims.bury_host");
    /// The jobs a feeder is running or holds unstarted.
    pub const HELD_BY: Op = Op("claims.held_by");
    /// The claim tokens and kill requests of jobs (`$1`, a JSON list of jids).
    pub const CURRENT_CLAIMS: Op = Op("claims.current_claims");
    /// Hosts with running jobs.
    pub const BUSY_HOSTS: Op = Op("claims.busy_hosts");
    /// Every field of the jobs the queue says feeder `$1` runs.
    pub const HELD_BY_FEEDER: Op = Op("claims.held_by_feeder");
    /// Every field of the running jobs of host `$1` claimed by other feeders than `$2`
    /// (earlier feeders of this host).
    pub const ORPHANS: Op = Op("claims.orphans");
    /// The files of jobs (`$1`, a JSON list of jids): jid, stdin, stdout, stderr, data.
    pub const JOB_FILES: Op = Op("claims.job_files");
    /// The feeders with running jobs.
    pub const RUNNING_FEEDERS: Op = Op("claims.running_feeders");

    /// Every operation of the family (for the tests that check each store has them all).
    pub const ALL: &[Op] = &[
        TAG_LIMITS,
        TAG_LIMITS_TURN,
        TAG_RUNNING,
        CANDIDATES,
        CLAIMABLE,
        CLAIM,
        HELD_BACK,
        FINISH,
        FINISH_RETRY,
        RECORD_START,
        FAILED_TO_START,
        REQUEUE_CRASHED,
        MARK_DEAD,
        RELEASE,
        RUNNING_ON,
        NOTE_RECLAIMED,
        REQUEUE_HOST,
        BURY_HOST,
        HELD_BY,
        CURRENT_CLAIMS,
        BUSY_HOSTS,
        HELD_BY_FEEDER,
        ORPHANS,
        JOB_FILES,
        RUNNING_FEEDERS,
    ];
}

/// Dependencies between jobs (`crate::deps`): noting ends and re-starts, the cascades a
/// failure or a re-run sets off (a batch at a time, through the work list `dep_work`),
/// and the waits of new and changed jobs. Each statement's comment in the SQL files says
/// what it does; the names follow `crate::deps`'s steps.
pub mod deps {
    use super::Op;

    pub const CONNECTION_SETUP: Op = Op("deps.connection_setup");
    pub const NOTED: Op = Op("deps.noted");
    pub const RELEASED: Op = Op("deps.released");
    pub const CLEAR_RELEASED: Op = Op("deps.clear_released");
    pub const WORK_LEFT: Op = Op("deps.work_left");
    pub const RENOTE_CANCELS: Op = Op("deps.renote_cancels");
    pub const NOTE_CANCELS: Op = Op("deps.note_cancels");
    pub const NOTE_REARMS: Op = Op("deps.note_rearms");
    pub const CLEAR_NOTES: Op = Op("deps.clear_notes");
    pub const BATCH_STATISTICS_STALE: Op = Op("deps.batch_statistics_stale");
    pub const REFRESH_BATCH_STATISTICS: Op = Op("deps.refresh_batch_statistics");
    pub const PLAN_BY_KEY: Op = Op("deps.plan_by_key");
    pub const BATCH_STATISTICS: Op = Op("deps.batch_statistics");
    pub const SETTLING_ON: Op = Op("deps.settling_on");
    pub const SETTLING_OFF: Op = Op("deps.settling_off");
    pub const HAS_CANCEL_WORK: Op = Op("deps.has_cancel_work");
    pub const COLLECT_CANCEL: Op = Op("deps.collect_cancel");
    pub const APPLY_CANCEL: Op = Op("deps.apply_cancel");
    pub const DROP_CHANGED_MEANWHILE: Op = Op("deps.drop_changed_meanwhile");
    pub const COUNT_ANY_WAITS_MET: Op = Op("deps.count_any_waits_met");
    pub const MARK_ANY_WAITS_MET: Op = Op("deps.mark_any_waits_met");
    pub const CARRY_ON_CANCEL: Op = Op("deps.carry_on_cancel");
    pub const CLEAR_FAILURES_AND_BATCH: Op = Op("deps.clear_failures_and_batch");
    pub const DONE_CANCEL: Op = Op("deps.done_cancel");
    pub const HAS_REARM_WORK: Op = Op("deps.has_rearm_work");
    pub const COLLECT_REARM: Op = Op("deps.collect_rearm");
    pub const BLOCK_REARM: Op = Op("deps.block_rearm");
    pub const BLOCK_BELOW: Op = Op("deps.block_below");
    pub const RESET_ROOT_WAITS: Op = Op("deps.reset_root_waits");
    pub const RESET_REVIVED_WAITS: Op = Op("deps.reset_revived_waits");
    pub const APPLY_REARM: Op = Op("deps.apply_rearm");
    pub const RECOUNT_BELOW_ROOTS: Op = Op("deps.recount_below_roots");
    pub const RECOUNT_BELOW_REVIVED: Op = Op("deps.recount_below_revived");
    pub const KEPT_CANCELLED: Op = Op("deps.kept_cancelled");
    pub const SET_REASON: Op = Op("deps.set_reason");
    pub const CARRY_ON_REARM: Op = Op("deps.carry_on_rearm");
    pub const DONE_REARM: Op = Op("deps.done_rearm");
    pub const CLEAR_REARMS_AND_BATCH: Op = Op("deps.clear_rearms_and_batch");
    pub const FAILED_DEPENDENCY: Op = Op("deps.failed_dependency");
    pub const OUTCOME: Op = Op("deps.outcome");
    pub const ARRAY_JOBS: Op = Op("deps.array_jobs");
    pub const INSERT_WAIT: Op = Op("deps.insert_wait");
    pub const NOTE_FAILURE: Op = Op("deps.note_failure");
    pub const RESTATE_LOOK: Op = Op("deps.restate_look");
    pub const UNMET: Op = Op("deps.unmet");
    pub const CANCEL_FOR: Op = Op("deps.cancel_for");
    pub const ARRAY_ACTIVE: Op = Op("deps.array_active");
    pub const RESTATE: Op = Op("deps.restate");
    pub const WAITING_FOR: Op = Op("deps.waiting_for");
    pub const FORGET_CANCEL: Op = Op("deps.forget_cancel");
    pub const FORGET_ANY: Op = Op("deps.forget_any");
    pub const FORGET_WAITS: Op = Op("deps.forget_waits");

    pub const ALL: &[Op] = &[
        CONNECTION_SETUP,
        NOTED,
        RELEASED,
        CLEAR_RELEASED,
        WORK_LEFT,
        RENOTE_CANCELS,
        NOTE_CANCELS,
        NOTE_REARMS,
        CLEAR_NOTES,
        BATCH_STATISTICS_STALE,
        REFRESH_BATCH_STATISTICS,
        PLAN_BY_KEY,
        BATCH_STATISTICS,
        SETTLING_ON,
        SETTLING_OFF,
        HAS_CANCEL_WORK,
        COLLECT_CANCEL,
        APPLY_CANCEL,
        DROP_CHANGED_MEANWHILE,
        COUNT_ANY_WAITS_MET,
        MARK_ANY_WAITS_MET,
        CARRY_ON_CANCEL,
        CLEAR_FAILURES_AND_BATCH,
        DONE_CANCEL,
        HAS_REARM_WORK,
        COLLECT_REARM,
        BLOCK_REARM,
        BLOCK_BELOW,
        RESET_ROOT_WAITS,
        RESET_REVIVED_WAITS,
        APPLY_REARM,
        RECOUNT_BELOW_ROOTS,
        RECOUNT_BELOW_REVIVED,
        KEPT_CANCELLED,
        SET_REASON,
        CARRY_ON_REARM,
        DONE_REARM,
        CLEAR_REARMS_AND_BATCH,
        FAILED_DEPENDENCY,
        OUTCOME,
        ARRAY_JOBS,
        INSERT_WAIT,
        NOTE_FAILURE,
        RESTATE_LOOK,
        UNMET,
        CANCEL_FOR,
        ARRAY_ACTIVE,
        RESTATE,
        WAITING_FOR,
        FORGET_CANCEL,
        FORGET_ANY,
        FORGET_WAITS,
    ];
}

/// Changes to jobs by the queue's modes: drawing jids, `submit --unique`, delete,
/// resubmit, kill requests; and the checks `wait` reports with.
pub mod jobs {
    use super::Op;

    pub const RESERVE_JIDS_PREPARE: Op = Op("jobs.reserve_jids_prepare");
    pub const RESERVE_JIDS: Op = Op("jobs.reserve_jids");
    pub const TWIN: Op = Op("jobs.twin");
    pub const MERGE_TWIN: Op = Op("jobs.merge_twin");
    pub const INSERT_ONE: Op = Op("jobs.insert_one");
    pub const DELETE: Op = Op("jobs.delete");
    pub const RESUBMIT: Op = Op("jobs.resubmit");
    pub const REQUEST_KILL: Op = Op("jobs.request_kill");
    pub const RESTRICTED_PENDING: Op = Op("jobs.restricted_pending");
    pub const COUNT_FAILED: Op = Op("jobs.count_failed");
    pub const HIGHEST_JID_GIVEN: Op = Op("jobs.highest_jid_given");
    pub const JID_COUNTER_EXISTS: Op = Op("jobs.jid_counter_exists");
    pub const CONTINUE_JIDS_ABOVE: Op = Op("jobs.continue_jids_above");

    pub const ALL: &[Op] = &[
        RESERVE_JIDS_PREPARE,
        RESERVE_JIDS,
        TWIN,
        MERGE_TWIN,
        INSERT_ONE,
        DELETE,
        RESUBMIT,
        REQUEST_KILL,
        RESTRICTED_PENDING,
        COUNT_FAILED,
        HIGHEST_JID_GIVEN,
        JID_COUNTER_EXISTS,
        CONTINUE_JIDS_ABOVE,
    ];
}

/// What `status`, `wait`, the status screen and the dashboard read: kept counts, the
/// ends of indexes, pause and drain marks.
pub mod status {
    use super::Op;

    pub const COUNTS: Op = Op("status.counts");
    pub const COUNT_IN_STATE: Op = Op("status.count_in_state");
    pub const HIGHEST_PRIORITY: Op = Op("status.highest_priority");
    pub const NEXT_PRIORITY_BELOW: Op = Op("status.next_priority_below");
    pub const NEWEST_AT_PRIORITY: Op = Op("status.newest_at_priority");
    pub const OLDEST_AT_PRIORITY: Op = Op("status.oldest_at_priority");
    pub const NEWEST_IN_STATE: Op = Op("status.newest_in_state");
    pub const OLDEST_IN_STATE: Op = Op("status.oldest_in_state");
    pub const LATEST_STARTED: Op = Op("status.latest_started");
    pub const EARLIEST_STARTED: Op = Op("status.earliest_started");
    pub const SHORTEST_FINISHED: Op = Op("status.shortest_finished");
    pub const LONGEST_FINISHED: Op = Op("status.longest_finished");
    pub const SHORTEST_DEAD: Op = Op("status.shortest_dead");
    pub const LONGEST_DEAD: Op = Op("status.longest_dead");
    pub const ENDED_SINCE: Op = Op("status.ended_since");
    pub const ENDED_PER_MINUTE: Op = Op("status.ended_per_minute");
    pub const ENDED_PER_MINUTE_AND_HOST: Op = Op("status.ended_per_minute_and_host");
    pub const FINISHED_WITH_CODES: Op = Op("status.finished_with_codes");
    pub const RUNNING_PER_HOST: Op = Op("status.running_per_host");
    pub const HELD_BACK: Op = Op("status.held_back");
    pub const LIVENESS_SETTINGS: Op = Op("status.liveness_settings");
    pub const LOCK_RECOVERED: Op = Op("status.lock_recovered");
    pub const PROGRESS: Op = Op("status.progress");
    pub const ARRAY_JOBS: Op = Op("status.array_jobs");
    pub const ANY_NEEDY: Op = Op("status.any_needy");
    pub const NEEDY_BEYOND: Op = Op("status.needy_beyond");
    pub const TIMELINE: Op = Op("status.timeline");
    pub const SIZE_BYTES: Op = Op("status.size_bytes");

    pub const ALL: &[Op] = &[
        COUNTS,
        COUNT_IN_STATE,
        HIGHEST_PRIORITY,
        NEXT_PRIORITY_BELOW,
        NEWEST_AT_PRIORITY,
        OLDEST_AT_PRIORITY,
        NEWEST_IN_STATE,
        OLDEST_IN_STATE,
        LATEST_STARTED,
        EARLIEST_STARTED,
        SHORTEST_FINISHED,
        LONGEST_FINISHED,
        SHORTEST_DEAD,
        LONGEST_DEAD,
        ENDED_SINCE,
        ENDED_PER_MINUTE,
        ENDED_PER_MINUTE_AND_HOST,
        FINISHED_WITH_CODES,
        RUNNING_PER_HOST,
        HELD_BACK,
        LIVENESS_SETTINGS,
        LOCK_RECOVERED,
        PROGRESS,
        ARRAY_JOBS,
        ANY_NEEDY,
        NEEDY_BEYOND,
        TIMELINE,
        SIZE_BYTES,
    ];
}

/// What a PostgreSQL queue without a job-file directory keeps in its database
/// (`store::in_database`): heartbeats, start journals, job files. PostgreSQL only.
pub mod in_database {
    use super::Op;

    pub const BEAT_WITH_INFO: Op = Op("in_database.beat_with_info");
    pub const BEAT: Op = Op("in_database.beat");
    pub const SERVER_NOW: Op = Op("in_database.server_now");
    pub const HEARTBEAT_AGE: Op = Op("in_database.heartbeat_age");
    pub const KNOWN_HOSTS: Op = Op("in_database.known_hosts");
    pub const JOURNAL_APPEND: Op = Op("in_database.journal_append");
    pub const JOURNAL_READ: Op = Op("in_database.journal_read");
    pub const JOURNAL_REMOVE: Op = Op("in_database.journal_remove");
    pub const REAP_OLD_JOURNALS: Op = Op("in_database.reap_old_journals");
    pub const PUT_CHUNK: Op = Op("in_database.put_chunk");
    pub const DROP_STREAM: Op = Op("in_database.drop_stream");
    pub const VISIBLE_CHUNKS: Op = Op("in_database.visible_chunks");
    pub const VISIBLE_CHUNK: Op = Op("in_database.visible_chunk");
    pub const STREAM_SIZE: Op = Op("in_database.stream_size");
    pub const CHUNK_STARTS: Op = Op("in_database.chunk_starts");
    pub const HOLD_IF_OURS: Op = Op("in_database.hold_if_ours");
    pub const DROP_EARLIER_RUNS: Op = Op("in_database.drop_earlier_runs");
    pub const REAP_ORPHANS: Op = Op("in_database.reap_orphans");
    pub const DROP_INPUTS: Op = Op("in_database.drop_inputs");
    pub const PROMOTE_STAGED: Op = Op("in_database.promote_staged");
    pub const DROP_STAGED: Op = Op("in_database.drop_staged");
    pub const REMOVE_FILES: Op = Op("in_database.remove_files");
    pub const DROP_OUTPUTS: Op = Op("in_database.drop_outputs");
    pub const DROP_DATA: Op = Op("in_database.drop_data");

    pub const ALL: &[Op] = &[
        BEAT_WITH_INFO,
        BEAT,
        SERVER_NOW,
        HEARTBEAT_AGE,
        KNOWN_HOSTS,
        JOURNAL_APPEND,
        JOURNAL_READ,
        JOURNAL_REMOVE,
        REAP_OLD_JOURNALS,
        PUT_CHUNK,
        DROP_STREAM,
        VISIBLE_CHUNKS,
        VISIBLE_CHUNK,
        STREAM_SIZE,
        CHUNK_STARTS,
        HOLD_IF_OURS,
        DROP_EARLIER_RUNS,
        REAP_ORPHANS,
        DROP_INPUTS,
        PROMOTE_STAGED,
        DROP_STAGED,
        REMOVE_FILES,
        DROP_OUTPUTS,
        DROP_DATA,
    ];
}

/// Queue-wide settings (`configure`), pause and drain marks.
pub mod attributes {
    use super::Op;

    /// Every attribute: key, value.
    pub const ALL: Op = Op("attributes.all");
    /// Every attribute, by key.
    pub const ALL_SORTED: Op = Op("attributes.all_sorted");
    /// The value of `$1`.
    pub const GET: Op = Op("attributes.get");
    /// Set `$1` to `$2`.
    pub const SET: Op = Op("attributes.set");
    /// Set `$1` to `$2` unless it is set.
    pub const SET_IF_ABSENT: Op = Op("attributes.set_if_absent");
    /// Remove `$1`.
    pub const REMOVE: Op = Op("attributes.remove");

    pub const ALL_OPS: &[Op] = &[ALL, ALL_SORTED, GET, SET, SET_IF_ABSENT, REMOVE];
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
}

pub fn capabilities(dialect: Dialect) -> Capabilities {
    match dialect {
        Dialect::Sqlite => Capabilities {
            dep_batch: 20_000,
            insert_batch: 64,
        },
        Dialect::Postgres => Capabilities {
            dep_batch: 5_000,
            insert_batch: 4096,
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
        .chain(attributes::ALL_OPS)
        .chain(deps::ALL)
        .chain(status::ALL)
        .chain(jobs::ALL)
        .copied()
}

/// The SQL files of each store: (family, text).
const SQLITE_FILES: &[(&str, &str)] = &[
    ("claims", include_str!("sqlite/claims.sql")),
    ("attributes", include_str!("sqlite/attributes.sql")),
    ("deps", include_str!("sqlite/deps.sql")),
    ("status", include_str!("sqlite/status.sql")),
    ("jobs", include_str!("sqlite/jobs.sql")),
];
const POSTGRES_FILES: &[(&str, &str)] = &[
    ("claims", include_str!("postgres/claims.sql")),
    ("attributes", include_str!("postgres/attributes.sql")),
    ("deps", include_str!("postgres/deps.sql")),
    ("in_database", include_str!("postgres/in_database.sql")),
    ("status", include_str!("postgres/status.sql")),
    ("jobs", include_str!("postgres/jobs.sql")),
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
    let mut out = HashMap::new();
    for (family, text) in files {
        for (name, body) in parse(text) {
            let (name, batch) = match name.strip_suffix("(batch)") {
                Some(name) => (name.trim_end(), true),
                None => (name.as_str(), false),
            };
            let sql = body.replace("{job_fields}", &fields);
            out.insert(format!("{family}.{name}"), Statement { sql, batch });
        }
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
