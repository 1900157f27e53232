//! The data modes: create, submit, touch, list, query, status, delete, resubmit,
//! update, execute, configure, and the stdin/stdout/stderr dumps.

use std::io::{Read, Write};
use std::path::PathBuf;

use super::select::WhenNone;
use super::{Context, duration_option};
use crate::error::{Error, IoContext, Result};
use crate::input;
use crate::job::State;
use crate::output::{Format, RowWriter};
use crate::query;
use crate::queue::{self, Changes, JobSource, SubmitOptions};
use crate::store::Access;

/// Standard input as a list of jids or jobs: buffered, and bounded (no NUL, no line over
/// `input::MAX_LIST_LINE`).
pub(super) fn stdin_reader() -> impl std::io::BufRead {
    std::io::BufReader::with_capacity(
        1 << 16,
        input::LineGuard::new(std::io::stdin(), "standard input", input::MAX_LIST_LINE),
    )
}

/// Copy an input that can be read only once (standard input, a pipe) to a temporary file.
/// What a submit that names no job says.
const NO_JOBS: &str =
    "no jobs given: name a command, use --infile FILE, or pipe a job list (see 'rq help submit')";

fn spool_from(mut input: impl Read) -> Result<tempfile::NamedTempFile> {
    let mut spool =
        tempfile::NamedTempFile::new().context(|| "cannot make a temporary file".into())?;
    std::io::copy(&mut input, &mut spool).context(|| "cannot read the input".into())?;
    Ok(spool)
}

/// `spool_from` for a job list: checked as it is copied, so binary or newline-free input
/// is refused at once (not copied to the disk without end).
fn spool_job_list(input: impl Read, what: &str) -> Result<tempfile::NamedTempFile> {
    let mut guarded = input::LineGuard::new(input, what, input::MAX_LIST_LINE);
    let mut spool =
        tempfile::NamedTempFile::new().context(|| "cannot make a temporary file".into())?;
    std::io::copy(&mut guarded, &mut spool).map_err(input::guard_error)?;
    Ok(spool)
}

