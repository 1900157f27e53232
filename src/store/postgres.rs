//! The PostgreSQL store: a queue kept in a PostgreSQL database (see `store`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::PathBuf;

use ::postgres::types::{IsNull, Type};
use bytes::BytesMut;

use super::{Params, SqlValue};
use crate::error::{Error, Result};

/// One transaction on a PostgreSQL connection (or, for `autocommit`, the connection with
/// no transaction around its statements), with the connection's prepared statements.
pub struct PgTx<'c> {
    tx: RefCell<Conn<'c>>,
    statements: &'c RefCell<HashMap<String, ::postgres::Statement>>,
}

/// What a `PgTx`'s statements run on: an open transaction, or the bare connection, where
/// each statement commits on its own (`PgStore::autocommit`).
enum Conn<'c> {
    Tx(::postgres::Transaction<'c>),
    Auto(&'c mut ::postgres::Client),
}

/// `$body` with `$c` the transaction or the client (both have the same methods).
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match &mut *$conn {
            Conn::Tx($c) => $body,
            Conn::Auto($c) => $body,
        }
    };
}

/// A value bound to a PostgreSQL parameter, converted to the type the server expects there
/// (SQLite's dynamic values meet PostgreSQL's static types).
#[derive(Debug)]
struct Bound(SqlValue);

impl Bound {
    fn from_param(param: &dyn super::ToSql) -> Result<Bound> {
        Ok(Bound(param.to_sql().to_owned_value()))
    }

    /// The PostgreSQL type of the value itself (for parameters the server cannot type).
    fn natural_type(&self) -> Type {
        match self.0 {
            SqlValue::Integer(_) => Type::INT8,
            SqlValue::Real(_) => Type::FLOAT8,
            SqlValue::Blob(_) => Type::BYTEA,
            SqlValue::Text(_) | SqlValue::Null => Type::TEXT,
        }
    }
}

type BoxError = Box<dyn StdError + Sync + Send>;

