//! Running jobs: starting the claimed ones (journal first, then spawn, outside any
//! transaction), reaping them, their timeouts, kills on request and fencing when another
//! host took a job over, and stopping them all when the feeder stops.

use super::*;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

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
    /// How many looks pinned its processes to its CPUs (`watch_jobs`).
    pub(super) pin_looks: u8,
    /// Its cgroup, where the kernel holds it to its `--mem` (then it is not watched).
    pub(super) cgroup: Option<crate::cgroup::JobGroup>,
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

/// How often running jobs are looked at in `/proc` (`watch_jobs`).
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How many looks pin a job's processes (see `watch_jobs`).
const PIN_LOOKS: u8 = 3;

/// Why a job was killed for memory, as `list`, `wait` and the dashboard say it.
fn memory_reason(peak: i64, limit: i64) -> String {
    format!(
        "memory: peak {} above --mem {}",
        crate::human::bytes(peak),
        crate::human::bytes(limit)
    )
}

/// Why the kernel killed a job held to its `--mem` in its cgroup (it cannot go above).
fn kernel_memory_reason(limit: i64) -> String {
    format!(
        "memory: needed more than --mem {} (killed by the kernel's limit)",
        crate::human::bytes(limit)
    )
}

impl Feeder {
    /// The CPUs a job that needs `n` runs on: `n` of this feeder's CPUs that no running
    /// job has, lowest first, so two jobs never share one. None (the job runs where the
    /// kernel puts it) when the feeder offers more CPUs than it may use (`--cpus` above
    /// the host's, or `--max_feed` above them): it cannot keep them apart then.
    pub(super) fn cpus_for(&self, n: i64) -> Vec<usize> {
        let mine = &self.cpu_set;
        if mine.is_empty() || self.config.capacity.cpus > mine.len() as i64 || n < 1 {
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
}

impl Feeder {
    /// Kill our copies of jobs someone else took over, and send signals `rq kill` asked for.
    pub(super) fn check_claims_and_kills(&mut self) -> Result<()> {
        let jids = self.watched_jids();
        if jids.is_empty() {
            return Ok(());
        }
        let current = self
            .queue
            .store()
            .read(|tx| claims::current_claims(tx, &jids))?;
        self.apply_claims(&current);
        Ok(())
    }

    /// The jobs whose claims we hold: running (not already fenced) and buffered.
    pub(super) fn watched_jids(&self) -> Vec<i64> {
        self.running
            .iter()
            .filter(|j| !j.fenced)
            .map(|j| j.jid)
            .chain(self.buffer.iter().map(Row::jid))
            .collect()
    }

    /// Act on the current claims of our jobs (`current_claims` of `watched_jids`).
    pub(super) fn apply_claims(&mut self, current: &[claims::ClaimState]) {
        let mut messages = Vec::new();
        // Buffered jobs taken over are dropped; those asked to be killed end unstarted.
        let claims_now: HashMap<i64, &claims::ClaimState> =
            current.iter().map(|c| (c.jid, c)).collect();
        let mut kept = VecDeque::new();
        for row in self.buffer.drain(..) {
            let (jid, claim) = claim_of(&row);
            match claims_now.get(&jid) {
                Some(c) if c.claim.as_deref() == Some(claim.as_str()) => {
                    match c.kill_signal.as_deref().and_then(process::parse_signal) {
                        Some(sig) => {
                            messages.push((
                                Level::Info,
                                format!("job {jid} killed on request before it started"),
                            ));
                            self.recorder.add_ends([End {
                                jid,
                                claim,
                                exit_status: None,
                                signal: Some(process::signal_name(sig)),
                                elapsed: 0.0,
                                timed_out: false,
                                retry_at: None,
                                ended_at: time::now(),
                                usage: process::Usage::default(),
                                reason: None,
                            }]);
                        }
                        None => kept.push_back(row),
                    }
                }
                _ => messages.push((
                    Level::Warn,
                    format!("job {jid} was taken over by another host before it started here"),
                )),
            }
        }
        self.buffer = kept;
        self.buffer_checked = Instant::now();
        for job in self.running.iter_mut().filter(|j| !j.fenced) {
            let now = current.iter().find(|c| c.jid == job.jid);
            match now {
                Some(c) if c.claim.as_deref() == Some(job.claim.as_str()) => {
                    let requested = c.kill_signal.as_deref().and_then(process::parse_signal);
                    if let Some(sig) = requested.filter(|_| !job.killed_on_request) {
                        job.killed_on_request = true;
                        process::signal_group(job.pid, sig);
                        messages.push((
                            Level::Info,
                            format!(
                                "job {} signalled {} on request",
                                job.jid,
                                process::signal_name(sig)
                            ),
                        ));
                    }
                }
                _ => {
                    job.fenced = true;
                    process::signal_group(job.pid, libc::SIGKILL);
                    messages.push((
                        Level::Warn,
                        format!(
                            "job {} was taken over by another host: killed our copy (pid {})",
                            job.jid, job.pid
                        ),
                    ));
                }
            }
        }
        for (level, m) in messages {
            self.log.log(level, &m);
        }
    }

    /// TERM jobs past their timeout; KILL them after the grace period.
    pub(super) fn enforce_timeouts(&mut self) {
        let grace = Duration::from_secs_f64(self.config.kill_grace);
        let mut messages = Vec::new();
        for job in &mut self.running {
            let Some(limit) = job.timeout else { continue };
            match job.term_sent {
                None if job.started.elapsed().as_secs_f64() > limit => {
                    process::signal_group(job.pid, libc::SIGTERM);
                    job.term_sent = Some(Instant::now());
                    messages.push(format!("job {} timed out after {limit}s: TERM", job.jid));
                }
                Some(at) if at.elapsed() > grace => {
                    process::signal_group(job.pid, libc::SIGKILL);
                    job.term_sent = Some(Instant::now() + Duration::from_secs(3600));
                    messages.push(format!(
                        "job {} still running {}s after TERM: KILL",
                        job.jid, self.config.kill_grace
                    ));
                }
                _ => {}
            }
        }
        for m in messages {
            self.warn(&m);
        }
    }

    /// Keep jobs within what they asked for, from one pass over `/proc` (at most every
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
    pub(super) fn watch_jobs(&mut self) {
        let wanted = |job: &RunningJob| {
            (job.needs.mem > 0 && job.cgroup.is_none() && job.over_memory.is_none())
                || (!job.needs.cpu_ids.is_empty() && job.pin_looks < PIN_LOOKS)
        };
        if !self.running.iter().any(wanted) && self.lingering.is_empty() {
            return;
        }
        if self.watched_at.is_some_and(|at| at.elapsed() < WATCH_EVERY) {
            return;
        }
        self.watched_at = Some(Instant::now());
        self.lingering.retain(|group| !group.remove());
        if !self.running.iter().any(wanted) {
            return;
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
        for m in messages {
            self.warn(&m);
        }
    }

    /// Reap the job at `i` if it has exited, forgetting its process group in the same
    /// step (under the watchdog's lock, so the watchdog never signals a reused pid).
    /// Also says whether the watchdog signalled it (then it is settled as crashed).
    pub(super) fn try_reap(
        &mut self,
        i: usize,
    ) -> Option<(std::process::ExitStatus, process::Usage, bool)> {
        let lease = self.lease.clone();
        let mut groups = lease.groups();
        let job = &mut self.running[i];
        // Reaped with what it used (wait4); its `Child` is dropped unwaited right after.
        match process::try_reap(job.pid) {
            Ok(Some((status, usage))) => {
                // Killed, or ended by the TERM that came first; a job that ignored the TERM
                // and ended by itself after heartbeats worked again ended as it says.
                let fenced = groups
                    .remove(&job.pid)
                    .is_some_and(|f| f.killed || (f.termed && status.signal().is_some()));
                Some((status, usage, fenced))
            }
            _ => None,
        }
    }

    /// Collect every child that has exited.
    pub(super) fn reap_children(&mut self) -> Vec<End> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            match self.try_reap(i) {
                Some((status, usage, lease_lost)) => {
                    let mut job = self.running.swap_remove(i);
                    // What the kernel saw of the job's whole tree, where it had a cgroup.
                    let (kernel_killed, tree_peak) = job
                        .cgroup
                        .as_ref()
                        .map_or((false, None), |g| (g.out_of_memory(), g.peak()));
                    self.let_go(job.cgroup.take());
                    if job.fenced {
                        continue;
                    }
                    if lease_lost {
                        self.lease_kills.push((
                            job.jid,
                            job.claim,
                            status.signal().map(process::signal_name),
                        ));
                        continue;
                    }
                    let failed = status.code() != Some(0);
                    let retry_at = (failed
                        && !job.killed_on_request
                        && job.over_memory.is_none()
                        && !kernel_killed
                        && job.retried < job.retries)
                        .then(|| {
                            let delay = (job.retry_delay * 2f64.powi(job.retried.min(30) as i32))
                                .min(time::MAX_DURATION_SECS);
                            self.polling
                                .retry_after(Duration::from_secs_f64(delay.min(1e9) + 0.01));
                            time::format(
                                time::now_ts()
                                    .checked_add(jiff::SignedDuration::from_secs_f64(delay))
                                    .unwrap_or_else(|_| time::now_ts()),
                            )
                        });
                    let elapsed = job.started.elapsed().as_secs_f64();
                    self.polling.job_ran(elapsed);
                    done.push(End {
                        jid: job.jid,
                        claim: job.claim,
                        exit_status: status.code(),
                        signal: status.signal().map(process::signal_name),
                        elapsed,
                        timed_out: job.term_sent.is_some(),
                        retry_at,
                        ended_at: time::now(),
                        usage: process::Usage {
                            // The tree's peak from its cgroup; else the group's peak as
                            // watched, where it was more than the largest process's
                            // (processes side by side).
                            max_rss: tree_peak
                                .or_else(|| usage.max_rss.map(|m| m.max(job.peak_rss))),
                            ..usage
                        },
                        reason: match job.over_memory {
                            Some(peak) => Some(memory_reason(peak, job.needs.mem)),
                            None => kernel_killed.then(|| kernel_memory_reason(job.needs.mem)),
                        },
                    });
                }
                None => i += 1,
            }
        }
        done
    }

    /// Remove an ended job's cgroup, or keep it for later while processes of the job
    /// linger in it.
    fn let_go(&mut self, group: Option<crate::cgroup::JobGroup>) {
        if let Some(group) = group.filter(|g| !g.remove()) {
            self.lingering.push(group);
        }
    }

    /// A cgroup held to `mem` bytes for job `jid`, with the file that moves its first
    /// process in; none without cgroups here or a `--mem` (or if it cannot be made: then
    /// the job's memory is watched, as without cgroups).
    fn job_group(
        &mut self,
        jid: i64,
        mem: i64,
    ) -> Option<(crate::cgroup::JobGroup, std::fs::File)> {
        let cgroups = self.cgroups.as_mut().filter(|_| mem > 0)?;
        match cgroups.make(jid, mem) {
            Ok(made) => Some(made),
            Err(e) => {
                let message = format!(
                    "job {jid}: cannot make its cgroup under {}: {e}; watching its memory instead",
                    cgroups.parent().display()
                );
                self.warn(&message);
                None
            }
        }
    }

    /// Note ends in the journal: should we die before the next transaction records them,
    /// whoever recovers our jobs records them from there.
    pub(super) fn journal_ends(&mut self, ends: &[End]) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        if let Some(Err(e)) = ends
            .iter()
            .map(|end| journal.record_end(end))
            .find(Result::is_err)
        {
            self.log.log(Level::Warn, &e.to_string());
        }
    }

