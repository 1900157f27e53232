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

const TOPICS: &[(&str, &str)] = &[
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
        "feed",
        "rq QUEUE feed [--daemon] [--max_feed N] [--cpus N] [--mem SIZE] [--gpus LIST|auto]\n              [--shell 'sh -c'] [--log FILE] ...\n\nRun the queue's jobs on this host: claim the best pending jobs this host may run\nand has room for (priority, then oldest; CPUs, memory and GPU devices counted:\nsee 'rq help submit' and the README's Capacity), run each as `bash --login -c COMMAND` in the directory\nit was submitted from, with stdin/stdout/stderr in the queue and RQ_* variables\n(RQ, RQ_JID, RQ_TAG, RQ_DATA, RQ_JOB, ...), and record how it ended. One feeder\nper host per queue. With short jobs it claims a few ahead of its free slots (they\nshow as running without a pid; jobs it never started go back to pending if it\ndies). TERM/INT: give back jobs not started, finish running ones, then exit; HUP:\nthe same, then restart; QUIT: kill running jobs now. Idle, it checks the queue's\ndoorbell (no lock) every --min_sleep seconds, backing off to 15 times that\nwhile nothing happens, and polls the queue every --max_sleep seconds. A\ndaemon logs to --log FILE, by default ~/.rq/HOST/QUEUE/log. A feeder whose\nheartbeats cannot reach the queue kills its running jobs before its lease runs\nout (they may be taken over); it rides out I/O errors and lost NFS locks by\nreopening the queue.\n\n  rq /nfs/q feed --daemon --log ~/q.log\n  rq /nfs/q feed --max_feed 8 --shell 'sh -c'\n  rq /nfs/q feed --shell none             # `./sim -n 5` runs without a shell\n  rq /nfs/q feed --exit_when_empty        # run what is there, then exit\n",
    ),
    (
        "start",
        "rq QUEUE start [feed options]\n\nStart a daemon feeder unless one already runs for this queue on this host (then\nprint nothing and succeed): made for cron. Logs to ~/.rq/HOST/QUEUE/log.\n\n  */15 * * * * /usr/local/bin/rq /nfs/q start\n",
    ),
    (
        "shutdown",
        "rq QUEUE shutdown|stop|restart\n\nshutdown: the feeder stops claiming, waits for its running jobs, records them and\nexits. stop: it kills its running jobs (restartable ones go back to pending, others\nare marked dead) and exits. restart: like shutdown, then it re-executes itself with\nthe same arguments (same pid). Exit status 0 if a feeder was signalled, 1 if none runs.\n",
    ),
    (
        "pid",
        "rq QUEUE pid | rq QUEUE feeder\n\nReport this host's feeder for the queue: `pid: N` (or `pid: ~`), `feeder: true|false`.\nExit status 0 if one runs, 1 if not.\n",
    ),
    (
        "feeders",
        "rq QUEUE feeders [--format yaml|json|table]\n\nEvery host that has fed the queue: alive (heartbeat younger than the lease, by the\nfile server's clock, or the database server's), stopped, failed (ended by an error, shown in `error`; its log\nsays more) or dead; heartbeat age, running jobs, max_feed, pid, start time, version.\nA table on a terminal (dead hosts in red), YAML when piped.\n\n  rq q feeders --format table\n  rq q configure heartbeat=10s lease=60s max_attempts=3\n",
    ),
    (
        "pause",
        "rq QUEUE pause | resume\n\nPause the queue: no feeder on any host claims a job until `resume` (running jobs\ngo on). Kept in the queue, so it holds across feeder restarts; `status` shows\n`paused` (since when, by whom) and `feeders` shows the feeders `paused`.\n\n  rq q pause; rq q update pending priority=9; rq q resume\n",
    ),
    (
        "resume",
        "rq QUEUE resume\n\nEnd a `pause`: feeders claim jobs again at once. See 'rq help pause'.\n",
    ),
    (
        "drain",
        "rq QUEUE drain [HOST...] | undrain [HOST...]\n\nDrain hosts (default: this one), from any host: their feeders claim nothing more\nand their running jobs finish; `feeders` shows them `draining`, then `drained`.\nKept in the queue, so it holds across feeder restarts, until `undrain`.\n\n  rq q drain node7            # before maintenance of node7\n  rq q undrain node7\n\nLimits by tag are settings: rq q configure limit.licence=4 (at most 4 jobs\ntagged licence run at once, over all hosts); limit.licence= removes it.\n",
    ),
    (
        "undrain",
        "rq QUEUE undrain [HOST...]\n\nEnd a `drain`: the hosts' feeders claim jobs again at once. See 'rq help drain'.\n",
    ),
    (
        "usage",
        "rq QUEUE usage [SELECTION] [--mine]\n\nWhat the selected jobs' last runs used (default: every job that ran), in total,\nper tag and per array: runs, CPU hours (user and system), wall hours, CPU\nefficiency (CPU time / (elapsed x CPUs asked)) and memory efficiency (peak\nmemory / --mem, over the jobs that asked for memory); then the jobs furthest off\nwhat they asked for (runs of a second or more). A table on a terminal, YAML\n(--format json: JSON) otherwise. Each run's figures are fields of the job\n(cpu_user, cpu_system, max_rss, read_bytes, write_bytes).\n\n  rq q usage tag:sweep\n  rq q usage array:100 --format json\n",
    ),
    (
        "state",
        "rq QUEUE state SELECTION\n\nOne word per job, one line each, in the order named (jids as named, then the\njobs other words name, by jid): running (pending, waiting, holding or running:\nnot ended yet), success (exit status 0, no signal) or failed (a non-zero exit\nstatus, a signal, dead, cancelled, or no such job). Exits 0 even for a job that\nis not there (said on stderr): the status command of a workflow manager.\n\n  rq q state 12 13 14\n  jid=$(rq q submit --parsable ./step.sh); rq q state $jid\n",
    ),
    (
        "cancel",
        "rq QUEUE cancel SELECTION [--signal SIG]\n\nEnd the jobs, whatever their state, in one call: jobs not started yet\n(pending, waiting, holding) are removed from the queue, running ones are\nsignalled (TERM, or --signal) on whatever host runs them and end failed, jobs\nthat already ended stay as they are. Jobs that wait for a cancelled job to\nsucceed (--after) are cancelled too (state cancelled, with the reason); jobs\nthat wait only for it to end (--after-any) run once it has. Prints the jobs it\nremoved or signalled; exit 0 unless a named job is not in the queue.\n\n  rq q cancel tag:run-42\n  rq q cancel array:100 --signal KILL\n",
    ),
    (
        "selections",
        "rq QUEUE MODE SELECTION   (list status wait state usage stdout stderr tail\n                           ioview kill cancel delete update resubmit)\n\nEvery mode that works on jobs names them the same way:\n\n  12 13             jobs by jid (also jid=12)\n  array:12          every job of the array whose first jid is 12\n  tag:NAME          every job tagged NAME\n  pending, run...   every job in a state (any prefix), or all\n  field=value       terms as 'query' takes them (=, !=, =~, !~): alone they\n                    choose among all jobs, beside other words they narrow\n                    those down (update: field=value words are the changes)\n  -                 jids (or rq's YAML/JSON) from standard input\n\nA job that any jid, array, tag or state names is chosen, if it meets every term.\nAn empty '-' names no jobs: the mode does nothing and exits 0, so pipes such as\n'rq q query tag=x | rq q kill -' never fail or act on everything for want of\nmatches. Without any words (and no '-'), list and wait take every job; the\nother modes ask for a selection. A named jid, array or tag that the queue does\nnot hold, or terms that match no job, is said on stderr and the mode exits 1\nafter acting on the rest (state answers 'failed' for a missing job and exits 0).\n\n  rq q wait tag:nightly\n  rq q stdout array:12\n  rq q list tag:x state=finished exit_status!=0\n  rq q query exit_status=1 | rq q resubmit -\n",
    ),
    (
        "kill",
        "rq QUEUE kill SELECTION [--signal SIG]\n\nSignal running jobs (their whole process group) on whatever host runs them: the\nowning feeder notices within about a second. Default signal TERM. A killed job is\nnot retried. Jobs that are not running are reported.\n\n  rq q kill 12 13\n  rq q query tag=bad state=running | rq q kill - --signal KILL\n",
    ),
    (
        "wait",
        "rq QUEUE wait [SELECTION | \"SQL where-clause\"] [--timeout D]\n\nBlock until the selected jobs (default: all; rq help selections) are finished, dead or cancelled\n(waiting jobs are waited for: they run once their dependencies end).\n\nExit status: 0 if every one finished with exit status 0; 1 if any failed (exit\nstatus not 0, or a signal), died, was cancelled or was deleted meanwhile: each\nis then listed on stderr with why (exit status or signal, host, the first line\nof its stderr); 124 if --timeout D ran out first.\n\nOn a terminal it shows progress (done/total, running, pending, failed so far,\nETA). It says when the jobs cannot go on: no feeder is alive, every remaining\njob is holding, or jobs may run only on hosts (--runner) without a live feeder,\nor need more CPUs/memory/GPUs than any live feeder has; with what to do.\n\n  rq q submit -q < jobs && rq q wait pending running && echo all good\n  rq q wait tag=nightly --timeout 2h\n",
    ),
    (
        "serve",
        "rq QUEUE serve [--listen 127.0.0.1:8080] [--daemon] [--allow-actions] [--allow-host NAME]\n\nA live web dashboard of the queue, from this binary alone (no CDN, nothing to\ninstall): an overview (counts by state, a bar, jobs ended per minute over the\nlast hour, successes and failures, ETA, oldest pending job), the hosts (every\nfeeder alive or dead, heartbeat age, running/max_feed, jobs done in the last\nhour, and a timeline of the last 30 minutes: one lane per host, one bar per\njob), the jobs (filter by state, tag, host, text; paged by jid) and each job\n(every field, the tail of its stdout/stderr, followed live). Pages update by\nthemselves every 1.5 s and read fine without JavaScript. GET /metrics serves\nthe OpenMetrics text of 'rq Q metrics'.\n\nIt listens on 127.0.0.1 unless --listen says otherwise (then it warns: whoever\ncan reach the port sees every command and output). Read-only unless\n--allow-actions: then kill, hold, release and resubmit buttons work for whoever\nshows the token kept in ~/.rq/serve-token (0600, printed when made): sign in at\n/login (a same-site cookie) or send the header X-RQ-Token. Actions are POSTs,\nrefused cross-site, done as the CLI does them and logged on stderr. The sign-in\ncookie is a random session (12 hours, this server only), never the token itself.\nThe queue is read once a second whatever the number of viewers, never under the\nwrite lock.\n\nIt answers only requests addressed to a loopback name (localhost), an IP address\nit listens on, or a name given with --allow-host NAME (a web page that points its\nown name at 127.0.0.1 gets 421, so it cannot read the queue through a browser).\nA request's headers must arrive within 10 s, and at most 256 connections are\nopen at once (when full, the oldest idle one is closed for a new one).\n\n  rq /nfs/q serve                          # then open http://127.0.0.1:8080/\n  rq /nfs/q serve --daemon --log ~/serve.log\n  ssh -L 8080:127.0.0.1:8080 login1        # from your laptop\n",
    ),
    (
        "metrics",
        "rq QUEUE metrics\n\nPrint the queue's metrics once, in OpenMetrics text: rq_jobs{state}, the\ntotals rq_jobs_finished_total, rq_jobs_failed_total, rq_jobs_dead_total, the\nhistogram rq_job_duration_seconds of recent jobs, per host rq_feeder_up,\nrq_feeder_heartbeat_age_seconds, rq_feeder_running, rq_feeder_max_feed, and\nrq_oldest_pending_age_seconds, rq_queue_db_bytes. For node_exporter's textfile\ncollector from cron; 'rq Q serve' serves the same at /metrics.\n\n  * * * * * rq /nfs/q metrics > /var/lib/node_exporter/rq.prom.tmp && mv /var/lib/node_exporter/rq.prom.tmp /var/lib/node_exporter/rq.prom\n",
    ),
    (
        "top",
        "rq QUEUE top   (or rq QUEUE status --watch)\n\nA live full-screen view, refreshed every second: the status summary (counts,\nbar, jobs ended per minute, ETA, feeders), then a list: running jobs (host,\nelapsed, command), pending jobs in the order feeders take them, recently ended\njobs (exit status, run time), dead and cancelled jobs (why), or the feeders.\nKeys: r p e d f (or Tab and the arrow keys) switch lists, the up/down arrows\nand PgUp/PgDn scroll, q (or Esc, Ctrl-C) quits. Read-only: one read\ntransaction per refresh, never the write lock; no key changes a job.\nNO_COLOR or --color never: no colour.\n",
    ),
    (
        "lock",
        "rq QUEUE lock read|shared|write|exclusive -- COMMAND...\n\nRun COMMAND while holding the queue's lock (one argument is run through sh -c,\nseveral as a command and its arguments): shared lets readers on\nand holds writers, exclusive holds everyone. rq exits with the command's status.\nFeeders and submitters wait (and say so) until it is released.\n\n  rq q lock exclusive -- cp q/db /backup/db\n",
    ),
    (
        "snapshot",
        "rq QUEUE snapshot [DEST]   (S)\n\nA consistent copy of the queue's database (SQLite's online backup API, never a\nfile copy), default QUEUE.snapshot next to the queue. Every read-only mode works\non it: rq q.snapshot status. --snapshot (-s) runs one read-only mode on a\ntemporary snapshot: rq q list -s running. Of a PostgreSQL queue: a new queue\ndirectory with its rows (default rq_NAME.snapshot here).\n",
    ),
    (
        "backup",
        "rq QUEUE backup [DEST]   (B)\n\nA consistent copy of the whole queue: the database (backup API) and every job's\nfiles, bin/ and the schema; default QUEUE.<time>.bak next to the queue. Feeders\nwait only while the database is copied. Refuses to overwrite. Of a PostgreSQL\nqueue: a new queue directory (default rq_NAME.<time>.bak here) with its rows and\njob files; 'rq DEST export --to URL [--files DIR]' puts it back.\n",
    ),
    (
        "rotate",
        "rq QUEUE rotate [DEST|DIR] [--no-compress]   (R)\n\nMove finished and dead jobs (rows and files) into an archive queue, packed as\nDEST.tgz (default QUEUE.<time>.tgz next to the queue, rq_NAME.<time>.tgz here for\na PostgreSQL queue; --no-compress keeps a directory). Pending, holding and\nrunning jobs stay. All or nothing. Read-only modes open archives directly:\nrq q.20261127T000000Z.tgz list. jids stay unique.\n",
    ),
    (
        "export",
        "rq QUEUE export --to NEWQUEUE [--files DIR]\n\nMove the queue into a new queue, a directory or a PostgreSQL URL, keeping every\njob with its jid, state and history, the dependencies, the settings and the job\nfiles (for a PostgreSQL queue, into --files DIR, a directory every host sees, new\nor empty; without it, into its database). The source is paused first and kept as it was: its feeders\nclaim nothing more, so no job runs in both ('rq QUEUE resume' undoes). Refused\nwhile a job runs: pause, let the running jobs end, then export. All or nothing.\n\n  rq /nfs/q pause; rq /nfs/q wait running\n  rq /nfs/q export --to 'postgres://rq@db/rq?queue=sims' --files /nfs/rqfiles\n",
    ),
    (
        "recover",
        "rq QUEUE recover\n\nCheck the database (integrity_check). If it is damaged: keep a copy of it\n(db.damaged.<time>), rebuild it from every row still readable, write the result back\nthrough SQLite (feeders wait meanwhile) and report what was recovered and what\nwas lost. Exit status 0 when the database is sound afterwards.\n",
    ),
    (
        "cron",
        "rq QUEUE cron [start|add|tab|delete|shutdown|stop] [rotate] [feed options]\n\nManage a tagged crontab line that runs 'rq QUEUE start' every 15 minutes with\nthe feed options given (and, with the word rotate, a daily rotate). add is\nidempotent; start also starts a feeder now; delete removes exactly rq's lines;\nshutdown/stop also stop this host's feeder. 'rq QUEUE crontab' prints the lines.\n\n  rq /nfs/q cron start --max_feed 8\n",
    ),
    (
        "crontab",
        "rq QUEUE crontab [rotate] [feed options]\n\nPrint the crontab lines 'cron add' would install.\n",
    ),
    (
        "ioview",
        "rq QUEUE ioview SELECTION [--editor CMD]   (io)\n\nOpen each job's stdin, stdout and stderr in an editor: --editor, else $RQ_EDITOR,\nelse 'vim -R -o'.\n",
    ),
    (
        "tail",
        "rq QUEUE tail JID   (ta)\n\nFollow a job's stdout (to stdout) and stderr (to stderr) until it has finished,\nfrom any host. Any selection that names one job will do (tag:NAME). Over NFS new output appears as the running host writes it back.\n",
    ),
    (
        "completions",
        "rq completions bash|zsh|fish\n\nPrint a shell completion script. It completes modes, options and their values\n(states, --fields names, --format, --color, configure keys):\n\n  rq completions bash > ~/.local/share/bash-completion/completions/rq\n  rq completions zsh > ~/.zfunc/_rq\n  rq completions fish > ~/.config/fish/completions/rq.fish\n",
    ),
    (
        "man",
        "rq man\n\nPrint the man page (roff): every mode as 'rq help MODE' tells it, the options,\nENVIRONMENT, FILES, EXIT STATUS and EXAMPLES.\n\n  rq man > ~/.local/share/man/man1/rq.1 && man rq\n",
    ),
    (
        "stdin",
        "rq QUEUE stdin|stdout|stderr SELECTION (0 1 2)\n\nPrint the jobs' captured stream, the jobs in the order named (rq help\nselections): rq q stdout array:12. stdin4/stdout4/stderr4 print the file paths.\n",
    ),
];

/// Help text for a topic (a mode or abbreviation), or the overview.
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
    TOPICS
        .iter()
        .find(|(name, _)| *name == mode)
        .map(|(_, text)| format!("{text}{}", option_lines(mode)))
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
        let Some((_, body)) = TOPICS.iter().find(|(name, _)| name == mode) else {
            continue;
        };
        page.push_str(&format!(".SS {}\n", roff_text(mode)));
        page.push_str(&preformatted(&format!("{body}{}", option_lines(mode))));
    }
    // Topics that are not modes.
    if let Some((_, selections)) = TOPICS.iter().find(|(name, _)| *name == "selections") {
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
