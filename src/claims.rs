//! The claim protocol's state changes, each meant to run inside one short write
//! transaction. Every write about a claimed job checks its claim token (`WHERE claim = ?`),
//! so a feeder can never overwrite a job that was taken over by someone else.

//!
//! The SQL is the store's (`store::ops::claims`, each store's in its own file); this
//! module decides which jobs fit and what each change means.

use crate::error::Result;
use crate::job::Row;
use crate::store::Tx;
use crate::store::ops::claims as op;

/// Per-tag limits (`configure limit.TAG=N`): how many more jobs of each limited tag may
/// start now, counting the ones running anywhere.
fn tag_room(tx: &Tx<'_>) -> Result<Vec<(String, i64)>> {
    let limits: Vec<(String, i64)> = tx
        .op(op::TAG_LIMITS)
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::error::Result<_>>()?;
    if !limits.is_empty() {
        tx.op(op::TAG_LIMITS_TURN).execute([])?;
    }
    let mut running = tx.op(op::TAG_RUNNING);
    let mut room = Vec::with_capacity(limits.len());
    for (tag, limit) in limits {
        let n: i64 = running.query_row([&tag], |r| r.get(0))?;
        room.push((tag, (limit - n).max(0)));
    }
    Ok(room)
}

/// What a host offers its jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    pub cpus: i64,
    /// Bytes.
    pub mem: i64,
    /// GPU device names (`0`, `1`, ... as CUDA numbers them).
    pub devices: Vec<String>,
}

impl From<&Capacity> for crate::store::fit::HostSize {
    fn from(c: &Capacity) -> Self {
        crate::store::fit::HostSize {
            cpus: c.cpus,
            mem: c.mem,
            gpus: c.devices.len() as i64,
        }
    }
}

/// What one claim may take.
#[derive(Debug, Clone)]
pub struct Room {
    /// Jobs, at most.
    pub jobs: usize,
    /// Of those, how many one-CPU jobs may be claimed ahead of free CPUs (short jobs are
    /// buffered to start as soon as a slot frees).
    pub ahead: usize,
    /// The host's whole capacity: jobs that need more are not for this host.
    pub total: Capacity,
    /// What the jobs this feeder runs or holds leave free.
    pub free: Capacity,
    /// Seconds after which the best job that does not fit yet stops jobs behind it from
    /// being claimed, so the host drains until it fits (`configure reserve_after=`).
    pub reserve_after: f64,
}

/// Claim the best jobs `host` may run (`store::ops::claims::CANDIDATES`) that fit the room: read the
/// candidates with their needs, take them in order while they fit (CPUs, memory, GPU
/// devices, each tag's room under its limit), and claim those in the same transaction.
/// GPU jobs are given their devices here (`gpu_ids`), so two jobs never share one.
pub fn claim(
    tx: &Tx<'_>,
    host: &str,
    feeder: &str,
    now: &str,
    room: &Room,
    max_attempts: i64,
) -> Result<Vec<Row>> {
    let token = format!("{:016x}", rand::random::<u64>());
    let mut tags = tag_room(tx)?;
    let full: Vec<&str> = tags
        .iter()
        .filter(|(_, n)| *n == 0)
        .map(|(t, _)| t.as_str())
        .collect();
    let full = serde_json::to_string(&full).unwrap_or_default();
    let now_ts = crate::time::parse(now);
    let mut pick = Pick {
        free: room.free.clone(),
        ahead: room.ahead,
        chosen: Vec::new(),
        devices: serde_json::Map::new(),
    };
    // First the best candidates that fit the host at all (some may not fit what is free
    // now: the first of those is the one a reservation is for) ...
    let scan = (room.jobs * 2).max(room.jobs + 16) as i64;
    let window = candidates(tx, host, now, scan, max_attempts, &full, &room.total)?;
    let seen = window.len() as i64;
    let mut blocked = false;
    for candidate in window {
        if pick.chosen.len() >= room.jobs {
            break;
        }
        if !pick.take(&candidate, &mut tags) {
            // The reservation: once the best job that does not fit has waited long
            // enough, nothing behind it is started here until it fits.
            let waited = match (now_ts, crate::time::parse(&candidate.submitted)) {
                (Some(now), Some(at)) => crate::time::seconds_between(at, now),
                _ => 0.0,
            };
            if waited >= room.reserve_after {
                return pick.claim(tx, host, feeder, now, &token);
            }
            blocked = true;
        }
    }
    // ... then, when jobs that do not fit yet filled that window, the best of those that
    // fit what is free now (GPU jobs waiting for a card must not idle the CPUs).
    if blocked && pick.chosen.len() < room.jobs && seen == scan {
        let now_free = Capacity {
            cpus: pick.free.cpus.max(i64::from(pick.ahead > 0)),
            mem: pick.free.mem,
            devices: pick.free.devices.clone(),
        };
        for candidate in candidates(tx, host, now, scan, max_attempts, &full, &now_free)? {
            if pick.chosen.len() >= room.jobs {
                break;
            }
            if !pick.chosen.contains(&candidate.jid) {
                pick.take(&candidate, &mut tags);
            }
        }
    }
    pick.claim(tx, host, feeder, now, &token)
}