    /// Start buffered jobs in the free slots (outside any transaction): journal them, then
    /// spawn; their pids are recorded with the next transaction.
    pub(super) fn start_buffered(&mut self) -> Result<()> {
        let n = self.buffered_that_fit();
        if n == 0 {
            return Ok(());
        }
        let batch: Vec<Row> = self.buffer.drain(..n).collect();
        // Test hook: the host freezes after finding its claims safe, before journaling.
        stop_once("stop_before_journal");
        if !self.journal_starts(&batch) {
            return Ok(());
        }
        fault("after_journal");
        if self.frozen_since_safe(&batch) {
            for row in batch.into_iter().rev() {
                self.buffer.push_front(row);
            }
            return self.check_claims_and_kills();
        }
        let at = Instant::now();
        let mut failed = Vec::new();
        for job in &batch {
            let (jid, claim) = claim_of(job);
            match self.spawn(job) {
                Ok((pid, identity)) => self.recorder.next.starts.push(Start {
                    jid,
                    claim,
                    pid,
                    identity,
                    at,
                }),
                Err(e) => {
                    self.note_not_started(jid, &e);
                    failed.push((jid, claim));
                }
            }
        }
        self.upload_outputs(&failed, true);
        self.recorder.next.failed_starts.extend(failed);
        Ok(())
    }

