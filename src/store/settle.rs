//! Settling dependencies inside every write transaction: what the transaction's ends and
//! re-starts mean for the jobs waiting on them (`crate::deps` has the whole story). The
//! schema's triggers meet waits and release jobs; failures and re-starts are noted (into
//! temporary tables each connection makes) and settled here before the transaction
//! commits: cancelling the dependents of a failed job, re-arming those of a job that runs
//! again, a bounded batch at a time, with the rest on the durable work list `dep_work`.
//! It is part of the store because every write of either store must do it.

use crate::params;
use rusqlite::Connection;

use crate::error::Result;
use crate::store::Tx;
use crate::store::ops::deps as op;

/// Set up a read-write SQLite connection (after the schema is current): temporary tables
/// and triggers that note, during a write transaction, the jobs whose ends or new starts
/// concern jobs waiting for them (PostgreSQL's schema has them as row triggers).
pub fn install(conn: &Connection) -> Result<()> {
    let setup = crate::store::ops::sql(crate::store::Dialect::Sqlite, op::CONNECTION_SETUP);
    conn.execute_batch(setup)?;
    Ok(())
}

/// Jobs one batch of dependency work changes at most (each kind). A batch runs inside a
/// write transaction, so this bounds how long a cascade holds the queue's lock (about
/// 0.3 s for 20,000 jobs on SQLite, 0.3 s for 5,000 on PostgreSQL, on 2 cores: the
/// store's `dep_batch`); what is left waits in `dep_work` for the next transaction.
/// Tests make batches small with `RQ_TEST_DEP_BATCH`.
fn batch_size(tx: &Tx<'_>) -> i64 {
    static SIZE: std::sync::OnceLock<Option<i64>> = std::sync::OnceLock::new();
    let given = SIZE.get_or_init(|| {
        std::env::var("RQ_TEST_DEP_BATCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
    });
    given.unwrap_or(tx.capabilities().dep_batch)
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
    let (noted, work, released): (bool, bool, bool) = tx
        .op(op::NOTED)
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let mut settled = Settled::default();
    // Work this transaction caused is started here (and carried on by this process);
    // work others left is done only when asked (`carry_on`: their own continuation, or a
    // feeder's tick picking up what a stopped writer left), so an unrelated submit never
    // pays for someone else's cascade.
    let act = noted || (work && carry_on);
    if act {
        plan_for_batches(tx)?;
        if noted {
            note_work(tx)?;
        }
        settled.changed = cancel_batch(tx)? + rearm_batch(tx)?;
        settled.more = work_left(tx)?;
    }
    // A batch may release jobs too (an `after_any` wait met by a cancellation).
    settled.released = released || act && tx.op(op::RELEASED).query_row([], |r| r.get(0))?;
    if settled.released {
        tx.op(op::CLEAR_RELEASED).execute_batch()?;
    }
    Ok(settled)
}

/// Whether dependency work waits on the work list (a writer stopped between batches).
pub fn work_left(tx: &Tx<'_>) -> Result<bool> {
    tx.op(op::WORK_LEFT).query_row([], |r| r.get(0))
}

/// The failures and re-starts the triggers noted join the work list.
fn note_work(tx: &Tx<'_>) -> Result<()> {
    tx.op(op::RENOTE_CANCELS).execute([])?;
    tx.op(op::NOTE_CANCELS).execute([])?;
    tx.op(op::NOTE_REARMS).execute([])?;
    tx.op(op::CLEAR_NOTES).execute_batch()
}

/// Batches are planned on fresh statistics where the store plans by them (PostgreSQL:
/// refreshed from a small sample when a tenth of a table changed, and nested loops only,
/// so that each level and each batch reaches rows by key).
fn plan_for_batches(tx: &Tx<'_>) -> Result<()> {
    let stale: bool = tx
        .op(op::BATCH_STATISTICS_STALE)
        .query_row([], |r| r.get(0))?;
    if stale {
        tx.op(op::REFRESH_BATCH_STATISTICS).execute_batch()?;
    }
    tx.op(op::PLAN_BY_KEY).execute_batch()
}

/// A batch's own state changes are not noted as ends or re-starts (the batch knows them:
/// they are `dep_batch`). Undone if the transaction is.
fn settling(tx: &Tx<'_>, on: bool) -> Result<()> {
    tx.op(if on {
        op::SETTLING_ON
    } else {
        op::SETTLING_OFF
    })
    .execute_batch()
}

/// Cancel the `after` dependents of failed jobs on the work list (theirs in turn, each
/// with the reason of the failure it comes from), one batch. The jobs whose dependents a
/// batch did not reach stay on the list.
fn cancel_batch(tx: &Tx<'_>) -> Result<usize> {
    let has_work: bool = tx.op(op::HAS_CANCEL_WORK).query_row([], |r| r.get(0))?;
    if !has_work {
        return Ok(0);
    }
    let batch = tx.op(op::COLLECT_CANCEL).execute([batch_size(tx)])?;
    tx.op(op::BATCH_STATISTICS).execute_batch()?;
    settling(tx, true)?;
    let changed = tx.op(op::APPLY_CANCEL).execute([])?;
    settling(tx, false)?;
    if changed != batch {
        // Changed meanwhile by another session (PostgreSQL): not this batch's to follow.
        tx.op(op::DROP_CHANGED_MEANWHILE).execute([])?;
    }
    // Where the store's triggers did not count them: the `after_any` waits on these jobs
    // are over.
    tx.op(op::COUNT_ANY_WAITS_MET).execute([])?;
    tx.op(op::MARK_ANY_WAITS_MET).execute([])?;
    // Where the batch stopped: cancelled jobs with dependents it did not reach.
    tx.op(op::CARRY_ON_CANCEL).execute([])?;
    tx.op(op::CLEAR_FAILURES_AND_BATCH).execute_batch()?;
    tx.op(op::DONE_CANCEL).execute([])?;
    Ok(changed)
}

/// Jobs on the work list run again: the jobs waiting for them wait for the new run, and
/// those cancelled for want of them (theirs in turn) wait again, unless another job they
/// need failed too. One batch; where it stopped stays on the list.
fn rearm_batch(tx: &Tx<'_>) -> Result<usize> {
    let has_work: bool = tx.op(op::HAS_REARM_WORK).query_row([], |r| r.get(0))?;
    if !has_work {
        return Ok(0);
    }
    // Roots: work-list jobs that are to run again (others are dropped at the end); the
    // cancelled jobs below them, through cancelled jobs.
    tx.op(op::COLLECT_REARM).execute([batch_size(tx)])?;
    tx.op(op::BATCH_STATISTICS).execute_batch()?;
    // A job that needs one that failed and stays failed (not in this batch) stays
    // cancelled (skip 2), and so do the jobs of the batch below it (skip 1).
    let blocked = tx.op(op::BLOCK_REARM).execute([])?;
    if blocked > 0 {
        tx.op(op::BLOCK_BELOW).execute([])?;
    }
    // The waits on the roots and on the jobs that run again start over.
    tx.op(op::RESET_ROOT_WAITS).execute([])?;
    tx.op(op::RESET_REVIVED_WAITS).execute([])?;
    // Their own waits are counted here (at least the one on the job above them, just
    // reset: none is released); the jobs already waiting below the roots and them are
    // counted again next.
    settling(tx, true)?;
    let changed = tx.op(op::APPLY_REARM).execute([])?;
    settling(tx, false)?;
    tx.op(op::RECOUNT_BELOW_ROOTS).execute([])?;
    tx.op(op::RECOUNT_BELOW_REVIVED).execute([])?;
    // The ones that stay cancelled say which failed job keeps them.
    if blocked > 0 {
        let kept: Vec<i64> = tx
            .op(op::KEPT_CANCELLED)
            .query_map([], |r| r.get(0))?
            .collect::<crate::error::Result<_>>()?;
        for job in kept {
            if let Some(reason) = failed_dependency(tx, job)? {
                tx.op(op::SET_REASON).execute(params![reason, job])?;
            }
        }
    }
    // Where the batch stopped: jobs that run again with cancelled dependents it did not
    // reach; the roots are done once none is left below them.
    tx.op(op::CARRY_ON_REARM).execute([])?;
    tx.op(op::DONE_REARM).execute([])?;
    tx.op(op::CLEAR_REARMS_AND_BATCH).execute_batch()?;
    Ok(changed)
}

/// Why `job` cannot run: the first job it waits for with `after` that failed.
pub fn failed_dependency(tx: &Tx<'_>, job: i64) -> Result<Option<String>> {
    let mut stmt = tx.op(op::FAILED_DEPENDENCY);
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
