//! What a PostgreSQL queue without a job-file directory keeps in its database instead of
//! files, so that hosts sharing no filesystem can feed it:
//!
//! - heartbeats: a row per host in `hosts`, stamped with the *database server's* clock
//!   (`clock_timestamp()`), so leases are judged on one clock, never a host's;
//! - start journals: a feeder's journal lines as rows of `starts` (its claim tokens before
//!   it spawns, the ends it saw), committed before a job is spawned, and its mark in
//!   `journals`; both tables unlogged, so a server crash empties them, and an unmarked
//!   journal proves nothing (`journal_read` gives None);
//! - job files: stdin and data stored at submit, stdout and stderr uploaded by the feeder
//!   while the job runs and when it ends, in chunks of `job_files` (up to `output_cap`
//!   bytes per stream, then a line saying how much was cut).
//!
//! A job's output rows carry the claim token of the run that wrote them: a copy of a job
//! that was taken over can write nothing (its upload checks the claim, holding the job's
//! row), and readers of a running job see only its current run's output.

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::store::ops::in_database as op;
use crate::store::postgres::Location;
use crate::store::{Dialect, Tx};

/// Job files are stored in rows of at most this many bytes.
pub const CHUNK: usize = 1 << 20;
/// The most output kept per stream of a run unless `configure output_cap=` says otherwise.
pub const DEFAULT_OUTPUT_CAP: u64 = 64 << 20;
/// A job's data when it was given as a directory: a tar archive of it.
pub const DATA_TAR: &str = "data.tar";

fn timestamp(seconds: f64) -> Result<Timestamp> {
    Timestamp::from_microsecond((seconds * 1e6).round() as i64)
        .map_err(|e| Error::Conflict(format!("the database server's clock: {e}")))
}

/// A heartbeat's own connection: the heartbeat thread must not wait for the main loop's
/// transactions, nor they for it. Reconnects after any error, at the next beat.
pub struct BeatConnection {
    location: Location,
    client: Option<::postgres::Client>,
}

impl BeatConnection {
    pub fn new(location: &Location) -> BeatConnection {
        BeatConnection {
            location: location.clone(),
            client: None,
        }
    }

    fn client(&mut self) -> Result<&mut ::postgres::Client> {
        if self.client.is_none() {
            let mut client = crate::store::postgres::connect_client(&self.location.url)?;
            client.batch_execute(&format!(
                "SET search_path TO \"{}\"; SET synchronous_commit = on",
                self.location.schema()
            ))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Beat: stamp this host's row with the server's time (publishing `info` too when
    /// `with_info`), and return that time.
    pub fn beat(&mut self, host: &str, info: &str, with_info: bool) -> Result<Timestamp> {
        let which = if with_info {
            op::BEAT_WITH_INFO
        } else {
            op::BEAT
        };
        let sql = crate::store::ops::sql(Dialect::Postgres, which);
        let outcome = self
            .client()
            .and_then(|c| Ok(c.query_one(sql, &[&host, &info])?));
        match outcome {
            Ok(row) => timestamp(row.get(0)),
            Err(e) => {
                self.client = None;
                Err(e)
            }
        }
    }
}

/// "Now" on the database server's clock.
pub fn server_now(tx: &Tx<'_>) -> Result<Timestamp> {
    let seconds: f64 = tx.op(op::SERVER_NOW).query_row([], |r| r.get(0))?;
    timestamp(seconds)
}

/// Seconds since `host` last beat, on the server's clock; None when it never did.
pub fn heartbeat_age(tx: &Tx<'_>, host: &str) -> Result<Option<f64>> {
    let mut stmt = tx.op(op::HEARTBEAT_AGE);
    let mut rows = stmt.query([host])?;
    Ok(match rows.next()? {
        Some(row) => Some(row.get(0)?),
        None => None,
    })
}

/// Every host that has beaten: its info and its heartbeat's age.
pub fn known_hosts(tx: &Tx<'_>) -> Result<Vec<(Value, Option<f64>)>> {
    let rows = tx
        .op(op::KNOWN_HOSTS)
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, f64>(2)?,
            ))
        })?
        .collect::<crate::error::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .map(|(host, info, age)| {
            let info =
                serde_json::from_str::<Value>(&info).unwrap_or_else(|_| json!({ "host": host }));
            (info, Some(age))
        })
        .collect())
}

/// Mark a feeder's journal and write `lines` (claim tokens, `E {json}` ends) in one
/// statement: its beginning, or after a server crash emptied the (unlogged) journals,
/// the whole of it again.
pub fn journal_begin(tx: &Tx<'_>, feeder: &str, lines: &[String]) -> Result<()> {
    // One line per element (tokens and JSON hold no newline).
    tx.op(op::JOURNAL_BEGIN)
        .execute([feeder.to_string(), lines.join("\n")])?;
    Ok(())
}

