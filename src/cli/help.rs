//! Usage text: `rq help`, `rq help MODE`, `rq MODE --help`.

use crate::error::{Error, Result};

pub const SHORT: &str = "\
usage: rq QUEUE MODE [ARGS] [OPTIONS]     (or set RQ_Q=QUEUE and run: rq MODE ...)
try 'rq help' for the modes and options, 'rq help MODE' for one mode
";

const OVERVIEW: &str = r#"rq - a zero-admin job queue for machines that share a directory

usage: rq QUEUE MODE [ARGS] [OPTIONS]
       RQ_Q=QUEUE rq MODE [ARGS] [OPTIONS]

A queue is a directory (on NFS or any shared filesystem) holding one SQLite
database and the jobs' files. Every host that sees the directory can submit
jobs and run them; there is no server.

  rq /nfs/q create                 make a queue
  rq /nfs/q submit 'echo hello'    submit one job
  rq /nfs/q submit < joblist       one job per line (or YAML/JSON)
  rq /nfs/q status                 counts and timings
  rq /nfs/q list pending           show jobs

modes (abbreviation):
  create (c)        make a new queue directory (or a queue in PostgreSQL: QUEUE is
                    postgres://USER@HOST/DB?queue=NAME, see the README)
  submit (s)        add jobs: a command, --infile FILE, or a list on stdin
  touch (to)        submit unless an identical job (command and tag) is pending
  list (l, ls)      show jobs by state (p h r f d w c, all), jid or array:ID
  status (t)        counts per state, timings, successes and failures
  query (q)         find jobs: field=value terms, or an SQL where-clause
  update (u)        change pending/waiting/holding jobs: key=value ...
  delete (d, rm)    remove jobs that are not running (and their files)
  resubmit (r, re)  queue finished/dead jobs again, in place
  execute (e)       run SQL under the write lock
  configure (C)     queue-wide settings: key=value ...
  stdin stdout stderr (0 1 2)      print a job's captured streams
  stdin4 stdout4 stderr4           print the paths of a job's streams
  feed (f)          run this queue's jobs on this host (--daemon to detach)
  start             start a daemon feeder unless one runs (for cron)
  shutdown          stop this host's feeder after its running jobs finish
  stop              stop this host's feeder now (running jobs are killed)
  restart           drain, then restart this host's feeder (same pid)
  pid, feeder       report this host's feeder
  feeders           every host feeding the queue: alive or dead, heartbeat age
  kill              signal running jobs on whatever host runs them
  cancel            remove jobs not started and kill running ones, in one call
  state             one word per job: running, success or failed (for scripts)
  pause, resume     stop / restart claiming on every host (running jobs go on)
  drain, undrain    stop / restart claiming on some hosts, from any host
  wait              block until jobs are done; exit 0 if all succeeded
  top               a live full-screen view (also: status --watch)
  serve             a live web dashboard and /metrics (--listen, --allow-actions)
  metrics           the queue in OpenMetrics text, once (for Prometheus)
  usage             what jobs used: CPU and wall hours, CPU and memory efficiency
  lock (L)          run a command holding the queue lock
  snapshot (S)      a consistent copy of the database for read-only modes
  backup (B)        a consistent copy of the whole queue
  rotate (R)        archive finished and dead jobs (QUEUE.<time>.tgz)
  recover           check the database; rebuild it if it is damaged
  export            move the queue into a new one (e.g. into PostgreSQL)
  cron, crontab     keep a feeder running from cron on this host
  ioview (io)       open a job's stdin/stdout/stderr in an editor
  tail (ta)         follow a running job's output
  completions, man  shell completions, the man page
  help (h)          this text; 'rq help MODE' for one mode, 'rq help selections'
                    for how every mode that takes jobs names them

options (accepted anywhere on the line; '--' ends them):
  -p, --priority N       job priority, any integer (higher runs first)
  -t, --tag TAG          job tag
      --runner HOSTS     only these hosts may run the job (comma-separated)
      --restartable      the job may run again if its host dies
      --stage            submit in the holding state
  -i, --infile FILE      read the job list from FILE
      --stdin [FILE|-]   copy FILE (or standard input) as the jobs' stdin
  -d, --data PATH        copy PATH as the jobs' data (RQ_DATA)
  -q, --quiet            print nothing on success
  -f, --fields a,b       only these fields (prefixes: -f s = state,submitted,...);
                         a table shows them in the order given
      --format FMT       yaml, json or table (default: table on a terminal for
                         list, query, status and feeders, yaml otherwise)
      --color WHEN       auto (default: on a terminal, unless NO_COLOR is set),
                         always, never
  -L, --long             list, query: every field of each job, a block per job
                         (-l too in list and query; elsewhere -l is --log)
  -w, --watch            status: the live view (same as the mode top)
      --exit MAP         status: extra counters, e.g. 'ok=0 retry=75,76'
      --timeout D        submit: TERM the job after D (90s, 2h, 1h30m, 500ms),
                         KILL 5s later; 0 means no timeout. wait: give up after
                         D (exit status 124)
      --retries N        submit: re-queue a failed job up to N times
      --retry-delay D    submit: first retry after D (doubling; default 1s)
      --after JIDS       submit: run after these jobs finished with exit 0
                         (12,13 or array:12); --after-any: after they ended
      --array SPEC       submit: one job per index: 1-1000, 1-99:2, 3,5,8-10;
                         %N: at most N of the array at once (1-1000%20)
      --each-line FILE   submit: one job per line of FILE or of standard input
                         (-) (in RQ_ITEM)
      --subst            submit: {} in the command is the index or the line
      --at TIME          submit: not before TIME (22:00, 2026-12-24T08:00, +zone)
      --in D             submit: not before D from now (90m, 2h)
      --env KEY=VALUE    submit: set in the job's environment (repeatable)
      --export           submit: run the job with this environment (see help submit)
      --cpus N           submit: CPUs a job needs (1); feed: CPUs to offer (all)
      --mem SIZE         submit: memory a job needs (4G; 0); feed: to offer (all)
      --gpus N|LIST      submit: GPUs a job needs (0); feed: devices to offer
                         (0,1,2,3 or auto: as nvidia-smi lists them; none)
      --mine             list, query, status: only jobs I submitted
      --force            delete: also jobs others wait for (they are cancelled)
      --signal SIG       kill, cancel: signal to send (default TERM)
      --parsable         submit: print only the new jids, one per line
  -s, --snapshot         run a read-only mode on a snapshot of the queue
      --no-compress      rotate: keep the archive as a directory
      --to QUEUE         export: the new queue (directory or postgres:// URL)
      --files DIR        export: a new PostgreSQL queue's job-file directory
                         (without it, its job files live in its database)
  -e, --editor CMD       ioview: the viewer (default $RQ_EDITOR or 'vim -R -o')
  -D, --daemon           feed: detach; prints 'pid N started'
      --max_feed N       feed: jobs at once (default: number of CPUs)
      --shell 'CMD'      feed: shell prefix for jobs (default 'bash --login -c');
                         'none': plain commands without a shell, the rest in sh
      --min_sleep S      feed: seconds between checks for work (0.2; idle: to 15x)
      --max_sleep S      feed: seconds between full queue polls when idle (30)
      --exit_when_empty  feed: exit when nothing is left to run
  -l, --log FILE         feed: log file (--daemon, start: ~/.rq/HOST/QUEUE/log)
  -v, --verbosity L      feed: 0-4 or fatal error warn info debug
      --log_size N       feed: roll the log past N bytes (10M)
      --log_age AGE      feed: roll the log daily, weekly or monthly
      --dot_rq_dir DIR   feed: per-host state directory (default ~/.rq)
  -h, --help             help;  --version  the version

A lone '-' reads the job list (or jids) from standard input; so does a mode
given no jobs when standard input is not a terminal (an empty '-' names no
jobs: the mode does nothing and exits 0). See 'rq help selections'.
  rq q list finished | rq q submit -
  rq q query exit_status=0 | rq q delete -
  rq q query tag=x | rq q update state=holding -

queue-wide settings: rq Q configure heartbeat=10s lease=60s max_attempts=3
  shell='bash -c' (the shell of every feeder not started with --shell)
  limit.TAG=N (at most N jobs tagged TAG run at once, over all hosts)

Output: on a terminal, list, query, status and feeders print tables with local
times and colour; piped or redirected they print YAML (valid, round-trips into
submit/delete/update), exactly the same whatever the terminal. --format json
gives JSON. Timestamps in YAML/JSON are UTC ISO-8601, seconds to the millisecond.
"#;

/// The environment variables rq reads (help and the man page's ENVIRONMENT).
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "RQ_Q",
        "the queue, when the command line names none (also RQ_QUEUE)",
    ),
    (
        "RQ_OPTS",
        "default options, overridden by the command line (also RQ_OPTIONS)",
    ),
    (
        "RQ_HOST",
        "this host's name as rq records it (default: the host name)",
    ),
    ("RQ_EDITOR", "ioview's viewer (default 'vim -R -o')"),
    (
        "RQ_LOCK_TIMEOUT",
        "give up waiting for the queue lock after this long",
    ),
    (
        "RQ_LOCK_NOTICE",
        "seconds before rq says it waits for the lock (default 3)",
    ),
    (
        "RQ_ALLOW_LOCAL_LOCKS",
        "1: feed a queue on an NFS mount without working locks (unsafe with several hosts)",
    ),
    (
        "RQ_SQL_DEBUG",
        "1: print every SQL statement rq runs on stderr",
    ),
    ("NO_COLOR", "any value: no colour (unless --color always)"),
    (
        "COLUMNS",
        "the table width when standard output is not a terminal",
    ),
    (
        "TZ",
        "the time zone of times shown on a terminal (YAML/JSON are always UTC)",
    ),
    (
        "RQ, RQ_BIN, RQ_JID, RQ_TAG, RQ_DATA, RQ_JOB, RQ_ARRAY_ID, RQ_ARRAY_INDEX, RQ_ITEM, RQ_GPUS",
        "set for every job (see rq help feed): RQ is the queue (a directory or a URL), RQ_BIN its bin/",
    ),
];

