//! Recovery and reclaim: what this host's previous feeder left (its start journals, its
//! claims, orphaned files), and the jobs of hosts whose heartbeat stopped.

use super::*;

impl Feeder {
    /// Read back every job the queue says this feeder holds and settle the ones it does
    /// not know about (a claim whose commit it never saw, a run whose end it could not
    /// record): by the start journal, never started → pending, ended → recorded, else
    /// crashed. Then check the jobs it does know about: copies taken over are killed.
    pub(super) fn reconcile(&mut self) -> Result<()> {
        let id = self.id.clone();
        let held = self
            .queue
            .store()
            .read(|tx| claims::held_by_feeder(tx, &id))?;
        let known = self.known_jids();
        let unknown: Vec<&Row> = held.iter().filter(|r| !known.contains(&r.jid())).collect();
        if !unknown.is_empty() {
            let jobs: Vec<(i64, String, bool)> = unknown
                .iter()
                .map(|job| {
                    let (jid, claim) = claim_of(job);
                    (jid, claim, job.get("pid").as_int().is_some())
                })
                .collect();
            let remembered: Vec<Option<crate::claims::Fate>> = jobs
                .iter()
                .map(|(jid, claim, _)| {
                    self.recorder
                        .recorded_end(*jid, claim)
                        .map(|e| crate::claims::Fate::Ended(Box::new(e.clone())))
                })
                .collect();
            let journaled = self.with_journals(|read| {
                let mut cache = HashMap::new();
                jobs.iter()
                    .map(|(_, claim, pid)| {
                        journal::fate_of(read, &mut cache, Some(&id), claim, *pid)
                    })
                    .collect::<Vec<_>>()
            })?;
            let settle: Vec<(i64, String, crate::claims::Fate)> = jobs
                .into_iter()
                .zip(remembered.into_iter().zip(journaled))
                .map(|((jid, claim, _), (remembered, journaled))| {
                    (jid, claim, remembered.unwrap_or(journaled))
                })
                .collect();
            let max_attempts = self.settings.max_attempts;
            let outcomes = self.queue.store().write(|tx| {
                let mut outcomes = Vec::new();
                for (jid, claim, fate) in &settle {
                    outcomes.push((*jid, claims::settle(tx, *jid, claim, fate, max_attempts)?));
                }
                Ok(outcomes)
            })?;
            for (jid, outcome) in outcomes {
                self.warn(&format!("job {jid}, held here but not followed: {outcome}"));
            }
        }
        self.check_claims_and_kills()
    }

    /// The jobs this feeder follows: running, buffered, or with something to record.
    pub(super) fn known_jids(&self) -> HashSet<i64> {
        self.slots
            .running
            .iter()
            .map(|j| j.jid)
            .chain(self.claimed.jids())
            .chain(self.recorder.next.settled_jids())
            .collect()
    }

    /// Read feeders' start journals through `body`: from the queue's files, or inside one
    /// read transaction of its database.
    pub(super) fn with_journals<T>(
        &mut self,
        body: impl Fn(&mut dyn FnMut(&str) -> Option<journal::Journal>) -> T,
    ) -> Result<T> {
        if self.queue.in_database() {
            self.queue.store().read(|tx| {
                let mut read = |f: &str| {
                    crate::store::in_database::journal_read(tx, f)
                        .ok()
                        .map(|lines| {
                            crate::journal::Journal::from_lines(lines.iter().map(String::as_str))
                        })
                };
                Ok(body(&mut read))
            })
        } else {
            let dir = self.queue.dir().to_path_buf();
            let mut read = |f: &str| journal::read(&dir, f);
            Ok(body(&mut read))
        }
    }

