//! The queue: a directory holding the database and the jobs' files, and the data modes
//! (create, submit, list, status, query, update, delete, resubmit, touch, execute,
//! configure). File copies happen outside every transaction; files of jobs that a
//! transaction removes are deleted after it commits.

use std::path::{Path, PathBuf};

use rusqlite::types::Value as SqlValue;
use serde_json::{Map, Value, json};

use crate::error::{Error, IoContext, Result};
use crate::input::{JobSpec, Target};
use crate::job::{self, Row, State};
use crate::output::RowWriter;
use crate::query::Clause;
use crate::store::postgres::{Location as PgLocation, PgStore};
use crate::store::{self, Access, Optional, Store, Tx};
use crate::{host, time};

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

/// Which jobs a mode works on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub all: bool,
    pub states: Vec<State>,
    pub jids: Vec<i64>,
    /// Every job of these arrays.
    pub arrays: Vec<i64>,
}

impl Selection {
    pub fn from_targets(targets: &[Target]) -> Selection {
        let mut sel = Selection::default();
        for target in targets {
            match *target {
                Target::All => sel.all = true,
                Target::State(s) if !sel.states.contains(&s) => sel.states.push(s),
                Target::State(_) => {}
                Target::Jid(j) => sel.jids.push(j),
                Target::Array(a) => sel.arrays.push(a),
            }
        }
        sel
    }

    /// The jobs `targets` name; every job when they name none.
    pub fn from_targets_or_all(targets: &[Target]) -> Selection {
        if targets.is_empty() {
            Selection {
                all: true,
                ..Default::default()
            }
        } else {
            Selection::from_targets(targets)
        }
    }

    /// The selection as a where-clause. Lists are bound as one JSON array each, so any
    /// number of jids takes one parameter.
    pub fn clause(&self) -> Clause {
        if self.all || State::ALL.iter().all(|s| self.states.contains(s)) {
            return Clause {
                sql: "TRUE".into(),
                params: vec![],
                raw: false,
            };
        }
        let states: Vec<&str> = self.states.iter().map(|s| s.as_str()).collect();
        let mut sql =
            "(state IN (SELECT value FROM json_each(?)) OR jid IN (SELECT value FROM json_each(?))"
                .to_string();
        let mut params = vec![
            SqlValue::Text(serde_json::to_string(&states).unwrap_or_default()),
            SqlValue::Text(serde_json::to_string(&self.jids).unwrap_or_default()),
        ];
        if !self.arrays.is_empty() {
            sql.push_str(" OR array_id IN (SELECT value FROM json_each(?))");
            params.push(SqlValue::Text(
                serde_json::to_string(&self.arrays).unwrap_or_default(),
            ));
        }
        sql.push(')');
        Clause {
            sql,
            params,
            raw: false,
        }
    }
}

/// Options of submit, touch and resubmit that override per-job values when given.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    pub priority: Option<i64>,
    pub tag: Option<String>,
    pub hosts: Option<String>,
    pub restartable: bool,
    pub stage: bool,
    /// A file to copy as every job's stdin.
    pub stdin: Option<PathBuf>,
    /// A file or directory to copy as every job's data.
    pub data: Option<PathBuf>,
    /// Return the inserted rows (for echoing).
    pub echo: bool,
    pub timeout: Option<f64>,
    pub retries: Option<i64>,
    pub retry_delay: Option<f64>,
    /// Every job waits for these to finish with exit 0 / to end.
    pub after: Vec<crate::input::DepRef>,
    pub after_any: Vec<crate::input::DepRef>,
    /// Environment for every job (a job's own `env` adds to it and wins).
    pub env: std::collections::BTreeMap<String, String>,
    /// Not run before this timestamp.
    pub not_before: Option<String>,
    /// The jobs are one array (`--array`, `--each-line`): its id is the first jid.
    pub array: bool,
    /// At most this many of the array pending or running at once.
    pub array_limit: Option<i64>,
    /// What every job needs of its host (a job's own values are overridden).
    pub cpus: Option<i64>,
    pub mem: Option<i64>,
    pub gpus: Option<i64>,
}

/// Changes `update` makes.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub priority: Option<i64>,
    pub command: Option<String>,
    pub tag: Option<Option<String>>,
    pub hosts: Option<Option<String>>,
    pub restartable: Option<bool>,
    pub state: Option<State>,
    pub stdin: Option<PathBuf>,
    pub data: Option<PathBuf>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.priority.is_none()
            && self.command.is_none()
            && self.tag.is_none()
            && self.hosts.is_none()
            && self.restartable.is_none()
            && self.state.is_none()
            && self.stdin.is_none()
            && self.data.is_none()
    }
}

/// Where a set of jobs stands (`rq wait`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub pending: usize,
    pub holding: usize,
    pub running: usize,
    pub finished: usize,
    /// Finished with a non-zero exit or a signal.
    pub failed: usize,
    pub dead: usize,
    /// Waiting for other jobs or for their array's limit: they will run.
    pub waiting: usize,
    /// Will never run: a job they needed failed.
    pub cancelled: usize,
    /// Deleted meanwhile.
    pub gone: usize,
}

/// A job a mode was asked to change but did not, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub jid: i64,
    pub why: String,
}