/// The files of a queue and of a host (the man page's FILES).
pub const FILES: &[(&str, &str)] = &[
    (
        "QUEUE/db",
        "the SQLite database: jobs, dependencies, settings",
    ),
    (
        "QUEUE/db.schema",
        "the schema, for reading the database with sqlite3",
    ),
    (
        "QUEUE/stdin/JID, QUEUE/stdout/JID, QUEUE/stderr/JID",
        "a job's captured streams",
    ),
    (
        "QUEUE/data/JID",
        "a job's data (submit --data), its RQ_DATA",
    ),
    (
        "QUEUE/hosts/HOST.hb",
        "a feeder's heartbeat: its age on the file server's clock says whether it lives",
    ),
    ("QUEUE/bin", "added to every job's PATH"),
    (
        "~/.rq/HOST/QUEUE/",
        "a daemon feeder's pid file and log (--dot_rq_dir)",
    ),
];

/// The exit-status rule of every mode (the man page's EXIT STATUS).
pub const EXIT_STATUS: &str = "\
0    success
1    an error, or a job named on the command line was skipped (not found, in the
     wrong state); wait: some job failed, died, was cancelled or deleted
2    the command line cannot run as written (unknown mode or option, bad value)
124  wait --timeout: the time ran out before the jobs were done
lock: the command's own exit status";