impl ::postgres::types::ToSql for Bound {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        use SqlValue::*;
        let as_i64 = || -> std::result::Result<i64, BoxError> {
            Ok(match &self.0 {
                Integer(i) => *i,
                Real(f) => *f as i64,
                Text(t) => t.trim().parse()?,
                other => return Err(format!("{other:?} is not an integer").into()),
            })
        };
        if matches!(self.0, Null) {
            return Ok(IsNull::Yes);
        }
        match *ty {
            Type::INT8 => as_i64()?.to_sql(ty, out),
            Type::INT4 => i32::try_from(as_i64()?)?.to_sql(ty, out),
            Type::INT2 => i16::try_from(as_i64()?)?.to_sql(ty, out),
            Type::BOOL => (as_i64()? != 0).to_sql(ty, out),
            Type::FLOAT8 | Type::FLOAT4 => {
                let f = match &self.0 {
                    Integer(i) => *i as f64,
                    Real(f) => *f,
                    Text(t) => t.trim().parse()?,
                    other => return Err(format!("{other:?} is not a number").into()),
                };
                if *ty == Type::FLOAT4 {
                    (f as f32).to_sql(ty, out)
                } else {
                    f.to_sql(ty, out)
                }
            }
            // JSON text as such; jsonb's binary form is a version byte (1) and the text.
            Type::JSONB | Type::JSON => {
                let text = match &self.0 {
                    Text(t) => t.clone(),
                    Integer(i) => i.to_string(),
                    Real(f) => f.to_string(),
                    Blob(b) => String::from_utf8_lossy(b).into_owned(),
                    Null => unreachable!("handled above"),
                };
                if *ty == Type::JSONB {
                    out.extend_from_slice(&[1]);
                }
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            Type::BYTEA => match &self.0 {
                Blob(b) => b.to_sql(ty, out),
                Text(t) => t.as_bytes().to_sql(ty, out),
                other => Err(format!("{other:?} is not bytes").into()),
            },
            _ => match &self.0 {
                Text(t) => t.to_sql(ty, out),
                Integer(i) => i.to_string().to_sql(ty, out),
                Real(f) => f.to_string().to_sql(ty, out),
                Blob(b) => String::from_utf8_lossy(b).into_owned().to_sql(ty, out),
                Null => unreachable!("handled above"),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    ::postgres::types::to_sql_checked!();
}

/// A column of a result row in SQLite's value model.
fn cell(row: &::postgres::Row, idx: usize) -> std::result::Result<SqlValue, ::postgres::Error> {
    let ty = row.columns()[idx].type_().clone();
    let value = match ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(idx)?.map(SqlValue::Integer),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(idx)?
            .map(|v| SqlValue::Integer(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(idx)?
            .map(|v| SqlValue::Integer(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(idx)?
            .map(|v| SqlValue::Integer(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(idx)?.map(SqlValue::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(idx)?
            .map(|v| SqlValue::Real(v.into())),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(idx)?.map(SqlValue::Blob),
        Type::VOID => None,
        Type::NUMERIC => row.try_get::<_, Option<Numeric>>(idx)?.map(|n| n.0),
        _ => row.try_get::<_, Option<String>>(idx)?.map(SqlValue::Text),
    };
    Ok(value.unwrap_or(SqlValue::Null))
}

/// A `numeric` (sums and averages of integers, `round`) as an integer when it is one,
/// else a real: PostgreSQL's binary form is base-10000 digits with a weight and a sign.
struct Numeric(SqlValue);

impl<'a> ::postgres::types::FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> std::result::Result<Numeric, BoxError> {
        let word = |i: usize| -> std::result::Result<i16, BoxError> {
            let bytes = raw.get(i * 2..i * 2 + 2).ok_or("short numeric")?;
            Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
        };
        let (ndigits, weight, sign, scale) = (word(0)?, word(1)?, word(2)? as u16, word(3)?);
        if sign == 0xC000 {
            return Ok(Numeric(SqlValue::Real(f64::NAN)));
        }
        let mut value = 0f64;
        let mut exact: Option<i128> = Some(0);
        for i in 0..ndigits.max(0) as usize {
            let digit = word(4 + i)? as f64;
            let power = weight as i32 - i as i32;
            value += digit * 10000f64.powi(power);
            exact = match exact {
                Some(n) if power >= 0 => 10000i128
                    .checked_pow(power as u32)
                    .and_then(|p| (digit as i128).checked_mul(p))
                    .and_then(|d| n.checked_add(d)),
                Some(_) if digit == 0.0 => exact,
                _ => None,
            };
        }
        let negative = sign == 0x4000;
        let cell = match exact {
            Some(n) if scale == 0 && i64::try_from(n).is_ok() => {
                let n = n as i64;
                SqlValue::Integer(if negative { -n } else { n })
            }
            _ => SqlValue::Real(if negative { -value } else { value }),
        };
        Ok(Numeric(cell))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

impl<'c> PgTx<'c> {
    fn new(
        conn: Conn<'c>,
        statements: &'c RefCell<HashMap<String, ::postgres::Statement>>,
    ) -> PgTx<'c> {
        PgTx {
            tx: RefCell::new(conn),
            statements,
        }
    }

    /// Commit, if there is a transaction to commit.
    fn commit(self) -> std::result::Result<(), ::postgres::Error> {
        match self.tx.into_inner() {
            Conn::Tx(tx) => tx.commit(),
            Conn::Auto(_) => Ok(()),
        }
    }
}

/// What a `Tx` asks of a PostgreSQL transaction (a trait object, so `Tx` has one lifetime).
pub trait PgConn {
    fn execute(&self, sql: &str, params: Params<'_>) -> Result<usize>;
    /// A store operation's statement, written for PostgreSQL (`ops`): not translated.
    fn execute_native(&self, sql: &str, params: Params<'_>) -> Result<usize>;
    fn query_native(
        &self,
        sql: &str,
        params: Params<'_>,
        limit: Option<usize>,
    ) -> Result<Vec<Vec<SqlValue>>>;
    fn prepare_native(&self, sql: &str) -> Result<()>;
    fn query(
        &self,
        sql: &str,
        params: Params<'_>,
        limit: Option<usize>,
    ) -> Result<Vec<Vec<SqlValue>>>;
    fn batch(&self, sql: &str) -> Result<()>;
    fn simple_query(&self, sql: &str) -> Result<Vec<::postgres::SimpleQueryMessage>>;
    /// COPY ... FROM STDIN with `data` in COPY's text format.
    fn copy_in(&self, sql: &str, data: &[u8]) -> Result<u64>;
}

impl PgTx<'_> {
    /// The prepared statement for `sql`, from the connection's cache or prepared now.
    /// A parameter PostgreSQL cannot infer a type for (`? IS NULL`, `SELECT ?`) takes the
    /// type of the value bound to it (the prepare is tried in a savepoint, since a
    /// failed statement would abort the transaction).
    fn statement(&self, sql: &str, bound: &[Bound], native: bool) -> Result<::postgres::Statement> {
        if let Some(stmt) = self.statements.borrow().get(sql) {
            return Ok(stmt.clone());
        }
        // A statement written once for both stores: only its placeholders differ.
        let translated = if native {
            sql.to_string()
        } else {
            super::numbered_placeholders(sql)
        };
        if std::env::var_os("RQ_SQL_DEBUG").is_some_and(|v| !v.is_empty()) {
            crate::note!("rq sql: {translated}");
        }
        let mut conn = self.tx.borrow_mut();
        // Outside a transaction a failed prepare spoils nothing: no savepoint.
        let in_tx = matches!(*conn, Conn::Tx(_));
        let savepoint = |conn: &mut Conn<'_>, sql: &str| -> Result<()> {
            if in_tx {
                on_conn!(conn, c => c.batch_execute(sql))?;
            }
            Ok(())
        };
        savepoint(&mut conn, "SAVEPOINT rq_prepare")?;
        let stmt = match on_conn!(conn, c => c.prepare(&translated)) {
            Ok(stmt) => stmt,
            Err(e)
                if e.code().is_some_and(|c| {
                    *c == ::postgres::error::SqlState::INDETERMINATE_DATATYPE
                        || *c == ::postgres::error::SqlState::AMBIGUOUS_PARAMETER
                }) =>
            {
                savepoint(&mut conn, "ROLLBACK TO SAVEPOINT rq_prepare")?;
                let types: Vec<Type> = bound.iter().map(Bound::natural_type).collect();
                on_conn!(conn, c => c.prepare_typed(&translated, &types))?
            }
            Err(e) => {
                savepoint(&mut conn, "ROLLBACK TO SAVEPOINT rq_prepare")?;
                return Err(e.into());
            }
        };
        savepoint(&mut conn, "RELEASE SAVEPOINT rq_prepare")?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    fn bind(params: Params<'_>) -> Result<Vec<Bound>> {
        params.iter().map(|p| Bound::from_param(*p)).collect()
    }
}

impl PgConn for PgTx<'_> {
    fn copy_in(&self, sql: &str, data: &[u8]) -> Result<u64> {
        use std::io::Write;
        let mut conn = self.tx.borrow_mut();
        let mut writer = on_conn!(conn, c => c.copy_in(sql))?;
        writer.write_all(data).map_err(|e| Error::Io {
            context: "cannot send rows to PostgreSQL".into(),
            source: e,
        })?;
        Ok(writer.finish()?)
    }

    fn simple_query(&self, sql: &str) -> Result<Vec<::postgres::SimpleQueryMessage>> {
        Ok(on_conn!(self.tx.borrow_mut(), c => c.simple_query(sql))?)
    }

    fn execute(&self, sql: &str, params: Params<'_>) -> Result<usize> {
        self.run(sql, params, false)
    }

    fn execute_native(&self, sql: &str, params: Params<'_>) -> Result<usize> {
        self.run(sql, params, true)
    }

    fn query_native(
        &self,
        sql: &str,
        params: Params<'_>,
        limit: Option<usize>,
    ) -> Result<Vec<Vec<SqlValue>>> {
        self.rows(sql, params, limit, true)
    }

    fn prepare_native(&self, sql: &str) -> Result<()> {
        self.statement(sql, &[], true).map(drop)
    }

    fn query(
        &self,
        sql: &str,
        params: Params<'_>,
        limit: Option<usize>,
    ) -> Result<Vec<Vec<SqlValue>>> {
        self.rows(sql, params, limit, false)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        Ok(on_conn!(self.tx.borrow_mut(), c => c.batch_execute(sql))?)
    }
}

impl PgTx<'_> {
    fn run(&self, sql: &str, params: Params<'_>, native: bool) -> Result<usize> {
        let bound = Self::bind(params)?;
        let stmt = self.statement(sql, &bound, native)?;
        let args: Vec<&(dyn ::postgres::types::ToSql + Sync)> =
            bound.iter().map(|b| b as _).collect();
        Ok(on_conn!(self.tx.borrow_mut(), c => c.execute(&stmt, &args))? as usize)
    }

    fn rows(
        &self,
        sql: &str,
        params: Params<'_>,
        limit: Option<usize>,
        native: bool,
    ) -> Result<Vec<Vec<SqlValue>>> {
        let bound = Self::bind(params)?;
        let stmt = self.statement(sql, &bound, native)?;
        let args: Vec<&(dyn ::postgres::types::ToSql + Sync)> =
            bound.iter().map(|b| b as _).collect();
        let rows = on_conn!(self.tx.borrow_mut(), c => c.query(&stmt, &args))?;
        let take = limit.unwrap_or(rows.len());
        rows.iter()
            .take(take)
            .map(|row| {
                (0..row.len())
                    .map(|i| cell(row, i).map_err(Error::from))
                    .collect()
            })
            .collect()
    }
}

/// Where a PostgreSQL queue is: the server's connection string (without rq's own
/// `queue=` parameter) and the queue's name, which is its schema `rq_<name>` in that
/// database (several queues can share one database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub url: String,
    pub queue: String,
}

impl Location {
    /// Is `text` a PostgreSQL connection URL (rather than a directory)?
    pub fn is_url(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }

    pub fn parse(text: &str) -> Result<Location> {
        let (base, query) = match text.split_once('?') {
            Some((base, query)) => (base, query),
            None => (text, ""),
        };
        let mut queue = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("queue", name)) => queue = Some(name.to_string()),
                _ => kept.push(pair),
            }
        }
        let queue = queue.unwrap_or_else(|| "default".to_string());
        let valid = !queue.is_empty()
            && queue.len() <= 40
            && queue
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(Error::usage(format!(
                "bad queue name '{queue}' in {}: use 1 to 40 of a-z, 0-9 and _",
                crate::secrets::redact(text)
            )));
        }
        let url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        url.parse::<::postgres::Config>().map_err(|e| {
            Error::usage(format!(
                "bad PostgreSQL connection string {}: {}",
                crate::secrets::redact(text),
                crate::secrets::redact(&e.to_string())
            ))
        })?;
        Ok(Location { url, queue })
    }

    /// The schema holding this queue's tables.
    pub fn schema(&self) -> String {
        format!("rq_{}", self.queue)
    }

    /// How the queue is named to people: never with a password, whether in the URL's
    /// user information or in a `password=` parameter.
    pub fn display(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        crate::secrets::redact(&format!("{}{sep}queue={}", self.url, self.queue))
    }
}

/// A connection to a queue's PostgreSQL database, with the transaction discipline of
/// `Store` (short transactions, whole-transaction retry on a fresh connection when the
/// server or the connection failed, "outcome unknown" when COMMIT did).
pub struct PgStore {
    pub location: Location,
    access: crate::store::Access,
    client: Option<::postgres::Client>,
    statements: RefCell<HashMap<String, ::postgres::Statement>>,
    /// Give up after this long when the server cannot be reached (None: keep trying).
    pub give_up_after: Option<std::time::Duration>,
    /// The job-file directory whose doorbell feeders watch (`configure files=`).
    pub doorbell_dir: Option<std::path::PathBuf>,
    /// The server ends this session when it sits this long inside a transaction (see
    /// `end_stalled_transactions_after`); None: never.
    stalled_after: Option<std::time::Duration>,
    /// The largest live feeder this session's `rq_unfit` was told about.
    told_largest: Option<(i64, i64, i64)>,
    /// The last write left dependency work for later transactions (`settle::settle`).
    pub dep_work_left: bool,
    /// Writes also do dependency work others left (`settle::settle`'s `carry_on`).
    pub carry_on_dep_work: bool,
}

/// Errors after which the whole transaction is worth running again on a fresh connection:
/// the connection or server went away, or PostgreSQL chose this transaction to abort
/// (serialization failure, deadlock).
fn is_transient(err: &::postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        Some(code) => {
            let code = code.code();
            code == "40001"
                || code == "40P01"
                || code == "55P03"
                || code.starts_with("08")
                || code.starts_with("57P")
        }
        // No SQLSTATE: transient when the connection failed (I/O), not when a value
        // could not be converted.
        None => StdError::source(err).is_some_and(|e| e.is::<std::io::Error>()),
    }
}

impl PgStore {
    pub fn open(location: &Location, access: crate::store::Access) -> Result<PgStore> {
        let mut store = PgStore {
            location: location.clone(),
            access,
            client: None,
            statements: RefCell::new(HashMap::new()),
            give_up_after: crate::time::lock_timeout_from_env()?
                .or(Some(std::time::Duration::from_secs(60))),
            doorbell_dir: None,
            stalled_after: None,
            told_largest: None,
            dep_work_left: false,
            carry_on_dep_work: false,
        };
        store.connect()?;
        Ok(store)
    }

