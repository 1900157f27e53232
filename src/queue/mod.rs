//! The queue: a directory holding the database and the jobs' files (or a PostgreSQL
//! queue and its job-file directory), and the data modes, a file each: `submit` (and
//! touch), `list` (query, execute), `change` (update, delete, resubmit, kill requests),
//! `status`, `settings` (configure, pause, drain); `files` copies and removes job files.
//! File copies happen outside every transaction; files of jobs that a transaction removes
//! are deleted after it commits.

use std::path::{Path, PathBuf};

use crate::store::SqlValue;
use serde_json::{Map, Value, json};

use crate::error::{Error, IoContext, Result};
use crate::input::{JobSpec, Target};
use crate::job::{self, Row, State};
use crate::output::RowWriter;
use crate::store::Filter;
use crate::store::ops::scan;
use crate::store::postgres::{Location as PgLocation, PgStore};
use crate::store::{self, Access, Optional, Store, Tx};
use crate::{host, time};

mod change;
mod files;
mod list;
mod settings;
mod status;
mod submit;

pub use change::*;
pub use files::*;
pub use list::Outcome;
pub use status::*;
pub use submit::*;

/// Directories of a queue that hold per-job files.
pub const JOB_DIRS: [&str; 4] = ["stdin", "stdout", "stderr", "data"];
/// Where [`Queue::render`] sends each chunk: its bytes and the jids it holds.
pub type ChunkSink<'a> = dyn FnMut(&[u8], &[i64]) -> Result<()> + 'a;
/// The most environment (names and values) a job may be given at submit: it is stored
/// with every job, and the kernel limits a program's whole environment.
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// Rows fetched per read transaction when listing.
const CHUNK: usize = 2000;

pub struct Queue {
    dir: PathBuf,
    store: Store,
}

/// Which jobs a mode works on (`rq help selections`): the jobs any target names (jids,
/// arrays, tags, states, or all), of those only the ones every term chooses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub all: bool,
    pub states: Vec<State>,
    pub jids: Vec<i64>,
    /// Every job of these arrays.
    pub arrays: Vec<i64>,
    /// Every job with one of these tags.
    pub tags: Vec<String>,
    /// `field=value` terms every chosen job meets (alone: of all jobs).
    pub terms: Vec<crate::store::Term>,
}

impl Selection {
    pub fn from_targets(targets: &[Target]) -> Selection {
        let mut sel = Selection::default();
        for target in targets {
            match target {
                Target::All => sel.all = true,
                Target::State(s) if !sel.states.contains(s) => sel.states.push(*s),
                Target::State(_) => {}
                Target::Jid(j) => sel.jids.push(*j),
                Target::Array(a) => sel.arrays.push(*a),
                Target::Tag(t) if !sel.tags.contains(t) => sel.tags.push(t.clone()),
                Target::Tag(_) => {}
            }
        }
        sel
    }

    /// Whether no target names anything (the terms alone, if any, then choose).
    fn names_no_target(&self) -> bool {
        !self.all
            && self.states.is_empty()
            && self.jids.is_empty()
            && self.arrays.is_empty()
            && self.tags.is_empty()
    }

    /// Whether the selection chooses no job whatever the queue holds (`-` read nothing).
    pub fn is_empty(&self) -> bool {
        self.names_no_target() && self.terms.is_empty()
    }

    /// The jobs of the selection, as a filter the store writes in its SQL.
    pub fn clause(&self) -> Filter {
        let targets = if self.all
            || State::ALL.iter().all(|s| self.states.contains(s))
            || (self.names_no_target() && !self.terms.is_empty())
        {
            Filter::All
        } else {
            Filter::AnyOf {
                states: self.states.iter().map(|s| s.as_str().to_string()).collect(),
                jids: self.jids.clone(),
                arrays: self.arrays.clone(),
                tags: self.tags.clone(),
            }
        };
        if self.terms.is_empty() {
            targets
        } else {
            targets.and(Filter::Terms(self.terms.clone()))
        }
    }
}

/// A job a mode was asked to change but did not, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub jid: i64,
    pub why: String,
}

