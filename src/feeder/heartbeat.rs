//! Liveness: the heartbeat thread (and the lease the watchdog judges by), the feeder's
//! periodic tick (settings, disk space, reclaiming dead hosts), and the jobs the watchdog
//! killed when the lease ran out.

use super::*;

/// The heartbeat runs in its own thread, so a main loop waiting a long time for the
/// queue lock still counts as alive; a stopped or frozen process does not. Each beat that
/// reaches the server is reported to the `Lease`, which the watchdog fences by.
pub(super) struct Beater {
    pub(super) lease: Arc<Lease>,
    /// A note for `feeders` (why this feeder is not claiming), published by the beat thread.
    pub(super) note: Arc<std::sync::Mutex<Option<Option<String>>>>,
    pub(super) interval_ms: Arc<AtomicU64>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) thread: Option<JoinHandle<Heartbeat>>,
    pub(super) _watchdog: Watchdog,
}

impl Beater {
    pub(super) fn start(heartbeat: Heartbeat, interval: f64, lease: Arc<Lease>) -> Beater {
        let interval_ms = Arc::new(AtomicU64::new((interval * 1000.0) as u64));
        let stop = Arc::new(AtomicBool::new(false));
        let note: Arc<std::sync::Mutex<Option<Option<String>>>> = Arc::default();
        let (l, i, st, n) = (
            lease.clone(),
            interval_ms.clone(),
            stop.clone(),
            note.clone(),
        );
        let mut heartbeat = heartbeat;
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let changed = n.lock().ok().and_then(|mut pending| pending.take());
                if let Some(text) = changed {
                    heartbeat.set_note(text.as_deref());
                }
                let started = l.beat_starting();
                if let Ok(now) = heartbeat.beat() {
                    l.beat_ok(started, now);
                }
                let wait = jittered(i.load(Ordering::SeqCst) as f64 / 1000.0);
                let until = Instant::now() + wait;
                while Instant::now() < until && !st.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20).min(wait));
                }
            }
            heartbeat
        });
        Beater {
            _watchdog: Watchdog::start(lease.clone()),
            lease,
            note,
            interval_ms,
            stop,
            thread: Some(thread),
        }
    }

    /// Publish (or with None, clear) a note in the heartbeat file with the next beat.
    pub(super) fn set_note(&self, text: Option<String>) {
        if let Ok(mut pending) = self.note.lock() {
            *pending = Some(text);
        }
    }

    /// Seconds since the start of the last successful beat.
    pub(super) fn missed(&self) -> f64 {
        self.lease.missed()
    }

    pub(super) fn server_now(&self) -> Option<jiff::Timestamp> {
        self.lease.server_now()
    }

    /// Stop beating; mark the heartbeat file as stopped, with the error that ended the
    /// feeder if there was one.
    pub(super) fn finish(mut self, error: Option<&str>) {
        self.stop.store(true, Ordering::SeqCst);
        let Some(thread) = self.thread.take() else {
            return;
        };
        // A beat stuck on an unreachable server must not keep the feeder from exiting:
        // wait a few seconds for the thread, then leave the heartbeat as it is.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished()
            && let Ok(hb) = thread.join()
        {
            hb.stopped(error);
        }
    }
}

/// The free space below which a feeder claims nothing: 1 % of the filesystem, at least
/// 16 KiB and at most 1 GiB.
pub(super) fn disk_reserve(total: u64) -> u64 {
    (total / 100).clamp(16 << 10, 1 << 30)
}

/// What a heartbeat's read transaction found (`Feeder::look`).
struct Looked {
    attrs: Vec<(String, String)>,
    current: Vec<claims::ClaimState>,
    busy: Vec<String>,
    claimable: bool,
    held: Vec<i64>,
    held_back: Option<String>,
    dep_work: bool,
    journal_lost: bool,
}

