//! Locks rq takes itself.
//!
//! - rq's own lock files: Linux open-file-description (OFD) locks, which belong to one
//!   open file and so survive other opens and closes of the same path in the process
//!   (classic POSIX locks do not), and which the kernel (or the NFS server's lease)
//!   releases when the holder dies. The file is opened close-on-exec so jobs never keep
//!   a feeder's lock alive.
//! - The journal fence: a classic POSIX read lock on the database's rollback journal
//!   during each write transaction (see [`JournalFence`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{IoContext, Result};

/// A held lock on a file that also records the holder's pid.
#[derive(Debug)]
pub struct PidLock {
    file: File,
}

fn flock(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is a plain C struct; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    fl.l_pid = 0;
    fl
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .context(|| format!("cannot open {}", path.display()))
}

/// Try to take an exclusive OFD lock on the whole file; false when another holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    let fl = flock(libc::F_WRLCK as libc::c_short);
    // SAFETY: fcntl with a valid fd and a pointer to a valid flock struct.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}

/// Is the file locked by someone (another open file description)?
fn is_locked(file: &File) -> std::io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short);
    // SAFETY: as above; F_OFD_GETLK writes the conflicting lock into `fl`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

impl PidLock {
    /// Take the lock and write our pid into the file; `Ok(None)` if another live process
    /// holds it.
    pub fn acquire(path: &Path) -> Result<Option<PidLock>> {
        let mut file = open_rw(path)?;
        if !try_lock(&file).context(|| format!("cannot lock {}", path.display()))? {
            return Ok(None);
        }
        file.set_len(0)
            .context(|| format!("cannot write {}", path.display()))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|_| file.sync_all())
            .context(|| format!("cannot write {}", path.display()))?;
        Ok(Some(PidLock { file }))
    }

    /// Release the lock (the kernel also releases it when the process dies or execs).
    pub fn release(self) {
        let _ = self.file.set_len(0);
        drop(self.file);
    }
}

/// The pid recorded in a lock file whose lock is held, i.e. of a live holder.
pub fn holder(path: &Path) -> Result<Option<u32>> {
    let mut file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context(|| format!("cannot open {}", path.display())),
    };
    if !is_locked(&file).context(|| format!("cannot test the lock on {}", path.display()))? {
        return Ok(None);
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim().parse().ok())
}

/// A shared POSIX lock on the queue database's rollback journal (`Q/db-journal`), held
/// while this process's write transaction writes it.
///
/// Why: SQLite writes `Q/db` only under its POSIX lock on `Q/db`. When an NFS client is
/// cut off for longer than the server's lease, the server drops that client's locks, and
/// after the partition heals the Linux client fails every write it still held for a file
/// whose lock was lost (EIO). SQLite takes no lock on the journal, so the held-back
/// writes to *it* went through (seen in the NFS lab): a journal from before the cut,
/// completed after other hosts had committed, was then played back as a hot journal and
/// put those pages of the database back in time. With any lock of this process on the
/// journal, the client sends the journal writes under that lock too, and they fail the
/// same way.
///
/// A read lock, so writers never wait on it (the database lock orders them); a POSIX lock
/// (not OFD), because the NFS client matches a write to the locks of the writing process,
/// and SQLite writes through its own descriptor. It is taken after `BEGIN IMMEDIATE`:
/// SQLite's hot-journal check at the start of a transaction opens and closes the journal,
/// and closing any descriptor of a file drops the process's POSIX locks on it. SQLite's
/// own close of the journal at the end of the transaction drops it again, so it is taken
/// anew for every write transaction (one LOCK on NFS, and one unlock).
#[derive(Debug)]
pub struct JournalFence {
    path: std::path::PathBuf,
    /// Permission bits for a journal created here: the database's, as SQLite does.
    mode: u32,
    file: Option<File>,
}

impl JournalFence {
    pub fn new(db_path: &Path) -> JournalFence {
        use std::os::unix::fs::PermissionsExt;
        let mut path = db_path.as_os_str().to_owned();
        path.push("-journal");
        let mode = std::fs::metadata(db_path)
            .map(|m| m.permissions().mode() & 0o666)
            .unwrap_or(0o644);
        JournalFence {
            path: path.into(),
            mode,
            file: None,
        }
    }

    /// Forget the open journal (after a connection fault: it may be a stale descriptor).
    pub fn close(&mut self) {
        self.file = None;
    }

    /// Lock the journal for the write transaction under way. Creates an empty journal if
    /// there is none yet (SQLite then writes into it); never follows a link and locks
    /// nothing but a regular file.
    pub fn hold(&mut self) -> std::io::Result<()> {
        // A journal removed since we opened it: SQLite writes a new one.
        let stale = match &self.file {
            Some(file) => file.metadata().map(|m| m.nlink() == 0).unwrap_or(true),
            None => true,
        };
        if stale {
            self.file = None;
            self.file = Some(self.open()?);
        }
        let file = self.file.as_ref().expect("opened above");
        let mut fl = flock(libc::F_RDLCK as libc::c_short);
        fl.l_len = 0;
        loop {
            // SAFETY: fcntl with a valid fd and a pointer to a valid flock struct.
            let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
            if rc == 0 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                self.file = None;
                return Err(err);
            }
        }
    }

    fn open(&self) -> std::io::Result<File> {
        use rustix::fs::{Mode, OFlags};
        let flags =
            OFlags::RDONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::open(&self.path, flags, Mode::from_raw_mode(self.mode))?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other(format!(
                "{} is not a regular file",
                self.path.display()
            )));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_fails_and_survives_unrelated_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pid");
        let lock = PidLock::acquire(&path).unwrap().expect("first lock");
        // Opening and closing the same path must not drop an OFD lock.
        drop(std::fs::read(&path).unwrap());
        assert!(PidLock::acquire(&path).unwrap().is_none());
        assert_eq!(holder(&path).unwrap(), Some(std::process::id()));
        lock.release();
        assert_eq!(holder(&path).unwrap(), None);
        assert!(PidLock::acquire(&path).unwrap().is_some());
    }
}