/// Append lines to a feeder's marked journal. False when it has no mark (a server crash
/// emptied the journals): nothing was written, `journal_begin` must write it whole.
pub fn journal_append(tx: &Tx<'_>, feeder: &str, lines: &[String]) -> Result<bool> {
    if lines.is_empty() {
        return Ok(true);
    }
    let written = tx
        .op(op::JOURNAL_APPEND)
        .execute([feeder.to_string(), lines.join("\n")])?;
    Ok(written > 0)
}

/// Whether a feeder's journal is marked (begun, and not emptied by a server crash since).
pub fn journal_marked(tx: &Tx<'_>, feeder: &str) -> Result<bool> {
    let n: i64 = tx
        .op(op::JOURNAL_MARKED)
        .query_row([feeder], |r| r.get(0))?;
    Ok(n > 0)
}

/// A feeder's journal: its lines, in order (`journal::Journal::from_lines` reads them);
/// None when it is not marked, which proves nothing (never begun, or emptied by a server
/// crash). The mark is read first: lines only grow while it stands.
pub fn journal_read(tx: &Tx<'_>, feeder: &str) -> Result<Option<Vec<String>>> {
    if !journal_marked(tx, feeder)? {
        return Ok(None);
    }
    let lines = tx
        .op(op::JOURNAL_READ)
        .query_map([feeder], |r| r.get::<_, String>(0))?
        .collect::<crate::error::Result<Vec<_>>>()?;
    Ok(Some(lines))
}

/// Empty a feeder's journal (every line in it is recorded in the queue); it stays marked.
pub fn journal_remove(tx: &Tx<'_>, feeder: &str) -> Result<()> {
    tx.op(op::JOURNAL_REMOVE).execute([feeder])?;
    Ok(())
}

/// Forget a feeder's journal, lines and mark (the feeder is gone, its claims settled).
pub fn journal_forget(tx: &Tx<'_>, feeder: &str) -> Result<()> {
    tx.op(op::JOURNAL_FORGET).execute([feeder])?;
    Ok(())
}

/// Journals a day old whose feeder holds no running job prove nothing anyone needs.
pub fn reap_old_journals(tx: &Tx<'_>) -> Result<usize> {
    tx.op(op::REAP_OLD_JOURNALS).execute([])
}

/// Store bytes as a job's stream, in chunks numbered from `first_seq`.
pub fn put_chunks(
    tx: &Tx<'_>,
    jid: i64,
    stream: &str,
    claim: &str,
    first_seq: i64,
    bytes: &[u8],
) -> Result<i64> {
    let mut stmt = tx.op(op::PUT_CHUNK);
    let mut seq = first_seq;
    // An empty file is one empty chunk: there, with nothing in it.
    let empty: &[u8] = &[];
    let chunks: Box<dyn Iterator<Item = &[u8]>> = if bytes.is_empty() {
        Box::new(std::iter::once(empty))
    } else {
        Box::new(bytes.chunks(CHUNK))
    };
    for chunk in chunks {
        stmt.execute(crate::params![jid, stream, claim, seq, chunk])?;
        seq += 1;
    }
    Ok(seq)
}

/// Replace what is stored as a job's stream under `claim` ('' for what readers see of
/// an input; a staging key for an update's new input) with a local file's bytes, read a
/// chunk at a time.
pub fn put_file(
    tx: &Tx<'_>,
    jid: i64,
    stream: &str,
    claim: &str,
    path: &std::path::Path,
) -> Result<()> {
    use std::io::Read;
    tx.op(op::DROP_STREAM)
        .execute(crate::params![jid, stream, claim])?;
    let context = || format!("cannot read {}", path.display());
    let mut file = std::fs::File::open(path).map_err(|e| Error::Io {
        context: context(),
        source: e,
    })?;
    let mut seq = 0;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            let n = file.read(&mut buf[filled..]).map_err(|e| Error::Io {
                context: context(),
                source: e,
            })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 && seq > 0 {
            break;
        }
        seq = put_chunks(tx, jid, stream, claim, seq, &buf[..filled])?;
        if filled < CHUNK {
            break;
        }
    }
    Ok(())
}