impl Context<'_> {
    /// No jobs were given to submit. After an explicit `-` that is an empty pipe: nothing
    /// to do. Otherwise a usage error.
    fn nothing_named(&self, verb: &str, usage: &str) -> Result<i32> {
        if self.inv.dash {
            crate::note!("rq: no jobs on standard input; nothing {verb}");
            return Ok(0);
        }
        Err(Error::usage(usage))
    }

    /// `-` named no jobs (`rq q query x | rq q delete -` that matched nothing): nothing
    /// to do, and that is no failure.
    fn nothing_on_stdin(&mut self, verb: &str) -> Result<i32> {
        crate::note!("rq: no jobs on standard input; nothing {verb}");
        self.print_rows(&[])?;
        Ok(0)
    }

    pub(super) fn create(&mut self) -> Result<i32> {
        if let Some(extra) = self.args().first() {
            return Err(Error::usage(format!(
                "create takes no arguments (got '{extra}')"
            )));
        }
        let report = queue::create(&self.queue)?;
        if !self.inv.opts.quiet {
            self.print_value(&report)?;
        }
        Ok(0)
    }

    pub(super) fn submit_options(&self) -> Result<SubmitOptions> {
        let o = &self.inv.opts;
        let priority = match &o.priority {
            Some(p) => Some(input::parse_priority(p).map_err(Error::usage)?),
            None => None,
        };
        Ok(SubmitOptions {
            priority,
            tag: o.tag.clone(),
            hosts: o.runner.as_deref().and_then(input::normalize_hosts),
            restartable: o.restartable,
            stage: o.stage,
            stdin: None,
            data: o.data.clone(),
            echo: !o.quiet,
            timeout: duration_option("timeout", &o.timeout)?,
            retries: match &o.retries {
                Some(r) => Some(r.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    Error::usage(format!("--retries: '{r}' is not a whole number >= 0"))
                })?),
                None => None,
            },
            retry_delay: duration_option("retry-delay", &o.retry_delay)?,
            after: deps_option("after", &o.after)?,
            after_any: deps_option("after-any", &o.after_any)?,
            env: env_option(&o.env, o.export)?,
            not_before: start_option(&o.at, &o.in_)?,
            array: o.array.is_some() || o.each_line.is_some(),
            array_limit: match &o.array {
                Some(text) => input::ArraySpec::parse(text).map_err(Error::usage)?.limit,
                None => None,
            },
            cpus: count_option("cpus", &o.cpus, 1)?,
            gpus: count_option("gpus", &o.gpus, 0)?,
            mem: match &o.mem {
                Some(text) => Some(
                    input::parse_size(text)
                        .and_then(|n| i64::try_from(n).ok())
                        .ok_or_else(|| {
                            Error::usage(format!("--mem: '{text}' is not a size like 512M or 4G"))
                        })?,
                ),
                None => None,
            },
        })
    }

    pub(super) fn submit(&mut self, touch: bool) -> Result<i32> {
        let mut opts = self.submit_options()?;
        // Spooled copies of inputs that can be read only once; they live until the jobs
        // are submitted.
        let mut spools: Vec<tempfile::NamedTempFile> = Vec::new();
        let sources = self.job_sources(touch, &mut opts, &mut spools)?;
        if sources.is_empty() {
            return self.nothing_named("submitted", NO_JOBS);
        }
        if touch {
            return self.touch_jobs(&sources, &opts);
        }
        let mut q = self.open(Access::ReadWrite)?;
        let fields = self.fields()?;
        let quiet = self.inv.opts.quiet || self.inv.opts.parsable;
        // Table output needs every row; it is printed from a listing after the commit.
        let writer = (!quiet && self.format != Format::Table).then(|| {
            let names: Vec<String> = crate::job::FIELDS.iter().map(|s| s.to_string()).collect();
            RowWriter::new(&names, fields.as_deref(), self.format)
        });
        let submitted = q.submit(&sources, &opts, writer.as_ref())?;
        if submitted.count == 0 {
            return self.nothing_named("submitted", NO_JOBS);
        }
        self.print_submitted(&mut q, &submitted, writer.as_ref())
    }

    /// Where a submit's jobs come from: a command on the command line (alone, or made
    /// into many by `--array`/`--each-line`), `--infile`, or a job list on standard input;
    /// `--stdin -` spooled for the jobs. Inputs that can be read only once (pipes) are
    /// spooled into `spools` first: submit reads its job list more than once.
    fn job_sources(
        &self,
        touch: bool,
        opts: &mut queue::SubmitOptions,
        spools: &mut Vec<tempfile::NamedTempFile>,
    ) -> Result<Vec<JobSource>> {
        let mut sources = self.command_line_sources(touch, opts.array, spools)?;
        if let Some(file) = &self.inv.opts.infile {
            // A pipe (`-i <(gen)`, `-i /dev/stdin`) is copied first.
            let once_only = std::fs::metadata(file).is_ok_and(|m| !m.is_file());
            if once_only {
                let source = std::fs::File::open(file)
                    .map_err(|e| Error::input(format!("{}: {e}", file.display())))?;
                let spool = spool_job_list(source, &file.display().to_string())?;
                sources.push(JobSource::File(spool.path().to_path_buf()));
                spools.push(spool);
            } else {
                sources.push(JobSource::File(file.clone()));
            }
        }
        let stdin_wanted = self.inv.opts.stdin.as_deref() == Some("-");
        let named = !sources.is_empty();
        if stdin_wanted && self.inv.dash {
            return Err(Error::usage(
                "cannot read both the job list and --stdin from standard input; use --infile or --stdin FILE",
            ));
        }
        // Standard input (the jobs' stdin, or the job list) is spooled to a temporary file
        // first: memory stays flat, and the queue is never locked while a slow producer
        // writes the pipe.
        if stdin_wanted {
            let spool = spool_from(std::io::stdin().lock())?;
            opts.stdin = Some(spool.path().to_path_buf());
            spools.push(spool);
        } else {
            if let Some(path) = &self.inv.opts.stdin {
                opts.stdin = Some(PathBuf::from(path));
            }
            if self.stdin_wanted(named) {
                let spool = spool_job_list(std::io::stdin().lock(), "standard input")?;
                sources.push(JobSource::File(spool.path().to_path_buf()));
                spools.push(spool);
            }
        }
        Ok(sources)
    }

    /// The jobs the command line names: its command, or with `array` (`--array`,
    /// `--each-line`) the jobs made from it.
    fn command_line_sources(
        &self,
        touch: bool,
        array: bool,
        spools: &mut Vec<tempfile::NamedTempFile>,
    ) -> Result<Vec<JobSource>> {
        let o = &self.inv.opts;
        if !array {
            if o.subst {
                return Err(Error::usage("--subst goes with --array or --each-line"));
            }
            if self.args().is_empty() {
                return Ok(Vec::new());
            }
            return Ok(vec![JobSource::Job(input::JobSpec {
                command: self.args().join(" "),
                ..Default::default()
            })]);
        }
        if o.array.is_some() && o.each_line.is_some() {
            return Err(Error::usage(
                "--array and --each-line cannot be used together",
            ));
        }
        if self.args().is_empty() || o.infile.is_some() || self.inv.dash || touch {
            return Err(Error::usage(
                "--array and --each-line make jobs from one command given on the command line \
                 (e.g. rq Q submit --array 1-100 --subst 'sim --seed {}')",
            ));
        }
        let spec = input::JobSpec {
            command: self.args().join(" "),
            ..Default::default()
        };
        let subst = o.subst;
        if let Some(text) = &o.array {
            let array = input::ArraySpec::parse(text).map_err(Error::usage)?;
            return Ok(vec![JobSource::Array { spec, array, subst }]);
        }
        let Some(path) = &o.each_line else {
            return Ok(Vec::new());
        };
        // The items are read more than once: standard input (`-`) or a pipe
        // (`/dev/stdin`, `<(gen)`) is copied first.
        let path = if path.as_os_str() == "-" {
            let spool = spool_job_list(std::io::stdin().lock(), "standard input")?;
            let copy = spool.path().to_path_buf();
            spools.push(spool);
            copy
        } else if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            let source = std::fs::File::open(path)
                .map_err(|e| Error::input(format!("--each-line: {}: {e}", path.display())))?;
            let spool = spool_job_list(source, &path.display().to_string())?;
            let copy = spool.path().to_path_buf();
            spools.push(spool);
            copy
        } else {
            path.clone()
        };
        Ok(vec![JobSource::EachLine { spec, path, subst }])
    }

    /// `touch`: the jobs are read whole, then inserted as `submit` would (`Queue::touch`).
    fn touch_jobs(&mut self, sources: &[JobSource], opts: &queue::SubmitOptions) -> Result<i32> {
        let mut specs = Vec::new();
        queue::read_sources(sources, &mut |spec| {
            specs.push(spec);
            Ok(())
        })?;
        if specs.is_empty() {
            return self.nothing_named("submitted", NO_JOBS);
        }
        let mut q = self.open(Access::ReadWrite)?;
        let rows = q.touch(&specs, opts)?;
        if self.inv.opts.parsable {
            let jids: String = rows.iter().map(|r| format!("{}\n", r.jid())).collect();
            return self.out.print(&jids).map(|_| 0);
        }
        self.print_rows(&rows)?;
        Ok(0)
    }

    /// What a submit prints: the jids (`--parsable`), or the jobs: the first chunk as
    /// written inside the transaction, the rest listed as they are now.
    fn print_submitted(
        &mut self,
        q: &mut queue::Queue,
        submitted: &queue::Submitted,
        writer: Option<&RowWriter>,
    ) -> Result<i32> {
        if self.inv.opts.parsable && !self.inv.opts.quiet {
            // A submit's jobs have the jids first..=last, one block.
            let jids: String = (submitted.first..=submitted.last)
                .map(|jid| format!("{jid}\n"))
                .collect();
            self.out.print(&jids)?;
        }
        if self.inv.opts.quiet || self.inv.opts.parsable {
            return Ok(0);
        }
        let clause = crate::store::Filter::JidRange(
            submitted.first + submitted.echoed_rows as i64,
            submitted.last,
        );
        match writer {
            Some(writer) => {
                self.out.write_bytes(&submitted.echoed)?;
                if submitted.echoed_rows == submitted.count {
                    let mut end = Vec::new();
                    writer.finish(submitted.count, &mut end);
                    self.out.write_bytes(&end)?;
                } else {
                    // The rows past the first chunk are listed as they are now.
                    let mut emit = |bytes: &[u8], _: &[i64]| self.out.write_bytes(bytes);
                    q.render_after(&clause, writer, submitted.echoed_rows, &mut emit)?;
                }
            }
            None => {
                self.stream_rows(q, &clause, false, &mut |_| {})?;
            }
        }
        Ok(0)
    }

    /// `status` of some jobs (named, `-`, or `--mine`) rather than of the whole queue.
    fn scoped(&self) -> bool {
        !self.args().is_empty() || self.inv.dash || self.inv.opts.mine
    }

    pub(super) fn list(&mut self) -> Result<i32> {
        let Some(selection) = self.select(self.args(), WhenNone::All)? else {
            return self.print_rows(&[]).map(|_| 0);
        };
        let mut q = self.open(Access::ReadOnly)?;
        // So that jobs no live feeder can run say why (`reason`).
        q.unfit(None)?;
        let clause = self.mine(selection.clause());
        self.stream_rows(&mut q, &clause, false, &mut |_| {})?;
        // What was asked for by name and is not there is said, as every mode does.
        Ok(i32::from(self.say_absent(&mut q, &selection, true)?))
    }

    pub(super) fn query(&mut self) -> Result<i32> {
        let mut words: Vec<String> = self.args().to_vec();
        if words.is_empty()
            && let Some(text) = self.stdin_text(false)?
        {
            words.push(strip_comments(&text));
        }
        let clause = self.mine(query::parse(&words)?);
        let mut q = self.open(Access::ReadOnly)?;
        self.stream_rows(&mut q, &clause, true, &mut |_| {})?;
        Ok(0)
    }

    /// `--mine`: only the jobs the user running rq submitted.
    pub(super) fn mine(&self, clause: crate::store::Filter) -> crate::store::Filter {
        if self.inv.opts.mine {
            clause.of_user(&crate::host::user_name())
        } else {
            clause
        }
    }

    pub(super) fn status(&mut self) -> Result<i32> {
        if self.format == Format::Table {
            return self.status_screen();
        }
        if self.scoped() {
            // Some jobs (rq help selections; --mine): their counts.
            let selection = self.select(self.args(), WhenNone::All)?.unwrap_or_default();
            let mut q = self.open(Access::ReadOnly)?;
            let absent = self.say_absent(&mut q, &selection, true)?;
            let report = q.status_of(&self.mine(selection.clause()))?;
            self.print_value(&report)?;
            return Ok(i32::from(absent));
        }
        let exit_map = parse_exit_map(self.inv.opts.exit.as_deref().unwrap_or(""))?;
        let mut q = self.open(Access::ReadOnly)?;
        let mut report = q.status(&exit_map)?;
        // Jobs no live feeder can run: said, not left to wait in silence.
        let (count, some) = q.unfit(None)?;
        if count > 0 {
            let examples: serde_json::Map<String, serde_json::Value> = some
                .into_iter()
                .map(|(jid, why)| (jid.to_string(), serde_json::Value::String(why)))
                .collect();
            report["unfit"] = serde_json::json!({ "jobs": count, "for_example": examples });
        }
        self.print_value(&report)?;
        Ok(0)
    }

    /// `status` for people: one screen (see `human::status_screen`).
    fn status_screen(&mut self) -> Result<i32> {
        use crate::overview::Summary;
        let mut q = self.open(Access::ReadOnly)?;
        let summary = if self.scoped() {
            // `-` that named nothing: an empty selection, no jobs counted.
            let selection = self.select(self.args(), WhenNone::All)?.unwrap_or_default();
            self.say_absent(&mut q, &selection, true)?;
            let report = q.status_of(&self.mine(selection.clause()))?;
            let counts: Vec<(State, i64)> = State::ALL
                .iter()
                .map(|s| (*s, report["jobs"][s.as_str()].as_i64().unwrap_or(0)))
                .collect();
            let successes = report["exit_status"]["successes"].as_i64().unwrap_or(0);
            let dead = report["jobs"]["dead"].as_i64().unwrap_or(0);
            Summary {
                total: counts.iter().map(|(_, n)| n).sum(),
                counts,
                successes,
                failed: report["exit_status"]["failures"].as_i64().unwrap_or(0) - dead,
                ..Default::default()
            }
        } else {
            let now = crate::time::now_ts();
            q.store().read(|tx| crate::overview::summary(tx, now))?
        };
        let feeders = crate::overview::feeders(&mut q)?;
        let (count, some) = q.unfit(None)?;
        let mut text = crate::human::status_screen(
            &crate::secrets::redact(&self.queue.display().to_string()),
            &summary,
            &feeders,
            Some((count, some.into_iter().next())),
            &self.terminal,
        );
        let exit_map = parse_exit_map(self.inv.opts.exit.as_deref().unwrap_or(""))?;
        if !exit_map.is_empty() && !self.scoped() {
            let report = q.status(&exit_map)?;
            let counted: Vec<String> = exit_map
                .iter()
                .map(|(name, _)| format!("{name} {}", report["exit_status"][name]))
                .collect();
            text.push_str(&format!("{:<11}{}\n", "exit codes", counted.join(" · ")));
        }
        self.out.print(&text)?;
        Ok(0)
    }

    pub(super) fn delete(&mut self) -> Result<i32> {
        let Some(selection) = self.select(
            self.args(),
            WhenNone::Usage("nothing to delete: name jids, array:ID, tag:NAME, a state, 'all', or '-' to read jids"),
        )?
        else {
            return self.nothing_on_stdin("deleted");
        };
        let mut q = self.open(Access::ReadWrite)?;
        // Looked for before acting: a deleted array is no longer there.
        let absent = self.say_absent(&mut q, &selection, false)?;
        let (rows, skipped) = q.delete(&selection, self.inv.opts.force)?;
        self.print_rows(&rows)?;
        Ok(self
            .report_skipped("deleted", &skipped)
            .max(i32::from(absent)))
    }

    pub(super) fn resubmit(&mut self) -> Result<i32> {
        let opts = self.submit_options()?;
        if opts.data.is_some() || self.inv.opts.stdin.is_some() {
            return Err(Error::usage(
                "resubmit keeps each job's stdin and data; change them with 'update stdin=FILE data=PATH'",
            ));
        }
        let Some(selection) = self.select(
            self.args(),
            WhenNone::Usage(
                "nothing to resubmit: name jids, array:ID, tag:NAME, a state, or '-' to read jids",
            ),
        )?
        else {
            return self.nothing_on_stdin("resubmitted");
        };
        let mut q = self.open(Access::ReadWrite)?;
        // Looked for before acting: a deleted array is no longer there.
        let absent = self.say_absent(&mut q, &selection, false)?;
        let (rows, skipped) = q.resubmit(&selection, &opts)?;
        self.print_rows(&rows)?;
        Ok(self
            .report_skipped("resubmitted", &skipped)
            .max(i32::from(absent)))
    }

    pub(super) fn update(&mut self) -> Result<i32> {
        let mut changes = Changes::default();
        let mut words = Vec::new();
        for word in self.args() {
            if let Some((key, value)) = word.split_once('=')
                && key != "jid"
            {
                apply_change(&mut changes, key, value)?;
                continue;
            }
            words.push(word.clone());
        }
        if let Some(stdin) = &self.inv.opts.stdin {
            changes.stdin = Some(PathBuf::from(stdin));
        }
        if let Some(data) = &self.inv.opts.data {
            changes.data = Some(data.clone());
        }
        if let Some(p) = &self.inv.opts.priority {
            changes.priority = Some(input::parse_priority(p).map_err(Error::usage)?);
        }
        if let Some(t) = &self.inv.opts.tag {
            changes.tag = Some(Some(t.clone()));
        }
        if let Some(h) = &self.inv.opts.runner {
            changes.hosts = Some(input::normalize_hosts(h));
        }
        if self.inv.opts.restartable {
            changes.restartable = Some(true);
        }
        if changes.is_empty() {
            if let Some(word) = self.args().iter().find(|w| w.starts_with("jid=")) {
                return Err(Error::usage(format!(
                    "update: a job's jid cannot be changed ('{word}' names a job to update); \
                     give key=value, e.g. priority=5"
                )));
            }
            return Err(Error::usage(
                "update: nothing to change; give key=value, e.g. priority=5 or state=holding",
            ));
        }
        for path in changes.stdin.iter().chain(changes.data.iter()) {
            if !path.exists() {
                return Err(Error::input(format!("{}: no such file", path.display())));
            }
        }
        let Some(selection) = self.select(
            &words,
            WhenNone::Usage("update: no jobs named; give jids, array:ID, tag:NAME, 'pending', 'holding', or '-' to read jids"),
        )?
        else {
            return self.nothing_on_stdin("updated");
        };
        let mut q = self.open(Access::ReadWrite)?;
        // Looked for before acting: a deleted array is no longer there.
        let absent = self.say_absent(&mut q, &selection, false)?;
        let (rows, skipped) = q.update(&selection, &changes)?;
        self.print_rows(&rows)?;
        Ok(self
            .report_skipped("updated", &skipped)
            .max(i32::from(absent)))
    }

    pub(super) fn execute(&mut self) -> Result<i32> {
        let mut sql = self.args().join(" ");
        if sql.trim().is_empty()
            && let Some(text) = self.stdin_text(false)?
        {
            sql = strip_comments(&text);
        }
        if sql.trim().is_empty() {
            return Err(Error::usage("execute: no SQL given"));
        }
        let mut q = self.open(Access::ReadWrite)?;
        let rows = q.execute(&sql).map_err(|e| match e {
            Error::Sql(err) => Error::usage(format!("execute: {err}")),
            other => other,
        })?;
        self.print_rows(&rows)?;
        Ok(0)
    }

    pub(super) fn configure(&mut self) -> Result<i32> {
        let mut settings = Vec::new();
        for word in self.args() {
            let Some((key, value)) = word.split_once('=') else {
                return Err(Error::usage(format!(
                    "configure: '{word}' is not key=value"
                )));
            };
            let value = value.strip_prefix('=').unwrap_or(value);
            let key = key.trim();
            if key.is_empty() {
                return Err(Error::usage(format!("configure: '{word}' has no key")));
            }
            settings.push((key.to_string(), value.to_string()));
        }
        let mut q = self.open(if settings.is_empty() {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        })?;
        let all = q.configure(&settings)?;
        self.print_value(&all)?;
        Ok(0)
    }

    pub(super) fn dump(&mut self, stream: &str, paths_only: bool) -> Result<i32> {
        let usage = match stream {
            "stdin" => {
                "stdin: name the jobs whose stdin to show (jids, array:ID, tag:NAME, a state)"
            }
            "stdout" => {
                "stdout: name the jobs whose stdout to show (jids, array:ID, tag:NAME, a state)"
            }
            _ => "stderr: name the jobs whose stderr to show (jids, array:ID, tag:NAME, a state)",
        };
        let Some(selection) = self.select(self.args(), WhenNone::Usage(usage))? else {
            return Ok(0);
        };
        let mut q = self.open(Access::ReadOnly)?;
        if paths_only && q.in_database() {
            return Err(Error::usage(format!(
                "{} keeps job files in its database, not in files: 'rq QUEUE {stream} JID' shows them",
                q.name()
            )));
        }
        let jobs = self.chosen(&mut q, &selection)?;
        let absent = self.say_absent(&mut q, &selection, true)?;
        for job in jobs {
            let jid = job.jid;
            if paths_only {
                let path = q.dir().join(stream).join(jid.to_string());
                self.out.print(&format!("{}\n", path.display()))?;
                continue;
            }
            // A chunk at a time: output can be large.
            let mut offset = 0;
            while let Some(bytes) = q.read_job_file(jid, stream, offset, DUMP_CHUNK)? {
                self.out
                    .out
                    .write_all(&bytes)
                    .context(|| "cannot write to standard output".into())?;
                offset += bytes.len() as u64;
                if (bytes.len() as u64) < DUMP_CHUNK {
                    break;
                }
            }
        }
        Ok(i32::from(absent))
    }
}