/// A job a claim may take, with what it needs.
struct Candidate {
    jid: i64,
    tag: Option<String>,
    cpus: i64,
    mem: i64,
    gpus: i64,
    submitted: String,
}

/// The best `scan` candidates (`store::ops::claims::CANDIDATES`) that need no more than
/// `within`.
fn candidates(
    tx: &Tx<'_>,
    host: &str,
    now: &str,
    scan: i64,
    max_attempts: i64,
    full_tags: &str,
    within: &Capacity,
) -> Result<Vec<Candidate>> {
    let params = crate::params![
        host,
        now,
        scan,
        max_attempts,
        full_tags,
        within.cpus,
        within.mem,
        within.devices.len() as i64
    ];
    let found = tx
        .op(op::CANDIDATES)
        .query_map(params, |r| {
            Ok(Candidate {
                jid: r.get(0)?,
                tag: r.get(1)?,
                cpus: r.get(2)?,
                mem: r.get(3)?,
                gpus: r.get(4)?,
                submitted: r.get(5)?,
            })
        })?
        .collect::<crate::error::Result<_>>()?;
    Ok(found)
}

/// The jobs one claim takes, and what they leave free.
struct Pick {
    free: Capacity,
    ahead: usize,
    chosen: Vec<i64>,
    /// `j<jid>` -> the devices given to it.
    devices: serde_json::Map<String, serde_json::Value>,
}

impl Pick {
    /// Take `c` if it fits (or, a one-CPU job, may be claimed ahead) and its tag has room.
    /// False when it does not fit; true when taken or passed over for its tag.
    fn take(&mut self, c: &Candidate, tags: &mut [(String, i64)]) -> bool {
        let tag_left = c
            .tag
            .as_ref()
            .and_then(|t| tags.iter_mut().find(|(name, _)| name == t));
        if tag_left.as_ref().is_some_and(|(_, left)| *left == 0) {
            return true;
        }
        let fits = c.cpus <= self.free.cpus
            && c.mem <= self.free.mem
            && c.gpus as usize <= self.free.devices.len();
        // A one-CPU job may be claimed ahead of free CPUs, to start when a slot frees; its
        // memory is held from then on (the host's is never promised twice).
        let ahead_ok = c.cpus == 1 && c.gpus == 0 && c.mem <= self.free.mem && self.ahead > 0;
        if !(fits || ahead_ok) {
            return false;
        }
        if fits {
            self.free.cpus -= c.cpus;
        } else {
            self.ahead -= 1;
        }
        self.free.mem -= c.mem;
        if c.gpus > 0 {
            let ids: Vec<String> = self.free.devices.drain(..c.gpus as usize).collect();
            self.devices.insert(
                format!("j{}", c.jid),
                serde_json::Value::String(ids.join(",")),
            );
        }
        if let Some((_, left)) = tag_left {
            *left -= 1;
        }
        self.chosen.push(c.jid);
        true
    }

