//! The job model: states, the fields of a job in their fixed output order, and the
//! values a field can hold.

use crate::error::{Error, Result};

/// Every field of the `jobs` table, in output order. The first 18 are the original rq's,
/// in its order; rq's additions follow.
pub const FIELDS: &[&str] = &[
    "jid",
    "priority",
    "state",
    "submitted",
    "started",
    "finished",
    "elapsed",
    "submitter",
    "runner",
    "stdin",
    "stdout",
    "stderr",
    "data",
    "pid",
    "exit_status",
    "tag",
    "restartable",
    "command",
    // rq additions
    "hosts",
    "cwd",
    "signal",
    "attempts",
    "claim",
    "feeder",
    "process",
    // schema version 2
    "timeout",
    "timed_out",
    "retries",
    "retry_delay",
    "retried",
    "not_before",
    "kill_signal",
    "reclaimed_by",
    "reclaimed_at",
    // schema version 4: workflows
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
    // schema version 5: resources
    "cpus",
    "mem",
    "gpus",
    "gpu_ids",
    // schema version 8: what the last run used
    "cpu_user",
    "cpu_system",
    "max_rss",
    // schema version 9 (PostgreSQL 11): the bytes the last run read and wrote
    "read_bytes",
    "write_bytes",
];

/// Fields holding JSON text (a list of jids, an environment), shown as YAML/JSON values.
pub const JSON_FIELDS: &[&str] = &["after", "after_any", "env"];

/// Fields holding 0/1 that are shown as booleans.
pub const BOOLEAN_FIELDS: &[&str] = &["restartable", "timed_out"];

pub fn is_field(name: &str) -> bool {
    FIELDS.contains(&name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Pending,
    Holding,
    Running,
    Finished,
    Dead,
    /// Waits for the jobs it was submitted `--after`: not in the claim path at all.
    Waiting,
    /// Will never run: a job it waited for failed, died or was deleted (see `reason`).
    Cancelled,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Pending,
        State::Holding,
        State::Running,
        State::Finished,
        State::Dead,
        State::Waiting,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Holding => "holding",
            State::Running => "running",
            State::Finished => "finished",
            State::Dead => "dead",
            State::Waiting => "waiting",
            State::Cancelled => "cancelled",
        }
    }

    /// A state named by any non-empty prefix of its name (`p`, `pend`, `pending`...).
    pub fn from_prefix(word: &str) -> Option<State> {
        let word = word.to_ascii_lowercase();
        if word.is_empty() {
            return None;
        }
        State::ALL
            .into_iter()
            .find(|state| state.as_str().starts_with(&word))
    }
}

/// One value of a result cell, as printed.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bool(bool),
}

impl Cell {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Cell::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Cell::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The value as plain text (for environment variables): NULL is empty.
    pub fn to_plain(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Int(i) => i.to_string(),
            Cell::Real(r) => r.to_string(),
            Cell::Text(t) => t.clone(),
            Cell::Bool(b) => b.to_string(),
        }
    }
}

/// A result row: column names with their values, in column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub columns: Vec<(String, Cell)>,
}

impl Row {
    /// A row of these named cells (booleans read as such).
    pub fn from_cells(names: &[String], cells: impl Iterator<Item = Cell>) -> Row {
        let columns = names
            .iter()
            .zip(cells)
            .map(|(name, cell)| match cell {
                Cell::Int(i) if BOOLEAN_FIELDS.contains(&name.as_str()) => {
                    (name.clone(), Cell::Bool(i != 0))
                }
                cell => (name.clone(), cell),
            })
            .collect();
        Row { columns }
    }

    pub fn get(&self, name: &str) -> &Cell {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
            .unwrap_or(&Cell::Null)
    }

    pub fn jid(&self) -> i64 {
        self.get("jid").as_int().unwrap_or(0)
    }
}

/// Parse a jid given by a user: `12` or `jid=12`.
pub fn parse_jid(word: &str) -> Option<i64> {
    let digits = word.strip_prefix("jid=").unwrap_or(word);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&j| j > 0)
}

/// The job table's headers that are not field names, and the field each shows: `-f host`
/// means where the job ran (as the table's `host` column), not `hosts` (where it may).
const SHOWN_AS: &[(&str, &str)] = &[
    ("host", "runner"),
    ("pri", "priority"),
    ("exit", "exit_status"),
];