    /// A new connection, on the queue's schema, checked to hold a queue of a schema
    /// version this rq knows.
    fn connect(&mut self) -> Result<()> {
        self.client = None;
        self.told_largest = None;
        self.statements.borrow_mut().clear();
        let mut client = connect_client(&self.location.url)?;
        let schema = self.location.schema();
        let usable: Option<bool> = client
            .query_opt(
                "SELECT has_schema_privilege(oid, 'USAGE') FROM pg_catalog.pg_namespace \
                 WHERE nspname = $1",
                &[&schema],
            )?
            .map(|row| row.get(0));
        match usable {
            None => {
                return Err(Error::NoQueue {
                    path: self.location.display().into(),
                });
            }
            // Without USAGE the schema drops out of the search path and every table
            // "does not exist": say what is really wrong, and who can fix it.
            Some(false) => {
                let role: String = client.query_one("SELECT current_user", &[])?.get(0);
                return Err(Error::Conflict(format!(
                    "permission denied for the queue {}: role {role} may not use its schema \
                     {schema} (its owner can run: GRANT USAGE ON SCHEMA {schema} TO {role}, \
                     and grant rights on its tables)",
                    self.location.display()
                )));
            }
            Some(true) => {}
        }
        // A commit rq acts on (a claim, before its job is spawned) must survive a server
        // crash, whatever the server's default.
        client.batch_execute(&format!(
            "SET search_path TO \"{schema}\"; SET TIME ZONE 'UTC'; SET synchronous_commit = on"
        ))?;
        let found: i64 = client
            .query_one(
                "SELECT CAST(value AS bigint) FROM meta WHERE key = 'schema_version'",
                &[],
            )?
            .get(0);
        let known = super::pg_sql::SCHEMA_VERSION;
        if found > known {
            return Err(Error::NewerSchema {
                path: self.location.display().into(),
                found,
                known,
            });
        }
        // An older queue is brought up to date by the first process that writes to it
        // (a reader works with what it finds).
        if found < known && self.access == crate::store::Access::ReadWrite {
            migrate(&mut client, self.lock_key())?;
        }
        if self.access == crate::store::Access::ReadOnly {
            client.batch_execute("SET default_transaction_read_only = on")?;
        } else {
            // A trigger, rule or function someone planted would run inside every write.
            let foreign = foreign_objects(&mut client, &schema)?;
            if !foreign.is_empty() {
                return Err(Error::Conflict(format!(
                    "the queue {} holds what rq did not make ({}), which would run inside \
                     rq's writes: nothing was changed; its schema's owner can DROP it",
                    self.location.display(),
                    super::sqlite::describe_objects(&foreign)
                )));
            }
            client.batch_execute(super::pg_sql::SESSION_SQL)?;
        }
        if let Some(limit) = self.stalled_after {
            client.batch_execute(&stalled_sql(limit))?;
        }
        self.client = Some(client);
        Ok(())
    }

