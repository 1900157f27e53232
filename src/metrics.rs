//! The queue in OpenMetrics text (Prometheus): `GET /metrics` of `rq Q serve`, and
//! `rq Q metrics` once (for node_exporter's textfile collector from cron). Names follow
//! Prometheus conventions: the `rq_` prefix, `_total` for counts that only grow while
//! jobs are kept, `_seconds` and `_bytes` for units.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};
use crate::job::State;
use crate::overview::{Feeder, Summary};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabel {
    host: Escaped,
}

/// A label value escaped as the OpenMetrics text format requires (`\\`, `\"`, `\n`):
/// prometheus-client writes label values as they are, and a host name comes from anyone
/// who can set `RQ_HOST` or drop a file in `Q/hosts/`, so a `"` or a newline in it would
/// otherwise end the label and add lines of its own to `/metrics`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Escaped(String);

impl prometheus_client::encoding::EncodeLabelValue for Escaped {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> std::result::Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// What a run used, where recorded: CPU seconds (user and system), peak memory, bytes
/// read and written.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunUsage {
    pub cpu_seconds: Option<f64>,
    pub max_rss: Option<i64>,
    pub read_bytes: Option<i64>,
    pub write_bytes: Option<i64>,
}

/// What the metrics are made from: one read of the queue.
pub struct Inputs<'a> {
    pub summary: &'a Summary,
    pub feeders: &'a [Feeder],
    /// Run times (seconds) of recently ended jobs.
    pub recent_durations: &'a [f64],
    /// What those jobs used, where recorded.
    pub recent_usage: &'a [RunUsage],
    pub db_bytes: u64,
}

/// Render the metrics as OpenMetrics text (ends with `# EOF`).
pub fn render(inputs: &Inputs<'_>) -> Result<String> {
    let s = inputs.summary;
    let mut registry = Registry::default();

    let jobs = Family::<StateLabel, Gauge>::default();
    for (state, n) in &s.counts {
        jobs.get_or_create(&StateLabel {
            state: state.as_str().into(),
        })
        .set(*n);
    }
    registry.register("rq_jobs", "Jobs in the queue by state", jobs);

    let counter = |n: i64| {
        let c = Counter::<u64>::default();
        c.inc_by(n.max(0) as u64);
        c
    };
    registry.register(
        "rq_jobs_finished",
        "Jobs that finished (any exit status), among the jobs kept in the queue",
        counter(s.successes + s.failed),
    );
    registry.register(
        "rq_jobs_failed",
        "Finished jobs whose exit status was not 0 or that a signal ended",
        counter(s.failed),
    );
    registry.register(
        "rq_jobs_dead",
        "Jobs whose host or feeder died while they ran",
        counter(s.count(State::Dead)),
    );

    let buckets = [
        1.0,
        5.0,
        15.0,
        60.0,
        300.0,
        900.0,
        3600.0,
        4.0 * 3600.0,
        24.0 * 3600.0,
    ];
    let durations = Histogram::new(buckets);
    for d in inputs.recent_durations {
        durations.observe(*d);
    }
    registry.register(
        "rq_job_duration_seconds",
        "Run time of recently ended jobs",
        durations,
    );
    let cpu = Histogram::new(buckets);
    let sizes = [16e6, 64e6, 256e6, 1e9, 4e9, 16e9, 64e9, 256e9];
    let memory = Histogram::new(sizes);
    let read = Histogram::new(sizes);
    let written = Histogram::new(sizes);
    for used in inputs.recent_usage {
        if let Some(seconds) = used.cpu_seconds {
            cpu.observe(seconds);
        }
        for (histogram, bytes) in [
            (&memory, used.max_rss),
            (&read, used.read_bytes),
            (&written, used.write_bytes),
        ] {
            if let Some(bytes) = bytes {
                histogram.observe(bytes as f64);
            }
        }
    }
    registry.register(
        "rq_job_cpu_seconds",
        "CPU time (user and system) of recently ended jobs",
        cpu,
    );
    registry.register(
        "rq_job_max_rss_bytes",
        "Peak resident memory of recently ended jobs",
        memory,
    );
    registry.register(
        "rq_job_read_bytes",
        "Bytes recently ended jobs read (read calls: files, pipes, network filesystems)",
        read,
    );
    registry.register(
        "rq_job_write_bytes",
        "Bytes recently ended jobs wrote likewise",
        written,
    );

    let oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    oldest.set(s.oldest_pending.map_or(0.0, |(_, age)| age));
    registry.register(
        "rq_oldest_pending_age_seconds",
        "How long the longest-waiting pending job has waited (0 when none)",
        oldest,
    );
    let db = Gauge::<i64>::default();
    db.set(inputs.db_bytes as i64);
    registry.register(
        "rq_queue_db_bytes",
        "Size of the queue's database (its file, or its PostgreSQL tables)",
        db,
    );

    let up = Family::<HostLabel, Gauge>::default();
    let age = Family::<HostLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let running = Family::<HostLabel, Gauge>::default();
    let max_feed = Family::<HostLabel, Gauge>::default();
    for f in inputs.feeders {
        let label = HostLabel {
            host: Escaped(f.host.clone()),
        };
        up.get_or_create(&label).set(i64::from(f.alive));
        if let Some(a) = f.heartbeat_age {
            age.get_or_create(&label).set(a);
        }
        running.get_or_create(&label).set(f.running);
        if let Some(m) = f.max_feed {
            max_feed.get_or_create(&label).set(m);
        }
    }
    registry.register("rq_feeder_up", "1 if the host's feeder is alive", up);
    registry.register(
        "rq_feeder_heartbeat_age_seconds",
        "Age of the host's last heartbeat, on the file server's clock",
        age,
    );
    registry.register("rq_feeder_running", "Jobs the host's feeder runs", running);
    registry.register(
        "rq_feeder_max_feed",
        "Jobs the host's feeder runs at most at once",
        max_feed,
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| Error::Conflict(format!("cannot encode the metrics: {e}")))?;
    Ok(text)
}
