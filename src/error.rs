//! Typed errors. Every error rq reports is one line that says what went wrong and,
//! where there is one, what to do next.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user asked for something that cannot be done as asked (bad option, bad value, ...).
    #[error("{0}")]
    Usage(String),
    /// Job-list, YAML or JSON input that cannot be used.
    #[error("bad input: {0}")]
    Input(String),
    #[error("{path}: no such queue (create it with 'rq {path} create')")]
    NoQueue { path: PathBuf },
    #[error("{path}: not an rq queue ({why})")]
    NotAQueue { path: PathBuf, why: String },
    #[error(
        "{path}: the queue was made by a newer rq (schema version {found}, this rq knows up to {known}); upgrade rq"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("{path}: the queue database is damaged ({why}); run 'rq {path} recover'")]
    Corrupt { path: PathBuf, why: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A column read as what it does not hold (a bug, or a queue changed by hand).
    #[error("database: column {index}: {why}")]
    Column { index: usize, why: String },
    /// A query for one row found none (`store::Optional` makes it `None`).
    #[error("database: the query returned no rows")]
    NoRows,
    /// An error from a PostgreSQL server or the connection to it.
    #[error("postgresql: {}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    /// A COMMIT failed in a way that leaves its outcome unknown (an I/O error on a shared
    /// filesystem): the caller must read the queue back before acting on it.
    #[error(
        "the commit to {path} failed ({why}); it may or may not have been applied: check with 'rq list' before retrying"
    )]
    CommitUnknown { path: PathBuf, why: String },
    /// A feeder or lock-holder conflict, e.g. a second feeder on one host.
    #[error("{0}")]
    Conflict(String),
}

/// The server's own message (with its detail) rather than the client's "db error: ...".
fn postgres_message(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => err.to_string(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn usage(msg: impl Into<String>) -> Error {
        Error::Usage(msg.into())
    }
    pub fn input(msg: impl Into<String>) -> Error {
        Error::Input(msg.into())
    }
}

/// Attach a description of what was being done to an I/O error.
pub trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: what(),
            source,
        })
    }
}
