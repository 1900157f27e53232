//! `rq Q usage [SELECTION]`: what the selected jobs' last runs used, in total and per tag
//! and per array, like Slurm's `seff`/`sacct`: CPU hours, wall hours, CPU efficiency (CPU
//! time / (elapsed x CPUs asked)), memory efficiency (peak / `--mem`), and the jobs
//! furthest off what they asked for.

use serde_json::{Value, json};

/// One ended run, as `usage` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub jid: i64,
    pub tag: Option<String>,
    pub array_id: Option<i64>,
    pub cpus: i64,
    pub mem: i64,
    pub elapsed: f64,
    /// User and system CPU seconds; `None` for runs recorded before rq recorded them.
    pub cpu: Option<f64>,
    pub max_rss: Option<i64>,
}

impl Run {
    /// CPU time over what the CPUs it asked for could have given in its elapsed time.
    pub fn cpu_efficiency(&self) -> Option<f64> {
        let reserved = self.elapsed * self.cpus.max(1) as f64;
        (reserved > 0.0).then_some(self.cpu? / reserved)
    }

    /// Peak memory over the memory it asked for (none asked: not counted).
    pub fn memory_efficiency(&self) -> Option<f64> {
        (self.mem > 0).then_some(self.max_rss? as f64 / self.mem as f64)
    }
}

/// Sums over a group of runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub jobs: i64,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    /// Elapsed x CPUs asked, over the runs whose CPU time is known.
    reserved_cpu_seconds: f64,
    /// Peak and asked memory, over the runs that asked for memory and have a peak.
    peak_bytes: f64,
    asked_bytes: f64,
}

impl Totals {
    fn add(&mut self, run: &Run) {
        self.jobs += 1;
        self.wall_seconds += run.elapsed;
        if let Some(cpu) = run.cpu {
            self.cpu_seconds += cpu;
            self.reserved_cpu_seconds += run.elapsed * run.cpus.max(1) as f64;
        }
        if let (true, Some(peak)) = (run.mem > 0, run.max_rss) {
            self.peak_bytes += peak as f64;
            self.asked_bytes += run.mem as f64;
        }
    }

    pub fn cpu_efficiency(&self) -> Option<f64> {
        (self.reserved_cpu_seconds > 0.0).then(|| self.cpu_seconds / self.reserved_cpu_seconds)
    }

    pub fn memory_efficiency(&self) -> Option<f64> {
        (self.asked_bytes > 0.0).then(|| self.peak_bytes / self.asked_bytes)
    }

    fn to_json(&self) -> Value {
        json!({
            "jobs": self.jobs,
            "cpu_hours": round(self.cpu_seconds / 3600.0),
            "wall_hours": round(self.wall_seconds / 3600.0),
            "cpu_efficiency": self.cpu_efficiency().map(round),
            "memory_efficiency": self.memory_efficiency().map(round),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Runs shorter than this are left out of the jobs furthest off: a few milliseconds of
/// start-up make their efficiency mean nothing.
const FURTHEST_MIN_ELAPSED: f64 = 1.0;
/// How many of the jobs furthest off are shown, for CPU and for memory each.
const FURTHEST_SHOWN: usize = 5;

/// The report, built a run at a time (a queue of millions is read in pages).
#[derive(Debug, Default)]
pub struct Report {
    pub total: Totals,
    pub tags: std::collections::BTreeMap<String, Totals>,
    pub arrays: std::collections::BTreeMap<i64, Totals>,
    /// The lowest CPU and memory efficiencies so far (efficiency, run).
    low_cpu: Vec<(f64, Run)>,
    low_memory: Vec<(f64, Run)>,
}

impl Report {
    pub fn add(&mut self, run: Run) {
        self.total.add(&run);
        if let Some(tag) = &run.tag {
            self.tags.entry(tag.clone()).or_default().add(&run);
        }
        if let Some(array) = run.array_id {
            self.arrays.entry(array).or_default().add(&run);
        }
        if run.elapsed >= FURTHEST_MIN_ELAPSED {
            if let Some(e) = run.cpu_efficiency() {
                keep_lowest(&mut self.low_cpu, e, &run);
            }
            if let Some(e) = run.memory_efficiency() {
                keep_lowest(&mut self.low_memory, e, &run);
            }
        }
    }

    /// As YAML/JSON: totals, per tag, per array, and the jobs furthest off.
    pub fn to_json(&self) -> Value {
        let furthest = |low: &[(f64, Run)], what: &str| -> Vec<Value> {
            low.iter()
                .map(|(_, run)| {
                    json!({
                        "jid": run.jid,
                        "tag": run.tag,
                        "off": what,
                        "elapsed": run.elapsed,
                        "cpus": run.cpus,
                        "cpu_efficiency": run.cpu_efficiency().map(round),
                        "mem": run.mem,
                        "max_rss": run.max_rss,
                        "memory_efficiency": run.memory_efficiency().map(round),
                    })
                })
                .collect()
        };
        json!({
            "total": self.total.to_json(),
            "tags": self.tags.iter().map(|(tag, t)| {
                let mut v = t.to_json();
                v["tag"] = json!(tag);
                v
            }).collect::<Vec<_>>(),
            "arrays": self.arrays.iter().map(|(array, t)| {
                let mut v = t.to_json();
                v["array"] = json!(array);
                v
            }).collect::<Vec<_>>(),
            "furthest_off": furthest(&self.low_cpu, "cpu")
                .into_iter()
                .chain(furthest(&self.low_memory, "memory"))
                .collect::<Vec<_>>(),
        })
    }
}

/// Keep the `FURTHEST_SHOWN` lowest efficiencies, lowest first.
fn keep_lowest(low: &mut Vec<(f64, Run)>, efficiency: f64, run: &Run) {
    if low.len() == FURTHEST_SHOWN && low.last().is_some_and(|(e, _)| *e <= efficiency) {
        return;
    }
    let at = low.partition_point(|(e, _)| *e <= efficiency);
    low.insert(at, (efficiency, run.clone()));
    low.truncate(FURTHEST_SHOWN);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(jid: i64, tag: &str, cpus: i64, elapsed: f64, cpu: f64, mem: i64, rss: i64) -> Run {
        Run {
            jid,
            tag: Some(tag.into()),
            array_id: None,
            cpus,
            mem,
            elapsed,
            cpu: Some(cpu),
            max_rss: Some(rss),
        }
    }

    #[test]
    fn efficiencies_are_what_was_used_over_what_was_asked() {
        let mut report = Report::default();
        report.add(run(1, "a", 2, 10.0, 10.0, 100, 50));
        report.add(run(2, "a", 1, 10.0, 10.0, 0, 70));
        report.add(run(3, "b", 4, 5.0, 1.0, 200, 200));
        let a = &report.tags["a"];
        assert_eq!(a.jobs, 2);
        // 20 s of CPU out of 10 x 2 + 10 x 1 = 30 reserved.
        assert!((a.cpu_efficiency().unwrap() - 20.0 / 30.0).abs() < 1e-9);
        // Only job 1 asked for memory: 50 of 100.
        assert_eq!(a.memory_efficiency(), Some(0.5));
        assert_eq!(report.total.jobs, 3);
        assert!((report.total.cpu_seconds - 21.0).abs() < 1e-9);
        // Job 3 is furthest off in CPU (1 of 20), job 1 in memory (0.5).
        let v = report.to_json();
        assert_eq!(v["furthest_off"][0]["jid"], 3);
        let memory: Vec<&Value> = v["furthest_off"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["off"] == "memory")
            .collect();
        assert_eq!(memory[0]["jid"], 1);
    }
}