    /// How many buffered jobs start now: in claim order, while slots are free and each
    /// job fits what the running ones leave (a job that does not fit yet holds back those
    /// behind it: no starvation).
    fn buffered_that_fit(&self) -> usize {
        let free = self.config.max_feed.saturating_sub(self.running.len());
        let mut n = 0;
        let (mut cpus, mut mem) = self
            .running
            .iter()
            .fold((0, 0), |(c, m), j| (c + j.needs.cpus, m + j.needs.mem));
        for job in self.buffer.iter().take(free) {
            let needs = Needs::of(job);
            let alone = self.running.is_empty() && n == 0;
            if !alone
                && (cpus + needs.cpus > self.config.capacity.cpus
                    || mem + needs.mem > self.config.capacity.mem)
            {
                break;
            }
            cpus += needs.cpus;
            mem += needs.mem;
            n += 1;
        }
        n
    }

    /// Journal the start of `batch` (durably, before any spawn). False when the journal
    /// could not be written: then every claimed job is given back unstarted (recovery
    /// would think an unjournaled job never started) and claiming pauses a while.
    fn journal_starts(&mut self, batch: &[Row]) -> bool {
        let claims: Vec<(i64, String)> = batch.iter().map(claim_of).collect();
        let tokens: Vec<&str> = claims.iter().map(|(_, c)| c.as_str()).collect();
        let journaled = match &mut self.journal {
            // Test hook: the journal cannot be written (a full or read-only filesystem).
            _ if std::env::var("RQ_FAULT").is_ok_and(|f| f == "journal_write") => Err(Error::Io {
                context: "cannot write the start journal".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            }),
            Some(journal) => journal.record(self.queue.store(), &tokens),
            // Opened before the loop; only taken when the feeder ends.
            None => Err(Error::Conflict("the start journal is not open".into())),
        };
        let Err(e) = journaled else {
            return true;
        };
        self.log.log(
            Level::Error,
            &format!(
                "{e}: giving back {} claimed jobs unstarted; claiming again in {}s",
                batch.len() + self.buffer.len(),
                JOURNAL_RETRY.as_secs()
            ),
        );
        self.journal_failed = Some(Instant::now());
        let rest: Vec<(i64, String)> = self.buffer.drain(..).map(|r| claim_of(&r)).collect();
        self.give_back(claims.into_iter().chain(rest));
        false
    }