/// `stdout`/`stderr` copy a job's file this many bytes at a time.
const DUMP_CHUNK: u64 = 1 << 20;

fn apply_change(changes: &mut Changes, key: &str, value: &str) -> Result<()> {
    let nullable = |v: &str| -> Option<String> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "nil" | "null" | "nul" | "~" => None,
            _ => Some(v.to_string()),
        }
    };
    match key {
        "priority" => changes.priority = Some(input::parse_priority(value).map_err(Error::usage)?),
        "command" => {
            if let Some(problem) = crate::job::command_problem(value) {
                return Err(Error::usage(format!("update: {problem}")));
            }
            changes.command = Some(value.to_string());
        }
        "tag" => changes.tag = Some(nullable(value)),
        "runner" | "hosts" => {
            changes.hosts = Some(nullable(value).as_deref().and_then(input::normalize_hosts))
        }
        "restartable" => {
            changes.restartable = Some(
                input::parse_bool(value)
                    .map_err(|e| Error::usage(format!("update: restartable: {e}")))?,
            )
        }
        "state" => {
            changes.state = match State::from_prefix(value) {
                Some(s @ (State::Pending | State::Holding)) => Some(s),
                _ => {
                    return Err(Error::usage(format!(
                        "update: state can be set to pending or holding, not '{value}'"
                    )));
                }
            }
        }
        "stdin" => changes.stdin = Some(PathBuf::from(value)),
        "data" => changes.data = Some(PathBuf::from(value)),
        other => {
            return Err(Error::usage(format!(
                "update: cannot change '{other}' (changeable: priority, command, tag, runner, restartable, state, stdin, data)"
            )));
        }
    }
    Ok(())
}