/// Call `sink` with each chunk of a job's stream, in order: for output, the current run's
/// while the job runs (nothing until it uploads some), else the last run's.
pub fn read_stream(
    tx: &Tx<'_>,
    jid: i64,
    stream: &str,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<bool> {
    // A chunk at a time: a stream can be as large as a job's data (1 GiB).
    let seqs: Vec<i64> = tx
        .op(op::VISIBLE_CHUNKS)
        .query_map(crate::params![jid, stream], |r| r.get(0))?
        .collect::<crate::error::Result<_>>()?;
    let mut one = tx.op(op::VISIBLE_CHUNK);
    for seq in &seqs {
        let mut rows = one.query(crate::params![jid, stream, seq])?;
        if let Some(row) = rows.next()? {
            sink(&row.get::<_, Vec<u8>>(0)?)?;
        }
    }
    Ok(!seqs.is_empty())
}

/// The size of a job's stream, None when nothing is stored.
pub fn stream_size(tx: &Tx<'_>, jid: i64, stream: &str) -> Result<Option<u64>> {
    let (chunks, size): (i64, i64) = tx
        .op(op::STREAM_SIZE)
        .query_row(crate::params![jid, stream], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((chunks > 0).then_some(size as u64))
}

/// Up to `limit` bytes of a job's stream from byte `offset` on (only the chunks that hold
/// them are read); None when nothing is stored.
pub fn read_range(
    tx: &Tx<'_>,
    jid: i64,
    stream: &str,
    offset: u64,
    limit: u64,
) -> Result<Option<Vec<u8>>> {
    let starts: Vec<(i64, i64)> = tx
        .op(op::CHUNK_STARTS)
        .query_map(crate::params![jid, stream], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::error::Result<_>>()?;
    if starts.is_empty() {
        return Ok(None);
    }
    let end = offset.saturating_add(limit);
    let mut out = Vec::new();
    let mut read = tx.op(op::VISIBLE_CHUNK);
    for (i, (seq, start)) in starts.iter().enumerate() {
        let start = *start as u64;
        let next = starts.get(i + 1).map_or(u64::MAX, |(_, s)| *s as u64);
        if next <= offset || start >= end {
            continue;
        }
        let mut rows = read.query(crate::params![jid, stream, seq])?;
        let Some(row) = rows.next()? else { continue };
        let bytes: Vec<u8> = row.get(0)?;
        let from = offset.saturating_sub(start).min(bytes.len() as u64) as usize;
        let to = (end.saturating_sub(start)).min(bytes.len() as u64) as usize;
        out.extend_from_slice(&bytes[from..to.max(from)]);
    }
    Ok(Some(out))
}

/// Upload output of a run: `bytes` appended to what the run stored so far (`first_seq`
/// onwards), only while the job is still ours (the job's row is held until commit, so a
/// takeover waits for the upload or the upload sees it). The first upload of a run
/// removes the previous run's output, where there may be some. False when the job is
/// not ours any more.
pub fn upload_output(tx: &Tx<'_>, run: &RunOutput<'_>) -> Result<bool> {
    let ours = tx
        .op(op::HOLD_IF_OURS)
        .query_map(crate::params![run.jid, run.claim], |r| r.get::<_, i64>(0))?
        .len()
        == 1;
    if !ours {
        return Ok(false);
    }
    for (stream, first_seq, bytes) in &run.streams {
        if *first_seq == 0 && run.earlier_output {
            tx.op(op::DROP_EARLIER_RUNS)
                .execute(crate::params![run.jid, stream, run.claim])?;
        }
        put_chunks(tx, run.jid, stream, run.claim, *first_seq, bytes)?;
    }
    Ok(true)
}

/// One run's output to upload (see `upload_output`).
pub struct RunOutput<'a> {
    pub jid: i64,
    pub claim: &'a str,
    /// An earlier run's output may be stored (unless its claim found none: see
    /// `stored_files`), to be removed with this run's first upload.
    pub earlier_output: bool,
    /// Per stream: its name, its first chunk's number, the bytes.
    pub streams: Vec<(&'a str, i64, &'a [u8])>,
}

/// Parts at most this long go into the one statement of `upload_outputs` (as hex text);
/// longer ones a chunk per statement.
const SMALL_PART: usize = 64 << 10;

/// `upload_output` for several runs, with a statement for all of them at each step (hold
/// the rows, clear earlier runs' output, store the small parts) instead of a few per
/// run: what a run's output costs the server is then mostly shared. Whether each run
/// was still ours, in order.
pub fn upload_outputs(tx: &Tx<'_>, runs: &[RunOutput<'_>]) -> Result<Vec<bool>> {
    if runs.len() < 2 {
        return runs.iter().map(|run| upload_output(tx, run)).collect();
    }
    let asked: Vec<serde_json::Value> = runs
        .iter()
        .map(|run| serde_json::json!({"jid": run.jid, "claim": run.claim}))
        .collect();
    let held: std::collections::HashSet<i64> = tx
        .op(op::HOLD_IF_OURS_MANY)
        .query_map(
            crate::params![serde_json::Value::Array(asked).to_string()],
            |r| r.get(0),
        )?
        .collect::<Result<_>>()?;
    let ours: Vec<&RunOutput<'_>> = runs.iter().filter(|r| held.contains(&r.jid)).collect();
    let drops: Vec<serde_json::Value> = ours
        .iter()
        .filter(|run| run.earlier_output)
        .flat_map(|run| {
            run.streams
                .iter()
                .filter(|(_, first_seq, _)| *first_seq == 0)
                .map(move |(stream, _, _)| {
                    serde_json::json!({"jid": run.jid, "stream": stream, "claim": run.claim})
                })
        })
        .collect();
    if !drops.is_empty() {
        tx.op(op::DROP_EARLIER_RUNS_MANY)
            .execute(crate::params![serde_json::Value::Array(drops).to_string()])?;
    }
    let mut small = Vec::new();
    for run in &ours {
        let (jid, claim) = (run.jid, run.claim);
        for (stream, first_seq, bytes) in &run.streams {
            if bytes.len() > SMALL_PART {
                put_chunks(tx, jid, stream, claim, *first_seq, bytes)?;
                continue;
            }
            // An empty file is one empty chunk, as `put_chunks` stores it.
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            small.push(serde_json::json!({
                "jid": jid, "stream": stream, "claim": claim, "seq": first_seq, "hex": hex,
            }));
        }
    }
    if !small.is_empty() {
        tx.op(op::PUT_CHUNKS)
            .execute(crate::params![serde_json::Value::Array(small).to_string()])?;
    }
    Ok(runs.iter().map(|r| held.contains(&r.jid)).collect())
}

/// Job files of jobs that no longer exist, and inputs staged by an update that never
/// committed, stored over ten minutes ago (a submit stores them before it inserts the
/// rows naming them, an update before it points the job at them): removed.
pub fn reap_orphans(tx: &Tx<'_>) -> Result<usize> {
    tx.op(op::REAP_ORPHANS).execute([])
}

/// What the database holds of a job just claimed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredFiles {
    /// Stdin or data: without, the job needs no fetch before it starts.
    pub inputs: bool,
    /// Output of an earlier run: without, the new run's first upload has nothing to
    /// remove.
    pub earlier_output: bool,
}

