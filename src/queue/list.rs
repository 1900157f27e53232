//! `list`, `query` and `execute`: jobs read in chunks by jid (a read transaction per
//! chunk), rendered straight to the output.

use super::*;

impl Queue {
    /// Visit the selected jobs in jid order, a chunk per read transaction.
    pub fn list(
        &mut self,
        selection: &Selection,
        each: &mut dyn FnMut(Vec<Row>) -> Result<()>,
    ) -> Result<()> {
        self.scan(&selection.clause(), each)
    }

    /// Visit jobs matching a where-clause in jid order, a chunk per read transaction.
    pub fn scan(
        &mut self,
        clause: &Filter,
        each: &mut dyn FnMut(Vec<Row>) -> Result<()>,
    ) -> Result<()> {
        let mut after = 0i64;
        loop {
            let rows = self.chunk_after(clause, after)?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = last.jid();
            let done = rows.len() < CHUNK;
            each(rows)?;
            if done {
                return Ok(());
            }
        }
    }

    /// The next chunk of jobs matching a where-clause after jid `after`, in jid order, in
    /// a read transaction of its own (empty at the end).
    pub fn chunk_after(&mut self, clause: &Filter, after: i64) -> Result<Vec<Row>> {
        let page = [SqlValue::Integer(after), SqlValue::Integer(CHUNK as i64)];
        self.store.read(|tx| {
            let (mut stmt, params) = tx.scan(scan::PAGE, clause, &page);
            rows_of(&mut stmt, &params)
        })
    }

    /// Write the jobs matching a where-clause in jid order with `writer`, a chunk per read
    /// transaction; `emit` gets each chunk's bytes and jids after its transaction ended
    /// (so a slow reader of our output never holds the queue). Returns the row count.
    pub fn render(
        &mut self,
        clause: &Filter,
        writer: &RowWriter,
        emit: &mut ChunkSink<'_>,
    ) -> Result<usize> {
        self.render_after(clause, writer, 0, emit)
    }

    /// [`Queue::render`], continuing an output that has `already` rows.
    pub fn render_after(
        &mut self,
        clause: &Filter,
        writer: &RowWriter,
        already: usize,
        emit: &mut ChunkSink<'_>,
    ) -> Result<usize> {
        let mut after = 0i64;
        let mut count = already;
        let mut bytes = Vec::new();
        let mut jids = Vec::with_capacity(CHUNK);
        loop {
            let page = [SqlValue::Integer(after), SqlValue::Integer(CHUNK as i64)];
            self.store.read(|tx| {
                // A retried transaction starts its chunk again.
                bytes.clear();
                jids.clear();
                let (mut stmt, params) = tx.scan(scan::PAGE, clause, &page);
                stmt.query_each(crate::store::params_from_iter(params.iter()), |row| {
                    writer.write_sql_row(count + jids.len() == 0, &mut bytes, row)?;
                    jids.push(row.get::<_, i64>(0)?);
                    Ok(())
                })
            })?;
            count += jids.len();
            if jids.len() < CHUNK {
                writer.finish(count, &mut bytes);
            }
            emit(&bytes, &jids)?;
            match jids.last() {
                Some(last) if jids.len() == CHUNK => after = *last,
                _ => return Ok(count - already),
            }
        }
    }

    /// Run SQL under the write lock; returns the rows of the statements that return rows.
    pub fn execute(&mut self, sql: &str) -> Result<Vec<Row>> {
        self.store.write(|tx| tx.run_script(sql))
    }

    /// Run a read-only where-clause (simple or raw) and visit the matching jobs.
    pub fn query(
        &mut self,
        clause: &Filter,
        each: &mut dyn FnMut(Vec<Row>) -> Result<()>,
    ) -> Result<()> {
        self.scan(clause, each).map_err(|e| query_error(clause, e))
    }

    /// `query`, written with `writer` (see [`Queue::render`]).
    pub fn query_render(
        &mut self,
        clause: &Filter,
        writer: &RowWriter,
        emit: &mut ChunkSink<'_>,
    ) -> Result<usize> {
        self.render(clause, writer, emit)
            .map_err(|e| query_error(clause, e))
    }
}

