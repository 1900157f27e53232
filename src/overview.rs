//! What a person watching the queue wants to know at a glance: counts by state, how fast
//! jobs end, what runs where, which feeders live. Read in one transaction (never the write
//! lock), then shown by `status` on a terminal, `top` and `wait`.

use jiff::Timestamp;

use crate::store::SqlValue;

use crate::error::Result;
use crate::job::{Cell, Row, State};
use crate::liveness;
use crate::queue::{self, Queue};
use crate::store::Tx;
use crate::store::ops::scan;
use crate::store::ops::status as op;
use crate::time;

/// Minutes of history behind the jobs-per-minute rate.
pub const RATE_MINUTES: usize = 10;

/// Counts and rates of the whole queue.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Jobs per state, in `State::ALL` order.
    pub counts: Vec<(State, i64)>,
    pub total: i64,
    /// Finished with exit status 0.
    pub successes: i64,
    /// Finished with another exit status or a signal.
    pub failed: i64,
    /// Jobs that ended (finished or dead) in each of the last [`RATE_MINUTES`] minutes,
    /// oldest first; the last is the minute now running.
    pub ended_per_minute: Vec<i64>,
    pub ended_last_hour: i64,
    /// Seconds into the current minute (the last of `ended_per_minute`).
    pub minute_elapsed: f64,
    /// The pending job submitted first: jid and age in seconds.
    pub oldest_pending: Option<(i64, f64)>,
    /// Mean run time of finished jobs.
    pub avg_elapsed: Option<f64>,
    pub running_per_host: Vec<(String, i64)>,
    /// `pause`d: since when and by whom.
    pub paused: Option<String>,
    /// Drained hosts and since when.
    pub draining: Vec<(String, String)>,
}

impl Summary {
    pub fn count(&self, state: State) -> i64 {
        self.counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }

    /// Jobs ended per minute: the mean of the last (up to 5) full minutes since jobs
    /// began to end; in the first minute, the minute so far.
    pub fn rate_per_minute(&self) -> f64 {
        let Some((now, full)) = self.ended_per_minute.split_last() else {
            return 0.0;
        };
        let active = full
            .iter()
            .position(|n| *n > 0)
            .map_or(&[][..], |i| &full[i..]);
        let window: Vec<i64> = active.iter().rev().take(5).copied().collect();
        if window.is_empty() {
            // Seconds into this minute, at least 10 so one job is not a rate of hundreds.
            return *now as f64 * 60.0 / self.minute_elapsed.max(10.0);
        }
        window.iter().sum::<i64>() as f64 / window.len() as f64
    }

    /// Seconds until the jobs still to run (pending and waiting) are done at the current
    /// rate; None when nothing ends.
    pub fn eta(&self) -> Option<f64> {
        let left = self.count(State::Pending) + self.count(State::Waiting);
        let rate = self.rate_per_minute();
        (left > 0 && rate > 0.0).then(|| left as f64 / rate * 60.0)
    }
}

/// Read the summary inside a read transaction.
pub fn summary(tx: &Tx<'_>, now: Timestamp) -> Result<Summary> {
    summary_with(tx, now, true)
}

/// The summary, with the jobs ended per minute and in the last hour only when `rates`
/// (counting them reads the index of end times; the dashboard keeps its own counts).
pub fn summary_with(tx: &Tx<'_>, now: Timestamp, rates: bool) -> Result<Summary> {
    let mut s = Summary::default();
    // Kept in step by triggers: no scan, however many jobs there are.
    let mut stmt = tx.op(op::COUNTS);
    let mut rows = stmt.query([])?;
    let mut raw = std::collections::HashMap::new();
    while let Some(r) = rows.next()? {
        let state: String = r.get(0)?;
        raw.insert(
            state,
            (
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, f64>(3)?,
                r.get::<_, i64>(4)?,
            ),
        );
    }
    drop(rows);
    for state in State::ALL {
        let n = raw.get(state.as_str()).map_or(0, |r| r.0);
        s.counts.push((state, n));
        s.total += n;
    }
    if let Some(&(n, elapsed_n, elapsed_sum, ok)) = raw.get("finished") {
        s.successes = ok;
        s.failed = n - ok;
        s.avg_elapsed = (elapsed_n > 0).then(|| elapsed_sum / elapsed_n as f64);
    }

    s.minute_elapsed = (now.as_millisecond() % 60_000) as f64 / 1000.0;
    if rates {
        ended_counts(tx, now, &mut s)?;
    }
    oldest_and_flags(tx, now, &mut s)?;
    Ok(s)
}

