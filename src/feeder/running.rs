//! Running jobs: starting the claimed ones (journal first, then spawn, outside any
//! transaction), reaping them, their timeouts, kills on request and fencing when another
//! host took a job over, and stopping them all when the feeder stops.

use super::slots::{kernel_memory_reason, memory_reason};
use super::*;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

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
        self.slots
            .running
            .iter()
            .filter(|j| !j.fenced)
            .map(|j| j.jid)
            .chain(self.claimed.jids())
            .collect()
    }

    /// Act on the current claims of our jobs (`current_claims` of `watched_jids`).
    pub(super) fn apply_claims(&mut self, current: &[claims::ClaimState]) {
        let mut messages = Vec::new();
        // Buffered jobs taken over are dropped; those asked to be killed end unstarted.
        let claims_now: HashMap<i64, &claims::ClaimState> =
            current.iter().map(|c| (c.jid, c)).collect();
        let mut kept = Vec::new();
        for row in self.claimed.take_all() {
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
                        None => kept.push(row),
                    }
                }
                _ => messages.push((
                    Level::Warn,
                    format!("job {jid} was taken over by another host before it started here"),
                )),
            }
        }
        self.claimed.keep_checked(kept);
        for job in self.slots.running.iter_mut().filter(|j| !j.fenced) {
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
        for job in &mut self.slots.running {
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

    /// Reap the job at `i` if it has exited, forgetting its process group in the same
    /// step (under the watchdog's lock, so the watchdog never signals a reused pid).
    /// Also says whether the watchdog signalled it (then it is settled as crashed).
    pub(super) fn try_reap(
        &mut self,
        i: usize,
    ) -> Option<(std::process::ExitStatus, process::Usage, bool)> {
        let lease = self.lease.clone();
        let mut groups = lease.groups();
        let job = &mut self.slots.running[i];
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
        while i < self.slots.running.len() {
            match self.try_reap(i) {
                Some((status, usage, lease_lost)) => {
                    let mut job = self.slots.running.swap_remove(i);
                    // What the kernel saw of the job's whole tree, where it had a cgroup.
                    let (kernel_killed, tree_peak) = job
                        .cgroup
                        .as_ref()
                        .map_or((false, None), |g| (g.out_of_memory(), g.peak()));
                    self.slots.let_go(job.cgroup.take());
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
        let batch = self.claimed.take(n);
        // Test hook: the host freezes after finding its claims safe, before journaling.
        stop_once("stop_before_journal");
        if !self.journal_starts(&batch) {
            return Ok(());
        }
        fault("after_journal");
        if self.frozen_since_safe(&batch) {
            self.claimed.put_back(batch);
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
        let free = self.free_slots();
        let mut n = 0;
        let (mut cpus, mut mem) = self
            .slots
            .running
            .iter()
            .fold((0, 0), |(c, m), j| (c + j.needs.cpus, m + j.needs.mem));
        for job in self.claimed.iter().take(free) {
            let needs = Needs::of(job);
            let alone = self.slots.running.is_empty() && n == 0;
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
                batch.len() + self.claimed.len(),
                JOURNAL_RETRY.as_secs()
            ),
        );
        self.journal_failed = Some(Instant::now());
        let rest: Vec<(i64, String)> = self.claimed.take_all().iter().map(claim_of).collect();
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
        let prepared = match self.claimed.take_prepared(&claim) {
            Some(prepared) => prepared,
            None => self.fetch_inputs(job).and_then(|()| {
                runner::prepare(&self.job_dir(), &queue, &self.shell, job, gpu_host)
            }),
        };
        let mut needs = Needs::of(job);
        needs.cpu_ids = self.slots.cpus_for(needs.cpus, self.config.capacity.cpus);
        let group = prepared
            .is_ok()
            .then(|| self.slots.job_group(jid, needs.mem))
            .flatten()
            .and_then(|made| made.map_err(|why| self.warn(&why)).ok());
        let spawned = prepared.and_then(|p| p.spawn(group.as_ref().map(|(_, procs)| procs)));
        let (group, procs) = group.unzip();
        drop(procs);
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                self.slots.let_go(group);
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
        self.slots.running.push(RunningJob {
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
        let next = self
            .claimed
            .next_unprepared(self.config.max_feed.min(PREPARE_AHEAD));
        let gpu_host = !self.config.capacity.devices.is_empty();
        let queue = self.queue.name();
        for job in next {
            let prepared = self.fetch_inputs(&job).and_then(|()| {
                runner::prepare(&self.job_dir(), &queue, &self.shell, &job, gpu_host)
            });
            self.claimed.prepared(claim_of(&job).1, prepared);
        }
    }

    /// Give claimed jobs back unstarted with the next transaction, removing the output
    /// files prepared for them while the claims are still ours.
    pub(super) fn give_back(&mut self, claims: impl IntoIterator<Item = (i64, String)>) {
        for (jid, claim) in claims {
            if let Some(Ok(prepared)) = self.claimed.take_prepared(&claim) {
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
        for job in &self.slots.running {
            process::signal_group(job.pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        let mut ended: Vec<(i64, String, Option<String>)> = Vec::new();
        while !self.slots.running.is_empty() {
            let mut i = 0;
            while i < self.slots.running.len() {
                if let Some((status, _, _)) = self.try_reap(i) {
                    let mut job = self.slots.running.swap_remove(i);
                    self.slots.let_go(job.cgroup.take());
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
                for job in &self.slots.running {
                    process::signal_group(job.pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stopped: Vec<(i64, String)> = ended.iter().map(|(j, c, _)| (*j, c.clone())).collect();
        self.upload_outputs(&stopped, true);
        let max_attempts = self.settings.max_attempts;
        let unstarted: Vec<Row> = self.claimed.take_all();
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