/// `--exit 'ok=0 retry=75,76'` -> [("ok", [0]), ("retry", [75, 76])].
fn parse_exit_map(text: &str) -> Result<Vec<(String, Vec<i64>)>> {
    let normalized = text.replace(" =", "=").replace("= ", "=");
    let mut map = Vec::new();
    for item in normalized.split_whitespace() {
        let bad = || Error::usage(format!("--exit: '{item}' is not name=code[,code...]"));
        let (name, codes) = item.split_once('=').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        let codes = codes
            .split(',')
            .map(|c| c.trim().parse::<i64>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| bad())?;
        map.push((name.to_string(), codes));
    }
    Ok(map)
}

/// Drop whole-line `#` comments and join the rest with spaces (a `#` inside SQL text,
/// e.g. in a quoted value, is kept).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ")
}

fn deps_option(name: &str, text: &Option<String>) -> Result<Vec<input::DepRef>> {
    match text {
        Some(text) => {
            let deps =
                input::parse_deps(text).map_err(|e| Error::usage(format!("--{name}: {e}")))?;
            if deps.is_empty() {
                return Err(Error::usage(format!("--{name}: no jids given")));
            }
            Ok(deps)
        }
        None => Ok(Vec::new()),
    }
}

/// Variables `--export` leaves out: they describe the submitter's terminal, session or
/// host, mean nothing (or harm) on another host, or are rq's own per-job variables.
pub const EXPORT_DENY: &[&str] = &[
    "TERM",
    "TERMCAP",
    "COLORTERM",
    "COLUMNS",
    "LINES",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "SSH_CLIENT",
    "SSH_CONNECTION",
    "SSH_TTY",
    "SESSION_MANAGER",
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "XDG_SEAT",
    "XDG_VTNR",
    "GPG_AGENT_INFO",
    "GPG_TTY",
    "WINDOWID",
    "TMUX",
    "TMUX_PANE",
    "STY",
    "SHLVL",
    "PWD",
    "OLDPWD",
    "_",
    "HOSTNAME",
    "HOST",
    "MAIL",
    "PS1",
    "PS2",
    "PROMPT_COMMAND",
    "LS_COLORS",
    "KRB5CCNAME",
];

