//! The command line: `rq QUEUE MODE [ARGS] [OPTIONS]`. Options may appear anywhere, `--`
//! ends them, `RQ_OPTS` supplies defaults the command line overrides, and `RQ_Q` supplies
//! the queue.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::control::{self, FeedRequest, LogOptions};
use crate::error::{Error, IoContext, Result};
use crate::feeder;
use crate::input::{self, Target};
use crate::job::{self, Row, State};
use crate::log::{Age, Level};
use crate::output::{self, Format};
use crate::queue::{self, Changes, Queue, Selection, SubmitOptions};
use crate::store::Access;
use crate::{help, host, query};

/// Every option of every mode (as in the original, any option is accepted anywhere, so
/// `RQ_OPTS` can hold defaults for several modes).
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "rq",
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true,
    infer_long_args = true,
    dont_collapse_args_in_usage = true
)]
pub struct Options {
    /// Queue, mode and the mode's arguments.
    #[arg(allow_hyphen_values = false)]
    pub words: Vec<String>,
    /// Job priority (any integer; higher runs first).
    #[arg(short = 'p', long, allow_negative_numbers = true)]
    pub priority: Option<String>,
    /// Job tag.
    #[arg(short = 't', long)]
    pub tag: Option<String>,
    /// Only these hosts may run the job (comma-separated; exact or short host names).
    #[arg(long, visible_alias = "hosts")]
    pub runner: Option<String>,
    /// The job may be run again if its host dies.
    #[arg(long)]
    pub restartable: bool,
    /// Submit jobs in the holding state (they do not run until updated to pending).
    #[arg(long)]
    pub stage: bool,
    /// Read the job list from FILE.
    #[arg(short = 'i', long)]
    pub infile: Option<PathBuf>,
    /// Copy FILE (or standard input, `-`) as the jobs' stdin.
    #[arg(long, num_args = 0..=1, default_missing_value = "-")]
    pub stdin: Option<String>,
    /// Copy PATH (file or directory) as the jobs' data.
    #[arg(short = 'd', long)]
    pub data: Option<PathBuf>,
    /// Print nothing on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Only these fields (comma-separated prefixes).
    #[arg(short = 'f', long)]
    pub fields: Option<String>,
    /// Output format: yaml (default) or json.
    #[arg(long)]
    pub format: Option<String>,
    /// status: extra exit-status counters, e.g. 'ok=0 retry=75,76'.
    #[arg(long)]
    pub exit: Option<String>,
    /// submit: TERM the job after this long (e.g. 90s, 2h), KILL it a little later.
    #[arg(long)]
    pub timeout: Option<String>,
    /// submit: re-queue a job that fails up to N times.
    #[arg(long)]
    pub retries: Option<String>,
    /// submit: wait this long before the first retry (doubling each time; default 1s).
    #[arg(long = "retry-delay", visible_alias = "retry_delay")]
    pub retry_delay: Option<String>,
    /// Run a read-only mode on a consistent snapshot of the queue.
    #[arg(short = 's', long)]
    pub snapshot: bool,
    /// rotate: keep the archive as a directory (no .tgz).
    #[arg(long = "no-compress", visible_alias = "no_compress")]
    pub no_compress: bool,
    /// ioview: the program that shows the files (default $RQ_EDITOR or 'vim -R -o').
    #[arg(short = 'e', long)]
    pub editor: Option<String>,
    /// kill: the signal to send (default TERM).
    #[arg(long)]
    pub signal: Option<String>,
    /// feed: detach and run in the background.
    #[arg(short = 'D', long)]
    pub daemon: bool,
    /// feed: jobs run at once by this feeder (default: the number of CPUs).
    #[arg(long = "max_feed", visible_alias = "max-feed")]
    pub max_feed: Option<String>,
    /// feed: seconds between cheap checks for new jobs while idle (default 0.2).
    #[arg(long = "min_sleep", visible_alias = "min-sleep")]
    pub min_sleep: Option<String>,
    /// feed: seconds between full polls of the queue while idle (default 30).
    #[arg(long = "max_sleep", visible_alias = "max-sleep")]
    pub max_sleep: Option<String>,
    /// feed: the shell jobs run in, as a prefix (default 'bash --login -c').
    #[arg(long)]
    pub shell: Option<String>,
    /// feed: exit once nothing is running and nothing is left to run.
    #[arg(long = "exit_when_empty", visible_alias = "exit-when-empty")]
    pub exit_when_empty: bool,
    /// feed: log file (default: stderr; for start, a file in the state directory).
    #[arg(short = 'l', long)]
    pub log: Option<PathBuf>,
    /// feed: log level 0-4 or fatal, error, warn, info (default), debug.
    #[arg(short = 'v', long, num_args = 0..=1, default_missing_value = "debug")]
    pub verbosity: Option<String>,
    /// feed: start a new log file past this size (e.g. 10M).
    #[arg(long = "log_size", visible_alias = "log-size")]
    pub log_size: Option<String>,
    /// feed: start a new log file daily, weekly or monthly.
    #[arg(long = "log_age", visible_alias = "log-age")]
    pub log_age: Option<String>,
    /// feed: directory for per-host pid files and logs (default ~/.rq).
    #[arg(long = "dot_rq_dir", visible_alias = "dot-rq-dir")]
    pub dot_rq_dir: Option<PathBuf>,
    /// Print help.
    #[arg(short = 'h', long)]
    pub help: bool,
    /// Print the version.
    #[arg(long)]
    pub version: bool,
}

