//! Named store operations: each store's SQL, side by side by name, in its own files
//! (`src/store/sqlite/*.sql`, `src/store/postgres/*.sql`), the way River keeps each
//! driver's queries. Protocol code runs an operation by name (`tx.op(claims::FINISH)`),
//! never SQL text, and each store runs its own statement as written: PostgreSQL's are in
//! PostgreSQL's dialect (`$N` placeholders, `FOR UPDATE SKIP LOCKED`, jsonb), not
//! translated from SQLite's.
//!
//! A file is a list of statements, each under a line `-- name: NAME` (comments after that
//! line document it). A statement with an empty body means "nothing to do on this store"
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

/// Queue-wide settings (`configure`), pause and drain marks.
pub mod attributes {
    use super::Op;

    /// Every attribute: key, value.
    pub const ALL: Op = Op("attributes.all");

    pub const ALL_OPS: &[Op] = &[ALL];
}

/// Every operation, of every family.
pub fn all() -> impl Iterator<Item = Op> {
    claims::ALL.iter().chain(attributes::ALL_OPS).copied()
}

/// The SQL files of each store: (family, text).
const SQLITE_FILES: &[(&str, &str)] = &[
    ("claims", include_str!("sqlite/claims.sql")),
    ("attributes", include_str!("sqlite/attributes.sql")),
];
const POSTGRES_FILES: &[(&str, &str)] = &[
    ("claims", include_str!("postgres/claims.sql")),
    ("attributes", include_str!("postgres/attributes.sql")),
];

static SQLITE: LazyLock<HashMap<String, String>> =
    LazyLock::new(|| catalog(SQLITE_FILES, Dialect::Sqlite));
static POSTGRES: LazyLock<HashMap<String, String>> =
    LazyLock::new(|| catalog(POSTGRES_FILES, Dialect::Postgres));

/// The statements of one store, by `family.name`.
pub fn statements(dialect: Dialect) -> &'static HashMap<String, String> {
    match dialect {
        Dialect::Sqlite => &SQLITE,
        Dialect::Postgres => &POSTGRES,
    }
}

/// The SQL of `op` on a store. Every operation has SQL in both stores' files (a test
/// checks), so a missing one is a bug in rq, not an input error.
pub fn sql(dialect: Dialect, op: Op) -> &'static str {
    statements(dialect)
        .get(op.0)
        .unwrap_or_else(|| panic!("no {dialect:?} SQL for the store operation {}", op.0))
}

fn catalog(files: &[(&str, &str)], dialect: Dialect) -> HashMap<String, String> {
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
            let body = body.replace("{job_fields}", &fields);
            out.insert(format!("{family}.{name}"), body);
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
            let known: Vec<&str> = all().map(|op| op.0).collect();
            for op in all() {
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
        // PostgreSQL's statements are written for it: no SQLite placeholders or hints.
        for (name, sql) in statements(Dialect::Postgres) {
            assert!(!sql.contains('?'), "{name} has a SQLite placeholder");
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
