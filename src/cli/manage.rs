//! Administration and job I/O: snapshot, backup, rotate, recover, export, cron, ioview, tail.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::Context;
use super::select::WhenNone;
use crate::control::{self};
use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::queue::{self, Queue};
use crate::store::Access;

impl Context<'_> {
    pub(super) fn admin(&mut self, mode: &str) -> Result<i32> {
        // On PostgreSQL each makes a queue directory too: the copy, or the archive.
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
            "backup" => crate::admin::backup(&mut q, dest.as_deref(), self.inv.opts.quiet)?,
            _ => crate::admin::rotate(&mut q, dest.as_deref(), self.inv.opts.no_compress)?,
        };
        if !self.inv.opts.quiet {
            self.print_value(&report)?;
        }
        Ok(0)
    }

    /// `rq Q export --to DEST [--files DIR]` (or `rq Q export DEST`): the queue moved into
    /// a new queue of either store, the source kept but paused.
    pub(super) fn export(&mut self) -> Result<i32> {
        let dest = match (self.inv.opts.to.clone(), self.args()) {
            (Some(to), []) => to,
            (None, [to]) => PathBuf::from(to),
            (None, []) => {
                return Err(Error::usage(
                    "export needs the new queue: rq Q export --to postgres://HOST/DB?queue=NAME --files DIR",
                ));
            }
            _ => return Err(Error::usage("export takes one destination")),
        };
        let mut q = self.open(Access::ReadWrite)?;
        let o = &self.inv.opts;
        let report = crate::export::export(&mut q, &dest, o.files.as_deref(), o.quiet)?;
        if !self.inv.opts.quiet {
            self.print_value(&report)?;
        }
        Ok(0)
    }

    /// The queue as another process should be told it: a directory made absolute, or a
    /// PostgreSQL URL as given.
    fn queue_arg(&self) -> Result<PathBuf> {
        Ok(match crate::queue::postgres_location(&self.queue)? {
            Some(_) => self.queue.clone(),
            None => crate::queue::resolve(&self.queue),
        })
    }

    /// `recover` works on a queue directory's database file: it says so on a PostgreSQL
    /// queue, before anything is made.
    fn refuse_on_postgres(&self, mode: &str) -> Result<()> {
        if crate::queue::postgres_location(&self.queue)?.is_some() {
            return Err(Error::usage(format!(
                "{mode} works on a queue directory's database file; a PostgreSQL server keeps \
                 its own pages sound (copies: rq QUEUE backup, or pg_dump --schema=rq_NAME)"
            )));
        }
        Ok(())
    }

    /// `rq Q pause` / `rq Q resume`: no feeder claims anything while the queue is paused
    /// (running jobs go on).
    pub(super) fn pause(&mut self, on: bool) -> Result<i32> {
        if let Some(extra) = self.args().first() {
            return Err(Error::usage(format!(
                "pause and resume take no arguments (got '{extra}'); to stop one host: rq Q drain HOST"
            )));
        }
        let mut q = self.open(Access::ReadWrite)?;
        let since = held_since();
        let changed = q.set_flag("paused", on.then_some(since.as_str()))?;
        let said = match (on, changed) {
            (true, true) => format!("paused: {since}"),
            (true, false) => "paused: it already was".to_string(),
            (false, true) => "resumed: feeders claim jobs again".to_string(),
            (false, false) => "resumed: it was not paused".to_string(),
        };
        if !self.inv.opts.quiet {
            self.print_value(&serde_json::json!({ "queue": said }))?;
        }
        Ok(0)
    }

    /// `rq Q drain HOST...` / `rq Q undrain HOST...` (this host when none is named): the
    /// host's feeder claims nothing more and its running jobs finish; kept in the queue,
    /// so it holds across feeder restarts and can be set from any host.
    pub(super) fn drain(&mut self, on: bool) -> Result<i32> {
        let mut hosts: Vec<String> = self.args().to_vec();
        if hosts.is_empty() {
            hosts.push(host::name());
        }
        if let Some(bad) = hosts
            .iter()
            .find(|h| h.is_empty() || h.contains(['/', ',', ' ']) || h.starts_with('-'))
        {
            return Err(Error::usage(format!("'{bad}' is not a host name")));
        }
        let mut q = self.open(Access::ReadWrite)?;
        let since = held_since();
        let mut report = serde_json::Map::new();
        for h in &hosts {
            let changed = q.set_flag(&format!("drain.{h}"), on.then_some(since.as_str()))?;
            let said = match (on, changed) {
                (true, true) => format!("draining: {since}"),
                (true, false) => "draining: it already was".to_string(),
                (false, true) => "claims jobs again".to_string(),
                (false, false) => "was not drained".to_string(),
            };
            report.insert(h.clone(), serde_json::Value::String(said));
        }
        if !self.inv.opts.quiet {
            self.print_value(&serde_json::Value::Object(report))?;
        }
        Ok(0)
    }

    /// `rq Q serve`: the web dashboard and /metrics.
    pub(super) fn serve(&mut self) -> Result<i32> {
        let o = &self.inv.opts;
        let opts = crate::serve::Options {
            listen: o.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".into()),
            daemon: o.daemon,
            allow_actions: o.allow_actions,
            allow_hosts: o.allow_host.clone(),
            log: o.log.clone(),
            quiet: o.quiet,
        };
        self.out.flush()?;
        // Shown on every page: never with a password.
        let name = crate::secrets::redact(&self.queue.display().to_string());
        crate::serve::run(&self.queue_arg()?, &name, opts)
    }

    /// `rq Q usage [SELECTION]`: what the jobs' last runs used (`usage`), a table on a
    /// terminal, YAML/JSON otherwise.
    pub(super) fn usage(&mut self) -> Result<i32> {
        let Some(selection) = self.select(self.args(), WhenNone::All)? else {
            return self
                .print_value(&crate::usage::Report::default().to_json())
                .map(|_| 0);
        };
        let mut q = self.open(Access::ReadOnly)?;
        let absent = self.say_absent(&mut q, &selection, true)?;
        let mut report = crate::usage::Report::default();
        q.runs(&self.mine(selection.clause()), &mut |run| report.add(run))?;
        if self.format == crate::output::Format::Table {
            let text = crate::human::usage_table(&report, &self.terminal);
            self.out.print(&text)?;
        } else {
            self.print_value(&report.to_json())?;
        }
        Ok(i32::from(absent))
    }

    /// `rq Q metrics`: the OpenMetrics text once (for node_exporter's textfile collector).
    pub(super) fn metrics(&mut self) -> Result<i32> {
        let mut q = self.open(Access::ReadOnly)?;
        let text = crate::serve::metrics_once(&mut q)?;
        self.out.print(&text)?;
        Ok(0)
    }

    pub(super) fn recover(&mut self) -> Result<i32> {
        self.refuse_on_postgres("recover")?;
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
    pub(super) fn feeder_options(&self) -> Vec<String> {
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

    pub(super) fn cron(&mut self, fixed: Option<&str>) -> Result<i32> {
        let args = self.args().to_vec();
        let action = fixed
            .map(String::from)
            .or_else(|| args.first().cloned())
            .unwrap_or_else(|| "start".into());
        let words = &args[usize::from(fixed.is_none()).min(args.len())..];
        if let Some(extra) = words.iter().find(|a| *a != "rotate") {
            return Err(Error::usage(format!(
                "cron {action}: unexpected '{extra}' (only 'rotate' may follow)"
            )));
        }
        let rotate = !words.is_empty();
        let rq = std::env::current_exe().context(|| "cannot find the rq executable".into())?;
        let rq = PathBuf::from(
            rq.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string(),
        );
        // The queue as cron will name it: its directory, or its URL (whose `%`s cron
        // gets escaped).
        drop(Queue::open(&self.queue, Access::ReadOnly)?);
        let dir = self.queue_arg()?;
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
                    return self.run_feeder(true);
                }
                Ok(0)
            }
            "tab" => {
                for line in crate::cron::lines(&rq, &dir, &options, rotate)? {
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
    pub(super) fn ioview(&mut self) -> Result<i32> {
        let Some(selection) = self.select(
            self.args(),
            WhenNone::Usage("ioview: name the jobs to show (jids, array:ID, tag:NAME, a state)"),
        )?
        else {
            return Ok(0);
        };
        let editor = self
            .inv
            .opts
            .editor
            .clone()
            .or_else(|| std::env::var("RQ_EDITOR").ok())
            .or_else(|| std::env::var("RQ_IOVIEW").ok())
            .unwrap_or_else(|| "vim -R -o".into());
        let mut q = self.open(Access::ReadOnly)?;
        let jobs = self.chosen(&mut q, &selection)?;
        let mut worst = i32::from(self.say_absent(&mut q, &selection, true)?);
        self.out.flush()?;
        // A queue keeping job files in its database: they are copied to a temporary
        // directory for the editor.
        let copies = tempfile::tempdir().context(|| "cannot make a temporary directory".into())?;
        for jid in jobs.iter().map(|job| job.jid) {
            let mut files: Vec<PathBuf> = Vec::new();
            for stream in ["stdin", "stdout", "stderr"] {
                if !q.in_database() {
                    let path = q.dir().join(stream).join(jid.to_string());
                    if path.exists() {
                        files.push(path);
                    }
                    continue;
                }
                if let Some(bytes) = q.read_job_file(jid, stream, 0, u64::MAX)? {
                    let path = copies.path().join(format!("{jid}.{stream}"));
                    std::fs::write(&path, bytes)
                        .context(|| format!("cannot write {}", path.display()))?;
                    files.push(path);
                }
            }
            if files.is_empty() {
                crate::note!("rq: job {jid} has no stdin, stdout or stderr files (yet)");
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
    pub(super) fn tail(&mut self) -> Result<i32> {
        let Some(selection) = self.select(
            self.args(),
            WhenNone::Usage(
                "tail: name the job to follow (a jid, or one job by array:ID, tag:NAME, a state)",
            ),
        )?
        else {
            return Ok(0);
        };
        let mut q = self.open(Access::ReadOnly)?;
        let jobs = self.chosen(&mut q, &selection)?;
        if self.say_absent(&mut q, &selection, true)? && jobs.is_empty() {
            return Ok(1);
        }
        let jid = match jobs.as_slice() {
            [job] => job.jid,
            [] => return Ok(0),
            more => {
                return Err(Error::usage(format!(
                    "tail follows one job: that names {} (jobs {}, ...)",
                    more.len(),
                    more.iter()
                        .take(3)
                        .map(|j| j.jid.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        let mut offsets = [0u64; 2];
        let mut delay = 0.1f64;
        loop {
            let progress = q.progress(&[jid])?;
            if progress.gone == 1 {
                crate::note!("rq: job {jid}: no such job (deleted meanwhile)");
                return Ok(1);
            }
            let done = progress.pending + progress.holding + progress.running == 0;
            let mut grew = false;
            for (i, stream) in ["stdout", "stderr"].into_iter().enumerate() {
                // A file is reopened every poll; a new run's starts again from the top.
                if q.job_file_size(jid, stream)?
                    .is_some_and(|n| n < offsets[i])
                {
                    offsets[i] = 0;
                }
                let Some(bytes) = q.read_job_file(jid, stream, offsets[i], u64::MAX)? else {
                    continue;
                };
                if !bytes.is_empty() {
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

/// `since <time> by <user>@<host>`: when and by whom a pause or drain was asked for.
fn held_since() -> String {
    format!(
        "since {} by {}@{}",
        crate::time::now(),
        host::user_name(),
        host::name()
    )
}

/// `rq help MODE` for the modes handled here.
pub(super) const HELP: &[(&str, &str)] = &[
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
        "serve",
        "rq QUEUE serve [--listen 127.0.0.1:8080] [--daemon] [--allow-actions] [--allow-host NAME]\n\nA live web dashboard of the queue, from this binary alone (no CDN, nothing to\ninstall): an overview (counts by state, a bar, jobs ended per minute over the\nlast hour, successes and failures, ETA, oldest pending job), the hosts (every\nfeeder alive or dead, heartbeat age, running/max_feed, jobs done in the last\nhour, and a timeline of the last 30 minutes: one lane per host, one bar per\njob), the jobs (filter by state, tag, host, text; paged by jid) and each job\n(every field, the tail of its stdout/stderr, followed live). Pages update by\nthemselves every 1.5 s and read fine without JavaScript. GET /metrics serves\nthe OpenMetrics text of 'rq Q metrics'.\n\nIt listens on 127.0.0.1 unless --listen says otherwise (then it warns: whoever\ncan reach the port sees every command and output). Read-only unless\n--allow-actions: then kill, hold, release and resubmit buttons work for whoever\nshows the token kept in ~/.rq/serve-token (0600, printed when made): sign in at\n/login (a same-site cookie) or send the header X-RQ-Token. Actions are POSTs,\nrefused cross-site, done as the CLI does them and logged on stderr. The sign-in\ncookie is a random session (12 hours, this server only), never the token itself.\nThe queue is read once a second whatever the number of viewers, never under the\nwrite lock.\n\nIt answers only requests addressed to a loopback name (localhost), an IP address\nit listens on, or a name given with --allow-host NAME (a web page that points its\nown name at 127.0.0.1 gets 421, so it cannot read the queue through a browser).\nA request's headers must arrive within 10 s, and at most 256 connections are\nopen at once (when full, the oldest idle one is closed for a new one).\n\n  rq /nfs/q serve                          # then open http://127.0.0.1:8080/\n  rq /nfs/q serve --daemon --log ~/serve.log\n  ssh -L 8080:127.0.0.1:8080 login1        # from your laptop\n",
    ),
    (
        "metrics",
        "rq QUEUE metrics\n\nPrint the queue's metrics once, in OpenMetrics text: rq_jobs{state}, the\ntotals rq_jobs_finished_total, rq_jobs_failed_total, rq_jobs_dead_total, the\nhistogram rq_job_duration_seconds of recent jobs, per host rq_feeder_up,\nrq_feeder_heartbeat_age_seconds, rq_feeder_running, rq_feeder_max_feed, and\nrq_oldest_pending_age_seconds, rq_queue_db_bytes. For node_exporter's textfile\ncollector from cron; 'rq Q serve' serves the same at /metrics.\n\n  * * * * * rq /nfs/q metrics > /var/lib/node_exporter/rq.prom.tmp && mv /var/lib/node_exporter/rq.prom.tmp /var/lib/node_exporter/rq.prom\n",
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
];
