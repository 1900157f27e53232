//! Job files of a queue that keeps them in its database (`in_database`): before a job
//! starts, its stdin and data are fetched into this host's local job-file directory
//! (`Config::local_files`, laid out like a queue's); its stdout and stderr are written
//! there and uploaded while it runs (every `UPLOAD_EVERY`, what was added, in a short
//! transaction of its own) and when it ends (in the transaction that records its end), up
//! to the queue's `output_cap` per stream, then a line saying how much was cut. Every
//! upload checks the claim; output is read from the local files before any transaction.

use super::*;
use crate::store::in_database::RunOutput;

/// Running jobs' new output is uploaded this often (so `tail -f` follows it).
pub(super) const UPLOAD_EVERY: Duration = Duration::from_secs(2);

/// What of a run's output is in the database so far.
#[derive(Debug)]
pub(super) struct Upload {
    claim: String,
    /// An earlier run's output may be stored, to be removed with the first upload.
    earlier_output: bool,
    /// Per stream (stdout, stderr): bytes of the local file stored, chunks stored, and
    /// whether the cut line was stored.
    streams: [(u64, i64, bool); 2],
}

const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// Output of a run read for an upload.
pub(super) struct Output {
    jid: i64,
    claim: String,
    earlier_output: bool,
    parts: Vec<Part>,
}

/// Output of one stream read for an upload, and what is stored once it commits.
struct Part {
    stream: usize,
    seq: i64,
    bytes: Vec<u8>,
    sent_after: u64,
    cut: bool,
}

impl Upload {
    pub(super) fn new(claim: &str, earlier_output: bool) -> Upload {
        Upload {
            claim: claim.to_string(),
            earlier_output,
            streams: [(0, 0, false); 2],
        }
    }
}

