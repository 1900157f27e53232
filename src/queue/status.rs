//! `status` and what `wait` watches: counts from the kept counters, the oldest and newest
//! waiting jobs from the claim index, and why jobs cannot run.

use super::*;
use crate::store::ops::status as op;

/// Where a set of jobs stands (`rq wait`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub pending: usize,
    pub holding: usize,
    pub running: usize,
    pub finished: usize,
    /// Finished with a non-zero exit or a signal.
    pub failed: usize,
    pub dead: usize,
    /// Waiting for other jobs or for their array's limit: they will run.
    pub waiting: usize,
    /// Will never run: a job they needed failed.
    pub cancelled: usize,
    /// Deleted meanwhile.
    pub gone: usize,
}

pub(super) fn field_names() -> Vec<String> {
    job::FIELDS.iter().map(|s| s.to_string()).collect()
}

/// A job named in `status`'s temporal report: its jid and the value shown for it.
pub(crate) type Named = Option<(i64, SqlValue)>;

/// The first row of a two-column operation (jid, value), if any.
pub(super) fn first_row(tx: &Tx<'_>, which: crate::store::ops::Op) -> Result<Named> {
    tx.op(which)
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// The most recently and the earliest submitted job waiting in `state` (pending or
/// holding), each as (jid, submitted). The claim index orders by priority first, so this
/// visits each distinct priority (a skip-scan: a few index look-ups per priority); with
/// more priorities than that is worth, it scans the state's jobs instead.
pub(crate) fn waiting_ends(tx: &Tx<'_>, state: State) -> Result<(Named, Named)> {
    const MAX_PRIORITIES: usize = 64;
    let state = state.as_str();
    // Two statements: `(?2 IS NULL OR priority < ?2)` would cost the index range.
    let mut highest = tx.op(op::HIGHEST_PRIORITY);
    let mut next_below = tx.op(op::NEXT_PRIORITY_BELOW);
    let mut priorities: Vec<i64> = Vec::new();
    while priorities.len() <= MAX_PRIORITIES {
        let found = match priorities.last() {
            None => highest.query_row([state], |r| r.get(0)),
            Some(p) => next_below.query_row(crate::params![state, p], |r| r.get(0)),
        };
        match found {
            Ok(p) => priorities.push(p),
            Err(Error::NoRows) => break,
            Err(e) => return Err(e),
        }
    }
    let end = |which: crate::store::ops::Op, priority: Option<i64>| {
        let mut stmt = tx.op(which);
        let found = match priority {
            Some(p) => stmt.query_row(crate::params![state, p], |r| Ok((r.get(1)?, r.get(0)?))),
            None => stmt.query_row([state], |r| Ok((r.get(1)?, r.get(0)?))),
        };
        found.optional()
    };
    let (newest, oldest) = if priorities.len() > MAX_PRIORITIES {
        (
            end(op::NEWEST_IN_STATE, None)?,
            end(op::OLDEST_IN_STATE, None)?,
        )
    } else {
        let mut newest: Option<(String, i64)> = None;
        let mut oldest: Option<(String, i64)> = None;
        for priority in priorities {
            let last = end(op::NEWEST_AT_PRIORITY, Some(priority))?;
            let first = end(op::OLDEST_AT_PRIORITY, Some(priority))?;
            newest = newest.max(last);
            oldest = match (oldest, first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        (newest, oldest)
    };
    let as_row = |end: Option<(String, i64)>| end.map(|(stamp, jid)| (jid, SqlValue::Text(stamp)));
    Ok((as_row(newest), as_row(oldest)))
}

impl Queue {
    /// Count where the given jobs stand.
    pub fn progress(&mut self, jids: &[i64]) -> Result<Progress> {
        let json = serde_json::to_string(jids).unwrap_or_default();
        let total = jids.len();
        self.store.read(|tx| {
            let mut p = Progress::default();
            let mut stmt = tx.op(op::PROGRESS);
            let mut rows = stmt.query([&json])?;
            let mut seen = 0usize;
            while let Some(r) = rows.next()? {
                let state: String = r.get(0)?;
                let n = r.get::<_, i64>(1)? as usize;
                seen += n;
                match state.as_str() {
                    "pending" => p.pending = n,
                    "holding" => p.holding = n,
                    "running" => p.running = n,
                    "finished" => {
                        p.finished = n;
                        p.failed = r.get::<_, i64>(2)? as usize;
                    }
                    "waiting" => p.waiting = n,
                    "cancelled" => p.cancelled = n,
                    _ => p.dead = n,
                }
            }
            p.gone = total.saturating_sub(seen);
            Ok(p)
        })
    }

    /// Counts by state (and successes/failures) of the jobs of `clause`: `status
    /// array:ID`, `status --mine`.
    pub fn status_of(&mut self, clause: &Filter) -> Result<Value> {
        self.store.read(|tx| {
            let (mut stmt, params) = tx.scan(crate::store::ops::scan::COUNTS, clause, &[]);
            let mut rows = stmt
                .query(crate::store::params_from_iter(params.iter()))
                .map_err(|e| query_error(clause, e))?;
            let mut counts = std::collections::HashMap::new();
            let (mut ok, mut failed) = (0i64, 0i64);
            while let Some(r) = rows.next()? {
                counts.insert(r.get::<_, String>(0)?, r.get::<_, i64>(1)?);
                ok += r.get::<_, i64>(2)?;
                failed += r.get::<_, i64>(3)?;
            }
            let mut jobs = Map::new();
            let mut total = 0;
            for state in State::ALL {
                let n = counts.get(state.as_str()).copied().unwrap_or(0);
                total += n;
                jobs.insert(state.as_str().into(), json!(n));
            }
            jobs.insert("total".into(), json!(total));
            let dead = counts.get("dead").copied().unwrap_or(0);
            Ok(json!({
                "jobs": Value::Object(jobs),
                "exit_status": {"successes": ok, "failures": failed + dead},
            }))
        })
    }

    /// Jobs waiting to run (pending or waiting) that no live feeder can run: they need
    /// more CPUs, memory or GPUs than any has. How many, and the first few with why.
    /// Costs one index probe when no job needs more than one CPU.
    pub fn unfit(&mut self, jids: Option<&[i64]>) -> Result<(i64, Vec<(i64, String)>)> {
        let filter = jids.map(|j| serde_json::to_string(j).unwrap_or_default());
        let any: bool = self
            .store
            .read(|tx| tx.op(op::ANY_NEEDY).query_row([&filter], |r| r.get(0)))?;
        if !any {
            return Ok((0, Vec::new()));
        }
        let largest = self.largest_live()?;
        crate::store::fit::set_largest_live(largest.as_ref().map(Into::into));
        let Some(largest) = largest else {
            return Ok((0, Vec::new()));
        };
        self.store.read(|tx| {
            let mut stmt = tx.op(op::NEEDY_BEYOND);
            let mut rows = stmt.query(crate::params![
                filter,
                largest.cpus,
                largest.mem,
                largest.devices.len() as i64
            ])?;
            let (mut count, mut some) = (0i64, Vec::new());
            while let Some(r) = rows.next()? {
                count += 1;
                if some.len() < 5 {
                    let (jid, cpus, mem, gpus): (i64, i64, i64, i64) =
                        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                    if let Some(why) =
                        crate::store::fit::unfit_reason(cpus, mem, gpus, &(&largest).into())
                    {
                        some.push((jid, why));
                    }
                }
            }
            Ok((count, some))
        })
    }

    /// The largest live feeder (see `liveness::largest_live`).
    pub(super) fn largest_live(&mut self) -> Result<Option<crate::claims::Capacity>> {
        let lease = self
            .setting("lease")?
            .and_then(|v| time::parse_duration(&v))
            .unwrap_or(crate::liveness::Settings::default().lease);
        let hosts = self.hosts()?;
        Ok(crate::liveness::largest_live(&hosts, lease))
    }

    /// The status report.
    pub fn status(&mut self, exit_codes: &[(String, Vec<i64>)]) -> Result<Value> {
        let now = time::now_ts();
        let hour_marks: Vec<(i64, String)> = [1i64, 12, 24]
            .iter()
            .map(|h| (*h, time::format(now - jiff::SignedDuration::from_hours(*h))))
            .collect();
        self.store.read(|tx| {
            // Counts and run-time sums come from `job_counts`, which triggers keep in step
            // with every change: no scan, however many jobs there are.
            let mut counts = std::collections::HashMap::new();
            let mut stmt = tx.op(op::COUNTS);
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let state: String = r.get(0)?;
                let row: (i64, i64, f64, i64) = (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
                counts.insert(state, row);
            }
            drop(rows);
            let count = |state: State| counts.get(state.as_str()).copied().unwrap_or((0, 0, 0.0, 0));
            let mut jobs = Map::new();
            let mut total = 0i64;
            for state in State::ALL {
                let n = count(state).0;
                total += n;
                jobs.insert(state.as_str().into(), json!(n));
            }
            jobs.insert("total".into(), json!(total));

            let mut temporal = Map::new();
            for state in State::ALL {
                let (min, max) = match state {
                    // Newest and oldest by submit time: a look at each priority's ends of the
                    // claim index (state, priority, submitted, jid).
                    State::Pending | State::Holding | State::Waiting => waiting_ends(tx, state)?,
                    State::Cancelled => (None, None),
                    State::Running => (
                        first_row(tx, op::LATEST_STARTED)?,
                        first_row(tx, op::EARLIEST_STARTED)?,
                    ),
                    // The partial index's ends.
                    State::Finished => (
                        first_row(tx, op::SHORTEST_FINISHED)?,
                        first_row(tx, op::LONGEST_FINISHED)?,
                    ),
                    State::Dead => (
                        first_row(tx, op::SHORTEST_DEAD)?,
                        first_row(tx, op::LONGEST_DEAD)?,
                    ),
                };
                let seconds = |found: Option<(i64, SqlValue)>| -> Option<(i64, f64)> {
                    match found? {
                        (jid, SqlValue::Real(secs)) => Some((jid, secs)),
                        (jid, SqlValue::Integer(secs)) => Some((jid, secs as f64)),
                        (jid, SqlValue::Text(stamp)) => {
                            time::parse(&stamp).map(|t| (jid, time::seconds_between(t, now)))
                        }
                        _ => None,
                    }
                };
                if let (Some(min), Some(max)) = (seconds(min), seconds(max)) {
                    temporal.insert(
                        state.as_str().into(),
                        json!({"min": {min.0.to_string(): time::hms(min.1)}, "max": {max.0.to_string(): time::hms(max.1)}}),
                    );
                }
            }

            let (_, elapsed_n, elapsed_sum, successes) = count(State::Finished);
            let avg = (elapsed_n > 0).then(|| elapsed_sum / elapsed_n as f64);
            let finished_failures = count(State::Finished).0 - successes;
            let mut recent = Map::new();
            for (hours, since) in &hour_marks {
                let n: i64 = tx.op(op::ENDED_SINCE).query_row([since], |r| r.get(0))?;
                recent.insert(hours.to_string(), json!(n));
            }
            let dead = jobs.get("dead").and_then(Value::as_i64).unwrap_or(0);
            let failures = finished_failures + dead;
            let mut exit = Map::new();
            exit.insert("successes".into(), json!(successes));
            exit.insert("failures".into(), json!(failures));
            for (name, codes) in exit_codes {
                let n: i64 = tx.op(op::FINISHED_WITH_CODES).query_row(
                    [serde_json::to_string(codes).unwrap_or_default()],
                    |r| r.get(0),
                )?;
                exit.insert(name.clone(), json!(n));
            }

            let mut runners = Map::new();
            let mut stmt = tx.op(op::RUNNING_PER_HOST);
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let host: String = r.get(0)?;
                runners.insert(host, json!(r.get::<_, i64>(1)?));
            }

            let mut report = Map::new();
            report.insert("jobs".into(), Value::Object(jobs));
            report.insert("temporal".into(), Value::Object(temporal));
            report.insert(
                "performance".into(),
                json!({
                    "avg_time_per_job": avg.map(time::hms),
                    "n_jobs_in_last_hrs": Value::Object(recent),
                }),
            );
            report.insert("exit_status".into(), Value::Object(exit));
            report.insert("running_per_host".into(), Value::Object(runners));
            // Feeders held back: the whole queue, or some hosts.
            let mut stmt = tx.op(op::HELD_BACK);
            let mut rows = stmt.query([])?;
            let mut drained = Map::new();
            while let Some(r) = rows.next()? {
                let key: String = r.get(0)?;
                let value: String = r.get(1)?;
                match key.strip_prefix("drain.") {
                    Some(host) => {
                        drained.insert(host.to_string(), json!(value));
                    }
                    None => {
                        report.insert("paused".into(), json!(value));
                    }
                }
            }
            if !drained.is_empty() {
                report.insert("draining".into(), Value::Object(drained));
            }
            // The queue's lock was taken back from a host that died holding it (NFSv3).
            let recovered: Option<String> = tx
                .op(op::LOCK_RECOVERED)
                .query_row([], |r| r.get(0))
                .optional()?;
            if let Some(text) = recovered {
                let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                report.insert("lock_recovered".into(), value);
            }
            Ok(Value::Object(report))
        })
    }
}
