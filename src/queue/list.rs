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
        self.store.write(|tx| {
            let Some(conn) = tx.sqlite() else {
                return crate::store::postgres::run_script(tx, sql);
            };
            let mut rows = Vec::new();
            use fallible_iterator::FallibleIterator;
            let mut batch = rusqlite::Batch::new(conn, sql);
            while let Some(mut stmt) = batch.next()? {
                let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
                let mut result = stmt.query([])?;
                while let Some(row) = result.next()? {
                    rows.push(crate::store::Cells::Sqlite(row).row(&names)?);
                }
            }
            Ok(rows)
        })
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