/// Jobs ended in each of the last [`RATE_MINUTES`] minutes and in the last hour.
fn ended_counts(tx: &Tx<'_>, now: Timestamp, s: &mut Summary) -> Result<()> {
    // Ended per minute: one range of the index of end times, counted by minute.
    let minute_start = |back: i64| {
        let start = now - jiff::SignedDuration::from_secs(now.as_second() % 60 + back * 60);
        time::format(Timestamp::from_second(start.as_second()).unwrap_or(start))
    };
    let since = minute_start(RATE_MINUTES as i64 - 1);
    let mut stmt = tx.op(op::ENDED_PER_MINUTE);
    let per_minute: Vec<(String, i64)> = stmt
        .query_map([&since], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::error::Result<_>>()?;
    for back in (0..RATE_MINUTES as i64).rev() {
        let key = &minute_start(back)[..16];
        s.ended_per_minute.push(
            per_minute
                .iter()
                .filter(|(m, _)| m.as_str() == key)
                .map(|(_, n)| *n)
                .sum(),
        );
    }
    s.ended_last_hour = tx.op(op::ENDED_SINCE).query_row(
        [time::format(now - jiff::SignedDuration::from_hours(1))],
        |r| r.get(0),
    )?;
    Ok(())
}

/// The oldest pending job, running jobs per host, pause and drain flags.
fn oldest_and_flags(tx: &Tx<'_>, now: Timestamp, s: &mut Summary) -> Result<()> {
    if s.count(State::Pending) > 0 {
        let (_, oldest) = queue::waiting_ends(tx, State::Pending)?;
        if let Some((jid, SqlValue::Text(submitted))) = oldest {
            s.oldest_pending =
                time::parse(&submitted).map(|t| (jid, time::seconds_between(t, now)));
        }
    }

    let mut stmt = tx.op(op::RUNNING_PER_HOST);
    s.running_per_host = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::error::Result<_>>()?;

    let mut stmt = tx.op(op::HELD_BACK);
    let flags: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::error::Result<_>>()?;
    for (key, value) in flags {
        match key.strip_prefix("drain.") {
            Some(host) => s.draining.push((host.to_string(), value)),
            None => s.paused = Some(value),
        }
    }
    Ok(())
}

/// A host that feeds (or fed) the queue, as its heartbeat file and the queue say.
#[derive(Debug, Clone, Default)]
pub struct Feeder {
    pub host: String,
    /// Heartbeat younger than the lease (on the file server's clock) and not stopped.
    pub alive: bool,
    /// alive, waiting (alive but not claiming, see `error`), paused, draining, drained,
    /// stopped, failed or dead.
    pub state: &'static str,
    pub heartbeat_age: Option<f64>,
    pub running: i64,
    pub max_feed: Option<i64>,
    pub cpus: Option<i64>,
    pub mem: Option<i64>,
    pub gpus: Option<String>,
    pub pid: Option<i64>,
    pub started: Option<String>,
    pub version: Option<String>,
    pub feeder: Option<String>,
    /// Why a feeder failed, or why a live one does not claim.
    pub error: Option<String>,
}

/// The columns of `rq Q feeders`, in order.
pub const FEEDER_FIELDS: &[&str] = &[
    "host",
    "alive",
    "state",
    "heartbeat_age",
    "running",
    "max_feed",
    "cpus",
    "mem",
    "gpus",
    "pid",
    "started",
    "version",
    "feeder",
    "error",
];

impl Feeder {
    /// As a result row with [`FEEDER_FIELDS`].
    pub fn to_row(&self) -> Row {
        let int = |v: Option<i64>| v.map_or(Cell::Null, Cell::Int);
        let text = |v: &Option<String>| v.clone().map_or(Cell::Null, Cell::Text);
        Row {
            columns: vec![
                ("host".into(), Cell::Text(self.host.clone())),
                ("alive".into(), Cell::Bool(self.alive)),
                ("state".into(), Cell::Text(self.state.into())),
                (
                    "heartbeat_age".into(),
                    self.heartbeat_age
                        .map_or(Cell::Null, |a| Cell::Real((a * 10.0).round() / 10.0)),
                ),
                ("running".into(), Cell::Int(self.running)),
                ("max_feed".into(), int(self.max_feed)),
                ("cpus".into(), int(self.cpus)),
                ("mem".into(), int(self.mem)),
                ("gpus".into(), text(&self.gpus)),
                ("pid".into(), int(self.pid)),
                ("started".into(), text(&self.started)),
                ("version".into(), text(&self.version)),
                ("feeder".into(), text(&self.feeder)),
                ("error".into(), text(&self.error)),
            ],
        }
    }
}

/// What the queue's database says about its feeders: the lease, running jobs per host,
/// and the pause and drain flags. Read inside the caller's transaction.
#[derive(Debug, Clone, Default)]
pub struct FeederFacts {
    lease: f64,
    running: Vec<(String, i64)>,
    flags: Vec<(String, String)>,
}

pub fn feeder_facts(tx: &Tx<'_>) -> Result<FeederFacts> {
    // The lease is judged with the other liveness settings (it must span two heartbeats).
    let mut stmt = tx.op(op::LIVENESS_SETTINGS);
    let liveness: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::error::Result<_>>()?;
    let settings = liveness::Settings::from_attributes(|k| {
        liveness
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    });
    let mut stmt = tx.op(op::RUNNING_PER_HOST);
    let running = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::error::Result<_>>()?;
    let mut stmt = tx.op(op::HELD_BACK);
    let flags = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::error::Result<_>>()?;
    Ok(FeederFacts {
        lease: settings.lease,
        running,
        flags,
    })
}

/// Every host that has published a heartbeat, with the queue's view of it.
pub fn feeders(q: &mut Queue) -> Result<Vec<Feeder>> {
    let facts = q.store().read(feeder_facts)?;
    let hosts = q.hosts()?;
    Ok(feeders_from(hosts, &facts))
}

/// [`feeders`] from facts already read and the heartbeats (`Queue::hosts`).
pub fn feeders_from(
    hosts: Vec<(serde_json::Value, Option<f64>)>,
    facts: &FeederFacts,
) -> Vec<Feeder> {
    let FeederFacts {
        lease,
        running,
        flags,
    } = facts;
    let flag = |key: &str| flags.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let paused = flag("paused");
    let mut list = Vec::new();
    for (info, age) in hosts {
        let host = info["host"].as_str().unwrap_or("?").to_string();
        let drained = flag(&format!("drain.{host}"));
        let stopped = info["stopped"].as_bool().unwrap_or(false);
        let failure = info["error"].as_str().map(str::to_string);
        // Alive but not claiming, and why (e.g. the filesystem is full).
        let note = info["note"].as_str().map(str::to_string);
        let alive = !stopped && age.is_some_and(|a| a <= *lease);
        let running = running
            .iter()
            .find(|(h, _)| *h == host)
            .map_or(0, |(_, n)| *n);
        let state = if stopped && failure.is_some() {
            "failed"
        } else if stopped {
            "stopped"
        } else if alive && drained.is_some() && running > 0 {
            "draining"
        } else if alive && drained.is_some() {
            "drained"
        } else if alive && paused.is_some() {
            "paused"
        } else if alive && note.is_some() {
            "waiting"
        } else if alive {
            "alive"
        } else {
            "dead"
        };
        let error = failure
            .or(note.filter(|_| alive))
            .or(drained.filter(|_| alive).map(|d| format!("drained {d}")))
            .or(paused
                .clone()
                .filter(|_| alive)
                .map(|p| format!("the queue is paused {p}")));
        let int = |key: &str| info[key].as_i64();
        let text = |key: &str| {
            info[key]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        list.push(Feeder {
            alive,
            state,
            heartbeat_age: age,
            running,
            max_feed: int("max_feed"),
            cpus: int("cpus"),
            mem: int("mem"),
            gpus: text("gpus"),
            pid: int("pid"),
            started: text("started"),
            version: text("version"),
            feeder: text("feeder"),
            error,
            host,
        });
    }
    list
}

/// How many jobs of each list [`view`] reads.
pub const VIEW_ROWS: usize = 500;

/// Everything `top` shows, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub summary: Summary,
    /// Running jobs, longest running first.
    pub running: Vec<Row>,
    /// Pending jobs in the order feeders take them.
    pub pending: Vec<Row>,
    /// Jobs that ended most recently first (finished or dead).
    pub ended: Vec<Row>,
    /// Dead and cancelled jobs, most recent first.
    pub dead: Vec<Row>,
    pub feeders: Vec<Feeder>,
}

/// Read a [`View`]: one read transaction for everything in the database, then the
/// heartbeat files.
pub fn view(q: &mut Queue) -> Result<View> {
    let now = time::now_ts();
    let (mut view, facts) = q.store().read(|tx| {
        let view = jobs_in(tx, summary(tx, now)?, true)?;
        Ok((view, feeder_facts(tx)?))
    })?;
    view.feeders = feeders_from(q.hosts()?, &facts);
    Ok(view)
}

/// A view's lists of jobs (at most [`VIEW_ROWS`] each), read inside the caller's
/// transaction, around `summary`; the dead and cancelled ones only when `with_dead`.
pub fn jobs_in(tx: &Tx<'_>, summary: Summary, with_dead: bool) -> Result<View> {
    let limit = [SqlValue::Integer(VIEW_ROWS as i64)];
    let select = |op| queue::rows_of(&mut tx.op(op), &limit);
    Ok(View {
        summary,
        running: select(scan::VIEW_RUNNING)?,
        pending: select(scan::VIEW_PENDING)?,
        ended: select(scan::VIEW_ENDED)?,
        dead: if with_dead {
            select(scan::VIEW_DEAD)?
        } else {
            Vec::new()
        },
        feeders: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_minutes_since_jobs_began_to_end() {
        let mut s = Summary {
            ended_per_minute: vec![0, 0, 0, 0, 0, 0, 0, 30, 60, 5],
            minute_elapsed: 5.0,
            ..Default::default()
        };
        assert_eq!(s.rate_per_minute(), 45.0);
        s.ended_per_minute = vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 20];
        s.minute_elapsed = 30.0;
        assert_eq!(s.rate_per_minute(), 40.0);
        s.ended_per_minute = vec![10; 10];
        assert_eq!(s.rate_per_minute(), 10.0);
        s.counts = vec![(State::Pending, 100)];
        assert_eq!(s.eta(), Some(600.0));
    }
}
