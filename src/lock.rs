//! rq's own lock files: Linux open-file-description (OFD) locks, which belong to one
//! open file and so survive other opens and closes of the same path in the process
//! (classic POSIX locks do not), and which the kernel (or the NFS server's lease)
//! releases when the holder dies. The file is opened close-on-exec so jobs never keep
//! a feeder's lock alive.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
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
        .custom_flags(libc::O_CLOEXEC)
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
