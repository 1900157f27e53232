//! The feeder's slots: the jobs running on this host, what each takes of it (CPUs, memory,
//! GPUs), the CPUs and cgroups handed out to them, and the looks at `/proc` that keep
//! them to their `--cpus` and `--mem`.

use std::time::{Duration, Instant};

use crate::cgroup::{Cgroups, JobGroup};
use crate::job::Row;
use crate::process;

pub(super) struct RunningJob {
    pub(super) jid: i64,
    pub(super) claim: String,
    /// The job's first process (its process group's leader), reaped by pid with what it
    /// used (`process::try_reap`); its `std::process::Child` is not kept.
    pub(super) pid: u32,
    pub(super) started: Instant,
    pub(super) timeout: Option<f64>,
    /// When the timeout's TERM was sent.
    pub(super) term_sent: Option<Instant>,
    /// `rq kill` asked for this job to be signalled (it is then not retried).
    pub(super) killed_on_request: bool,
    /// The most memory its process group was seen holding (bytes), and, once it went
    /// over its `--mem`, that peak (it was killed; not retried).
    pub(super) peak_rss: i64,
    pub(super) over_memory: Option<i64>,
    /// How many looks pinned its processes to its CPUs (`Slots::watch`).
    pub(super) pin_looks: u8,
    /// Its cgroup, where the kernel holds it to its `--mem` (then it is not watched).
    pub(super) cgroup: Option<JobGroup>,
    /// Someone else holds the job now: our copy was killed and its end is not recorded.
    pub(super) fenced: bool,
    pub(super) retries: i64,
    pub(super) retried: i64,
    pub(super) retry_delay: f64,
    /// What it takes of the host while it runs.
    pub(super) needs: Needs,
}

/// What a claimed job takes of its host: CPUs, memory, the GPU devices it was given, and
/// the CPUs it was pinned to (none when the feeder offers more CPUs than it has).
#[derive(Debug, Clone, Default)]
pub(super) struct Needs {
    pub(super) cpus: i64,
    pub(super) mem: i64,
    pub(super) devices: Vec<String>,
    pub(super) cpu_ids: Vec<usize>,
}