    /// Claim the chosen jobs, with their devices; in claim order.
    fn claim(
        self,
        tx: &Tx<'_>,
        host: &str,
        feeder: &str,
        now: &str,
        token: &str,
    ) -> Result<Vec<Row>> {
        let Pick {
            chosen, devices, ..
        } = self;
        if chosen.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = crate::job::FIELDS.iter().map(|s| s.to_string()).collect();
        let chosen = serde_json::to_string(&chosen).unwrap_or_default();
        let devices = serde_json::Value::Object(devices).to_string();
        let mut rows = tx
            .op(op::CLAIM)
            .query_map(
                crate::params![host, now, token, feeder, chosen, devices],
                |r| r.row(&names),
            )?
            .collect::<crate::error::Result<Vec<Row>>>()?;
        // Start them in claim order.
        rows.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.get("priority").as_int().unwrap_or(0)),
                r.get("submitted").to_plain(),
                r.jid(),
            )
        });
        Ok(rows)
    }
}

/// Whether `claim` would find a job for this host now: a read-only look, so that an idle
/// feeder's periodic poll does not take the write lock (on NFS a write transaction costs
/// several times the round trips of a read).
pub fn claimable(
    tx: &Tx<'_>,
    host: &str,
    now: &str,
    max_attempts: i64,
    total: &Capacity,
) -> Result<bool> {
    let full: Vec<String> = tag_room(tx)?
        .into_iter()
        .filter(|(_, n)| *n == 0)
        .map(|(t, _)| t)
        .collect();
    let params = crate::params![
        host,
        now,
        1i64,
        max_attempts,
        serde_json::to_string(&full).unwrap_or_default(),
        total.cpus,
        total.mem,
        total.devices.len() as i64
    ];
    tx.op(op::CLAIMABLE).query_row(params, |r| r.get(0))
}

/// Why this host claims nothing although jobs may be waiting: the queue is paused, or
/// this host is drained (`rq Q pause`, `rq Q drain HOST`).
pub fn held_back(tx: &Tx<'_>, host: &str) -> Result<Option<String>> {
    let found: Option<(String, String)> = tx
        .op(op::HELD_BACK)
        .query_map([host], |r| Ok((r.get(0)?, r.get(1)?)))?
        .next()
        .transpose()?;
    Ok(found.map(|(key, since)| {
        if key == "paused" {
            format!("the queue is paused ({since})")
        } else {
            format!("draining ({since})")
        }
    }))
}

/// What happened to a claimed job, as far as its feeder's journal proves.
#[derive(Debug)]
pub enum Fate {
    /// Claimed, never started: give it back.
    NeverStarted,
    /// Ended like this: record it.
    Ended(Box<End>),
    /// Started, end unknown: crashed.
    MayHaveRun,
}

/// How a run ended, as the feeder saw it (also a line of the start journal, so that a
/// successor can record it if the feeder dies first).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct End {
    pub jid: i64,
    pub claim: String,
    pub exit_status: Option<i32>,
    pub signal: Option<String>,
    pub elapsed: f64,
    pub timed_out: bool,
    /// Queue the job again (a failed run with retries left) not before this timestamp.
    pub retry_at: Option<String>,
    /// When the feeder saw it end (recorded as `finished`; ends are recorded in batches).
    pub ended_at: String,
    /// What the run used (none in journals written before rq recorded it).
    #[serde(default)]
    pub usage: crate::process::Usage,
    /// Why the feeder ended it, if it did (`memory: peak 412M above --mem 100M`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Record the end of a run; false when the claim was lost (the job was taken over).
pub fn finish(tx: &Tx<'_>, end: &End) -> Result<bool> {
    finish_started(tx, end, None)
}

/// A start not recorded yet (pid, process identity), recorded with its run's end: a short
/// job that began and ended between two transactions costs one write, not two.
pub type Started<'a> = Option<(u32, Option<&'a str>)>;

/// `finish`, recording the run's start too when `start` says it (see `Started`).
pub fn finish_started(tx: &Tx<'_>, end: &End, start: Started<'_>) -> Result<bool> {
    let now = &end.ended_at;
    let (pid, process) = (start.map(|s| s.0), start.and_then(|s| s.1));
    let (n, retry_at) = match &end.retry_at {
        None => (op::FINISH, None),
        Some(at) => (op::FINISH_RETRY, Some(at)),
    };
    let values = crate::params![
        now,
        end.elapsed,
        end.exit_status,
        end.signal,
        end.timed_out,
        end.jid,
        end.claim,
        end.usage.cpu_user,
        end.usage.cpu_system,
        end.usage.max_rss,
        end.reason,
        end.usage.read_bytes,
        end.usage.write_bytes,
        pid,
        process
    ];
    let n = match retry_at {
        None => tx.op(n).execute(values)?,
        Some(at) => {
            let mut with_retry: Vec<&dyn crate::store::ToSql> = values.to_vec();
            with_retry.push(at);
            tx.op(n).execute(with_retry.as_slice())?
        }
    };
    Ok(n > 0)
}

