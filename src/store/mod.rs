//! The store boundary: where a queue keeps its jobs. Two stores keep the same tables and
//! the same protocol: a SQLite database in the queue directory (`sqlite`, the default, for
//! a shared filesystem) and a PostgreSQL database (`postgres`, for clusters that outgrow
//! one file server or have none).
//!
//! The queue, the feeder and every mode run named operations (`ops`) on a `Tx`, one short
//! transaction of either store, each store with its own SQL; jobs chosen by a filter go
//! through `Tx::scan` (`filter`). The few statements written once for both stores use
//! `?`/`?N` placeholders, numbered `$N` for PostgreSQL (nothing else is rewritten). Values
//! cross the boundary in SQLite's value model (null, integer, real, text, blob), which both
//! stores map their columns to. What each store must guarantee (ARCHITECTURE.md):
//! a write transaction is serializable with every other write that touches the same jobs,
//! commits or rolls back as a whole, is retried as a whole only when it surely did not
//! commit, and an error during COMMIT is reported as "outcome unknown".

pub mod filter;
pub mod fit;
pub mod in_database;
pub mod lock_recovery;
pub mod ops;
pub mod pages;
pub mod pg_sql;
pub mod postgres;
pub mod repair;
pub mod settle;
pub mod sqlite;
pub mod value;

pub use filter::{Filter, Term, TermOp};
pub use sqlite::{
    APPLICATION_ID, Access, MIGRATIONS, SCHEMA_SQL, SCHEMA_VERSION, Store as SqliteStore,
    create_database, damage_mark, schema_file_text,
};
pub use value::{FromSql, FromSqlError, SqlValue, ToSql, ValueRef};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// A queue's store: its SQLite database, or its PostgreSQL database.
pub enum Store {
    Sqlite(Box<SqliteStore>),
    Postgres(Box<postgres::PgStore>),
}

/// Flags that, once set, stop a process from doing more dependency work than its own
/// transactions carry (a feeder's TERM and QUIT): the rest stays on the queue's work list
/// for feeders' ticks to finish.
static DEP_WORK_STOP: std::sync::Mutex<Vec<Arc<AtomicBool>>> = std::sync::Mutex::new(Vec::new());

/// Stop carrying on dependency work once `flag` is set (see `DEP_WORK_STOP`).
pub fn stop_dep_work_when(flag: Arc<AtomicBool>) {
    DEP_WORK_STOP
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(flag);
}

fn dep_work_stopped() -> bool {
    DEP_WORK_STOP
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|flag| flag.load(Ordering::Relaxed))
}

