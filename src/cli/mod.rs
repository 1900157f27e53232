//! The command line: `rq QUEUE MODE [ARGS] [OPTIONS]`. Options may appear anywhere, `--`
//! ends them, `RQ_OPTS` supplies defaults the command line overrides, and `RQ_Q` supplies
//! the queue.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use clap::Parser;

use crate::control::{self};
use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::job::{self, Row};
use crate::output::{self, Format};
use crate::queue::{self, Queue};
use crate::store::Access;
use crate::store::Filter as Clause;

mod data;
mod feeding;
pub mod help;
mod manage;
mod select;

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
    #[arg(short = 'p', long, allow_negative_numbers = true, value_name = "N")]
    pub priority: Option<String>,
    /// Job tag.
    #[arg(short = 't', long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Only these hosts may run the job (comma-separated; exact or short host names).
    #[arg(long, visible_alias = "hosts", value_name = "HOSTS")]
    pub runner: Option<String>,
    /// The job may be run again if its host dies.
    #[arg(long)]
    pub restartable: bool,
    /// Submit jobs in the holding state (they do not run until updated to pending).
    #[arg(long)]
    pub stage: bool,
    /// Read the job list from FILE.
    #[arg(short = 'i', long, value_name = "FILE")]
    pub infile: Option<PathBuf>,
    /// Copy FILE (or standard input, `-`) as the jobs' stdin.
    #[arg(long, num_args = 0..=1, default_missing_value = "-", value_name = "FILE")]
    pub stdin: Option<String>,
    /// Copy PATH (file or directory) as the jobs' data.
    #[arg(short = 'd', long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Print nothing on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// submit: print only the new jobs' jids, one per line (as `sbatch --parsable`).
    #[arg(long)]
    pub parsable: bool,
    /// Only these fields (comma-separated prefixes).
    #[arg(short = 'f', long, value_name = "FIELDS")]
    pub fields: Option<String>,
    /// Output format: yaml, json or table (default: table on a terminal for list, query,
    /// status and feeders; yaml otherwise).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Colour on a terminal: auto (default; never when NO_COLOR is set), always, never.
    #[arg(long, visible_alias = "colour", value_name = "WHEN")]
    pub color: Option<String>,
    /// list, query: every field of each job, a block per job (the table shows the main
    /// ones). -l means --long in list and query (elsewhere it is --log).
    #[arg(short = 'L', long)]
    pub long: bool,
    /// status: a live view, refreshed every second (the same as the mode `top`).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// status: extra exit-status counters, e.g. 'ok=0 retry=75,76'.
    #[arg(long, value_name = "MAP")]
    pub exit: Option<String>,
    /// submit: TERM the job after this long (e.g. 90s, 2h, 1h30m), KILL it a little later.
    /// wait: give up after this long (exit status 124).
    // Hyphen values are taken, so '-5s' is refused as a duration, not as an option.
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// submit: re-queue a job that fails up to N times.
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub retries: Option<String>,
    /// submit: wait this long before the first retry (doubling each time; default 1s).
    #[arg(
        long = "retry-delay",
        visible_alias = "retry_delay",
        allow_hyphen_values = true,
        value_name = "DURATION"
    )]
    pub retry_delay: Option<String>,
    /// submit: run only after these jobs finished with exit 0 (jids, array:ID; comma-separated).
    #[arg(long, value_name = "JIDS")]
    pub after: Option<String>,
    /// submit: run only after these jobs ended, whatever the result.
    #[arg(long = "after-any", visible_alias = "after_any", value_name = "JIDS")]
    pub after_any: Option<String>,
    /// submit: one job per index, e.g. 1-1000, 1-1000:2, 3,5,8-10; %N runs at most N at once.
    #[arg(long, value_name = "SPEC")]
    pub array: Option<String>,
    /// submit: one job per line of FILE, the line in RQ_ITEM.
    #[arg(long = "each-line", visible_alias = "each_line", value_name = "FILE")]
    pub each_line: Option<PathBuf>,
    /// submit: replace {} in the command by the array index or the line.
    #[arg(long)]
    pub subst: bool,
    /// submit: do not start before this time (22:00, 2026-12-24T08:00; local unless a zone is given).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// submit: do not start before this long from now (e.g. 90m, 2h).
    #[arg(long = "in", value_name = "DURATION")]
    pub in_: Option<String>,
    /// submit: set KEY=VALUE in the job's environment (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// submit: run the job with this environment (all but terminal/session variables).
    #[arg(long)]
    pub export: bool,
    /// submit: CPUs each job needs (default 1); feed: CPUs this host offers (default: all).
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// submit: memory each job needs (e.g. 4G; default 0: not counted); feed: memory this
    /// host offers (default: all).
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    /// submit: GPUs each job needs (default 0); feed: this host's GPU devices (e.g. 0,1,2,3,
    /// or auto: the devices nvidia-smi lists; default none).
    #[arg(long, value_name = "N|LIST")]
    pub gpus: Option<String>,
    /// list, query, status: only jobs submitted by me.
    #[arg(long)]
    pub mine: bool,
    /// delete: also delete jobs others wait for (those are cancelled).
    #[arg(long)]
    pub force: bool,
    /// Run a read-only mode on a consistent snapshot of the queue.
    #[arg(short = 's', long)]
    pub snapshot: bool,
    /// export: the new queue (a directory or a PostgreSQL URL) the jobs move into.
    #[arg(long, value_name = "QUEUE")]
    pub to: Option<PathBuf>,
    /// export: the job-file directory of a new PostgreSQL queue (as configure files=).
    #[arg(long, value_name = "DIR")]
    pub files: Option<PathBuf>,
    /// rotate: keep the archive as a directory (no .tgz).
    #[arg(long = "no-compress", visible_alias = "no_compress")]
    pub no_compress: bool,
    /// ioview: the program that shows the files (default $RQ_EDITOR or 'vim -R -o').
    #[arg(short = 'e', long, value_name = "CMD")]
    pub editor: Option<String>,
    /// kill: the signal to send (default TERM).
    #[arg(long, value_name = "SIG")]
    pub signal: Option<String>,
    /// feed, serve: detach and run in the background.
    #[arg(short = 'D', long)]
    pub daemon: bool,
    /// feed: jobs run at once by this feeder (default: the number of CPUs).
    #[arg(long = "max_feed", visible_alias = "max-feed", value_name = "N")]
    pub max_feed: Option<String>,
    /// feed: seconds between cheap checks for new jobs while idle (default 0.2).
    #[arg(
        long = "min_sleep",
        visible_alias = "min-sleep",
        value_name = "SECONDS"
    )]
    pub min_sleep: Option<String>,
    /// feed: seconds between full polls of the queue while idle (default 30).
    #[arg(
        long = "max_sleep",
        visible_alias = "max-sleep",
        value_name = "SECONDS"
    )]
    pub max_sleep: Option<String>,
    /// feed: the shell jobs run in, as a prefix (default 'bash --login -c'); 'none' runs
    /// plain commands without a shell.
    #[arg(long, value_name = "CMD")]
    pub shell: Option<String>,
    /// feed: exit once nothing is running and nothing is left to run.
    #[arg(long = "exit_when_empty", visible_alias = "exit-when-empty")]
    pub exit_when_empty: bool,
    /// feed, serve: log file (default: stderr; for start, a file in the state directory;
    /// for serve --daemon, none).
    #[arg(short = 'l', long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// feed: log level 0-4 or fatal, error, warn, info (default), debug.
    #[arg(short = 'v', long, num_args = 0..=1, default_missing_value = "debug", value_name = "LEVEL")]
    pub verbosity: Option<String>,
    /// feed: start a new log file past this size (e.g. 10M).
    #[arg(long = "log_size", visible_alias = "log-size", value_name = "SIZE")]
    pub log_size: Option<String>,
    /// feed: start a new log file daily, weekly or monthly.
    #[arg(long = "log_age", visible_alias = "log-age", value_name = "AGE")]
    pub log_age: Option<String>,
    /// feed: directory for per-host pid files and logs (default ~/.rq).
    #[arg(long = "dot_rq_dir", visible_alias = "dot-rq-dir", value_name = "DIR")]
    pub dot_rq_dir: Option<PathBuf>,
    /// serve: the address and port to listen on (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// serve: enable kill/hold/release/resubmit for holders of the token in ~/.rq/serve-token.
    #[arg(long = "allow-actions", visible_alias = "allow_actions")]
    pub allow_actions: bool,
    /// serve: a host name the dashboard answers to besides loopback names and the listen
    /// address (e.g. the name of a reverse proxy); repeatable.
    #[arg(long = "allow-host", visible_alias = "allow_host", value_name = "NAME")]
    pub allow_host: Vec<String>,
    /// Print help.
    #[arg(short = 'h', long)]
    pub help: bool,
    /// Print the version.
    #[arg(long)]
    pub version: bool,
}

