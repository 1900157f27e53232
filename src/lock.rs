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

/// What this process is, for the holder note (`rq submit`, `rq feed` with the feeder's
/// id): set once by the CLI and the feeder.
static ROLE: std::sync::OnceLock<std::sync::Mutex<String>> = std::sync::OnceLock::new();

/// Say what this process is in the notes it leaves (`rq submit`, `feeder node3:4711:1a2b`).
pub fn set_role(role: &str) {
    let cell = ROLE.get_or_init(|| std::sync::Mutex::new(String::new()));
    if let Ok(mut current) = cell.lock() {
        *current = role.to_string();
    }
}

fn role() -> String {
    ROLE.get()
        .and_then(|cell| cell.lock().ok().map(|r| r.clone()))
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "rq".to_string())
}

/// The size of a holder note: each is written whole, at offset 0, in one write.
const NOTE_SIZE: usize = 256;

/// `Q/lock-holder`: who last took the queue's write lock (host, process, what it is),
/// written by every write transaction once it holds the lock, so that a process left
/// waiting can say whom it waits for, without the lock. The file's modification time,
/// stamped by the file server, says when. One synchronous write of a fixed-size record
/// (on NFS one WRITE call, FILE_SYNC), never through a link or into anything but a
/// regular file; a note that cannot be written is skipped (it is advice, not a lock).
#[derive(Debug)]
pub struct HolderNote {
    path: std::path::PathBuf,
    file: Option<File>,
}

impl HolderNote {
    pub fn new(db_path: &Path) -> HolderNote {
        HolderNote {
            path: note_path(db_path),
            file: None,
        }
    }

    /// Record this process as the lock's holder.
    pub fn mark(&mut self) {
        if self.write().is_err() {
            // A stale descriptor (NFS) or a removed file: once more, freshly opened.
            self.file = None;
            let _ = self.write();
        }
    }

    fn write(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.file.is_none() {
            self.file = Some(self.open()?);
        }
        let file = self.file.as_ref().expect("opened above");
        let record = note_record(&crate::host::name(), std::process::id(), &role());
        file.write_all_at(&record, 0)
    }

    fn open(&self) -> std::io::Result<File> {
        use rustix::fs::{Mode, OFlags};
        // NONBLOCK: a FIFO planted here must not hang us.
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let open = |flags| -> std::io::Result<File> {
            let file = File::from(rustix::fs::open(
                &self.path,
                flags,
                Mode::from_raw_mode(0o644),
            )?);
            if !file.metadata()?.is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            Ok(file)
        };
        let file = open(flags)?;
        // On NFS other hosts read the note: it must be on the server when the write
        // returns (a holder that dies next has left it), in one synchronous WRITE, and
        // not in this host's page cache (readers here read the server's). On a local
        // filesystem every process sees the page cache at once.
        if on_nfs(&file) {
            return open(flags | OFlags::DSYNC | OFlags::DIRECT);
        }
        Ok(file)
    }
}

/// How often a process that holds the queue's lock (read or write) for long says it is
/// alive: the holder note's modification time is set to the server's "now". A lock that
/// nobody has vouched for in much longer than this is held by a process that died (or
/// whose host lost the file server): see `lock_recovery`.
pub const HOLD_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// What this process holds: the note to refresh, since when, and when a busy handler of
/// this process last ran (a process waiting for the lock, even at commit while it holds
/// part of it, vouches for nobody).
#[derive(Default)]
struct Held {
    note: Option<std::path::PathBuf>,
    since: Option<std::time::Instant>,
    last_wait: Option<std::time::Instant>,
}

static HELD: std::sync::Mutex<Held> = std::sync::Mutex::new(Held {
    note: None,
    since: None,
    last_wait: None,
});