/// Record the ends of runs, each with its start where that was not recorded yet
/// (`finish_started` for each, or one statement where the store does better so:
/// `Capabilities::ends_in_one_statement`); the jids whose claim was lost.
pub fn finish_all(tx: &Tx<'_>, ends: &[(&End, Started<'_>)]) -> Result<Vec<i64>> {
    if ends.len() < 2 || !tx.capabilities().ends_in_one_statement {
        let mut lost = Vec::new();
        for &(end, start) in ends {
            if !finish_started(tx, end, start)? {
                lost.push(end.jid);
            }
        }
        return Ok(lost);
    }
    let list: Vec<serde_json::Value> = ends
        .iter()
        .map(|(e, start)| {
            serde_json::json!({
                "jid": e.jid,
                "claim": e.claim,
                "ended_at": e.ended_at,
                "elapsed": e.elapsed,
                "exit_status": e.exit_status,
                "signal": e.signal,
                "timed_out": i64::from(e.timed_out),
                "retry_at": e.retry_at,
                "cpu_user": e.usage.cpu_user,
                "cpu_system": e.usage.cpu_system,
                "max_rss": e.usage.max_rss,
                "reason": e.reason,
                "read_bytes": e.usage.read_bytes,
                "write_bytes": e.usage.write_bytes,
                "pid": start.map(|s| s.0),
                "process": start.and_then(|s| s.1),
            })
        })
        .collect();
    let jids: Vec<i64> = ends.iter().map(|(e, _)| e.jid).collect();
    not_recorded(tx, op::FINISH_MANY, list, &jids)
}

/// Run a one-statement batch (`FINISH_MANY`, `RECORD_STARTS`) of `list`, one item per
/// job of `jids`: the jids it did not record (their claims were lost).
fn not_recorded(
    tx: &Tx<'_>,
    batch: crate::store::ops::Op,
    list: Vec<serde_json::Value>,
    jids: &[i64],
) -> Result<Vec<i64>> {
    let list = serde_json::Value::Array(list).to_string();
    let recorded: std::collections::HashSet<i64> = tx
        .op(batch)
        .query_map(crate::params![list], |r| r.get(0))?
        .collect::<Result<_>>()?;
    Ok(jids
        .iter()
        .copied()
        .filter(|jid| !recorded.contains(jid))
        .collect())
}

/// A started job to record: jid, claim token, pid, process identity.
pub type StartRecord<'a> = (i64, &'a str, u32, Option<&'a str>);

/// Record started jobs' pids and process identities (`record_start` for each, or one
/// statement likewise); the jids whose claim was lost.
pub fn record_starts(tx: &Tx<'_>, starts: &[StartRecord<'_>]) -> Result<Vec<i64>> {
    if starts.len() < 2 || !tx.capabilities().ends_in_one_statement {
        let mut lost = Vec::new();
        for &(jid, claim, pid, identity) in starts {
            if !record_start(tx, jid, claim, pid, identity)? {
                lost.push(jid);
            }
        }
        return Ok(lost);
    }
    let list: Vec<serde_json::Value> = starts
        .iter()
        .map(|(jid, claim, pid, identity)| {
            serde_json::json!({"jid": jid, "claim": claim, "pid": pid, "process": identity})
        })
        .collect();
    let jids: Vec<i64> = starts.iter().map(|s| s.0).collect();
    not_recorded(tx, op::RECORD_STARTS, list, &jids)
}

/// Record a started job's pid and process identity; false when the claim was lost.
pub fn record_start(
    tx: &Tx<'_>,
    jid: i64,
    claim: &str,
    pid: u32,
    identity: Option<&str>,
) -> Result<bool> {
    let n = tx
        .op(op::RECORD_START)
        .execute(crate::params![pid, identity, jid, claim])?;
    Ok(n > 0)
}

