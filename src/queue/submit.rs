//! `submit` and `touch`: job lists in, checked whole, files copied before the transaction,
//! rows inserted in batches inside one transaction (all or nothing).

use super::*;
use crate::store::ops::jobs as op;

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

pub(super) struct JobFiles {
    pub(super) stdin: Option<PathBuf>,
    pub(super) data: Option<PathBuf>,
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
pub(super) fn is_structured_file(path: &Path) -> Result<bool> {
    let file =
        std::fs::File::open(path).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    let guarded = crate::input::LineGuard::new(
        file,
        path.display().to_string(),
        crate::input::MAX_LIST_LINE,
    );
    crate::input::is_structured_list(std::io::BufReader::new(guarded))
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
                let guarded = crate::input::LineGuard::new(
                    file,
                    path.display().to_string(),
                    crate::input::MAX_LIST_LINE,
                );
                crate::input::read_jobs(std::io::BufReader::with_capacity(1 << 16, guarded), each)?;
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
                // An item goes into the command and the environment: at most a command's
                // length, and no NUL (the guard stops there, whatever the file is).
                let guarded = crate::input::LineGuard::new(
                    file,
                    format!("--each-line: {}", path.display()),
                    crate::job::MAX_COMMAND_BYTES,
                );
                let mut reader = std::io::BufReader::with_capacity(1 << 16, guarded);
                let mut line = String::new();
                let mut number = 0i64;
                loop {
                    line.clear();
                    number += 1;
                    let n = std::io::BufRead::read_line(&mut reader, &mut line).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            crate::input::guard_error(e)
                        } else {
                            Error::input(format!(
                                "--each-line: {}: line {number}: {e}",
                                path.display()
                            ))
                        }
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

pub(super) fn changed_while_reading() -> Error {
    Error::input("the job list changed while it was being submitted; nothing was submitted")
}

/// Most a job's data may hold: it is copied into the queue (on NFS: over the network)
/// once per job. Larger inputs belong on the shared filesystem, named in the command.
pub const MAX_DATA_BYTES: u64 = 1 << 30;

pub const MAX_DATA_ENTRIES: u64 = 100_000;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum InputKind {
    Stdin,
    Data,
}

/// Each of `count` jobs' stdin and data sources, by job index: its own (`files`), else
/// the ones given for every job in `opts`.
fn inputs_of_each<'a>(
    count: usize,
    files: &'a [(usize, JobFiles)],
    opts: &'a SubmitOptions,
) -> impl Iterator<Item = (usize, Option<&'a PathBuf>, Option<&'a PathBuf>)> {
    let mut own = files.iter().peekable();
    (0..count).map(move |i| {
        let mine = own.next_if(|(index, _)| *index == i).map(|(_, f)| f);
        let stdin = mine.and_then(|f| f.stdin.as_ref()).or(opts.stdin.as_ref());
        let data = mine.and_then(|f| f.data.as_ref()).or(opts.data.as_ref());
        (i, stdin, data)
    })
}

/// Refuse a job input that cannot be copied sensibly, before anything is copied: one
/// that does not exist; a FIFO, device or socket (reading one would hang or never end)
/// anywhere in it; the queue itself or a directory holding it (the copy would copy
/// itself); a path inside the queue other than a job's own stdin/data (as rq's output
/// names them); and data larger than MAX_DATA_BYTES or MAX_DATA_ENTRIES.
pub(super) fn check_input(path: &Path, queue_dir: &Path, kind: InputKind) -> Result<()> {
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

impl Queue {
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
        let checked = self.check_jobs(sources, opts)?;
        if checked.count == 0 {
            return Ok(Submitted::default());
        }
        for (path, kind) in [
            (&opts.stdin, InputKind::Stdin),
            (&opts.data, InputKind::Data),
        ] {
            if let Some(path) = path {
                check_input(path, &self.dir, kind)?;
            }
        }
        let waits = checked.plan.resolve()?;
        let mut rows = NewRows::new(opts, global_waits(opts)?);
        // Jobs with files get jids reserved first, so their files are in place before the
        // rows that name them exist; a crash in between leaves only orphan files.
        // So are jobs that wait for others of the list, and arrays: their rows name jids.
        let count = checked.count;
        let with_files = !checked.files.is_empty() || opts.stdin.is_some() || opts.data.is_some();
        if with_files || !waits.is_empty() || !rows.global_waits.is_empty() || opts.array {
            let first = self.reserve_jids(count)?;
            if with_files && let Err(e) = self.copy_files(first, count, &checked.files, opts) {
                self.remove_job_files(first, count);
                return Err(e);
            }
            rows.first_reserved = Some(first);
        }
        let outcome = self.store.write(|tx| {
            let (first, last) = rows.insert(tx, &checked.sources, count, &waits)?;
            let (echoed, echoed_rows) = match echo {
                Some(writer) => echo_first_chunk(tx, first, last, writer)?,
                None => (Vec::new(), 0),
            };
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
                self.store.refresh_statistics(count);
                self.ring_doorbell();
                Ok(submitted)
            }
            Err(e) => {
                if let Some(first) = rows.first_reserved {
                    self.remove_job_files(first, count);
                }
                Err(e)
            }
        }
    }

    /// The first pass, outside any transaction: check every job and plan its files. YAML
    /// and JSON lists are parsed here once and spooled, parsed, to a local temporary file;
    /// the transaction then reads that (or plain lines, which cost nothing to parse).
    fn check_jobs(&mut self, sources: &[JobSource], opts: &SubmitOptions) -> Result<Checked> {
        let mut checked = Checked::default();
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
                checked.count += 1;
                let count = checked.count;
                checked.plan.note(count - 1, &spec)?;
                check_job(count, &spec, opts)?;
                if let Some(plan) = self.plan_files(&spec)? {
                    checked.files.push((count - 1, plan));
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
                    checked
                        .sources
                        .push(JobSource::Parsed(file.path().to_path_buf()));
                    checked.spools.push(file);
                }
                None => checked.sources.push(source.clone()),
            }
        }
        Ok(checked)
    }

    pub(super) fn reserve_jids(&mut self, count: usize) -> Result<i64> {
        self.store.write(|tx| {
            tx.op(op::RESERVE_JIDS_PREPARE).execute_batch()?;
            let last: i64 = tx
                .op(op::RESERVE_JIDS)
                .query_row([count as i64], |r| r.get(0))?;
            Ok(last - count as i64 + 1)
        })
    }

    /// Where a job's own stdin and data come from (checked before anything is written);
    /// `None` when it names neither.
    pub(super) fn plan_files(&self, spec: &JobSpec) -> Result<Option<JobFiles>> {
        if spec.stdin.is_none() && spec.data.is_none() {
            return Ok(None);
        }
        let stdin = spec.stdin.as_deref().map(|p| self.input_path(p));
        let data = spec.data.as_deref().map(|p| self.input_path(p));
        if let Some(path) = &stdin {
            check_input(path, &self.dir, InputKind::Stdin)?;
        }
        if let Some(path) = &data {
            check_input(path, &self.dir, InputKind::Data)?;
        }
        Ok(Some(JobFiles { stdin, data }))
    }

    /// A stdin/data path from job input: a file of this queue (`stdin/12`, as in rq's own
    /// output) when it exists here, else a path relative to the current directory.
    pub(super) fn input_path(&self, text: &str) -> PathBuf {
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
    pub(super) fn copy_files(
        &mut self,
        first: i64,
        count: usize,
        files: &[(usize, JobFiles)],
        opts: &SubmitOptions,
    ) -> Result<()> {
        if self.in_database() {
            return self.store_files(first, count, files, opts);
        }
        let mut shared_stdin: Option<(PathBuf, PathBuf)> = None;
        for (i, stdin, data) in inputs_of_each(count, files, opts) {
            let jid = first + i as i64;
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

    /// `copy_files` for a queue keeping job files in its database: every job's stdin and
    /// data stored in one transaction (directories archived first, outside it).
    fn store_files(
        &mut self,
        first: i64,
        count: usize,
        files: &[(usize, JobFiles)],
        opts: &SubmitOptions,
    ) -> Result<()> {
        let mut archives: Vec<(PathBuf, DbData)> = Vec::new();
        for src in files
            .iter()
            .filter_map(|(_, f)| f.data.as_ref())
            .chain(opts.data.as_ref())
        {
            if !archives.iter().any(|(p, _)| p == src) {
                archives.push((src.clone(), db_data(src)?));
            }
        }
        // The jids are this submit's own (reserved): no one else writes these rows.
        self.files_tx(true, |tx| {
            for (i, stdin, data) in inputs_of_each(count, files, opts) {
                let jid = first + i as i64;
                let data =
                    data.and_then(|src| archives.iter().find(|(p, _)| p == src).map(|(_, d)| d));
                store_inputs(tx, jid, "", stdin.map(PathBuf::as_path), data)?;
            }
            Ok(())
        })
    }

    pub(super) fn remove_job_files(&mut self, first: i64, count: usize) {
        if self.in_database() {
            let _ = self
                .store
                .write_shared(|tx| crate::store::in_database::remove_files(tx, first, count));
            return;
        }
        for jid in first..first + count as i64 {
            if self.has_files() {
                remove_files_of(&self.dir, jid, &[]);
            }
        }
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
                    .op(op::TWIN)
                    .query_row(crate::params![spec.command, tag], |r| r.get(0))
                    .optional()?;
                if let Some(jid) = twin {
                    tx.op(op::MERGE_TWIN).execute(crate::params![
                        priority,
                        hosts,
                        restartable,
                        jid
                    ])?;
                    jids.push(jid);
                } else {
                    let jid: i64 = tx.op(op::INSERT_ONE).query_row(
                        crate::params![
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
                        |r| r.get(0),
                    )?;
                    jids.push(jid);
                }
            }
            select_rows(tx, &Filter::jids(&jids))
        })?;
        self.ring_doorbell();
        Ok(rows)
    }
}