/// A parsed invocation.
#[derive(Debug)]
pub struct Invocation {
    pub queue: Option<PathBuf>,
    pub mode: Option<String>,
    pub args: Vec<String>,
    /// A lone `-` was given: read the list from standard input.
    pub dash: bool,
    pub opts: Options,
    /// The command line as given (a restarting feeder re-executes it).
    pub argv: Vec<String>,
}

/// Modes that only read the queue (they may run on a snapshot or an archive).
pub const READ_ONLY_MODES: &[&str] = &[
    "list", "status", "query", "stdin", "stdout", "stderr", "stdin4", "stdout4", "stderr4",
    "feeders",
];

/// The modes, each with the abbreviations it answers to.
pub const MODES: &[(&str, &[&str])] = &[
    ("create", &["c"]),
    ("submit", &["s"]),
    ("resubmit", &["r", "re"]),
    ("list", &["l", "ls"]),
    ("status", &["t"]),
    ("delete", &["d", "rm"]),
    ("update", &["u"]),
    ("query", &["q"]),
    ("execute", &["e"]),
    ("configure", &["C"]),
    ("touch", &["to"]),
    ("stdin", &["0"]),
    ("stdout", &["1"]),
    ("stderr", &["2"]),
    ("stdin4", &[]),
    ("stdout4", &[]),
    ("stderr4", &[]),
    ("feed", &["f"]),
    ("start", &[]),
    ("shutdown", &[]),
    ("stop", &[]),
    ("restart", &[]),
    ("pid", &[]),
    ("feeder", &[]),
    ("feeders", &[]),
    ("kill", &[]),
    ("wait", &[]),
    ("lock", &["L"]),
    ("snapshot", &["S"]),
    ("backup", &["B"]),
    ("rotate", &["R"]),
    ("recover", &[]),
    ("cron", &[]),
    ("crontab", &[]),
    ("ioview", &["io"]),
    ("tail", &["ta"]),
    ("completions", &[]),
    ("man", &[]),
    ("help", &["h", "H"]),
];

pub fn mode_name(word: &str) -> Option<&'static str> {
    MODES
        .iter()
        .find(|(name, abbrevs)| *name == word || abbrevs.contains(&word))
        .map(|(name, _)| *name)
}

fn clap_error(err: clap::Error) -> Error {
    let text = err.to_string();
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bad arguments")
        .trim_start_matches("error: ");
    Error::usage(format!("{line} (see 'rq help')"))
}

/// Parse argv (without the program name), `RQ_OPTS` and `RQ_Q`.
pub fn parse(argv: &[String]) -> Result<Invocation> {
    let env_opts = match std::env::var("RQ_OPTS").or_else(|_| std::env::var("RQ_OPTIONS")) {
        Ok(text) => shell_words::split(&text).map_err(|e| Error::usage(format!("RQ_OPTS: {e}")))?,
        Err(_) => Vec::new(),
    };
    let split = argv.iter().position(|a| a == "--");
    let (before, after) = match split {
        Some(i) => (&argv[..i], &argv[i + 1..]),
        None => (argv, &[][..]),
    };
    if !env_opts.is_empty() {
        let check = Options::try_parse_from(
            std::iter::once("rq".to_string()).chain(env_opts.iter().cloned()),
        )
        .map_err(|e| Error::usage(format!("RQ_OPTS: {}", clap_error(e))))?;
        if !check.words.is_empty() {
            return Err(Error::usage(format!(
                "RQ_OPTS may hold only options, not '{}'",
                check.words[0]
            )));
        }
    }
    let all = std::iter::once("rq".to_string())
        .chain(env_opts)
        .chain(before.iter().cloned());
    let mut opts = Options::try_parse_from(all).map_err(clap_error)?;
    let mut words = std::mem::take(&mut opts.words);
    let dash = words.iter().any(|w| w == "-");
    words.retain(|w| w != "-");
    words.extend(after.iter().cloned());

    let env_queue = std::env::var("RQ_Q")
        .or_else(|_| std::env::var("RQ_QUEUE"))
        .ok()
        .filter(|q| !q.is_empty());
    let mut words = words.into_iter();
    let (queue, mode) = match (env_queue, words.next()) {
        // With RQ_Q set, the first word is the mode when it names one.
        (Some(q), Some(first)) if mode_name(&first).is_some() => {
            (Some(PathBuf::from(q)), Some(first))
        }
        (Some(q), None) => (Some(PathBuf::from(q)), None),
        // Modes that need no queue.
        (_, Some(first)) if ["help", "h", "completions", "man"].contains(&first.as_str()) => {
            (None, Some(first))
        }
        (_, Some(first)) => (Some(PathBuf::from(first)), words.next()),
        (None, None) => (None, None),
    };
    Ok(Invocation {
        queue,
        mode,
        args: words.collect(),
        dash,
        opts,
        argv: argv.to_vec(),
    })
}

/// Standard output, where a closed pipe (`rq q list | head`) ends rq quietly.
struct Out {
    out: std::io::BufWriter<std::io::Stdout>,
}