/// Examples for the man page.
pub const EXAMPLES: &str = "\
rq /nfs/q create
rq /nfs/q cron start --max_feed 8      # on every node: keep a feeder running
rq /nfs/q submit < joblist             # one command per line
rq /nfs/q submit --array 1-1000%50 --subst './sim --seed {}'
rq /nfs/q status                       # a summary on a terminal
rq /nfs/q top                          # live
rq /nfs/q list running                 # a table; YAML when piped
rq /nfs/q query exit_status!=0 | rq /nfs/q resubmit -
rq /nfs/q wait --timeout 2h && echo all good";

/// The options each mode takes (besides -h, -q, --format, --color, --fields), by their
/// long names: `rq help MODE` and the man page list them with their arguments.
pub const MODE_OPTIONS: &[(&str, &[&str])] = &[
    (
        "submit",
        &[
            "priority",
            "tag",
            "runner",
            "restartable",
            "stage",
            "infile",
            "stdin",
            "data",
            "timeout",
            "retries",
            "retry_delay",
            "after",
            "after_any",
            "array",
            "each_line",
            "subst",
            "parsable",
            "at",
            "in_",
            "env",
            "export",
            "cpus",
            "mem",
            "gpus",
        ],
    ),
    (
        "touch",
        &[
            "priority",
            "tag",
            "runner",
            "restartable",
            "stage",
            "infile",
            "stdin",
            "data",
        ],
    ),
    ("list", &["long", "mine", "snapshot"]),
    ("usage", &["mine", "snapshot"]),
    ("query", &["long", "mine", "snapshot"]),
    ("status", &["exit", "mine", "watch", "snapshot"]),
    ("feeders", &["snapshot"]),
    ("update", &["priority", "tag", "runner"]),
    ("delete", &["force"]),
    ("resubmit", &["priority", "tag", "runner", "stage"]),
    ("kill", &["signal"]),
    ("cancel", &["signal"]),
    ("wait", &["timeout"]),
    (
        "serve",
        &["listen", "allow_actions", "allow_host", "daemon", "log"],
    ),
    ("rotate", &["no_compress"]),
    ("export", &["to", "files"]),
    ("ioview", &["editor"]),
    (
        "feed",
        &[
            "daemon",
            "max_feed",
            "cpus",
            "mem",
            "gpus",
            "shell",
            "min_sleep",
            "max_sleep",
            "exit_when_empty",
            "log",
            "verbosity",
            "log_size",
            "log_age",
            "dot_rq_dir",
        ],
    ),
    (
        "start",
        &[
            "max_feed",
            "cpus",
            "mem",
            "gpus",
            "shell",
            "min_sleep",
            "max_sleep",
            "log",
            "verbosity",
            "log_size",
            "log_age",
            "dot_rq_dir",
        ],
    ),
    (
        "cron",
        &[
            "max_feed",
            "cpus",
            "mem",
            "gpus",
            "shell",
            "log",
            "dot_rq_dir",
        ],
    ),
    ("shutdown", &["dot_rq_dir"]),
    ("pid", &["dot_rq_dir"]),
];

