//! Taking the queue's lock back from a host that died holding it (NFSv3).
//!
//! On NFSv3 the server keeps a client's locks (NLM) until that client reboots and its
//! status monitor says so, which for a host that never comes back is never: every other
//! process then waits for the queue's lock for ever. As the original rq did, the cluster
//! takes the lock back itself: the database and its journal are put on new inodes (copied,
//! then renamed into place), so the server's orphaned lock stays on the old ones.
//!
//! - **Only on evidence that cannot be a slow host.** A process that holds the lock for
//!   long refreshes the holder note every `lock::HOLD_REFRESH`; a waiter decides the holder
//!   is dead only when it has itself waited `dead_after(lease)`, the note has not been
//!   refreshed for that long (file server's clock), and the holder's host has no heartbeat
//!   that young (a host whose heartbeat is older than its lease has fenced itself: its
//!   watchdog killed its jobs). A holder on a live host that says nothing (a stopped
//!   process, or a reader that left no note) is given twice as long. On NFSv4 and local
//!   filesystems the kernel or the server's lease frees a dead holder's lock: nothing here
//!   runs there.
//! - **One recovery at a time, cluster-wide**, under `Q/recovery.lock`, taken with link(2)
//!   (fcntl is what is broken), checked by inode and link count, refreshed while held and
//!   taken over when it is much older than any recovery takes.
//! - **Every process notices.** On these filesystems each transaction checks that its
//!   connection's file is still `Q/db` (the directory's attributes asked of the server,
//!   then SQLite's `SQLITE_FCNTL_HAS_MOVED`): before a write transaction writes and after
//!   any transaction ends. A transaction that ran on the old file is run again on the new
//!   one (a holder that comes back after its lock was taken writes only into the old file,
//!   which nobody reads).

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lock::{HOLD_REFRESH, Holder};

/// Whether a dead host's lock can outlive it on the filesystem of this queue: NFS before
/// version 4 (`RQ_TEST_LOCK_RECOVERY=1` says yes on any filesystem, for the tests).
pub fn enabled(queue_dir: &Path) -> bool {
    if let Some(v) = std::env::var_os("RQ_TEST_LOCK_RECOVERY") {
        return v == "1";
    }
    let Ok(dir) = queue_dir.canonicalize() else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let mounts = crate::fsguard::parse_mountinfo(&text);
    crate::fsguard::mount_of(&dir, &mounts).is_some_and(|m| {
        m.fstype == "nfs"
            && !m
                .options
                .iter()
                .any(|o| o.starts_with("vers=4") || o.starts_with("nfsvers=4"))
    })
}

/// The lease this process knows (the feeder sets it from the queue's settings).
static KNOWN_LEASE: AtomicU64 = AtomicU64::new(0);

pub fn set_known_lease(lease: f64) {
    KNOWN_LEASE.store(lease.to_bits(), Ordering::Relaxed);
}

/// The lease the cluster works with: the one this process knows, else the longest any
/// feeder publishes in its heartbeat file, else the default. (A waiter may be unable to
/// read the queue's settings: the dead holder may hold the lock readers need too.)
pub fn lease(queue_dir: &Path) -> f64 {
    let known = f64::from_bits(KNOWN_LEASE.load(Ordering::Relaxed));
    if known > 0.0 {
        return known;
    }
    let published = std::fs::read_dir(crate::beats::hosts_dir(queue_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".hb"))
        .filter_map(|e| crate::beats::read_info(&e.path()))
        .filter_map(|info| info["lease"].as_f64())
        .fold(0.0, f64::max);
    if published > 0.0 {
        published
    } else {
        crate::beats::DEFAULT_LEASE
    }
}

/// How long the lock must have been held without a word from its holder before the
/// holder counts as dead: the lease, plus half a lease (at least three refreshes) for
/// slow networks and attribute caches.
pub fn dead_after(lease: f64) -> f64 {
    lease + (lease / 2.0).max(3.0 * HOLD_REFRESH.as_secs_f64())
}

/// What a waiter found out about the lock's holder.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The last process that took the lock for writing, as its note says.
    pub holder: Option<Holder>,
    /// Seconds since anyone holding the lock said so (the note's time, server clock).
    pub silent_for: Option<f64>,
    /// Seconds since the holder's host beat; `None` without a heartbeat.
    pub beat_age: Option<f64>,
    /// The database file (inode) the waiter waits on.
    pub db_ino: u64,
    /// When the judgement was made.
    pub judged_at: std::time::Instant,
}