    /// Our claims were safe when `may_start` said so: another host takes a job only after
    /// a lease of silence from us. A host frozen, stopped or suspended after that, before
    /// its starts were journaled, may have been judged dead meanwhile and its jobs given
    /// to others (with no journaled start, as never started): its heartbeat may even have
    /// resumed by now. So a start journaled over a quarter lease after that moment is not
    /// made before the claims are read back; the jobs still ours start with the next turn
    /// (journaled again), the others are dropped. True when that is so (said in the log).
    fn frozen_since_safe(&mut self, batch: &[Row]) -> bool {
        let since = crate::liveness::boot_clock() - self.safe_at;
        if since <= self.settings.lease / 4.0 {
            return false;
        }
        self.log.log(
            Level::Warn,
            &format!(
                "{since:.1}s passed between finding our claims safe and journaling the start of jobs {:?} (this host was frozen, stopped or suspended?): reading the claims back before starting them",
                batch.iter().map(Row::jid).collect::<Vec<_>>()
            ),
        );
        true
    }

    /// Spawn a journaled job (prepared ahead, or now) on the CPUs no other running job
    /// has, in a cgroup of its own where it asks for memory and the feeder has them; it
    /// is then followed as running. Its pid and process identity.
    fn spawn(&mut self, job: &Row) -> Result<(u32, Option<String>)> {
        let (jid, claim) = claim_of(job);
        let gpu_host = !self.config.capacity.devices.is_empty();
        let queue = self.queue.name();
        let prepared = match self.prepared.remove(&claim) {
            Some(prepared) => prepared,
            None => self.fetch_inputs(job).and_then(|()| {
                runner::prepare(&self.job_dir(), &queue, &self.shell, job, gpu_host)
            }),
        };
        let mut needs = Needs::of(job);
        needs.cpu_ids = self.cpus_for(needs.cpus);
        let group = prepared
            .is_ok()
            .then(|| self.job_group(jid, needs.mem))
            .flatten();
        let spawned = prepared.and_then(|p| p.spawn(group.as_ref().map(|(_, procs)| procs)));
        let (group, procs) = group.unzip();
        drop(procs);
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                self.let_go(group);
                return Err(e);
            }
        };
        let pid = child.id();
        self.lease.add(pid);
        let identity = process::identity(pid);
        self.log.log(
            Level::Info,
            &format!(
                "started - jid {jid} pid {pid} command {}",
                job.get("command").to_plain()
            ),
        );
        let real = |f: &str| match job.get(f) {
            crate::job::Cell::Real(r) => Some(*r),
            crate::job::Cell::Int(i) => Some(*i as f64),
            _ => None,
        };
        self.running.push(RunningJob {
            jid,
            claim,
            pid,
            started: Instant::now(),
            timeout: real("timeout").filter(|t| *t > 0.0),
            term_sent: None,
            killed_on_request: false,
            peak_rss: 0,
            over_memory: None,
            pin_looks: 0,
            cgroup: group,
            fenced: false,
            retries: job.get("retries").as_int().unwrap_or(0),
            retried: job.get("retried").as_int().unwrap_or(0),
            retry_delay: real("retry_delay").unwrap_or(1.0),
            needs,
        });
        Ok((pid, identity))
    }

    /// A job that could not be started: said in the log and in its stderr (never through
    /// a link planted in the queue); it is recorded as exit status 127.
    fn note_not_started(&mut self, jid: i64, e: &Error) {
        self.log
            .log(Level::Error, &format!("not started - jid {jid}: {e}"));
        let stderr = self.job_dir().join("stderr").join(jid.to_string());
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&stderr)
            .and_then(|mut f| {
                f.write_all(format!("rq: could not start the job: {e}\n").as_bytes())
            });
    }

    /// Prepare the buffered jobs that start next (a few: each holds its files open), so
    /// that a slot coming free only has to journal and spawn. Preparations of jobs no
    /// longer buffered (taken over, killed before they started) are dropped, their files
    /// left alone: another host may own those paths now.
    pub(super) fn prepare_next(&mut self) {
        let next: Vec<String> = self
            .buffer
            .iter()
            .take(self.config.max_feed.min(PREPARE_AHEAD))
            .map(|job| claim_of(job).1)
            .collect();
        self.prepared.retain(|claim, _| next.contains(claim));
        let gpu_host = !self.config.capacity.devices.is_empty();
        let queue = self.queue.name();
        for (i, claim) in next.into_iter().enumerate() {
            if self.prepared.contains_key(&claim) {
                continue;
            }
            let job = self.buffer[i].clone();
            let prepared = self.fetch_inputs(&job).and_then(|()| {
                runner::prepare(&self.job_dir(), &queue, &self.shell, &job, gpu_host)
            });
            self.prepared.insert(claim, prepared);
        }
    }

    /// Give claimed jobs back unstarted with the next transaction, removing the output
    /// files prepared for them while the claims are still ours.
    pub(super) fn give_back(&mut self, claims: impl IntoIterator<Item = (i64, String)>) {
        for (jid, claim) in claims {
            if let Some(Ok(prepared)) = self.prepared.remove(&claim) {
                prepared.discard();
            }
            self.recorder.next.releases.push((jid, claim));
        }
    }

    /// Kill every running job (TERM, then KILL after the grace period) and handle them as
    /// crashed, recording the signal that ended each.
    pub(super) fn stop_all(&mut self, why: Option<&str>) -> Result<()> {
        self.recorder.next.starts.clear();
        let grace = Duration::from_secs_f64(self.config.kill_grace);
        for job in &self.running {
            process::signal_group(job.pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        let mut ended: Vec<(i64, String, Option<String>)> = Vec::new();
        while !self.running.is_empty() {
            let mut i = 0;
            while i < self.running.len() {
                if let Some((status, _, _)) = self.try_reap(i) {
                    let mut job = self.running.swap_remove(i);
                    self.let_go(job.cgroup.take());
                    if !job.fenced {
                        ended.push((
                            job.jid,
                            job.claim,
                            status.signal().map(process::signal_name),
                        ));
                    }
                } else {
                    i += 1;
                }
            }
            if Instant::now() >= deadline {
                for job in &self.running {
                    process::signal_group(job.pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stopped: Vec<(i64, String)> = ended.iter().map(|(j, c, _)| (*j, c.clone())).collect();
        self.upload_outputs(&stopped, true);
        let max_attempts = self.settings.max_attempts;
        let unstarted: Vec<Row> = self.buffer.drain(..).collect();
        self.give_back(unstarted.iter().map(claim_of));
        let batch = self.recorder.take();
        self.recorder.forget_waiting_ends();
        let outcomes = self.queue.store().write(|tx| {
            super::record::record(tx, &batch)?;
            let mut outcomes = Vec::new();
            for (jid, claim, signal) in &ended {
                outcomes.push((
                    *jid,
                    claims::mark_crashed(tx, *jid, claim, signal.as_deref(), max_attempts)?,
                ));
            }
            Ok(outcomes)
        })?;
        self.forget_runs(batch.ends.iter().map(|e| e.jid));
        for (jid, outcome) in outcomes {
            self.warn(&format!("job {jid} {}: {outcome}", why.unwrap_or("killed")));
        }
        Ok(())
    }
}