/// `-p, --priority N   Job priority...` for each option a mode takes.
fn option_lines(mode: &str) -> String {
    use clap::CommandFactory;
    let Some((_, ids)) = MODE_OPTIONS.iter().find(|(m, _)| *m == mode) else {
        return String::new();
    };
    let mut cmd = super::Options::command();
    cmd.build();
    let mut out = String::from("\noptions:\n");
    for id in *ids {
        let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == *id) else {
            continue;
        };
        out.push_str(&format!("  {}\n", option_usage(arg)));
        if let Some(help) = arg.get_help() {
            out.push_str(&wrap(&help.to_string(), 8, 80));
        }
    }
    out
}

/// Words of `text` in lines of at most `width` columns, each indented by `indent`.
fn wrap(text: &str, indent: usize, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent + line.len() + 1 + word.len() > width {
            out.push_str(&format!("{:indent$}{line}\n", ""));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&format!("{:indent$}{line}\n", ""));
    }
    out
}

/// `-p, --priority N` as the option is written.
fn option_usage(arg: &clap::Arg) -> String {
    let mut text = String::new();
    if let Some(short) = arg.get_short() {
        text.push_str(&format!("-{short}, "));
    }
    if let Some(long) = arg.get_long() {
        text.push_str(&format!("--{long}"));
    }
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    if takes_value {
        let name = arg
            .get_value_names()
            .and_then(|v| v.first().map(|n| n.to_string()))
            .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
        if arg.get_num_args().is_some_and(|n| n.min_values() == 0) {
            text.push_str(&format!(" [{name}]"));
        } else {
            text.push_str(&format!(" {name}"));
        }
    }
    text
}

