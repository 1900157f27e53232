//! What wakes an idle feeder: signals (stop, drain, restart) and the queue's doorbell
//! (its file's mtime, checked less and less often while nothing happens).

use super::*;

/// Signals the feeder reacts to, and a pipe that wakes its sleep when one arrives.
pub(super) struct Signals {
    pub(super) wake: UnixStream,
    /// The pipe's other end, for others that must end a nap (the NOTIFY listener).
    pub(super) waker: UnixStream,
    pub(super) drain: Arc<AtomicBool>,
    pub(super) restart: Arc<AtomicBool>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Signals {
    pub(super) fn install() -> Result<Signals> {
        let (read, write) = UnixStream::pair().context(|| "cannot make a wake-up pipe".into())?;
        read.set_nonblocking(true)
            .context(|| "cannot set up the wake-up pipe".into())?;
        let drain = Arc::new(AtomicBool::new(false));
        let restart = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let io = |e: std::io::Error| Error::Io {
            context: "cannot install signal handlers".into(),
            source: e,
        };
        use signal_hook::consts::*;
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register(sig, drain.clone()).map_err(io)?;
        }
        signal_hook::flag::register(SIGHUP, restart.clone()).map_err(io)?;
        signal_hook::flag::register(SIGQUIT, stop.clone()).map_err(io)?;
        // A long dependency cascade waits on the queue's work list instead of the stop.
        crate::store::stop_dep_work_when(drain.clone());
        crate::store::stop_dep_work_when(stop.clone());
        for sig in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCHLD] {
            let w = write.try_clone().map_err(io)?;
            signal_hook::low_level::pipe::register(sig, w).map_err(io)?;
        }
        Ok(Signals {
            wake: read,
            waker: write,
            drain,
            restart,
            stop,
        })
    }

    /// Sleep until a signal arrives or the timeout passes.
    pub(super) fn sleep(&mut self, timeout: Duration) {
        let mut fds = [libc::pollfd {
            fd: self.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll on one valid fd.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Cheap change detection on the doorbell file, without the queue lock. statx with
/// FORCE_SYNC makes an NFS client ask the server instead of its attribute cache (one
/// GETATTR). Checked every `min_sleep` after something happened, backing off to
/// `DOORBELL_BACKOFF` times that while nothing does, so an idle feeder costs the file
/// server little.
pub(super) struct Doorbell {
    /// None: the queue has no directory to ring in (a PostgreSQL queue keeping everything
    /// in its database), only the NOTIFY listener.
    pub(super) path: Option<PathBuf>,
    /// The doorbell, kept open: statx on the descriptor asks the server about the file
    /// alone, where a path would also revalidate the directory (a second GETATTR).
    pub(super) file: Option<std::fs::File>,
    pub(super) last: Option<(i64, u32, i64, u32, u64)>,
    pub(super) min: Duration,
    pub(super) interval: Duration,
    pub(super) next_check: Instant,
    /// A PostgreSQL queue's NOTIFY, which ends a nap when it comes (the file is still
    /// watched).
    pub(super) listener: Option<crate::store::postgres::Listener>,
}

impl Doorbell {
    pub(super) fn new(dir: &Path, min_sleep: f64) -> Doorbell {
        let min = Duration::from_secs_f64(min_sleep.max(0.001));
        Doorbell {
            path: (!dir.as_os_str().is_empty()).then(|| dir.join("doorbell")),
            file: None,
            last: None,
            min,
            interval: min,
            next_check: Instant::now(),
            listener: None,
        }
    }

    /// Check again every `min_sleep` for a while: something happened.
    pub(super) fn hurry(&mut self) {
        self.interval = self.min;
        self.next_check = self.next_check.min(Instant::now() + self.min);
    }

    pub(super) fn rang(&mut self) -> bool {
        use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
        if self.listener.as_mut().is_some_and(|l| l.heard()) {
            self.hurry();
            return true;
        }
        if Instant::now() < self.next_check {
            return false;
        }
        let Some(path) = &self.path else {
            return false;
        };
        let want = StatxFlags::MTIME | StatxFlags::CTIME | StatxFlags::INO | StatxFlags::NLINK;
        if self.file.is_none() {
            self.file = open_doorbell(path);
        }
        // A doorbell replaced or removed since we opened it (no links left, or stale on
        // NFS) is opened again; meanwhile its path tells.
        let by_fd = self.file.as_ref().and_then(|f| {
            statx(f, "", AtFlags::EMPTY_PATH | AtFlags::STATX_FORCE_SYNC, want)
                .ok()
                .filter(|s| s.stx_nlink > 0)
        });
        if by_fd.is_none() {
            self.file = None;
        }
        let now = by_fd
            .or_else(|| statx(CWD, path, AtFlags::STATX_FORCE_SYNC, want).ok())
            .map(|s| {
                (
                    s.stx_mtime.tv_sec,
                    s.stx_mtime.tv_nsec,
                    s.stx_ctime.tv_sec,
                    s.stx_ctime.tv_nsec,
                    s.stx_ino,
                )
            });
        let changed = now != self.last;
        self.last = now;
        self.interval = if changed {
            self.min
        } else {
            (self.interval * 2).min(self.min * DOORBELL_BACKOFF)
        };
        self.next_check = Instant::now() + self.interval;
        changed
    }
}

/// Open the doorbell to watch it: read-only, never through a link, only a regular file.
pub(super) fn open_doorbell(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

/// How far an idle feeder's doorbell checks back off, in units of `min_sleep`.
pub(super) const DOORBELL_BACKOFF: u32 = 15;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_doorbell_is_checked_less_and_less_often() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doorbell");
        std::fs::write(&path, b"").unwrap();
        let mut bell = Doorbell::new(dir.path(), 0.01);
        assert!(bell.rang(), "the first look counts as news");
        for _ in 0..5 {
            std::thread::sleep(bell.interval);
            assert!(!bell.rang());
        }
        assert_eq!(
            bell.interval,
            bell.min * DOORBELL_BACKOFF,
            "backed off to the cap"
        );
        // Rung meanwhile: seen at the next due check, and checks are quick again.
        crate::store::ring_doorbell(dir.path());
        assert!(!bell.rang(), "not due yet: no look at the file");
        std::thread::sleep(bell.interval);
        assert!(bell.rang());
        assert_eq!(bell.interval, bell.min);
        // Something happened here (a job ended): the next check comes soon.
        for _ in 0..4 {
            std::thread::sleep(bell.interval);
            bell.rang();
        }
        bell.hurry();
        assert!(bell.next_check <= Instant::now() + bell.min);
        // Watched through an open descriptor; a doorbell replaced by another file (or
        // removed and made again) is still seen, and watched from then on.
        std::thread::sleep(bell.interval);
        assert!(!bell.rang());
        assert!(bell.file.is_some());
        let new = dir.path().join("new");
        std::fs::write(&new, b"").unwrap();
        std::fs::rename(&new, &path).unwrap();
        std::thread::sleep(bell.interval);
        assert!(bell.rang(), "a replaced doorbell rings");
        std::thread::sleep(bell.interval);
        assert!(!bell.rang());
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(bell.interval);
        assert!(bell.rang(), "a removed doorbell is news too");
        crate::store::ring_doorbell(dir.path());
        std::thread::sleep(bell.interval);
        assert!(bell.rang(), "made again");
        // A link planted as the doorbell is not opened.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        std::fs::write(dir.path().join("elsewhere"), b"").unwrap();
        bell.file = None;
        std::thread::sleep(bell.interval);
        bell.rang();
        assert!(bell.file.is_none());
    }
}