impl Evidence {
    pub fn describe(&self) -> String {
        let silent = self.silent_for.map_or("ever".to_string(), |s| {
            crate::time::duration_text(s.max(0.0))
        });
        if self.holder.as_ref().is_some_and(Holder::is_this_process) {
            return format!(
                "this process waits behind a lock nobody has said for {silent} that they hold \
                 (the holder note names this process itself, as it holds the write lock at \
                 commit; the file server keeps the locks of processes that are gone)"
            );
        }
        let holder = match &self.holder {
            Some(h) => format!("{} (pid {} on {})", h.role, h.pid, h.host),
            None => "an unknown process".into(),
        };
        let silent = self.silent_for.map_or("never".to_string(), |s| {
            format!("{} ago", crate::time::duration_text(s.max(0.0)))
        });
        let beat = match (&self.holder, self.beat_age) {
            (Some(h), Some(age)) => format!(
                "; {}'s last heartbeat {} ago",
                h.host,
                crate::time::duration_text(age.max(0.0))
            ),
            (Some(h), None) => format!("; {} has no heartbeat", h.host),
            (None, _) => String::new(),
        };
        crate::secrets::redact(&format!(
            "last taken for writing by {holder}; its holder last said it was alive {silent}{beat}"
        ))
    }
}

/// A waiter's judgement of the lock's holder.
#[derive(Debug)]
pub enum Judgement {
    /// Wait on (the reason is in a comment where `judge` says so).
    Wait,
    /// The holder is dead: take the lock back.
    Dead(Evidence),
}

/// Judge the holder of the lock of `db_path`, for a process that has waited `waited`
/// seconds for it.
pub fn judge(db_path: &Path, waited: f64) -> Judgement {
    let queue = db_path.parent().unwrap_or(Path::new("."));
    let lease = lease(queue);
    let limit = dead_after(lease);
    if waited < limit {
        return Judgement::Wait;
    }
    // Without the file's identity or the server's clock there is no evidence.
    let Some(db_ino) = db_inode(db_path) else {
        return Judgement::Wait;
    };
    let me = crate::host::name();
    let Ok(now) = crate::beats::server_now(queue, &me) else {
        return Judgement::Wait;
    };
    // Names looked up afresh: a new holder's note and a restarted host's heartbeat are
    // new files under the old names.
    refresh_directory(db_path);
    crate::beats::refresh_directory(&crate::beats::hosts_dir(queue));
    let holder = crate::lock::read_holder(db_path);
    let silent_for = holder
        .as_ref()
        .and_then(|h| h.since)
        .or_else(|| crate::beats::mtime(&crate::lock::note_path(db_path)))
        .map(|at| crate::time::seconds_between(at, now));
    let beat_age = holder
        .as_ref()
        .and_then(|h| crate::beats::heartbeat_age(queue, &h.host, now));
    let evidence = Evidence {
        holder,
        silent_for,
        beat_age,
        db_ino,
        judged_at: std::time::Instant::now(),
    };
    // Someone holding the lock said lately that it is alive.
    if evidence.silent_for.is_some_and(|s| s < limit) {
        return Judgement::Wait;
    }
    // A process of this host that is stopped or stuck: never taken from. (When the note
    // names this process, it waits at commit holding the write lock, and what holds it up
    // is someone else, silent: judged below.)
    if let Some(h) = &evidence.holder
        && h.host == me
        && !h.is_this_process()
        && crate::process::is_alive(h.pid)
    {
        return Judgement::Wait;
    }
    // A live host frees the locks of its dead processes: what holds the lock there is a
    // stopped process, or a reader somewhere that left no note. Given twice as long.
    // Not when the note names this process: it waits at commit behind a reader that has
    // not said it is alive for that long (a live reader says so every 2 s), or a lock the
    // server keeps for nobody; its host's heartbeat says nothing about either.
    let names_me = evidence
        .holder
        .as_ref()
        .is_some_and(Holder::is_this_process);
    if !names_me && evidence.beat_age.is_some_and(|age| age < limit) && waited < 2.0 * limit {
        return Judgement::Wait;
    }
    Judgement::Dead(evidence)
}

