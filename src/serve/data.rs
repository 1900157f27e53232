//! What the dashboard shows, read from the queue at most once a second for every viewer
//! (see `Cache`): one read transaction (never the write lock), then the heartbeat files.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::store::SqlValue;
use jiff::Timestamp;

use crate::error::Result;
use crate::job::Row;
use crate::overview::{self, View};
use crate::queue::{self, Queue};
use crate::store::ops::scan;
use crate::store::{Filter, Term, TermOp, Tx};
use crate::time;

/// Minutes of history in the throughput chart and the per-host counts.
pub const HOUR: usize = 60;
/// Minutes of history in the hosts' timeline.
pub const TIMELINE_MINUTES: i64 = 30;
/// At most this many bars in the timeline (the most recent).
const TIMELINE_JOBS: i64 = 3000;

/// One job's bar in the timeline.
#[derive(Debug, Clone)]
pub struct Bar {
    pub jid: i64,
    pub host: String,
    pub start: Timestamp,
    /// None while it runs.
    pub end: Option<Timestamp>,
    /// running, ok, failed, dead.
    pub outcome: &'static str,
}

/// Everything the pages and /metrics show, read at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub view: View,
    /// Jobs ended in each of the last [`HOUR`] minutes, oldest first.
    pub per_minute: Vec<i64>,
    /// Jobs each host ended in the last hour.
    pub per_host_hour: BTreeMap<String, i64>,
    pub timeline: Vec<Bar>,
    /// Run times of the jobs in the timeline that ended.
    pub durations: Vec<f64>,
    /// What those jobs used: CPU seconds and peak memory (bytes), where recorded.
    pub usage: Vec<crate::metrics::RunUsage>,
    pub db_bytes: u64,
    pub taken: Timestamp,
}

/// Counts of ended jobs per minute and host. Minutes that are over do not change, so
/// each is counted once; every refresh counts only the last two minutes again.
#[derive(Debug, Default)]
pub struct MinuteCounts {
    minutes: BTreeMap<String, BTreeMap<String, i64>>,
    /// The minute that was still running at the last refresh: counted once more after
    /// it ends (jobs that ended in its last second), then never again.
    open: Option<String>,
}

impl MinuteCounts {
    fn refresh(&mut self, tx: &Tx<'_>, now: Timestamp) -> Result<()> {
        let minute = |back: i64| {
            let t = Timestamp::from_second(now.as_second() - now.as_second() % 60 - back * 60)
                .unwrap_or(now);
            time::format(t)[..16].to_string()
        };
        let oldest = minute(HOUR as i64 - 1);
        self.minutes.retain(|m, _| *m >= oldest);
        // The whole hour the first time; then the running minute, and the one before it
        // once more if it was still running at the last refresh.
        let now_minute = minute(0);
        let from = if self.minutes.is_empty() {
            oldest.clone()
        } else {
            match &self.open {
                Some(open) if *open < now_minute => open.clone(),
                _ => now_minute.clone(),
            }
        };
        self.open = Some(now_minute);
        self.minutes.retain(|m, _| *m < from);
        let mut stmt = tx.op(crate::store::ops::status::ENDED_PER_MINUTE_AND_HOST);
        let mut rows = stmt.query([format!("{from}:00")])?;
        while let Some(r) = rows.next()? {
            let m: String = r.get(0)?;
            let host: String = r.get(1)?;
            let n: i64 = r.get(2)?;
            self.minutes.entry(m).or_default().insert(host, n);
        }
        // Minutes without jobs are counted too (as empty), so they are not asked again.
        for back in 0..HOUR as i64 {
            let m = minute(back);
            if m >= from {
                self.minutes.entry(m).or_default();
            }
        }
        Ok(())
    }

    fn per_minute(&self, now: Timestamp) -> Vec<i64> {
        (0..HOUR as i64)
            .rev()
            .map(|back| {
                let t = Timestamp::from_second(now.as_second() - now.as_second() % 60 - back * 60)
                    .unwrap_or(now);
                let key = &time::format(t)[..16];
                self.minutes
                    .get(key)
                    .map_or(0, |hosts| hosts.values().sum())
            })
            .collect()
    }

    fn per_host(&self) -> BTreeMap<String, i64> {
        let mut total = BTreeMap::new();
        for hosts in self.minutes.values() {
            for (host, n) in hosts {
                *total.entry(host.clone()).or_insert(0) += n;
            }
        }
        total
    }
}

/// A timeline row as read: jid, host, started, finished, state, exit status, signal, and
/// what the run used.
type RawBar = (
    i64,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<i64>,
    Option<String>,
    crate::metrics::RunUsage,
);