impl Needs {
    pub(super) fn of(job: &Row) -> Needs {
        Needs {
            cpus: job.get("cpus").as_int().unwrap_or(1),
            mem: job.get("mem").as_int().unwrap_or(0),
            devices: job
                .get("gpu_ids")
                .as_text()
                .map(|ids| {
                    ids.split(',')
                        .filter(|d| !d.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            cpu_ids: Vec::new(),
        }
    }
}

/// How often running jobs are looked at in `/proc` (`Slots::watch`).
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How many looks pin a job's processes (see `Slots::watch`).
const PIN_LOOKS: u8 = 3;

/// Why a job was killed for memory, as `list`, `wait` and the dashboard say it.
pub(super) fn memory_reason(peak: i64, limit: i64) -> String {
    format!(
        "memory: peak {} above --mem {}",
        crate::human::bytes(peak),
        crate::human::bytes(limit)
    )
}

/// Why the kernel killed a job held to its `--mem` in its cgroup (it cannot go above).
pub(super) fn kernel_memory_reason(limit: i64) -> String {
    format!(
        "memory: needed more than --mem {} (killed by the kernel's limit)",
        crate::human::bytes(limit)
    )
}

pub(super) struct Slots {
    pub(super) running: Vec<RunningJob>,
    /// The CPUs this feeder may use (its affinity at start), handed out to jobs.
    cpu_set: Vec<usize>,
    /// When the running jobs were last looked at in `/proc` (`watch`).
    watched_at: Option<Instant>,
    /// Where jobs with `--mem` get a cgroup held to it by the kernel (None: watched).
    pub(super) cgroups: Option<Cgroups>,
    /// Groups of ended jobs that processes of theirs still hold (removed when empty).
    lingering: Vec<JobGroup>,
}

impl Slots {
    pub(super) fn new() -> Slots {
        Slots {
            running: Vec::new(),
            cpu_set: process::allowed_cpus(),
            watched_at: None,
            cgroups: None,
            lingering: Vec::new(),
        }
    }

    /// The CPUs a job that needs `n` runs on: `n` of this feeder's CPUs that no running
    /// job has, lowest first, so two jobs never share one. None (the job runs where the
    /// kernel puts it) when the feeder offers more CPUs than it may use (`--cpus` above
    /// the host's, or `--max_feed` above them): it cannot keep them apart then.
    pub(super) fn cpus_for(&self, n: i64, offered: i64) -> Vec<usize> {
        let mine = &self.cpu_set;
        if mine.is_empty() || offered > mine.len() as i64 || n < 1 {
            return Vec::new();
        }
        let taken: std::collections::HashSet<usize> = self
            .running
            .iter()
            .flat_map(|job| job.needs.cpu_ids.iter().copied())
            .collect();
        let free: Vec<usize> = mine
            .iter()
            .copied()
            .filter(|c| !taken.contains(c))
            .collect();
        if (free.len() as i64) < n {
            return Vec::new();
        }
        free[..n as usize].to_vec()
    }

    /// Keep jobs within what they asked for (warnings to log returned), from one pass over `/proc` (at most every
    /// half second, and only while a running job needs it):
    /// - `--cpus`: every process of a job's process group is pinned to the job's CPUs.
    ///   Done here, not at the spawn: pinning each trivial job as it started cost a fifth
    ///   of the dispatch rate (the scheduler could no longer put it on an idle CPU); a job
    ///   that lives long enough to matter is pinned within a look, with the processes it
    ///   started by then (the ones it starts later inherit it). A process started while
    ///   `/proc` is read may be missed by that look: a job is pinned on its first
    ///   `PIN_LOOKS` looks.
    /// - `--mem`: a job whose process group holds more resident memory is killed at once
    ///   (KILL: it may be taking the host's memory from everything else) and ends failed,
    ///   with the reason.
    /// - the cgroups of ended jobs that processes of theirs still held are removed once
    ///   those are gone.
    pub(super) fn watch(&mut self) -> Vec<String> {
        let wanted = |job: &RunningJob| {
            (job.needs.mem > 0 && job.cgroup.is_none() && job.over_memory.is_none())
                || (!job.needs.cpu_ids.is_empty() && job.pin_looks < PIN_LOOKS)
        };
        if !self.running.iter().any(wanted) && self.lingering.is_empty() {
            return Vec::new();
        }
        if self.watched_at.is_some_and(|at| at.elapsed() < WATCH_EVERY) {
            return Vec::new();
        }
        self.watched_at = Some(Instant::now());
        self.lingering.retain(|group| !group.remove());
        if !self.running.iter().any(wanted) {
            return Vec::new();
        }
        let groups = process::groups();
        let mut messages = Vec::new();
        for job in &mut self.running {
            let Some(group) = groups.get(&job.pid) else {
                continue;
            };
            if !job.needs.cpu_ids.is_empty() && job.pin_looks < PIN_LOOKS {
                for &pid in &group.pids {
                    process::pin(pid, &job.needs.cpu_ids);
                }
                job.pin_looks += 1;
            }
            job.peak_rss = job.peak_rss.max(group.rss);
            if job.needs.mem > 0
                && job.cgroup.is_none()
                && group.rss > job.needs.mem
                && job.over_memory.is_none()
            {
                process::signal_group(job.pid, libc::SIGKILL);
                job.over_memory = Some(group.rss);
                messages.push(format!(
                    "job {} killed: {}",
                    job.jid,
                    memory_reason(group.rss, job.needs.mem)
                ));
            }
        }
        messages
    }

    /// Remove an ended job's cgroup, or keep it for later while processes of the job
    /// linger in it.
    pub(super) fn let_go(&mut self, group: Option<JobGroup>) {
        if let Some(group) = group.filter(|g| !g.remove()) {
            self.lingering.push(group);
        }
    }

    /// A cgroup held to `mem` bytes for job `jid`, with the file that moves its first
    /// process in; none without cgroups here or a `--mem`; why not where it cannot be
    /// made (then the job's memory is watched, as without cgroups).
    pub(super) fn job_group(
        &mut self,
        jid: i64,
        mem: i64,
    ) -> Option<std::result::Result<(JobGroup, std::fs::File), String>> {
        let cgroups = self.cgroups.as_mut().filter(|_| mem > 0)?;
        Some(cgroups.make(jid, mem).map_err(|e| {
            format!(
                "job {jid}: cannot make its cgroup under {}: {e}; watching its memory instead",
                cgroups.parent().display()
            )
        }))
    }
}