/// The inode of the file at `db_path`, asked of the server.
pub fn db_inode(db_path: &Path) -> Option<u64> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    let flags = AtFlags::STATX_FORCE_SYNC | AtFlags::SYMLINK_NOFOLLOW;
    statx(CWD, db_path, flags, StatxFlags::INO)
        .ok()
        .map(|st| st.stx_ino)
}

/// Ask the server for the queue directory's attributes, so that this host's next lookup
/// of `Q/db` (or of the holder note) sees a file renamed into place by another host (NFS
/// trusts a cached name until its directory's attributes expire, up to a minute).
pub fn refresh_directory(db_path: &Path) {
    if let Some(dir) = db_path.parent() {
        crate::beats::refresh_directory(dir);
    }
}

/// Wait while another process takes the lock back (`Outcome::InProgress`), touching
/// neither the database nor its lock: a write transaction begun now would take the write
/// lock and write its note, and the taker would find the lock's holder speaking. True
/// when the database was put on a new file (the file judged was of inode `judged_ino`).
pub fn await_recovery(db_path: &Path, judged_ino: u64) -> bool {
    let queue = db_path.parent().unwrap_or(Path::new("."));
    let mutex = queue.join("recovery.lock");
    let started = std::time::Instant::now();
    loop {
        refresh_directory(db_path);
        let moved = db_inode(db_path).is_some_and(|ino| ino != judged_ino);
        // A taker that died is taken over once its mutex is stale: then judged again.
        if moved
            || std::fs::symlink_metadata(&mutex).is_err()
            || started.elapsed().as_secs_f64() > STALE
        {
            return moved;
        }
        std::thread::sleep(std::time::Duration::from_millis(rand::random_range(
            500..1500,
        )));
    }
}

/// What `recover` did.
#[derive(Debug)]
pub enum Outcome {
    /// The database and journal are on new inodes; the old lock no longer applies.
    Recovered(String),
    /// Nothing to do: someone else recovered, the lock came free, or its holder spoke.
    NotNeeded(String),
    /// Another process is recovering right now.
    InProgress,
}

/// Take the lock of `db_path` back from the dead holder `evidence` describes; `announce`
/// is called once this process is the one to do it. The caller holds no connection to the
/// database.
pub fn recover(db_path: &Path, evidence: &Evidence, announce: &dyn Fn()) -> crate::Result<Outcome> {
    let queue = db_path.parent().unwrap_or(Path::new("."));
    let Some(mutex) = RecoveryMutex::acquire(queue)? else {
        return Ok(Outcome::InProgress);
    };
    announce();
    let outcome = recover_under(db_path, evidence, &mutex);
    mutex.release();
    outcome
}

fn recover_under(
    db_path: &Path,
    evidence: &Evidence,
    mutex: &RecoveryMutex,
) -> crate::Result<Outcome> {
    let queue = db_path.parent().unwrap_or(Path::new("."));
    let io = |what: String| {
        move |e: std::io::Error| crate::Error::Io {
            context: what,
            source: e,
        }
    };
    let mut steps = Steps::since(evidence.judged_at);
    steps.done("taken on");
    // Judged again under the mutex: another host may have done it a moment ago.
    if db_inode(db_path) != Some(evidence.db_ino) {
        return Ok(Outcome::NotNeeded(
            "someone else already took the lock back".into(),
        ));
    }
    let note_before = note_state(db_path);
    if !lock_is_held(db_path)? {
        return Ok(Outcome::NotNeeded("the lock came free".into()));
    }
    steps.done("judged again");
    let before = file_state(db_path).map_err(io(format!("cannot stat {}", db_path.display())))?;
    let work = queue.join(format!(
        ".recovery.{}.{}.{:x}",
        crate::host::name().replace('/', "_"),
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&work).map_err(io(format!("cannot create {}", work.display())))?;
    let outcome = (|| -> crate::Result<Outcome> {
        let copy = work.join("db");
        copy_file(db_path, &copy, Some(evidence.db_ino), mutex)
            .map_err(io(format!("cannot copy {}", db_path.display())))?;
        let journal = journal_path(db_path);
        let copied_journal = work.join("db-journal");
        let had_journal = match copy_file(&journal, &copied_journal, None, mutex) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io(format!("cannot copy {}", journal.display()))(e)),
        };
        mutex.refresh();
        steps.done("copied");
        // Opening the copy rolls a hot journal (a commit the holder did not finish) back.
        let report = json_report(evidence, had_journal);
        check_and_mark(&copy, &report)?;
        mutex.refresh();
        steps.done("checked");
        // The holder may have come back while we copied: then its lock is its own again.
        if file_state(db_path).ok().as_ref() != Some(&before)
            || holder_spoke(&note_before, &note_state(db_path))
            || !lock_is_held(db_path)?
        {
            return Ok(Outcome::NotNeeded(
                "the holder came back while the copy was made".into(),
            ));
        }
        // The journal first: until the database is renamed, the old file (whose lock is
        // still held) is the only one anyone can open, and nobody can read it while its
        // holder writes it.
        if copied_journal.exists() {
            std::fs::rename(&copied_journal, &journal)
                .map_err(io(format!("cannot put {} in place", journal.display())))?;
        } else if let Err(e) = std::fs::remove_file(&journal)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io(format!("cannot remove {}", journal.display()))(e));
        }
        std::fs::rename(&copy, db_path)
            .map_err(io(format!("cannot put {} in place", db_path.display())))?;
        steps.done("renamed into place");
        Ok(Outcome::Recovered(format!("{report}; {steps}")))
    })();
    let _ = std::fs::remove_dir_all(&work);
    outcome
}