impl Feeder {
    /// Every heartbeat: fence ourselves if our heartbeats have failed, check our claims
    /// and kill requests, reclaim the jobs of hosts whose heartbeat has stopped, and (idle)
    /// poll for work.
    /// Once a tick (one STATFS on NFS): stop claiming while the queue's filesystem has
    /// less than `disk_reserve` free, say so in the log and in `feeders`, and go on when
    /// there is twice that again (running jobs go on meanwhile).
    pub(super) fn check_disk_space(&mut self, beater: &Beater) {
        let Ok(st) = rustix::fs::statvfs(self.queue.dir()) else {
            return;
        };
        let total = st.f_blocks.saturating_mul(st.f_frsize);
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let reserve = disk_reserve(total);
        let full = if self.disk_full {
            free < 2 * reserve
        } else {
            free < reserve
        };
        if full == self.disk_full {
            return;
        }
        self.disk_full = full;
        if full {
            let note = format!(
                "the queue's filesystem is full ({} KiB free): not claiming jobs until there is space",
                free / 1024
            );
            self.warn(&note);
            beater.set_note(Some(note));
        } else {
            self.info("the queue's filesystem has space again: claiming jobs");
            beater.set_note(None);
        }
    }

    pub(super) fn tick(&mut self, beater: &Beater) -> Result<()> {
        // Due again in a heartbeat even if this one fails part-way: a tick that keeps
        // failing (say, on a dead host it cannot reclaim) must not keep the loop from
        // reaping and recording this feeder's own jobs in between.
        self.next_tick = Instant::now() + jittered(self.settings.heartbeat);
        self.queue.store().maintain()?;
        let jids = self.watched_jids();
        let idle = self.slots.running.is_empty() && self.claimed.is_empty();
        let looked = self.look(&jids, idle)?;
        // Dependency work left behind (its writer stopped between batches): carry it on.
        let dep_work_left = looked.dep_work && self.queue.store().carry_on_dep_work()?;
        self.note_held_back(looked.held_back);
        if idle {
            self.polling.looked(looked.claimable);
        }
        self.apply_settings(looked.attrs);
        // With the settings just read (max_attempts), as before the tick was split.
        self.mend_own_records(looked.journal_lost, looked.held)?;
        beater
            .interval_ms
            .store((self.settings.heartbeat * 1000.0) as u64, Ordering::SeqCst);
        // An idle feeder's read can wait a quarter of the lease: it still judges dead hosts
        // in time (their jobs are reclaimed within lease + lease/4) at less cost to the
        // file server; the heartbeat thread beats every heartbeat regardless. Dependency
        // work left over is carried on a heartbeat later.
        let every = if idle && !dep_work_left {
            self.settings.heartbeat.max(self.settings.lease / 4.0)
        } else {
            self.settings.heartbeat
        };
        self.next_tick = Instant::now() + jittered(every);
        self.check_disk_space(beater);
        let missed = self.fence_on_missed_heartbeats(beater);
        if !jids.is_empty() {
            self.apply_claims(&looked.current);
        }
        // Only a host whose own heartbeat is healthy judges others.
        if let Some(now) = beater
            .server_now()
            .filter(|_| missed < self.settings.heartbeat * 2.0 + 1.0)
        {
            self.rescuer.reclaim_dead_hosts(
                &mut self.queue,
                &mut self.log,
                now,
                looked.busy,
                &self.settings,
            )?;
        }
        Ok(())
    }

    /// One read transaction per heartbeat (each costs a handful of NFS round trips): the
    /// settings, our claims (`jids`, watched), and the hosts that have running jobs. An
    /// idle feeder also looks for claimable work there: its periodic poll.
    fn look(&mut self, jids: &[i64], idle: bool) -> Result<Looked> {
        let (host, now, max_attempts) =
            (&self.config.host, time::now(), self.settings.max_attempts);
        let id = &self.id;
        let total = &self.config.capacity;
        let journal = &self.journal;
        self.queue.store().read(|tx| {
            Ok(Looked {
                attrs: read_attributes(tx)?,
                current: if jids.is_empty() {
                    Vec::new()
                } else {
                    claims::current_claims(tx, jids)?
                },
                busy: claims::busy_hosts(tx)?,
                claimable: idle && claims::claimable(tx, host, &now, max_attempts, total)?,
                held: claims::held_by(tx, host, id)?,
                held_back: claims::held_back(tx, host)?,
                dep_work: crate::store::settle::work_left(tx)?,
                journal_lost: match journal {
                    Some(journal) => journal.lost(tx)?,
                    None => false,
                },
            })
        })
    }