fn held() -> std::sync::MutexGuard<'static, Held> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// This process holds the lock of the queue database at `db_path` from now until the
/// guard goes: a thread of its own refreshes the note every `HOLD_REFRESH` while it does.
/// The thread only touches a file's times (one SETATTR on NFS), so a hang in the NFS
/// client holds up nothing but the refresh, and a process stopped or cut off stops it.
pub fn holding(db_path: &Path) -> Holding {
    static REFRESHER: std::sync::Once = std::sync::Once::new();
    {
        let mut held = held();
        held.note = Some(note_path(db_path));
        held.since = Some(std::time::Instant::now());
    }
    REFRESHER.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("rq-lock-note".into())
            .spawn(refresh_notes);
    });
    Holding(())
}

/// Held for the length of one transaction (see `holding`).
pub struct Holding(());

impl Drop for Holding {
    fn drop(&mut self) {
        let mut held = held();
        held.note = None;
        held.since = None;
    }
}

/// A busy handler that ran this recently means the process still waits for the lock: it
/// runs at least every 1.5 s while a wait goes on (on NFSv3 a long wait polls about once a
/// second). A waiter must not vouch for the holder: in the lab a reader blocked behind a
/// dead host's lock, polling slowly, refreshed the note between polls, and the cluster
/// believed the dead holder had come back.
const WAITING_WINDOW: std::time::Duration = std::time::Duration::from_secs(3);

/// Called by the busy handler: this process is waiting for the lock right now.
pub fn waiting_for_lock() {
    held().last_wait = Some(std::time::Instant::now());
    NOT_WAITING.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// The wait (or the transaction it was for) is over: a signal acts at once again.
pub fn done_waiting() {
    NOT_WAITING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Cleared while a busy handler waits for the queue's lock (see `end_waits_on_interrupt`).
static NOT_WAITING: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)));
/// Set by Ctrl-C, TERM or HUP once `end_waits_on_interrupt` was called.
static INTERRUPTED: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));

/// For a command that may wait for the queue's lock ("Ctrl-C to give up"): INT, TERM or
/// HUP during such a wait end the wait (the busy handler gives up, the transaction is
/// rolled back, the command says so and exits) instead of killing the process inside a
/// lock call. On NFSv3 a lock call cut short by a fatal signal can be granted by the
/// server after the unlock that cleans it up, and that lock is then kept for nobody
/// (seen in the lab), holding every writer up until the cluster takes it back. Outside a
/// wait the signals act as they always do. Not for feeders, which handle these signals.
pub fn end_waits_on_interrupt() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        let _ = signal_hook::flag::register(sig, INTERRUPTED.clone());
        let _ = signal_hook::flag::register_conditional_default(sig, NOT_WAITING.clone());
    }
}

/// A signal asked this process to stop waiting (see `end_waits_on_interrupt`).
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

fn refresh_notes() {
    let mut last_refresh: Option<std::time::Instant> = None;
    loop {
        std::thread::sleep(HOLD_REFRESH / 4);
        let due = {
            let held = held();
            let waiting = held
                .last_wait
                .is_some_and(|at| at.elapsed() < WAITING_WINDOW);
            match (&held.note, held.since) {
                (Some(note), Some(since))
                    if !waiting
                        && since.elapsed() >= HOLD_REFRESH
                        && last_refresh.is_none_or(|at| at.elapsed() >= HOLD_REFRESH) =>
                {
                    Some(note.clone())
                }
                _ => None,
            }
        };
        if let Some(note) = due {
            // Never creates the note (a removed one is written again by the next
            // writer) and never follows a link.
            let _ = crate::beats::touch_existing(&note);
            last_refresh = Some(std::time::Instant::now());
        }
    }
}

fn on_nfs(file: &File) -> bool {
    rustix::fs::fstatfs(file).is_ok_and(|fs| fs.f_type == libc::NFS_SUPER_MAGIC)
}

/// The holder note of the queue database at `db_path`.
pub fn note_path(db_path: &Path) -> std::path::PathBuf {
    db_path.with_file_name("lock-holder")
}

