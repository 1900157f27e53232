//! Dependencies between jobs (`submit --after`, `after:` in job lists).
//!
//! A job that waits for others is `waiting`: it is not in the claim path at all, so a
//! feeder never looks at dependency graphs. Who waits for whom is the table `deps` (one row
//! per wait, `met` once it is over). Two kinds of change follow a job's end:
//!
//! - the waits it satisfies are met (`finished` with exit 0 for `after`; any end for
//!   `after_any`), and a job whose last wait is over becomes `pending`: schema triggers
//!   (`deps_met`, `deps_released`) do this in the very transaction that records the end,
//!   whoever records it;
//! - when it failed (another exit, killed, dead and not to be restarted, cancelled), the
//!   jobs waiting for it with `after` are `cancelled` with the reason, and theirs in turn,
//!   however long the chain. SQLite limits how deep triggers may recurse, so this part is
//!   rq's: temporary triggers on each of rq's connections note the failures, and
//!   [`settle`] cancels their dependents before the transaction commits, a bounded batch
//!   at a time, with the rest on the durable work list `dep_work`.
//!
//! A job that goes back from an end to `pending` (resubmit, update) re-arms the jobs that
//! were cancelled because of it, and makes its dependents wait for its new run.
//! A job ends "for its dependents" when it is finished, cancelled, or dead for good (not
//! restartable, or out of attempts: a restartable dead job with attempts left runs again).

use std::collections::HashMap;

/// SQL for the queue's `max_attempts` setting (default 3, as `liveness::Settings`), from
/// the `attributes` table of `$schema` (`""` or `"main."`, for temporary triggers).
macro_rules! max_attempts {
    ($schema:literal) => {
        concat!(
            "coalesce((SELECT CAST(value AS INTEGER) FROM ",
            $schema,
            "attributes WHERE key = 'max_attempts'), 3)"
        )
    };
}

use rusqlite::{Connection, params};

use crate::error::{Error, Result};
use crate::input::{DepRef, JobSpec};
use crate::store::Tx;