/// What a submit's first pass learned: how many jobs, their names and waits, their files,
/// and where to read them again (structured lists spooled, parsed).
#[derive(Default)]
struct Checked {
    count: usize,
    plan: crate::deps::Plan,
    files: Vec<(usize, JobFiles)>,
    sources: Vec<JobSource>,
    /// Removed when the submit ends.
    spools: Vec<tempfile::NamedTempFile>,
}

/// Job `number` (from 1) of a list, as the first pass checks it: its environment's size
/// and its command.
fn check_job(number: usize, spec: &JobSpec, opts: &SubmitOptions) -> Result<()> {
    if let Some(env) = &spec.env {
        let size: usize = env
            .iter()
            .chain(opts.env.iter())
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum();
        if size > MAX_ENV_BYTES {
            return Err(Error::input(format!(
                "job {number}: its environment is too large ({size} bytes; at most \
                 {MAX_ENV_BYTES}); nothing was submitted"
            )));
        }
    }
    if let Some(problem) = crate::job::command_problem(&spec.command) {
        return Err(Error::input(format!(
            "job {number}: {problem}; nothing was submitted"
        )));
    }
    Ok(())
}

/// What every job of a submit waits for (`--after`, `--after-any`): jids and arrays only.
fn global_waits(opts: &SubmitOptions) -> Result<Vec<(crate::deps::Wait, crate::deps::Kind)>> {
    opts.after
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
        .collect()
}