/// What is stored of each job just claimed, asked inside the claim's transaction. It
/// stays true while the claim is ours: a claimed job's inputs do not change (only jobs
/// not running can be updated), and only the claim's holder adds output (`upload_output`
/// holds the row and checks the claim; an upload of an earlier run that committed
/// before the claim is seen, the claim having waited for its row).
pub fn stored_files(
    tx: &Tx<'_>,
    jids: &[i64],
) -> Result<std::collections::HashMap<i64, StoredFiles>> {
    let mut stored: std::collections::HashMap<i64, StoredFiles> = jids
        .iter()
        .map(|jid| (*jid, StoredFiles::default()))
        .collect();
    if jids.is_empty() {
        return Ok(stored);
    }
    let list = serde_json::to_string(jids).unwrap_or_default();
    let found = tx.op(op::STORED_FILES).query_map([list], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            StoredFiles {
                inputs: r.get::<_, Option<bool>>(1)?.unwrap_or(false),
                earlier_output: r.get::<_, Option<bool>>(2)?.unwrap_or(false),
            },
        ))
    })?;
    for row in found {
        let (jid, files) = row?;
        stored.insert(jid, files);
    }
    Ok(stored)
}

/// Inside an update's transaction: the inputs it staged under `staged` (before the
/// transaction, without the queue's lock) replace the job's stdin and/or data.
pub fn promote_inputs(tx: &Tx<'_>, jid: i64, staged: &str, stdin: bool, data: bool) -> Result<()> {
    for (set, streams) in [(stdin, r#"["stdin"]"#), (data, r#"["data", "data.tar"]"#)] {
        if !set {
            continue;
        }
        tx.op(op::DROP_INPUTS)
            .execute(crate::params![jid, streams])?;
        tx.op(op::PROMOTE_STAGED)
            .execute(crate::params![jid, staged, streams])?;
    }
    Ok(())
}

/// Inputs staged under `staged` that no job took (an update that failed, or whose jobs
/// left the editable states meanwhile).
pub fn drop_staged(tx: &Tx<'_>, staged: &str) -> Result<usize> {
    tx.op(op::DROP_STAGED).execute([staged])
}

/// Remove the stored files of jobs `first..first + count` (a submit that failed).
pub fn remove_files(tx: &Tx<'_>, first: i64, count: usize) -> Result<()> {
    tx.op(op::REMOVE_FILES)
        .execute(crate::params![first, first + count as i64])?;
    Ok(())
}