/// Temporary (per-connection) tables and triggers that note, during a write transaction,
/// the jobs whose ends or new starts concern jobs waiting for them. Only rows that have
/// dependents are noted: a job nobody waits for costs one index probe. `dep_batch` holds
/// the jobs one batch of [`settle`] changes; a row in `dep_settling` turns the notes off
/// for a batch's own changes (see [`settling`]).
const TEMP_SQL: &str = concat!(
    r#"
CREATE TEMP TABLE IF NOT EXISTS dep_failures (jid INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS dep_rearms (jid INTEGER NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS dep_batch (jid INTEGER PRIMARY KEY, reason TEXT, skip INTEGER NOT NULL DEFAULT 0);
CREATE TEMP TABLE IF NOT EXISTS dep_settling (batch INTEGER);
CREATE TEMP TRIGGER IF NOT EXISTS dep_failed AFTER UPDATE OF state ON main.jobs
WHEN OLD.state IS NOT NEW.state AND NOT EXISTS (SELECT 1 FROM dep_settling)
 AND (NEW.state = 'cancelled' OR (NEW.state = 'finished' AND NEW.exit_status IS NOT 0)
      OR (NEW.state = 'dead' AND (NEW.restartable = 0
          OR NEW.attempts >= "#,
    max_attempts!("main."),
    r#")))
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
"#
);

/// Set up a read-write connection (after the schema is current).
pub fn install(conn: &Connection) -> Result<()> {
    conn.execute_batch(TEMP_SQL)?;
    Ok(())
}

/// The waits of job `?1` not over yet, on jobs still in the queue (a job deleted or
/// rotated away is waited for no longer).
const UNMET: &str = "(SELECT count(*) FROM deps d JOIN jobs w ON w.jid = d.dep \
                     WHERE d.job = ?1 AND d.met = 0)";

/// `UNMET` for the row being updated in `UPDATE jobs`.
const UNMET_HERE: &str = "(SELECT count(*) FROM deps d JOIN jobs w ON w.jid = d.dep \
                          WHERE d.job = jobs.jid AND d.met = 0)";

/// The SQL condition "job `j` failed, as its `after` dependents see it".
const FAILED: &str = concat!(
    "(j.state = 'cancelled' OR (j.state = 'finished' AND j.exit_status IS NOT 0) \
                      OR (j.state = 'dead' AND (j.restartable = 0 OR j.attempts >= ",
    max_attempts!(""),
    ")))"
);

/// `FAILED` for the job named `alias`.
fn failed(alias: &str) -> String {
    FAILED.replace("j.", &format!("{alias}."))
}

/// The states of a job that is to run (again): its dependents wait for it.
const QUEUED: &str = "('pending', 'holding', 'waiting', 'running')";

/// Jobs one batch of dependency work changes at most (each kind). A batch runs inside a
/// write transaction, so this bounds how long a cascade holds the queue's lock (about
/// 0.3 s for 20,000 jobs on SQLite, 0.3 s for 5,000 on PostgreSQL, on 2 cores); what
/// is left waits in `dep_work` for the next transaction. Tests make batches small with
/// `RQ_TEST_DEP_BATCH`.
fn batch_size(tx: &Tx<'_>) -> i64 {
    static SIZE: std::sync::OnceLock<Option<i64>> = std::sync::OnceLock::new();
    let given = SIZE.get_or_init(|| {
        std::env::var("RQ_TEST_DEP_BATCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
    });
    given.unwrap_or(if tx.is_postgres() { 5_000 } else { 20_000 })
}

/// What [`settle`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Settled {
    /// Jobs left `waiting` for `pending`: the store rings the doorbell once it committed,
    /// so idle feeders on other hosts come for them at once.
    pub released: bool,
    /// Work is left in `dep_work` for later transactions (the store goes on at once).
    pub more: bool,
    /// Jobs this batch cancelled or re-armed.
    pub changed: usize,
}

/// Carry out what the transaction's ends and re-starts mean for the jobs waiting on them;
/// run by the store before every write commits. Cheap when nothing was noted.
///
/// Set-based and bounded: the failures and re-starts noted by the triggers join the
/// queue's durable work list (`dep_work`: jobs whose dependents are still to be cancelled
/// or re-armed), and one batch of it is done here, each kind with a recursive query over
/// `deps` (at most `batch_size` jobs). A long chain is then a few short transactions
/// instead of one long one, other writers get the lock in between, and a crash between
/// them loses nothing: a feeder's next tick goes on.
pub fn settle(tx: &Tx<'_>, carry_on: bool) -> Result<Settled> {
    // Mostly nothing was noted: one statement says so (one round trip on PostgreSQL).
    let (noted, work, released): (bool, bool, bool) = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM dep_failures) OR EXISTS (SELECT 1 FROM dep_rearms), \
                EXISTS (SELECT 1 FROM dep_work), EXISTS (SELECT 1 FROM dep_released)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut settled = Settled::default();
    // Work this transaction caused is started here (and carried on by this process);
    // work others left is done only when asked (`carry_on`: their own continuation, or a
    // feeder's tick picking up what a stopped writer left), so an unrelated submit never
    // pays for someone else's cascade.
    let act = noted || (work && carry_on);
    if act {
        if tx.is_postgres() {
            plan_for_batches(tx)?;
        }
        if noted {
            note_work(tx)?;
        }
        settled.changed = cancel_batch(tx)? + rearm_batch(tx)?;
        settled.more = work_left(tx)?;
    }
    // A batch may release jobs too (an `after_any` wait met by a cancellation).
    settled.released = released
        || act
            && tx.query_row("SELECT EXISTS (SELECT 1 FROM dep_released)", [], |r| {
                r.get(0)
            })?;
    if settled.released {
        tx.execute_batch("DELETE FROM dep_released")?;
    }
    Ok(settled)
}

/// Whether dependency work waits on the work list (a writer stopped between batches).
pub fn work_left(tx: &Tx<'_>) -> Result<bool> {
    tx.query_row("SELECT EXISTS (SELECT 1 FROM dep_work)", [], |r| r.get(0))
}

/// The failures and re-starts the triggers noted join the work list.
fn note_work(tx: &Tx<'_>) -> Result<()> {
    // A job noted again (it failed anew, say) takes its newest reason.
    tx.execute(
        "DELETE FROM dep_work WHERE kind = 'cancel' AND jid IN (SELECT jid FROM dep_failures)",
        [],
    )?;
    tx.execute(
        "INSERT INTO dep_work (jid, kind, reason) SELECT jid, 'cancel', reason FROM dep_failures \
         WHERE true ON CONFLICT (jid, kind) DO NOTHING",
        [],
    )?;
    tx.execute(
        "INSERT INTO dep_work (jid, kind) SELECT jid, 'rearm' FROM dep_rearms \
         WHERE true ON CONFLICT (jid, kind) DO NOTHING",
        [],
    )?;
    tx.execute_batch("DELETE FROM dep_failures; DELETE FROM dep_rearms;")?;
    Ok(())
}

/// SQLite keeps the order of tables joined with CROSS JOIN as written: the batch queries
/// go from the work list through `deps` to jobs, where its planner, without statistics,
/// may instead scan the jobs of a state once per row (quadratic on a long chain).
/// PostgreSQL plans them well as they are.
fn ordered(tx: &Tx<'_>, sql: &str) -> String {
    if tx.is_postgres() {
        sql.to_string()
    } else {
        sql.replace(" JOIN ", " CROSS JOIN ")
    }
}

/// A batch's recursive query into `dep_batch`: from `seed`, then level by level from the
/// rows found (`cte`'s first column is a jid) to their dependents: `deps` rows `d` whose
/// `dep` is the row found, meeting `wait`, whose job's state is one of `states`; at most
/// `batch_size` rows. SQLite stops at a LIMIT inside the recursion and follows the joins
/// as written (`ordered`); PostgreSQL allows no LIMIT there but computes only what an
/// outer LIMIT fetches, and each level is a LATERAL subquery behind OFFSET 0 that looks
/// every row up by key (planned as one join, without fresh statistics, it scanned `deps`
/// or the jobs of a state once per level: quadratic).
fn batch_query(
    tx: &Tx<'_>,
    cte: &str,
    seed: &str,
    carried: &str,
    wait: &str,
    states: &str,
) -> String {
    let limit = batch_size(tx);
    let name = cte.split('(').next().unwrap_or(cte);
    if tx.is_postgres() {
        format!(
            "WITH RECURSIVE {cte} AS ({seed} UNION \
                 SELECT x.job{carried} FROM {name} CROSS JOIN LATERAL ( \
                     SELECT d.job FROM deps d WHERE d.dep = {name}.jid AND {wait} \
                       AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN {states} \
                     OFFSET 0) x) \
             INSERT INTO dep_batch SELECT * FROM {name} LIMIT {limit} ON CONFLICT (jid) DO NOTHING"
        )
    } else {
        ordered(
            tx,
            &format!(
                "WITH RECURSIVE {cte} AS ({seed} UNION \
                     SELECT d.job{carried} FROM {name} JOIN deps d ON d.dep = {name}.jid \
                     JOIN jobs j ON j.jid = d.job WHERE {wait} AND j.state IN {states} \
                     LIMIT {limit}) \
                 INSERT INTO dep_batch SELECT * FROM {name} WHERE true ON CONFLICT (jid) DO NOTHING"
            ),
        )
    }
}

/// PostgreSQL: batches are planned on what the server knows of `jobs` and `deps`, and a
/// queue's statistics are often older than its jobs (a chain submitted a moment ago:
/// "78 waiting jobs" when there are 40,000), so the planner scanned or hashed a whole
/// table once per level or per batch (quadratic). The statistics batches plan by (how
/// many jobs are in each state; which waits are met) are refreshed when a tenth of a
/// table changed since they were taken, from a small sample (3,000 rows: about 20 ms on
/// a 100,000-job queue, where a full ANALYZE took 250-400 ms per batch), and nested loops
/// are the only joins until the transaction ends: each level and each batch reaches rows
/// by key.
fn plan_for_batches(tx: &Tx<'_>) -> Result<()> {
    let stale: bool = tx.query_row(
        "SELECT coalesce(bool_or(n_mod_since_analyze > greatest(1000, n_live_tup / 10)), false) \
         FROM pg_stat_user_tables WHERE relid IN (to_regclass('jobs'), to_regclass('deps'))",
        [],
        |r| r.get(0),
    )?;
    if stale {
        tx.execute_batch(
            "SET LOCAL default_statistics_target = 10; ANALYZE jobs, deps; \
             SET LOCAL default_statistics_target TO DEFAULT",
        )?;
    }
    tx.execute_batch("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
}

/// "Job `jid` has a dependent (a `deps` row `d` meeting `wait`) whose state is one of
/// `states`", written so that both stores look each row up by key (a join with `jobs`
/// let PostgreSQL scan every job of those states once per row: quadratic).
fn has_dependents(tx: &Tx<'_>, jid: &str, wait: &str, states: &str) -> String {
    // OFFSET keeps PostgreSQL from turning the test into a join; SQLite needs no help
    // (and takes no OFFSET without a LIMIT).
    let per_row = if tx.is_postgres() { " OFFSET 0" } else { "" };
    format!(
        "EXISTS (SELECT 1 FROM deps d WHERE d.dep = {jid} AND {wait} \
           AND (SELECT j.state FROM jobs j WHERE j.jid = d.job) IN {states}{per_row})"
    )
}

/// PostgreSQL plans the statements that follow by what it knows of `dep_batch`: told
/// nothing, it scanned every waiting (or cancelled) job of the queue once per batch to
/// find the batch's few thousand (quadratic over a long chain).
fn fresh_statistics(tx: &Tx<'_>) -> Result<()> {
    if tx.is_postgres() {
        tx.execute_batch("ANALYZE dep_batch")?;
    }
    Ok(())
}

/// A batch's own state changes are not noted as ends or re-starts (the batch knows them:
/// they are `dep_batch`): SQLite's temporary triggers read `dep_settling`, PostgreSQL's
/// row triggers `deps_met` and `dep_note` read `rq.settling`, and there the batch also
/// does `deps_met`'s work itself, set-based (PL/pgSQL per row cost ~0.1 ms a job).
/// Both are undone if the transaction is.
fn settling(tx: &Tx<'_>, on: bool) -> Result<()> {
    tx.execute_batch(match (tx.is_postgres(), on) {
        (true, true) => "SET LOCAL rq.settling = on",
        (true, false) => "SET LOCAL rq.settling = off",
        (false, true) => "INSERT INTO dep_settling (batch) VALUES (1)",
        (false, false) => "DELETE FROM dep_settling",
    })
}

/// Cancel the `after` dependents of failed jobs on the work list (theirs in turn, each
/// with the reason of the failure it comes from), one batch. The jobs whose dependents a
/// batch did not reach stay on the list.
fn cancel_batch(tx: &Tx<'_>) -> Result<usize> {
    let run = |sql: &str| tx.execute(&ordered(tx, sql), []);
    let has_work: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM dep_work WHERE kind = 'cancel')",
        [],
        |r| r.get(0),
    )?;
    if !has_work {
        return Ok(0);
    }
    let root_failed = failed("f");
    let waiting = "('waiting', 'holding')";
    let batch = tx.execute(
        &batch_query(
            tx,
            "doomed(jid, reason, skip)",
            &ordered(
                tx,
                &format!(
                    "SELECT d.job, w.reason, 0 FROM dep_work w JOIN jobs f ON f.jid = w.jid \
                     JOIN deps d ON d.dep = w.jid JOIN jobs j ON j.jid = d.job \
                     WHERE w.kind = 'cancel' AND {root_failed} AND d.kind = 'ok' \
                       AND j.state IN {waiting}"
                ),
            ),
            ", doomed.reason, 0",
            "d.kind = 'ok'",
            waiting,
        ),
        [],
    )?;
    fresh_statistics(tx)?;
    settling(tx, true)?;
    let changed = run("UPDATE jobs SET state = 'cancelled', \
             reason = (SELECT b.reason FROM dep_batch b WHERE b.jid = jobs.jid) \
         WHERE jid IN (SELECT jid FROM dep_batch) AND state IN ('waiting', 'holding')")?;
    settling(tx, false)?;
    if changed != batch {
        // Changed meanwhile by another session (PostgreSQL): not this batch's to follow.
        run("DELETE FROM dep_batch WHERE NOT EXISTS ( \
                 SELECT 1 FROM jobs j WHERE j.jid = dep_batch.jid AND j.state = 'cancelled')")?;
    }
    if tx.is_postgres() {
        // `deps_met`'s work, skipped per row: the `after_any` waits on these jobs are over.
        run("UPDATE jobs SET waiting_on = jobs.waiting_on - c.n FROM ( \
                 SELECT d.job, count(*) AS n FROM dep_batch b JOIN deps d ON d.dep = b.jid \
                 WHERE d.met = 0 AND d.kind = 'any' GROUP BY d.job) c \
             WHERE jobs.jid = c.job")?;
        run("UPDATE deps SET met = 1 WHERE met = 0 AND kind = 'any' \
             AND dep IN (SELECT jid FROM dep_batch)")?;
    }
    // Where the batch stopped: cancelled jobs with dependents it did not reach.
    run(&format!(
        "INSERT INTO dep_work (jid, kind, reason) SELECT b.jid, 'cancel', b.reason \
         FROM dep_batch b WHERE {} ON CONFLICT (jid, kind) DO NOTHING",
        has_dependents(tx, "b.jid", "d.kind = 'ok'", waiting)
    ))?;
    tx.execute_batch("DELETE FROM dep_failures; DELETE FROM dep_batch;")?;
    run(&format!(
        "DELETE FROM dep_work WHERE kind = 'cancel' AND NOT ( \
             EXISTS (SELECT 1 FROM jobs f WHERE f.jid = dep_work.jid AND {root_failed}) \
             AND {})",
        has_dependents(tx, "dep_work.jid", "d.kind = 'ok'", waiting)
    ))?;
    Ok(changed)
}

/// Jobs on the work list run again: the jobs waiting for them wait for the new run, and
/// those cancelled for want of them (theirs in turn) wait again, unless another job they
/// need failed too. One batch; where it stopped stays on the list.
fn rearm_batch(tx: &Tx<'_>) -> Result<usize> {
    let run = |sql: &str| tx.execute(&ordered(tx, sql), []);
    let has_work: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM dep_work WHERE kind = 'rearm')",
        [],
        |r| r.get(0),
    )?;
    if !has_work {
        return Ok(0);
    }
    // Roots: work-list jobs that are to run again (others are dropped at the end).
    let roots = format!(
        "(SELECT w.jid FROM dep_work w JOIN jobs r ON r.jid = w.jid \
          WHERE w.kind = 'rearm' AND r.state IN {QUEUED})"
    );
    let revived = "(SELECT jid FROM dep_batch WHERE skip = 0)";
    // The cancelled jobs below them, through cancelled jobs.
    tx.execute(
        &batch_query(
            tx,
            "revive(jid, reason, skip)",
            &ordered(
                tx,
                &format!(
                    "SELECT d.job, CAST(NULL AS TEXT), 0 FROM deps d JOIN jobs j ON j.jid = d.job \
                     WHERE d.dep IN {roots} AND j.state = 'cancelled'"
                ),
            ),
            ", CAST(NULL AS TEXT), 0",
            "true",
            "('cancelled')",
        ),
        [],
    )?;
    fresh_statistics(tx)?;
    // A job that needs one that failed and stays failed (not in this batch) stays
    // cancelled (skip 2), and so do the jobs of the batch below it (skip 1).
    let dep_failed = failed("f");
    let blocked = run(&format!(
        "UPDATE dep_batch SET skip = 2 WHERE EXISTS ( \
             SELECT 1 FROM deps d WHERE d.job = dep_batch.jid AND d.kind = 'ok' \
               AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = d.dep) \
               AND EXISTS (SELECT 1 FROM jobs f WHERE f.jid = d.dep AND {dep_failed}))"
    ))?;
    if blocked > 0 {
        run("WITH RECURSIVE below(jid) AS ( \
                 SELECT jid FROM dep_batch WHERE skip = 2 \
                 UNION SELECT d.job FROM below JOIN deps d ON d.dep = below.jid \
                 JOIN dep_batch b ON b.jid = d.job) \
             UPDATE dep_batch SET skip = 1 WHERE skip = 0 AND jid IN (SELECT jid FROM below)")?;
    }
    // The waits on the roots and on the jobs that run again start over.
    for from in [roots.as_str(), revived] {
        run(&format!(
            "UPDATE deps SET met = 0 WHERE met = 1 AND dep IN {from} AND EXISTS ( \
                 SELECT 1 FROM jobs j WHERE j.jid = deps.job \
                   AND j.state IN ('waiting', 'holding', 'cancelled'))"
        ))?;
    }
    // Their own waits are counted here (at least the one on the job above them, just
    // reset: none is released); the jobs already waiting below the roots and them are
    // counted again next.
    settling(tx, true)?;
    let changed = run(&format!(
        "UPDATE jobs SET state = 'waiting', reason = NULL, waiting_on = {UNMET_HERE} \
         WHERE jid IN {revived} AND state = 'cancelled'"
    ))?;
    settling(tx, false)?;
    for from in [roots.as_str(), revived] {
        run(&format!(
            "UPDATE jobs SET waiting_on = {UNMET_HERE} \
             WHERE jid IN (SELECT d.job FROM deps d WHERE d.dep IN {from}) \
               AND state IN ('waiting', 'holding') \
               AND NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = jobs.jid)"
        ))?;
    }
    // The ones that stay cancelled say which failed job keeps them.
    if blocked > 0 {
        let kept: Vec<i64> =
            tx.query_map("SELECT jid FROM dep_batch WHERE skip = 2", [], |r| r.get(0))?;
        for job in kept {
            if let Some(reason) = failed_dependency(tx, job)? {
                tx.execute(
                    "UPDATE jobs SET reason = ? WHERE jid = ?",
                    params![reason, job],
                )?;
            }
        }
    }
    // Where the batch stopped: jobs that run again with cancelled dependents it did not
    // reach; the roots are done once none is left below them.
    let unreached = |jid: &str| {
        has_dependents(
            tx,
            jid,
            "NOT EXISTS (SELECT 1 FROM dep_batch b WHERE b.jid = d.job)",
            "('cancelled')",
        )
    };
    run(&format!(
        "INSERT INTO dep_work (jid, kind) SELECT r.jid, 'rearm' FROM dep_batch r \
         WHERE r.skip = 0 AND {} ON CONFLICT (jid, kind) DO NOTHING",
        unreached("r.jid")
    ))?;
    run(&format!(
        "DELETE FROM dep_work WHERE kind = 'rearm' AND NOT ( \
             EXISTS (SELECT 1 FROM jobs r WHERE r.jid = dep_work.jid AND r.state IN {QUEUED}) \
             AND {})",
        unreached("dep_work.jid")
    ))?;
    tx.execute_batch("DELETE FROM dep_rearms; DELETE FROM dep_batch;")?;
    Ok(changed)
}

/// Why `job` cannot run: the first job it waits for with `after` that failed.
fn failed_dependency(tx: &Tx<'_>, job: i64) -> Result<Option<String>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT j.jid, j.state, j.exit_status, j.signal, j.reason FROM deps d \
         JOIN jobs j ON j.jid = d.dep WHERE d.job = ? AND d.kind = 'ok' AND {FAILED} \
         ORDER BY j.jid LIMIT 1"
    ))?;
    let mut rows = stmt.query([job])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let (jid, state, exit, signal, reason): (
        i64,
        String,
        Option<i64>,
        Option<String>,
        Option<String>,
    ) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    Ok(Some(failure_reason(
        jid,
        &state,
        exit,
        signal.as_deref(),
        reason.as_deref(),
    )))
}

