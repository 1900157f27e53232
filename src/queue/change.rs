//! `update`, `delete`, `resubmit` and kill requests: changes to chosen jobs, each in one
//! write transaction that skips (and reports) the jobs it may not change.

use super::*;

/// Changes `update` makes.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub priority: Option<i64>,
    pub command: Option<String>,
    pub tag: Option<Option<String>>,
    pub hosts: Option<Option<String>>,
    pub restartable: Option<bool>,
    pub state: Option<State>,
    pub stdin: Option<PathBuf>,
    pub data: Option<PathBuf>,
}

impl Changes {
    /// The columns these changes set and their values, but for stdin and data (new
    /// files, named per job).
    fn columns(&self) -> Vec<(&'static str, SqlValue)> {
        let text = |t: &Option<String>| t.clone().map_or(SqlValue::Null, SqlValue::Text);
        [
            ("priority", self.priority.map(SqlValue::Integer)),
            ("command", self.command.clone().map(SqlValue::Text)),
            ("tag", self.tag.as_ref().map(text)),
            ("hosts", self.hosts.as_ref().map(text)),
            (
                "restartable",
                self.restartable.map(|r| SqlValue::Integer(r as i64)),
            ),
            (
                "state",
                self.state.map(|s| SqlValue::Text(s.as_str().into())),
            ),
        ]
        .into_iter()
        .filter_map(|(column, value)| Some((column, value?)))
        .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.priority.is_none()
            && self.command.is_none()
            && self.tag.is_none()
            && self.hosts.is_none()
            && self.restartable.is_none()
            && self.state.is_none()
            && self.stdin.is_none()
            && self.data.is_none()
    }
}

impl Queue {
    /// Delete the selected jobs that are not running; their files go after the commit.
    /// Jobs that others wait for are kept (and said) unless `force`: then those others
    /// are cancelled, or stop waiting if they only waited for an end (`after_any`).
    pub fn delete(
        &mut self,
        selection: &Selection,
        force: bool,
    ) -> Result<(Vec<Row>, Vec<Skipped>)> {
        let clause = selection.clause();
        let (rows, skipped) = self.store.write(|tx| {
            let not_running = clause.clone().and(Filter::State("running", false));
            let mut rows = select_rows(tx, &not_running)?;
            let deleting: std::collections::HashSet<i64> = rows.iter().map(Row::jid).collect();
            let mut waited_for = Vec::new();
            for row in &rows {
                let others: Vec<i64> = crate::deps::waiting_for(tx, row.jid())?
                    .into_iter()
                    .map(|(j, _)| j)
                    .filter(|j| !deleting.contains(j))
                    .collect();
                if !others.is_empty() {
                    waited_for.push((row.jid(), others));
                }
            }
            let mut kept = Vec::new();
            for (jid, others) in &waited_for {
                if force {
                    crate::deps::forget(tx, *jid)?;
                } else {
                    let shown: Vec<String> = others.iter().take(5).map(i64::to_string).collect();
                    let more = if others.len() > 5 { ", ..." } else { "" };
                    kept.push(Skipped {
                        jid: *jid,
                        why: format!(
                            "job{} {}{more} wait{} for it (delete those too, or use --force to cancel them)",
                            if others.len() == 1 { "" } else { "s" },
                            shown.join(", "),
                            if others.len() == 1 { "s" } else { "" },
                        ),
                    });
                }
            }
            // Named jobs not selected at all: running, or not in the queue (the ones kept
            // because others wait for them are said once, with that reason).
            let mut skipped =
                skipped_jids(tx, &selection.jids, &rows, "it is running (kill it first)")?;
            rows.retain(|r| !kept.iter().any(|k| k.jid == r.jid()));
            // Running jobs a state or `all` selected are not deleted either: said, not
            // passed over in silence.
            let running = clause.clone().and(Filter::State("running", true));
            for row in select_rows(tx, &running)? {
                if !selection.jids.contains(&row.jid()) {
                    skipped.push(Skipped {
                        jid: row.jid(),
                        why: "it is running (kill it first)".into(),
                    });
                }
            }
            let mut delete = tx.op(crate::store::ops::jobs::DELETE);
            for row in &rows {
                delete.execute([row.jid()])?;
            }
            skipped.extend(kept);
            Ok((rows, skipped))
        })?;
        if self.has_files() {
            for row in &rows {
                remove_files_of(&self.dir, row.jid(), &paths_of(row));
            }
        }
        if !rows.is_empty() {
            self.store.reclaim_space()?;
        }
        Ok((rows, skipped))
    }

