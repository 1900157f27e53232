//! The rescuer: settles claims no live feeder follows any more. Its successor's (this
//! host's earlier feeders, crashed or killed), jobs the queue says this feeder holds but
//! it does not know of, and the jobs of hosts whose heartbeat stopped. Each such job's
//! fate comes from its feeder's start journal (never started → pending, an end seen →
//! recorded, else crashed). It also reaps what dead feeders leave (job files of no job,
//! day-old journals).
//!
//! It knows where journals and heartbeats live (`Journals`, `Heartbeats`) and nothing of
//! the feeder's running jobs: the feeder says which jobs it follows and which ends it has
//! seen.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::claims::{self, End, Fate};
use crate::error::Result;
use crate::job::Row;
use crate::journal::{self, Journals};
use crate::liveness::{Heartbeats, Settings};
use crate::log::{Level, Logger};
use crate::queue::Queue;
use crate::{process, time};

use super::claim_of;

pub(super) struct Rescuer {
    /// This host, and this feeder's id.
    host: String,
    feeder: String,
    journals: Journals,
    heartbeats: Heartbeats,
}

impl Rescuer {
    pub(super) fn new(queue: &Queue, host: &str, feeder: &str) -> Rescuer {
        let (journals, heartbeats) = if queue.in_database() {
            (Journals::Rows, Heartbeats::Rows)
        } else {
            let dir = queue.dir().to_path_buf();
            (Journals::Files(dir.clone()), Heartbeats::Files(dir))
        };
        Rescuer {
            host: host.to_string(),
            feeder: feeder.to_string(),
            journals,
            heartbeats,
        }
    }

    /// Where this queue keeps start journals (the feeder opens its own through it).
    pub(super) fn journals(&self) -> &Journals {
        &self.journals
    }

    /// Settle the jobs the queue says this feeder holds but it does not follow (not in
    /// `followed`): a claim whose commit it never saw, a run whose end it could not
    /// record. An end it saw (`seen_end`) is recorded; else by the start journal: never
    /// started → pending, else crashed.
    pub(super) fn settle_unfollowed(
        &self,
        queue: &mut Queue,
        log: &mut Logger,
        followed: &HashSet<i64>,
        seen_end: impl Fn(i64, &str) -> Option<End>,
        max_attempts: i64,
    ) -> Result<()> {
        let held = queue
            .store()
            .read(|tx| claims::held_by_feeder(tx, &self.feeder))?;
        let jobs: Vec<(i64, String, bool)> = held
            .iter()
            .filter(|r| !followed.contains(&r.jid()))
            .map(|job| {
                let (jid, claim) = claim_of(job);
                (jid, claim, job.get("pid").as_int().is_some())
            })
            .collect();
        if jobs.is_empty() {
            return Ok(());
        }
        let journaled = self.journals.reading(queue.store(), |read| {
            let mut cache = HashMap::new();
            jobs.iter()
                .map(|(_, claim, pid)| {
                    journal::fate_of(read, &mut cache, Some(&self.feeder), claim, *pid)
                })
                .collect::<Vec<_>>()
        })?;
        let settle: Vec<(i64, String, Fate)> = jobs
            .into_iter()
            .zip(journaled)
            .map(|((jid, claim, _), journaled)| {
                let fate = match seen_end(jid, &claim) {
                    Some(end) => Fate::Ended(Box::new(end)),
                    None => journaled,
                };
                (jid, claim, fate)
            })
            .collect();
        let outcomes = queue.store().write(|tx| {
            let mut outcomes = Vec::new();
            for (jid, claim, fate) in &settle {
                outcomes.push((*jid, claims::settle(tx, *jid, claim, fate, max_attempts)?));
            }
            Ok(outcomes)
        })?;
        for (jid, outcome) in outcomes {
            log.log(
                Level::Warn,
                &format!("job {jid}, held here but not followed: {outcome}"),
            );
        }
        Ok(())
    }

    /// Hosts of `busy` (those with running jobs) whose heartbeat is older than the lease
    /// (server clock) lose their running jobs. Only a host whose own heartbeat is healthy
    /// should call this.
    pub(super) fn reclaim_dead_hosts(
        &self,
        queue: &mut Queue,
        log: &mut Logger,
        server_now: jiff::Timestamp,
        busy: Vec<String>,
        settings: &Settings,
    ) -> Result<()> {
        let lease = settings.lease;
        let others: Vec<String> = busy.into_iter().filter(|h| *h != self.host).collect();
        let candidates = self
            .heartbeats
            .stale(queue.store(), others, server_now, lease)?;
        if candidates.is_empty() {
            return Ok(());
        }
        let max_attempts = settings.max_attempts;
        let reclaimed = queue.store().write(|tx| {
            // Judged again under the lock: a host that beat meanwhile keeps its jobs.
            let stale_now = self.heartbeats.judge(tx, &self.host, server_now, lease);
            let stamp = time::now();
            let mut done = Vec::new();
            // Read inside the transaction, like the heartbeat: the journals are final once
            // the host is dead, and a host that beat meanwhile is skipped.
            let mut journals = HashMap::new();
            let mut read = |f: &str| self.journals.read_in(tx, f);
            let mut fate = |job: &claims::Claimed| {
                journal::fate_of(
                    &mut read,
                    &mut journals,
                    job.feeder.as_deref(),
                    &job.claim,
                    job.pid_recorded,
                )
            };
            for host in &candidates {
                if stale_now.stale(host)? {
                    let r = claims::reclaim_host(
                        tx,
                        host,
                        &self.host,
                        &stamp,
                        max_attempts,
                        &mut fate,
                    )?;
                    done.push((host.clone(), r));
                }
            }
            Ok(done)
        })?;
        for (host, r) in reclaimed {
            if r.released + r.ended + r.requeued + r.dead > 0 {
                log.log(
                    Level::Warn,
                    &format!(
                        "host {host} has no heartbeat for over {lease}s: reclaimed its jobs ({} never started and {} restartable back to pending, {} ended as journaled, {} dead)",
                        r.released, r.requeued, r.ended, r.dead
                    ),
                );
                queue.ring_doorbell();
            }
        }
        Ok(())
    }