impl Options {
    /// The options as the man page lists them (the queue/mode words left out).
    pub fn command_for_man() -> clap::Command {
        use clap::CommandFactory;
        let cmd = Options::command();
        let args: Vec<clap::Arg> = cmd
            .get_arguments()
            .filter(|a| a.get_id() != "words")
            .cloned()
            .collect();
        clap::Command::new("rq")
            .version(env!("CARGO_PKG_VERSION"))
            .about("a zero-admin job queue for machines that share a directory")
            .disable_help_flag(true)
            .disable_version_flag(true)
            .args(args)
    }
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
    "feeders", "top", "metrics", "state", "usage",
];

/// Modes that print a table for people when standard output is a terminal (and YAML,
/// exactly as ever, when it is not).
pub const TABLE_ON_A_TERMINAL: &[&str] = &["list", "query", "status", "feeders", "usage"];

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
    ("state", &[]),
    ("cancel", &[]),
    ("pause", &[]),
    ("resume", &[]),
    ("drain", &[]),
    ("undrain", &[]),
    ("wait", &[]),
    ("top", &[]),
    ("serve", &[]),
    ("metrics", &[]),
    ("usage", &[]),
    ("lock", &["L"]),
    ("snapshot", &["S"]),
    ("backup", &["B"]),
    ("rotate", &["R"]),
    ("export", &[]),
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

