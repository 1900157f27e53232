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

use rusqlite::{Connection, params};

use crate::error::{Error, Result};
use crate::input::{DepRef, JobSpec};
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
            .collect::<rusqlite::Result<_>>()?;
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
fn failed_dependency(tx: &Tx<'_>, job: i64) -> Result<Option<String>> {
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
            .op(op::OUTCOME)
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
            .op(op::ARRAY_JOBS)
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

/// Record the waits of new jobs (after their rows are inserted): (jid, its start), in
/// statements of up to `WAITS_PER_STATEMENT` waits each (one round trip per wait made a
/// server-kept queue's chain submit 10 times slower).
pub fn record(tx: &Tx<'_>, starts: &[(i64, Start)]) -> Result<()> {
    const WAITS_PER_STATEMENT: usize = 10_000;
    let waits: Vec<(i64, i64, &str, i64)> = starts
        .iter()
        .flat_map(|(jid, start)| {
            start
                .edges
                .iter()
                .map(move |&(dep, kind, met)| (dep, *jid, kind.as_str(), i64::from(met)))
        })
        .collect();
    let mut insert = tx.op(op::INSERT_WAITS);
    for chunk in waits.chunks(WAITS_PER_STATEMENT) {
        let json = serde_json::to_string(chunk).expect("integers and kind names serialize");
        insert.execute(params![json])?;
    }
    for (jid, start) in starts {
        if let Some(reason) = &start.failed {
            // Jobs of the same submit waiting for this one are cancelled in turn by `settle`.
            tx.op(op::NOTE_FAILURE).execute(params![jid, reason])?;
        }
    }
    Ok(())
}

/// Job `jid` was just put back to `pending` by a person (resubmit, update): it still waits
/// for what it was submitted to wait for (or is cancelled again if one of those failed),
/// and for a place when its array has a limit.
pub fn restate(tx: &Tx<'_>, jid: i64) -> Result<()> {
    let found: Option<(String, Option<i64>, Option<i64>)> = tx
        .op(op::RESTATE_LOOK)
        .query_row([jid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .ok();
    let Some((state, array_id, array_limit)) = found else {
        return Ok(());
    };
    if state != "pending" {
        return Ok(());
    }
    let unmet: i64 = tx.op(op::UNMET).query_row([jid], |r| r.get(0))?;
    if let Some(reason) = failed_dependency(tx, jid)? {
        tx.op(op::CANCEL_FOR).execute(params![reason, unmet, jid])?;
        return Ok(());
    }
    let array_full = match (array_id, array_limit) {
        (Some(id), Some(limit)) => {
            let active: i64 = tx.op(op::ARRAY_ACTIVE).query_row([id, jid], |r| r.get(0))?;
            active >= limit
        }
        _ => false,
    };
    let waits = unmet > 0 || array_full;
    tx.op(op::RESTATE).execute(params![
        if waits { "waiting" } else { "pending" },
        unmet,
        jid
    ])?;
    Ok(())
}

/// Jobs `jid` is waited for by that have not run yet: (jid, kind).
pub fn waiting_for(tx: &Tx<'_>, jid: i64) -> Result<Vec<(i64, Kind)>> {
    let mut stmt = tx.op(op::WAITING_FOR);
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
    tx.op(op::FORGET_CANCEL).execute([jid])?;
    tx.op(op::FORGET_ANY).execute([jid])?;
    tx.op(op::FORGET_WAITS).execute([jid])?;
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
