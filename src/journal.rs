//! The start journal: a feeder's durable record of which of its claimed jobs it has
//! started.
//!
//! A feeder claims several jobs per transaction (its look-ahead), so at any moment some of
//! its claimed jobs have started and some have not. Before it spawns a job it appends the
//! job's claim token to `Q/starts/<feeder id>` and syncs the file; only then does it spawn.
//! Whoever recovers the jobs of a dead feeder (its successor on the same host, or another
//! host reclaiming a dead host) therefore knows: a claimed job whose pid was never recorded
//! and whose token is not in the journal never started, and goes back to pending as if it
//! had never been claimed. Anything else may have run and is handled as crashed. A journal
//! that is missing or unreadable proves nothing, so every such job counts as started:
//! errors only ever err towards "may have run", never towards running a job twice.
//!
//! The feeder also appends each end it sees (`E <json>`), without a sync of its own: the
//! next start's sync makes it durable. A successor finding a job's end there records it
//! instead of calling the job crashed, so batching the queue's end records costs nothing
//! when a feeder dies.
//!
//! One write and one `fdatasync` per batch of starts (~0.14 ms on a local disk, one
//! WRITE+COMMIT on NFS) instead of one write transaction per job. The file is filled with
//! zeros ahead of the lines (`GROW` at a time), so a start's sync writes only data: an
//! append would change the file's size, which a journaling filesystem (ext4, XFS, an NFS
//! server's disk) commits to its own journal first, doubling the sync's cost. Readers take
//! NUL bytes for line ends. Only this feeder writes its file; readers open it afresh, so
//! NFS close-to-open consistency shows them every synced line.
//!
//! A PostgreSQL queue without a file directory keeps journals as rows instead, in
//! unlogged tables (`Journals::Rows`): a start costs one insert whose commit flushes no
//! WAL. They outlive a feeder's host, not a crash of the database server, which empties
//! them; each journal is therefore marked, an unmarked one proves nothing, and its live
//! feeder writes it again, whole, from the lines it keeps (`StartJournal::rewrite`).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::claims::{End, Fate};
use crate::error::{IoContext, Result};
use crate::store::{Store, Tx};

/// Past this size the journal is emptied once every start in it is recorded in the queue.
const TRUNCATE_AT: u64 = 64 * 1024;
/// The file is filled with zeros this far ahead of its lines.
const GROW: u64 = 64 * 1024;
/// Past this many rows a journal kept in the database is emptied likewise.
const TRUNCATE_ROWS: usize = 2000;

/// The directory of start journals.
pub fn dir(queue: &Path) -> PathBuf {
    queue.join("starts")
}

/// The journal of one feeder (feeder ids are `host:pid:random`).
pub fn path(queue: &Path, feeder: &str) -> PathBuf {
    dir(queue).join(feeder.replace('/', "_"))
}

/// What a feeder's journal says about its claims.
#[derive(Debug, Default)]
pub struct Journal {
    /// Claim tokens of jobs that may have started.
    pub started: HashSet<String>,
    /// Ends seen but maybe not recorded in the queue, by claim token.
    pub ends: HashMap<String, End>,
}

impl Journal {
    /// The fate of the job with this claim, given whether its pid was recorded.
    pub fn fate(&self, claim: &str, pid_recorded: bool) -> Fate {
        match self.ends.get(claim) {
            Some(end) => Fate::Ended(Box::new(end.clone())),
            None if !pid_recorded && !self.started.contains(claim) => Fate::NeverStarted,
            None => Fate::MayHaveRun,
        }
    }
}

/// A feeder's journal; `None` when it cannot be read (then nothing is proven: every job
/// may have run).
pub fn read(queue: &Path, feeder: &str) -> Option<Journal> {
    let text = std::fs::read(path(queue, feeder)).ok()?;
    // The zeros ahead of the lines (and any a torn write left) separate lines.
    Some(Journal::from_lines(
        String::from_utf8_lossy(&text).split(['\n', '\0']),
    ))
}