/// Read up to `limit` bytes of `path` from `offset`.
fn read_from(path: &Path, offset: u64, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The local job-file directory of a queue that keeps job files in its database: what
/// the claims found stored of the jobs this feeder holds, and what of each run's output
/// is uploaded so far.
pub(super) struct LocalFiles {
    dir: PathBuf,
    /// What the claim found stored of each job buffered or running (until its first
    /// upload). Without inputs stored, nothing is fetched before it starts; without an
    /// earlier run's output, its first upload removes none.
    claimed: HashMap<i64, StoredFiles>,
    /// What of each run's output is in the database so far.
    uploads: HashMap<i64, Upload>,
    last_upload: Instant,
}

impl LocalFiles {
    pub(super) fn new(dir: PathBuf) -> LocalFiles {
        LocalFiles {
            dir,
            claimed: HashMap::new(),
            uploads: HashMap::new(),
            last_upload: Instant::now(),
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh directory: whatever an earlier feeder of this host left there belongs to
    /// runs that are settled by now.
    pub(super) fn prepare(&self) -> Result<()> {
        queue::remove_path(&self.dir);
        for sub in ["bin", "stdin", "stdout", "stderr", "data"] {
            let path = self.dir.join(sub);
            std::fs::create_dir_all(&path)
                .context(|| format!("cannot create {}", path.display()))?;
        }
        Ok(())
    }

    /// What a claim found stored of the jobs it claimed.
    pub(super) fn claimed(&mut self, stored: HashMap<i64, StoredFiles>) {
        self.claimed.extend(stored);
    }

    /// Forget what claims found of jobs no longer ours (`ours`: buffered or running).
    pub(super) fn keep_claimed(&mut self, ours: &HashSet<i64>) {
        self.claimed.retain(|jid, _| ours.contains(jid));
    }

    /// Fetch a job's stdin and data from the database (outside any write transaction;
    /// one read transaction, none for a job its claim found without either).
    pub(super) fn fetch_inputs(&self, queue: &mut Queue, job: &Row) -> Result<()> {
        let jid = job.jid();
        let streams: Vec<&str> = ["stdin", "data"]
            .into_iter()
            .filter(|s| job.get(s).as_text().is_some())
            .collect();
        for sub in ["stdin", "data"] {
            queue::remove_path(&self.dir.join(sub).join(jid.to_string()));
        }
        let inputs_stored = self.claimed.get(&jid).is_none_or(|f| f.inputs);
        if !streams.is_empty() && inputs_stored {
            queue.fetch_job_files(jid, &streams, &self.dir)?;
        }
        Ok(())
    }

    /// Whether running jobs' output is due for an upload (every `UPLOAD_EVERY`).
    pub(super) fn upload_due(&mut self) -> bool {
        let due = self.last_upload.elapsed() >= UPLOAD_EVERY;
        if due {
            self.last_upload = Instant::now();
        }
        due
    }

    /// Runs no longer followed (taken over, killed by the watchdog): their local files go.
    pub(super) fn keep_following(&mut self, following: &HashSet<i64>) {
        let gone: Vec<i64> = (self.uploads.keys())
            .filter(|jid| !following.contains(jid))
            .copied()
            .collect();
        self.forget_runs(gone.into_iter());
    }

    /// What `jobs` (jid, claim) wrote that is not in the database yet, read from the local
    /// files (outside any transaction), at most `cap` bytes a stream; with `last` (the
    /// runs ended), the cut line where output went past the cap. Nothing is noted as
    /// stored yet (`note_stored`).
    pub(super) fn read_outputs(
        &mut self,
        jobs: &[(i64, String)],
        last: bool,
        cap: u64,
    ) -> Vec<Output> {
        let dir = self.dir.clone();
        let mut batch = Vec::new();
        for (jid, claim) in jobs {
            if self.uploads.get(jid).is_none_or(|u| u.claim != *claim) {
                // The run's first upload: it clears an earlier run's output, unless its
                // claim found none.
                let earlier_output = self.claimed.remove(jid).is_none_or(|f| f.earlier_output);
                self.uploads
                    .insert(*jid, Upload::new(claim, earlier_output));
            }
            let upload = self.uploads.get_mut(jid).expect("inserted above");
            let mut parts = Vec::new();
            for (i, name) in STREAMS.iter().enumerate() {
                let path = dir.join(name).join(jid.to_string());
                let size = std::fs::symlink_metadata(&path).map_or(0, |m| m.len());
                let (sent, seq, cut) = upload.streams[i];
                let kept = size.min(cap);
                let mut bytes = if sent < kept {
                    read_from(&path, sent, kept - sent).unwrap_or_default()
                } else {
                    Vec::new()
                };
                let sent_after = sent + bytes.len() as u64;
                let cut_now = last && size > cap && !cut;
                if cut_now {
                    // On a line of its own.
                    let mid_line =
                        kept > 0 && read_from(&path, kept - 1, 1).is_ok_and(|last| last != b"\n");
                    if mid_line {
                        bytes.push(b'\n');
                    }
                    bytes.extend_from_slice(
                        format!(
                            "rq: output cut here: the job wrote {size} bytes to {name}; the queue keeps {cap} (rq QUEUE configure output_cap=SIZE)\n"
                        )
                        .as_bytes(),
                    );
                }
                // The first upload of a run always happens: it clears the last run's.
                if !bytes.is_empty() || seq == 0 {
                    parts.push(Part {
                        stream: i,
                        seq,
                        bytes,
                        sent_after,
                        cut: cut || cut_now,
                    });
                }
            }
            if !parts.is_empty() {
                batch.push(Output {
                    jid: *jid,
                    claim: claim.clone(),
                    earlier_output: upload.earlier_output,
                    parts,
                });
            }
        }
        batch
    }

    /// After the transaction that stored `batch` committed: what each run has stored
    /// (`ours`: the run still held its claim).
    pub(super) fn note_stored(&mut self, batch: &[Output], ours: &[bool]) {
        for (output, ours) in batch.iter().zip(ours) {
            let Some(upload) = self.uploads.get_mut(&output.jid).filter(|_| *ours) else {
                continue;
            };
            for p in &output.parts {
                let chunks = p.bytes.len().div_ceil(crate::store::in_database::CHUNK);
                upload.streams[p.stream] = (p.sent_after, p.seq + chunks.max(1) as i64, p.cut);
            }
        }
    }

    /// Runs that ended: their local copies of job files go.
    pub(super) fn forget_runs(&mut self, jids: impl Iterator<Item = i64>) {
        for jid in jids {
            self.uploads.remove(&jid);
            for sub in ["stdout", "stderr", "stdin", "data"] {
                queue::remove_path(&self.dir.join(sub).join(jid.to_string()));
            }
        }
    }
}

impl Feeder {
    /// Where this host's jobs' files are: the queue's directory, or for a queue keeping
    /// them in its database, the local job-file directory.
    pub(super) fn job_dir(&self) -> PathBuf {
        match &self.files {
            Some(files) => files.dir().to_path_buf(),
            None => self.queue.dir().to_path_buf(),
        }
    }

    /// Fetch a job's stdin and data into the local job-file directory, where the queue
    /// keeps them in its database.
    pub(super) fn fetch_inputs(&mut self, job: &Row) -> Result<()> {
        match &self.files {
            Some(files) => files.fetch_inputs(&mut self.queue, job),
            None => Ok(()),
        }
    }

    /// Every `UPLOAD_EVERY`: upload what running jobs wrote since the last upload, and
    /// drop the local files of runs this feeder no longer follows.
    pub(super) fn upload_running(&mut self) {
        if !self.files.as_mut().is_some_and(LocalFiles::upload_due) {
            return;
        }
        let jobs: Vec<(i64, String)> = (self.slots.running.iter())
            .filter(|j| !j.fenced)
            .map(|j| (j.jid, j.claim.clone()))
            .collect();
        self.upload_outputs(&jobs, false);
        let following: HashSet<i64> = self.slots.running.iter().map(|j| j.jid).collect();
        if let Some(files) = &mut self.files {
            files.keep_following(&following);
        }
    }

    /// Upload the output of `jobs` (jid, claim) that is not in the database yet, in one
    /// short transaction; with `last`, the runs have ended: the cut line is added where
    /// output went past the cap, and their local files are removed once stored.
    pub(super) fn upload_outputs(&mut self, jobs: &[(i64, String)], last: bool) {
        let cap = self.settings.output_cap;
        let Some(files) = &mut self.files else {
            return;
        };
        let batch = files.read_outputs(jobs, last, cap);
        if !batch.is_empty() {
            match self
                .queue
                .store()
                .write_shared(|tx| store_outputs(tx, &batch))
            {
                Ok(ours) => files.note_stored(&batch, &ours),
                Err(e) => {
                    // Nothing was stored: the same bytes go with the next upload.
                    let jids: Vec<i64> = batch.iter().map(|o| o.jid).collect();
                    self.warn(&format!(
                        "could not store the output of jobs {jids:?} in the database: {e}"
                    ));
                    return;
                }
            }
        }
        if last {
            files.forget_runs(jobs.iter().map(|(jid, _)| *jid));
        }
    }

    /// Runs whose end was recorded: their local copies of job files go.
    pub(super) fn forget_runs(&mut self, jids: impl Iterator<Item = i64>) {
        if let Some(files) = &mut self.files {
            files.forget_runs(jids);
        }
    }
}

/// Store output read by `read_outputs`, inside the caller's transaction: for each run,
/// whether it still held its claim (else nothing of it was written).
pub(super) fn store_outputs(tx: &Tx<'_>, batch: &[Output]) -> Result<Vec<bool>> {
    let runs: Vec<RunOutput<'_>> = batch
        .iter()
        .map(|output| RunOutput {
            jid: output.jid,
            claim: &output.claim,
            earlier_output: output.earlier_output,
            streams: output
                .parts
                .iter()
                .map(|p| (STREAMS[p.stream], p.seq, p.bytes.as_slice()))
                .collect(),
        })
        .collect();
    crate::store::in_database::upload_outputs(tx, &runs)
}