impl Out {
    fn new() -> Out {
        Out {
            out: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    fn print(&mut self, text: &str) -> Result<()> {
        self.out
            .write_all(text.as_bytes())
            .context(|| "cannot write to standard output".into())
    }

    fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .context(|| "cannot write to standard output".into())
    }
}

/// Run an invocation; returns the process exit status.
pub fn run(argv: &[String]) -> Result<i32> {
    let inv = parse(argv)?;
    if inv.opts.version {
        println!("rq {}", env!("CARGO_PKG_VERSION"));
        return Ok(0);
    }
    let mode = inv.mode.as_deref().map(|m| (m, mode_name(m)));
    if inv.opts.help || matches!(mode, Some((_, Some("help")))) {
        let topic = match mode {
            Some((_, Some("help"))) => inv.args.first().cloned(),
            Some((m, _)) => Some(m.to_string()),
            None => None,
        };
        print!("{}", help::text(topic.as_deref())?);
        return Ok(0);
    }
    match mode {
        Some((_, Some("completions"))) => {
            return help::completions(inv.args.first().map(String::as_str));
        }
        Some((_, Some("man"))) => return help::man(),
        _ => {}
    }
    let Some(queue) = inv.queue.clone() else {
        eprint!("{}", help::SHORT);
        return Ok(1);
    };
    let Some((word, name)) = mode else {
        return Err(Error::usage(format!(
            "no mode given for queue {}: try 'rq {} status' or 'rq help'",
            queue.display(),
            queue.display()
        )));
    };
    let Some(name) = name else {
        return Err(Error::usage(format!(
            "unknown mode '{word}' (see 'rq help' for the modes)"
        )));
    };
    let format = match &inv.opts.format {
        Some(f) => Format::parse(f)?,
        None => Format::Yaml,
    };
    // A rotated archive (.tgz) and --snapshot both run read-only modes on a temporary copy.
    let mut _scratch: Option<tempfile::TempDir> = None;
    let mut queue = queue;
    let archive = queue.is_file() && queue.to_string_lossy().ends_with(".tgz");
    if archive || inv.opts.snapshot {
        if !READ_ONLY_MODES.contains(&name) {
            return Err(Error::usage(format!(
                "'{name}' changes the queue: it cannot run on {} (read-only modes: {})",
                if archive {
                    "an archive"
                } else {
                    "a --snapshot"
                },
                READ_ONLY_MODES.join(", ")
            )));
        }
        let tmp = tempfile::tempdir().context(|| "cannot make a temporary directory".into())?;
        queue = if archive {
            crate::admin::unpack(&queue, tmp.path())?
        } else {
            let mut live = Queue::open(&queue, Access::ReadOnly)?;
            let dest = tmp.path().join("snapshot");
            crate::admin::snapshot(&mut live, Some(&dest))?;
            dest
        };
        _scratch = Some(tmp);
    }
    let ctx = Context {
        inv: &inv,
        queue,
        format,
        out: Out::new(),
    };
    ctx.dispatch(name)
}

struct Context<'a> {
    inv: &'a Invocation,
    queue: PathBuf,
    format: Format,
    out: Out,
}