/// How a job stands, for `state`: the fields that say whether it succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub jid: i64,
    pub state: String,
    pub exit_status: Option<i64>,
    pub signal: Option<String>,
}

impl Queue {
    /// How each chosen job stands, by jid, in one read transaction.
    pub fn outcomes(&mut self, clause: &Filter) -> Result<Vec<Outcome>> {
        self.store.read(|tx| {
            let (mut stmt, params) = tx.scan(scan::OUTCOMES, clause, &[]);
            let mut outcomes = Vec::new();
            stmt.query_each(crate::store::params_from_iter(params.iter()), |r| {
                outcomes.push(Outcome {
                    jid: r.get(0)?,
                    state: r.get(1)?,
                    exit_status: r.get(2)?,
                    signal: r.get(3)?,
                });
                Ok(())
            })
            .map_err(|e| query_error(clause, e))?;
            Ok(outcomes)
        })
    }

    /// What a selection names that the queue does not hold, as lines to say: each named
    /// array and tag without a job, and terms that choose none (with `jids`, also each
    /// named jid that is not in the queue). One read transaction.
    pub fn absent(&mut self, selection: &Selection, jids: bool) -> Result<Vec<String>> {
        self.store.read(|tx| {
            let jids_of = |filter: &Filter, op| -> Result<Vec<i64>> {
                let (mut stmt, params) = tx.scan(op, filter, &[]);
                let mut jids = Vec::new();
                stmt.query_each(crate::store::params_from_iter(params.iter()), |r| {
                    jids.push(r.get(0)?);
                    Ok(())
                })?;
                Ok(jids)
            };
            let any =
                |filter: Filter| -> Result<bool> { Ok(!jids_of(&filter, scan::ANY)?.is_empty()) };
            let mut absent = Vec::new();
            if jids && !selection.jids.is_empty() {
                let found: std::collections::HashSet<i64> =
                    jids_of(&Filter::jids(&selection.jids), scan::OUTCOMES)?
                        .into_iter()
                        .collect();
                let mut said = std::collections::HashSet::new();
                for jid in &selection.jids {
                    if !found.contains(jid) && said.insert(*jid) {
                        absent.push(format!("job {jid}: no such job"));
                    }
                }
            }
            for &array in &selection.arrays {
                let of_array = Selection {
                    arrays: vec![array],
                    ..Default::default()
                };
                if !any(of_array.clause())? {
                    absent.push(format!("array:{array}: no such array"));
                }
            }
            for tag in &selection.tags {
                let tagged = Selection {
                    tags: vec![tag.clone()],
                    ..Default::default()
                };
                if !any(tagged.clause())? {
                    absent.push(format!("tag:{tag}: no job has this tag"));
                }
            }
            if !selection.terms.is_empty() && !any(Filter::Terms(selection.terms.clone()))? {
                absent.push("no job meets the terms given".to_string());
            }
            Ok(absent)
        })
    }
}

impl Queue {
    /// The ended runs of the chosen jobs (their last runs), by jid, a page per read
    /// transaction.
    pub fn runs(&mut self, clause: &Filter, each: &mut dyn FnMut(crate::usage::Run)) -> Result<()> {
        let mut after = 0i64;
        loop {
            let page = [SqlValue::Integer(after), SqlValue::Integer(CHUNK as i64)];
            let runs = self.store.read(|tx| {
                let (mut stmt, params) = tx.scan(scan::USAGE_PAGE, clause, &page);
                let mut runs = Vec::new();
                stmt.query_each(crate::store::params_from_iter(params.iter()), |r| {
                    runs.push(crate::usage::Run {
                        jid: r.get(0)?,
                        tag: r.get(1)?,
                        array_id: r.get(2)?,
                        cpus: r.get(3)?,
                        mem: r.get(4)?,
                        elapsed: r.get(5)?,
                        cpu: r.get(6)?,
                        max_rss: r.get(7)?,
                    });
                    Ok(())
                })
                .map_err(|e| query_error(clause, e))?;
                Ok(runs)
            })?;
            let done = runs.len() < CHUNK;
            for run in runs {
                after = run.jid;
                each(run);
            }
            if done {
                return Ok(());
            }
        }
    }
}
