//! Self-fencing that cannot hang: a host cut off from the queue kills its running jobs
//! before its lease runs out, so that the host which reclaims them never runs a job while
//! a stale copy still runs here.
//!
//! The feeder's main loop cannot do this itself: cut off from an NFS server (a hard
//! mount), every call that touches the queue blocks in the kernel until the network heals.
//! So the heartbeat thread reports each successful beat to a [`Lease`], and a watchdog
//! thread that touches nothing on any filesystem (it only reads `CLOCK_BOOTTIME` and sends
//! signals; it does not even log) kills the jobs' process groups when too long has passed:
//! TERM at `term_after`, KILL at `kill_after`, both before `lease`. SIGKILL ends a process
//! even while it waits on a hard NFS mount.
//!
//! Time is measured from the *start* of the last successful beat: the file server stamped
//! that beat later, so every other host sees our heartbeat at least as young as we count
//! it, and our kill comes before anyone may reclaim (others wait for a full `lease`).
//!
//! A machine that was paused (a suspended VM) has a boot clock that stood still too; its
//! first beat afterwards sees the *server's* clock jump by more than `kill_after` since the
//! previous beat, and kills the jobs there and then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{liveness, process};

/// How often the watchdog looks at the clock.
const POLL: Duration = Duration::from_millis(100);

/// When the watchdog acts, in seconds since the start of the last successful beat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub term_after: f64,
    pub kill_after: f64,
}

impl Limits {
    /// KILL a tenth of the lease (at least a second) before it runs out; TERM up to
    /// `grace` seconds (at most another tenth of the lease) before that.
    pub fn for_lease(lease: f64, grace: f64) -> Limits {
        let kill_after = lease - (0.1 * lease).max(1.0).min(lease / 2.0);
        let term_after = kill_after - grace.min(0.1 * lease).max(0.0);
        Limits {
            term_after,
            kill_after,
        }
    }
}

/// The state shared by the heartbeat thread, the watchdog thread and the feeder loop.
pub struct Lease {
    /// Boot-clock milliseconds at the start of the last successful beat.
    last_beat_ms: AtomicU64,
    /// Server time (µs since the epoch) read back at the last successful beat; 0: none yet.
    server_us: AtomicI64,
    term_after_ms: AtomicU64,
    kill_after_ms: AtomicU64,
    /// The lease may have been lost at the last beat (the server's clock jumped).
    jumped: AtomicBool,
    /// Process groups of running jobs and what the watchdog did to them. The feeder reaps
    /// its children while holding this lock, so a group is never signalled after its pid
    /// could have been reused.
    groups: Mutex<HashMap<u32, Fenced>>,
    /// Groups signalled since the last `take_fenced`, kept apart from `groups` because the
    /// feeder may reap (and forget) a group before it asks.
    newly_fenced: Mutex<Vec<u32>>,
}

/// What the watchdog did to a job's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fenced {
    pub termed: bool,
    pub killed: bool,
}

fn now_ms() -> u64 {
    (liveness::boot_clock() * 1000.0) as u64
}

impl Lease {
    pub fn new(limits: Limits) -> Arc<Lease> {
        let lease = Lease {
            last_beat_ms: AtomicU64::new(now_ms()),
            server_us: AtomicI64::new(0),
            term_after_ms: AtomicU64::new(0),
            kill_after_ms: AtomicU64::new(0),
            jumped: AtomicBool::new(false),
            groups: Mutex::new(HashMap::new()),
            newly_fenced: Mutex::new(Vec::new()),
        };
        lease.set_limits(limits);
        Arc::new(lease)
    }

    pub fn set_limits(&self, limits: Limits) {
        self.term_after_ms
            .store((limits.term_after * 1000.0) as u64, Ordering::SeqCst);
        self.kill_after_ms
            .store((limits.kill_after * 1000.0) as u64, Ordering::SeqCst);
    }

    /// The boot clock now, to be passed to `beat_ok` when the beat that starts now worked.
    pub fn beat_starting(&self) -> u64 {
        now_ms()
    }

    /// A beat that started at `started_ms` (boot clock) reached the server, whose clock
    /// read `server_now`. If the server's clock moved on by more than `kill_after` since
    /// the previous beat while ours did not notice (a paused machine), the lease may have
    /// run out meanwhile: kill the jobs now.
    pub fn beat_ok(&self, started_ms: u64, server_now: jiff::Timestamp) {
        let now_us = server_now.as_microsecond();
        let before_us = self.server_us.swap(now_us, Ordering::SeqCst);
        let kill_after_us = self.kill_after_ms.load(Ordering::SeqCst) as i64 * 1000;
        if before_us != 0 && now_us - before_us > kill_after_us {
            self.jumped.store(true, Ordering::SeqCst);
            self.kill_all();
            self.jumped.store(false, Ordering::SeqCst);
        }
        self.last_beat_ms.fetch_max(started_ms, Ordering::SeqCst);
    }

    /// Seconds since the start of the last successful beat.
    pub fn missed(&self) -> f64 {
        now_ms().saturating_sub(self.last_beat_ms.load(Ordering::SeqCst)) as f64 / 1000.0
    }