/// Modes where `-l` means `--long` (as in `ls -l`); elsewhere it is `--log`, as in the
/// original rq.
const LONG_L_MODES: &[&str] = &["list", "query"];

/// Parse argv (without the program name), `RQ_OPTS` and `RQ_Q`.
pub fn parse(argv: &[String]) -> Result<Invocation> {
    let end = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    if argv[..end].iter().any(|a| a == "-l") {
        let long: Vec<String> = argv
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if i < end && a == "-l" {
                    "--long".to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        if let Ok(mut inv) = parse_options(&long)
            && inv
                .mode
                .as_deref()
                .and_then(mode_name)
                .is_some_and(|m| LONG_L_MODES.contains(&m))
        {
            inv.argv = argv.to_vec();
            return Ok(inv);
        }
    }
    parse_options(argv)
}

fn parse_options(argv: &[String]) -> Result<Invocation> {
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
        self.write_bytes(text.as_bytes())
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
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
        output::to_stdout(&format!("rq {}\n", env!("CARGO_PKG_VERSION")))?;
        return Ok(0);
    }
    let mode = inv.mode.as_deref().map(|m| (m, mode_name(m)));
    if inv.opts.help || matches!(mode, Some((_, Some("help")))) {
        let topic = match mode {
            Some((_, Some("help"))) => inv.args.first().cloned(),
            Some((m, _)) => Some(m.to_string()),
            None => None,
        };
        output::to_stdout(&help::text(topic.as_deref())?)?;
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
        crate::note!(inline "{}", help::SHORT);
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
    crate::lock::set_role(&format!("rq {name}"));
    let format = match &inv.opts.format {
        Some(f) => Format::parse(f)?,
        None if TABLE_ON_A_TERMINAL.contains(&name) && std::io::stdout().is_terminal() => {
            Format::Table
        }
        None => Format::Yaml,
    };
    let color = match &inv.opts.color {
        Some(c) => crate::human::ColorChoice::parse(c)?,
        None => crate::human::ColorChoice::Auto,
    };
    let terminal = crate::human::Terminal::for_stdout(color);
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
        terminal,
        out: Out::new(),
    };
    ctx.dispatch(name)
}

struct Context<'a> {
    inv: &'a Invocation,
    queue: PathBuf,
    format: Format,
    /// Where human output goes (colour, width), for tables and `top`.
    terminal: crate::human::Terminal,
    out: Out,
}