/// The reason given to the dependents of a failed job (the same words as `dep_failed`).
pub fn failure_reason(
    jid: i64,
    state: &str,
    exit: Option<i64>,
    signal: Option<&str>,
    reason: Option<&str>,
) -> String {
    match (state, exit, signal) {
        ("cancelled", _, _) => reason
            .map(str::to_string)
            .unwrap_or_else(|| format!("dependency {jid} was cancelled")),
        ("finished", Some(code), _) => format!("dependency {jid} exited {code}"),
        (_, _, Some(signal)) => format!("dependency {jid} was killed by {signal}"),
        _ => format!("dependency {jid} died"),
    }
}

// ---- Submitting jobs that wait ------------------------------------------------------

/// The two kinds of wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `after`: the job must finish with exit 0 (Slurm's afterok).
    Ok,
    /// `after_any`: the job must have ended, whatever the result (afterany).
    Any,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Any => "any",
        }
    }
}

/// A job waited for, resolved: another job of the same submit (by its position in it), a
/// job already in the queue, or every job of an array already in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wait {
    Item(usize),
    Jid(i64),
    Array(i64),
}

/// What a submit's first pass learns about names and waits (kept only for the jobs that
/// have them, plus 16 bytes per job read from rq's own listing).
#[derive(Debug, Default)]
pub struct Plan {
    names: HashMap<String, usize>,
    /// (jid in the listing it came from, position in this submit)
    listed: Vec<(i64, usize)>,
    waits: Vec<(usize, Vec<DepRef>, Vec<DepRef>)>,
}

