//! Feeding and controlling jobs: feed, start, pid, feeder, feeders, kill, wait, lock.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use super::Context;
use crate::control::{self, FeedRequest, LogOptions};
use crate::error::{Error, IoContext, Result};
use crate::feeder;
use crate::input::Target;
use crate::job::{self, Row};
use crate::log::{Age, Level};
use crate::output;
use crate::queue::{self, Selection};
use crate::store::Access;
use crate::{host, query};

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
                // `none`: run plain commands without a shell (see runner::plain_argv).
                if words == ["none"] { Vec::new() } else { words }
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
                capacity: host_capacity(o, max_feed)?,
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
        let paused = q.setting("paused")?;
        let now = crate::liveness::server_now(q.dir(), &host::name())?;
        let mut rows = Vec::new();
        for (info, age) in crate::liveness::known_hosts(q.dir(), now) {
            let drained = q.setting(&format!("drain.{}", info["host"].as_str().unwrap_or("?")))?;
            let name = info["host"].as_str().unwrap_or("?").to_string();
            let stopped = info["stopped"].as_bool().unwrap_or(false);
            let error = info["error"].as_str().map(str::to_string);
            // Alive but not claiming, and why (e.g. the filesystem is full).
            let note = info["note"].as_str().map(str::to_string);
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
                            if stopped && error.is_some() {
                                "failed"
                            } else if stopped {
                                "stopped"
                            } else if alive && drained.is_some() && count > 0 {
                                "draining"
                            } else if alive && drained.is_some() {
                                "drained"
                            } else if alive && paused.is_some() {
                                "paused"
                            } else if alive && note.is_some() {
                                "waiting"
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
                    ("cpus".into(), cell(&info["cpus"])),
                    ("mem".into(), cell(&info["mem"])),
                    (
                        "gpus".into(),
                        match &info["gpus"] {
                            serde_json::Value::String(s) if s.is_empty() => job::Cell::Null,
                            other => cell(other),
                        },
                    ),
                    ("pid".into(), cell(&info["pid"])),
                    ("started".into(), cell(&info["started"])),
                    ("version".into(), cell(&info["version"])),
                    ("feeder".into(), cell(&info["feeder"])),
                    (
                        "error".into(),
                        error
                            .or(note.filter(|_| alive))
                            .or(drained.filter(|_| alive).map(|d| format!("drained {d}")))
                            .or(paused
                                .clone()
                                .filter(|_| alive)
                                .map(|p| format!("the queue is paused {p}")))
                            .map_or(job::Cell::Null, job::Cell::Text),
                    ),
                ],
            });
        }
        let columns: Vec<String> = [
            "host",
            "alive",
            "state",
            "heartbeat_age",
            "running",
            "max_feed",
            "cpus",
            "mem",
            "gpus",
            "pid",
            "started",
            "version",
            "feeder",
            "error",
        ]
        .map(String::from)
        .to_vec();
        let fields = match &self.inv.opts.fields {
            Some(spec) => Some(job::select_fields(spec, &columns)?),
            None => None,
        };
        let text = output::rows(&rows, fields.as_deref(), self.format);
        self.out.print(&text)?;
        Ok(0)
    }

    /// `rq Q kill JID... [--signal SIG]`: ask each job's feeder, wherever it runs, to signal
    /// the job's process group.
    pub(super) fn kill(&mut self) -> Result<i32> {
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
        let mut jids: Vec<i64> = targets
            .iter()
            .filter_map(|t| match t {
                Target::Jid(j) => Some(*j),
                _ => None,
            })
            .collect();
        let arrays: Vec<i64> = targets
            .iter()
            .filter_map(|t| match t {
                Target::Array(a) => Some(*a),
                _ => None,
            })
            .collect();
        let mut q = self.open(Access::ReadWrite)?;
        if !arrays.is_empty() {
            // The array's running jobs; the others are simply not signalled.
            jids.extend(q.array_jids(&arrays, Some("running"))?);
        }
        let (rows, skipped) = q.request_kill(&jids, &crate::process::signal_name(signal))?;
        self.print_rows(&rows)?;
        Ok(self.report_skipped("signalled", &skipped))
    }

    /// `rq Q wait [JIDS|STATES|query]`: until the jobs are finished or dead; exit 0 only
    /// if every one succeeded.
    pub(super) fn wait(&mut self) -> Result<i32> {
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
            let selection = Selection::from_targets_or_all(&targets);
            q.list(&selection, &mut |rows| {
                jids.extend(rows.iter().map(Row::jid));
                Ok(())
            })?;
        }
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
        let mut delay = 0.2f64;
        loop {
            let progress = q.progress(&jids)?;
            if tty {
                let width = 30usize;
                let done = progress.finished + progress.dead + progress.cancelled + progress.gone;
                let filled = if jids.is_empty() {
                    width
                } else {
                    done * width / jids.len()
                };
                let mut more = String::new();
                for (n, what) in [
                    (progress.waiting, "waiting for other jobs"),
                    (progress.holding, "holding"),
                    (progress.cancelled, "cancelled"),
                ] {
                    if n > 0 {
                        more.push_str(&format!(", {n} {what}"));
                    }
                }
                crate::note!(inline
                    "\r[{}{}] {done}/{} done, {} running, {} pending{more}",
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    jids.len(),
                    progress.running,
                    progress.pending,
                );
            }
            // Waiting jobs are not stuck: they run once the jobs they wait for end.
            if progress.pending + progress.running + progress.holding + progress.waiting == 0 {
                if tty {
                    crate::note!("");
                    if progress.failed > 0 || progress.dead > 0 || progress.cancelled > 0 {
                        crate::note!(
                            "rq: {} failed, {} dead, {} cancelled",
                            progress.failed,
                            progress.dead,
                            progress.cancelled
                        );
                    }
                }
                return Ok(
                    if progress.failed + progress.dead + progress.cancelled + progress.gone == 0 {
                        0
                    } else {
                        1
                    },
                );
            }
            std::thread::sleep(Duration::from_secs_f64(delay));
            delay = (delay * 1.5).min(2.0);
        }
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

/// `1000`, `64K`, `10M`, `1G`.
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