    /// Have the server end this session when it sits inside a transaction for longer
    /// than `limit` (a feeder passes its lease). A feeder frozen or hung mid-transaction
    /// would otherwise hold its row locks, and every other host's reclaim of its jobs
    /// would wait for it, however long; this is what an NFS server's lock lease does for
    /// a SQLite queue. The feeder's own transactions never wait inside (no spawn, no
    /// sleep): one that finds its session ended retries on a fresh connection.
    pub fn end_stalled_transactions_after(&mut self, limit: std::time::Duration) -> Result<()> {
        if self.stalled_after == Some(limit) {
            return Ok(());
        }
        self.stalled_after = Some(limit);
        if let Some(client) = self.client.as_mut() {
            client.batch_execute(&stalled_sql(limit))?;
        }
        Ok(())
    }

    /// A write transaction holding the queue's advisory lock exclusively (as SQLite's
    /// BEGIN IMMEDIATE: no other rq write runs beside it).
    pub fn write<T>(&mut self, mut body: impl FnMut(&super::Tx<'_>) -> Result<T>) -> Result<T> {
        self.run(Kind::Write, &mut body)
    }

    /// A write transaction holding the advisory lock shared (see `Store::write_shared`).
    pub fn write_shared<T>(
        &mut self,
        mut body: impl FnMut(&super::Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.run(Kind::SharedWrite, &mut body)
    }

    /// A read-only transaction (a snapshot; it takes the advisory lock shared only so
    /// that `rq Q lock exclusive` holds readers back as on SQLite).
    pub fn read<T>(&mut self, mut body: impl FnMut(&super::Tx<'_>) -> Result<T>) -> Result<T> {
        self.run(Kind::Read, &mut body)
    }

    /// A transaction on job-file rows only (`in_database`), taking no advisory lock: a
    /// read (one snapshot) or a write of rows no other writer touches (a submit's inputs
    /// under jids it reserved, a new queue's files), so that a long copy holds no other
    /// writer back.
    pub fn files<T>(
        &mut self,
        write: bool,
        mut body: impl FnMut(&super::Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let kind = if write {
            Kind::FilesWrite
        } else {
            Kind::FilesRead
        };
        self.run(kind, &mut body)
    }

    /// Run `body`'s statements outside a transaction, each committing on its own (for a
    /// body of one statement, on rows no other writer touches: a feeder's start journal).
    pub fn autocommit<T>(
        &mut self,
        mut body: impl FnMut(&super::Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.run(Kind::Autocommit, &mut body)
    }

    /// `rq Q lock`: an advisory lock on the queue (shared or exclusive) that rq's own
    /// writers take too, held while `body` runs.
    pub fn with_lock<T>(
        &mut self,
        exclusive: bool,
        mut body: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        let key = self.lock_key();
        let take = if exclusive {
            "SELECT pg_advisory_lock($1)"
        } else {
            "SELECT pg_advisory_lock_shared($1)"
        };
        let give = if exclusive {
            "SELECT pg_advisory_unlock($1)"
        } else {
            "SELECT pg_advisory_unlock_shared($1)"
        };
        self.client()?.execute(take, &[&key])?;
        let outcome = body();
        let _ = self.client()?.execute(give, &[&key]);
        outcome
    }

    /// Wake the queue's idle feeders (LISTEN rq_<name>); a failure only delays pick-up
    /// until their next poll.
    pub fn notify(&mut self) {
        let channel = self.location.schema();
        if let Ok(client) = self.client() {
            let _ = client.batch_execute(&format!("NOTIFY \"{channel}\""));
        }
    }

    /// After a commit that made `jobs` jobs pending: when they are a tenth or more of
    /// what the server last counted in `jobs`, have it count again now (ANALYZE), as autovacuum
    /// would within a minute or so. Until then its planner may take a queue full of new
    /// pending jobs for one with none and have every claim sort them all instead of
    /// walking the claim-order index (3,000 new jobs: 10 ms a claim instead of 0.1).
    /// Only an optimisation: the jobs are committed, so a failure is not the caller's.
    pub fn refresh_statistics(&mut self, jobs: usize) {
        const FEWEST: usize = 200;
        if jobs < FEWEST {
            return;
        }
        let Ok(client) = self.client() else { return };
        let counted: Option<f32> = client
            .query_opt(
                "SELECT reltuples FROM pg_class WHERE oid = to_regclass('jobs')",
                &[],
            )
            .ok()
            .flatten()
            .map(|row| row.get(0));
        // -1: never counted.
        if counted.is_some_and(|n| n >= 0.0 && (jobs as f32) < 0.1 * n) {
            return;
        }
        let _ = client.batch_execute("ANALYZE jobs");
    }

    /// The advisory lock key of this queue: its schema's name, hashed (queues sharing a
    /// database have their own locks; the array and tag-limit locks of the triggers and
    /// claims are database-wide, which costs at most some waiting, never correctness).
    fn lock_key(&self) -> i64 {
        let mut hash: i64 = 0x7271;
        for b in self.location.schema().bytes() {
            hash = hash.wrapping_mul(31).wrapping_add(b as i64);
        }
        hash
    }

    fn client(&mut self) -> Result<&mut ::postgres::Client> {
        if self.client.is_none() {
            self.connect()?;
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn run<T>(
        &mut self,
        kind: Kind,
        body: &mut dyn FnMut(&super::Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let mut attempt = 0u32;
        let mut announced = false;
        loop {
            match self.try_once(kind, body) {
                Ok(value) => {
                    if announced {
                        crate::note!("rq: the PostgreSQL server answers again; continuing");
                    }
                    return Ok(value);
                }
                Err(Attempt::Retry(why)) => {
                    self.client = None;
                    if let Some(limit) = self.give_up_after
                        && started.elapsed() > limit
                    {
                        return Err(Error::Conflict(format!(
                            "gave up on the PostgreSQL server of {} after {:.0}s: {why}",
                            self.location.display(),
                            started.elapsed().as_secs_f64()
                        )));
                    }
                    if started.elapsed() > std::time::Duration::from_secs(3) && !announced {
                        announced = true;
                        crate::note!(
                            "rq: cannot reach the PostgreSQL server of {} ({why}); rq keeps trying, Ctrl-C to give up",
                            self.location.display()
                        );
                    }
                    attempt += 1;
                    let ms = (20.0 * 1.5f64.powi(attempt.min(10) as i32)).min(2000.0)
                        * rand::random_range(0.5..1.5);
                    std::thread::sleep(std::time::Duration::from_secs_f64(ms / 1000.0));
                }
                Err(Attempt::Fail(err)) => return Err(err),
            }
        }
    }

    fn try_once<T>(
        &mut self,
        kind: Kind,
        body: &mut dyn FnMut(&super::Tx<'_>) -> Result<T>,
    ) -> std::result::Result<T, Attempt> {
        let read_only = matches!(kind, Kind::Read | Kind::FilesRead);
        let classify = |e: Error| match e {
            Error::Postgres(pg) if is_transient(&pg) => Attempt::Retry(pg.to_string()),
            Error::NoQueue { .. } | Error::NewerSchema { .. } => Attempt::Fail(e),
            other => Attempt::Fail(other),
        };
        if self.client.is_none() {
            self.connect().map_err(classify)?;
        }
        // `rq_unfit` says why no live feeder can run a job from what this process found
        // (fit::set_largest_live), told to the session as settings.
        let largest = super::fit::largest_live_known().map(|c| (c.cpus, c.mem, c.gpus));
        if largest.is_some() && largest != self.told_largest {
            let (cpus, mem, gpus) = largest.unwrap_or_default();
            let client = self.client.as_mut().expect("connected above");
            client
                .batch_execute(&format!(
                    "SET rq.largest_cpus = '{cpus}'; SET rq.largest_mem = '{mem}'; \
                     SET rq.largest_gpus = '{gpus}'"
                ))
                .map_err(|e| classify(e.into()))?;
            self.told_largest = largest;
        }
        let access = self.access;
        let key = self.lock_key();
        let client = self.client.as_mut().expect("connected above");
        // A reader sees one snapshot through all its statements (as under SQLite's shared
        // lock): list pages, status counts and export agree with each other. Read-only
        // transactions never fail to serialize at this level.
        let isolation = if read_only {
            ::postgres::IsolationLevel::RepeatableRead
        } else {
            ::postgres::IsolationLevel::ReadCommitted
        };
        let conn = if kind == Kind::Autocommit {
            Conn::Auto(client)
        } else {
            let tx = client
                .build_transaction()
                .read_only(read_only)
                .isolation_level(isolation)
                .start()
                .map_err(|e| classify(e.into()))?;
            Conn::Tx(tx)
        };
        let pg = PgTx::new(conn, &self.statements);
        let lock = match kind {
            Kind::Write => Some("SELECT pg_advisory_xact_lock(?)"),
            Kind::SharedWrite | Kind::Read => Some("SELECT pg_advisory_xact_lock_shared(?)"),
            Kind::FilesRead | Kind::FilesWrite | Kind::Autocommit => None,
        };
        if let Some(lock) = lock {
            pg.query(lock, &[&key], None).map_err(classify)?;
        }
        let mut settled_deps = super::settle::Settled::default();
        let carry_on = self.carry_on_dep_work;
        let value = {
            let tx = super::Tx::Postgres(&pg);
            let settled = |value: T| -> Result<T> {
                if !read_only
                    && !matches!(kind, Kind::FilesWrite | Kind::Autocommit)
                    && access == crate::store::Access::ReadWrite
                {
                    settled_deps = super::settle::settle(&tx, carry_on)?;
                }
                Ok(value)
            };
            body(&tx).and_then(settled)
        };
        let value = match value {
            Ok(value) => value,
            Err(e) => {
                // A failed statement may have left a prepared statement invalid (schema
                // changes); start the cache afresh.
                self.statements.borrow_mut().clear();
                return Err(classify(e));
            }
        };
        match pg.commit() {
            Ok(()) => {
                // Jobs became claimable without a submit: wake the idle feeders.
                if settled_deps.released {
                    if let Some(dir) = &self.doorbell_dir {
                        super::ring_doorbell(dir);
                    }
                    self.notify();
                }
                self.dep_work_left = settled_deps.more;
                Ok(value)
            }
            // PostgreSQL aborted it at commit (serialization): nothing was written.
            Err(e)
                if e.code()
                    .is_some_and(|c| c.code() == "40001" || c.code() == "40P01") =>
            {
                Err(Attempt::Retry(e.to_string()))
            }
            Err(e) => {
                self.client = None;
                Err(Attempt::Fail(Error::CommitUnknown {
                    path: self.location.display().into(),
                    why: e.to_string(),
                }))
            }
        }
    }
}

enum Attempt {
    Retry(String),
    Fail(Error),
}

/// What a transaction does, and so how it takes the queue's advisory lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Write,
    SharedWrite,
    Read,
    /// Job files only (rows no other writer touches): no advisory lock, so copying a
    /// large file to or from the database holds no other rq writer back.
    FilesRead,
    FilesWrite,
    /// Rows no other writer touches, each statement committing on its own: no
    /// transaction to begin and commit around it (two round trips fewer).
    Autocommit,
}

/// The objects of a queue's schema (kind, name) that rq's schema does not make: a
/// trigger, rule, function, table, view, sequence or index someone added.
fn foreign_objects(client: &mut ::postgres::Client, schema: &str) -> Result<Vec<(String, String)>> {
    let own = super::pg_sql::own_objects();
    let rows = client.query(
        "SELECT 'trigger', tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
             WHERE c.relnamespace = to_regnamespace($1) AND NOT t.tgisinternal \
         UNION ALL SELECT 'function', proname FROM pg_proc \
             WHERE pronamespace = to_regnamespace($1) \
         UNION ALL SELECT 'rule', rulename FROM pg_rules WHERE schemaname = $1 \
         UNION ALL SELECT CASE relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' \
                 WHEN 'v' THEN 'view' WHEN 'm' THEN 'view' WHEN 'S' THEN 'sequence' \
                 WHEN 'i' THEN 'index' WHEN 'I' THEN 'index' ELSE 'relation' END, relname \
             FROM pg_class WHERE relnamespace = to_regnamespace($1) \
               AND relkind IN ('r', 'p', 'v', 'm', 'S', 'i', 'I', 'f') \
         ORDER BY 1, 2",
        &[&schema],
    )?;
    Ok(rows
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
        .filter(|object| !own.contains(object))
        .collect())
}

/// A connection with rq's settings: bounded connect time, TCP keepalives (a server that
/// vanished in a partition is noticed), the application name in `pg_stat_activity`.
/// The session setting behind `end_stalled_transactions_after` (whole milliseconds, at
/// least one: zero would turn the limit off).
fn stalled_sql(limit: std::time::Duration) -> String {
    format!(
        "SET idle_in_transaction_session_timeout = {}",
        limit.as_millis().clamp(1, i32::MAX as u128)
    )
}

pub fn connect_client(url: &str) -> Result<::postgres::Client> {
    let mut config: ::postgres::Config = url.parse().map_err(|e: ::postgres::Error| {
        Error::usage(format!(
            "bad PostgreSQL connection string: {}",
            crate::secrets::redact(&e.to_string())
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    // A password kept out of the URL (which `ps` shows to everyone): PGPASSWORD, or the
    // user's password file, as libpq reads them.
    if config.get_password().is_none() {
        if let Some(password) = std::env::var_os("PGPASSWORD") {
            config.password(password.as_encoded_bytes());
        } else if let Some(password) = password_from_file(&config) {
            config.password(password);
        }
    }
    config
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(10))
        .application_name(&format!("rq {}", crate::host::name()));
    Ok(config.connect(::postgres::NoTls)?)
}

/// The password for this connection from `PGPASSFILE` or `~/.pgpass`, as libpq finds it:
/// the first line `host:port:database:user:password` matching (`*` matches anything, `\`
/// escapes `:` and `\`), a Unix socket counting as host `localhost`; a file that others
/// may read is ignored.
fn password_from_file(config: &::postgres::Config) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() || meta.mode() & 0o077 != 0 {
        return None;
    }
    password_in(&std::fs::read_to_string(&path).ok()?, config)
}

/// The password a `.pgpass` text gives this connection.
fn password_in(text: &str, config: &::postgres::Config) -> Option<String> {
    let host = match config.get_hosts().first() {
        Some(::postgres::config::Host::Tcp(name)) => name.clone(),
        _ => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    let dbname = config.get_dbname().unwrap_or(&user).to_string();
    let wanted = [host, port, dbname, user];
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let fields = pgpass_fields(line);
            (fields.len() == 5
                && fields[..4]
                    .iter()
                    .zip(&wanted)
                    .all(|(field, want)| field == "*" || field == want))
            .then(|| fields[4].clone())
        })
}

/// A `.pgpass` line's fields: split at unescaped `:`, escapes removed.
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field at least").push(next);
                }
            }
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("one field at least").push(c),
        }
    }
    fields
}

/// Create the queue's schema with its tables (fails when the queue exists).
pub fn create_queue(location: &Location) -> Result<()> {
    let mut client = connect_client(&location.url)?;
    let schema = location.schema();
    let mut tx = client.transaction()?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1",
            &[&schema],
        )?
        .is_some();
    if exists {
        return Err(Error::Conflict(format!(
            "{} already exists; pick another queue name (queue=NAME)",
            location.display()
        )));
    }
    tx.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\"; SET LOCAL search_path TO \"{schema}\";"
    ))?;
    tx.batch_execute(&super::pg_sql::create_sql())?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', $1), ('created', $2), ('rq_version', $3)",
        &[
            &super::pg_sql::SCHEMA_VERSION.to_string(),
            &crate::time::now(),
            &env!("CARGO_PKG_VERSION"),
        ],
    )?;
    tx.commit()?;
    Ok(())
}

/// Bring the queue's schema (first on the client's search path) to this rq's version, in
/// one transaction holding the queue's lock exclusively (so no rq writes meanwhile, and a
/// second process finds the work done when it gets the lock).
fn migrate(client: &mut ::postgres::Client, lock_key: i64) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])?;
    let found: i64 = tx
        .query_one(
            "SELECT CAST(value AS bigint) FROM meta WHERE key = 'schema_version'",
            &[],
        )?
        .get(0);
    let first = super::pg_sql::SCHEMA_VERSION - super::pg_sql::MIGRATIONS.len() as i64;
    for (i, sql) in super::pg_sql::MIGRATIONS.iter().enumerate() {
        if found <= first + i as i64 {
            tx.batch_execute(sql)?;
        }
    }
    tx.execute(
        "UPDATE meta SET value = $1 WHERE key = 'schema_version'",
        &[&super::pg_sql::SCHEMA_VERSION.to_string()],
    )?;
    tx.commit()?;
    Ok(())
}