    /// Jobs this host was running under an earlier feeder are not running any more as far
    /// as rq can follow them: a still-live process (same boot, same start time) is killed,
    /// since no one could record its end; then each is handled as crashed. Call it holding
    /// the host's feeder lock (the earlier feeders are dead), before claiming.
    pub(super) fn recover_crashed(
        &self,
        queue: &mut Queue,
        log: &mut Logger,
        kill_grace: f64,
        max_attempts: i64,
    ) -> Result<()> {
        let orphans = queue
            .store()
            .read(|tx| claims::orphans(tx, &self.host, &self.feeder))?;
        if orphans.is_empty() {
            return Ok(());
        }
        let seen = kill_leftovers(&orphans, log, kill_grace);
        // A job with no recorded pid, no process and no line in its feeder's start journal
        // never started: it goes back to pending; a journaled end is recorded. The earlier
        // feeders are dead, so their journals go once their jobs are settled.
        let (fates, feeders) = self.journals.reading(queue.store(), |read| {
            let mut journals = HashMap::new();
            let fates: Vec<Fate> = orphans
                .iter()
                .map(|job| {
                    let claim = job.get("claim").as_text().unwrap_or_default();
                    match journal::fate_of(
                        read,
                        &mut journals,
                        job.get("feeder").as_text(),
                        claim,
                        job.get("pid").as_int().is_some(),
                    ) {
                        Fate::NeverStarted if seen.contains(&format!("RQ_CLAIM={claim}")) => {
                            Fate::MayHaveRun
                        }
                        fate => fate,
                    }
                })
                .collect();
            (fates, journals.into_keys().collect::<Vec<String>>())
        })?;
        let outcomes = queue.store().write(|tx| {
            let mut outcomes = Vec::new();
            for (job, fate) in orphans.iter().zip(&fates) {
                let claim = job.get("claim").as_text().unwrap_or_default();
                outcomes.push((
                    job.jid(),
                    claims::settle(tx, job.jid(), claim, fate, max_attempts)?,
                ));
            }
            Ok(outcomes)
        })?;
        self.journals.remove(queue.store(), &feeders);
        for (jid, outcome) in outcomes {
            log.log(
                Level::Warn,
                &format!("job {jid} of an earlier feeder on this host: {outcome}"),
            );
        }
        Ok(())
    }

    /// What dead feeders leave behind: job files that belong to no job, and start
    /// journals a day old whose feeders run nothing.
    pub(super) fn reap_leftovers(&self, queue: &mut Queue, log: &mut Logger) {
        match queue.reap_orphan_files() {
            Ok(0) => {}
            Ok(n) => log.log(
                Level::Info,
                &format!(
                    "removed {n} job files (in a database: stored chunks) of jobs that no longer exist"
                ),
            ),
            Err(e) => log.log(Level::Warn, &e.to_string()),
        }
        self.journals.reap_old(queue.store());
    }
}

/// Kill what still runs of `orphans` (jobs of this host's earlier feeders): processes
/// found by the claim token in their environment (the pid may not have been recorded
/// yet), or by recorded pid and process identity. TERM, `kill_grace` seconds, KILL.
/// Returns the claim tokens (`RQ_CLAIM=...`) found in a live process's environment: those
/// jobs did start, whatever their journal says.
fn kill_leftovers(orphans: &[Row], log: &mut Logger, kill_grace: f64) -> HashSet<String> {
    let tokens: Vec<String> = orphans
        .iter()
        .filter_map(|j| j.get("claim").as_text().map(|c| format!("RQ_CLAIM={c}")))
        .collect();
    let found = process::find_by_environment(&tokens);
    let seen: HashSet<String> = found.iter().map(|(_, _, e)| e.clone()).collect();
    let mut groups: Vec<u32> = found.iter().map(|(_, pgid, _)| *pgid).collect();
    for job in orphans {
        let (Some(pid), Some(identity)) = (job.get("pid").as_int(), job.get("process").as_text())
        else {
            continue;
        };
        if process::same_process(pid as u32, identity) {
            groups.push(pid as u32);
        }
    }
    groups.sort_unstable();
    groups.dedup();
    if !groups.is_empty() {
        log.log(
            Level::Warn,
            &format!(
                "jobs of an earlier feeder on this host are still running (process groups {groups:?}): killing them"
            ),
        );
    }
    for pgid in &groups {
        process::signal_group(*pgid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(kill_grace);
    let alive = |groups: &[u32]| groups.iter().any(|g| process::signal_group(*g, 0));
    while Instant::now() < deadline && alive(&groups) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pgid in &groups {
        process::signal_group(*pgid, libc::SIGKILL);
    }
    seen
}