/// A shell that could not be started counts as "command not found" (127).
pub fn failed_to_start(tx: &Tx<'_>, jid: i64, claim: &str, now: &str) -> Result<()> {
    tx.op(op::FAILED_TO_START)
        .execute(crate::params![now, jid, claim])?;
    Ok(())
}

/// A run that ended without a recorded exit (its feeder or host died, or it was
/// stopped): a restartable job with attempts left goes back to pending, any other becomes
/// dead. Only while `claim` still holds. Returns what happened, for the log.
pub fn mark_crashed(
    tx: &Tx<'_>,
    jid: i64,
    claim: &str,
    signal: Option<&str>,
    max_attempts: i64,
) -> Result<String> {
    let claim = (!claim.is_empty()).then_some(claim);
    let requeued =
        tx.op(op::REQUEUE_CRASHED)
            .execute(crate::params![signal, jid, claim, max_attempts])?;
    if requeued > 0 {
        return Ok("restartable: back to pending".into());
    }
    let dead =
        tx.op(op::MARK_DEAD)
            .execute(crate::params![crate::time::now(), signal, jid, claim])?;
    Ok(if dead > 0 {
        "marked dead".into()
    } else {
        "already taken over; left alone".into()
    })
}

/// Give back a claimed job that provably never started (its claim token is in no start
/// journal and no pid was recorded): it is pending again as if it had never been claimed,
/// with its attempt returned. Only while `claim` still holds; false otherwise.
pub fn release(
    tx: &Tx<'_>,
    jid: i64,
    claim: &str,
    reclaimed: Option<(&str, &str)>,
) -> Result<bool> {
    let (by, at) = reclaimed.unzip();
    let n = tx
        .op(op::RELEASE)
        .execute(crate::params![by, at, jid, claim])?;
    Ok(n > 0)
}

/// A running job as recovery sees it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub jid: i64,
    pub claim: String,
    pub feeder: Option<String>,
    pub pid_recorded: bool,
}

/// The running jobs of a host.
pub fn running_on(tx: &Tx<'_>, host: &str) -> Result<Vec<Claimed>> {
    let rows = tx
        .op(op::RUNNING_ON)
        .query_map([host], |r| {
            Ok(Claimed {
                jid: r.get(0)?,
                claim: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                feeder: r.get(2)?,
                pid_recorded: r.get(3)?,
            })
        })?
        .collect::<crate::error::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Settle a job of this host's own whose run we lost track of (its feeder died, or a
/// commit's outcome was unknown), as its feeder's start journal says: never started →
/// pending, attempt returned; a journaled end → recorded; else crashed (restartable →
/// pending, others dead). Only while `claim` still holds. Returns what happened.
pub fn settle(
    tx: &Tx<'_>,
    jid: i64,
    claim: &str,
    fate: &Fate,
    max_attempts: i64,
) -> Result<String> {
    Ok(match fate {
        Fate::NeverStarted if release(tx, jid, claim, None)? => {
            "never started: back to pending".to_string()
        }
        Fate::Ended(end) if finish(tx, end)? => {
            "ended as journaled: recorded from the journal".to_string()
        }
        _ => mark_crashed(tx, jid, claim, None, max_attempts)?,
    })
}

/// What reclaiming a dead host did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    /// Claimed but provably never started: pending again, attempt returned.
    pub released: usize,
    /// Ended, as its feeder's journal says: recorded.
    pub ended: usize,
    /// Restartable, may have run: pending again.
    pub requeued: usize,
    /// May have run: dead.
    pub dead: usize,
}