impl Store {
    /// Run `body` in one write transaction and commit it; transient failures rerun the
    /// whole body (so it must do nothing but SQL); an error during COMMIT is reported as
    /// `CommitUnknown`.
    pub fn write<T>(&mut self, body: impl FnMut(&Tx<'_>) -> Result<T>) -> Result<T> {
        let value = match self {
            Store::Sqlite(store) => store.write(body),
            Store::Postgres(store) => store.write(body),
        }?;
        self.finish_dep_work();
        Ok(value)
    }

    /// Like `write`, but `None` when it would have to wait for another process now.
    pub fn try_write<T>(&mut self, body: impl FnMut(&Tx<'_>) -> Result<T>) -> Result<Option<T>> {
        let value = match self {
            Store::Sqlite(store) => store.try_write(body),
            // Claims skip locked rows instead of waiting: nothing to wait for.
            Store::Postgres(store) => store.write(body).map(Some),
        }?;
        self.finish_dep_work();
        Ok(value)
    }

    /// The dependency work a write started (a long chain's cascade, a batch per
    /// transaction: `deps::settle`) is carried on at once by this process, in transactions
    /// of its own. It is on the queue's work list, so stopping early (a feeder told to
    /// stop, an error) loses nothing: a feeder's tick goes on (`carry_on_dep_work`).
    fn finish_dep_work(&mut self) {
        if !self.dep_work_left() {
            return;
        }
        self.set_carry_on(true);
        // SQLite's lock is polled, not queued: a writer waiting for it (backing off to
        // up to 75 ms between tries) could wait out the whole cascade. After every 0.3 s
        // of batches, the lock is left free for longer than that, so that it gets its turn.
        let polled = matches!(self, Store::Sqlite(_));
        let mut held = std::time::Duration::ZERO;
        while !dep_work_stopped() {
            let started = std::time::Instant::now();
            let step = match self {
                Store::Sqlite(store) => store.write(|_| Ok(())),
                Store::Postgres(store) => store.write(|_| Ok(())),
            };
            if let Err(e) = step {
                crate::note!("rq: dependency changes are left for a feeder to finish: {e}");
                break;
            }
            if !self.dep_work_left() {
                break;
            }
            held += started.elapsed();
            if polled && held >= std::time::Duration::from_millis(300) {
                std::thread::sleep(std::time::Duration::from_millis(80));
                held = std::time::Duration::ZERO;
            }
        }
        self.set_carry_on(false);
    }

    /// Do some of the dependency work others left on the queue's work list (a writer
    /// that stopped between batches, or one still at it): a feeder's tick, when its read
    /// saw some. Batches for about half a second at most, so that the feeder's own jobs
    /// never wait long for a cascade it did not start; the next tick goes on. Whether
    /// work is left.
    pub fn carry_on_dep_work(&mut self) -> Result<bool> {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(500);
        self.set_carry_on(true);
        let mut done = Ok(true);
        while std::time::Instant::now() < until && !dep_work_stopped() {
            let step = match self {
                Store::Sqlite(store) => store.write(|_| Ok(())),
                Store::Postgres(store) => store.write(|_| Ok(())),
            };
            done = step.map(|()| self.dep_work_left());
            if !matches!(done, Ok(true)) {
                break;
            }
        }
        self.set_carry_on(false);
        self.dep_work_left();
        done
    }

    fn set_carry_on(&mut self, on: bool) {
        match self {
            Store::Sqlite(store) => store.carry_on_dep_work = on,
            Store::Postgres(store) => store.carry_on_dep_work = on,
        }
    }

    fn dep_work_left(&mut self) -> bool {
        match self {
            Store::Sqlite(store) => std::mem::take(&mut store.dep_work_left),
            Store::Postgres(store) => std::mem::take(&mut store.dep_work_left),
        }
    }

    /// A write that other feeders' claims, starts and ends may run beside (`write` on
    /// SQLite, where every write excludes the others). On PostgreSQL the queue's
    /// advisory lock is taken shared instead of exclusive: for the feeder's own state
    /// changes, which claim rows with FOR UPDATE SKIP LOCKED and change them only under
    /// their claim token, so they need no other exclusion; every other write excludes
    /// them (a `delete` must not meet a claim half-way).
    pub fn write_shared<T>(&mut self, body: impl FnMut(&Tx<'_>) -> Result<T>) -> Result<T> {
        let value = match self {
            Store::Sqlite(store) => store.write(body),
            Store::Postgres(store) => store.write_shared(body),
        }?;
        self.finish_dep_work();
        Ok(value)
    }

    /// `try_write` for `write_shared` bodies.
    pub fn try_write_shared<T>(
        &mut self,
        body: impl FnMut(&Tx<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let value = match self {
            Store::Sqlite(store) => store.try_write(body),
            Store::Postgres(store) => store.write_shared(body).map(Some),
        }?;
        self.finish_dep_work();
        Ok(value)
    }

    /// Run `body` in one read transaction (one consistent snapshot). Print nothing inside.
    pub fn read<T>(&mut self, body: impl FnMut(&Tx<'_>) -> Result<T>) -> Result<T> {
        match self {
            Store::Sqlite(store) => store.read(body),
            Store::Postgres(store) => store.read(body),
        }
    }

    /// Hold the queue lock while `body` runs (`rq Q lock`).
    pub fn with_lock<T>(&mut self, exclusive: bool, body: impl FnMut() -> Result<T>) -> Result<T> {
        match self {
            Store::Sqlite(store) => store.with_lock(exclusive, body),
            Store::Postgres(store) => store.with_lock(exclusive, body),
        }
    }

    /// Give the space of deleted rows back (see each store); pages (SQLite) or 0.
    pub fn reclaim_space(&mut self) -> Result<i64> {
        match self {
            Store::Sqlite(store) => store.reclaim_space(),
            Store::Postgres(_) => Ok(0),
        }
    }

    /// Housekeeping a feeder does once a heartbeat: on PostgreSQL, fold the per-statement
    /// count deltas into the counts (so `status` sums a few rows, not a day's deltas).
    /// Nothing on SQLite, whose counts are kept in place.
    pub fn maintain(&mut self) -> Result<()> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(store) => {
                store.write_shared(|tx| tx.query_row("SELECT 1 FROM fold_counts()", [], |_| Ok(())))
            }
        }
    }

    /// Keep trying while the database server cannot be reached, however long (feeders:
    /// the ends of their jobs must be recorded once it is back).
    pub fn keep_trying(&mut self) {
        if let Store::Postgres(store) = self {
            store.give_up_after = None;
        }
    }

    /// PostgreSQL: the server ends this connection's session when it sits inside a
    /// transaction longer than `limit` (feeders: their lease), so that a frozen feeder
    /// cannot hold its row locks and block others' reclaims. SQLite: nothing to do (on
    /// NFS the server's lock lease does it).
    pub fn end_stalled_transactions_after(&mut self, limit: std::time::Duration) -> Result<()> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(store) => store.end_stalled_transactions_after(limit),
        }
    }

    /// Where the queue is kept when a database server keeps it (its feeders may then beat
    /// and journal in the database, and listen for its notifications); None for a queue
    /// directory's database.
    pub fn server_location(&self) -> Option<&postgres::Location> {
        match self {
            Store::Postgres(store) => Some(&store.location),
            Store::Sqlite(_) => None,
        }
    }

    /// A thread that hears the queue's notifications (new work), where the store sends
    /// them; None where feeders watch the doorbell file alone.
    pub fn listener(&self) -> Option<postgres::Listener> {
        self.server_location().map(postgres::Listener::start)
    }

    /// Tell listening feeders that there is new work (nothing where there are none).
    pub fn notify(&mut self) {
        if let Store::Postgres(store) = self {
            store.notify();
        }
    }

    /// After a commit that made `jobs` jobs pending (new, resubmitted, imported): where
    /// the store plans its queries from statistics (PostgreSQL), bring them up to date
    /// when those jobs change them much.
    pub fn refresh_statistics(&mut self, jobs: usize) {
        if let Store::Postgres(store) = self {
            store.refresh_statistics(jobs);
        }
    }

    /// A transaction on rows kept in the database that no other writer touches (job
    /// files, a feeder's start journal): on PostgreSQL without the queue's lock, so a
    /// long copy holds no writer back (`PgStore::files`); elsewhere an ordinary read or
    /// shared write.
    pub fn files_tx<T>(
        &mut self,
        write: bool,
        body: impl FnMut(&Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        match self {
            Store::Postgres(store) => store.files(write, body),
            Store::Sqlite(_) if write => self.write_shared(body),
            Store::Sqlite(_) => self.read(body),
        }
    }

    /// One statement on rows no other writer touches, made durable before this returns:
    /// on PostgreSQL it commits on its own, without a transaction around it (a start
    /// journal's lines, a round trip each, two fewer than `files_tx`); on SQLite as
    /// `files_tx` writes.
    pub fn single_write<T>(&mut self, body: impl FnMut(&Tx<'_>) -> Result<T>) -> Result<T> {
        match self {
            Store::Postgres(store) => store.autocommit(body),
            Store::Sqlite(_) => self.write_shared(body),
        }
    }

    /// Wait for space when the filesystem is full instead of failing (feeders).
    pub fn wait_when_full(&mut self) {
        if let Store::Sqlite(store) = self {
            store.wait_when_full = true;
        }
    }
}

/// The columns `Tx::update_job` may set (`rq Q update`).
pub const UPDATABLE: [&str; 8] = [
    "priority",
    "command",
    "tag",
    "hosts",
    "restartable",
    "state",
    "stdin",
    "data",
];

/// Which SQL dialect a transaction speaks, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Parameters of a statement, as both stores bind them (`params![..]`, arrays, slices of
/// values).
pub type Params<'p> = &'p [&'p dyn ToSql];

/// What can be given as a statement's parameters.
pub trait AsParams {
    fn with<R>(self, f: impl FnOnce(Params<'_>) -> R) -> R;
}

impl AsParams for &[&dyn ToSql] {
    fn with<R>(self, f: impl FnOnce(Params<'_>) -> R) -> R {
        f(self)
    }
}

impl<const N: usize> AsParams for &[&dyn ToSql; N] {
    fn with<R>(self, f: impl FnOnce(Params<'_>) -> R) -> R {
        f(self)
    }
}

impl AsParams for [&dyn ToSql; 0] {
    fn with<R>(self, f: impl FnOnce(Params<'_>) -> R) -> R {
        f(&[])
    }
}

impl AsParams for &[SqlValue] {
    fn with<R>(self, f: impl FnOnce(Params<'_>) -> R) -> R {
        let refs: Vec<&dyn ToSql> = self.iter().map(|v| v as &dyn ToSql).collect();
        f(&refs)
    }
}

impl AsParams for &Vec<SqlValue> {
    fn with<R>(self, f: impl FnOnce(Params<'_>) -> R) -> R {
        self.as_slice().with(f)
    }
}

impl AsParams for Vec<SqlValue> {
    fn with<R>(self, f: impl FnOnce(Params<'_>) -> R) -> R {
        self.as_slice().with(f)
    }
}

/// Parameters from an iterator of values.
pub struct ParamsIter<I>(I);

pub fn params_from_iter<I>(iter: I) -> ParamsIter<I>
where
    I: IntoIterator,
    I::Item: ToSql,
{
    ParamsIter(iter)
}

impl<I> AsParams for ParamsIter<I>
where
    I: IntoIterator,
    I::Item: ToSql,
{
    fn with<R>(self, f: impl FnOnce(Params<'_>) -> R) -> R {
        let items: Vec<I::Item> = self.0.into_iter().collect();
        let refs: Vec<&dyn ToSql> = items.iter().map(|v| v as &dyn ToSql).collect();
        f(&refs)
    }
}

macro_rules! array_params {
    ($($n:literal)*) => {$(
        impl<T: ToSql> AsParams for [T; $n] {
            fn with<R>(self, f: impl FnOnce(Params<'_>) -> R) -> R {
                let refs: Vec<&dyn ToSql> = self.iter().map(|v| v as &dyn ToSql).collect();
                f(&refs)
            }
        }
    )*};
}
array_params!(1 2 3 4 5 6 7 8);

/// Rows read by `Stmt::query`.
pub struct Rows {
    rows: Vec<Vec<SqlValue>>,
    next: usize,
}

impl Rows {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Cells<'_>>> {
        let row = self.rows.get(self.next);
        self.next += 1;
        Ok(row.map(|values| Cells::Values(values)))
    }
}

/// A statement of a transaction (prepared and cached by the store on first use).
pub struct Stmt<'a> {
    tx: Tx<'a>,
    sql: Sql,
}

/// Touch the doorbell so idle feeders look at the queue now. Uses the file server's clock
/// (UTIME_NOW); a failure only delays pick-up until the next full poll.
pub fn ring_doorbell(dir: &std::path::Path) {
    if dir.as_os_str().is_empty() {
        // A queue with no directory (PostgreSQL, everything in the database): NOTIFY only.
        return;
    }
    let path = dir.join("doorbell");
    let now = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
    };
    // A link planted as the doorbell gets its own times set, never its target's.
    let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    if rustix::fs::utimensat(rustix::fs::CWD, &path, &now, flags).is_err() {
        let _ = crate::beats::create_new(&path);
    }
}

/// Tables whose rows are copied whole from one queue into another (`Tx::copy_rows`).
#[derive(Debug, Clone, Copy)]
pub enum Table {
    Jobs,
    Deps,
}

/// A statement's text: written once for both stores (PostgreSQL numbers its placeholders),
/// or a store operation's, written for the store it runs on (`ops`).
enum Sql {
    Shared(String),
    Native(&'static str),
    /// A `scan` operation's, with its filter written in.
    Filtered(String),
}

impl Sql {
    /// The text as the transaction's store runs it.
    fn text(&self) -> Text<'_> {
        match self {
            Sql::Shared(sql) => Text { sql, native: false },
            Sql::Native(sql) => Text { sql, native: true },
            Sql::Filtered(sql) => Text { sql, native: true },
        }
    }

    /// An operation with nothing to do on this store.
    fn is_nothing(&self) -> bool {
        matches!(self, Sql::Native(""))
    }
}

impl Stmt<'_> {
    pub fn execute(&mut self, params: impl AsParams) -> Result<usize> {
        if self.sql.is_nothing() {
            return Ok(0);
        }
        params.with(|params| self.tx.run(self.sql.text(), params))
    }

    /// Run a statement made of several, without parameters (SQLite's temporary
    /// triggers, PostgreSQL's `SET LOCAL`s).
    pub fn execute_batch(&mut self) -> Result<()> {
        self.tx.execute_batch(self.sql.text().sql)
    }

    /// The first row (the error `NoRows` when there is none; see `optional`); the
    /// statement is not read further.
    pub fn query_row<T>(
        &mut self,
        params: impl AsParams,
        f: impl FnOnce(&Cells<'_>) -> Result<T>,
    ) -> Result<T> {
        if self.sql.is_nothing() {
            return Err(Error::NoRows);
        }
        params.with(|params| self.tx.first(self.sql.text(), params, f))
    }

    /// Call `f` for each row as it comes (SQLite: straight from the cursor).
    pub fn query_each(
        &mut self,
        params: impl AsParams,
        f: impl FnMut(&Cells<'_>) -> Result<()>,
    ) -> Result<()> {
        if self.sql.is_nothing() {
            return Ok(());
        }
        params.with(|params| self.tx.each_row(self.sql.text(), params, f))
    }

    /// Every row, mapped (an iterator of results, to collect).
    pub fn query_map<T>(
        &mut self,
        params: impl AsParams,
        mut f: impl FnMut(&Cells<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let mut rows = Vec::new();
        self.query_each(params, |r| {
            rows.push(f(r));
            Ok(())
        })?;
        Ok(rows.into_iter())
    }

    /// The rows, read in full (for small results; large ones stream with `query_each`).
    pub fn query(&mut self, params: impl AsParams) -> Result<Rows> {
        let mut rows = Vec::new();
        self.query_each(params, |r| {
            rows.push(
                (0..r.column_count())
                    .map(|i| r.get_ref(i).map(ValueRef::to_owned_value))
                    .collect::<Result<Vec<SqlValue>>>()?,
            );
            Ok(())
        })?;
        Ok(Rows { rows, next: 0 })
    }
}

/// A statement's text and whether it is written for the store that runs it (a store
/// operation's) or for both (PostgreSQL numbers its placeholders).
#[derive(Clone, Copy)]
struct Text<'s> {
    sql: &'s str,
    native: bool,
}

impl<'s> Text<'s> {
    fn shared(sql: &'s str) -> Text<'s> {
        Text { sql, native: false }
    }
}

/// The rows of a statement on PostgreSQL (at most `limit`).
fn pg_rows(
    tx: &dyn postgres::PgConn,
    text: Text<'_>,
    params: Params<'_>,
    limit: Option<usize>,
) -> Result<Vec<Vec<SqlValue>>> {
    if text.native {
        tx.query_native(text.sql, params, limit)
    } else {
        tx.query(text.sql, params, limit)
    }
}

/// One transaction of either store (see the module comment).
#[derive(Clone, Copy)]
pub enum Tx<'a> {
    Sqlite(&'a rusqlite::Connection),
    Postgres(&'a (dyn postgres::PgConn + 'a)),
}

/// A column's position (so that `row.get::<_, T>(0)` names the type read).
pub trait ColumnIndex {
    fn index(self) -> usize;
}

impl ColumnIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// A value read, as the job model holds it (text that is not UTF-8 repaired; a blob as
/// text).
pub fn cell_of(value: ValueRef<'_>) -> crate::job::Cell {
    use crate::job::Cell;
    match value {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(i) => Cell::Int(i),
        ValueRef::Real(r) => Cell::Real(r),
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            Cell::Text(String::from_utf8_lossy(t).into_owned())
        }
    }
}

/// One result row of either store.
pub enum Cells<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Values(&'r [SqlValue]),
}

impl Cells<'_> {
    pub fn get_ref(&self, idx: usize) -> Result<ValueRef<'_>> {
        let missing = || Error::Column {
            index: idx,
            why: "no such column".into(),
        };
        match self {
            Cells::Sqlite(row) => Ok(sqlite::value_of(row.get_ref(idx).map_err(|_| missing())?)),
            Cells::Values(values) => values.get(idx).map(ValueRef::from).ok_or_else(missing),
        }
    }

    /// The column read as a `T`, alike whichever store read it.
    pub fn get<I: ColumnIndex, T: FromSql>(&self, idx: I) -> Result<T> {
        let idx = idx.index();
        let value = self.get_ref(idx)?;
        T::column_result(value).map_err(|e| Error::Column {
            index: idx,
            why: match e {
                FromSqlError::InvalidType => format!(
                    "holds {}, read as {}",
                    value.kind(),
                    std::any::type_name::<T>()
                ),
                FromSqlError::OutOfRange(i) => {
                    format!("{i} is out of range for {}", std::any::type_name::<T>())
                }
                FromSqlError::NotUtf8 => "text that is not UTF-8".into(),
            },
        })
    }

    /// The row as the job model holds it, its columns named `names`.
    pub fn row(&self, names: &[String]) -> Result<crate::job::Row> {
        let cells = (0..names.len())
            .map(|i| self.get_ref(i).map(cell_of))
            .collect::<Result<Vec<_>>>()?;
        Ok(crate::job::Row::from_cells(names, cells.into_iter()))
    }

    pub fn column_count(&self) -> usize {
        match self {
            Cells::Sqlite(row) => row.as_ref().column_count(),
            Cells::Values(values) => values.len(),
        }
    }
}

impl<'a> Tx<'a> {
    pub fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Postgres(_) => Dialect::Postgres,
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.dialect() == Dialect::Postgres
    }

    /// Set some of job `jid`'s columns an update may change (`UPDATABLE`), in one
    /// statement written for the columns given (the same in both dialects); the number of
    /// rows changed. Only the columns named are written, so triggers on others stay quiet.
    pub fn update_job(&self, jid: i64, changes: &[(&str, SqlValue)]) -> Result<usize> {
        if let Some((column, _)) = changes.iter().find(|(c, _)| !UPDATABLE.contains(c)) {
            return Err(Error::usage(format!(
                "the field {column} cannot be updated"
            )));
        }
        let sets: Vec<String> = changes.iter().map(|(c, _)| format!("{c} = ?")).collect();
        let sql = format!("UPDATE jobs SET {} WHERE jid = ?", sets.join(", "));
        let values = changes
            .iter()
            .map(|(_, v)| v.clone())
            .chain([SqlValue::Integer(jid)]);
        self.execute(&sql, params_from_iter(values))
    }

    /// Run one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: impl AsParams) -> Result<usize> {
        params.with(|params| self.run(Text::shared(sql), params))
    }

    /// Run statements without parameters (DDL, several separated by `;`; nothing for an
    /// empty text).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            _ if sql.is_empty() => Ok(()),
            Tx::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Tx::Postgres(tx) => tx.batch(sql),
        }
    }

    /// The first row (the error `NoRows` when there is none; see `optional`).
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl AsParams,
        f: impl FnOnce(&Cells<'_>) -> Result<T>,
    ) -> Result<T> {
        params.with(|params| self.first(Text::shared(sql), params, f))
    }

    /// Every row, mapped.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: impl AsParams,
        mut f: impl FnMut(&Cells<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.query_each(sql, params, |row| {
            out.push(f(row)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Call `f` for each row as it comes (SQLite: straight from the cursor).
    pub fn query_each(
        &self,
        sql: &str,
        params: impl AsParams,
        f: impl FnMut(&Cells<'_>) -> Result<()>,
    ) -> Result<()> {
        params.with(|params| self.each_row(Text::shared(sql), params, f))
    }

    fn run(&self, text: Text<'_>, params: Params<'_>) -> Result<usize> {
        match self {
            Tx::Sqlite(conn) => Ok(conn
                .prepare_cached(text.sql)?
                .execute(sqlite::bind(params))?),
            Tx::Postgres(tx) if text.native => tx.execute_native(text.sql, params),
            Tx::Postgres(tx) => tx.execute(text.sql, params),
        }
    }

    fn first<T>(
        &self,
        text: Text<'_>,
        params: Params<'_>,
        f: impl FnOnce(&Cells<'_>) -> Result<T>,
    ) -> Result<T> {
        match self {
            Tx::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(text.sql)?;
                let mut rows = stmt.query(sqlite::bind(params))?;
                let first = rows.next()?.ok_or(Error::NoRows)?;
                f(&Cells::Sqlite(first))
            }
            Tx::Postgres(tx) => {
                let rows = pg_rows(*tx, text, params, Some(1))?;
                let first = rows.first().ok_or(Error::NoRows)?;
                f(&Cells::Values(first))
            }
        }
    }

    fn each_row(
        &self,
        text: Text<'_>,
        params: Params<'_>,
        mut f: impl FnMut(&Cells<'_>) -> Result<()>,
    ) -> Result<()> {
        match self {
            Tx::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(text.sql)?;
                let mut rows = stmt.query(sqlite::bind(params))?;
                while let Some(row) = rows.next()? {
                    f(&Cells::Sqlite(row))?;
                }
                Ok(())
            }
            Tx::Postgres(tx) => {
                for row in pg_rows(*tx, text, params, None)? {
                    f(&Cells::Values(&row))?;
                }
                Ok(())
            }
        }
    }

    /// A statement to run once.
    pub fn prepare(&self, sql: &str) -> Result<Stmt<'a>> {
        self.prepare_cached(sql)
    }

    /// A statement to run (several times, perhaps).
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'a>> {
        Ok(Stmt {
            tx: *self,
            sql: Sql::Shared(sql.to_string()),
        })
    }

    /// What this store does differently beyond its SQL (`ops::Capabilities`).
    pub fn capabilities(&self) -> ops::Capabilities {
        ops::capabilities(self.dialect())
    }

    /// A store operation (`ops`): its SQL as this store writes it.
    pub fn op(&self, op: ops::Op) -> Stmt<'a> {
        Stmt {
            tx: *self,
            sql: Sql::Native(ops::sql(self.dialect(), op)),
        }
    }

    /// A `scan` operation with `filter` written into it in this store's SQL, and every
    /// parameter to run it with: the operation's own (`own`, numbered first), then the
    /// filter's.
    pub fn scan(
        &self,
        op: ops::Op,
        filter: &Filter,
        own: &[SqlValue],
    ) -> (Stmt<'a>, Vec<SqlValue>) {
        let mut params = own.to_vec();
        let clause = filter::render(self.dialect(), filter, &mut params);
        let sql = ops::sql(self.dialect(), op).replace("{filter}", &clause);
        (
            Stmt {
                tx: *self,
                sql: Sql::Filtered(sql),
            },
            params,
        )
    }

    /// Prepare a store operation's statement without running it (the tests that check
    /// every statement of each store is valid there); PostgreSQL must infer every
    /// parameter's type from the statement alone.
    pub fn prepare_op(&self, op: ops::Op) -> Result<()> {
        let statement = ops::statement(self.dialect(), op);
        if statement.batch {
            // Several statements cannot be prepared as one: run, then undone.
            self.execute_batch("SAVEPOINT rq_check")?;
            let ran = self.execute_batch(&statement.sql);
            self.execute_batch("ROLLBACK TO SAVEPOINT rq_check; RELEASE SAVEPOINT rq_check")?;
            return ran;
        }
        // A scan's filter: any will do.
        let sql = statement.sql.replace("{filter}", "TRUE");
        match (self, sql.as_str()) {
            (_, "") => Ok(()),
            (Tx::Sqlite(conn), sql) => conn.prepare(sql).map(drop).map_err(Error::from),
            (Tx::Postgres(tx), sql) => tx.prepare_native(sql),
        }
    }

    /// Insert a batch of new jobs (at most `capabilities().insert_batch`) with one
    /// statement: a multi-row INSERT on SQLite, a COPY on PostgreSQL (one message for
    /// the whole batch). Returns the last jid.
    pub fn insert_jobs(
        &self,
        batch: &[crate::job::NewJob],
        submitted: &str,
        submitter: &str,
        user: &str,
    ) -> Result<i64> {
        const COLUMNS: [&str; 29] = [
            "jid",
            "priority",
            "state",
            "submitted",
            "submitter",
            "stdin",
            "data",
            "tag",
            "restartable",
            "command",
            "hosts",
            "cwd",
            "timeout",
            "retries",
            "retry_delay",
            "user",
            "name",
            "after",
            "after_any",
            "waiting_on",
            "reason",
            "array_id",
            "array_index",
            "array_limit",
            "env",
            "not_before",
            "cpus",
            "mem",
            "gpus",
        ];
        // PostgreSQL draws jids for rows that name none from its sequence as the column's
        // default, cheapest when the column is left out of the COPY.
        let jid_column = !(self.is_postgres() && batch.iter().all(|job| job.jid.is_none()));
        let states: Vec<&str> = batch.iter().map(|job| job.state.as_str()).collect();
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(batch.len() * 29);
        for (job, state) in batch.iter().zip(&states) {
            if jid_column {
                params.push(&job.jid);
            }
            params.extend_from_slice(&[
                &job.priority as &dyn ToSql,
                state,
                &submitted,
                &submitter,
                &job.stdin,
                &job.data,
                &job.tag,
                &job.restartable,
                &job.command,
                &job.hosts,
                &job.cwd,
                &job.timeout,
                &job.retries,
                &job.retry_delay,
                &user,
                &job.name,
                &job.after,
                &job.after_any,
                &job.waiting_on,
                &job.reason,
                &job.array_id,
                &job.array_index,
                &job.array_limit,
                &job.env,
                &job.not_before,
                &job.cpus,
                &job.mem,
                &job.gpus,
            ]);
        }
        if let Tx::Postgres(pg) = self {
            let columns = if jid_column {
                &COLUMNS[..]
            } else {
                &COLUMNS[1..]
            };
            let list = postgres::column_list(columns);
            postgres::copy_in(*pg, "jobs", &list, &params, columns.len())?;
        } else {
            let row = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
            let sql = format!(
                "INSERT INTO jobs ({}) VALUES {}",
                COLUMNS.join(", "),
                vec![row; batch.len()].join(",")
            );
            self.prepare_cached(&sql)?.execute(params.as_slice())?;
        }
        self.last_insert_rowid()
    }

    /// Insert whole rows copied from another queue (export, rotation): on PostgreSQL by
    /// COPY (one message per page), on SQLite by one prepared statement.
    pub fn copy_rows(&self, table: Table, rows: &[Vec<SqlValue>]) -> Result<()> {
        let (name, columns, insert): (_, &[&str], _) = match table {
            Table::Jobs => ("jobs", crate::job::FIELDS, ops::copies::INSERT_JOB),
            Table::Deps => (
                "deps",
                &["dep", "job", "kind", "met"],
                ops::copies::INSERT_DEP,
            ),
        };
        if let Tx::Postgres(pg) = self {
            let values: Vec<&dyn ToSql> = rows.iter().flatten().map(|v| v as &dyn ToSql).collect();
            let width = columns.len();
            return postgres::copy_in(*pg, name, &postgres::column_list(columns), &values, width);
        }
        let mut insert = self.op(insert);
        for row in rows {
            insert.execute(params_from_iter(row))?;
        }
        Ok(())
    }

    /// The jid of the job this transaction inserted last.
    pub fn last_insert_rowid(&self) -> Result<i64> {
        match self {
            Tx::Sqlite(conn) => Ok(conn.last_insert_rowid()),
            Tx::Postgres(_) => self.query_row("SELECT lastval()", [], |r| r.get(0)),
        }
    }

    /// Run a user's SQL script (`rq Q sql`), in the store's own dialect; the rows of
    /// the statements that return rows.
    pub fn run_script(&self, sql: &str) -> Result<Vec<crate::job::Row>> {
        let Tx::Sqlite(conn) = self else {
            return postgres::run_script(self, sql);
        };
        let mut rows = Vec::new();
        use fallible_iterator::FallibleIterator;
        let mut batch = rusqlite::Batch::new(conn, sql);
        while let Some(mut stmt) = batch.next()? {
            let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
            let mut result = stmt.query([])?;
            while let Some(row) = result.next()? {
                rows.push(Cells::Sqlite(row).row(&names)?);
            }
        }
        Ok(rows)
    }

    /// The connection, for what only SQLite has (pragmas, the backup API).
    pub fn sqlite(&self) -> Option<&'a rusqlite::Connection> {
        match self {
            Tx::Sqlite(conn) => Some(conn),
            Tx::Postgres(_) => None,
        }
    }
}

/// What the database said when it refused a statement as written (syntax, unknown
/// names, wrong types or values): the user's mistake when the SQL was theirs. None for
/// any other error.
pub fn refusal(e: &Error) -> Option<String> {
    Some(match e {
        Error::Sql(rusqlite::Error::SqlInputError { msg, .. }) => msg.clone(),
        Error::Sql(rusqlite::Error::SqliteFailure(_, Some(msg))) => msg.clone(),
        Error::Sql(err) => err.to_string(),
        // Syntax, unknown names, wrong types (class 42), bad values (class 22).
        Error::Postgres(err)
            if err
                .code()
                .is_some_and(|c| c.code().starts_with("42") || c.code().starts_with("22")) =>
        {
            err.as_db_error()
                .map_or_else(|| err.to_string(), |db| db.message().to_string())
        }
        _ => return None,
    })
}

/// No row (`NoRows`) becomes `None`, for both stores.
pub trait Optional<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> Optional<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(Error::NoRows | Error::Sql(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Rewrite SQLite placeholders (`?`, `?N`) as PostgreSQL's (`$N`), leaving quoted text,
/// quoted names and comments alone. An anonymous `?` takes the number after the largest
/// used so far, as in SQLite.
pub fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    let mut largest = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let n = digits.parse().unwrap_or(largest + 1);
                largest = largest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::numbered_placeholders;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(
            numbered_placeholders("SELECT ? , ?3, ? FROM t WHERE a = '?' AND \"b?\" = ? -- ?\n"),
            "SELECT $1 , $3, $4 FROM t WHERE a = '?' AND \"b?\" = $5 -- ?\n"
        );
    }
}