/// How long each step of a recovery took, for its report (on NFS each step is a number
/// of round trips, and a lock call to a busy server can take long).
struct Steps {
    since: std::time::Instant,
    done: Vec<(&'static str, f64)>,
}

impl Steps {
    fn since(start: std::time::Instant) -> Steps {
        Steps {
            since: start,
            done: Vec::new(),
        }
    }

    fn done(&mut self, step: &'static str) {
        self.done.push((step, self.since.elapsed().as_secs_f64()));
        self.since = std::time::Instant::now();
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<String> = self
            .done
            .iter()
            .map(|(step, secs)| format!("{step} in {secs:.1}s"))
            .collect();
        f.write_str(&steps.join(", "))
    }
}

fn journal_path(db_path: &Path) -> PathBuf {
    let mut path = db_path.as_os_str().to_owned();
    path.push("-journal");
    path.into()
}

/// What the lock's holder said last (content and time of the note).
fn note_state(db_path: &Path) -> Option<(Holder, Option<jiff::Timestamp>)> {
    let holder = crate::lock::read_holder(db_path)?;
    let since = holder.since;
    Some((holder, since))
}

/// Whether the holder judged dead said since that it is alive: the same process's note
/// refreshed or written again. A note of another process is a writer that took the write
/// lock meanwhile (the judged holder did not hold it: a reader's or a forgotten lock held
/// it up) and now waits behind the same lock at commit; the database file says whether
/// anyone committed.
fn holder_spoke(
    before: &Option<(Holder, Option<jiff::Timestamp>)>,
    after: &Option<(Holder, Option<jiff::Timestamp>)>,
) -> bool {
    match (before, after) {
        (Some((was, at)), Some((now, now_at))) => {
            (was.host == now.host && was.pid == now.pid && was.role == now.role) && at != now_at
        }
        // A note where there was none: a writer that took the lock meanwhile.
        (None, Some(_)) => false,
        // A removed note: nobody alive removes it; be careful anyway.
        (Some(_), None) => true,
        (None, None) => false,
    }
}

/// Identity, size and times of a file, as the server has them.
#[derive(Debug, PartialEq)]
struct FileState {
    ino: u64,
    size: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

fn file_state(path: &Path) -> std::io::Result<FileState> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    let flags = AtFlags::STATX_FORCE_SYNC | AtFlags::SYMLINK_NOFOLLOW;
    let st = statx(CWD, path, flags, StatxFlags::BASIC_STATS)?;
    Ok(FileState {
        ino: st.stx_ino,
        size: st.stx_size,
        mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
        ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
    })
}

/// Whether another process holds any part of the database's lock (a reader's too, which
/// holds writers back at commit): SQLite's own attempt to take it exclusively, without
/// waiting. (rq never opens the database file itself to ask fcntl: closing
/// that descriptor would drop every POSIX lock this process holds on it.)
fn lock_is_held(db_path: &Path) -> crate::Result<bool> {
    use rusqlite::{Connection, OpenFlags};
    let conn = Connection::open_with_flags(db_path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    match conn.execute_batch("BEGIN EXCLUSIVE; ROLLBACK;") {
        Ok(()) => Ok(false),
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ) =>
        {
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// Copy `from` (a regular file, never through a link; of inode `ino` when given) to the
/// new file `to` with the same permissions, reading from the server (O_DIRECT on NFS: this
/// host's page cache may hold pages the holder rewrote since), and sync it.
fn copy_file(
    from: &Path,
    to: &Path,
    ino: Option<u64>,
    mutex: &RecoveryMutex,
) -> std::io::Result<()> {
    let open = |direct: libc::c_int| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | direct)
            .open(from)
    };
    let mut source = open(0)?;
    let meta = source.metadata()?;
    if !meta.is_file() || ino.is_some_and(|ino| meta.ino() != ino) {
        return Err(std::io::Error::other(format!(
            "{} is not the file that was judged",
            from.display()
        )));
    }
    let on_nfs = rustix::fs::fstatfs(&source).is_ok_and(|fs| fs.f_type == libc::NFS_SUPER_MAGIC);
    if on_nfs {
        source = open(libc::O_DIRECT)?;
    }
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(meta.mode() & 0o666)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(to)?;
    // O_DIRECT wants an aligned buffer: 1 MiB at a 4 KiB boundary.
    const CHUNK: usize = 1 << 20;
    let mut storage = vec![0u8; CHUNK + 4096];
    let offset = storage.as_ptr().align_offset(4096);
    let buffer = &mut storage[offset..offset + CHUNK];
    let mut since_refresh = std::time::Instant::now();
    loop {
        let n = match source.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        target.write_all(&buffer[..n])?;
        if since_refresh.elapsed() >= HOLD_REFRESH {
            mutex.refresh();
            since_refresh = std::time::Instant::now();
        }
    }
    target.sync_all()
}

/// Open the copy (SQLite rolls a hot journal back), check it whole, and record the
/// recovery in its `meta` table (`status` shows it).
fn check_and_mark(copy: &Path, report: &str) -> crate::Result<()> {
    use rusqlite::{Connection, OpenFlags};
    // Without locks ("unix-none"): nobody else knows this private copy, and on NFSv3 each
    // lock is a call to the server's lock manager, which a busy cluster makes slow.
    let conn =
        Connection::open_with_flags_and_vfs(copy, OpenFlags::SQLITE_OPEN_READ_WRITE, c"unix-none")?;
    let check: String = conn.query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(crate::Error::Conflict(format!(
            "the copy of the database made to take the lock back does not check out ({check}); \
             nothing was changed: stop the feeders and run 'rq Q recover'"
        )));
    }
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('lock_recovered', ?1)",
        [report],
    )?;
    Ok(())
}