/// Take every running job of a dead host, as `fate` (its feeder's start journal) says:
/// jobs that never started go back to pending untouched, jobs whose end was journaled get
/// it recorded; of the rest, restartable ones with attempts left go back to pending, the
/// others become dead. All record who reclaimed them and when.
pub fn reclaim_host(
    tx: &Tx<'_>,
    dead_host: &str,
    reclaimer: &str,
    now: &str,
    max_attempts: i64,
    fate: &mut dyn FnMut(&Claimed) -> Fate,
) -> Result<Reclaimed> {
    let mut done = Reclaimed::default();
    for job in running_on(tx, dead_host)? {
        match fate(&job) {
            Fate::NeverStarted => {
                if release(tx, job.jid, &job.claim, Some((reclaimer, now)))? {
                    done.released += 1;
                }
            }
            Fate::Ended(end) => {
                if finish(tx, &end)? {
                    tx.op(op::NOTE_RECLAIMED)
                        .execute(crate::params![reclaimer, now, job.jid])?;
                    done.ended += 1;
                }
            }
            Fate::MayHaveRun => {}
        }
    }
    done.requeued =
        tx.op(op::REQUEUE_HOST)
            .execute(crate::params![reclaimer, now, dead_host, max_attempts])?;
    done.dead = tx
        .op(op::BURY_HOST)
        .execute(crate::params![reclaimer, now, dead_host])?;
    Ok(done)
}

/// A job's claim token and pending kill request, as the queue has them now.
#[derive(Debug, Clone)]
pub struct ClaimState {
    pub jid: i64,
    pub claim: Option<String>,
    pub kill_signal: Option<String>,
}

/// The jobs the queue says this feeder is running (or holds unstarted).
pub fn held_by(tx: &Tx<'_>, host: &str, feeder: &str) -> Result<Vec<i64>> {
    let rows = tx
        .op(op::HELD_BY)
        .query_map([host, feeder], |r| r.get(0))?
        .collect::<crate::error::Result<Vec<i64>>>()?;
    Ok(rows)
}

/// The claim tokens and kill requests of the given jobs.
pub fn current_claims(tx: &Tx<'_>, jids: &[i64]) -> Result<Vec<ClaimState>> {
    let rows = tx
        .op(op::CURRENT_CLAIMS)
        .query_map([serde_json::to_string(jids).unwrap_or_default()], |r| {
            Ok(ClaimState {
                jid: r.get(0)?,
                claim: r.get(1)?,
                kill_signal: r.get(2)?,
            })
        })?
        .collect::<crate::error::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Hosts that have running jobs.
pub fn busy_hosts(tx: &Tx<'_>) -> Result<Vec<String>> {
    let rows = tx
        .op(op::BUSY_HOSTS)
        .query_map([], |r| r.get(0))?
        .collect::<crate::error::Result<Vec<String>>>()?;
    Ok(rows)
}

/// The jobs the queue says `feeder` runs, every field, by jid.
pub fn held_by_feeder(tx: &Tx<'_>, feeder: &str) -> Result<Vec<Row>> {
    job_rows(tx, op::HELD_BY_FEEDER, &[feeder])
}

/// The running jobs of `host` claimed by feeders other than `feeder` (earlier feeders of
/// this host), every field, by jid.
pub fn orphans(tx: &Tx<'_>, host: &str, feeder: &str) -> Result<Vec<Row>> {
    job_rows(tx, op::ORPHANS, &[host, feeder])
}

fn job_rows(tx: &Tx<'_>, which: crate::store::ops::Op, params: &[&str]) -> Result<Vec<Row>> {
    let names: Vec<String> = crate::job::FIELDS.iter().map(|s| s.to_string()).collect();
    let values: Vec<&dyn crate::store::ToSql> = params.iter().map(|p| p as _).collect();
    let rows = tx
        .op(which)
        .query_map(values.as_slice(), |r| r.row(&names))?
        .collect::<crate::error::Result<Vec<Row>>>()?;
    Ok(rows)
}

/// The files the queue names for each of `jids` (stdin, stdout, stderr, data; those set).
pub fn job_files(tx: &Tx<'_>, jids: &[i64]) -> Result<Vec<(i64, Vec<String>)>> {
    let rows = tx
        .op(op::JOB_FILES)
        .query_map([serde_json::to_string(jids).unwrap_or_default()], |r| {
            let files = (1..=4)
                .filter_map(|i| r.get::<_, Option<String>>(i).ok().flatten())
                .collect();
            Ok((r.get(0)?, files))
        })?
        .collect::<crate::error::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The feeders that have running jobs.
pub fn running_feeders(tx: &Tx<'_>) -> Result<Vec<String>> {
    let rows = tx
        .op(op::RUNNING_FEEDERS)
        .query_map([], |r| r.get(0))?
        .collect::<crate::error::Result<Vec<String>>>()?;
    Ok(rows)
}
