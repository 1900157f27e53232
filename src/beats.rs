//! Heartbeat files of a queue directory (`Q/hosts/<host>.hb`), and the file operations
//! they, the lock note and the doorbell use: stamped with the file server's clock
//! (`utimensat(UTIME_NOW)`), read with `statx(STATX_FORCE_SYNC)`, never through a link.
//! Below the store: what the store needs of liveness (judging a lock holder dead) is here;
//! `crate::liveness` builds on it (settings, beating, capacity).

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde_json::Value;

use crate::error::{IoContext, Result};

/// How long a host may be silent before others take its jobs (and its lock), when a queue
/// sets nothing (`rq Q configure lease=...`).
pub const DEFAULT_LEASE: f64 = 60.0;

pub fn hosts_dir(queue: &Path) -> PathBuf {
    queue.join("hosts")
}

fn file_name(host: &str) -> String {
    format!("{}.hb", host.replace('/', "_"))
}

/// A host's heartbeat file.
pub fn heartbeat_path(queue: &Path, host: &str) -> PathBuf {
    hosts_dir(queue).join(file_name(host))
}

/// Set a file's times to "now" on the file server's clock, creating it if needed.
pub fn touch(path: &Path) -> std::io::Result<()> {
    // Never through a link planted in the queue: a link gets its own times set.
    match touch_existing(path) {
        Ok(()) => Ok(()),
        // Removed by someone (even the whole hosts/ directory): make it again.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            match create_new(path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                other => other.map(drop),
            }
        }
        Err(e) => Err(e),
    }
}

/// Create a new, empty file; fails if anything (a link included) is there already.
pub fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Set an existing file's times to "now" (server clock); never creates it, never follows
/// a link.
pub fn touch_existing(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_NOW, utimensat};
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: UTIME_NOW,
    };
    let times = Timestamps {
        last_access: now,
        last_modification: now,
    };
    utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(Into::into)
}

/// The JSON a heartbeat file holds (None if unreadable or not JSON).
pub fn read_info(path: &Path) -> Option<Value> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(&mut file, 64 * 1024), &mut text)
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// A file's modification time, asked of the server.
pub fn mtime(path: &Path) -> Option<Timestamp> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    let flags = AtFlags::STATX_FORCE_SYNC | AtFlags::SYMLINK_NOFOLLOW;
    let st = statx(CWD, path, flags, StatxFlags::MTIME).ok()?;
    Timestamp::new(st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec as i32).ok()
}

/// "Now" on the file server's clock, for a process that has no heartbeat file of its own.
pub fn server_now(queue: &Path, host: &str) -> Result<Timestamp> {
    if queue.as_os_str().is_empty() {
        // A PostgreSQL queue without a job-file directory: no heartbeat to compare, and
        // an empty path must not become the caller's working directory.
        return Ok(crate::time::now_ts());
    }
    let dir = hosts_dir(queue);
    std::fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!(".clock.{}", file_name(host)));
    touch(&path).context(|| format!("cannot touch {}", path.display()))?;
    mtime(&path).ok_or_else(|| {
        crate::Error::Conflict(format!("cannot read the time of {}", path.display()))
    })
}

/// Age of a host's heartbeat on the server clock; `None` if it has none.
pub fn heartbeat_age(queue: &Path, host: &str, server_now: Timestamp) -> Option<f64> {
    let beat = mtime(&heartbeat_path(queue, host))?;
    Some(crate::time::seconds_between(beat, server_now))
}

/// Whether a host's heartbeat is missing or older than `limit` seconds (server clock), as
/// the server sees it now. A feeder that starts again replaces its heartbeat file (a
/// rename), and an NFS client keeps resolving the name to the old file, whose time is the
/// dead feeder's, until the directory's cached attributes expire (up to a minute): so a
/// heartbeat that looks too old is looked up again after asking the server for the
/// directory's attributes, before anyone acts on it (found in the lab: a host's jobs
/// claimed by its restarted feeder were reclaimed as a dead host's).
pub fn heartbeat_older_than(queue: &Path, host: &str, server_now: Timestamp, limit: f64) -> bool {
    let old = |age: Option<f64>| age.is_none_or(|a| a > limit);
    if !old(heartbeat_age(queue, host, server_now)) {
        return false;
    }
    refresh_directory(&hosts_dir(queue));
    old(heartbeat_age(queue, host, server_now))
}

/// Ask the server for a directory's attributes: when another host changed the directory,
/// this host's next lookup of a name in it asks the server again instead of trusting the
/// file it cached under that name.
pub fn refresh_directory(dir: &Path) {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let _ = statx(CWD, dir, AtFlags::STATX_FORCE_SYNC, StatxFlags::MTIME);
}