impl Context<'_> {
    fn dispatch(mut self, mode: &str) -> Result<i32> {
        let status = match mode {
            "create" => self.create(),
            "submit" => self.submit(false),
            "touch" => self.submit(true),
            "list" => self.list(),
            "status" => self.status(),
            "query" => self.query(),
            "delete" => self.delete(),
            "update" => self.update(),
            "resubmit" => self.resubmit(),
            "execute" => self.execute(),
            "configure" => self.configure(),
            "stdin" | "stdout" | "stderr" => self.dump(mode, false),
            "stdin4" | "stdout4" | "stderr4" => self.dump(&mode[..mode.len() - 1], true),
            "feed" => self.feed(false),
            "start" => self.feed(true),
            "shutdown" | "stop" | "restart" => {
                self.out.flush()?;
                control::signal_feeder(
                    &self.queue,
                    &host::name(),
                    self.inv.opts.dot_rq_dir.as_deref(),
                    mode,
                    self.inv.opts.quiet,
                )
            }
            "pid" => self.feeder_status(true),
            "feeders" => self.feeders(),
            "kill" => self.kill(),
            "wait" => self.wait(),
            "lock" => self.lock(),
            "snapshot" | "backup" | "rotate" => self.admin(mode),
            "recover" => self.recover(),
            "cron" => self.cron(None),
            "crontab" => self.cron(Some("tab")),
            "ioview" => self.ioview(),
            "tail" => self.tail(),
            "feeder" => {
                let pid_only = self.args().first().is_some_and(|a| a == "pid");
                self.feeder_status(pid_only)
            }
            other => Err(Error::usage(format!("unknown mode '{other}'"))),
        }?;
        self.out.flush()?;
        Ok(status)
    }

    fn open(&self, access: Access) -> Result<Queue> {
        Queue::open(&self.queue, access)
    }

    fn args(&self) -> &[String] {
        &self.inv.args
    }

    /// Read standard input when `-` was given, or when nothing was named on the command
    /// line and standard input is not a terminal.
    fn stdin_text(&self, named_anything: bool) -> Result<Option<String>> {
        let stdin = std::io::stdin();
        if self.inv.dash || (!named_anything && !stdin.is_terminal()) {
            let mut bytes = Vec::new();
            stdin
                .lock()
                .read_to_end(&mut bytes)
                .context(|| "cannot read standard input".into())?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::input("standard input is not valid UTF-8 text"))?;
            return Ok(Some(text));
        }
        Ok(None)
    }

    fn fields(&self) -> Result<Option<Vec<String>>> {
        match &self.inv.opts.fields {
            Some(spec) => {
                let all: Vec<String> = job::FIELDS.iter().map(|s| s.to_string()).collect();
                Ok(Some(job::select_fields(spec, &all)?))
            }
            None => Ok(None),
        }
    }

    fn print_rows(&mut self, rows: &[Row]) -> Result<()> {
        if self.inv.opts.quiet {
            return Ok(());
        }
        let fields = self.fields()?;
        let text = output::rows(rows, fields.as_deref(), self.format);
        self.out.print(&text)
    }

    /// Print rows chunk by chunk (YAML: one `---`; JSON: one array).
    fn stream_rows(
        &mut self,
        mut fetch: impl FnMut(&mut dyn FnMut(Vec<Row>) -> Result<()>) -> Result<()>,
    ) -> Result<usize> {
        let fields = self.fields()?;
        let format = self.format;
        if format == Format::Table {
            let mut all = Vec::new();
            fetch(&mut |rows: Vec<Row>| {
                all.extend(rows);
                Ok(())
            })?;
            let text = output::rows(&all, fields.as_deref(), Format::Table);
            self.out.print(&text)?;
            return Ok(all.len());
        }
        let mut count = 0usize;
        let out = &mut self.out;
        if format == Format::Json {
            out.print("[")?;
        }
        fetch(&mut |rows: Vec<Row>| {
            let text = match format {
                Format::Yaml | Format::Table => {
                    let text = output::rows(&rows, fields.as_deref(), Format::Yaml);
                    if count == 0 {
                        text
                    } else {
                        text.trim_start_matches("---\n").to_string()
                    }
                }
                Format::Json => {
                    let text = output::rows(&rows, fields.as_deref(), Format::Json);
                    let inner = text
                        .trim()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .trim_end();
                    if inner.trim().is_empty() {
                        String::new()
                    } else if count == 0 {
                        inner.to_string()
                    } else {
                        format!(",{inner}")
                    }
                }
            };
            count += rows.len();
            out.print(&text)
        })?;
        if format == Format::Json {
            out.print(if count == 0 { "]\n" } else { "\n]\n" })?;
        }
        Ok(count)
    }

    fn print_value(&mut self, value: &serde_json::Value) -> Result<()> {
        let text = output::value(value, self.format);
        self.out.print(&text)
    }

    fn report_skipped(&self, verb: &str, skipped: &[queue::Skipped]) -> i32 {
        for s in skipped {
            eprintln!("rq: job {} not {verb}: {}", s.jid, s.why);
        }
        if skipped.is_empty() { 0 } else { 1 }
    }

    fn create(&mut self) -> Result<i32> {
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

    fn submit_options(&self) -> Result<SubmitOptions> {
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
        })
    }

    fn submit(&mut self, touch: bool) -> Result<i32> {
        let mut opts = self.submit_options()?;
        let mut specs = Vec::new();
        if !self.args().is_empty() {
            specs.push(input::JobSpec {
                command: self.args().join(" "),
                ..Default::default()
            });
        }
        if let Some(file) = &self.inv.opts.infile {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::input(format!("{}: {e}", file.display())))?;
            specs.extend(input::parse_jobs(&text)?);
        }
        let stdin_wanted = self.inv.opts.stdin.as_deref() == Some("-");
        let named = !specs.is_empty();
        if stdin_wanted && self.inv.dash {
            return Err(Error::usage(
                "cannot read both the job list and --stdin from standard input; use --infile or --stdin FILE",
            ));
        }
        // Keeps the spooled copy of standard input alive until the jobs are submitted.
        let mut _spool: Option<tempfile::NamedTempFile> = None;
        if stdin_wanted {
            let mut spool =
                tempfile::NamedTempFile::new().context(|| "cannot make a temporary file".into())?;
            std::io::copy(&mut std::io::stdin().lock(), &mut spool)
                .context(|| "cannot read standard input".into())?;
            opts.stdin = Some(spool.path().to_path_buf());
            _spool = Some(spool);
        } else {
            if let Some(path) = &self.inv.opts.stdin {
                opts.stdin = Some(PathBuf::from(path));
            }
            if let Some(text) = self.stdin_text(named)? {
                specs.extend(input::parse_jobs(&text)?);
            }
        }
        if specs.is_empty() {
            if self.inv.dash {
                eprintln!("rq: no jobs on standard input; nothing submitted");
                return Ok(0);
            }
            return Err(Error::usage(
                "no jobs given: name a command, use --infile FILE, or pipe a job list (see 'rq help submit')",
            ));
        }
        let mut q = self.open(Access::ReadWrite)?;
        let rows = if touch {
            q.touch(&specs, &opts)?
        } else {
            q.submit(&specs, &opts)?
        };
        self.print_rows(&rows)?;
        Ok(0)
    }

    /// Targets named on the command line and, where wanted, on standard input.
    fn targets(&self, states_allowed: bool) -> Result<Vec<Target>> {
        let mut targets = Vec::new();
        for word in self.args() {
            targets.push(input::parse_target_word(word, states_allowed).map_err(Error::usage)?);
        }
        if let Some(text) = self.stdin_text(!targets.is_empty())? {
            targets.extend(input::parse_targets(&text, states_allowed)?);
        }
        Ok(targets)
    }

    fn list(&mut self) -> Result<i32> {
        let targets = self.targets(true)?;
        let selection = if targets.is_empty() {
            if self.inv.dash {
                return Ok(0);
            }
            Selection {
                all: true,
                ..Default::default()
            }
        } else {
            Selection::from_targets(&targets)
        };
        let mut q = self.open(Access::ReadOnly)?;
        self.stream_rows(|each| q.list(&selection, each))?;
        Ok(0)
    }

    fn query(&mut self) -> Result<i32> {
        let mut words: Vec<String> = self.args().to_vec();
        if words.is_empty()
            && let Some(text) = self.stdin_text(false)?
        {
            words.push(strip_comments(&text));
        }
        let clause = query::parse(&words)?;
        let mut q = self.open(Access::ReadOnly)?;
        self.stream_rows(|each| q.query(&clause, each))?;
        Ok(0)
    }

    fn status(&mut self) -> Result<i32> {
        let exit_map = parse_exit_map(self.inv.opts.exit.as_deref().unwrap_or(""))?;
        let mut q = self.open(Access::ReadOnly)?;
        let report = q.status(&exit_map)?;
        self.print_value(&report)?;
        Ok(0)
    }

    fn delete(&mut self) -> Result<i32> {
        let targets = self.targets(true)?;
        if targets.is_empty() {
            if self.inv.dash {
                eprintln!("rq: no jobs on standard input; nothing deleted");
                return Ok(0);
            }
            return Err(Error::usage(
                "nothing to delete: name jids, a state, 'all', or '-' to read jids",
            ));
        }
        let mut q = self.open(Access::ReadWrite)?;
        let (rows, skipped) = q.delete(&Selection::from_targets(&targets))?;
        self.print_rows(&rows)?;
        Ok(self.report_skipped("deleted", &skipped))
    }

    fn resubmit(&mut self) -> Result<i32> {
        let targets = self.targets(true)?;
        if targets.is_empty() {
            if self.inv.dash {
                eprintln!("rq: no jobs on standard input; nothing resubmitted");
                return Ok(0);
            }
            return Err(Error::usage(
                "nothing to resubmit: name jids, a state, or '-' to read jids",
            ));
        }
        let opts = self.submit_options()?;
        if opts.data.is_some() || self.inv.opts.stdin.is_some() {
            return Err(Error::usage(
                "resubmit keeps each job's stdin and data; change them with 'update stdin=FILE data=PATH'",
            ));
        }
        let mut q = self.open(Access::ReadWrite)?;
        let (rows, skipped) = q.resubmit(&Selection::from_targets(&targets), &opts)?;
        self.print_rows(&rows)?;
        Ok(self.report_skipped("resubmitted", &skipped))
    }

    fn update(&mut self) -> Result<i32> {
        let mut changes = Changes::default();
        let mut targets = Vec::new();
        for word in self.args() {
            if let Some((key, value)) = word.split_once('=')
                && key != "jid"
            {
                apply_change(&mut changes, key, value)?;
                continue;
            }
            match input::parse_target_word(word, true).map_err(Error::usage)? {
                Target::State(s @ (State::Pending | State::Holding)) => {
                    targets.push(Target::State(s))
                }
                Target::Jid(j) => targets.push(Target::Jid(j)),
                _ => {
                    return Err(Error::usage(format!(
                        "update: '{word}' is not a jid, 'pending', 'holding' or key=value"
                    )));
                }
            }
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
            return Err(Error::usage(
                "update: nothing to change; give key=value, e.g. priority=5 or state=holding",
            ));
        }
        for path in changes.stdin.iter().chain(changes.data.iter()) {
            if !path.exists() {
                return Err(Error::input(format!("{}: no such file", path.display())));
            }
        }
        if let Some(text) = self.stdin_text(!targets.is_empty())? {
            for t in input::parse_targets(&text, true)? {
                match t {
                    Target::Jid(_) | Target::State(State::Pending | State::Holding) => {
                        targets.push(t)
                    }
                    _ => {
                        return Err(Error::input(
                            "update reads jids, 'pending' or 'holding' from standard input",
                        ));
                    }
                }
            }
        }
        if targets.is_empty() {
            if self.inv.dash {
                eprintln!("rq: no jobs on standard input; nothing updated");
                return Ok(0);
            }
            return Err(Error::usage(
                "update: no jobs named; give jids, 'pending', 'holding', or '-' to read jids",
            ));
        }
        let mut q = self.open(Access::ReadWrite)?;
        let (rows, skipped) = q.update(&Selection::from_targets(&targets), &changes)?;
        self.print_rows(&rows)?;
        Ok(self.report_skipped("updated", &skipped))
    }

    fn execute(&mut self) -> Result<i32> {
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

    fn configure(&mut self) -> Result<i32> {
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
            validate_setting(key, value)?;
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

    fn dump(&mut self, stream: &str, paths_only: bool) -> Result<i32> {
        let targets = self.targets(false)?;
        if targets.is_empty() {
            return Err(Error::usage(format!(
                "{stream}: name the jids whose {stream} to show"
            )));
        }
        let q = self.open(Access::ReadOnly)?;
        for target in targets {
            let Target::Jid(jid) = target else { continue };
            let path = q.dir().join(stream).join(jid.to_string());
            if paths_only {
                self.out.print(&format!("{}\n", path.display()))?;
            } else if let Ok(mut file) = std::fs::File::open(&path) {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)
                    .context(|| format!("cannot read {}", path.display()))?;
                self.out
                    .out
                    .write_all(&bytes)
                    .context(|| "cannot write to standard output".into())?;
            }
        }
        Ok(0)
    }
}