/// Help on what is not a mode: selections, completions, the man page. Each mode's help
/// is beside its handler (`data::HELP`, `feeding::HELP`, `manage::HELP`).
const GENERAL: &[(&str, &str)] = &[
    (
        "selections",
        "rq QUEUE MODE SELECTION   (list status wait state usage stdout stderr tail\n                           ioview kill cancel delete update resubmit)\n\nEvery mode that works on jobs names them the same way:\n\n  12 13             jobs by jid (also jid=12)\n  array:12          every job of the array whose first jid is 12\n  tag:NAME          every job tagged NAME\n  pending, run...   every job in a state (any prefix), or all\n  field=value       terms as 'query' takes them (=, !=, =~, !~): alone they\n                    choose among all jobs, beside other words they narrow\n                    those down (update: field=value words are the changes)\n  -                 jids (or rq's YAML/JSON) from standard input\n\nA job that any jid, array, tag or state names is chosen, if it meets every term.\nAn empty '-' names no jobs: the mode does nothing and exits 0, so pipes such as\n'rq q query tag=x | rq q kill -' never fail or act on everything for want of\nmatches. Without any words (and no '-'), list and wait take every job; the\nother modes ask for a selection. A named jid, array or tag that the queue does\nnot hold, or terms that match no job, is said on stderr and the mode exits 1\nafter acting on the rest (state answers 'failed' for a missing job and exits 0).\n\n  rq q wait tag:nightly\n  rq q stdout array:12\n  rq q list tag:x state=finished exit_status!=0\n  rq q query exit_status=1 | rq q resubmit -\n",
    ),
    (
        "completions",
        "rq completions bash|zsh|fish\n\nPrint a shell completion script. It completes modes, options and their values\n(states, --fields names, --format, --color, configure keys):\n\n  rq completions bash > ~/.local/share/bash-completion/completions/rq\n  rq completions zsh > ~/.zfunc/_rq\n  rq completions fish > ~/.config/fish/completions/rq.fish\n",
    ),
    (
        "man",
        "rq man\n\nPrint the man page (roff): every mode as 'rq help MODE' tells it, the options,\nENVIRONMENT, FILES, EXIT STATUS and EXAMPLES.\n\n  rq man > ~/.local/share/man/man1/rq.1 && man rq\n",
    ),
];

/// Help text for a topic (a mode or abbreviation), or the overview.
/// The help text of a mode or topic, from the file of its handler.
fn topic_text(name: &str) -> Option<&'static str> {
    [
        super::data::HELP,
        super::feeding::HELP,
        super::manage::HELP,
        GENERAL,
    ]
    .iter()
    .flat_map(|topics| topics.iter())
    .find(|(topic, _)| *topic == name)
    .map(|(_, text)| *text)
}

pub fn text(topic: Option<&str>) -> Result<String> {
    let Some(topic) = topic else {
        return Ok(overview());
    };
    let mode = super::mode_name(topic).unwrap_or(topic);
    let mode = match mode {
        "stdout" | "stderr" | "stdin4" | "stdout4" | "stderr4" => "stdin",
        "stop" | "restart" => "shutdown",
        "feeder" => "pid",
        "help" => return Ok(overview()),
        other => other,
    };
    topic_text(mode)
        .map(|text| format!("{text}{}", option_lines(mode)))
        .ok_or_else(|| {
            Error::usage(format!(
                "no help for '{topic}' (see 'rq help' for the modes)"
            ))
        })
}

/// `rq help`: the overview, the environment and the exit status rule.
fn overview() -> String {
    let mut text = OVERVIEW.to_string();
    text.push_str("\nenvironment:\n");
    for (name, what) in ENVIRONMENT {
        text.push_str(&format!("  {name}: {what}\n"));
    }
    text.push_str("\nexit status:\n");
    for line in EXIT_STATUS.lines() {
        text.push_str(&format!("  {line}\n"));
    }
    text
}

