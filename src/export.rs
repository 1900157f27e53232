//! `rq SRC export --to DEST`: a queue moved into another store — a queue directory into
//! PostgreSQL when the cluster outgrows its file server, or back — keeping every job with
//! its jid, state and history, the dependencies, the settings and the job files.
//!
//! The new queue is made first (refused when it exists), then the source is paused, so no
//! feeder claims anything from it while, or after, it is copied: its jobs live on in the
//! new queue, and they must not run twice. A job still running refuses the export. The
//! rows are copied inside one read transaction of the source and one write transaction of
//! the new queue; the job files after both, outside any transaction. A failure removes
//! the new queue and resumes the source (if export paused it): all or nothing.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::error::{Error, IoContext, Result};
use crate::queue::{self, JOB_DIRS, Queue};
use crate::store::ops::{attributes, copies};
use crate::store::{Access, SqlValue, Table, Tx};

/// Rows read and written per statement (bounded memory whatever the queue's size).
const PAGE: i64 = 2000;

/// Why a queue is copied: moved into a new queue (`export`), or copied into a new queue
/// directory beside it (`backup`, with its job files; `snapshot`, rows only) — how a
/// PostgreSQL queue is backed up by rq.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Move,
    Backup,
    Snapshot,
}

/// What the copy of the rows found and wrote.
#[derive(Default)]
struct Copied {
    jobs: usize,
    deps: usize,
    /// Job files (and data directories) copied, after the rows.
    files_copied: usize,
    highest_jid: i64,
}

/// Export `src` into the new queue `to`; `files` is the job-file directory of a
/// PostgreSQL destination (`configure files=`); progress on a terminal unless `quiet`.
pub fn export(src: &mut Queue, to: &Path, files: Option<&Path>, quiet: bool) -> Result<Value> {
    let to_postgres = queue::postgres_location(to)?;
    // To PostgreSQL without --files: the new queue keeps its job files in its database.
    let files = match (&to_postgres, files) {
        (None, Some(_)) => {
            return Err(Error::usage(
                "--files is for a PostgreSQL destination: a queue directory keeps its job files \
                 in itself; nothing was changed",
            ));
        }
        (_, files) => files.map(queue::resolve),
    };
    let dest_name = match &to_postgres {
        Some(location) => location.display(),
        None => queue::resolve(to).display().to_string(),
    };
    if dest_name == src.name() {
        return Err(Error::usage(
            "export needs another queue as its destination; nothing was changed",
        ));
    }
    let made_files_dir = match &files {
        Some(dir) => check_files_dir(src, dir)?,
        None => false,
    };

    queue::create(to)?;
    let mut paused_here = false;
    let outcome = fill(
        src,
        to,
        files.as_deref(),
        Purpose::Move,
        quiet,
        &mut paused_here,
    );
    match outcome {
        Ok(copied) => {
            let mut report = serde_json::Map::new();
            report.insert("exported".into(), json!(dest_name));
            if let Some(dir) = &files {
                report.insert("files".into(), json!(dir));
            }
            report.insert("jobs".into(), json!(copied.jobs));
            report.insert("dependencies".into(), json!(copied.deps));
            report.insert("job_files".into(), json!(copied.files_copied));
            report.insert("next_jid".into(), json!(copied.highest_jid + 1));
            report.insert(
                "source".into(),
                json!(format!(
                    "{} is kept, paused: its feeders claim nothing ('rq {} resume' undoes)",
                    src.name(),
                    shell_words::quote(&src.name())
                )),
            );
            Ok(Value::Object(report))
        }
        Err(e) => {
            if paused_here {
                let _ = src.set_flag("paused", None);
            }
            match &to_postgres {
                Some(location) => {
                    let _ = crate::store::postgres::drop_queue(location);
                }
                None => {
                    let _ = std::fs::remove_dir_all(queue::resolve(to));
                }
            }
            if let Some(dir) = &files {
                if made_files_dir {
                    let _ = std::fs::remove_dir_all(dir);
                } else {
                    remove_job_dirs(dir);
                }
            }
            Err(e)
        }
    }
}