/// The columns rq reads jobs with: every field, and for a waiting job, `reason` says what
/// it waits for (up to five jobs and their states, or its array's limit); for a pending
/// job not to start yet, when it starts.
pub fn columns() -> String {
    job::FIELDS
        .iter()
        .map(|f| if *f == "reason" { WAITING_REASON } else { f })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every field as stored (for RETURNING, which takes no subqueries).
pub fn stored_columns() -> String {
    job::FIELDS.join(", ")
}

const WAITING_REASON: &str = "CASE WHEN state = 'waiting' THEN coalesce(\
    (SELECT 'waits for ' || group_concat(x, ', ') \
        || CASE WHEN jobs.waiting_on > 5 THEN ' and ' || (jobs.waiting_on - 5) || ' more' ELSE '' END \
     FROM (SELECT d.dep || ' (' || coalesce(w.state, 'gone') || ')' AS x FROM deps d \
           LEFT JOIN jobs w ON w.jid = d.dep WHERE d.job = jobs.jid AND d.met = 0 \
           ORDER BY d.dep LIMIT 5)), \
    CASE WHEN array_limit IS NOT NULL THEN 'waits for a place: at most ' || array_limit \
        || ' of array ' || array_id || ' run at once' END, \
    reason) \
    WHEN state = 'pending' AND (cpus > 1 OR gpus > 0 OR mem > 0) \
         AND rq_unfit(cpus, mem, gpus) IS NOT NULL THEN rq_unfit(cpus, mem, gpus) \
    WHEN state = 'pending' AND not_before > strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
    THEN 'starts at ' || not_before ELSE reason END AS reason";

fn field_names() -> Vec<String> {
    job::FIELDS.iter().map(|s| s.to_string()).collect()
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

/// Touch the doorbell so idle feeders look at the queue now. Uses the file server's clock
/// (UTIME_NOW); a failure only delays pick-up until the next full poll.
pub fn ring_doorbell(dir: &Path) {
    let path = dir.join("doorbell");
    let now = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
    };
    // A link planted as the doorbell gets its own times set, never its target's.
    let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    if rustix::fs::utimensat(rustix::fs::CWD, &path, &now, flags).is_err() {
        let _ = crate::liveness::create_new(&path);
    }
}

impl Queue {
    pub fn open(path: &Path, access: Access) -> Result<Queue> {
        if let Some(location) = postgres_location(path)? {
            let mut store = PgStore::open(&location, access)?;
            let files = store
                .read(|tx| {
                    tx.query_row(
                        "SELECT value FROM attributes WHERE key = 'files'",
                        [],
                        |r| r.get::<_, String>(0),
                    )
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
        let store = Store::Sqlite(store::SqliteStore::open(&db, access)?);
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

    /// The directory of the job files, or why there is none.
    fn files_dir(&self) -> Result<&Path> {
        if self.has_files() {
            Ok(&self.dir)
        } else {
            Err(Error::usage(format!(
                "{} keeps no job files yet: give it a directory every host sees with \
                 'rq QUEUE configure files=DIR'",
                self.name()
            )))
        }
    }

    /// How the queue is named to people: its directory or its PostgreSQL URL.
    pub fn name(&self) -> String {
        match &self.store {
            Store::Postgres(pg) => pg.location.display(),
            Store::Sqlite(_) => self.dir.display().to_string(),
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
        match &self.store {
            Store::Postgres(pg) => Some(crate::store::postgres::Listener::start(&pg.location)),
            Store::Sqlite(_) => None,
        }
    }

    /// Wake idle feeders: the doorbell file (in the job-file directory of a PostgreSQL
    /// queue too, whose feeders watch it) and, on PostgreSQL, a NOTIFY.
    fn ring_doorbell(&mut self) {
        if self.has_files() {
            ring_doorbell(&self.dir);
        }
        if let Store::Postgres(pg) = &mut self.store {
            pg.notify();
        }
    }

    /// The space the queue's database takes: its file, or its PostgreSQL tables and
    /// indexes (0 when it cannot be read).
    pub fn size_bytes(&mut self) -> u64 {
        match &mut self.store {
            Store::Sqlite(_) => {
                std::fs::symlink_metadata(self.dir.join("db")).map_or(0, |m| m.len())
            }
            Store::Postgres(pg) => pg
                .read(|tx| {
                    tx.query_row(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .map_or(0, |n| n.max(0) as u64),
        }
    }

    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Submit the jobs of `sources`: all of them or none. The input is read three times
    /// at most, never held: once to check every job (and plan its files), once to copy
    /// the files of jobs that have any, once inside the transaction to insert the rows in
    /// batches. With `echo`, the first chunk of submitted rows is written inside the
    /// transaction (see [`Submitted`]).
    pub fn submit(
        &mut self,
        sources: &[JobSource],
        opts: &SubmitOptions,
        echo: Option<&RowWriter>,
    ) -> Result<Submitted> {
        // First pass, outside any transaction: check every job and plan its files. YAML/JSON
        // lists are parsed here once and spooled, parsed, to a local temporary file; the
        // transaction then reads that (or plain lines, which cost nothing to parse).
        let mut count = 0usize;
        let mut plan = crate::deps::Plan::default();
        let mut files = Vec::new();
        let mut to_insert = Vec::with_capacity(sources.len());
        let mut spools = Vec::new();
        for source in sources {
            let mut spool = match source {
                JobSource::File(path) if is_structured_file(path)? => {
                    let file = tempfile::NamedTempFile::new()
                        .context(|| "cannot make a temporary file".into())?;
                    Some(std::io::BufWriter::new(file))
                }
                _ => None,
            };
            read_sources(std::slice::from_ref(source), &mut |spec| {
                count += 1;
                plan.note(count - 1, &spec)?;
                if let Some(env) = &spec.env {
                    let size: usize = env
                        .iter()
                        .chain(opts.env.iter())
                        .map(|(k, v)| k.len() + v.len() + 2)
                        .sum();
                    if size > MAX_ENV_BYTES {
                        return Err(Error::input(format!(
                            "job {count}: its environment is too large ({size} bytes; at most \
                             {MAX_ENV_BYTES}); nothing was submitted"
                        )));
                    }
                }
                if let Some(problem) = crate::job::command_problem(&spec.command) {
                    return Err(Error::input(format!(
                        "job {count}: {problem}; nothing was submitted"
                    )));
                }
                if let Some(plan) = self.plan_files(&spec)? {
                    files.push((count - 1, plan));
                }
                if let Some(out) = spool.as_mut() {
                    crate::input::spool_job(out, &spec)?;
                }
                Ok(())
            })?;
            match spool {
                Some(out) => {
                    let file = out
                        .into_inner()
                        .map_err(|e| e.into_error())
                        .context(|| "cannot write the spool of parsed jobs".into())?;
                    to_insert.push(JobSource::Parsed(file.path().to_path_buf()));
                    spools.push(file);
                }
                None => to_insert.push(source.clone()),
            }
        }
        let sources = to_insert.as_slice();
        if count == 0 {
            return Ok(Submitted::default());
        }
        for (path, kind) in [
            (&opts.stdin, InputKind::Stdin),
            (&opts.data, InputKind::Data),
        ] {
            if let Some(path) = path {
                check_input(path, self.files_dir()?, kind)?;
            }
        }
        let resolved = plan.resolve()?;
        let global_waits: Vec<(crate::deps::Wait, crate::deps::Kind)> = opts
            .after
            .iter()
            .map(|d| (d, crate::deps::Kind::Ok))
            .chain(opts.after_any.iter().map(|d| (d, crate::deps::Kind::Any)))
            .map(|(d, kind)| match d {
                crate::input::DepRef::Jid(j) => Ok((crate::deps::Wait::Jid(*j), kind)),
                crate::input::DepRef::Array(a) => Ok((crate::deps::Wait::Array(*a), kind)),
                crate::input::DepRef::Name(n) => Err(Error::usage(format!(
                    "--after: '{n}' is not a jid (names are for jobs of one list: `after:` in YAML)"
                ))),
            })
            .collect::<Result<_>>()?;
        let submitter = host::name();
        let user = host::user_name();
        let cwd = std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .ok();
        let state = if opts.stage {
            State::Holding
        } else {
            State::Pending
        };
        // Jobs with files get jids reserved first, so their files are in place before the
        // rows that name them exist; a crash in between leaves only orphan files.
        // So are jobs that wait for others of the list, and arrays: their rows name jids.
        let with_files = !files.is_empty() || opts.stdin.is_some() || opts.data.is_some();
        let first_reserved =
            if with_files || !resolved.is_empty() || !global_waits.is_empty() || opts.array {
                let first = self.reserve_jids(count)?;
                if with_files && let Err(e) = self.copy_files(first, count, &files, opts) {
                    self.remove_job_files(first, count);
                    return Err(e);
                }
                Some(first)
            } else {
                None
            };
        let env_json = |own: &Option<std::collections::BTreeMap<String, String>>| {
            if opts.env.is_empty() && own.as_ref().is_none_or(|e| e.is_empty()) {
                return None;
            }
            let mut env = opts.env.clone();
            env.extend(own.iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
            serde_json::to_string(&env).ok()
        };
        let jid_list = |jids: &[i64]| {
            (!jids.is_empty()).then(|| serde_json::to_string(jids).unwrap_or_default())
        };
        let outcome = self.store.write(|tx| {
            let submitted = time::now();
            let mut batch: Vec<NewJob> = Vec::with_capacity(INSERT_BATCH);
            let mut starts: Vec<(i64, crate::deps::Start)> = Vec::new();
            let mut lookups = crate::deps::Lookups::default();
            let mut next_wait = resolved.iter().peekable();
            let mut inserted = 0usize;
            let mut first = None;
            let mut each = |spec: JobSpec| {
                if inserted + batch.len() == count {
                    return Err(changed_while_reading());
                }
                if crate::job::command_problem(&spec.command).is_some() {
                    return Err(changed_while_reading());
                }
                let index = inserted + batch.len();
                let jid = first_reserved.map(|f| f + index as i64);
                let own_waits = next_wait
                    .next_if(|(i, _)| *i == index)
                    .map(|(_, w)| w.as_slice());
                let mut job_state = state;
                let mut waiting_on = 0;
                let mut reason = None;
                let (mut after, mut after_any) = (None, None);
                if own_waits.is_some() || !global_waits.is_empty() {
                    let (Some(jid), Some(base)) = (jid, first_reserved) else {
                        return Err(changed_while_reading());
                    };
                    let waits: Vec<_> = global_waits
                        .iter()
                        .chain(own_waits.into_iter().flatten())
                        .copied()
                        .collect();
                    let start = crate::deps::start(tx, &mut lookups, index + 1, &waits, &|i| {
                        base + i as i64
                    })?;
                    after = jid_list(&start.after);
                    after_any = jid_list(&start.after_any);
                    waiting_on = start.unmet;
                    if let Some(why) = &start.failed {
                        job_state = State::Cancelled;
                        reason = Some(why.clone());
                    } else if start.unmet > 0 && state == State::Pending {
                        job_state = State::Waiting;
                    }
                    starts.push((jid, start));
                }
                // An array with a limit: only its first jobs join the claim path; the
                // others wait for a place (see the trigger `array_next`).
                if let Some(limit) = opts.array_limit
                    && job_state == State::Pending
                    && index as i64 >= limit
                {
                    job_state = State::Waiting;
                }
                let file =
                    |given: bool, dir: &str| jid.filter(|_| given).map(|j| format!("{dir}/{j}"));
                batch.push(NewJob {
                    jid,
                    priority: opts.priority.or(spec.priority).unwrap_or(0),
                    stdin: file(opts.stdin.is_some() || spec.stdin.is_some(), "stdin"),
                    data: file(opts.data.is_some() || spec.data.is_some(), "data"),
                    tag: opts.tag.clone().or_else(|| spec.tag.clone().flatten()),
                    hosts: opts.hosts.clone().or_else(|| spec.hosts.clone().flatten()),
                    restartable: opts.restartable || spec.restartable.unwrap_or(false),
                    cwd: spec.cwd.clone().or_else(|| cwd.clone()),
                    timeout: opts.timeout.or(spec.timeout),
                    retries: opts.retries.or(spec.retries).unwrap_or(0),
                    retry_delay: opts.retry_delay.or(spec.retry_delay),
                    state: job_state,
                    name: spec.name.clone(),
                    after,
                    after_any,
                    waiting_on,
                    reason,
                    array_id: first_reserved.filter(|_| opts.array),
                    array_index: spec.array_index,
                    array_limit: opts.array_limit.filter(|_| opts.array),
                    env: env_json(&spec.env),
                    not_before: opts.not_before.clone().or(spec.not_before),
                    cpus: opts.cpus.or(spec.cpus).unwrap_or(1),
                    mem: opts.mem.or(spec.mem).unwrap_or(0),
                    gpus: opts.gpus.or(spec.gpus).unwrap_or(0),
                    command: spec.command,
                });
                if batch.len() == INSERT_BATCH {
                    let last = insert_jobs(tx, &batch, &submitted, &submitter, &user)?;
                    first.get_or_insert(last - batch.len() as i64 + 1);
                    inserted += batch.len();
                    batch.clear();
                }
                Ok(())
            };
            read_sources(sources, &mut each)?;
            if !batch.is_empty() {
                let last = insert_jobs(tx, &batch, &submitted, &submitter, &user)?;
                first.get_or_insert(last - batch.len() as i64 + 1);
                inserted += batch.len();
            }
            if inserted != count {
                return Err(changed_while_reading());
            }
            for (jid, start) in &starts {
                crate::deps::record(tx, *jid, start)?;
            }
            let first = first.unwrap_or(0);
            let last = first + count as i64 - 1;
            let mut echoed = Vec::new();
            let mut echoed_rows = 0;
            if let Some(writer) = echo {
                let sql = format!(
                    "SELECT {} FROM jobs WHERE jid >= ? AND jid <= ? ORDER BY jid LIMIT {CHUNK}",
                    columns()
                );
                tx.query_each(&sql, [first, last], |row| {
                    writer.write_sql_row(echoed_rows == 0, &mut echoed, row)?;
                    echoed_rows += 1;
                    Ok(())
                })?;
            }
            Ok(Submitted {
                count,
                first,
                last,
                echoed,
                echoed_rows,
            })
        });
        match outcome {
            Ok(submitted) => {
                self.ring_doorbell();
                Ok(submitted)
            }
            Err(e) => {
                if let Some(first) = first_reserved {
                    self.remove_job_files(first, count);
                }
                Err(e)
            }
        }
    }

    fn reserve_jids(&mut self, count: usize) -> Result<i64> {
        self.store.write(|tx| {
            if tx.is_postgres() {
                // Inserts take ROW EXCLUSIVE on jobs, which this lock excludes: no jid is
                // drawn from the sequence between the two calls.
                tx.execute_batch("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")?;
                let last: i64 = tx.query_row(
                    "SELECT setval('jobs_jid_seq', nextval('jobs_jid_seq') + ? - 1)",
                    [count as i64],
                    |r| r.get(0),
                )?;
                return Ok(last - count as i64 + 1);
            }
            tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) SELECT 'jobs', coalesce((SELECT max(jid) FROM jobs), 0) \
                 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'jobs')",
                [],
            )?;
            let last: i64 = tx.query_row(
                "UPDATE sqlite_sequence SET seq = seq + ? WHERE name = 'jobs' RETURNING seq",
                [count as i64],
                |r| r.get(0),
            )?;
            Ok(last - count as i64 + 1)
        })
    }

    /// Where a job's own stdin and data come from (checked before anything is written);
    /// `None` when it names neither.
    fn plan_files(&self, spec: &JobSpec) -> Result<Option<JobFiles>> {
        if spec.stdin.is_none() && spec.data.is_none() {
            return Ok(None);
        }
        let stdin = spec.stdin.as_deref().map(|p| self.input_path(p));
        let data = spec.data.as_deref().map(|p| self.input_path(p));
        if let Some(path) = &stdin {
            check_input(path, self.files_dir()?, InputKind::Stdin)?;
        }
        if let Some(path) = &data {
            check_input(path, self.files_dir()?, InputKind::Data)?;
        }
        Ok(Some(JobFiles { stdin, data }))
    }

    /// A stdin/data path from job input: a file of this queue (`stdin/12`, as in rq's own
    /// output) when it exists here, else a path relative to the current directory.
    fn input_path(&self, text: &str) -> PathBuf {
        let in_queue = self.dir.join(text);
        let queue_relative = JOB_DIRS.iter().any(|d| text.starts_with(&format!("{d}/")));
        if queue_relative && in_queue.exists() {
            in_queue
        } else {
            PathBuf::from(text)
        }
    }

    /// Copy the files of jobs `first..first + count`: each job's own (`files`, by job
    /// index), else the ones given for every job in `opts`.
    fn copy_files(
        &self,
        first: i64,
        count: usize,
        files: &[(usize, JobFiles)],
        opts: &SubmitOptions,
    ) -> Result<()> {
        let mut shared_stdin: Option<(PathBuf, PathBuf)> = None;
        let mut own = files.iter().peekable();
        for i in 0..count {
            let jid = first + i as i64;
            let mine = own.next_if(|(index, _)| *index == i).map(|(_, f)| f);
            let stdin = mine.and_then(|f| f.stdin.as_ref()).or(opts.stdin.as_ref());
            let data = mine.and_then(|f| f.data.as_ref()).or(opts.data.as_ref());
            if let Some(src) = stdin {
                let dest = self.dir.join("stdin").join(jid.to_string());
                // One copy per distinct source; further jobs get hard links to it.
                match &shared_stdin {
                    Some((s, copy)) if s == src && std::fs::hard_link(copy, &dest).is_ok() => {}
                    _ => {
                        clear(&dest)?;
                        copy_file_new(src, &dest)?;
                        shared_stdin = Some((src.clone(), dest));
                    }
                }
            }
            if let Some(src) = data {
                let dest = self.dir.join("data").join(jid.to_string());
                copy_tree(src, &dest)?;
            }
        }
        Ok(())
    }

    fn remove_job_files(&self, first: i64, count: usize) {
        for jid in first..first + count as i64 {
            if self.has_files() {
                remove_files_of(&self.dir, jid, &[]);
            }
        }
    }

    /// Visit the selected jobs in jid order, a chunk per read transaction.
    pub fn list(
        &mut self,
        selection: &Selection,
        each: &mut dyn FnMut(Vec<Row>) -> Result<()>,
    ) -> Result<()> {
        self.scan(&selection.clause(), each)
    }

    /// Visit jobs matching a where-clause in jid order, a chunk per read transaction.
    pub fn scan(
        &mut self,
        clause: &Clause,
        each: &mut dyn FnMut(Vec<Row>) -> Result<()>,
    ) -> Result<()> {
        let mut after = 0i64;
        loop {
            let sql = format!("({}) AND jid > ? ORDER BY jid LIMIT {CHUNK}", clause.sql);
            let mut params = clause.params.clone();
            params.push(SqlValue::Integer(after));
            let rows = self.store.read(|tx| select_rows(tx, &sql, &params))?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = last.jid();
            let done = rows.len() < CHUNK;
            each(rows)?;
            if done {
                return Ok(());
            }
        }
    }

    /// Write the jobs matching a where-clause in jid order with `writer`, a chunk per read
    /// transaction; `emit` gets each chunk's bytes and jids after its transaction ended
    /// (so a slow reader of our output never holds the queue). Returns the row count.
    pub fn render(
        &mut self,
        clause: &Clause,
        writer: &RowWriter,
        emit: &mut ChunkSink<'_>,
    ) -> Result<usize> {
        self.render_after(clause, writer, 0, emit)
    }

    /// [`Queue::render`], continuing an output that has `already` rows.
    pub fn render_after(
        &mut self,
        clause: &Clause,
        writer: &RowWriter,
        already: usize,
        emit: &mut ChunkSink<'_>,
    ) -> Result<usize> {
        let sql = format!(
            "SELECT {} FROM jobs WHERE ({}) AND jid > ? ORDER BY jid LIMIT {CHUNK}",
            columns(),
            clause.sql
        );
        let mut after = 0i64;
        let mut count = already;
        let mut bytes = Vec::new();
        let mut jids = Vec::with_capacity(CHUNK);
        loop {
            let mut params = clause.params.clone();
            params.push(SqlValue::Integer(after));
            self.store.read(|tx| {
                // A retried transaction starts its chunk again.
                bytes.clear();
                jids.clear();
                tx.query_each(&sql, params.as_slice(), |row| {
                    writer.write_sql_row(count + jids.len() == 0, &mut bytes, row)?;
                    jids.push(row.get::<_, i64>(0)?);
                    Ok(())
                })
            })?;
            count += jids.len();
            if jids.len() < CHUNK {
                writer.finish(count, &mut bytes);
            }
            emit(&bytes, &jids)?;
            match jids.last() {
                Some(last) if jids.len() == CHUNK => after = *last,
                _ => return Ok(count - already),
            }
        }
    }

    /// Delete the selected jobs that are not running; their files go after the commit.
    /// Jobs that others wait for are kept (and said) unless `force`: then those others
    /// are cancelled, or stop waiting if they only waited for an end (`after_any`).
    pub fn delete(
        &mut self,
        selection: &Selection,
        force: bool,
    ) -> Result<(Vec<Row>, Vec<Skipped>)> {
        let clause = selection.clause();
        let (rows, skipped) = self.store.write(|tx| {
            let sql = format!("({}) AND state != 'running' ORDER BY jid", clause.sql);
            let mut rows = select_rows(tx, &sql, &clause.params)?;
            let deleting: std::collections::HashSet<i64> = rows.iter().map(Row::jid).collect();
            let mut waited_for = Vec::new();
            for row in &rows {
                let others: Vec<i64> = crate::deps::waiting_for(tx, row.jid())?
                    .into_iter()
                    .map(|(j, _)| j)
                    .filter(|j| !deleting.contains(j))
                    .collect();
                if !others.is_empty() {
                    waited_for.push((row.jid(), others));
                }
            }
            let mut kept = Vec::new();
            for (jid, others) in &waited_for {
                if force {
                    crate::deps::forget(tx, *jid)?;
                } else {
                    let shown: Vec<String> = others.iter().take(5).map(i64::to_string).collect();
                    let more = if others.len() > 5 { ", ..." } else { "" };
                    kept.push(Skipped {
                        jid: *jid,
                        why: format!(
                            "job{} {}{more} wait{} for it (delete those too, or use --force to cancel them)",
                            if others.len() == 1 { "" } else { "s" },
                            shown.join(", "),
                            if others.len() == 1 { "s" } else { "" },
                        ),
                    });
                }
            }
            rows.retain(|r| !kept.iter().any(|k| k.jid == r.jid()));
            let mut skipped =
                skipped_jids(tx, &selection.jids, &rows, "it is running (kill it first)")?;
            // Running jobs a state or `all` selected are not deleted either: said, not
            // passed over in silence.
            let running = format!("({}) AND state = 'running' ORDER BY jid", clause.sql);
            for row in select_rows(tx, &running, &clause.params)? {
                if !selection.jids.contains(&row.jid()) {
                    skipped.push(Skipped {
                        jid: row.jid(),
                        why: "it is running (kill it first)".into(),
                    });
                }
            }
            let mut delete = tx.prepare_cached("DELETE FROM jobs WHERE jid = ?")?;
            for row in &rows {
                delete.execute([row.jid()])?;
            }
            skipped.extend(kept);
            Ok((rows, skipped))
        })?;
        if self.has_files() {
            for row in &rows {
                remove_files_of(&self.dir, row.jid(), &paths_of(row));
            }
        }
        if !rows.is_empty() {
            self.store.reclaim_space()?;
        }
        Ok((rows, skipped))
    }

    /// Change pending/holding jobs.
    pub fn update(
        &mut self,
        selection: &Selection,
        changes: &Changes,
    ) -> Result<(Vec<Row>, Vec<Skipped>)> {
        let clause = selection.clause();
        let editable = format!(
            "({}) AND state IN ('pending', 'holding', 'waiting') ORDER BY jid",
            clause.sql
        );
        // New stdin/data files get fresh names, written before the transaction that points
        // the jobs at them; the old files are removed after it commits.
        let mut new_files: Vec<(i64, Option<String>, Option<String>)> = Vec::new();
        if let Some(path) = &changes.stdin {
            check_input(path, self.files_dir()?, InputKind::Stdin)?;
        }
        if let Some(path) = &changes.data {
            check_input(path, self.files_dir()?, InputKind::Data)?;
        }
        if changes.stdin.is_some() || changes.data.is_some() {
            let targets = self
                .store
                .read(|tx| select_rows(tx, &editable, &clause.params))?;
            let token = format!("{:08x}", rand::random::<u32>());
            for row in &targets {
                let jid = row.jid();
                let stdin = match &changes.stdin {
                    Some(src) => {
                        let rel = format!("stdin/{jid}.{token}");
                        let dest = self.dir.join(&rel);
                        clear(&dest)?;
                        copy_file_new(src, &dest)?;
                        Some(rel)
                    }
                    None => None,
                };
                let data = match &changes.data {
                    Some(src) => {
                        let rel = format!("data/{jid}.{token}");
                        copy_tree(src, &self.dir.join(&rel))?;
                        Some(rel)
                    }
                    None => None,
                };
                new_files.push((jid, stdin, data));
            }
        }
        let outcome = self.store.write(|tx| {
            let before = select_rows(tx, &editable, &clause.params)?;
            let skipped = skipped_jids(
                tx,
                &selection.jids,
                &before,
                "only pending, waiting and holding jobs can be updated",
            )?;
            let mut sets: Vec<&str> = Vec::new();
            let mut values: Vec<SqlValue> = Vec::new();
            if let Some(p) = changes.priority {
                sets.push("priority = ?");
                values.push(SqlValue::Integer(p));
            }
            if let Some(c) = &changes.command {
                sets.push("command = ?");
                values.push(SqlValue::Text(c.clone()));
            }
            if let Some(t) = &changes.tag {
                sets.push("tag = ?");
                values.push(t.clone().map_or(SqlValue::Null, SqlValue::Text));
            }
            if let Some(h) = &changes.hosts {
                sets.push("hosts = ?");
                values.push(h.clone().map_or(SqlValue::Null, SqlValue::Text));
            }
            if let Some(r) = changes.restartable {
                sets.push("restartable = ?");
                values.push(SqlValue::Integer(r as i64));
            }
            if let Some(s) = changes.state {
                sets.push("state = ?");
                values.push(SqlValue::Text(s.as_str().into()));
            }
            let mut old_files = Vec::new();
            for row in &before {
                let jid = row.jid();
                let mut row_sets = sets.clone();
                let mut row_values = values.clone();
                if let Some((_, stdin, data)) = new_files.iter().find(|(j, _, _)| *j == jid) {
                    if let Some(s) = stdin {
                        row_sets.push("stdin = ?");
                        row_values.push(SqlValue::Text(s.clone()));
                        old_files.extend(row.get("stdin").as_text().map(String::from));
                    }
                    if let Some(d) = data {
                        row_sets.push("data = ?");
                        row_values.push(SqlValue::Text(d.clone()));
                        old_files.extend(row.get("data").as_text().map(String::from));
                    }
                }
                if row_sets.is_empty() {
                    continue;
                }
                row_values.push(SqlValue::Integer(jid));
                tx.execute(
                    &format!("UPDATE jobs SET {} WHERE jid = ?", row_sets.join(", ")),
                    crate::store::params_from_iter(row_values),
                )?;
                // Released (or set pending): it still waits for its jobs and its place.
                if changes.state == Some(State::Pending) {
                    crate::deps::restate(tx, jid)?;
                }
            }
            let jids: Vec<i64> = before.iter().map(Row::jid).collect();
            let after = select_rows(
                tx,
                "jid IN (SELECT value FROM json_each(?)) ORDER BY jid",
                &[SqlValue::Text(
                    serde_json::to_string(&jids).unwrap_or_default(),
                )],
            )?;
            Ok((after, skipped, old_files))
        });
        match outcome {
            Ok((rows, skipped, old_files)) => {
                let updated: Vec<i64> = rows.iter().map(Row::jid).collect();
                for rel in old_files {
                    self.remove_file(&rel);
                }
                // New files of jobs that stopped being editable meanwhile are not used.
                for (jid, stdin, data) in &new_files {
                    if !updated.contains(jid) {
                        for rel in stdin.iter().chain(data.iter()) {
                            self.remove_file(rel);
                        }
                    }
                }
                if changes.state == Some(State::Pending) {
                    self.ring_doorbell();
                }
                Ok((rows, skipped))
            }
            Err(e) => {
                for (_, stdin, data) in &new_files {
                    for rel in stdin.iter().chain(data.iter()) {
                        self.remove_file(rel);
                    }
                }
                Err(e)
            }
        }
    }

    /// Reset jobs that are not running to pending (or holding with `stage`), in place.
    pub fn resubmit(
        &mut self,
        selection: &Selection,
        opts: &SubmitOptions,
    ) -> Result<(Vec<Row>, Vec<Skipped>)> {
        let clause = selection.clause();
        let submitter = host::name();
        let state = if opts.stage {
            State::Holding
        } else {
            State::Pending
        };
        let (rows, skipped, outputs) = self.store.write(|tx| {
            let sql = format!("({}) AND state != 'running' ORDER BY jid", clause.sql);
            let before = select_rows(tx, &sql, &clause.params)?;
            let skipped = skipped_jids(tx, &selection.jids, &before, "it is running")?;
            let now = time::now();
            let mut reset = tx.prepare_cached(
                "UPDATE jobs SET state = ?, submitted = ?, submitter = ?, started = NULL, \
                 finished = NULL, elapsed = NULL, runner = NULL, stdout = NULL, stderr = NULL, \
                 pid = NULL, exit_status = NULL, signal = NULL, attempts = 0, claim = NULL, \
                 feeder = NULL, process = NULL, timed_out = 0, retried = 0, not_before = NULL, \
                 kill_signal = NULL, reclaimed_by = NULL, reclaimed_at = NULL, priority = coalesce(?, priority), tag = coalesce(?, tag), \
                 hosts = coalesce(?, hosts), restartable = max(restartable, ?) WHERE jid = ?",
            )?;
            let mut outputs = Vec::new();
            for row in &before {
                reset.execute(rusqlite::params![
                    state.as_str(),
                    now,
                    submitter,
                    opts.priority,
                    opts.tag,
                    opts.hosts,
                    opts.restartable,
                    row.jid()
                ])?;
                crate::deps::restate(tx, row.jid())?;
                for field in ["stdout", "stderr"] {
                    outputs.extend(row.get(field).as_text().map(String::from));
                }
            }
            let jids: Vec<i64> = before.iter().map(Row::jid).collect();
            let after = select_rows(
                tx,
                "jid IN (SELECT value FROM json_each(?)) ORDER BY jid",
                &[SqlValue::Text(
                    serde_json::to_string(&jids).unwrap_or_default(),
                )],
            )?;
            Ok((after, skipped, outputs))
        })?;
        // The previous run's output would only mislead once the job is queued again.
        for rel in outputs {
            self.remove_file(&rel);
        }
        self.ring_doorbell();
        Ok((rows, skipped))
    }

    /// Submit each job unless an identical one (same command and tag) is pending; then
    /// update that one's priority/hosts/restartable instead.
    pub fn touch(&mut self, specs: &[JobSpec], opts: &SubmitOptions) -> Result<Vec<Row>> {
        if opts.stdin.is_some()
            || opts.data.is_some()
            || specs.iter().any(|s| s.stdin.is_some() || s.data.is_some())
        {
            return Err(Error::usage(
                "touch does not take stdin or data files; use submit",
            ));
        }
        if !opts.after.is_empty()
            || !opts.after_any.is_empty()
            || opts.array
            || !opts.env.is_empty()
            || opts.not_before.is_some()
            || specs.iter().any(|s| {
                !s.after.is_empty()
                    || !s.after_any.is_empty()
                    || s.name.is_some()
                    || s.env.is_some()
                    || s.not_before.is_some()
            })
        {
            return Err(Error::usage(
                "touch does not take dependencies, names, arrays, environments or start times; use submit",
            ));
        }
        let submitter = host::name();
        let user = host::user_name();
        let cwd = std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .ok();
        let state = if opts.stage {
            State::Holding
        } else {
            State::Pending
        };
        let rows = self.store.write(|tx| {
            let now = time::now();
            let mut jids = Vec::new();
            for spec in specs {
                let tag = opts.tag.clone().or_else(|| spec.tag.clone().flatten());
                let hosts = opts.hosts.clone().or_else(|| spec.hosts.clone().flatten());
                let priority = opts.priority.or(spec.priority);
                let restartable = opts.restartable || spec.restartable.unwrap_or(false);
                let twin: Option<i64> = tx
                    .query_row(
                        "SELECT jid FROM jobs WHERE state = 'pending' AND command = ? AND tag IS ? ORDER BY jid LIMIT 1",
                        rusqlite::params![spec.command, tag],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(jid) = twin {
                    tx.execute(
                        "UPDATE jobs SET priority = coalesce(?, priority), hosts = coalesce(?, hosts), \
                         restartable = max(restartable, ?) WHERE jid = ?",
                        rusqlite::params![priority, hosts, restartable, jid],
                    )?;
                    jids.push(jid);
                } else {
                    tx.execute(
                        "INSERT INTO jobs (priority, state, submitted, submitter, tag, restartable, command, hosts, cwd, user) \
                         VALUES (?,?,?,?,?,?,?,?,?,?)",
                        rusqlite::params![
                            priority.unwrap_or(0),
                            state.as_str(),
                            now,
                            submitter,
                            tag,
                            restartable,
                            spec.command,
                            hosts,
                            spec.cwd.clone().or_else(|| cwd.clone()),
                            user
                        ],
                    )?;
                    jids.push(tx.last_insert_rowid()?);
                }
            }
            select_rows(
                tx,
                "jid IN (SELECT value FROM json_each(?)) ORDER BY jid",
                &[SqlValue::Text(serde_json::to_string(&jids).unwrap_or_default())],
            )
        })?;
        self.ring_doorbell();
        Ok(rows)
    }

    /// Run SQL under the write lock; returns the rows of the statements that return rows.
    pub fn execute(&mut self, sql: &str) -> Result<Vec<Row>> {
        self.store.write(|tx| {
            let Some(conn) = tx.sqlite() else {
                return crate::store::postgres::run_script(tx, sql);
            };
            let mut rows = Vec::new();
            use fallible_iterator::FallibleIterator;
            let mut batch = rusqlite::Batch::new(conn, sql);
            while let Some(mut stmt) = batch.next()? {
                let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
                let mut result = stmt.query([])?;
                while let Some(row) = result.next()? {
                    rows.push(Row::from_sql(&crate::store::Cells::Sqlite(row), &names)?);
                }
            }
            Ok(rows)
        })
    }

    /// Run a read-only where-clause (simple or raw) and visit the matching jobs.
    pub fn query(
        &mut self,
        clause: &Clause,
        each: &mut dyn FnMut(Vec<Row>) -> Result<()>,
    ) -> Result<()> {
        self.scan(clause, each).map_err(|e| query_error(clause, e))
    }

    /// `query`, written with `writer` (see [`Queue::render`]).
    pub fn query_render(
        &mut self,
        clause: &Clause,
        writer: &RowWriter,
        emit: &mut ChunkSink<'_>,
    ) -> Result<usize> {
        self.render(clause, writer, emit)
            .map_err(|e| query_error(clause, e))
    }

    /// Ask the feeders running these jobs to signal them.
    pub fn request_kill(&mut self, jids: &[i64], signal: &str) -> Result<(Vec<Row>, Vec<Skipped>)> {
        let json = serde_json::to_string(jids).unwrap_or_default();
        let (rows, skipped) = self.store.write(|tx| {
            tx.execute(
                "UPDATE jobs SET kill_signal = ? WHERE state = 'running' AND jid IN (SELECT value FROM json_each(?))",
                rusqlite::params![signal, json],
            )?;
            let rows = select_rows(
                tx,
                "state = 'running' AND jid IN (SELECT value FROM json_each(?)) ORDER BY jid",
                &[SqlValue::Text(json.clone())],
            )?;
            let skipped = skipped_jids(tx, jids, &rows, "only running jobs can be killed")?;
            Ok((rows, skipped))
        })?;
        self.ring_doorbell();
        Ok((rows, skipped))
    }

    /// Count where the given jobs stand.
    pub fn progress(&mut self, jids: &[i64]) -> Result<Progress> {
        let json = serde_json::to_string(jids).unwrap_or_default();
        let total = jids.len();
        self.store.read(|tx| {
            let mut p = Progress::default();
            let mut stmt = tx.prepare_cached(
                "SELECT state, count(*), count(*) FILTER (WHERE exit_status IS NOT 0) FROM jobs \
                 WHERE jid IN (SELECT value FROM json_each(?)) GROUP BY state",
            )?;
            let mut rows = stmt.query([&json])?;
            let mut seen = 0usize;
            while let Some(r) = rows.next()? {
                let state: String = r.get(0)?;
                let n = r.get::<_, i64>(1)? as usize;
                seen += n;
                match state.as_str() {
                    "pending" => p.pending = n,
                    "holding" => p.holding = n,
                    "running" => p.running = n,
                    "finished" => {
                        p.finished = n;
                        p.failed = r.get::<_, i64>(2)? as usize;
                    }
                    "waiting" => p.waiting = n,
                    "cancelled" => p.cancelled = n,
                    _ => p.dead = n,
                }
            }
            p.gone = total.saturating_sub(seen);
            Ok(p)
        })
    }

    /// Set queue-wide settings (`key=value`; an empty value removes the key) and return
    /// them all.
    pub fn configure(&mut self, settings: &[(String, String)]) -> Result<Value> {
        let read_all = |tx: &Tx<'_>| -> Result<Value> {
            let mut stmt = tx.prepare("SELECT key, value FROM attributes ORDER BY key")?;
            let mut map = Map::new();
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                map.insert(
                    r.get(0)?,
                    Value::String(r.get::<_, Option<String>>(1)?.unwrap_or_default()),
                );
            }
            Ok(Value::Object(map))
        };
        if settings.is_empty() {
            return self.store.read(|tx| read_all(tx));
        }
        let files = settings.iter().rev().find(|(k, _)| k == "files");
        if let Some((_, dir)) = files {
            self.prepare_files_dir(dir)?;
        }
        let report = self.store.write(|tx| {
            // Checked as the settings will be, with the stored ones: lease and heartbeat
            // depend on each other.
            let current = read_all(tx)?;
            let keys: Vec<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
            crate::liveness::check_settings(&keys, |key| {
                match settings.iter().rev().find(|(k, _)| k == key) {
                    Some((_, v)) if v.is_empty() => None,
                    Some((_, v)) => Some(v.clone()),
                    None => current.get(key).and_then(Value::as_str).map(String::from),
                }
            })
            .map_err(|e| Error::usage(format!("configure: {e}; nothing was changed")))?;
            for (key, value) in settings {
                if value.is_empty() {
                    tx.execute("DELETE FROM attributes WHERE key = ?", [key])?;
                } else {
                    tx.execute(
                        "INSERT INTO attributes (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        [key, value],
                    )?;
                }
            }
            read_all(tx)
        })?;
        if let Some((_, dir)) = files {
            self.dir = PathBuf::from(dir);
        }
        Ok(report)
    }

    /// `configure files=DIR` (PostgreSQL queues): the directory and its job-file
    /// directories, made before the setting is stored so a stored one always exists.
    fn prepare_files_dir(&self, dir: &str) -> Result<()> {
        if matches!(self.store, Store::Sqlite(_)) {
            return Err(Error::usage(
                "configure: files= is for PostgreSQL queues; a queue directory keeps its job \
                 files in itself; nothing was changed",
            ));
        }
        if dir.is_empty() {
            return Ok(());
        }
        let path = Path::new(dir);
        if !path.is_absolute() {
            return Err(Error::usage(format!(
                "configure: files must be an absolute path every host sees, not '{dir}'; nothing was changed"
            )));
        }
        for sub in [
            "", "bin", "stdin", "stdout", "stderr", "data", "hosts", "starts",
        ] {
            let p = path.join(sub);
            std::fs::create_dir_all(&p).context(|| format!("cannot create {}", p.display()))?;
            // Never a link planted in a shared directory.
            let meta =
                std::fs::symlink_metadata(&p).context(|| format!("cannot read {}", p.display()))?;
            if !meta.is_dir() {
                return Err(Error::Conflict(format!(
                    "{} is not a directory; nothing was changed",
                    p.display()
                )));
            }
        }
        Ok(())
    }

    /// Set (`Some`) or remove (`None`) a flag that holds feeders back: `paused`, or
    /// `drain.HOST`. Returns whether it changed.
    pub fn set_flag(&mut self, key: &str, value: Option<&str>) -> Result<bool> {
        let changed = self.store.write(|tx| {
            Ok(match value {
                Some(v) => tx.execute(
                    "INSERT INTO attributes (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                    [key, v],
                )?,
                None => tx.execute("DELETE FROM attributes WHERE key = ?", [key])?,
            })
        })?;
        if changed > 0 && value.is_none() {
            // Feeders that were held back come back at once.
            self.ring_doorbell();
        }
        Ok(changed > 0)
    }

    /// One queue-wide setting.
    pub fn setting(&mut self, key: &str) -> Result<Option<String>> {
        self.store.read(|tx| {
            Ok(tx
                .query_row("SELECT value FROM attributes WHERE key = ?", [key], |r| {
                    r.get(0)
                })
                .ok())
        })
    }

    /// Counts by state (and successes/failures) of the jobs of `clause`: `status
    /// array:ID`, `status --mine`.
    pub fn status_of(&mut self, clause: &Clause) -> Result<Value> {
        self.store.read(|tx| {
            let sql = format!(
                "SELECT state, count(*), count(*) FILTER (WHERE state = 'finished' AND exit_status IS 0), \
                 count(*) FILTER (WHERE state = 'finished' AND exit_status IS NOT 0) \
                 FROM jobs WHERE {} GROUP BY state",
                clause.sql
            );
            let mut stmt = tx.prepare(&sql).map_err(|e| query_error(clause, e))?;
            let mut rows = stmt.query(crate::store::params_from_iter(clause.params.iter()))?;
            let mut counts = std::collections::HashMap::new();
            let (mut ok, mut failed) = (0i64, 0i64);
            while let Some(r) = rows.next()? {
                counts.insert(r.get::<_, String>(0)?, r.get::<_, i64>(1)?);
                ok += r.get::<_, i64>(2)?;
                failed += r.get::<_, i64>(3)?;
            }
            let mut jobs = Map::new();
            let mut total = 0;
            for state in State::ALL {
                let n = counts.get(state.as_str()).copied().unwrap_or(0);
                total += n;
                jobs.insert(state.as_str().into(), json!(n));
            }
            jobs.insert("total".into(), json!(total));
            let dead = counts.get("dead").copied().unwrap_or(0);
            Ok(json!({
                "jobs": Value::Object(jobs),
                "exit_status": {"successes": ok, "failures": failed + dead},
            }))
        })
    }

    /// The jids of the jobs of these arrays (in `state`, when given).
    pub fn array_jids(&mut self, arrays: &[i64], state: Option<&str>) -> Result<Vec<i64>> {
        self.store.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT jid FROM jobs WHERE array_id IN (SELECT value FROM json_each(?1)) \
                 AND (?2 IS NULL OR state = ?2) ORDER BY jid",
            )?;
            let jids = stmt
                .query_map(
                    rusqlite::params![serde_json::to_string(arrays).unwrap_or_default(), state],
                    |r| r.get(0),
                )?
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            Ok(jids)
        })
    }

    /// Jobs waiting to run (pending or waiting) that no live feeder can run: they need
    /// more CPUs, memory or GPUs than any has. How many, and the first few with why.
    /// Costs one index probe when no job needs more than one CPU.
    pub fn unfit(&mut self, jids: Option<&[i64]>) -> Result<(i64, Vec<(i64, String)>)> {
        let needy = "FROM jobs INDEXED BY jobs_needs WHERE (cpus > 1 OR gpus > 0 OR mem > 0) \
                     AND state IN ('pending', 'waiting') \
                     AND (?1 IS NULL OR jid IN (SELECT value FROM json_each(?1)))";
        let filter = jids.map(|j| serde_json::to_string(j).unwrap_or_default());
        let any: bool = self.store.read(|tx| {
            tx.query_row(
                &format!("SELECT EXISTS (SELECT 1 {needy})"),
                [&filter],
                |r| r.get(0),
            )
        })?;
        if !any {
            return Ok((0, Vec::new()));
        }
        let largest = self.largest_live()?;
        crate::liveness::set_largest_live(largest.clone());
        let Some(largest) = largest else {
            return Ok((0, Vec::new()));
        };
        self.store.read(|tx| {
            let mut stmt = tx.prepare(&format!(
                "SELECT jid, cpus, mem, gpus {needy} AND (cpus > ?2 OR mem > ?3 OR gpus > ?4) ORDER BY jid"
            ))?;
            let mut rows = stmt.query(rusqlite::params![
                filter,
                largest.cpus,
                largest.mem,
                largest.devices.len() as i64
            ])?;
            let (mut count, mut some) = (0i64, Vec::new());
            while let Some(r) = rows.next()? {
                count += 1;
                if some.len() < 5 {
                    let (jid, cpus, mem, gpus): (i64, i64, i64, i64) =
                        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                    if let Some(why) = crate::liveness::unfit_reason(cpus, mem, gpus, &largest) {
                        some.push((jid, why));
                    }
                }
            }
            Ok((count, some))
        })
    }

    /// The largest live feeder (see `liveness::largest_live`).
    fn largest_live(&mut self) -> Result<Option<crate::claims::Capacity>> {
        let lease = self
            .setting("lease")?
            .and_then(|v| time::parse_duration(&v))
            .unwrap_or(crate::liveness::Settings::default().lease);
        if !self.has_files() {
            return Ok(None);
        }
        crate::liveness::largest_live(&self.dir, lease)
    }

    /// The status report.
    pub fn status(&mut self, exit_codes: &[(String, Vec<i64>)]) -> Result<Value> {
        let now = time::now_ts();
        let hour_marks: Vec<(i64, String)> = [1i64, 12, 24]
            .iter()
            .map(|h| (*h, time::format(now - jiff::SignedDuration::from_hours(*h))))
            .collect();
        self.store.read(|tx| {
            // Counts and run-time sums come from `job_counts`, which triggers keep in step
            // with every change: no scan, however many jobs there are.
            let mut counts = std::collections::HashMap::new();
            let mut stmt = tx.prepare_cached("SELECT state, n, elapsed_n, elapsed_sum, ok FROM job_counts")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let state: String = r.get(0)?;
                let row: (i64, i64, f64, i64) = (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
                counts.insert(state, row);
            }
            drop(rows);
            let count = |state: State| counts.get(state.as_str()).copied().unwrap_or((0, 0, 0.0, 0));
            let mut jobs = Map::new();
            let mut total = 0i64;
            for state in State::ALL {
                let n = count(state).0;
                total += n;
                jobs.insert(state.as_str().into(), json!(n));
            }
            jobs.insert("total".into(), json!(total));

            let mut temporal = Map::new();
            for state in State::ALL {
                let (min, max) = match state {
                    // Newest and oldest by submit time: a look at each priority's ends of the
                    // claim index (state, priority, submitted, jid).
                    State::Pending | State::Holding | State::Waiting => waiting_ends(tx, state)?,
                    State::Cancelled => (None, None),
                    State::Running => (
                        first_row(tx, "SELECT jid, started FROM jobs WHERE state = 'running' AND started IS NOT NULL ORDER BY started DESC LIMIT 1")?,
                        first_row(tx, "SELECT jid, started FROM jobs WHERE state = 'running' AND started IS NOT NULL ORDER BY started ASC LIMIT 1")?,
                    ),
                    // The partial index's ends.
                    State::Finished => (
                        first_row(tx, "SELECT jid, elapsed FROM jobs INDEXED BY jobs_finished_elapsed WHERE state = 'finished' \
                             AND elapsed IS NOT NULL ORDER BY elapsed ASC LIMIT 1")?,
                        first_row(tx, "SELECT jid, elapsed FROM jobs INDEXED BY jobs_finished_elapsed WHERE state = 'finished' \
                             AND elapsed IS NOT NULL ORDER BY elapsed DESC LIMIT 1")?,
                    ),
                    State::Dead => (
                        first_row(tx, "SELECT jid, elapsed FROM jobs WHERE state = 'dead' AND elapsed IS NOT NULL ORDER BY elapsed ASC LIMIT 1")?,
                        first_row(tx, "SELECT jid, elapsed FROM jobs WHERE state = 'dead' AND elapsed IS NOT NULL ORDER BY elapsed DESC LIMIT 1")?,
                    ),
                };
                let seconds = |found: Option<(i64, SqlValue)>| -> Option<(i64, f64)> {
                    match found? {
                        (jid, SqlValue::Real(secs)) => Some((jid, secs)),
                        (jid, SqlValue::Integer(secs)) => Some((jid, secs as f64)),
                        (jid, SqlValue::Text(stamp)) => {
                            time::parse(&stamp).map(|t| (jid, time::seconds_between(t, now)))
                        }
                        _ => None,
                    }
                };
                if let (Some(min), Some(max)) = (seconds(min), seconds(max)) {
                    temporal.insert(
                        state.as_str().into(),
                        json!({"min": {min.0.to_string(): time::hms(min.1)}, "max": {max.0.to_string(): time::hms(max.1)}}),
                    );
                }
            }

            let (_, elapsed_n, elapsed_sum, successes) = count(State::Finished);
            let avg = (elapsed_n > 0).then(|| elapsed_sum / elapsed_n as f64);
            let finished_failures = count(State::Finished).0 - successes;
            let mut recent = Map::new();
            for (hours, since) in &hour_marks {
                let n: i64 = tx.query_row(
                    "SELECT count(*) FROM jobs INDEXED BY jobs_ended_at WHERE state IN ('finished', 'dead') AND finished > ?",
                    [since],
                    |r| r.get(0),
                )?;
                recent.insert(hours.to_string(), json!(n));
            }
            let dead = jobs.get("dead").and_then(Value::as_i64).unwrap_or(0);
            let failures = finished_failures + dead;
            let mut exit = Map::new();
            exit.insert("successes".into(), json!(successes));
            exit.insert("failures".into(), json!(failures));
            for (name, codes) in exit_codes {
                let n: i64 = tx.query_row(
                    "SELECT count(*) FROM jobs INDEXED BY jobs_finished_elapsed WHERE state = 'finished' AND exit_status IN (SELECT value FROM json_each(?))",
                    [serde_json::to_string(codes).unwrap_or_default()],
                    |r| r.get(0),
                )?;
                exit.insert(name.clone(), json!(n));
            }

            let mut runners = Map::new();
            let mut stmt = tx.prepare(
                "SELECT runner, count(*) FROM jobs WHERE state = 'running' GROUP BY runner ORDER BY runner",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let host: Option<String> = r.get(0)?;
                runners.insert(host.unwrap_or_else(|| "?".into()), json!(r.get::<_, i64>(1)?));
            }

            let mut report = Map::new();
            report.insert("jobs".into(), Value::Object(jobs));
            report.insert("temporal".into(), Value::Object(temporal));
            report.insert(
                "performance".into(),
                json!({
                    "avg_time_per_job": avg.map(time::hms),
                    "n_jobs_in_last_hrs": Value::Object(recent),
                }),
            );
            report.insert("exit_status".into(), Value::Object(exit));
            report.insert("running_per_host".into(), Value::Object(runners));
            // Feeders held back: the whole queue, or some hosts.
            let mut stmt = tx.prepare_cached(
                "SELECT key, value FROM attributes WHERE key = 'paused' OR (key > 'drain.' AND key < 'drain/') ORDER BY key",
            )?;
            let mut rows = stmt.query([])?;
            let mut drained = Map::new();
            while let Some(r) = rows.next()? {
                let key: String = r.get(0)?;
                let value: String = r.get(1)?;
                match key.strip_prefix("drain.") {
                    Some(host) => {
                        drained.insert(host.to_string(), json!(value));
                    }
                    None => {
                        report.insert("paused".into(), json!(value));
                    }
                }
            }
            if !drained.is_empty() {
                report.insert("draining".into(), Value::Object(drained));
            }
            Ok(Value::Object(report))
        })
    }
}

struct JobFiles {
    stdin: Option<PathBuf>,
    data: Option<PathBuf>,
}

/// Where the jobs of one submit come from, read in this order.
#[derive(Debug, Clone)]
pub enum JobSource {
    /// A job given on the command line.
    Job(JobSpec),
    /// A job list: one command per line, or YAML/JSON.
    File(PathBuf),
    /// Jobs already parsed and checked, spooled by `submit` (see `input::spool_job`).
    Parsed(PathBuf),
    /// One job per index (`--array`); `subst`: `{}` in the command becomes the index.
    Array {
        spec: JobSpec,
        array: crate::input::ArraySpec,
        subst: bool,
    },
    /// One job per line of a file (`--each-line`), the line in `RQ_ITEM`.
    EachLine {
        spec: JobSpec,
        path: PathBuf,
        subst: bool,
    },
}

/// Whether a job list file is YAML/JSON (worth parsing only once).
fn is_structured_file(path: &Path) -> Result<bool> {
    let file =
        std::fs::File::open(path).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    crate::input::is_structured_list(std::io::BufReader::new(file))
}

/// Read every job of `sources`, in order, handing each to `each`.
pub fn read_sources(
    sources: &[JobSource],
    each: &mut dyn FnMut(JobSpec) -> Result<()>,
) -> Result<()> {
    for source in sources {
        match source {
            JobSource::Job(spec) => each(spec.clone())?,
            JobSource::File(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
                crate::input::read_jobs(std::io::BufReader::with_capacity(1 << 16, file), each)?;
            }
            JobSource::Parsed(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
                crate::input::read_spooled(std::io::BufReader::with_capacity(1 << 16, file), each)?;
            }
            JobSource::Array { spec, array, subst } => {
                for index in array.indices() {
                    let mut job = spec.clone();
                    if *subst {
                        job.command = crate::input::substitute(&spec.command, &index.to_string());
                    }
                    job.array_index = Some(index);
                    each(job)?;
                }
            }
            JobSource::EachLine { spec, path, subst } => {
                let file = std::fs::File::open(path)
                    .map_err(|e| Error::input(format!("--each-line: {}: {e}", path.display())))?;
                let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
                let mut line = String::new();
                let mut number = 0i64;
                loop {
                    line.clear();
                    number += 1;
                    let n = std::io::BufRead::read_line(&mut reader, &mut line).map_err(|e| {
                        Error::input(format!(
                            "--each-line: {}: line {number}: {e}",
                            path.display()
                        ))
                    })?;
                    if n == 0 {
                        break;
                    }
                    let item = line.trim_end_matches(['\n', '\r']);
                    if item.trim().is_empty() {
                        continue;
                    }
                    if item.contains('\0') {
                        return Err(Error::input(format!(
                            "--each-line: {}: line {number} holds a NUL byte",
                            path.display()
                        )));
                    }
                    let mut job = spec.clone();
                    if *subst {
                        job.command = crate::input::substitute(&spec.command, item);
                    }
                    job.array_index = Some(number);
                    job.env = Some(std::collections::BTreeMap::from([(
                        "RQ_ITEM".to_string(),
                        item.to_string(),
                    )]));
                    each(job)?;
                }
            }
        }
    }
    Ok(())
}

/// What a submit did: jids `first..=last` (consecutive: one transaction took them all),
/// and, when asked, the first `echoed_rows` of them as written inside the transaction.
#[derive(Debug, Default)]
pub struct Submitted {
    pub count: usize,
    pub first: i64,
    pub last: i64,
    pub echoed: Vec<u8>,
    pub echoed_rows: usize,
}

/// Rows per INSERT statement when submitting: fewer statements (each also updates the
/// jid sequence) for the cost of one long statement text.
const INSERT_BATCH: usize = 64;

/// One row to insert; the columns all jobs of a submit share are passed apart.
struct NewJob {
    jid: Option<i64>,
    priority: i64,
    stdin: Option<String>,
    data: Option<String>,
    tag: Option<String>,
    restartable: bool,
    command: String,
    hosts: Option<String>,
    cwd: Option<String>,
    timeout: Option<f64>,
    retries: i64,
    retry_delay: Option<f64>,
    state: State,
    name: Option<String>,
    after: Option<String>,
    after_any: Option<String>,
    waiting_on: i64,
    reason: Option<String>,
    array_id: Option<i64>,
    array_index: Option<i64>,
    array_limit: Option<i64>,
    env: Option<String>,
    not_before: Option<String>,
    cpus: i64,
    mem: i64,
    gpus: i64,
}

/// Insert a batch of jobs with one statement; returns the last jid.
fn insert_jobs(
    tx: &Tx<'_>,
    batch: &[NewJob],
    submitted: &str,
    submitter: &str,
    user: &str,
) -> Result<i64> {
    use rusqlite::ToSql;
    let row = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
    let sql = format!(
        "INSERT INTO jobs (jid, priority, state, submitted, submitter, stdin, data, tag, \
         restartable, command, hosts, cwd, timeout, retries, retry_delay, user, name, after, \
         after_any, waiting_on, reason, array_id, array_index, array_limit, env, not_before, \
         cpus, mem, gpus) VALUES {}",
        vec![row; batch.len()].join(",")
    );
    let mut insert = tx.prepare_cached(&sql)?;
    let states: Vec<&str> = batch.iter().map(|job| job.state.as_str()).collect();
    let mut params: Vec<&dyn ToSql> = Vec::with_capacity(batch.len() * 29);
    for (job, state) in batch.iter().zip(&states) {
        params.extend_from_slice(&[
            &job.jid as &dyn ToSql,
            &job.priority,
            state,
            &submitted,
            &submitter,
            &job.stdin,
            &job.data,
            &job.tag,
            &job.restartable,
            &job.command,
            &job.hosts,
            &job.cwd,
            &job.timeout,
            &job.retries,
            &job.retry_delay,
            &user,
            &job.name,
            &job.after,
            &job.after_any,
            &job.waiting_on,
            &job.reason,
            &job.array_id,
            &job.array_index,
            &job.array_limit,
            &job.env,
            &job.not_before,
            &job.cpus,
            &job.mem,
            &job.gpus,
        ]);
    }
    if let Tx::Postgres(pg) = tx {
        // PostgreSQL takes rows fastest by COPY (one message for the whole batch).
        const COLUMNS: &str = "jid, priority, state, submitted, submitter, stdin, data, tag, \
             restartable, command, hosts, cwd, timeout, retries, retry_delay, user, name, \
             after, after_any, waiting_on, reason, array_id, array_index, array_limit, env, \
             not_before, cpus, mem, gpus";
        crate::store::postgres::copy_in(*pg, "jobs", COLUMNS, &params, 29)?;
    } else {
        insert.execute(params.as_slice())?;
    }
    tx.last_insert_rowid()
}

fn changed_while_reading() -> Error {
    Error::input("the job list changed while it was being submitted; nothing was submitted")
}

/// A job named in `status`'s temporal report: its jid and the value shown for it.
pub(crate) type Named = Option<(i64, SqlValue)>;

/// The first row of a two-column query (jid, value), if any.
fn first_row(tx: &Tx<'_>, sql: &str) -> Result<Named> {
    let mut stmt = tx.prepare_cached(sql)?;
    let mut rows = stmt.query([])?;
    match rows.next()? {
        Some(r) => Ok(Some((r.get(0)?, r.get(1)?))),
        None => Ok(None),
    }
}

/// The most recently and the earliest submitted job waiting in `state` (pending or
/// holding), each as (jid, submitted). The claim index orders by priority first, so this
/// visits each distinct priority (a skip-scan: a few index look-ups per priority); with
/// more priorities than that is worth, it scans the state's jobs instead.
pub(crate) fn waiting_ends(tx: &Tx<'_>, state: State) -> Result<(Named, Named)> {
    const MAX_PRIORITIES: usize = 64;
    let state = state.as_str();
    // Two statements: `(?2 IS NULL OR priority < ?2)` would cost the index range.
    let mut highest = tx.prepare_cached(
        "SELECT priority FROM jobs WHERE state = ?1 ORDER BY priority DESC LIMIT 1",
    )?;
    let mut next_below = tx.prepare_cached(
        "SELECT priority FROM jobs WHERE state = ?1 AND priority < ?2 ORDER BY priority DESC LIMIT 1",
    )?;
    let mut priorities: Vec<i64> = Vec::new();
    while priorities.len() <= MAX_PRIORITIES {
        let found = match priorities.last() {
            None => highest.query_row([state], |r| r.get(0)),
            Some(p) => next_below.query_row(rusqlite::params![state, p], |r| r.get(0)),
        };
        match found {
            Ok(p) => priorities.push(p),
            Err(Error::Sql(rusqlite::Error::QueryReturnedNoRows)) => break,
            Err(e) => return Err(e),
        }
    }
    let end = |sql: &str, priority: Option<i64>| -> Result<Option<(String, i64)>> {
        let mut stmt = tx.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params![state, priority])?;
        Ok(match rows.next()? {
            Some(r) => Some((r.get(1)?, r.get(0)?)),
            None => None,
        })
    };
    let (newest, oldest) = if priorities.len() > MAX_PRIORITIES {
        (
            end(
                "SELECT jid, submitted FROM jobs WHERE state = ?1 AND ?2 IS NULL ORDER BY submitted DESC, jid DESC LIMIT 1",
                None,
            )?,
            end(
                "SELECT jid, submitted FROM jobs WHERE state = ?1 AND ?2 IS NULL ORDER BY submitted, jid LIMIT 1",
                None,
            )?,
        )
    } else {
        let mut newest: Option<(String, i64)> = None;
        let mut oldest: Option<(String, i64)> = None;
        for priority in priorities {
            let last = end(
                "SELECT jid, submitted FROM jobs WHERE state = ?1 AND priority = ?2 ORDER BY submitted DESC, jid DESC LIMIT 1",
                Some(priority),
            )?;
            let first = end(
                "SELECT jid, submitted FROM jobs WHERE state = ?1 AND priority = ?2 ORDER BY submitted, jid LIMIT 1",
                Some(priority),
            )?;
            newest = newest.max(last);
            oldest = match (oldest, first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        (newest, oldest)
    };
    let as_row = |end: Option<(String, i64)>| end.map(|(stamp, jid)| (jid, SqlValue::Text(stamp)));
    Ok((as_row(newest), as_row(oldest)))
}

/// A raw query's SQL error is the user's: say which SQL it was.
fn query_error(clause: &Clause, e: Error) -> Error {
    match e {
        Error::Sql(err) if clause.raw => Error::usage(format!(
            "query: {} (in: {})",
            crate::input::first_line(&err.to_string()),
            clause.sql
        )),
        other => other,
    }
}

/// Rows of `jobs` matching a where-clause (which may carry its own ORDER BY / LIMIT).
pub fn select_rows(tx: &Tx<'_>, where_sql: &str, params: &[SqlValue]) -> Result<Vec<Row>> {
    let sql = format!("SELECT {} FROM jobs WHERE {where_sql}", columns());
    let mut stmt = tx.prepare_cached(&sql)?;
    let names = field_names();
    let rows = stmt
        .query_map(crate::store::params_from_iter(params.iter()), |r| {
            Row::from_sql(r, &names)
        })?
        .collect::<rusqlite::Result<Vec<Row>>>()?;
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
        let state: Option<String> = tx
            .query_row("SELECT state FROM jobs WHERE jid = ?", [jid], |r| r.get(0))
            .ok();
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

fn paths_of(row: &Row) -> Vec<String> {
    JOB_DIRS
        .iter()
        .filter_map(|f| row.get(f).as_text().map(String::from))
        .collect()
}

/// Remove a job's files: the paths its row names and the conventional `<dir>/<jid>`.
pub fn remove_files_of(dir: &Path, jid: i64, named: &[String]) {
    for rel in named {
        remove_path(&dir.join(rel));
    }
    for sub in JOB_DIRS {
        remove_path(&dir.join(sub).join(jid.to_string()));
    }
}

/// Remove a file or directory tree; missing is fine (NFS may also leave `.nfs*` files
/// behind for open files, which their last close removes).
pub fn remove_path(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Most a job's data may hold: it is copied into the queue (on NFS: over the network)
/// once per job. Larger inputs belong on the shared filesystem, named in the command.
pub const MAX_DATA_BYTES: u64 = 1 << 30;
pub const MAX_DATA_ENTRIES: u64 = 100_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum InputKind {
    Stdin,
    Data,
}

/// Refuse a job input that cannot be copied sensibly, before anything is copied: one
/// that does not exist; a FIFO, device or socket (reading one would hang or never end)
/// anywhere in it; the queue itself or a directory holding it (the copy would copy
/// itself); a path inside the queue other than a job's own stdin/data (as rq's output
/// names them); and data larger than MAX_DATA_BYTES or MAX_DATA_ENTRIES.
fn check_input(path: &Path, queue_dir: &Path, kind: InputKind) -> Result<()> {
    let what = if kind == InputKind::Stdin {
        "stdin"
    } else {
        "data"
    };
    let refuse = |why: String| Err(Error::input(format!("{what} {}: {why}", path.display())));
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(_) => return refuse("no such file".into()),
    };
    if kind == InputKind::Stdin && !meta.is_file() {
        return refuse("must be a regular file".into());
    }
    if let (Ok(src), Ok(queue)) = (path.canonicalize(), queue_dir.canonicalize()) {
        if queue.starts_with(&src) {
            return refuse(format!("holds the queue {} itself", queue.display()));
        }
        let job_file = JOB_DIRS
            .iter()
            .filter(|d| matches!(**d, "stdin" | "data"))
            .any(|d| src.starts_with(queue.join(d)) && src != queue.join(d));
        if src.starts_with(&queue) && !job_file {
            return refuse("is inside the queue directory".into());
        }
    }
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut pending = vec![path.to_path_buf()];
    let mut first = true;
    while let Some(p) = pending.pop() {
        // The top is followed if it is a link; inside, links are copied as links.
        let meta = if first {
            std::fs::metadata(&p)
        } else {
            std::fs::symlink_metadata(&p)
        }
        .context(|| format!("cannot read {}", p.display()))?;
        first = false;
        entries += 1;
        let kind = meta.file_type();
        if kind.is_dir() {
            for entry in std::fs::read_dir(&p).context(|| format!("cannot read {}", p.display()))? {
                pending.push(
                    entry
                        .context(|| format!("cannot read {}", p.display()))?
                        .path(),
                );
            }
        } else if kind.is_file() {
            bytes += meta.len();
        } else if !kind.is_symlink() {
            return Err(Error::input(format!(
                "{what} {}: {} is not a regular file or directory (a FIFO, device or socket)",
                path.display(),
                p.display()
            )));
        }
        if bytes > MAX_DATA_BYTES || entries > MAX_DATA_ENTRIES {
            return refuse(format!(
                "is too big to copy into the queue for each job (at most {} MiB in {MAX_DATA_ENTRIES} \
                 files); leave it on the shared filesystem and name it in the command",
                MAX_DATA_BYTES >> 20
            ));
        }
    }
    Ok(())
}

/// Copy a file, or a directory recursively (symlinks copied as links), to `dest` in a
/// queue. Whatever is at `dest` already (a link someone planted under the next jid, a
/// leftover of a crash) is removed first, never followed, and every file and directory
/// of the copy is created new: nothing outside the queue is written through it.
pub fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    clear(dest)?;
    copy_new(src, dest)
}

/// Remove what is at `path` (a link itself, not its target).
fn clear(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
    .context(|| format!("cannot remove {}", path.display()))
}

fn copy_new(src: &Path, dest: &Path) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(src).context(|| format!("cannot read {}", src.display()))?;
    if meta.file_type().is_symlink() {
        let target =
            std::fs::read_link(src).context(|| format!("cannot read {}", src.display()))?;
        std::os::unix::fs::symlink(target, dest)
            .context(|| format!("cannot create {}", dest.display()))?;
    } else if meta.is_dir() {
        std::fs::create_dir(dest).context(|| format!("cannot create {}", dest.display()))?;
        for entry in std::fs::read_dir(src).context(|| format!("cannot read {}", src.display()))? {
            let entry = entry.context(|| format!("cannot read {}", src.display()))?;
            copy_new(&entry.path(), &dest.join(entry.file_name()))?;
        }
    } else if meta.is_file() {
        copy_file_new(src, dest)?;
    } else {
        return Err(Error::input(format!(
            "{} is not a regular file or directory",
            src.display()
        )));
    }
    Ok(())
}

/// Copy a regular file to a new file `dest` (O_EXCL, O_NOFOLLOW), with its permissions.
pub fn copy_file_new(src: &Path, dest: &Path) -> Result<()> {
    let context = || format!("cannot copy {} to {}", src.display(), dest.display());
    let mut from = std::fs::File::open(src).context(context)?;
    let mut to = crate::liveness::create_new(dest).context(context)?;
    std::io::copy(&mut from, &mut to).context(context)?;
    if let Ok(meta) = from.metadata() {
        let _ = to.set_permissions(meta.permissions());
    }
    Ok(())
}