impl Journal {
    /// A journal from its lines: claim tokens, and `E {json}` ends.
    pub fn from_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Journal {
        let mut journal = Journal::default();
        for line in lines {
            if let Some(json) = line.strip_prefix("E ") {
                // A torn last line (the feeder died mid-write) proves nothing.
                if let Ok(end) = serde_json::from_str::<End>(json) {
                    journal.ends.insert(end.claim.clone(), end);
                }
            } else if !line.is_empty() {
                journal.started.insert(line.to_string());
            }
        }
        journal
    }
}

/// The fate of a claimed job of `feeder`, reading (and caching) its journal with `read`
/// (None: unreadable, which proves nothing).
pub fn fate_of(
    read: &mut dyn FnMut(&str) -> Option<Journal>,
    cache: &mut HashMap<String, Option<Journal>>,
    feeder: Option<&str>,
    claim: &str,
    pid_recorded: bool,
) -> Fate {
    let Some(feeder) = feeder else {
        return Fate::MayHaveRun;
    };
    match cache
        .entry(feeder.to_string())
        .or_insert_with(|| read(feeder))
    {
        Some(journal) => journal.fate(claim, pid_recorded),
        None => Fate::MayHaveRun,
    }
}

/// Where a queue keeps its feeders' start journals: files in its `starts/`, or rows of
/// a PostgreSQL queue that keeps no job-file directory. Whoever recovers claims reads
/// them through this, never asking which it is.
#[derive(Debug, Clone)]
pub enum Journals {
    Files(PathBuf),
    Rows,
}

impl Journals {
    /// A feeder's own journal, opened for appending (begun: it proves from now on that
    /// a claimed job not in it never started).
    pub fn open(&self, store: &mut Store, feeder: &str) -> Result<StartJournal> {
        match self {
            Journals::Files(queue) => StartJournal::open(queue, feeder),
            Journals::Rows => StartJournal::in_database(store, feeder),
        }
    }

    /// One feeder's journal, read in `tx` when it is rows (the read is then part of the
    /// transaction); a file is read as it is. `None`: unreadable, which proves nothing.
    pub fn read_in(&self, tx: &Tx<'_>, feeder: &str) -> Option<Journal> {
        match self {
            Journals::Files(queue) => read(queue, feeder),
            Journals::Rows => crate::store::in_database::journal_read(tx, feeder)
                .ok()
                .flatten()
                .map(|lines| Journal::from_lines(lines.iter().map(String::as_str))),
        }
    }

    /// Read journals through `body` outside any transaction: files as they are, rows
    /// inside one read transaction.
    pub fn reading<T>(
        &self,
        store: &mut Store,
        body: impl Fn(&mut dyn FnMut(&str) -> Option<Journal>) -> T,
    ) -> Result<T> {
        match self {
            Journals::Files(queue) => Ok(body(&mut |feeder: &str| read(queue, feeder))),
            Journals::Rows => {
                store.read(|tx| Ok(body(&mut |feeder: &str| self.read_in(tx, feeder))))
            }
        }
    }

    /// Remove the journals of these feeders (dead, their claims settled). Best effort: a
    /// journal left behind proves nothing wrong and is reaped a day later.
    pub fn remove(&self, store: &mut Store, feeders: &[String]) {
        match self {
            Journals::Files(queue) => {
                for feeder in feeders {
                    let _ = std::fs::remove_file(path(queue, feeder));
                }
            }
            Journals::Rows => {
                let _ = store.write_shared(|tx| {
                    for feeder in feeders {
                        crate::store::in_database::journal_forget(tx, feeder)?;
                    }
                    Ok(())
                });
            }
        }
    }