/// Read a snapshot.
pub fn read(q: &mut Queue, counts: &mut MinuteCounts) -> Result<Snapshot> {
    let now = time::now_ts();
    let since = time::format(now - jiff::SignedDuration::from_mins(TIMELINE_MINUTES));
    let (mut view, facts, bars, db_bytes) = q.store().read(|tx| {
        let view = overview::jobs_in(tx, overview::summary_with(tx, now, false)?, false)?;
        counts.refresh(tx, now)?;
        let mut stmt = tx.op(crate::store::ops::status::TIMELINE);
        let bars: Vec<RawBar> = stmt
            .query_map(crate::params![since, TIMELINE_JOBS], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    crate::metrics::RunUsage {
                        cpu_seconds: r.get(7)?,
                        max_rss: r.get(8)?,
                        read_bytes: r.get(9)?,
                        write_bytes: r.get(10)?,
                    },
                ))
            })?
            .collect::<crate::error::Result<_>>()?;
        // The database's size: its file's pages, or its PostgreSQL tables and indexes.
        let db_bytes: i64 = tx
            .op(crate::store::ops::status::SIZE_BYTES)
            .query_row([], |r| r.get(0))?;
        Ok((view, overview::feeder_facts(tx)?, bars, db_bytes))
    })?;
    view.feeders = overview::feeders_from(q.hosts()?, &facts);
    let mut timeline = Vec::new();
    let mut durations = Vec::new();
    let mut usage = Vec::new();
    for (jid, host, started, finished, state, exit, signal, used) in bars {
        let Some(start) = started.as_deref().and_then(time::parse) else {
            continue;
        };
        let end = finished.as_deref().and_then(time::parse);
        if let Some(end) = end {
            durations.push(time::seconds_between(start, end).max(0.0));
            usage.push(used);
        }
        let outcome = match state.as_str() {
            "running" => "running",
            "dead" => "dead",
            _ if exit == Some(0) && signal.is_none() => "ok",
            _ => "failed",
        };
        timeline.push(Bar {
            jid,
            host,
            start,
            end,
            outcome,
        });
    }
    // The summary's rates, from the counts kept here.
    let per_minute = counts.per_minute(now);
    view.summary.ended_last_hour = per_minute.iter().sum();
    view.summary.ended_per_minute = per_minute[HOUR - overview::RATE_MINUTES..].to_vec();
    Ok(Snapshot {
        per_minute,
        per_host_hour: counts.per_host(),
        view,
        timeline,
        durations,
        usage,
        db_bytes: db_bytes.max(0) as u64,
        taken: now,
    })
}

/// A snapshot shared by every viewer for about a second, so a hundred open tabs cost
/// the queue what one does.
pub struct Cache {
    queue: Queue,
    counts: MinuteCounts,
    last: Option<(Instant, std::sync::Arc<Snapshot>)>,
    /// Other reads (a page of the jobs table, a job), by what was asked, for as long.
    reads: std::collections::HashMap<String, (Instant, CachedRead)>,
}

type CachedRead = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// At most this many different reads are kept (the oldest go first).
const CACHED_READS: usize = 256;

/// How long a snapshot serves.
pub const FRESH: Duration = Duration::from_millis(1000);

impl Cache {
    pub fn new(queue: Queue) -> Cache {
        Cache {
            queue,
            counts: MinuteCounts::default(),
            last: None,
            reads: std::collections::HashMap::new(),
        }
    }

    /// The current snapshot, read again when older than [`FRESH`].
    pub fn get(&mut self) -> Result<std::sync::Arc<Snapshot>> {
        if let Some((at, snap)) = &self.last
            && at.elapsed() < FRESH
        {
            return Ok(snap.clone());
        }
        let snap = std::sync::Arc::new(read(&mut self.queue, &mut self.counts)?);
        self.last = Some((Instant::now(), snap.clone()));
        Ok(snap)
    }

    pub fn queue(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// `read` of the queue, shared for [`FRESH`] by every request that asks the same
    /// `key` (so a hundred viewers of one job cost what one does).
    pub fn shared<T: Send + Sync + 'static>(
        &mut self,
        key: String,
        read: impl FnOnce(&mut Queue) -> Result<T>,
    ) -> Result<std::sync::Arc<T>> {
        if let Some((at, value)) = self.reads.get(&key)
            && at.elapsed() < FRESH
            && let Ok(value) = value.clone().downcast::<T>()
        {
            return Ok(value);
        }
        let value = std::sync::Arc::new(read(&mut self.queue)?);
        if self.reads.len() >= CACHED_READS {
            self.reads.retain(|_, (at, _)| at.elapsed() < FRESH);
            if self.reads.len() >= CACHED_READS {
                self.reads.clear();
            }
        }
        self.reads.insert(key, (Instant::now(), value.clone()));
        Ok(value)
    }

