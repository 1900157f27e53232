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
//!   `store::settle` cancels their dependents before the transaction commits, a bounded batch
//!   at a time, with the rest on the durable work list `dep_work`.
//!
//! A job that goes back from an end to `pending` (resubmit, update) re-arms the jobs that
//! were cancelled because of it, and makes its dependents wait for its new run.
//! A job ends "for its dependents" when it is finished, cancelled, or dead for good (not
//! restartable, or out of attempts: a restartable dead job with attempts left runs again).

use std::collections::HashMap;

use crate::params;

use crate::error::{Error, Result};
use crate::input::{DepRef, JobSpec};
use crate::store::Tx;
use crate::store::ops::deps as op;
use crate::store::settle::{failed_dependency, failure_reason};

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
            .collect::<crate::error::Result<_>>()?;
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
        .collect::<crate::error::Result<_>>()?;
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