    /// Journals of feeders that died on hosts that never came back: once a day old and
    /// without running jobs, they prove nothing anyone needs.
    pub fn reap_old(&self, store: &mut Store) {
        let queue = match self {
            Journals::Rows => {
                let _ = store.write_shared(crate::store::in_database::reap_old_journals);
                return;
            }
            Journals::Files(queue) => queue,
        };
        let Ok(entries) = std::fs::read_dir(dir(queue)) else {
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
        let busy: Result<HashSet<String>> = store.read(|tx| {
            Ok(crate::claims::running_feeders(tx)?
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

/// A feeder's own journal, open for appending: a file in the queue's `starts/`, or rows
/// of a PostgreSQL queue that keeps no job-file directory.
pub struct StartJournal {
    feeder: String,
    kind: Kind,
}

enum Kind {
    File {
        queue: PathBuf,
        path: PathBuf,
        file: File,
        /// Where the next line goes, and how far the file is filled (with zeros ahead).
        written: u64,
        filled: u64,
    },
    Rows {
        /// Ends seen since the last start, written with the next one (as a file's are
        /// synced with it).
        ends: Vec<String>,
        /// Every line written since the journal was last emptied: what a server crash
        /// takes (the rows are unlogged) and the next write puts back.
        lines: Vec<String>,
    },
}

impl StartJournal {
    pub fn open(queue: &Path, feeder: &str) -> Result<StartJournal> {
        let path = path(queue, feeder);
        let dir = dir(queue);
        std::fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
        // Never through a link planted in the queue's starts/ directory.
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .context(|| format!("cannot open the start journal {}", path.display()))?;
        // A new file (feeder ids are unique); should one exist, write after all of it.
        let len = file
            .metadata()
            .context(|| format!("cannot read the start journal {}", path.display()))?
            .len();
        Ok(StartJournal {
            feeder: feeder.to_string(),
            kind: Kind::File {
                queue: queue.to_path_buf(),
                path,
                file,
                written: len,
                filled: len,
            },
        })
    }

    /// A journal kept as rows of the queue's database (see `in_database`), begun (its
    /// mark written).
    pub fn in_database(store: &mut Store, feeder: &str) -> Result<StartJournal> {
        store.single_write(|tx| crate::store::in_database::journal_begin(tx, feeder, &[]))?;
        Ok(StartJournal {
            feeder: feeder.to_string(),
            kind: Kind::Rows {
                ends: Vec::new(),
                lines: Vec::new(),
            },
        })
    }

    /// Durably record that these claims are about to start. Returns only once the lines
    /// are on stable storage (synced, or committed); a job must not be spawned before that.
    pub fn record(&mut self, store: &mut Store, claims: &[&str]) -> Result<()> {
        match &mut self.kind {
            Kind::File {
                path,
                file,
                written,
                filled,
                ..
            } => {
                let mut text = String::with_capacity(claims.len() * 24);
                for claim in claims {
                    text.push_str(claim);
                    text.push('\n');
                }
                let what = || format!("cannot write the start journal {}", path.display());
                write_line(file, written, filled, &text).context(what)?;
                file.sync_data().context(what)
            }
            Kind::Rows { ends, lines } => {
                let mut new = std::mem::take(ends);
                new.extend(claims.iter().map(|c| c.to_string()));
                let feeder = &self.feeder;
                // Rows only this feeder writes: no queue lock (a journal file is not
                // under the database's lock either), no dependency settling and no
                // transaction around the one insert, so a start costs the server one
                // statement.
                let appended = store.single_write(|tx| {
                    crate::store::in_database::journal_append(tx, feeder, &new)
                })?;
                lines.extend(new);
                if !appended {
                    // A server crash emptied the journals: this one again, whole.
                    self.rewrite(store)?;
                }
                Ok(())
            }
        }
    }

    /// Whether a server crash emptied this journal (rows, unlogged: see `in_database`);
    /// read in `tx`. A file is never lost this way.
    pub fn lost(&self, tx: &Tx<'_>) -> Result<bool> {
        match &self.kind {
            Kind::File { .. } => Ok(false),
            Kind::Rows { .. } => Ok(!crate::store::in_database::journal_marked(
                tx,
                &self.feeder,
            )?),
        }
    }

    /// Write a lost journal again, whole (its mark and every line since it was last
    /// emptied), so that it proves again which claimed jobs never started.
    pub fn rewrite(&mut self, store: &mut Store) -> Result<()> {
        if let Kind::Rows { lines, .. } = &self.kind {
            let feeder = &self.feeder;
            store.single_write(|tx| crate::store::in_database::journal_begin(tx, feeder, lines))?;
        }
        Ok(())
    }

    /// Note an end, without syncing: the next start's sync (or the feeder's exit, which
    /// flushes an NFS client's cache) makes it durable. Best effort: the queue gets the end
    /// with the next transaction anyway.
    pub fn record_end(&mut self, end: &End) -> Result<()> {
        let line = format!("E {}", serde_json::to_string(end).unwrap_or_default());
        match &mut self.kind {
            Kind::File {
                path,
                file,
                written,
                filled,
                ..
            } => write_line(file, written, filled, &format!("{line}\n"))
                .context(|| format!("cannot write the start journal {}", path.display())),
            Kind::Rows { ends, .. } => {
                ends.push(line);
                Ok(())
            }
        }
    }

    /// Called when every start and end in the journal is recorded in the queue: the lines
    /// prove nothing more, so a large journal is emptied. Also reopens the file if
    /// someone removed it, so later lines land where readers look.
    pub fn compact(&mut self, store: &mut Store) -> Result<()> {
        match &mut self.kind {
            Kind::File {
                queue,
                path,
                file,
                written,
                filled,
            } => {
                let on_disk = std::fs::metadata(&*path).ok();
                let ours = file.metadata().ok();
                let same = matches!((&on_disk, &ours), (Some(a), Some(b)) if a.ino() == b.ino() && a.dev() == b.dev());
                if !same {
                    let queue = queue.clone();
                    *self = StartJournal::open(&queue, &self.feeder)?;
                    return Ok(());
                }
                if *written > TRUNCATE_AT {
                    file.set_len(0)
                        .context(|| format!("cannot empty the start journal {}", path.display()))?;
                    *written = 0;
                    *filled = 0;
                }
                Ok(())
            }
            Kind::Rows { ends, lines } => {
                ends.clear();
                if lines.len() > TRUNCATE_ROWS {
                    let feeder = &self.feeder;
                    store
                        .write_shared(|tx| crate::store::in_database::journal_remove(tx, feeder))?;
                    lines.clear();
                }
                Ok(())
            }
        }
    }

    /// A feeder that ends with nothing claimed removes its journal.
    pub fn remove(self, store: &mut Store) {
        match self.kind {
            Kind::File { path, .. } => {
                let _ = std::fs::remove_file(&path);
            }
            Kind::Rows { .. } => {
                let feeder = &self.feeder;
                let _ =
                    store.write_shared(|tx| crate::store::in_database::journal_forget(tx, feeder));
            }
        }
    }
}

/// Write `text` at `written`, first filling the file with zeros further ahead when the
/// text would reach past what is filled (the sync that follows writes only data, but for
/// that growth).
fn write_line(file: &File, written: &mut u64, filled: &mut u64, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let end = *written + text.len() as u64;
    if end > *filled {
        let grow = (end - *filled).div_ceil(GROW) * GROW;
        file.write_all_at(&vec![0; grow as usize], *filled)?;
        *filled += grow;
    }
    file.write_all_at(text.as_bytes(), *written)?;
    *written = end;
    Ok(())
}

#[cfg(test)]
impl StartJournal {
    /// Test hook: bytes straight into a file journal (a torn line).
    fn append_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.kind {
            Kind::File {
                file,
                written,
                filled,
                ..
            } => write_line(file, written, filled, std::str::from_utf8(bytes).unwrap()),
            Kind::Rows { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store for the calls that take one (a file journal does not use it).
    fn test_store(dir: &Path) -> Store {
        let db = dir.join("db");
        crate::store::create_database(&db).unwrap();
        Store::Sqlite(Box::new(
            crate::store::SqliteStore::open(&db, crate::store::Access::ReadWrite).unwrap(),
        ))
    }

    #[test]
    fn recorded_claims_are_read_back_and_compaction_keeps_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = test_store(dir.path());
        let started = |d: &Path, f: &str| read(d, f).map(|j| j.started);
        assert!(
            started(dir.path(), "h:1:ab").is_none(),
            "no journal proves nothing"
        );
        let mut j = StartJournal::open(dir.path(), "h:1:ab").unwrap();
        j.record(&mut store, &["aa-1", "bb-2"]).unwrap();
        // Filled with zeros ahead, so that the next starts' syncs change no size.
        let len = || std::fs::metadata(path(dir.path(), "h:1:ab")).unwrap().len();
        assert_eq!(len(), GROW);
        j.record(&mut store, &["cc-3"]).unwrap();
        assert_eq!(len(), GROW);
        let got = started(dir.path(), "h:1:ab").unwrap();
        assert_eq!(got.len(), 3);
        assert!(got.contains("bb-2"));
        // Removed behind our back: compaction opens it again and new lines are seen.
        std::fs::remove_file(path(dir.path(), "h:1:ab")).unwrap();
        j.compact(&mut store).unwrap();
        j.record(&mut store, &["dd-4"]).unwrap();
        let got = started(dir.path(), "h:1:ab").unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["dd-4"]);
        j.remove(&mut store);
        assert!(started(dir.path(), "h:1:ab").is_none());
    }

    #[test]
    fn a_large_journal_is_emptied_once_recorded_and_stays_usable() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = test_store(dir.path());
        let mut j = StartJournal::open(dir.path(), "h:3:ef").unwrap();
        j.record(&mut store, &["small-1"]).unwrap();
        j.compact(&mut store).unwrap();
        assert_eq!(
            read(dir.path(), "h:3:ef").unwrap().started.len(),
            1,
            "small: kept"
        );
        let many: Vec<String> = (0..4000).map(|i| format!("0123456789abcdef-{i}")).collect();
        j.record(
            &mut store,
            &many.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(std::fs::metadata(path(dir.path(), "h:3:ef")).unwrap().len() > TRUNCATE_AT);
        assert_eq!(read(dir.path(), "h:3:ef").unwrap().started.len(), 4001);
        j.compact(&mut store).unwrap();
        assert_eq!(
            std::fs::metadata(path(dir.path(), "h:3:ef")).unwrap().len(),
            0
        );
        j.record(&mut store, &["after-1"]).unwrap();
        let started = read(dir.path(), "h:3:ef").unwrap().started;
        assert_eq!(started.into_iter().collect::<Vec<_>>(), ["after-1"]);
    }

    #[test]
    fn fates_follow_from_starts_ends_and_recorded_pids() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = test_store(dir.path());
        let mut j = StartJournal::open(dir.path(), "h:2:cd").unwrap();
        j.record(&mut store, &["s-1", "s-2"]).unwrap();
        let end = End {
            jid: 2,
            claim: "s-2".into(),
            exit_status: Some(3),
            signal: None,
            elapsed: 0.5,
            timed_out: false,
            retry_at: None,
            ended_at: "2026-11-27T00:00:00.000000Z".into(),
            usage: crate::process::Usage::default(),
            reason: None,
        };
        j.record_end(&end).unwrap();
        // A torn line at the end is ignored.
        j.append_raw(b"E {\"jid\": 3, \"cla").unwrap();
        let journal = read(dir.path(), "h:2:cd").unwrap();
        assert!(matches!(journal.fate("s-1", false), Fate::MayHaveRun));
        assert!(matches!(journal.fate("s-2", false), Fate::Ended(e) if e.exit_status == Some(3)));
        assert!(matches!(journal.fate("s-3", false), Fate::NeverStarted));
        assert!(matches!(journal.fate("s-3", true), Fate::MayHaveRun));
        let mut cache = HashMap::new();
        assert!(matches!(
            fate_of(
                &mut |f| read(dir.path(), f),
                &mut cache,
                Some("gone"),
                "s-3",
                false
            ),
            Fate::MayHaveRun
        ));
        assert!(matches!(
            fate_of(&mut |f| read(dir.path(), f), &mut cache, None, "s-3", false),
            Fate::MayHaveRun
        ));
    }
}
