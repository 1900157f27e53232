//! rq: a zero-admin job queue for machines that share a directory.
//!
//! One module per concept, in layers, each using only those below it
//! (`tests/layering.rs` checks it):
//! - infrastructure: [`error`], [`time`], [`host`], [`process`], [`cgroup`], [`secrets`],
//!   [`fsguard`], [`beats`] (heartbeat files), [`lock`]; and the job model, [`job`];
//! - [`store`]: the two stores, their transaction rules, the named operations each writes
//!   in its own SQL, the values that cross the boundary (no driver type leaves it), the
//!   dependency settling every write does, and the repair of a damaged SQLite file;
//! - the protocol: [`claims`] (the claim protocol), [`deps`] (jobs waiting for jobs),
//!   [`journal`] (a feeder's start journal), [`liveness`], [`input`] (job lists, YAML/JSON
//!   in), [`output`] (YAML/JSON out), [`query`] (the query language);
//! - [`queue`] (the data modes), [`feeder`] and [`runner`] (running jobs), [`control`]
//!   (feeder daemons), [`admin`] (snapshot, backup, rotate, recover), [`export`];
//!   [`human`], [`overview`] and [`top`] (what people see on a terminal);
//! - [`cli`] (the command line) and [`serve`] (the dashboard).
//!
//! ARCHITECTURE.md has the whole picture.

/// A line (or, with `note!(inline ...)`, text) on stderr for a person. Never panics:
/// a closed or broken stderr loses the note, nothing else (`eprintln!` would panic).
#[macro_export]
macro_rules! note {
    (inline $($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod error;
pub mod job;
pub mod output;
pub mod store;
pub mod time;
pub mod top;

pub use error::{Error, Result};
pub mod admin;
pub mod beats;
pub mod cgroup;
pub mod claims;
pub mod cli;
pub mod control;
pub mod cron;
pub mod deps;
pub mod export;
pub mod feeder;
pub mod fsguard;
pub mod host;
pub mod human;
pub mod input;
pub mod journal;
pub mod liveness;
pub mod lock;
pub mod log;
pub mod metrics;
pub mod overview;
pub mod process;
pub mod query;
pub mod queue;
pub mod runner;
pub mod secrets;
pub mod serve;
pub mod usage;
pub mod watchdog;