    /// Forget what was read (after an action, so the page shows its effect).
    pub fn invalidate(&mut self) {
        self.last = None;
        self.reads.clear();
    }
}

/// One job with every field, for its page.
pub fn job(q: &mut Queue, jid: i64) -> Result<Option<Row>> {
    let rows = q
        .store()
        .read(|tx| queue::rows_of(&mut tx.op(scan::ONE), &[SqlValue::Integer(jid)]))?;
    Ok(rows.into_iter().next())
}

/// Filters and paging of the jobs table.
#[derive(Debug, Clone, Default, serde::Deserialize, Hash, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<String>,
    pub tag: Option<String>,
    pub host: Option<String>,
    /// Text the command contains.
    pub q: Option<String>,
    /// Keyset paging: jobs after (or before) this jid.
    pub after: Option<i64>,
    pub before: Option<i64>,
    /// `desc`: newest first.
    pub order: Option<String>,
}

/// Rows per page of the jobs table.
pub const PAGE: i64 = 50;

impl JobFilter {
    pub fn descending(&self) -> bool {
        self.order.as_deref() == Some("desc")
    }

    /// The query string of these filters (without paging), for links.
    pub fn query_string(&self) -> String {
        let mut parts = Vec::new();
        for (key, value) in [
            ("state", &self.state),
            ("tag", &self.tag),
            ("host", &self.host),
            ("q", &self.q),
            ("order", &self.order),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                parts.push(format!("{key}={}", url_encode(v)));
            }
        }
        parts.join("&")
    }
}

pub fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A page of jobs: keyset paging on jid (the primary key), every value bound.
pub fn jobs_page(q: &mut Queue, f: &JobFilter) -> Result<Vec<Row>> {
    let mut terms: Vec<Term> = Vec::new();
    let mut term = |field: &str, op: TermOp, value: String| {
        terms.push(Term {
            field: field.into(),
            op,
            value: SqlValue::Text(value),
        })
    };
    let text = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    if let Some(state) = text(&f.state) {
        // A state of few jobs: through the index that starts with the state, then sorted.
        // A state of many: in jid order (`+state` keeps SQLite off that index), which
        // finds a page long before it would have sorted them all.
        let many: i64 = q.store().read(|tx| {
            Ok(tx
                .op(crate::store::ops::status::COUNT_IN_STATE)
                .query_row([&state], |r| r.get(0))
                .unwrap_or(0))
        })?;
        let op = if many > 20_000 {
            TermOp::EqScanning
        } else {
            TermOp::Eq
        };
        term("state", op, state);
    }
    if let Some(tag) = text(&f.tag) {
        term("tag", TermOp::Eq, tag);
    }
    if let Some(host) = text(&f.host) {
        term("runner", TermOp::Eq, host);
    }
    if let Some(q) = text(&f.q) {
        term("command", TermOp::Contains, q);
    }
    let mut filter = Filter::Terms(terms);
    // Going back a page walks the other way, then the rows are turned around.
    let backwards = f.before.is_some();
    let desc = f.descending() != backwards;
    if let Some(after) = f.after {
        filter = filter.and(if f.descending() {
            Filter::JidBelow(after)
        } else {
            Filter::JidAbove(after)
        });
    }
    if let Some(before) = f.before {
        filter = filter.and(if f.descending() {
            Filter::JidAbove(before)
        } else {
            Filter::JidBelow(before)
        });
    }
    let op = if desc {
        scan::FIRST_DOWN
    } else {
        scan::FIRST_UP
    };
    let mut rows = q.store().read(|tx| {
        let (mut stmt, params) = tx.scan(op, &filter, &[SqlValue::Integer(PAGE)]);
        queue::rows_of(&mut stmt, &params)
    })?;
    if backwards {
        rows.reverse();
    }
    Ok(rows)
}

/// The last `max` bytes of a job's stream (see `Queue::read_job_file`), and whether
/// there was more before them.
pub fn tail(q: &mut Queue, stream: &str, jid: i64, max: u64) -> Option<(String, bool)> {
    debug_assert!(matches!(stream, "stdout" | "stderr"));
    let size = q.job_file_size(jid, stream).ok()??;
    let cut = size > max;
    let bytes = q
        .read_job_file(jid, stream, size.saturating_sub(max), max)
        .ok()??;
    Some((String::from_utf8_lossy(&bytes).into_owned(), cut))
}