impl Context<'_> {
    fn feed(&mut self, start_mode: bool) -> Result<i32> {
        if let Some(extra) = self.args().first() {
            return Err(Error::usage(format!(
                "{} takes no arguments (got '{extra}')",
                if start_mode { "start" } else { "feed" }
            )));
        }
        let o = &self.inv.opts;
        let seconds = |name: &str, value: &Option<String>, default: f64| -> Result<f64> {
            match value {
                Some(v) => crate::time::parse_duration(v).ok_or_else(|| {
                    Error::usage(format!("--{name}: '{v}' is not a number of seconds"))
                }),
                None => Ok(default),
            }
        };
        let max_feed = match &o.max_feed {
            Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::usage(format!("--max_feed: '{v}' is not a positive whole number"))
            })?,
            None => crate::process::cpus(),
        };
        let min_sleep = seconds("min_sleep", &o.min_sleep, 0.2)?;
        let max_sleep = seconds("max_sleep", &o.max_sleep, 30.0)?.max(min_sleep);
        let shell = match &o.shell {
            Some(s) => {
                let words: Vec<String> = s.split_whitespace().map(String::from).collect();
                if words.is_empty() {
                    return Err(Error::usage("--shell: empty"));
                }
                words
            }
            None => feeder::Config::default_shell(),
        };
        let level = match &o.verbosity {
            Some(v) => Level::parse(v)?,
            None => Level::Info,
        };
        let max_size = match &o.log_size {
            Some(v) => Some(parse_bytes(v).ok_or_else(|| {
                Error::usage(format!(
                    "--log_size: '{v}' is not a size like 1000000 or 10M"
                ))
            })?),
            None => None,
        };
        let age = o.log_age.as_deref().map(Age::parse).transpose()?;
        let request = FeedRequest {
            queue: self.queue.clone(),
            state_base: o.dot_rq_dir.clone(),
            config: feeder::Config {
                host: host::name(),
                max_feed,
                shell,
                min_sleep,
                max_sleep,
                exit_when_empty: o.exit_when_empty,
                kill_grace: 5.0,
            },
            log: LogOptions {
                path: o.log.clone().map(|p| queue::resolve(&p)),
                level,
                max_size,
                age,
            },
            daemon: o.daemon || start_mode,
            quiet: o.quiet,
            argv: self.inv.argv.clone(),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        };
        self.out.flush()?;
        control::feed(request, start_mode)
    }

    fn feeder_status(&mut self, pid_only: bool) -> Result<i32> {
        let pid = control::running_feeder(
            &self.queue,
            &host::name(),
            self.inv.opts.dot_rq_dir.as_deref(),
        )?;
        let value = if pid_only {
            serde_json::json!({ "pid": pid })
        } else {
            serde_json::json!({ "feeder": pid.is_some() })
        };
        self.print_value(&value)?;
        Ok(if pid.is_some() { 0 } else { 1 })
    }
}