    /// Change pending/holding jobs: new stdin/data stored first (under fresh names, or
    /// staged in the database), then one transaction changes the jobs still editable, then
    /// the files no job uses any more are removed.
    pub fn update(
        &mut self,
        selection: &Selection,
        changes: &Changes,
    ) -> Result<(Vec<Row>, Vec<Skipped>)> {
        let editable = selection.clause().and(Filter::AnyOf {
            states: vec!["pending".into(), "holding".into(), "waiting".into()],
            jids: Vec::new(),
            arrays: Vec::new(),
            tags: Vec::new(),
        });
        if let Some(path) = &changes.stdin {
            check_input(path, &self.dir, InputKind::Stdin)?;
        }
        if let Some(path) = &changes.data {
            check_input(path, &self.dir, InputKind::Data)?;
        }
        let in_db = self.in_database();
        let staged = format!("update-{:016x}", rand::random::<u64>());
        let new_files = self.store_new_inputs(&editable, changes, &staged)?;
        let outcome = self.store.write(|tx| {
            let before = select_rows(tx, &editable)?;
            let skipped = skipped_jids(
                tx,
                &selection.jids,
                &before,
                "only pending, waiting and holding jobs can be updated",
            )?;
            let old_files =
                change_jobs(tx, &before, changes, &new_files, in_db.then_some(&staged))?;
            let jids: Vec<i64> = before.iter().map(Row::jid).collect();
            let after = select_rows(tx, &Filter::jids(&jids))?;
            Ok((after, skipped, old_files))
        });
        if in_db && !new_files.is_empty() {
            // What no job took (all of it, if the update failed).
            let _ = self.files_tx(true, |tx| {
                crate::store::in_database::drop_staged(tx, &staged)
            });
        }
        let (rows, skipped, old_files) = match outcome {
            Ok(done) => done,
            Err(e) => {
                for (_, stdin, data) in &new_files {
                    for rel in stdin.iter().chain(data.iter()) {
                        self.remove_file(rel);
                    }
                }
                return Err(e);
            }
        };
        let updated: Vec<i64> = rows.iter().map(Row::jid).collect();
        for rel in old_files {
            self.remove_file(&rel);
        }
        // New files of jobs that stopped being editable meanwhile are not used.
        for (jid, stdin, data) in &new_files {
            if !updated.contains(jid) {
                for rel in stdin.iter().chain(data.iter()) {
                    self.remove_file(rel);
                }
            }
        }
        if changes.state == Some(State::Pending) {
            self.ring_doorbell();
        }
        Ok((rows, skipped))
    }

    /// Before an update's transaction: the new stdin and data of the jobs it may change,
    /// as files under fresh names (the old ones are removed after it commits), or for a
    /// queue keeping job files in its database, stored staged under `staged` (readers and
    /// feeders see only unstaged inputs) without the queue's lock: the transaction only
    /// swaps them in. Each job's new stdin and data names.
    fn store_new_inputs(
        &mut self,
        editable: &Filter,
        changes: &Changes,
        staged: &str,
    ) -> Result<Vec<NewInputs>> {
        let mut new_files = Vec::new();
        if changes.stdin.is_none() && changes.data.is_none() {
            return Ok(new_files);
        }
        let in_db = self.in_database();
        let targets = self.store.read(|tx| select_rows(tx, editable))?;
        let token = format!("{:08x}", rand::random::<u32>());
        if in_db {
            let data = changes.data.as_deref().map(db_data).transpose()?;
            let stdin = changes.stdin.as_deref();
            self.files_tx(true, |tx| {
                for row in &targets {
                    store_inputs(tx, row.jid(), staged, stdin, data.as_ref())?;
                }
                Ok(())
            })?;
        }
        for row in &targets {
            let jid = row.jid();
            if in_db {
                let name = |set: bool, sub: &str| set.then(|| format!("{sub}/{jid}"));
                new_files.push((
                    jid,
                    name(changes.stdin.is_some(), "stdin"),
                    name(changes.data.is_some(), "data"),
                ));
                continue;
            }
            let stdin = match &changes.stdin {
                Some(src) => {
                    let rel = format!("stdin/{jid}.{token}");
                    let dest = self.dir.join(&rel);
                    clear(&dest)?;
                    copy_file_new(src, &dest)?;
                    Some(rel)
                }
                None => None,
            };
            let data = match &changes.data {
                Some(src) => {
                    let rel = format!("data/{jid}.{token}");
                    copy_tree(src, &self.dir.join(&rel))?;
                    Some(rel)
                }
                None => None,
            };
            new_files.push((jid, stdin, data));
        }
        Ok(new_files)
    }