/// The command line as a clap command with one subcommand per mode (and its
/// abbreviations), carrying every option: the source of completions and the man page.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let options = super::Options::command();
    let mut cmd = clap::Command::new("rq")
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_flag(true)
        .disable_version_flag(true)
        .disable_help_subcommand(true)
        .about("A zero-admin job queue for machines that share a directory")
        .long_about(OVERVIEW)
        .arg(
            clap::Arg::new("queue")
                .value_name("QUEUE")
                .value_hint(clap::ValueHint::DirPath)
                .help("the queue directory or postgres:// URL (or set RQ_Q)"),
        );
    for arg in options.get_arguments().filter(|a| a.get_id() != "words") {
        let arg = arg.clone().global(true);
        // What the shell offers for an option's value (the parser takes more: prefixes).
        let arg = match arg.get_id().as_str() {
            "fields" => arg
                .value_parser(clap::builder::PossibleValuesParser::new(crate::job::FIELDS))
                .value_delimiter(','),
            "format" => arg.value_parser(["yaml", "json", "table"]),
            "color" => arg.value_parser(["auto", "always", "never"]),
            "signal" => arg.value_parser([
                "TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT",
            ]),
            "verbosity" => arg.value_parser(["fatal", "error", "warn", "info", "debug"]),
            "log_age" => arg.value_parser(["daily", "weekly", "monthly"]),
            "infile" | "each_line" | "log" => arg.value_hint(clap::ValueHint::FilePath),
            "data" => arg.value_hint(clap::ValueHint::AnyPath),
            "dot_rq_dir" => arg.value_hint(clap::ValueHint::DirPath),
            "editor" | "shell" => arg.value_hint(clap::ValueHint::CommandString),
            _ => arg,
        };
        cmd = cmd.arg(arg);
    }
    for (name, abbrevs) in super::MODES {
        let about = text(Some(name))
            .ok()
            .and_then(|t| t.lines().nth(2).map(str::to_string))
            .unwrap_or_default();
        let mut args = clap::Arg::new("args")
            .num_args(0..)
            .trailing_var_arg(true)
            .allow_hyphen_values(true);
        // The words a mode takes, where they are a fixed set (jids are typed).
        let words: &[&str] = match *name {
            "list" | "status" | "wait" | "delete" | "resubmit" | "update" | "state" | "cancel"
            | "kill" | "usage" => &[
                "pending",
                "holding",
                "running",
                "finished",
                "dead",
                "waiting",
                "cancelled",
                "all",
            ],
            "configure" => &[
                "heartbeat=",
                "lease=",
                "max_attempts=",
                "reserve_after=",
                "limit.",
                "files=",
                "output_cap=",
            ],
            "lock" => &["read", "shared", "write", "exclusive"],
            "cron" => &[
                "start", "add", "tab", "delete", "shutdown", "stop", "rotate",
            ],
            "completions" => &["bash", "zsh", "fish"],
            "help" => &[
                "create",
                "submit",
                "touch",
                "list",
                "status",
                "query",
                "update",
                "delete",
                "resubmit",
                "execute",
                "configure",
                "stdout",
                "feed",
                "start",
                "shutdown",
                "pid",
                "feeders",
                "kill",
                "pause",
                "drain",
                "wait",
                "top",
                "lock",
                "snapshot",
                "backup",
                "rotate",
                "recover",
                "export",
                "cron",
                "ioview",
                "tail",
                "completions",
                "man",
            ],
            _ => &[],
        };
        if !words.is_empty() {
            args = args.value_parser(clap::builder::PossibleValuesParser::new(words));
        }
        let sub = clap::Command::new(*name)
            .about(about)
            .disable_help_flag(true)
            .visible_aliases(abbrevs.iter().copied())
            .arg(args);
        cmd = cmd.subcommand(sub);
    }
    cmd
}