/// Select the fields named by `--fields`: each token picks the field of that whole name
/// (or that a table header names: [`SHOWN_AS`]), else the fields it is a case-insensitive
/// prefix of; a token that picks nothing is an error.
pub fn select_fields(spec: &str, available: &[String]) -> Result<Vec<String>> {
    let mut picked = vec![false; available.len()];
    for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let token = token.to_ascii_lowercase();
        // A whole name picks that field only (`after`, not also `after_any`).
        let whole = |name: &str| {
            available
                .iter()
                .position(|n| n.to_ascii_lowercase() == name)
        };
        let header = SHOWN_AS
            .iter()
            .find(|(shown, _)| *shown == token)
            .and_then(|(_, field)| whole(field));
        if let Some(i) = whole(&token).or(header) {
            picked[i] = true;
            continue;
        }
        let mut any = false;
        for (i, name) in available.iter().enumerate() {
            if name.to_ascii_lowercase().starts_with(&token) {
                picked[i] = true;
                any = true;
            }
        }
        if !any {
            return Err(Error::usage(format!(
                "--fields: unknown field '{token}' (fields: {})",
                available.join(",")
            )));
        }
    }
    Ok(available
        .iter()
        .zip(picked)
        .filter(|(_, p)| *p)
        .map(|(n, _)| n.clone())
        .collect())
}

/// Like [`select_fields`], but in the order the tokens give (a table's `--fields`).
pub fn select_fields_in_order(spec: &str, available: &[String]) -> Result<Vec<String>> {
    let mut picked: Vec<String> = Vec::new();
    for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        for name in select_fields(token, available)? {
            if !picked.contains(&name) {
                picked.push(name);
            }
        }
    }
    Ok(picked)
}

/// The longest command rq accepts, in bytes as it is put into the job's environment
/// (`RQ_JOB` carries it JSON-escaped): the kernel passes no single argument or
/// environment string longer than 128 KiB (`MAX_ARG_STRLEN`), so a longer command could
/// only ever fail to start (exit 127).
pub const MAX_COMMAND_BYTES: usize = 120_000;

/// Why a command can never run, if it cannot.
pub fn command_problem(command: &str) -> Option<String> {
    if command.trim().is_empty() {
        return Some("the command is empty".into());
    }
    if command.contains('\0') {
        return Some("the command contains a NUL byte, which no program can be given".into());
    }
    // JSON escaping at most sextuples a byte (`\u001f`): only long commands need measuring.
    if command.len() * 6 + 2 <= MAX_COMMAND_BYTES {
        return None;
    }
    let escaped = serde_json::Value::String(command.to_string())
        .to_string()
        .len();
    if escaped > MAX_COMMAND_BYTES {
        return Some(format!(
            "the command is too long ({escaped} bytes as the job sees it; at most \
             {MAX_COMMAND_BYTES}): put it in a script and submit the script"
        ));
    }
    None
}

/// One row to insert; the columns all jobs of a submit share are passed apart.
pub struct NewJob {
    pub jid: Option<i64>,
    pub priority: i64,
    pub stdin: Option<String>,
    pub data: Option<String>,
    pub tag: Option<String>,
    pub restartable: bool,
    pub command: String,
    pub hosts: Option<String>,
    pub cwd: Option<String>,
    pub timeout: Option<f64>,
    pub retries: i64,
    pub retry_delay: Option<f64>,
    pub state: State,
    pub name: Option<String>,
    pub after: Option<String>,
    pub after_any: Option<String>,
    pub waiting_on: i64,
    pub reason: Option<String>,
    pub array_id: Option<i64>,
    pub array_index: Option<i64>,
    pub array_limit: Option<i64>,
    pub env: Option<String>,
    pub not_before: Option<String>,
    pub cpus: i64,
    pub mem: i64,
    pub gpus: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_prefixes() {
        assert_eq!(State::from_prefix("p"), Some(State::Pending));
        assert_eq!(State::from_prefix("FIN"), Some(State::Finished));
        assert_eq!(State::from_prefix("x"), None);
        assert_eq!(State::from_prefix(""), None);
    }

    #[test]
    fn jids() {
        assert_eq!(parse_jid("12"), Some(12));
        assert_eq!(parse_jid("jid=3"), Some(3));
        assert_eq!(parse_jid("0"), None);
        assert_eq!(parse_jid("-1"), None);
        assert_eq!(parse_jid("1a"), None);
    }

    #[test]
    fn field_selection_keeps_schema_order() {
        let all: Vec<String> = FIELDS.iter().map(|s| s.to_string()).collect();
        let got = select_fields("command,jid", &all).unwrap();
        assert_eq!(got, vec!["jid", "command"]);
        assert!(select_fields("nope", &all).is_err());
    }
}