    /// Hosts whose heartbeat is older than the lease (server clock) lose their running jobs.
    /// `busy`: the hosts with running jobs.
    pub(super) fn reclaim_dead_hosts(
        &mut self,
        server_now: jiff::Timestamp,
        busy: Vec<String>,
    ) -> Result<()> {
        let dir = self.queue.dir().to_path_buf();
        let in_db = self.queue.in_database();
        let lease = self.settings.lease;
        let stale = |host: &str, now: jiff::Timestamp| {
            liveness::heartbeat_older_than(&dir, host, now, lease)
        };
        let others: Vec<String> = busy
            .into_iter()
            .filter(|h| *h != self.config.host)
            .collect();
        let candidates: Vec<String> = if in_db {
            let ages = self.queue.store().read(|tx| {
                others
                    .iter()
                    .map(|h| crate::store::in_database::heartbeat_age(tx, h))
                    .collect::<Result<Vec<_>>>()
            })?;
            others
                .into_iter()
                .zip(ages)
                .filter(|(_, age)| age.is_none_or(|a| a > lease))
                .map(|(h, _)| h)
                .collect()
        } else {
            others
                .into_iter()
                .filter(|h| stale(h, server_now))
                .collect()
        };
        if candidates.is_empty() {
            return Ok(());
        }
        let me = self.config.host.clone();
        let max_attempts = self.settings.max_attempts;
        let hb_path = liveness::heartbeat_path(&dir, &me);
        let reclaimed = self.queue.store().write(|tx| {
            // Judged again under the lock: a host that beat meanwhile keeps its jobs.
            let now = if in_db {
                server_now
            } else {
                liveness::touch(&hb_path)
                    .ok()
                    .and_then(|_| liveness::mtime(&hb_path))
                    .unwrap_or(server_now)
            };
            let stale_now = |host: &str| -> Result<bool> {
                Ok(if in_db {
                    crate::store::in_database::heartbeat_age(tx, host)?.is_none_or(|a| a > lease)
                } else {
                    stale(host, now)
                })
            };
            let stamp = time::now();
            let mut done = Vec::new();
            // Read inside the transaction, like the heartbeat: the journals are final once
            // the host is dead, and a host that beat meanwhile is skipped.
            let mut journals = HashMap::new();
            let mut read = |f: &str| {
                if in_db {
                    crate::store::in_database::journal_read(tx, f)
                        .ok()
                        .map(|lines| {
                            crate::journal::Journal::from_lines(lines.iter().map(String::as_str))
                        })
                } else {
                    journal::read(&dir, f)
                }
            };
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
                if stale_now(host)? {
                    let r = claims::reclaim_host(tx, host, &me, &stamp, max_attempts, &mut fate)?;
                    done.push((host.clone(), r));
                }
            }
            Ok(done)
        })?;
        for (host, r) in reclaimed {
            if r.released + r.ended + r.requeued + r.dead > 0 {
                self.warn(&format!(
                    "host {host} has no heartbeat for over {lease}s: reclaimed its jobs ({} never started and {} restartable back to pending, {} ended as journaled, {} dead)",
                    r.released, r.requeued, r.ended, r.dead
                ));
                self.queue.ring_doorbell();
            }
        }
        Ok(())
    }

    /// Jobs this host was running under an earlier feeder are not running any more as far
    /// as rq can follow them: a still-live process (same boot, same start time) is killed,
    /// since no one could record its end; then each is handled as crashed.
    pub(super) fn recover_crashed(&mut self) -> Result<()> {
        let host = self.config.host.clone();
        let mine = self.id.clone();
        let orphans = self
            .queue
            .store()
            .read(|tx| claims::orphans(tx, &host, &mine))?;
        if orphans.is_empty() {
            return Ok(());
        }
        // A job's processes are found by the claim token in their environment (the pid
        // may not have been recorded yet), or by recorded pid and process identity.
        let tokens: Vec<String> = orphans
            .iter()
            .filter_map(|j| j.get("claim").as_text().map(|c| format!("RQ_CLAIM={c}")))
            .collect();
        let found = process::find_by_environment(&tokens);
        let seen: HashSet<String> = found.iter().map(|(_, _, e)| e.clone()).collect();
        let mut groups: Vec<u32> = found.iter().map(|(_, pgid, _)| *pgid).collect();
        for job in &orphans {
            let (Some(pid), Some(identity)) =
                (job.get("pid").as_int(), job.get("process").as_text())
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
            self.warn(&format!(
                "jobs of an earlier feeder on this host are still running (process groups {groups:?}): killing them"
            ));
        }
        for pgid in &groups {
            process::signal_group(*pgid, libc::SIGTERM);
        }
        let grace = Duration::from_secs_f64(self.config.kill_grace);
        let deadline = Instant::now() + grace;
        let alive = |groups: &[u32]| groups.iter().any(|g| process::signal_group(*g, 0));
        while Instant::now() < deadline && alive(&groups) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pgid in &groups {
            process::signal_group(*pgid, libc::SIGKILL);
        }
        // A job with no recorded pid, no process and no line in its feeder's start journal
        // never started: it goes back to pending; a journaled end is recorded. The earlier
        // feeders are dead (we hold the host's feeder lock), so their journals go once
        // their jobs are settled.
        let (fates, feeders) = self.with_journals(|read| {
            let mut journals = HashMap::new();
            let fates: Vec<crate::claims::Fate> = orphans
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
                        crate::claims::Fate::NeverStarted
                            if seen.contains(&format!("RQ_CLAIM={claim}")) =>
                        {
                            crate::claims::Fate::MayHaveRun
                        }
                        fate => fate,
                    }
                })
                .collect();
            (fates, journals.into_keys().collect::<Vec<String>>())
        })?;
        let max_attempts = self.settings.max_attempts;
        let outcomes = self.queue.store().write(|tx| {
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
        if self.queue.in_database() {
            let _ = self.queue.store().write_shared(|tx| {
                for feeder in &feeders {
                    crate::store::in_database::journal_remove(tx, feeder)?;
                }
                Ok(())
            });
        } else {
            for feeder in &feeders {
                let _ = std::fs::remove_file(journal::path(self.queue.dir(), feeder));
            }
        }
        for (jid, outcome) in outcomes {
            self.warn(&format!(
                "job {jid} of an earlier feeder on this host: {outcome}"
            ));
        }
        Ok(())
    }

    /// Remove files in stdin/ stdout/ stderr/ data/ that belong to no job. Only files older
    /// than ten minutes: a submit copies files before it inserts the rows naming them.
    /// The work is proportional to the files present, not to the jobs in the queue.
    pub(super) fn reap_orphan_files(&mut self) {
        if self.queue.in_database() {
            match self
                .queue
                .store()
                .write_shared(crate::store::in_database::reap_orphans)
            {
                Ok(n) if n > 0 => self.info(&format!(
                    "removed {n} stored chunks of files of jobs that no longer exist"
                )),
                Ok(_) => {}
                Err(e) => self.warn(&e.to_string()),
            }
            return;
        }
        let dir = self.queue.dir().to_path_buf();
        let mut old_files: Vec<(i64, String, PathBuf)> = Vec::new();
        for sub in queue::JOB_DIRS {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".nfs") {
                    continue;
                }
                let Some(jid) = name.split('.').next().and_then(|n| n.parse::<i64>().ok()) else {
                    continue;
                };
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600))
                    .unwrap_or(false);
                if old {
                    old_files.push((jid, format!("{sub}/{name}"), entry.path()));
                }
            }
        }
        if old_files.is_empty() {
            return;
        }
        let jids: Vec<i64> = old_files
            .iter()
            .map(|(j, _, _)| *j)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let referenced = self.queue.store().read(|tx| claims::job_files(tx, &jids));
        let Ok(referenced) = referenced else { return };
        let mut removed = 0;
        for (jid, rel, path) in old_files {
            let in_use = referenced.iter().any(|(j, files)| {
                *j == jid
                    && (files.contains(&rel) || rel.rsplit('/').next() == Some(&jid.to_string()))
            });
            if !in_use {
                queue::remove_path(&path);
                removed += 1;
            }
        }
        if removed > 0 {
            self.info(&format!(
                "removed {removed} files of jobs that no longer exist"
            ));
        }
    }

    /// Start journals of feeders that died on hosts that never came back: once a day old
    /// and without running jobs, they prove nothing anyone needs.
    pub(super) fn reap_old_journals(&mut self) {
        if self.queue.in_database() {
            let _ = self
                .queue
                .store()
                .write_shared(crate::store::in_database::reap_old_journals);
            return;
        }
        let Ok(entries) = std::fs::read_dir(journal::dir(self.queue.dir())) else {
            return;
        };
        let old: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(86400))
            })
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        if old.is_empty() {
            return;
        }
        let busy: Result<HashSet<String>> = self.queue.store().read(|tx| {
            Ok(claims::running_feeders(tx)?
                .into_iter()
                .map(|f| f.replace('/', "_"))
                .collect())
        });
        let Ok(busy) = busy else { return };
        for (name, path) in old {
            if !busy.contains(&name) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