/// Remove a queue from its database (its schema and everything in it): only for a queue
/// this process has just made and failed to fill (`export`).
pub fn drop_queue(location: &Location) -> Result<()> {
    let mut client = connect_client(&location.url)?;
    client.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
        location.schema()
    ))?;
    Ok(())
}

/// `rq Q execute` on PostgreSQL: the statements as one script; the rows of those that
/// return rows (as text, the simple query protocol's only form).
pub fn run_script(tx: &super::Tx<'_>, sql: &str) -> Result<Vec<crate::job::Row>> {
    let super::Tx::Postgres(pg) = tx else {
        unreachable!("run_script is for PostgreSQL transactions");
    };
    let messages = pg.simple_query(sql)?;
    let mut rows = Vec::new();
    for message in messages {
        if let ::postgres::SimpleQueryMessage::Row(row) = message {
            let columns = row
                .columns()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let cell = match row.get(i) {
                        None => crate::job::Cell::Null,
                        Some(text) => match text.parse::<i64>() {
                            Ok(n) => crate::job::Cell::Int(n),
                            Err(_) => crate::job::Cell::Text(text.to_string()),
                        },
                    };
                    (c.name().to_string(), cell)
                })
                .collect();
            rows.push(crate::job::Row { columns });
        }
    }
    Ok(rows)
}