    /// The server's time at the last successful beat.
    pub fn server_now(&self) -> Option<jiff::Timestamp> {
        match self.server_us.load(Ordering::SeqCst) {
            0 => None,
            us => jiff::Timestamp::from_microsecond(us).ok(),
        }
    }

    /// The process groups the watchdog signalled since the last call: those jobs may have
    /// been taken over, so they are settled as crashed (only where our claim still holds),
    /// never recorded as ended.
    pub fn take_fenced(&self) -> Vec<u32> {
        std::mem::take(&mut *self.newly_fenced.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Signal a group, noting it for `take_fenced` the first time.
    fn fence(&self, pgid: u32, f: &mut Fenced, signal: libc::c_int) {
        if !f.termed && !f.killed {
            self.newly_fenced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(pgid);
        }
        process::signal_group(pgid, signal);
        if signal == libc::SIGKILL {
            f.killed = true;
        } else {
            f.termed = true;
        }
    }

    fn lost(&self) -> bool {
        self.jumped.load(Ordering::SeqCst)
            || self.missed() * 1000.0 >= self.kill_after_ms.load(Ordering::SeqCst) as f64
    }

    /// The process groups of running jobs; hold the guard while reaping a child and
    /// removing its group.
    pub fn groups(&self) -> MutexGuard<'_, HashMap<u32, Fenced>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A job was just started: watch its process group. A job started while the lease is
    /// lost (its spawn may have hung on the file server meanwhile) is killed at once.
    pub fn add(&self, pgid: u32) {
        let mut groups = self.groups();
        let mut fenced = Fenced::default();
        if self.lost() {
            self.fence(pgid, &mut fenced, libc::SIGKILL);
        }
        groups.insert(pgid, fenced);
    }

    fn kill_all(&self) {
        for (pgid, f) in self.groups().iter_mut() {
            self.fence(*pgid, f, libc::SIGKILL);
        }
    }

    fn check(&self) {
        let missed_ms = now_ms().saturating_sub(self.last_beat_ms.load(Ordering::SeqCst));
        if missed_ms >= self.kill_after_ms.load(Ordering::SeqCst) {
            self.kill_all();
        } else if missed_ms >= self.term_after_ms.load(Ordering::SeqCst) {
            for (pgid, f) in self.groups().iter_mut().filter(|(_, f)| !f.termed) {
                self.fence(*pgid, f, libc::SIGTERM);
            }
        }
    }
}

/// The watchdog thread; it ends when `stop` is set.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(lease: Arc<Lease>) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                std::thread::sleep(POLL);
                lease.check();
            }
        });
        Watchdog {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job stand-in in a process group of its own.
    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[test]
    fn limits_come_before_the_lease() {
        let l = Limits::for_lease(60.0, 5.0);
        assert_eq!((l.term_after, l.kill_after), (49.0, 54.0));
        let l = Limits::for_lease(20.0, 5.0);
        assert_eq!((l.term_after, l.kill_after), (16.0, 18.0));
        let l = Limits::for_lease(2.0, 5.0);
        assert!(l.kill_after >= 1.0 && l.kill_after < 2.0 && l.term_after <= l.kill_after);
    }

    #[test]
    fn a_jump_of_the_server_clock_fires() {
        let lease = Lease::new(Limits::for_lease(20.0, 5.0));
        let mut child = sleeper();
        lease.add(child.id());
        let t0 = jiff::Timestamp::from_second(1_000_000).unwrap();
        lease.beat_ok(lease.beat_starting(), t0);
        lease.beat_ok(
            lease.beat_starting(),
            t0 + jiff::SignedDuration::from_secs(2),
        );
        assert!(lease.take_fenced().is_empty());
        // 30 s of server time passed between two beats, while our clock stood still.
        lease.beat_ok(
            lease.beat_starting(),
            t0 + jiff::SignedDuration::from_secs(32),
        );
        assert_eq!(lease.take_fenced(), vec![child.id()]);
        assert!(lease.take_fenced().is_empty(), "reported once");
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        // A job started after that beat is not touched.
        let mut later = sleeper();
        lease.add(later.id());
        assert!(lease.take_fenced().is_empty());
        later.kill().unwrap();
        later.wait().unwrap();
    }

    #[test]
    fn the_watchdog_kills_a_job_group_when_beats_stop() {
        let lease = Lease::new(Limits {
            term_after: 0.2,
            kill_after: 0.4,
        });
        let mut child = sleeper();
        lease.add(child.id());
        let _dog = Watchdog::start(lease.clone());
        let started = std::time::Instant::now();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM), "TERM first");
        assert!(started.elapsed() < Duration::from_secs(5));
        // A job started while the lease is lost dies at once.
        std::thread::sleep(Duration::from_millis(300));
        let mut late = sleeper();
        lease.add(late.id());
        assert_eq!(late.wait().unwrap().signal(), Some(libc::SIGKILL));
        // The feeder may reap a group before it asks what was fenced: still reported.
        lease.groups().remove(&child.id());
        let mut fenced = lease.take_fenced();
        fenced.sort();
        let mut both = vec![child.id(), late.id()];
        both.sort();
        assert_eq!(fenced, both);
    }

    use std::os::unix::process::{CommandExt, ExitStatusExt};
}