/// One note: a line `rq-holder host=H pid=P role=R`, padded with spaces to `NOTE_SIZE`.
fn note_record(host: &str, pid: u32, role: &str) -> Vec<u8> {
    let clean = |text: &str, space: bool| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_graphic() || (space && c == ' ') {
                    c
                } else {
                    '_'
                }
            })
            .take(80)
            .collect()
    };
    let mut line = format!(
        "rq-holder host={} pid={pid} role={}",
        clean(host, false),
        clean(role, true)
    )
    .into_bytes();
    line.truncate(NOTE_SIZE - 1);
    line.resize(NOTE_SIZE - 1, b' ');
    line.push(b'\n');
    line
}

/// What a holder note says.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub role: String,
    /// When the note was written, on the file server's clock.
    pub since: Option<jiff::Timestamp>,
}

impl Holder {
    /// The note names this very process (this host, this pid).
    pub fn is_this_process(&self) -> bool {
        self.pid == std::process::id() && self.host == crate::host::name()
    }
}

/// Read the holder note of the queue database at `db_path`: `None` if there is none, or
/// it is not one of rq's (a planted or half-written file says nothing).
pub fn read_holder(db_path: &Path) -> Option<Holder> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = note_path(db_path);
    let open = |direct: libc::c_int| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | direct)
            .open(&path)
            .ok()
    };
    let mut file = open(0)?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    // On NFS, read from the server: this host's page cache may hold an older note (seen
    // in the lab on NFSv3: a host whose feeder keeps the note open read its own last
    // note, not the newer one another host had written).
    if on_nfs(&file) {
        file = open(libc::O_DIRECT)?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
    }
    let mut bytes = vec![0u8; NOTE_SIZE];
    let mut got = 0;
    while got < NOTE_SIZE {
        match file.read(&mut bytes[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => return None,
        }
    }
    let mut holder = parse_note(&bytes[..got])?;
    holder.since = crate::beats::mtime(&path);
    Some(holder)
}

fn parse_note(bytes: &[u8]) -> Option<Holder> {
    let text = std::str::from_utf8(bytes).ok()?;
    let line = text.strip_suffix('\n')?.trim_end();
    let rest = line.strip_prefix("rq-holder host=")?;
    let (host, rest) = rest.split_once(" pid=")?;
    let (pid, role) = rest.split_once(" role=")?;
    Some(Holder {
        host: host.to_string(),
        pid: pid.parse().ok()?,
        role: role.to_string(),
        since: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_note_is_read_back_and_odd_files_say_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        assert_eq!(read_holder(&db), None);
        set_role("feeder h3:42:beef");
        let mut note = HolderNote::new(&db);
        note.mark();
        let holder = read_holder(&db).expect("a note");
        assert_eq!(holder.pid, std::process::id());
        assert_eq!(holder.role, "feeder h3:42:beef");
        assert_eq!(holder.host, crate::host::name().replace(' ', "_"));
        assert!(holder.since.is_some());
        assert_eq!(
            std::fs::metadata(note_path(&db)).unwrap().len(),
            NOTE_SIZE as u64
        );
        // Half a note (a torn read), or someone else's file: nothing.
        let record = note_record("h\nx", 7, "rq submit\x1b[2J");
        assert_eq!(record.len(), NOTE_SIZE);
        let parsed = parse_note(&record).unwrap();
        assert_eq!((parsed.host.as_str(), parsed.pid), ("h_x", 7));
        assert_eq!(parsed.role, "rq submit_[2J");
        assert_eq!(parse_note(&record[..100]), None);
        std::fs::write(note_path(&db), "hello\n").unwrap();
        assert_eq!(read_holder(&db), None);
        // A link planted as the note is neither followed for writing nor read.
        std::fs::remove_file(note_path(&db)).unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, note_path(&db)).unwrap();
        let mut note = HolderNote::new(&db);
        note.mark();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(read_holder(&db), None);
    }

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