/// A feeder's ear for the queue's NOTIFY (sent by every submit and by every write that
/// lets jobs out of `waiting`): a thread with a connection of its own that LISTENs and,
/// when a notification comes, notes it and writes a byte to the feeder's wake-up pipe, so
/// an idle feeder's nap ends at once (pick-up in milliseconds, at no cost to the server).
/// A lost connection is made again every few seconds; each new one counts as having heard
/// something, since a notification may have been missed meanwhile. The thread blocks only
/// itself: an unreachable server never holds the feeder up.
pub struct Listener {
    heard: std::sync::Arc<std::sync::atomic::AtomicBool>,
    waker: std::sync::Arc<std::sync::Mutex<Option<std::os::unix::net::UnixStream>>>,
}

impl Listener {
    pub fn start(location: &Location) -> Listener {
        use std::sync::atomic::Ordering;
        let heard = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waker = std::sync::Arc::new(std::sync::Mutex::new(
            None::<std::os::unix::net::UnixStream>,
        ));
        let (location, thread_heard, thread_waker) =
            (location.clone(), heard.clone(), waker.clone());
        let wake = move || {
            thread_heard.store(true, Ordering::SeqCst);
            let waker = thread_waker.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mut w) = waker.as_ref() {
                use std::io::Write;
                let _ = w.write(&[1]);
            }
        };
        // Without the thread (none could be made) the doorbell file and the full polls
        // still find new work.
        let _ = std::thread::Builder::new()
            .name("rq-listen".into())
            .spawn(move || {
                use ::postgres::fallible_iterator::FallibleIterator;
                let channel = location.schema();
                loop {
                    let client = connect_client(&location.url).ok().and_then(|mut c| {
                        c.batch_execute(&format!("LISTEN \"{channel}\""))
                            .ok()
                            .map(|_| c)
                    });
                    if let Some(mut client) = client {
                        wake();
                        let mut notifications = client.notifications();
                        let mut each = notifications.blocking_iter();
                        while let Ok(Some(_)) = each.next() {
                            wake();
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_secs(3));
                }
            });
        Listener { heard, waker }
    }