/// Each waiting job of a submit (by position, in order) with what it waits for.
pub type Resolved = Vec<(usize, Vec<(Wait, Kind)>)>;

impl Plan {
    /// Note job `index` of the submit.
    pub fn note(&mut self, index: usize, spec: &JobSpec) -> Result<()> {
        if let Some(name) = &spec.name
            && let Some(earlier) = self.names.insert(name.clone(), index)
        {
            return Err(Error::input(format!(
                "job {}: the name '{name}' is already job {}'s; names in one list must differ; \
                 nothing was submitted",
                index + 1,
                earlier + 1
            )));
        }
        if let Some(jid) = spec.listed_jid {
            self.listed.push((jid, index));
        }
        if !spec.after.is_empty() || !spec.after_any.is_empty() {
            self.waits
                .push((index, spec.after.clone(), spec.after_any.clone()));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.waits.is_empty()
    }

    /// Names and listed jids turned into positions; refuses unknown names and cycles.
    pub fn resolve(mut self) -> Result<Resolved> {
        self.listed.sort_unstable();
        let listed = |jid: i64| {
            self.listed
                .binary_search_by_key(&jid, |&(j, _)| j)
                .ok()
                .map(|i| self.listed[i].1)
        };
        let mut resolved = Vec::with_capacity(self.waits.len());
        for (index, after, after_any) in &self.waits {
            let mut waits = Vec::new();
            for (refs, kind) in [(after, Kind::Ok), (after_any, Kind::Any)] {
                for dep in refs {
                    let wait = match dep {
                        DepRef::Name(name) => {
                            Wait::Item(*self.names.get(name).ok_or_else(|| {
                                Error::input(format!(
                                    "job {}: waits for '{name}', but no job of this list has that \
                                 name; nothing was submitted",
                                    index + 1
                                ))
                            })?)
                        }
                        DepRef::Jid(jid) => listed(*jid).map_or(Wait::Jid(*jid), Wait::Item),
                        DepRef::Array(id) => Wait::Array(*id),
                    };
                    if wait == Wait::Item(*index) {
                        return Err(Error::input(format!(
                            "job {}: waits for itself; nothing was submitted",
                            index + 1
                        )));
                    }
                    if !waits.iter().any(|(w, _)| *w == wait) {
                        waits.push((wait, kind));
                    }
                }
            }
            resolved.push((*index, waits));
        }
        check_cycles(&resolved)?;
        Ok(resolved)
    }
}

/// Refuse a list whose jobs wait for each other in a circle (they could never run).
fn check_cycles(resolved: &Resolved) -> Result<()> {
    let edges: HashMap<usize, Vec<usize>> = resolved
        .iter()
        .map(|(i, waits)| {
            let items = waits
                .iter()
                .filter_map(|(w, _)| match w {
                    Wait::Item(j) => Some(*j),
                    _ => None,
                })
                .collect();
            (*i, items)
        })
        .collect();
    // 1: on the current path, 2: done.
    let mut mark: HashMap<usize, u8> = HashMap::new();
    for &start in edges.keys() {
        if mark.contains_key(&start) {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        mark.insert(start, 1);
        while let Some((node, next)) = stack.pop() {
            let targets = edges.get(&node).map_or(&[][..], Vec::as_slice);
            if let Some(&target) = targets.get(next) {
                stack.push((node, next + 1));
                match mark.get(&target) {
                    Some(1) => {
                        let mut path: Vec<usize> = stack.iter().map(|(n, _)| *n + 1).collect();
                        let from = path.iter().position(|n| *n == target + 1).unwrap_or(0);
                        path.drain(..from);
                        path.push(target + 1);
                        let path: Vec<String> = path.iter().map(|n| n.to_string()).collect();
                        return Err(Error::input(format!(
                            "the jobs of this list wait for each other in a circle (jobs {}); \
                             nothing was submitted",
                            path.join(" -> ")
                        )));
                    }
                    Some(_) => {}
                    None => {
                        mark.insert(target, 1);
                        stack.push((target, 0));
                    }
                }
            } else {
                mark.insert(node, 2);
            }
        }
    }
    Ok(())
}

/// How a new job starts out, given what it waits for.
#[derive(Debug, Default)]
pub struct Start {
    /// jids it waits for, by kind (for the `after`/`after_any` columns).
    pub after: Vec<i64>,
    pub after_any: Vec<i64>,
    /// Waits not over yet.
    pub unmet: i64,
    /// A job it needs (`after`) already failed: it is cancelled from the start.
    pub failed: Option<String>,
    /// (jid waited for, kind, met)
    edges: Vec<(i64, Kind, bool)>,
}

/// Where a job already in the queue stands, as the jobs waiting for it see it.
#[derive(Debug, Clone)]
struct Outcome {
    state: String,
    exit_status: Option<i64>,
    signal: Option<String>,
    reason: Option<String>,
    /// Dead now, but it may run again (restartable, with attempts left).
    restartable: bool,
}

/// What is known, inside a submit's transaction, about jobs already in the queue.
#[derive(Debug, Default)]
pub struct Lookups {
    jobs: HashMap<i64, Option<Outcome>>,
    arrays: HashMap<i64, Vec<i64>>,
}

impl Lookups {
    fn job(&mut self, tx: &Tx<'_>, jid: i64) -> Result<Option<Outcome>> {
        if let Some(found) = self.jobs.get(&jid) {
            return Ok(found.clone());
        }
        let found = tx
            .prepare_cached(concat!(
                "SELECT state, exit_status, signal, reason, \
                 restartable = 1 AND attempts < ",
                max_attempts!(""),
                " FROM jobs WHERE jid = ?"
            ))?
            .query_row([jid], |r| {
                Ok(Outcome {
                    state: r.get(0)?,
                    exit_status: r.get(1)?,
                    signal: r.get(2)?,
                    reason: r.get(3)?,
                    restartable: r.get(4)?,
                })
            })
            .ok();
        self.jobs.insert(jid, found.clone());
        Ok(found)
    }

    fn array(&mut self, tx: &Tx<'_>, id: i64) -> Result<Vec<i64>> {
        if let Some(jids) = self.arrays.get(&id) {
            return Ok(jids.clone());
        }
        let jids: Vec<i64> = tx
            .prepare_cached("SELECT jid FROM jobs WHERE array_id = ? ORDER BY jid")?
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        self.arrays.insert(id, jids.clone());
        Ok(jids)
    }
}

/// Work out how job `number` (1-based, for messages) starts: `waits` resolved, items of
/// this submit at `jid_of(position)`.
pub fn start(
    tx: &Tx<'_>,
    lookups: &mut Lookups,
    number: usize,
    waits: &[(Wait, Kind)],
    jid_of: &dyn Fn(usize) -> i64,
) -> Result<Start> {
    let mut start = Start::default();
    let mut seen = std::collections::HashSet::new();
    for &(wait, kind) in waits {
        let jids = match wait {
            Wait::Item(i) => vec![(jid_of(i), true)],
            Wait::Jid(jid) => vec![(jid, false)],
            Wait::Array(id) => {
                let jids = lookups.array(tx, id)?;
                if jids.is_empty() {
                    return Err(Error::input(format!(
                        "job {number}: waits for array:{id}, which has no jobs in this queue; \
                         nothing was submitted"
                    )));
                }
                jids.into_iter().map(|j| (j, false)).collect()
            }
        };
        for (jid, new) in jids {
            if !seen.insert(jid) {
                continue;
            }
            let met = if new {
                false
            } else {
                let Some(Outcome {
                    state,
                    exit_status: exit,
                    signal,
                    reason,
                    restartable,
                }) = lookups.job(tx, jid)?
                else {
                    return Err(Error::input(format!(
                        "job {number}: waits for job {jid}, which is not in this queue; \
                         nothing was submitted"
                    )));
                };
                let succeeded = state == "finished" && exit == Some(0);
                let failed = !succeeded
                    && (state == "finished"
                        || state == "cancelled"
                        || (state == "dead" && !restartable));
                if failed && kind == Kind::Ok && start.failed.is_none() {
                    start.failed = Some(failure_reason(
                        jid,
                        &state,
                        exit,
                        signal.as_deref(),
                        reason.as_deref(),
                    ));
                }
                succeeded || (failed && kind == Kind::Any)
            };
            if !met {
                start.unmet += 1;
            }
            match kind {
                Kind::Ok => start.after.push(jid),
                Kind::Any => start.after_any.push(jid),
            }
            start.edges.push((jid, kind, met));
        }
    }
    Ok(start)
}

/// Record the waits of new job `jid` (after its row is inserted).
pub fn record(tx: &Tx<'_>, jid: i64, start: &Start) -> Result<()> {
    let mut insert =
        tx.prepare_cached("INSERT INTO deps (dep, job, kind, met) VALUES (?, ?, ?, ?)")?;
    for &(dep, kind, met) in &start.edges {
        insert.execute(params![dep, jid, kind.as_str(), met])?;
    }
    if let Some(reason) = &start.failed {
        // Jobs of the same submit waiting for this one are cancelled in turn by `settle`.
        tx.prepare_cached("INSERT INTO dep_failures (jid, reason) VALUES (?, ?)")?
            .execute(params![jid, reason])?;
    }
    Ok(())
}

/// Job `jid` was just put back to `pending` by a person (resubmit, update): it still waits
/// for what it was submitted to wait for (or is cancelled again if one of those failed),
/// and for a place when its array has a limit.
pub fn restate(tx: &Tx<'_>, jid: i64) -> Result<()> {
    let found: Option<(String, Option<i64>, Option<i64>)> = tx
        .prepare_cached("SELECT state, array_id, array_limit FROM jobs WHERE jid = ?")?
        .query_row([jid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .ok();
    let Some((state, array_id, array_limit)) = found else {
        return Ok(());
    };
    if state != "pending" {
        return Ok(());
    }
    let unmet: i64 = tx
        .prepare_cached(&format!("SELECT {UNMET}"))?
        .query_row([jid], |r| r.get(0))?;
    if let Some(reason) = failed_dependency(tx, jid)? {
        tx.prepare_cached(
            "UPDATE jobs SET state = 'cancelled', reason = ?, waiting_on = ? WHERE jid = ?",
        )?
        .execute(params![reason, unmet, jid])?;
        return Ok(());
    }
    let array_full = match (array_id, array_limit) {
        (Some(id), Some(limit)) => {
            let active: i64 = tx
                .prepare_cached(concat!(
                    "SELECT count(*) FROM jobs WHERE array_id = ?1 AND jid != ?2 \
                     AND (state IN ('pending', 'running') \
                          OR (state = 'dead' AND restartable = 1 AND attempts < ",
                    max_attempts!(""),
                    "))"
                ))?
                .query_row([id, jid], |r| r.get(0))?;
            active >= limit
        }
        _ => false,
    };
    let waits = unmet > 0 || array_full;
    tx.prepare_cached("UPDATE jobs SET state = ?, waiting_on = ?, reason = NULL WHERE jid = ?")?
        .execute(params![
            if waits { "waiting" } else { "pending" },
            unmet,
            jid
        ])?;
    Ok(())
}

/// Jobs `jid` is waited for by that have not run yet: (jid, kind).
pub fn waiting_for(tx: &Tx<'_>, jid: i64) -> Result<Vec<(i64, Kind)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT d.job, d.kind FROM deps d JOIN jobs j ON j.jid = d.job \
         WHERE d.dep = ? AND d.met = 0 AND j.state IN ('waiting', 'holding')",
    )?;
    let found = stmt
        .query_map([jid], |r| {
            let kind: String = r.get(1)?;
            Ok((r.get(0)?, if kind == "any" { Kind::Any } else { Kind::Ok }))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(found)
}

/// Job `jid` is about to be deleted although jobs wait for it (`delete --force`): those
/// that needed it to succeed are cancelled (theirs in turn, by `settle`), those that
/// only waited for it to end wait no longer.
pub fn forget(tx: &Tx<'_>, jid: i64) -> Result<()> {
    tx.prepare_cached(
        "UPDATE jobs SET state = 'cancelled', reason = 'dependency ' || ?1 || ' was deleted' \
         WHERE jid IN (SELECT job FROM deps WHERE dep = ?1 AND kind = 'ok' AND met = 0) \
           AND state IN ('waiting', 'holding')",
    )?
    .execute([jid])?;
    tx.prepare_cached(
        "UPDATE jobs SET waiting_on = waiting_on - 1 \
         WHERE jid IN (SELECT job FROM deps WHERE dep = ?1 AND kind = 'any' AND met = 0)",
    )?
    .execute([jid])?;
    tx.prepare_cached("DELETE FROM deps WHERE dep = ?")?
        .execute([jid])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(edges: &[(usize, &[usize])]) -> Resolved {
        edges
            .iter()
            .map(|(i, deps)| {
                (
                    *i,
                    deps.iter().map(|d| (Wait::Item(*d), Kind::Ok)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn diamonds_and_chains_are_not_circles() {
        // 0 <- 1, 0 <- 2, {1, 2} <- 3; a long chain.
        assert!(check_cycles(&waits(&[(1, &[0]), (2, &[0]), (3, &[1, 2])])).is_ok());
        let chain: Vec<(usize, Vec<usize>)> = (1..10_000).map(|i| (i, vec![i - 1])).collect();
        let chain: Vec<(usize, &[usize])> = chain.iter().map(|(i, d)| (*i, d.as_slice())).collect();
        assert!(check_cycles(&waits(&chain)).is_ok());
    }

    #[test]
    fn circles_are_found_and_named() {
        let err = check_cycles(&waits(&[(0, &[2]), (1, &[0]), (2, &[1]), (3, &[0])]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("circle"), "{err}");
        assert!(err.contains("->"), "{err}");
    }
}