fn json_report(evidence: &Evidence, had_journal: bool) -> String {
    let holder = evidence.holder.as_ref();
    serde_json::json!({
        "at": crate::time::now(),
        "by": format!("{} (pid {})", crate::host::name(), std::process::id()),
        "holder": holder.map(|h| format!("{} (pid {} on {})", h.role, h.pid, h.host)),
        "silent_for": evidence.silent_for.map(|s| s.round()),
        "holder_heartbeat_age": evidence.beat_age.map(|s| s.round()),
        "journal": had_journal,
    })
    .to_string()
}

/// `Q/recovery.lock`: one recovery at a time in the whole cluster. Taken with link(2) as
/// open(2) describes for NFS: a unique file is linked to the lock's name, and it is ours
/// when that file then has two links (link's own answer can be lost with its reply).
/// Refreshed (its time, server clock) while held; one older than `STALE` was left by a
/// process that died while recovering and is taken over.
struct RecoveryMutex {
    path: PathBuf,
    ino: u64,
}

const STALE: f64 = 600.0;

impl RecoveryMutex {
    fn acquire(queue: &Path) -> crate::Result<Option<RecoveryMutex>> {
        let path = queue.join("recovery.lock");
        for _ in 0..2 {
            let unique = queue.join(format!(
                ".recovery.lock.{}.{}.{:x}",
                crate::host::name().replace('/', "_"),
                std::process::id(),
                rand::random::<u32>()
            ));
            let mut file = crate::beats::create_new(&unique).map_err(|e| crate::Error::Io {
                context: format!("cannot create {}", unique.display()),
                source: e,
            })?;
            let _ = writeln!(
                file,
                "host={} pid={} at={}",
                crate::host::name(),
                std::process::id(),
                crate::time::now()
            );
            drop(file);
            let _ = std::fs::hard_link(&unique, &path);
            let mine = std::fs::symlink_metadata(&unique).ok();
            let _ = std::fs::remove_file(&unique);
            if let Some(meta) = mine
                && meta.nlink() == 2
            {
                return Ok(Some(RecoveryMutex {
                    path,
                    ino: meta.ino(),
                }));
            }
            // Someone else's: theirs unless it is stale.
            let now = crate::beats::server_now(queue, &crate::host::name())?;
            let stale = crate::beats::mtime(&path)
                .is_some_and(|at| crate::time::seconds_between(at, now) > STALE);
            if !stale {
                return Ok(None);
            }
            // Moved aside under a name of our own first, so two takers cannot both
            // remove a fresh lock the other just made.
            let aside = queue.join(format!(".recovery.lock.stale.{:x}", rand::random::<u32>()));
            if std::fs::rename(&path, &aside).is_ok() {
                let _ = std::fs::remove_file(&aside);
            }
        }
        Ok(None)
    }