/// `backup` (`with_files`) or `snapshot` of a queue into the new queue directory `to`: a
/// consistent copy of its rows (one read transaction), then its job files; the queue
/// itself is left as it is, running jobs and all. A failure leaves nothing behind.
pub fn copy_into_directory(
    src: &mut Queue,
    to: &Path,
    with_files: bool,
    quiet: bool,
) -> Result<Value> {
    if queue::postgres_location(to)?.is_some() {
        return Err(Error::usage(
            "a backup or snapshot goes into a new queue directory; to copy a queue into \
             PostgreSQL, export it",
        ));
    }
    let dir = queue::resolve(to);
    queue::create(&dir)?;
    let purpose = if with_files {
        Purpose::Backup
    } else {
        Purpose::Snapshot
    };
    let mut paused_here = false;
    match fill(src, &dir, None, purpose, quiet, &mut paused_here) {
        Ok(copied) => {
            let mut report = serde_json::Map::new();
            let kind = if with_files { "backup" } else { "snapshot" };
            report.insert(kind.into(), json!(dir));
            report.insert("jobs".into(), json!(copied.jobs));
            if with_files {
                report.insert("job_files".into(), json!(copied.files_copied));
            }
            Ok(Value::Object(report))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// The job-file directory of the new queue must be new or empty (another queue's files
/// there would meet these jids), and not the source's own. Returns whether it is new.
fn check_files_dir(src: &Queue, dir: &Path) -> Result<bool> {
    if src.has_files() && queue::resolve(src.dir()) == dir {
        return Err(Error::usage(format!(
            "--files {} is the source's own directory; give the new queue a new one; nothing \
             was changed",
            dir.display()
        )));
    }
    match std::fs::symlink_metadata(dir) {
        Err(_) => Ok(true),
        Ok(meta) if meta.is_dir() => {
            let empty = std::fs::read_dir(dir)
                .context(|| format!("cannot read {}", dir.display()))?
                .next()
                .is_none();
            if empty {
                Ok(false)
            } else {
                Err(Error::Conflict(format!(
                    "--files {} is not empty; give the new queue an empty directory; nothing \
                     was changed",
                    dir.display()
                )))
            }
        }
        Ok(_) => Err(Error::Conflict(format!(
            "--files {} is not a directory; nothing was changed",
            dir.display()
        ))),
    }
}

/// The directories `configure files=` makes in a job-file directory.
fn remove_job_dirs(dir: &Path) {
    for sub in [
        "bin", "stdin", "stdout", "stderr", "data", "hosts", "starts",
    ] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    let _ = std::fs::remove_file(dir.join("doorbell"));
}

/// Pause the source (when it moves), copy its rows into the new queue, then its job files
/// (unless a snapshot).
fn fill(
    src: &mut Queue,
    to: &Path,
    files: Option<&Path>,
    purpose: Purpose,
    quiet: bool,
    paused_here: &mut bool,
) -> Result<Copied> {
    let mut dest = Queue::open(to, Access::ReadWrite)?;
    if let Some(dir) = files {
        dest.configure(&[("files".into(), dir.display().to_string())])?;
    }
    if purpose == Purpose::Move {
        let since = format!(
            "since {} by {}@{} (exported to {})",
            crate::time::now(),
            crate::host::user_name(),
            crate::host::name(),
            dest.name()
        );
        *paused_here = src.set_flag("paused", Some(&since))?;
    }
    let source_name = src.name();
    let progress = Progress::start(!quiet);
    let copied = src.store().read(|from| {
        dest.store()
            .write(|into| copy_rows(from, into, &source_name, purpose, &progress))
    });
    progress.stop();
    let mut copied = copied?;
    dest.store().refresh_statistics(copied.jobs);
    if purpose != Purpose::Snapshot {
        copied.files_copied = copy_job_files(src, &mut dest)?;
    }
    Ok(copied)
}

/// Copy the job files the copied rows name, read back from the new queue a page per read
/// transaction (memory bounded by the page, whatever the queue's size), outside any write
/// of the rows: file to file, or through the database of a queue that keeps them there
/// (a page's files staged in a local temporary directory). Returns how many.
fn copy_job_files(src: &mut Queue, dest: &mut Queue) -> Result<usize> {
    const STREAMS: [&str; 4] = ["stdin", "data", "stdout", "stderr"];
    if !src.has_files() && !src.in_database() {
        return Ok(0);
    }
    let bin = src.dir().join("bin");
    if src.has_files() && dest.has_files() && bin.is_dir() {
        queue::copy_tree(&bin, &dest.dir().join("bin"))?;
    }
    let mut copied = 0;
    let mut after = 0i64;
    loop {
        let page: Vec<(i64, Vec<String>)> = dest.store().read(|tx| {
            let page = tx
                .op(copies::JOB_FILES_PAGE)
                .query_map([after, PAGE], |r| {
                    let named = (1..=JOB_DIRS.len())
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect::<crate::error::Result<Vec<_>>>()?;
                    Ok((r.get(0)?, named.into_iter().flatten().collect()))
                })?
                .collect::<crate::error::Result<Vec<_>>>()?;
            Ok(page)
        })?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        let staging = tempfile::tempdir().context(|| "cannot make a temporary directory".into())?;
        for (jid, named) in &page {
            if named.is_empty() {
                continue;
            }
            // Where each named file of the source is: in its directory, or staged here.
            if src.in_database() {
                let streams: Vec<&str> = STREAMS
                    .into_iter()
                    .filter(|s| named.iter().any(|rel| rel.starts_with(&format!("{s}/"))))
                    .collect();
                src.fetch_job_files(*jid, &streams, staging.path())?;
            }
            let found: Vec<(String, std::path::PathBuf, &String)> = named
                .iter()
                .map(|rel| {
                    let sub = rel.split('/').next().unwrap_or_default().to_string();
                    let from = if src.in_database() {
                        staging.path().join(&sub).join(jid.to_string())
                    } else {
                        src.dir().join(rel)
                    };
                    (sub, from, rel)
                })
                .filter(|(_, from, _)| std::fs::symlink_metadata(from).is_ok())
                .collect();
            if dest.in_database() {
                let files: Vec<(String, std::path::PathBuf)> = found
                    .iter()
                    .map(|(sub, from, _)| (sub.clone(), from.clone()))
                    .collect();
                copied += dest.store_job_files(*jid, &files)?;
            } else {
                for (_, from, rel) in &found {
                    queue::copy_tree(from, &dest.dir().join(rel))?;
                    copied += 1;
                }
            }
            for sub in STREAMS {
                queue::remove_path(&staging.path().join(sub).join(jid.to_string()));
            }
        }
    }
    Ok(copied)
}

/// Every row of the source (jobs, dependencies, settings) into the new queue, and its jid
/// sequence: jids go on above every jid the source ever gave.
fn copy_rows(
    from: &Tx<'_>,
    into: &Tx<'_>,
    source: &str,
    purpose: Purpose,
    progress: &Progress,
) -> Result<Copied> {
    let (running, total): (i64, i64) = from
        .op(copies::RUNNING_AND_ALL)
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    progress.total.store(total, Ordering::Relaxed);
    progress.done.store(0, Ordering::Relaxed);
    if running > 0 && purpose == Purpose::Move {
        return Err(Error::Conflict(format!(
            "{running} job{} still running in {source}: pause it ('rq {source} pause'), let \
             them end, then export again; nothing was changed",
            if running == 1 { " is" } else { "s are" }
        )));
    }
    let mut copied = Copied::default();

    let mut settings = Vec::new();
    let every = from
        .op(attributes::EVERY_SORTED)
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })?
        .collect::<crate::error::Result<Vec<_>>>()?;
    for (key, value) in every {
        // The job-file directory is the new queue's own. A moved queue's pause stays with
        // the source: it is what keeps the source from running the jobs the new queue has.
        if key != "files" && !(purpose == Purpose::Move && key == "paused") {
            settings.push((key, value));
        }
    }
    let mut set = into.op(attributes::SET);
    for (key, value) in &settings {
        set.execute(crate::params![key, value])?;
    }

    let width = crate::job::FIELDS.len();
    let mut after = 0i64;
    loop {
        let page = from
            .op(copies::JOBS_PAGE)
            .query_map([after, PAGE], |r| {
                (0..width)
                    .map(|i| r.get::<_, SqlValue>(i))
                    .collect::<crate::error::Result<Vec<_>>>()
            })?
            .collect::<crate::error::Result<Vec<_>>>()?;
        let Some(last) = page.last() else { break };
        if let SqlValue::Integer(jid) = last[0] {
            after = jid;
        }
        into.copy_rows(Table::Jobs, &page)?;
        copied.jobs += page.len();
        progress.done.store(copied.jobs, Ordering::Relaxed);
    }

    let mut after = (0i64, 0i64);
    loop {
        let page = from
            .op(copies::DEPS_PAGE)
            .query_map([after.0, after.1, PAGE], |r| {
                (0..4)
                    .map(|i| r.get::<_, SqlValue>(i))
                    .collect::<crate::error::Result<Vec<_>>>()
            })?
            .collect::<crate::error::Result<Vec<_>>>()?;
        let Some(last) = page.last() else { break };
        if let (SqlValue::Integer(dep), SqlValue::Integer(job)) = (&last[0], &last[1]) {
            after = (*dep, *job);
        }
        copied.deps += page.len();
        into.copy_rows(Table::Deps, &page)?;
    }

    copied.highest_jid = highest_jid_given(from)?;
    continue_jids_above(into, copied.highest_jid)?;
    into.op(copies::NOTE_EXPORTED_FROM)
        .execute([format!("{source} at {}", crate::time::now())])?;
    Ok(copied)
}

/// The highest jid the queue ever gave (deleted and rotated jobs' too: jids are never
/// reused).
fn highest_jid_given(tx: &Tx<'_>) -> Result<i64> {
    tx.op(crate::store::ops::jobs::HIGHEST_JID_GIVEN)
        .query_row([], |r| r.get(0))
}

/// Make the queue's next jid come after `top`.
fn continue_jids_above(tx: &Tx<'_>, top: i64) -> Result<()> {
    if top <= 0 {
        return Ok(());
    }
    tx.op(crate::store::ops::jobs::JID_COUNTER_EXISTS)
        .execute_batch()?;
    tx.op(crate::store::ops::jobs::CONTINUE_JIDS_ABOVE)
        .execute([top])?;
    Ok(())
}

/// "export: N of M jobs copied" on a terminal, once a second, from a thread of its own:
/// the copy runs inside transactions, which must never wait on a terminal.
struct Progress {
    total: Arc<AtomicI64>,
    done: Arc<AtomicUsize>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(show: bool) -> Progress {
        let total = Arc::new(AtomicI64::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = (show && std::io::stderr().is_terminal()).then(|| {
            let (total, done) = (total.clone(), done.clone());
            std::thread::spawn(move || {
                let mut shown = false;
                while stopped
                    .recv_timeout(std::time::Duration::from_secs(1))
                    .is_err_and(|e| e == std::sync::mpsc::RecvTimeoutError::Timeout)
                {
                    let (done, total) =
                        (done.load(Ordering::Relaxed), total.load(Ordering::Relaxed));
                    eprint!("\rexport: {done} of {total} jobs copied");
                    let _ = std::io::stderr().flush();
                    shown = true;
                }
                if shown {
                    eprint!("\r\x1b[K");
                }
            })
        });
        Progress {
            total,
            done,
            stop: Some(stop),
            thread,
        }
    }

    fn stop(mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