    /// Wake the feeder's nap through this (non-blocking) socket when a notification comes.
    pub fn wake_with(&self, waker: std::os::unix::net::UnixStream) {
        let _ = waker.set_nonblocking(true);
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker);
    }

    /// Did a notification arrive since the last call?
    pub fn heard(&mut self) -> bool {
        self.heard.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

/// Insert rows (`width` values each, in `columns` order) into `table` with one COPY, in
/// its text format: the fastest way PostgreSQL takes many rows.
/// Column names for a statement: `user`, a reserved word here, quoted.
pub fn column_list(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| if *c == "user" { "\"user\"" } else { c })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn copy_in(
    pg: &dyn PgConn,
    table: &str,
    columns: &str,
    values: &[&dyn super::ToSql],
    width: usize,
) -> Result<()> {
    let mut data = Vec::with_capacity(values.len() * 8);
    for row in values.chunks(width) {
        for (i, value) in row.iter().enumerate() {
            if i > 0 {
                data.push(b'\t');
            }
            match Bound::from_param(*value)?.0 {
                SqlValue::Null => data.extend_from_slice(b"\\N"),
                SqlValue::Integer(n) => data.extend_from_slice(n.to_string().as_bytes()),
                SqlValue::Real(f) => data.extend_from_slice(format!("{f:?}").as_bytes()),
                SqlValue::Text(t) => copy_escape(t.as_bytes(), &mut data),
                SqlValue::Blob(b) => copy_escape(&b, &mut data),
            }
        }
        data.push(b'\n');
    }
    pg.copy_in(&format!("COPY {table} ({columns}) FROM STDIN"), &data)?;
    Ok(())
}

fn copy_escape(text: &[u8], out: &mut Vec<u8>) {
    for &b in text {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_is_read_as_libpq_reads_it() {
        let text = "# comment\n\
                    db.example:5432:other:me:wrong\n\
                    db.example:5432:rq:me:pa\\:ss\\\\word\n\
                    *:*:*:me:fallback\n\
                    localhost:*:*:*:socket\n";
        let config = |url: &str| url.parse::<::postgres::Config>().unwrap();
        assert_eq!(
            password_in(text, &config("postgres://me@db.example/rq")).as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            password_in(text, &config("postgres://me@db.example:6000/rq")).as_deref(),
            Some("fallback")
        );
        assert_eq!(
            password_in(text, &config("postgres://you@%2Frun%2Fpostgresql/rq")).as_deref(),
            Some("socket")
        );
        assert_eq!(
            password_in(text, &config("postgres://you@db.example/rq")),
            None
        );
    }
}