    /// Reset jobs that are not running to pending (or holding with `stage`), in place.
    pub fn resubmit(
        &mut self,
        selection: &Selection,
        opts: &SubmitOptions,
    ) -> Result<(Vec<Row>, Vec<Skipped>)> {
        let clause = selection.clause();
        let submitter = host::name();
        let state = if opts.stage {
            State::Holding
        } else {
            State::Pending
        };
        let in_db = self.in_database();
        let (rows, skipped, outputs) = self.store.write(|tx| {
            let not_running = clause.clone().and(Filter::State("running", false));
            let before = select_rows(tx, &not_running)?;
            let skipped = skipped_jids(tx, &selection.jids, &before, "it is running")?;
            let now = time::now();
            let mut reset = tx.op(crate::store::ops::jobs::RESUBMIT);
            let mut outputs = Vec::new();
            for row in &before {
                reset.execute(crate::params![
                    state.as_str(),
                    now,
                    submitter,
                    opts.priority,
                    opts.tag,
                    opts.hosts,
                    opts.restartable,
                    row.jid()
                ])?;
                crate::deps::restate(tx, row.jid())?;
                if in_db {
                    // The last run's output goes, as its files do after the commit.
                    tx.op(crate::store::ops::in_database::DROP_OUTPUTS)
                        .execute([row.jid()])?;
                }
                for field in ["stdout", "stderr"] {
                    outputs.extend(row.get(field).as_text().map(String::from));
                }
            }
            let jids: Vec<i64> = before.iter().map(Row::jid).collect();
            let after = select_rows(tx, &Filter::jids(&jids))?;
            Ok((after, skipped, outputs))
        })?;
        // The previous run's output would only mislead once the job is queued again.
        for rel in outputs {
            self.remove_file(&rel);
        }
        self.store.refresh_statistics(rows.len());
        self.ring_doorbell();
        Ok((rows, skipped))
    }

    /// Ask the feeders running these jobs to signal them.
    pub fn request_kill(&mut self, jids: &[i64], signal: &str) -> Result<(Vec<Row>, Vec<Skipped>)> {
        let json = serde_json::to_string(jids).unwrap_or_default();
        let (rows, skipped) = self.store.write(|tx| {
            tx.op(crate::store::ops::jobs::REQUEST_KILL)
                .execute(crate::params![signal, json])?;
            let rows = select_rows(tx, &Filter::jids(jids).and(Filter::State("running", true)))?;
            let skipped = skipped_jids(tx, jids, &rows, "only running jobs can be killed")?;
            Ok((rows, skipped))
        })?;
        self.ring_doorbell();
        Ok((rows, skipped))
    }
}

/// A job's new stdin and data names (`Queue::update`).
type NewInputs = (i64, Option<String>, Option<String>);

/// Inside an update's transaction: apply `changes` to the jobs `before` (new inputs
/// staged under `staged` swapped in, for a queue keeping them in its database); the files
/// they no longer use.
fn change_jobs(
    tx: &Tx<'_>,
    before: &[Row],
    changes: &Changes,
    new_files: &[NewInputs],
    staged: Option<&String>,
) -> Result<Vec<String>> {
    let sets = changes.columns();
    let mut old_files = Vec::new();
    for row in before {
        let jid = row.jid();
        let mut row_sets = sets.clone();
        if let Some((_, stdin, data)) = new_files.iter().find(|(j, _, _)| *j == jid) {
            if let Some(staged) = staged {
                crate::store::in_database::promote_inputs(
                    tx,
                    jid,
                    staged,
                    stdin.is_some(),
                    data.is_some(),
                )?;
            }
            if let Some(s) = stdin {
                row_sets.push(("stdin", SqlValue::Text(s.clone())));
                old_files.extend(row.get("stdin").as_text().map(String::from));
            }
            if let Some(d) = data {
                row_sets.push(("data", SqlValue::Text(d.clone())));
                old_files.extend(row.get("data").as_text().map(String::from));
            }
        }
        if row_sets.is_empty() {
            continue;
        }
        tx.update_job(jid, &row_sets)?;
        // Released (or set pending): it still waits for its jobs and its place.
        if changes.state == Some(State::Pending) {
            crate::deps::restate(tx, jid)?;
        }
    }
    Ok(old_files)
}