    /// What the queue lost of this feeder's own writes, put back: its start journal
    /// (`journal_lost`), and jobs the queue says it holds (`held`) that it does not follow.
    fn mend_own_records(&mut self, journal_lost: bool, held: Vec<i64>) -> Result<()> {
        if journal_lost && let Some(journal) = &mut self.journal {
            // The database server crashed (it empties start journals, kept unlogged):
            // written again at once, not at the next start, so that the jobs claimed
            // ahead are again provably unstarted should this host die now.
            self.log.log(
                Level::Warn,
                "this feeder's start journal was lost (did the database server restart?): writing it again",
            );
            journal.rewrite(self.queue.store())?;
        }
        // The database lost some of our writes (e.g. it was put back from a copy; before
        // the journal fence, a cut-off host's late journal writes did it). Settle them
        // again rather than leave them `running` forever.
        let known = self.known_jids();
        let ghosts: Vec<i64> = held.into_iter().filter(|j| !known.contains(j)).collect();
        if !ghosts.is_empty() {
            self.log.log(
                Level::Error,
                &format!(
                    "the queue says this feeder runs jobs {ghosts:?}, which it does not: some of its recorded writes were lost (was the database put back from a copy?); settling them again"
                ),
            );
            self.reconcile()?;
        }
        Ok(())
    }

    /// Paused or drained: the claim itself checks; the log says so once.
    fn note_held_back(&mut self, held_back: Option<String>) {
        if held_back != self.held_back {
            match &held_back {
                Some(why) => self.info(&format!("not claiming jobs: {why}")),
                None => self.info("claiming jobs again"),
            }
            self.held_back = held_back;
        }
    }

    /// Stop claiming while heartbeats have failed for half the lease, and go on when they
    /// work again (jobs are killed by the watchdog before the lease runs out: see
    /// `watchdog`). Returns the seconds since the last heartbeat that reached the queue.
    fn fence_on_missed_heartbeats(&mut self, beater: &Beater) -> f64 {
        let missed = beater.missed();
        let fence = missed > self.settings.lease / 2.0;
        if fence != self.fenced {
            self.fenced = fence;
            if fence {
                self.warn(&format!(
                    "no heartbeat for {missed:.1}s: not claiming jobs until heartbeats work again"
                ));
            } else {
                self.info("heartbeats work again: claiming jobs");
            }
        }
        missed
    }

    /// Jobs the watchdog killed may have been taken over meanwhile: each is handled as
    /// crashed, only where our claim still holds (restartable → pending, else dead).
    pub(super) fn settle_lease_kills(&mut self) -> Result<()> {
        let kills = std::mem::take(&mut self.lease_kills);
        let killed: Vec<(i64, String)> = kills.iter().map(|(j, c, _)| (*j, c.clone())).collect();
        self.upload_outputs(&killed, true);
        let max_attempts = self.settings.max_attempts;
        let outcomes = self.queue.store().write(|tx| {
            let mut outcomes = Vec::new();
            for (jid, claim, signal) in &kills {
                outcomes.push((
                    *jid,
                    claims::mark_crashed(tx, *jid, claim, signal.as_deref(), max_attempts)?,
                ));
            }
            Ok(outcomes)
        })?;
        for (jid, outcome) in outcomes {
            self.warn(&format!(
                "job {jid} killed by the watchdog (this host lost its lease): {outcome}"
            ));
        }
        Ok(())
    }
}