/// Resolve a queue argument to an absolute path (symlinks resolved when it exists).
pub fn resolve(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| std::path::absolute(path).unwrap_or(path.to_path_buf()))
}

/// The PostgreSQL queue a queue argument names, when it is a URL.
pub fn postgres_location(path: &Path) -> Result<Option<PgLocation>> {
    match path.to_str() {
        Some(text) if PgLocation::is_url(text) => Ok(Some(PgLocation::parse(text)?)),
        _ => Ok(None),
    }
}

/// Create a queue directory, or a queue in a PostgreSQL database; refuse a path that
/// already holds anything, or a queue name already taken.
pub fn create(path: &Path) -> Result<Value> {
    if let Some(location) = postgres_location(path)? {
        crate::store::postgres::create_queue(&location)?;
        let mut report = Map::new();
        report.insert("q".into(), json!(location.display()));
        report.insert("schema".into(), json!(location.schema()));
        return Ok(Value::Object(report));
    }
    let dir = resolve(path);
    if dir.exists() {
        let empty = dir.is_dir()
            && std::fs::read_dir(&dir)
                .context(|| format!("cannot read {}", dir.display()))?
                .next()
                .is_none();
        if !empty {
            return Err(Error::Conflict(format!(
                "{} already exists and is not empty; pick a new path",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
    let schema = dir.join("db.schema");
    std::fs::write(&schema, store::schema_file_text())
        .context(|| format!("cannot write {}", schema.display()))?;
    let mut report = Map::new();
    report.insert("q".into(), json!(dir));
    for sub in ["bin", "stdin", "stdout", "stderr", "data"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).context(|| format!("cannot create {}", p.display()))?;
    }
    std::fs::write(dir.join("doorbell"), b"")
        .context(|| format!("cannot create {}", dir.join("doorbell").display()))?;
    // The database last: its presence marks a complete queue.
    let db = dir.join("db");
    store::create_database(&db)?;
    report.insert("db".into(), json!(db));
    report.insert("schema".into(), json!(schema));
    for sub in ["bin", "stdin", "stdout", "stderr", "data"] {
        report.insert(sub.into(), json!(dir.join(sub)));
    }
    Ok(Value::Object(report))
}

impl Queue {
    pub fn open(path: &Path, access: Access) -> Result<Queue> {
        if let Some(location) = postgres_location(path)? {
            let mut store = PgStore::open(&location, access)?;
            let files = store
                .read(|tx| {
                    tx.op(crate::store::ops::attributes::GET)
                        .query_row(["files"], |r| r.get::<_, String>(0))
                        .optional()
                })?
                .map(PathBuf::from)
                .unwrap_or_default();
            if !files.as_os_str().is_empty() {
                store.doorbell_dir = Some(files.clone());
            }
            return Ok(Queue {
                dir: files,
                store: Store::Postgres(Box::new(store)),
            });
        }
        let dir = resolve(path);
        if !dir.exists() {
            return Err(Error::NoQueue { path: dir });
        }
        if !dir.is_dir() {
            return Err(Error::NotAQueue {
                path: dir,
                why: "not a directory".into(),
            });
        }
        let db = dir.join("db");
        if !db.is_file() {
            return Err(Error::NotAQueue {
                path: dir,
                why: "it has no db file; create a queue with 'rq PATH create'".into(),
            });
        }
        if access == Access::ReadWrite {
            crate::fsguard::warn_once(&dir);
        }
        let store = Store::Sqlite(Box::new(store::SqliteStore::open(&db, access)?));
        Ok(Queue { dir, store })
    }

    /// The queue's directory: its database and job files (SQLite), or the job-file
    /// directory a PostgreSQL queue was given (`configure files=DIR`; empty without).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Does this queue keep job files (stdin, data, output) in a directory?
    pub fn has_files(&self) -> bool {
        !self.dir.as_os_str().is_empty()
    }

    /// Does this queue keep its job files, heartbeats and start journals in its database
    /// (a PostgreSQL queue given no job-file directory)? See `in_database`.
    pub fn in_database(&self) -> bool {
        self.store.server_location().is_some() && !self.has_files()
    }

    /// Where this queue's feeders beat: its directory's `hosts/`, or its database.
    pub fn beat_place(&self) -> crate::liveness::BeatPlace<'_> {
        match self.store.server_location() {
            Some(location) if !self.has_files() => crate::liveness::BeatPlace::Database(location),
            _ => crate::liveness::BeatPlace::Dir(&self.dir),
        }
    }

    /// Every feeder that has beaten: its info and its heartbeat's age, on the clock
    /// heartbeats are judged by (the file server's, or the database server's).
    pub fn hosts(&mut self) -> Result<Vec<(Value, Option<f64>)>> {
        if self.in_database() {
            return self.store.read(crate::store::in_database::known_hosts);
        }
        let now = crate::liveness::server_now(&self.dir, &host::name())?;
        Ok(crate::liveness::known_hosts(&self.dir, now))
    }

    /// Where the queue is when it is kept in PostgreSQL.
    pub fn postgres_location(&self) -> Option<&PgLocation> {
        self.store.server_location()
    }

    /// How the queue is named to people: its directory or its PostgreSQL URL.
    pub fn name(&self) -> String {
        match self.store.server_location() {
            Some(location) => location.display(),
            None => self.dir.display().to_string(),
        }
    }

    /// Remove one job file (a path relative to the queue), when the queue keeps files.
    fn remove_file(&self, rel: &str) {
        if self.has_files() {
            remove_path(&self.dir.join(rel));
        }
    }

    /// For a feeder of a PostgreSQL queue: its ear for the queue's NOTIFY.
    pub fn listener(&self) -> Option<crate::store::postgres::Listener> {
        self.store.listener()
    }

    /// Wake idle feeders: the doorbell file (in the job-file directory of a PostgreSQL
    /// queue too, whose feeders watch it) and, on PostgreSQL, a NOTIFY.
    pub fn ring_doorbell(&mut self) {
        if self.has_files() {
            store::ring_doorbell(&self.dir);
        }
        self.store.notify();
    }

    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }
}

/// A raw query's SQL error is the user's: say which SQL it was.
/// A raw where-clause the database refused is the user's mistake on either store: a
/// usage error (exit 2) that says what the database said, without the statement rq
/// wrapped around the clause.
fn query_error(clause: &Filter, e: Error) -> Error {
    let Some(raw) = clause.raw() else {
        return e;
    };
    let Some(said) = crate::store::refusal(&e) else {
        return e;
    };
    Error::usage(format!(
        "query: {} (in: {})",
        crate::input::first_line(&said),
        raw
    ))
}

/// The jobs a filter chooses, by jid, as modes list them.
pub fn select_rows(tx: &Tx<'_>, filter: &Filter) -> Result<Vec<Row>> {
    let (mut stmt, params) = tx.scan(scan::EVERY, filter, &[]);
    rows_of(&mut stmt, &params)
}

/// The rows a `scan` statement reads.
pub fn rows_of(stmt: &mut crate::store::Stmt<'_>, params: &[SqlValue]) -> Result<Vec<Row>> {
    let names = field_names();
    let rows = stmt
        .query_map(crate::store::params_from_iter(params.iter()), |r| {
            r.row(&names)
        })?
        .collect::<crate::error::Result<Vec<Row>>>()?;
    Ok(rows)
}

/// Explicitly named jids that a mode did not act on: missing jobs and jobs in the wrong
/// state.
fn skipped_jids(tx: &Tx<'_>, named: &[i64], acted: &[Row], why: &str) -> Result<Vec<Skipped>> {
    let mut skipped = Vec::new();
    for &jid in named {
        if acted.iter().any(|r| r.jid() == jid) || skipped.iter().any(|s: &Skipped| s.jid == jid) {
            continue;
        }
        let state: Option<String> = tx.op(scan::STATE_OF).query_row([jid], |r| r.get(0)).ok();
        skipped.push(Skipped {
            jid,
            why: match state {
                Some(state) => format!("it is {state}: {why}"),
                None => "no such job".into(),
            },
        });
    }
    Ok(skipped)
}