impl Context<'_> {
    fn dispatch(mut self, mode: &str) -> Result<i32> {
        // Ctrl-C while waiting for the queue's lock ends the wait cleanly; feeders, the
        // live views and `lock` (whose command gets the signal too) keep their own ways.
        let watching = mode == "status" && self.inv.opts.watch;
        if !watching && !matches!(mode, "feed" | "start" | "top" | "serve" | "lock") {
            crate::lock::end_waits_on_interrupt();
        }
        let status = match mode {
            "create" => self.create(),
            "submit" => self.submit(false),
            "touch" => self.submit(true),
            "list" => self.list(),
            "status" if self.inv.opts.watch => self.top(),
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
            "pause" => self.pause(true),
            "resume" => self.pause(false),
            "drain" => self.drain(true),
            "undrain" => self.drain(false),
            "kill" => self.kill(),
            "state" => self.state(),
            "cancel" => self.cancel(),
            "wait" => self.wait(),
            "top" => self.top(),
            "serve" => self.serve(),
            "metrics" => self.metrics(),
            "usage" => self.usage(),
            "lock" => self.lock(),
            "snapshot" | "backup" | "rotate" => self.admin(mode),
            "recover" => self.recover(),
            "export" => self.export(),
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
    /// Whether standard input holds what the mode works on: after `-`, or when nothing
    /// was named and it is not a terminal.
    fn stdin_wanted(&self, named_anything: bool) -> bool {
        self.inv.dash || (!named_anything && !std::io::stdin().is_terminal())
    }

    fn stdin_text(&self, named_anything: bool) -> Result<Option<String>> {
        let stdin = std::io::stdin();
        if self.stdin_wanted(named_anything) {
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
        if self.format == Format::Table {
            let mut table = self.job_table()?;
            let text = table.render(rows);
            return self.out.print(&text);
        }
        let fields = self.fields()?;
        let text = output::rows(rows, fields.as_deref(), self.format);
        self.out.print(&text)
    }

    /// The table of jobs for people: the default columns, `--long`, or `--fields` in the
    /// order given.
    fn job_table(&self) -> Result<crate::human::JobTable> {
        let fields = match &self.inv.opts.fields {
            Some(spec) => {
                let all: Vec<String> = job::FIELDS.iter().map(|s| s.to_string()).collect();
                Some(job::select_fields_in_order(spec, &all)?)
            }
            None => None,
        };
        Ok(crate::human::JobTable::new(
            self.terminal.clone(),
            fields,
            self.inv.opts.long,
        ))
    }

    /// Print the jobs matching `clause` chunk by chunk (YAML: one `---`; JSON: one array);
    /// `seen` gets the jids printed. `query`: the clause is a user's query.
    fn stream_rows(
        &mut self,
        q: &mut Queue,
        clause: &Clause,
        query: bool,
        seen: &mut dyn FnMut(&[i64]),
    ) -> Result<usize> {
        let fields = self.fields()?;
        if self.format == Format::Table {
            // A chunk at a time: the first sizes the columns, the others keep them.
            let largest: Option<i64> = q.store().read(|tx| {
                tx.op(crate::store::ops::scan::HIGHEST_JID)
                    .query_row([], |r| r.get(0))
            })?;
            let mut table = self.job_table()?.expect_jids_up_to(largest.unwrap_or(0));
            let mut count = 0;
            let out = &mut self.out;
            let mut each = |rows: Vec<Row>| {
                seen(&rows.iter().map(Row::jid).collect::<Vec<_>>());
                count += rows.len();
                out.print(&table.render(&rows))
            };
            if query {
                q.query(clause, &mut each)?;
            } else {
                q.scan(clause, &mut each)?;
            }
            return Ok(count);
        }
        let names: Vec<String> = job::FIELDS.iter().map(|s| s.to_string()).collect();
        let writer = output::RowWriter::new(&names, fields.as_deref(), self.format);
        let out = &mut self.out;
        let mut emit = |bytes: &[u8], jids: &[i64]| {
            seen(jids);
            out.write_bytes(bytes)
        };
        if query {
            q.query_render(clause, &writer, &mut emit)
        } else {
            q.render(clause, &writer, &mut emit)
        }
    }

    fn print_value(&mut self, value: &serde_json::Value) -> Result<()> {
        let text = output::value(value, self.format);
        self.out.print(&text)
    }

    fn report_skipped(&self, verb: &str, skipped: &[queue::Skipped]) -> i32 {
        for s in skipped {
            crate::note!("rq: job {} not {verb}: {}", s.jid, s.why);
        }
        if skipped.is_empty() { 0 } else { 1 }
    }
}

fn duration_option(name: &str, value: &Option<String>) -> Result<Option<f64>> {
    match value {
        Some(v) => crate::time::parse_duration(v).map(Some).ok_or_else(|| {
            Error::usage(format!(
                "--{name}: '{v}' is not {}",
                crate::time::DURATION_FORMS
            ))
        }),
        None => Ok(None),
    }
}
