//! Feeding and controlling jobs: feed, start, pid, feeder, feeders, kill, wait, lock.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Context;
use super::select::WhenNone;
use crate::control::{self, FeedRequest, LogOptions};
use crate::error::{Error, IoContext, Result};
use crate::feeder;
use crate::job::{self, Row};
use crate::log::{Age, Level};
use crate::output::{self, Format};
use crate::queue::{self, Selection};
use crate::store::Access;
use crate::{host, input, query};

impl Context<'_> {
    pub(super) fn feed(&mut self, start_mode: bool) -> Result<i32> {
        if let Some(extra) = self.args().first() {
            return Err(Error::usage(format!(
                "{} takes no arguments (got '{extra}')",
                if start_mode { "start" } else { "feed" }
            )));
        }
        self.run_feeder(start_mode)
    }

    /// `feed`/`start` once the arguments are checked (`cron start` has its own).
    pub(super) fn run_feeder(&mut self, start_mode: bool) -> Result<i32> {
        let o = &self.inv.opts;
        let seconds = |name: &str, value: &Option<String>, default: f64| -> Result<f64> {
            match value {
                Some(v) => crate::time::parse_duration(v).ok_or_else(|| {
                    Error::usage(format!(
                        "--{name}: '{v}' is not {}",
                        crate::time::DURATION_FORMS
                    ))
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
                // `none`: run plain commands without a shell (see runner::plain_argv).
                Some(if words == ["none"] { Vec::new() } else { words })
            }
            // The queue's `shell` setting, else the default.
            None => None,
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
                capacity: host_capacity(o, max_feed)?,
                local_files: None,
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

    pub(super) fn feeder_status(&mut self, pid_only: bool) -> Result<i32> {
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

impl Context<'_> {
    /// `rq Q feeders`: every host that has fed the queue, judged by its heartbeat.
    pub(super) fn feeders(&mut self) -> Result<i32> {
        let mut q = self.open(Access::ReadOnly)?;
        let feeders = crate::overview::feeders(&mut q)?;
        let columns: Vec<String> = crate::overview::FEEDER_FIELDS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let fields = match &self.inv.opts.fields {
            Some(spec) => Some(job::select_fields(spec, &columns)?),
            None => None,
        };
        if self.format == Format::Table {
            let text = crate::human::feeders_table(&feeders, fields.as_deref(), &self.terminal);
            return self.out.print(&text).map(|_| 0);
        }
        let rows: Vec<Row> = feeders.iter().map(|f| f.to_row()).collect();
        let text = output::rows(&rows, fields.as_deref(), self.format);
        self.out.print(&text)?;
        Ok(0)
    }

    /// `rq Q state SELECTION`: one word per job, in the order named, for workflow managers'
    /// status checks: `running` (not ended yet: pending, waiting, holding, running),
    /// `success` (exit status 0, no signal) or `failed` (anything else, or no such job).
    /// Exits 0 even for a job that is not there (said on stderr): a status command that
    /// fails is retried by the managers, a `failed` is acted on.
    pub(super) fn state(&mut self) -> Result<i32> {
        let Some(selection) = self.select(
            self.args(),
            WhenNone::Usage(
                "state: name the jobs (jids, array:ID, tag:NAME, a state, or '-' to read jids)",
            ),
        )?
        else {
            return Ok(0);
        };
        let mut q = self.open(Access::ReadOnly)?;
        let outcomes = q.outcomes(&selection.clause())?;
        let by_jid: std::collections::HashMap<i64, &queue::Outcome> =
            outcomes.iter().map(|o| (o.jid, o)).collect();
        let mut words = String::new();
        for jid in &selection.jids {
            match by_jid.get(jid) {
                Some(outcome) => words += state_word(outcome),
                None => {
                    crate::note!("rq: job {jid}: no such job");
                    words += "failed";
                }
            }
            words.push('\n');
        }
        for outcome in outcomes.iter().filter(|o| !selection.jids.contains(&o.jid)) {
            words += state_word(outcome);
            words.push('\n');
        }
        let others = Selection {
            jids: Vec::new(),
            ..selection.clone()
        };
        self.say_absent(&mut q, &others, false)?;
        self.out.print(&words)?;
        Ok(0)
    }

    /// `rq Q cancel SELECTION [--signal SIG]`: the jobs not started leave the queue (jobs
    /// that wait for them are cancelled, or stop waiting if they wait only for an end:
    /// `delete --force`), the running ones are killed (and so end failed: the jobs that
    /// wait for their success are cancelled), the ended ones stay as they are.
    pub(super) fn cancel(&mut self) -> Result<i32> {
        let signal = self.signal_option()?;
        let Some(selection) = self.select(
            self.args(),
            WhenNone::Usage(
                "cancel: name the jobs (jids, array:ID, tag:NAME, a state, or '-' to read jids)",
            ),
        )?
        else {
            crate::note!("rq: no jobs on standard input; nothing cancelled");
            self.print_rows(&[])?;
            return Ok(0);
        };
        let mut q = self.open(Access::ReadWrite)?;
        let chosen = self.chosen(&mut q, &selection)?;
        let absent = self.say_absent(&mut q, &selection, true)?;
        let not_started: Vec<i64> = chosen
            .iter()
            .filter(|o| matches!(o.state.as_str(), "pending" | "holding" | "waiting"))
            .map(|o| o.jid)
            .collect();
        let mut acted = Vec::new();
        if !not_started.is_empty() {
            let remove = Selection {
                jids: not_started,
                ..Default::default()
            };
            // Those that started meanwhile are skipped here, and killed below.
            let (rows, _started) = q.delete(&remove, true)?;
            acted.extend(rows);
        }
        // Read again: a job may have started, or ended, since.
        let all: Vec<i64> = chosen.iter().map(|o| o.jid).collect();
        let running: Vec<i64> = q
            .outcomes(
                &crate::store::Filter::jids(&all).and(crate::store::Filter::State("running", true)),
            )?
            .iter()
            .map(|o| o.jid)
            .collect();
        if !running.is_empty() {
            // A job that ended meanwhile is not signalled, and that is no failure.
            let (rows, _ended) = q.request_kill(&running, &crate::process::signal_name(signal))?;
            acted.extend(rows);
        }
        self.print_rows(&acted)?;
        Ok(i32::from(absent))
    }

    /// `--signal SIG`, TERM if not given.
    fn signal_option(&self) -> Result<i32> {
        Ok(match &self.inv.opts.signal {
            Some(s) => crate::process::parse_signal(s).ok_or_else(|| {
                Error::usage(format!(
                    "--signal: unknown signal '{s}' (e.g. TERM, KILL, INT, 9)"
                ))
            })?,
            None => libc::SIGTERM,
        })
    }

    /// `rq Q kill JID... [--signal SIG]`: ask each job's feeder, wherever it runs, to signal
    /// the job's process group.
    pub(super) fn kill(&mut self) -> Result<i32> {
        let signal = self.signal_option()?;
        let Some(selection) = self.select(
            self.args(),
            WhenNone::Usage("kill: name the running jobs (jids, array:ID, tag:NAME, running) or '-' to read jids"),
        )?
        else {
            crate::note!("rq: no jobs on standard input; nothing signalled");
            return Ok(0);
        };
        let mut q = self.open(Access::ReadWrite)?;
        // The named jids as named (each one that is not running is said); of the jobs
        // the other targets choose, the running ones.
        let mut jids = selection.jids.clone();
        let others = Selection {
            jids: Vec::new(),
            ..selection.clone()
        };
        if !others.is_empty() {
            let running = others
                .clause()
                .and(crate::store::Filter::State("running", true));
            jids.extend(q.outcomes(&running)?.iter().map(|o| o.jid));
        }
        let absent = self.say_absent(&mut q, &others, false)?;
        let (rows, skipped) = q.request_kill(&jids, &crate::process::signal_name(signal))?;
        self.print_rows(&rows)?;
        Ok(self
            .report_skipped("signalled", &skipped)
            .max(i32::from(absent)))
    }

    /// `rq Q wait [JIDS|STATES|query] [--timeout D]`: until the jobs are finished, dead
    /// or cancelled. Exit 0 only if every one succeeded; 1 if any failed, died, was
    /// cancelled or deleted (they are listed, with why); 124 when the timeout came first.
    pub(super) fn wait(&mut self) -> Result<i32> {
        let args = self.args().to_vec();
        let deadline = super::duration_option("timeout", &self.inv.opts.timeout)?
            .filter(|d| *d > 0.0)
            .map(|d| (Instant::now() + Duration::from_secs_f64(d), d));
        // A where-clause (words that are neither targets nor terms): the jobs it matches.
        let raw = args.iter().any(|a| {
            input::parse_target_word(a, true).is_err()
                && !query::is_term(a)
                && a.contains(['=', '<', '>', '~', ' '])
        });
        let (clause, selection) = if raw {
            (query::parse(&args)?, None)
        } else {
            match self.select(&args, WhenNone::All)? {
                Some(selection) => (selection.clause(), Some(selection)),
                // `-` that named nothing: nothing to wait for.
                None => return Ok(0),
            }
        };
        let mut q = self.open(Access::ReadOnly)?;
        let mut jids = Vec::new();
        q.query(&clause, &mut |rows| {
            jids.extend(rows.iter().map(Row::jid));
            Ok(())
        })?;
        // Named jobs that are not there fail the wait (said first), as in every mode.
        let absent = match &selection {
            Some(selection) => self.say_absent(&mut q, selection, true)?,
            None => false,
        };
        let tty = std::io::stderr().is_terminal();
        // Jobs no live feeder can run would be waited for forever: say so at once.
        let (count, some) = q.unfit(Some(&jids))?;
        for (jid, why) in &some {
            crate::note!(
                "rq: job {jid} {why}: it cannot run until a feeder that large starts (rq Q feed --cpus/--mem/--gpus)"
            );
        }
        if count > some.len() as i64 {
            crate::note!(
                "rq: and {} more jobs no live feeder can run",
                count - some.len() as i64
            );
        }
        let started = Instant::now();
        let mut done_at_start = None;
        let mut said = std::collections::HashSet::new();
        // The first look for reasons to be stuck comes after feeders had a moment to
        // start (and publish their heartbeats) beside this wait.
        let mut next_check = Instant::now() + Duration::from_secs(2);
        let mut delay = 0.2f64;
        loop {
            let progress = q.progress(&jids)?;
            let done = progress.finished + progress.dead + progress.cancelled + progress.gone;
            let left = progress.pending + progress.running + progress.holding + progress.waiting;
            let first_done = *done_at_start.get_or_insert(done);
            if tty {
                // The rate since wait began gives the ETA.
                let secs = started.elapsed().as_secs_f64();
                let eta = if done > first_done && left > 0 && secs > 1.0 {
                    let rate = (done - first_done) as f64 / secs;
                    format!(" · ETA {}", crate::human::duration(left as f64 / rate))
                } else {
                    String::new()
                };
                let failed = progress.failed + progress.dead + progress.cancelled;
                let mut more = String::new();
                for (n, what) in [
                    (failed, "failed"),
                    (progress.waiting, "waiting for other jobs"),
                    (progress.holding, "holding"),
                ] {
                    if n > 0 {
                        more.push_str(&format!(", {n} {what}"));
                    }
                }
                crate::note!(inline
                    "\r\x1b[K[{}] {done}/{} done, {} running, {} pending{more}{eta}",
                    crate::human::bar(done as i64, jids.len().max(1) as i64, 20),
                    jids.len(),
                    progress.running,
                    progress.pending,
                );
            }
            // Waiting jobs are not stuck: they run once the jobs they wait for end.
            if left == 0 {
                if tty {
                    crate::note!("");
                }
                let bad = progress.failed + progress.dead + progress.cancelled + progress.gone;
                if bad > 0 {
                    report_failures(&mut q, &jids, progress.gone)?;
                }
                return Ok(i32::from(bad > 0 || absent));
            }
            if Instant::now() >= next_check {
                for warning in stuck(&mut q, &jids, &progress)? {
                    if said.insert(warning.clone()) {
                        if tty {
                            crate::note!("");
                        }
                        crate::note!("rq: {warning}");
                    }
                }
                next_check = Instant::now() + Duration::from_secs(10);
            }
            if let Some((deadline, limit)) = deadline
                && Instant::now() >= deadline
            {
                if tty {
                    crate::note!("");
                }
                // Why they did not end, if it can be told.
                for warning in stuck(&mut q, &jids, &progress)? {
                    if !said.contains(&warning) {
                        crate::note!("rq: {warning}");
                    }
                }
                crate::note!(
                    "rq: wait: gave up after {}: {left} of {} jobs not done ({} running, {} pending, {} waiting, {} holding)",
                    crate::human::duration(limit),
                    jids.len(),
                    progress.running,
                    progress.pending,
                    progress.waiting,
                    progress.holding
                );
                return Ok(124);
            }
            let mut nap = Duration::from_secs_f64(delay);
            if let Some((deadline, _)) = deadline {
                nap = nap.min(deadline.saturating_duration_since(Instant::now()));
            }
            std::thread::sleep(nap);
            delay = (delay * 1.5).min(2.0);
        }
    }

    /// `rq Q top` and `rq Q status --watch`: the live view.
    pub(super) fn top(&mut self) -> Result<i32> {
        let mut q = self.open(Access::ReadOnly)?;
        self.out.flush()?;
        crate::top::run(
            &mut q,
            &crate::secrets::redact(&self.queue.display().to_string()),
            &self.terminal,
        )
    }

    /// `rq Q lock read|shared|write|exclusive -- COMMAND...`: run a command holding the
    /// queue lock; rq exits with the command's status.
    pub(super) fn lock(&mut self) -> Result<i32> {
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
        // One argument is a shell command line; several are a command and its arguments,
        // run as they are (joined into one line, their quoting was lost).
        let argv: Vec<String> = match command {
            [line] => vec!["sh".into(), "-c".into(), line.clone()],
            argv => argv.to_vec(),
        };
        let shown = command.join(" ");
        self.out.flush()?;
        let mut q = self.open(Access::ReadWrite)?;
        let status = q.store().with_lock(exclusive, || {
            std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .status()
                .context(|| format!("cannot run {shown}"))
        })?;
        Ok(status
            .code()
            .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
    }
}

/// The word `state` says for a job: running, success or failed.
fn state_word(outcome: &queue::Outcome) -> &'static str {
    match outcome.state.as_str() {
        "pending" | "waiting" | "holding" | "running" => "running",
        "finished" if outcome.exit_status == Some(0) && outcome.signal.is_none() => "success",
        _ => "failed",
    }
}

/// `1000`, `64K`, `10M`, `1G`.
/// Why the jobs `wait` waits for may never end, with what to do: no live feeder, every
/// remaining job holding, or jobs that may run only on hosts without a live feeder.
fn stuck(q: &mut queue::Queue, jids: &[i64], p: &queue::Progress) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let runnable = p.pending + p.running + p.waiting;
    if runnable == 0 && p.holding > 0 {
        warnings.push(format!(
            "the {} remaining jobs are holding: they run only once released \
             (rq Q update holding state=pending)",
            p.holding
        ));
        return Ok(warnings);
    }
    if p.pending + p.waiting == 0 {
        return Ok(warnings);
    }
    let feeders = crate::overview::feeders(q)?;
    let live: Vec<&str> = feeders
        .iter()
        .filter(|f| f.alive)
        .map(|f| f.host.as_str())
        .collect();
    if live.is_empty() {
        warnings.push(
            "no feeder is alive on this queue: nothing runs until one starts \
             (rq Q feed --daemon on a host, or rq Q cron start)"
                .into(),
        );
        return Ok(warnings);
    }
    let json = serde_json::to_string(jids).unwrap_or_default();
    let restricted: Vec<(i64, String)> = q.store().read(|tx| {
        let mut stmt = tx.op(crate::store::ops::jobs::RESTRICTED_PENDING);
        let rows = stmt
            .query_map([&json], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<crate::error::Result<Vec<_>>>()?;
        Ok(rows)
    })?;
    let orphans: Vec<&(i64, String)> = restricted
        .iter()
        .filter(|(_, hosts)| !live.iter().any(|h| host::allowed(Some(hosts), h)))
        .collect();
    if let Some((jid, hosts)) = orphans.first() {
        warnings.push(format!(
            "{} pending jobs may run only on hosts with no live feeder (e.g. job {jid}: \
             --runner {hosts}; live: {}): start a feeder there, or let them run anywhere \
             (rq Q update {jid} runner=null)",
            orphans.len(),
            live.join(",")
        ));
    }
    Ok(warnings)
}

/// After `wait`: which jobs failed, died or were cancelled, and why (exit status or
/// signal, host, the first line of their stderr).
fn report_failures(q: &mut queue::Queue, jids: &[i64], gone: usize) -> Result<()> {
    const SHOWN: i64 = 20;
    let json = serde_json::to_string(jids).unwrap_or_default();
    let (rows, total) = q.store().read(|tx| {
        let mut failed = tx.op(crate::store::ops::scan::FAILED_OF);
        let rows = queue::rows_of(
            &mut failed,
            &[
                crate::store::SqlValue::Text(json.clone()),
                crate::store::SqlValue::Integer(SHOWN),
            ],
        )?;
        let total: i64 = tx
            .op(crate::store::ops::jobs::COUNT_FAILED)
            .query_row([&json], |r| r.get(0))?;
        Ok((rows, total))
    })?;
    for row in &rows {
        let text = |name: &str| row.get(name).as_text().map(str::to_string);
        let on = text("runner")
            .map(|h| format!(" on {h}"))
            .unwrap_or_default();
        let what = match text("state").as_deref() {
            Some("cancelled") => format!(
                "cancelled: {}",
                text("reason").unwrap_or_else(|| "a job it needed failed".into())
            ),
            Some("dead") => format!("died{on} (its host or feeder stopped while it ran)"),
            _ => match (text("signal"), row.get("exit_status").as_int()) {
                (Some(sig), _) if row.get("timed_out").as_int() == Some(1) => {
                    format!("timed out{on} (killed by {sig})")
                }
                (Some(sig), _) => match text("reason") {
                    // The feeder ended it (over its --mem).
                    Some(why) => format!("was killed by {sig}{on}: {why}"),
                    None => format!("was killed by {sig}{on}"),
                },
                (None, Some(code)) => format!("failed with exit status {code}{on}"),
                _ => format!("failed{on}"),
            },
        };
        let stderr = first_stderr_line(q, row.jid())
            .map(|l| format!(": {l}"))
            .unwrap_or_default();
        crate::note!("rq: job {} {what}{stderr}", row.jid());
    }
    if total > SHOWN {
        crate::note!(
            "rq: and {} more (rq Q query \"exit_status != 0 or state in ('dead', 'cancelled')\")",
            total - SHOWN
        );
    }
    if gone > 0 {
        crate::note!("rq: {gone} jobs were deleted while waited for");
    }
    Ok(())
}

/// The first non-empty line of a job's stderr, if it has one: read without following a
/// link or opening anything but a regular file (the queue directory is shared).
fn first_stderr_line(q: &mut queue::Queue, jid: i64) -> Option<String> {
    let head = q.read_job_file(jid, "stderr", 0, 4096).ok()??;
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut line: String = line.chars().filter(|c| !c.is_control()).take(160).collect();
    if line.chars().count() == 160 {
        line.push('…');
    }
    Some(line)
}

fn parse_bytes(text: &str) -> Option<u64> {
    crate::input::parse_size(text).filter(|n| *n > 0)
}

/// What this host offers jobs: `--cpus` (default: all, or `--max_feed` if that is more,
/// so that `--max_feed` keeps its meaning for one-CPU jobs), `--mem` (default: all the
/// memory), `--gpus 0,1,...` or `auto` (the devices `nvidia-smi -L` lists; default none).
fn host_capacity(o: &super::Options, max_feed: usize) -> Result<crate::claims::Capacity> {
    let cpus = match &o.cpus {
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Error::usage(format!("--cpus: '{v}' is not a positive whole number")))?,
        None => (crate::process::cpus() as i64).max(max_feed as i64),
    };
    let mem = match &o.mem {
        Some(v) => crate::input::parse_size(v)
            .and_then(|n| i64::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| Error::usage(format!("--mem: '{v}' is not a size like 64G")))?,
        None => total_memory().unwrap_or(i64::MAX / 2),
    };
    let devices = match o.gpus.as_deref().map(str::trim) {
        None | Some("") | Some("none") => Vec::new(),
        Some("auto") => nvidia_devices(),
        Some(list) => {
            let ids: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect();
            if let Some(bad) = ids.iter().find(|d| {
                !d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
            }) {
                return Err(Error::usage(format!(
                    "--gpus: '{bad}' is not a device name"
                )));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(twice) = ids.iter().find(|d| !seen.insert(*d)) {
                return Err(Error::usage(format!(
                    "--gpus: device {twice} is listed twice"
                )));
            }
            ids
        }
    };
    Ok(crate::claims::Capacity { cpus, mem, devices })
}

/// MemTotal from /proc/meminfo, in bytes.
fn total_memory() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The GPUs `nvidia-smi -L` lists (`GPU 0: ...`), by index; none without nvidia-smi.
fn nvidia_devices() -> Vec<String> {
    let Ok(out) = std::process::Command::new("nvidia-smi").arg("-L").output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("GPU "))
        .filter_map(|rest| rest.split(':').next())
        .map(|n| n.trim().to_string())
        .collect()
}

/// `rq help MODE` for the modes handled here.
pub(super) const HELP: &[(&str, &str)] = &[
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
        "state",
        "rq QUEUE state SELECTION\n\nOne word per job, one line each, in the order named (jids as named, then the\njobs other words name, by jid): running (pending, waiting, holding or running:\nnot ended yet), success (exit status 0, no signal) or failed (a non-zero exit\nstatus, a signal, dead, cancelled, or no such job). Exits 0 even for a job that\nis not there (said on stderr): the status command of a workflow manager.\n\n  rq q state 12 13 14\n  jid=$(rq q submit --parsable ./step.sh); rq q state $jid\n",
    ),
    (
        "cancel",
        "rq QUEUE cancel SELECTION [--signal SIG]\n\nEnd the jobs, whatever their state, in one call: jobs not started yet\n(pending, waiting, holding) are removed from the queue, running ones are\nsignalled (TERM, or --signal) on whatever host runs them and end failed, jobs\nthat already ended stay as they are. Jobs that wait for a cancelled job to\nsucceed (--after) are cancelled too (state cancelled, with the reason); jobs\nthat wait only for it to end (--after-any) run once it has. Prints the jobs it\nremoved or signalled; exit 0 unless a named job is not in the queue.\n\n  rq q cancel tag:run-42\n  rq q cancel array:100 --signal KILL\n",
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
        "top",
        "rq QUEUE top   (or rq QUEUE status --watch)\n\nA live full-screen view, refreshed every second: the status summary (counts,\nbar, jobs ended per minute, ETA, feeders), then a list: running jobs (host,\nelapsed, command), pending jobs in the order feeders take them, recently ended\njobs (exit status, run time), dead and cancelled jobs (why), or the feeders.\nKeys: r p e d f (or Tab and the arrow keys) switch lists, the up/down arrows\nand PgUp/PgDn scroll, q (or Esc, Ctrl-C) quits. Read-only: one read\ntransaction per refresh, never the write lock; no key changes a job.\nNO_COLOR or --color never: no colour.\n",
    ),
    (
        "lock",
        "rq QUEUE lock read|shared|write|exclusive -- COMMAND...\n\nRun COMMAND while holding the queue's lock (one argument is run through sh -c,\nseveral as a command and its arguments): shared lets readers on\nand holds writers, exclusive holds everyone. rq exits with the command's status.\nFeeders and submitters wait (and say so) until it is released.\n\n  rq q lock exclusive -- cp q/db /backup/db\n",
    ),
];