/// Prefixes `--export` leaves out (XDG_SESSION_ID, ..., and rq's own RQ_* variables).
pub const EXPORT_DENY_PREFIXES: &[&str] = &["XDG_SESSION_", "RQ_", "BASH_FUNC_"];

fn env_option(
    pairs: &[String],
    export: bool,
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut env = std::collections::BTreeMap::new();
    if export {
        for (key, value) in std::env::vars_os() {
            let (Some(key), Some(value)) = (key.to_str(), value.to_str()) else {
                continue;
            };
            if EXPORT_DENY.contains(&key)
                || EXPORT_DENY_PREFIXES.iter().any(|p| key.starts_with(p))
                || input::env_pair(&format!("{key}=")).is_err()
            {
                continue;
            }
            env.insert(key.to_string(), value.to_string());
        }
    }
    for pair in pairs {
        let (key, value) =
            input::env_pair(pair).map_err(|e| Error::usage(format!("--env: {e}")))?;
        env.insert(key, value);
    }
    let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if size > crate::queue::MAX_ENV_BYTES {
        return Err(Error::usage(format!(
            "the environment to give the jobs is too large ({size} bytes; at most {})",
            crate::queue::MAX_ENV_BYTES
        )));
    }
    Ok(env)
}

fn start_option(at: &Option<String>, after: &Option<String>) -> Result<Option<String>> {
    let now = crate::time::now_ts();
    match (at, after) {
        (Some(_), Some(_)) => Err(Error::usage("give --at or --in, not both")),
        (Some(text), None) => crate::time::parse_start_time(text, now)
            .map(|t| Some(crate::time::format(t)))
            .map_err(|e| Error::usage(format!("--at: {e}"))),
        (None, Some(text)) => {
            let seconds = crate::time::parse_duration(text).ok_or_else(|| {
                Error::usage(format!(
                    "--in: '{text}' is not {}",
                    crate::time::DURATION_FORMS
                ))
            })?;
            let at = now
                .checked_add(jiff::SignedDuration::from_secs_f64(seconds))
                .map_err(|e| Error::usage(format!("--in: {e}")))?;
            Ok(Some(crate::time::format(at)))
        }
        (None, None) => Ok(None),
    }
}