fn duration_option(name: &str, value: &Option<String>) -> Result<Option<f64>> {
    match value {
        Some(v) => crate::time::parse_duration(v).map(Some).ok_or_else(|| {
            Error::usage(format!(
                "--{name}: '{v}' is not a duration like 90s, 15m or 2h"
            ))
        }),
        None => Ok(None),
    }
}

impl Context<'_> {
    /// `rq Q feeders`: every host that has fed the queue, judged by its heartbeat.
    fn feeders(&mut self) -> Result<i32> {
        let mut q = self.open(Access::ReadOnly)?;
        let lease = q.setting("lease")?;
        let heartbeat = q.setting("heartbeat")?;
        let max_attempts = q.setting("max_attempts")?;
        let settings = crate::liveness::Settings::from_attributes(|k| match k {
            "lease" => lease.clone(),
            "heartbeat" => heartbeat.clone(),
            "max_attempts" => max_attempts.clone(),
            _ => None,
        });
        let running: Vec<(String, i64)> = q.store().read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT runner, count(*) FROM jobs WHERE state = 'running' GROUP BY runner",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                        r.get(1)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        let now = crate::liveness::server_now(q.dir(), &host::name())?;
        let mut rows = Vec::new();
        for (info, age) in crate::liveness::known_hosts(q.dir(), now) {
            let name = info["host"].as_str().unwrap_or("?").to_string();
            let stopped = info["stopped"].as_bool().unwrap_or(false);
            let alive = !stopped && age.is_some_and(|a| a <= settings.lease);
            let count = running
                .iter()
                .find(|(h, _)| *h == name)
                .map_or(0, |(_, n)| *n);
            let cell = |v: &serde_json::Value| match v {
                serde_json::Value::Number(n) => n.as_i64().map_or(job::Cell::Null, job::Cell::Int),
                serde_json::Value::String(s) => job::Cell::Text(s.clone()),
                _ => job::Cell::Null,
            };
            rows.push(Row {
                columns: vec![
                    ("host".into(), job::Cell::Text(name)),
                    ("alive".into(), job::Cell::Bool(alive)),
                    (
                        "state".into(),
                        job::Cell::Text(
                            if stopped {
                                "stopped"
                            } else if alive {
                                "alive"
                            } else {
                                "dead"
                            }
                            .into(),
                        ),
                    ),
                    (
                        "heartbeat_age".into(),
                        age.map_or(job::Cell::Null, |a| {
                            job::Cell::Real((a * 10.0).round() / 10.0)
                        }),
                    ),
                    ("running".into(), job::Cell::Int(count)),
                    ("max_feed".into(), cell(&info["max_feed"])),
                    ("pid".into(), cell(&info["pid"])),
                    ("started".into(), cell(&info["started"])),
                    ("version".into(), cell(&info["version"])),
                    ("feeder".into(), cell(&info["feeder"])),
                ],
            });
        }
        let text = output::rows(&rows, None, self.format);
        self.out.print(&text)?;
        Ok(0)
    }

    /// `rq Q kill JID... [--signal SIG]`: ask each job's feeder, wherever it runs, to signal
    /// the job's process group.
    fn kill(&mut self) -> Result<i32> {
        let signal = match &self.inv.opts.signal {
            Some(s) => crate::process::parse_signal(s).ok_or_else(|| {
                Error::usage(format!(
                    "--signal: unknown signal '{s}' (e.g. TERM, KILL, INT, 9)"
                ))
            })?,
            None => libc::SIGTERM,
        };
        let targets = self.targets(false)?;
        if targets.is_empty() {
            return Err(Error::usage(
                "kill: name the jids of running jobs (or '-' to read them)",
            ));
        }
        let jids: Vec<i64> = targets
            .iter()
            .filter_map(|t| match t {
                Target::Jid(j) => Some(*j),
                _ => None,
            })
            .collect();
        let mut q = self.open(Access::ReadWrite)?;
        let (rows, skipped) = q.request_kill(&jids, &crate::process::signal_name(signal))?;
        self.print_rows(&rows)?;
        Ok(self.report_skipped("signalled", &skipped))
    }

    /// `rq Q wait [JIDS|STATES|query]`: until the jobs are finished or dead; exit 0 only
    /// if every one succeeded.
    fn wait(&mut self) -> Result<i32> {
        let args = self.args().to_vec();
        let looks_like_query = args.iter().any(|a| a.contains(['=', '<', '>', '~', ' ']));
        let mut q = self.open(Access::ReadOnly)?;
        let mut jids = Vec::new();
        if looks_like_query {
            let clause = query::parse(&args)?;
            q.query(&clause, &mut |rows| {
                jids.extend(rows.iter().map(Row::jid));
                Ok(())
            })?;
        } else {
            let targets = self.targets(true)?;
            let selection = if targets.is_empty() {
                Selection {
                    all: true,
                    ..Default::default()
                }
            } else {
                Selection::from_targets(&targets)
            };
            q.list(&selection, &mut |rows| {
                jids.extend(rows.iter().map(Row::jid));
                Ok(())
            })?;
        }
        let tty = std::io::stderr().is_terminal();
        let mut delay = 0.2f64;
        loop {
            let progress = q.progress(&jids)?;
            if tty {
                let width = 30usize;
                let done = progress.finished + progress.dead + progress.gone;
                let filled = if jids.is_empty() {
                    width
                } else {
                    done * width / jids.len()
                };
                eprint!(
                    "\r[{}{}] {done}/{} done, {} running, {} pending{}",
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    jids.len(),
                    progress.running,
                    progress.pending,
                    if progress.holding > 0 {
                        format!(", {} holding", progress.holding)
                    } else {
                        String::new()
                    }
                );
            }
            if progress.pending + progress.running + progress.holding == 0 {
                if tty {
                    eprintln!();
                    if progress.failed > 0 || progress.dead > 0 {
                        eprintln!("rq: {} failed, {} dead", progress.failed, progress.dead);
                    }
                }
                return Ok(if progress.failed + progress.dead + progress.gone == 0 {
                    0
                } else {
                    1
                });
            }
            std::thread::sleep(Duration::from_secs_f64(delay));
            delay = (delay * 1.5).min(2.0);
        }
    }

    /// `rq Q lock read|shared|write|exclusive -- COMMAND...`: run a command holding the
    /// queue lock; rq exits with the command's status.
    fn lock(&mut self) -> Result<i32> {
        let Some((kind, command)) = self.args().split_first() else {
            return Err(Error::usage(
                "lock: say read|shared|write|exclusive, then the command (after --)",
            ));
        };
        let exclusive = match kind.to_ascii_lowercase().as_str() {
            k if k.starts_with('r') || k.starts_with("sh") => false,
            k if k.starts_with('w') || k.starts_with("ex") => true,
            _ => {
                return Err(Error::usage(format!(
                    "lock: '{kind}' is not read, shared, write or exclusive"
                )));
            }
        };
        if command.is_empty() {
            return Err(Error::usage("lock: no command given (put it after --)"));
        }
        let command = command.join(" ");
        self.out.flush()?;
        let mut q = self.open(Access::ReadWrite)?;
        let status = q.store().with_lock(exclusive, || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .status()
                .context(|| format!("cannot run {command}"))
        })?;
        Ok(status
            .code()
            .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
    }
}