    fn refresh(&self) {
        let _ = crate::beats::touch_existing(&self.path);
    }

    fn release(self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(pid: u32, at: i64) -> Option<(Holder, Option<jiff::Timestamp>)> {
        let since = Some(jiff::Timestamp::from_second(at).unwrap());
        let holder = Holder {
            host: "h1".into(),
            pid,
            role: "rq submit".into(),
            since,
        };
        Some((holder, since))
    }

    #[test]
    fn only_the_judged_process_itself_speaks_for_the_lock() {
        // Its note refreshed or written again: it is alive.
        assert!(holder_spoke(&note(7, 100), &note(7, 130)));
        // Unchanged: silent.
        assert!(!holder_spoke(&note(7, 100), &note(7, 100)));
        // Another writer's note: a waiter that took the write lock meanwhile, not the
        // holder coming back.
        assert!(!holder_spoke(&note(7, 100), &note(8, 130)));
        assert!(!holder_spoke(&None, &note(8, 130)));
        // A note removed: taken as a sign of life, to be safe.
        assert!(holder_spoke(&note(7, 100), &None));
    }

    #[test]
    fn a_waiter_waits_for_a_recovery_under_way_and_sees_its_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::write(&db, "old").unwrap();
        let judged = db_inode(&db).unwrap();
        let mutex = dir.path().join("recovery.lock");
        std::fs::write(&mutex, "").unwrap();
        // The taker: it puts the new file in place, then lets go of the mutex (whenever
        // it does, before or during the wait, the waiter sees the new file).
        let (db2, mutex2) = (db.clone(), mutex.clone());
        let taker = std::thread::spawn(move || {
            let new = db2.with_file_name("db.new");
            std::fs::write(&new, "new").unwrap();
            std::fs::rename(&new, &db2).unwrap();
            std::fs::remove_file(&mutex2).unwrap();
        });
        assert!(await_recovery(&db, judged), "the new file is seen");
        taker.join().unwrap();
        // A recovery that ends without a new file (it found the lock free): false.
        let judged = db_inode(&db).unwrap();
        assert!(!await_recovery(&db, judged));
    }

    #[test]
    fn the_holder_counts_as_dead_only_well_after_the_lease() {
        assert_eq!(dead_after(60.0), 90.0);
        assert_eq!(dead_after(2.0), 8.0, "at least three refreshes of the note");
    }

    #[test]
    fn one_process_at_a_time_holds_the_recovery_mutex() {
        let dir = tempfile::tempdir().unwrap();
        let first = RecoveryMutex::acquire(dir.path()).unwrap().expect("free");
        assert!(RecoveryMutex::acquire(dir.path()).unwrap().is_none());
        first.release();
        let again = RecoveryMutex::acquire(dir.path())
            .unwrap()
            .expect("free again");
        again.release();
        // Nothing is left behind but the clock file of hosts/.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["hosts"]);
    }
}