/// `rq completions bash|zsh|fish`.
pub fn completions(shell: Option<&str>) -> Result<i32> {
    use clap_complete::Shell;
    let shell = match shell {
        Some("bash") => Shell::Bash,
        Some("zsh") => Shell::Zsh,
        Some("fish") => Shell::Fish,
        other => {
            return Err(Error::usage(format!(
                "completions: say bash, zsh or fish (got {})",
                other.unwrap_or("nothing")
            )));
        }
    };
    let mut cmd = command();
    // Into a buffer first: clap_complete panics when its writer fails (`| head -c1`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "rq", &mut script);
    crate::output::to_stdout(&String::from_utf8_lossy(&script))?;
    Ok(0)
}

/// `rq man`: the man page (roff) on standard output: `rq man > rq.1`.
pub fn man() -> Result<i32> {
    crate::output::to_stdout(&man_page()?)?;
    Ok(0)
}

/// The man page: NAME, SYNOPSIS, DESCRIPTION, every mode as `rq help MODE` tells it,
/// OPTIONS (from the same definitions the command line parses), ENVIRONMENT, FILES,
/// EXIT STATUS, EXAMPLES.
pub fn man_page() -> Result<String> {
    let io = |e: std::io::Error| Error::Io {
        context: "cannot render the man page".into(),
        source: e,
    };
    let mut options = super::Options::command_for_man();
    options.build();
    let man = clap_mangen::Man::new(options).manual("rq manual");
    // Every render starts with the same two-line preamble; the page needs it once.
    let body = |bytes: Vec<u8>| -> String {
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| !l.starts_with(".ie \\n(.g .ds Aq") && !l.starts_with(".el .ds Aq"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let mut out = Vec::new();
    man.render_title(&mut out).map_err(io)?;
    let mut page = String::from_utf8_lossy(&out).into_owned();
    let mut out = Vec::new();
    man.render_name_section(&mut out).map_err(io)?;
    page.push_str(&body(out));
    page.push_str(
        ".SH SYNOPSIS\n.B rq\n\\fIQUEUE\\fR \\fIMODE\\fR [\\fIARGS\\fR] [\\fIOPTIONS\\fR]\n.br\n",
    );
    page.push_str("RQ_Q=\\fIQUEUE\\fR \\fBrq\\fR \\fIMODE\\fR [\\fIARGS\\fR] [\\fIOPTIONS\\fR]\n");
    page.push_str(".SH DESCRIPTION\n");
    page.push_str(&preformatted(OVERVIEW));
    page.push_str(".SH MODES\n");
    for (mode, _) in super::MODES {
        let Some(body) = topic_text(mode) else {
            continue;
        };
        page.push_str(&format!(".SS {}\n", roff_text(mode)));
        page.push_str(&preformatted(&format!("{body}{}", option_lines(mode))));
    }
    // Topics that are not modes.
    if let Some(selections) = topic_text("selections") {
        page.push_str(".SH SELECTIONS\n");
        page.push_str(&preformatted(selections));
    }
    let mut out = Vec::new();
    man.render_options_section(&mut out).map_err(io)?;
    page.push_str(&body(out));
    page.push_str(".SH ENVIRONMENT\n");
    for (name, what) in ENVIRONMENT {
        page.push_str(&format!(
            ".TP\n.B {}\n{}\n",
            roff_text(name),
            roff_text(what)
        ));
    }
    page.push_str(".SH FILES\n");
    for (name, what) in FILES {
        page.push_str(&format!(
            ".TP\n.I {}\n{}\n",
            roff_text(name),
            roff_text(what)
        ));
    }
    page.push_str(".SH \"EXIT STATUS\"\n");
    page.push_str(&preformatted(EXIT_STATUS));
    page.push_str(".SH EXAMPLES\n");
    page.push_str(&preformatted(EXAMPLES));
    page.push_str(&format!(".SH VERSION\nrq {}\n", env!("CARGO_PKG_VERSION")));
    Ok(page)
}

/// Text as roff: backslashes escaped, and a line that would read as a request kept text.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// Lines kept as they are (no filling): the help text's own layout.
fn preformatted(text: &str) -> String {
    let mut out = String::from(".nf\n");
    for line in text.lines() {
        out.push_str(&roff_text(line));
        out.push('\n');
    }
    out.push_str(".fi\n");
    out
}