/// The rows of one submit, made job by job inside its transaction: what the options say
/// for every job, who submits them from where, and the jids reserved for them, if any.
struct NewRows<'a> {
    opts: &'a SubmitOptions,
    state: State,
    submitter: String,
    user: String,
    cwd: Option<String>,
    global_waits: Vec<(crate::deps::Wait, crate::deps::Kind)>,
    first_reserved: Option<i64>,
}

impl<'a> NewRows<'a> {
    fn new(
        opts: &'a SubmitOptions,
        global_waits: Vec<(crate::deps::Wait, crate::deps::Kind)>,
    ) -> NewRows<'a> {
        NewRows {
            opts,
            state: if opts.stage {
                State::Holding
            } else {
                State::Pending
            },
            submitter: host::name(),
            user: host::user_name(),
            cwd: std::env::current_dir()
                .map(|p| p.to_string_lossy().into_owned())
                .ok(),
            global_waits,
            first_reserved: None,
        }
    }

    /// Read the jobs again and insert them in batches (`Capabilities::insert_batch`), then
    /// record their waits. `waits`: each job's own, by index. Returns the first and last
    /// jid. A list that reads differently from the first pass is refused.
    fn insert(
        &self,
        tx: &Tx<'_>,
        sources: &[JobSource],
        count: usize,
        waits: &crate::deps::Resolved,
    ) -> Result<(i64, i64)> {
        let submitted = time::now();
        let batch_size = tx.capabilities().insert_batch;
        let mut batch: Vec<crate::job::NewJob> = Vec::with_capacity(batch_size);
        let mut starts: Vec<(i64, crate::deps::Start)> = Vec::new();
        let mut lookups = crate::deps::Lookups::default();
        let mut next_wait = waits.iter().peekable();
        let mut inserted = 0usize;
        let mut first = None;
        let mut flush = |batch: &mut Vec<crate::job::NewJob>, inserted: &mut usize| -> Result<()> {
            let last = tx.insert_jobs(batch, &submitted, &self.submitter, &self.user)?;
            first.get_or_insert(last - batch.len() as i64 + 1);
            *inserted += batch.len();
            batch.clear();
            Ok(())
        };
        read_sources(sources, &mut |spec: JobSpec| {
            let index = inserted + batch.len();
            if index == count || crate::job::command_problem(&spec.command).is_some() {
                return Err(changed_while_reading());
            }
            let own_waits = next_wait
                .next_if(|(i, _)| *i == index)
                .map(|(_, w)| w.as_slice());
            let (job, start) = self.row(tx, &mut lookups, index, spec, own_waits)?;
            starts.extend(start);
            batch.push(job);
            if batch.len() == batch_size {
                flush(&mut batch, &mut inserted)?;
            }
            Ok(())
        })?;
        if !batch.is_empty() {
            flush(&mut batch, &mut inserted)?;
        }
        if inserted != count {
            return Err(changed_while_reading());
        }
        crate::deps::record(tx, &starts)?;
        let first = first.unwrap_or(0);
        Ok((first, first + count as i64 - 1))
    }

    /// The row of job `index` (from 0) and, when it waits for jobs, where its waits stand.
    fn row(
        &self,
        tx: &Tx<'_>,
        lookups: &mut crate::deps::Lookups,
        index: usize,
        spec: JobSpec,
        own_waits: Option<&[(crate::deps::Wait, crate::deps::Kind)]>,
    ) -> Result<(crate::job::NewJob, Option<(i64, crate::deps::Start)>)> {
        let opts = self.opts;
        let jid = self.first_reserved.map(|f| f + index as i64);
        let mut job_state = self.state;
        let mut waiting_on = 0;
        let mut reason = None;
        let (mut after, mut after_any) = (None, None);
        let mut waited = None;
        if own_waits.is_some() || !self.global_waits.is_empty() {
            let (Some(jid), Some(base)) = (jid, self.first_reserved) else {
                return Err(changed_while_reading());
            };
            let waits: Vec<_> = self
                .global_waits
                .iter()
                .chain(own_waits.into_iter().flatten())
                .copied()
                .collect();
            let start = crate::deps::start(tx, lookups, index + 1, &waits, &|i| base + i as i64)?;
            after = jid_list(&start.after);
            after_any = jid_list(&start.after_any);
            waiting_on = start.unmet;
            if let Some(why) = &start.failed {
                job_state = State::Cancelled;
                reason = Some(why.clone());
            } else if start.unmet > 0 && self.state == State::Pending {
                job_state = State::Waiting;
            }
            waited = Some((jid, start));
        }
        // An array with a limit: only its first jobs join the claim path; the others wait
        // for a place (see the trigger `array_next`).
        if let Some(limit) = opts.array_limit
            && job_state == State::Pending
            && index as i64 >= limit
        {
            job_state = State::Waiting;
        }
        let file = |given: bool, dir: &str| jid.filter(|_| given).map(|j| format!("{dir}/{j}"));
        let job = crate::job::NewJob {
            jid,
            priority: opts.priority.or(spec.priority).unwrap_or(0),
            stdin: file(opts.stdin.is_some() || spec.stdin.is_some(), "stdin"),
            data: file(opts.data.is_some() || spec.data.is_some(), "data"),
            tag: opts.tag.clone().or_else(|| spec.tag.clone().flatten()),
            hosts: opts.hosts.clone().or_else(|| spec.hosts.clone().flatten()),
            restartable: opts.restartable || spec.restartable.unwrap_or(false),
            cwd: spec.cwd.clone().or_else(|| self.cwd.clone()),
            timeout: opts.timeout.or(spec.timeout),
            retries: opts.retries.or(spec.retries).unwrap_or(0),
            retry_delay: opts.retry_delay.or(spec.retry_delay),
            state: job_state,
            name: spec.name.clone(),
            after,
            after_any,
            waiting_on,
            reason,
            array_id: self.first_reserved.filter(|_| opts.array),
            array_index: spec.array_index,
            array_limit: opts.array_limit.filter(|_| opts.array),
            env: self.env_json(&spec.env),
            not_before: opts.not_before.clone().or(spec.not_before),
            cpus: opts.cpus.or(spec.cpus).unwrap_or(1),
            mem: opts.mem.or(spec.mem).unwrap_or(0),
            gpus: opts.gpus.or(spec.gpus).unwrap_or(0),
            command: spec.command,
        };
        Ok((job, waited))
    }

    /// A job's environment as stored: the submit's, its own added (and winning).
    fn env_json(&self, own: &Option<std::collections::BTreeMap<String, String>>) -> Option<String> {
        if self.opts.env.is_empty() && own.as_ref().is_none_or(|e| e.is_empty()) {
            return None;
        }
        let mut env = self.opts.env.clone();
        env.extend(own.iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
        serde_json::to_string(&env).ok()
    }
}

fn jid_list(jids: &[i64]) -> Option<String> {
    (!jids.is_empty()).then(|| serde_json::to_string(jids).unwrap_or_default())
}

/// The first chunk of jobs `first..=last` written with `writer`, inside the submit's
/// transaction: the bytes and how many rows.
fn echo_first_chunk(
    tx: &Tx<'_>,
    first: i64,
    last: i64,
    writer: &RowWriter,
) -> Result<(Vec<u8>, usize)> {
    let mut echoed = Vec::new();
    let mut rows = 0;
    let (mut stmt, params) = tx.scan(
        crate::store::ops::scan::PAGE,
        &Filter::JidRange(first, last),
        &[
            SqlValue::Integer(first - 1),
            SqlValue::Integer(CHUNK as i64),
        ],
    );
    stmt.query_each(crate::store::params_from_iter(params.iter()), |row| {
        writer.write_sql_row(rows == 0, &mut echoed, row)?;
        rows += 1;
        Ok(())
    })?;
    Ok((echoed, rows))
}