fn count_option(name: &str, text: &Option<String>, min: i64) -> Result<Option<i64>> {
    match text {
        Some(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| (min..=100_000).contains(n))
            .map(Some)
            .ok_or_else(|| {
                Error::usage(format!(
                    "--{name}: '{text}' is not a whole number from {min} to 100000"
                ))
            }),
        None => Ok(None),
    }
}

/// `rq help MODE` for the modes handled here.
pub(super) const HELP: &[(&str, &str)] = &[
    (
        "create",
        "rq QUEUE create\n\nMake QUEUE: the directory (it must not exist or be empty), its database `db`,\nthe schema `db.schema`, and bin/ stdin/ stdout/ stderr/ data/. Prints the paths.\n\n  rq /nfs/q create\n",
    ),
    (
        "submit",
        "rq QUEUE submit [COMMAND...] [-i FILE] [-] [OPTIONS]\n\nAdd jobs. The words after the mode are one job; --infile FILE and standard\ninput hold one command per line (blank lines and #-lines skipped) or YAML/JSON:\nrq's own output, or a list of mappings with at least `command` (and optionally\npriority, tag, runner, restartable, stdin, data, timeout, retries, name, after,\nafter_any, env, at). All jobs go in, or none.\nThe jobs run in the directory they were submitted from.\n\n  rq q submit 'make -C ~/src test'\n  rq q submit -p 9 -t nightly --runner n1,n2 -- ./run --fast\n  rq q submit < joblist\n  rq q list finished | rq q submit -\n  rq q submit --stdin input.txt 'wc -l'\n  rq q submit --stage 'echo later'       # holding until updated to pending\n\
\n\
Workflows. A job can wait for others: --after 12,13 (they must finish with exit\n\
0) or --after-any 12 (they must have ended); in a list, `after:` and\n\
`after_any:` name jids or other jobs of the same list by their `name:`. A job\n\
that waits is `waiting` until then, and `cancelled` (with the reason) if one it\n\
needs fails; resubmitting that one puts it back to waiting. One submit is all or\n\
nothing; circles and unknown names are refused. A pipeline in one file:\n\
\n\
  # pipeline.yaml:   rq q submit < pipeline.yaml\n\
  - {name: prepare, command: ./prepare.sh}\n\
  - {name: sim1, command: ./sim --seed 1, after: prepare}\n\
  - {name: sim2, command: ./sim --seed 2, after: prepare}\n\
  - {command: ./merge.sh, after: [sim1, sim2]}\n\
\n\
Arrays: --array 1-1000 makes one job per index (RQ_ARRAY_ID is the first job's\n\
jid, RQ_ARRAY_INDEX the index); --each-line FILE one per line (RQ_ITEM; - for\n\
standard input); with --subst, {} in the command is replaced by the index or the\n\
(quoted) line. Modes that take jobs take array:ID. %N keeps at most N of the\n\
array running at once.\n\
\n\
Printed: the new jobs, as YAML (JSON, a table); --parsable: only their jids, one\n\
per line, for scripts (jid=$(rq q submit --parsable ./step.sh)).\n\
\n\
  rq q submit --array 1-1000%50 --subst './sim --seed {}'\n\
  rq q submit --each-line files.txt --subst 'gzip {}'\n\
  rq q submit --after array:12 ./merge.sh\n\
  rq q submit --at 22:00 ./nightly.sh           # or --in 90m\n\
\n\
Environment: --env KEY=VALUE sets a variable for the job; --export takes the\n\
whole environment of the submit, except variables of the terminal, session and\n\
host (TERM, DISPLAY, SSH_*, XDG_SESSION_*, PWD, SHLVL, HOSTNAME, RQ_*, ...).\n\
They go on top of the feeder's environment. Listings show as <hidden> values of\n\
names with TOKEN, SECRET, PASS, KEY, CREDENTIAL, AUTH, COOKIE, SESSION, PRIVATE\n\
or SIGNATURE, and values holding a password (user:pw@, password=); the job gets\n\
them all. Every job records its `user` (who\n\
submitted it) and `submitter` (the host); jobs still run as the feeder's user.\n",
    ),
    (
        "touch",
        "rq QUEUE touch [COMMAND...] [-i FILE] [-] [OPTIONS]\n\nLike submit, but a job whose command and tag equal a pending job's updates that\njob (priority, runner, restartable) instead of adding another. For cron.\n",
    ),
    (
        "list",
        "rq QUEUE list [SELECTION] [-L] [-f FIELDS]\n\nShow jobs. States by any prefix: p(ending) h(olding) r(unning) f(inished)\nd(ead) w(aiting) c(ancelled); `all` or `a` or nothing: every job. Jids, array:ID,\ntag:NAME, field=value terms, and jids or rq YAML on stdin (rq help selections).\n--mine: only jobs I submitted. No jobs: `[]`. `reason` says what a\nwaiting job waits for, why a job was cancelled, or why no feeder can run it.\n\nOn a terminal: a table of jid, state, pri(ority), tag, host, started/age (when it\nstarted, local time; or how long ago it was submitted), elapsed (so far, for a\nrunning job), exit (status or signal) and the command, cut to the width. -L adds\nevery other field a job has; -f picks the columns, in the order given. Piped or\nredirected: YAML (--format json: JSON), every field, whatever the terminal.\n\n  rq q list running\n  rq q list -L 12\n  rq q list 12 13 -f jid,state,command\n  rq q list --format json\n",
    ),
    (
        "status",
        "rq QUEUE status [--exit 'name=codes ...'] [SELECTION] [--mine]\n\nCounts per state, the youngest/oldest job per state, average run time, jobs\nended in the last 1/12/24 hours, successes and failures (failures include\nsignals and dead jobs), and running jobs per host; `paused` and `draining` when\nfeeders are held back, `unfit` when jobs need more than any live feeder has.\nGiven jobs (e.g. array:12) or --mine: the counts of those jobs only.\n\nOn a terminal, one screen: counts by state with a bar, jobs ended per minute\nover the last 10 minutes, successes and failures, the time left for pending\njobs at that rate (eta), the oldest pending job, running jobs per host, feeders\nalive and dead. --watch (or the mode top) keeps it on screen, live.\n\n  rq q status --exit 'retry=75 oom=137'\n",
    ),
    (
        "query",
        "rq QUEUE query TERM... | \"SQL where-clause\"\n\nTerms field=value (also ==), field!=value, field=~pattern, field!~pattern\n(SQL LIKE: % matches anything, ASCII case ignored), AND-ed; value null\nmatches NULL. Anything else is an SQL where-clause, run read-only as written,\nin the store's own SQL (SQLite's, or PostgreSQL's for a server-kept queue).\n\n  rq q query tag=nightly state=finished\n  rq q query command=~%make%\n  rq q query \"exit_status != 0 or state = 'dead'\"\n  rq q query exit_status=0 | rq q delete -\n",
    ),
    (
        "update",
        "rq QUEUE update SELECTION key=value...\n\nChange pending, waiting or holding jobs (others are reported as skipped); the\njobs are named as in every mode (rq help selections), but field=value words are\nthe changes, not terms. Keys:\npriority command tag runner restartable state(=pending|holding) stdin data;\nnull clears tag/runner. Values may contain spaces: command='make all'.\n\n  rq q update 12 priority=10\n  rq q update holding state=pending\n  rq q query tag=x | rq q update state=holding -\n",
    ),
    (
        "delete",
        "rq QUEUE delete SELECTION [--force]\n\nRemove jobs that are not running, and their stdin/stdout/stderr/data files.\nPrints what it deleted. A job other jobs wait for is kept (and said) unless\n--force, which cancels those that needed it to succeed.\n\n  rq q delete 12 13\n  rq q delete finished\n  rq q query exit_status=0 | rq q delete -\n",
    ),
    (
        "resubmit",
        "rq QUEUE resubmit SELECTION  [-p N] [-t TAG] [--runner H] [--stage]\n\nQueue jobs again in place (same jid, command, stdin, data): state pending,\nrun fields cleared. Running jobs are skipped. Not pinned to the last host.\n\n  rq q resubmit dead\n  rq q query exit_status=1 | rq q resubmit -\n",
    ),
    (
        "execute",
        "rq QUEUE execute SQL\n\nRun SQL (or SQL on stdin) under the write lock and print any result rows.\nCareful: it can change anything.\n\n  rq q execute \"UPDATE jobs SET priority = 0 WHERE tag = 'x'\"\n",
    ),
    (
        "configure",
        "rq QUEUE configure [key=value ...]\n\nSet queue-wide settings (key= removes one); with no arguments print them.\n\n  heartbeat     0.5s to 1h (default 10s): how often feeders show they live\n  lease         1s to 7d, at least two heartbeats (default 60s): after this\n                without a heartbeat a host's jobs are taken over\n  max_attempts  1 to 1000 (default 3): runs a restartable job gets in all\n  reserve_after 0s to 7d (default 10m): how long the best job that does not fit\n                may wait before hosts it fits stop taking jobs behind it\n  limit.TAG     0 to 1000000: at most this many jobs tagged TAG run at once\n  files         PostgreSQL queues: a directory every host sees for job files,\n                heartbeats and start journals (without it, all are kept in the\n                database, and hosts need share nothing else)\n  output_cap    1K to 1T (default 64M), PostgreSQL queues without files=: the most\n                of a run's stdout, and of its stderr, kept; then a line says so\n\nOther keys and values out of range are refused; nothing is changed then.\n",
    ),
    (
        "stdin",
        "rq QUEUE stdin|stdout|stderr SELECTION (0 1 2)\n\nPrint the jobs' captured stream, the jobs in the order named (rq help\nselections): rq q stdout array:12. stdin4/stdout4/stderr4 print the file paths.\n",
    ),
];