impl Context<'_> {
    fn admin(&mut self, mode: &str) -> Result<i32> {
        if self.args().len() > 1 {
            return Err(Error::usage(format!(
                "{mode} takes at most one destination"
            )));
        }
        let dest = self.args().first().map(PathBuf::from);
        let mut q = self.open(if mode == "rotate" {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        })?;
        let report = match mode {
            "snapshot" => crate::admin::snapshot(&mut q, dest.as_deref())?,
            "backup" => crate::admin::backup(&mut q, dest.as_deref())?,
            _ => crate::admin::rotate(&mut q, dest.as_deref(), self.inv.opts.no_compress)?,
        };
        if !self.inv.opts.quiet {
            self.print_value(&report)?;
        }
        Ok(0)
    }

    fn recover(&mut self) -> Result<i32> {
        let dir = queue::resolve(&self.queue);
        if !dir.is_dir() {
            return Err(Error::NoQueue { path: dir });
        }
        self.out.flush()?;
        let report = crate::admin::recover(&dir)?;
        self.print_value(&report)?;
        Ok(if report["integrity"] == "ok" { 0 } else { 1 })
    }

    /// The feeder options given on this command line, as `--name=value` words for cron.
    fn feeder_options(&self) -> Vec<String> {
        let o = &self.inv.opts;
        let mut out = Vec::new();
        let mut add = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                out.push(format!("--{name}={v}"));
            }
        };
        add("max_feed", &o.max_feed);
        add("min_sleep", &o.min_sleep);
        add("max_sleep", &o.max_sleep);
        add("shell", &o.shell);
        add("verbosity", &o.verbosity);
        add("log_size", &o.log_size);
        add("log_age", &o.log_age);
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| queue::resolve(p).to_string_lossy().into_owned())
        };
        add("log", &path(&o.log));
        add("dot_rq_dir", &path(&o.dot_rq_dir));
        out
    }

    fn cron(&mut self, fixed: Option<&str>) -> Result<i32> {
        let args = self.args().to_vec();
        let action = fixed
            .map(String::from)
            .or_else(|| args.first().cloned())
            .unwrap_or_else(|| "start".into());
        let rotate = args
            .iter()
            .skip(usize::from(fixed.is_none()))
            .any(|a| a == "rotate");
        let rq = std::env::current_exe().context(|| "cannot find the rq executable".into())?;
        let rq = PathBuf::from(
            rq.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string(),
        );
        let dir = Queue::open(&self.queue, Access::ReadOnly)?
            .dir()
            .to_path_buf();
        let options = self.feeder_options();
        match action.as_str() {
            "add" | "start" => {
                let (lines, changed) = crate::cron::add(&rq, &dir, &options, rotate)?;
                if !self.inv.opts.quiet {
                    self.print_value(
                        &serde_json::json!({ "installed": lines, "changed": changed }),
                    )?;
                }
                if action == "start" {
                    self.out.flush()?;
                    return self.feed(true);
                }
                Ok(0)
            }
            "tab" => {
                for line in crate::cron::lines(&rq, &dir, &options, rotate) {
                    self.out.print(&format!("{line}\n"))?;
                }
                Ok(0)
            }
            "delete" | "shutdown" | "stop" => {
                let removed = crate::cron::delete(&rq, &dir)?;
                if !self.inv.opts.quiet {
                    self.print_value(&serde_json::json!({ "removed": removed }))?;
                }
                if action != "delete" {
                    self.out.flush()?;
                    let _ = control::signal_feeder(
                        &self.queue,
                        &host::name(),
                        self.inv.opts.dot_rq_dir.as_deref(),
                        &action,
                        self.inv.opts.quiet,
                    )?;
                }
                Ok(0)
            }
            other => Err(Error::usage(format!(
                "cron: '{other}' is not start, add, tab, delete, shutdown or stop"
            ))),
        }
    }

    /// `ioview JID...`: open each job's stdin, stdout and stderr in an editor.
    fn ioview(&mut self) -> Result<i32> {
        let targets = self.targets(false)?;
        if targets.is_empty() {
            return Err(Error::usage("ioview: name the jids to show"));
        }
        let editor = self
            .inv
            .opts
            .editor
            .clone()
            .or_else(|| std::env::var("RQ_EDITOR").ok())
            .or_else(|| std::env::var("RQ_IOVIEW").ok())
            .unwrap_or_else(|| "vim -R -o".into());
        let q = self.open(Access::ReadOnly)?;
        self.out.flush()?;
        let mut worst = 0;
        for t in targets {
            let Target::Jid(jid) = t else { continue };
            let files: Vec<PathBuf> = ["stdin", "stdout", "stderr"]
                .iter()
                .map(|s| q.dir().join(s).join(jid.to_string()))
                .filter(|p| p.exists())
                .collect();
            if files.is_empty() {
                eprintln!("rq: job {jid} has no stdin, stdout or stderr files (yet)");
                worst = worst.max(1);
                continue;
            }
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{editor} \"$@\""))
                .arg("rq-ioview")
                .args(&files)
                .status()
                .context(|| format!("cannot run {editor}"))?;
            worst = worst.max(status.code().unwrap_or(1));
        }
        Ok(worst)
    }

    /// `tail JID`: follow a job's stdout and stderr until it has finished (from any host:
    /// the files are reopened on every poll, so NFS close-to-open shows new data).
    fn tail(&mut self) -> Result<i32> {
        let targets = self.targets(false)?;
        let [Target::Jid(jid)] = targets.as_slice() else {
            return Err(Error::usage("tail: name exactly one jid"));
        };
        let jid = *jid;
        let mut q = self.open(Access::ReadOnly)?;
        let paths = [
            q.dir().join("stdout").join(jid.to_string()),
            q.dir().join("stderr").join(jid.to_string()),
        ];
        let mut offsets = [0u64; 2];
        let mut delay = 0.1f64;
        loop {
            let progress = q.progress(&[jid])?;
            if progress.gone == 1 {
                return Err(Error::usage(format!("tail: no job {jid}")));
            }
            let done = progress.pending + progress.holding + progress.running == 0;
            let mut grew = false;
            for (i, path) in paths.iter().enumerate() {
                let Ok(mut file) = std::fs::File::open(path) else {
                    continue;
                };
                use std::io::Seek;
                if file.seek(std::io::SeekFrom::Start(offsets[i])).is_err() {
                    continue;
                }
                let mut bytes = Vec::new();
                if file.read_to_end(&mut bytes).is_ok() && !bytes.is_empty() {
                    offsets[i] += bytes.len() as u64;
                    grew = true;
                    if i == 0 {
                        self.out
                            .out
                            .write_all(&bytes)
                            .context(|| "cannot write to standard output".into())?;
                        self.out.flush()?;
                    } else {
                        std::io::stderr()
                            .write_all(&bytes)
                            .context(|| "cannot write to standard error".into())?;
                    }
                }
            }
            if done && !grew {
                return Ok(0);
            }
            delay = if grew { 0.1 } else { (delay * 1.5).min(1.0) };
            std::thread::sleep(Duration::from_secs_f64(delay));
        }
    }
}

/// `1000`, `64K`, `10M`, `1G`.
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&text[..i], 1 << 20),
        (i, 'g' | 'G') => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    number
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| n * scale)
}

/// Keys `configure` knows the meaning of are checked; others are stored as given.
fn validate_setting(key: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Ok(());
    }
    let duration = ["heartbeat", "lease"];
    if duration.contains(&key) && crate::time::parse_duration(value).is_none() {
        return Err(Error::usage(format!(
            "configure: {key} must be a duration like 10s or 2m, not '{value}'"
        )));
    }
    if key == "max_attempts" && value.parse::<u32>().is_err() {
        return Err(Error::usage(format!(
            "configure: max_attempts must be a whole number, not '{value}'"
        )));
    }
    Ok(())
}

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
            if value.trim().is_empty() {
                return Err(Error::usage("update: command cannot be empty"));
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
