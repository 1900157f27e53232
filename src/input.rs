//! Job-list input: one command per line, or YAML/JSON (rq's own output or any list of
//! mappings with at least `command`); and jid lists for the modes that select jobs.

use std::io::{BufRead, Read};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::job::{self, State};

/// A job to submit, as read from input. `None` means "not given".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobSpec {
    pub command: String,
    pub priority: Option<i64>,
    pub tag: Option<Option<String>>,
    pub hosts: Option<Option<String>>,
    pub restartable: Option<bool>,
    pub stdin: Option<String>,
    pub data: Option<String>,
    pub cwd: Option<String>,
    /// Seconds before the job is sent TERM (then KILL).
    pub timeout: Option<f64>,
    pub retries: Option<i64>,
    pub retry_delay: Option<f64>,
    /// Its name in this job list: other jobs of the list may wait for it by name.
    pub name: Option<String>,
    /// Jobs that must finish with exit 0 before it runs (`after`), or just have ended
    /// (`after_any`).
    pub after: Vec<DepRef>,
    pub after_any: Vec<DepRef>,
    /// Environment variables set for it, on top of the feeder's environment.
    pub env: Option<std::collections::BTreeMap<String, String>>,
    /// Not run before this timestamp (`at:`, `--at`, `--in`).
    pub not_before: Option<String>,
    /// Its index when it is one of an array (`--array`, `--each-line`).
    pub array_index: Option<i64>,
    /// Its `jid` in rq's own output it was read from: jobs of the same list that wait for
    /// that jid wait for this copy.
    pub listed_jid: Option<i64>,
    /// What it needs of a host: CPUs, bytes of memory, GPUs.
    pub cpus: Option<i64>,
    pub mem: Option<i64>,
    pub gpus: Option<i64>,
}

/// A job waited for, as written in a job list or `--after`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DepRef {
    Jid(i64),
    /// Every job of an array (`array:ID`).
    Array(i64),
    /// A job of the same list, by its `name`.
    Name(String),
}

impl std::fmt::Display for DepRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DepRef::Jid(j) => write!(f, "{j}"),
            DepRef::Array(a) => write!(f, "array:{a}"),
            DepRef::Name(n) => write!(f, "{n}"),
        }
    }
}

/// `12`, `array:3` or a name (a word that is not a number).
fn dep_ref(word: &str) -> std::result::Result<DepRef, String> {
    let word = word.trim();
    if let Some(jid) = job::parse_jid(word) {
        return Ok(DepRef::Jid(jid));
    }
    if let Some(id) = word.strip_prefix("array:") {
        return job::parse_jid(id.trim())
            .map(DepRef::Array)
            .ok_or_else(|| format!("'{word}' is not an array (array:JID)"));
    }
    if word.is_empty() || word.starts_with('-') || word.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{word}' is neither a jid nor a job name"));
    }
    Ok(DepRef::Name(word.to_string()))
}

/// Jobs to wait for from text: `12,13`, `prepare`, `array:3` (comma or space separated).
pub fn parse_deps(text: &str) -> std::result::Result<Vec<DepRef>, String> {
    text.split([',', ' '])
        .filter(|w| !w.trim().is_empty())
        .map(dep_ref)
        .collect()
}

fn deps_of(key: &str, value: Value) -> std::result::Result<Vec<DepRef>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Number(n) => n
            .as_i64()
            .filter(|j| *j > 0)
            .map(|j| vec![DepRef::Jid(j)])
            .ok_or_else(|| format!("{key}: {n} is not a jid")),
        Value::String(s) => parse_deps(&s).map_err(|e| format!("{key}: {e}")),
        Value::Array(items) => {
            let mut deps = Vec::new();
            for item in items {
                deps.extend(deps_of(key, item)?);
            }
            Ok(deps)
        }
        other => Err(format!(
            "{key} must be jids or job names, found {}",
            describe(&other)
        )),
    }
}

/// A size in bytes: `1000000`, `512K`, `10M`, `4G`, `1T` (binary units; a trailing `B`
/// or `iB` is allowed: `4GB`, `4GiB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let text = text
        .strip_suffix("iB")
        .or_else(|| text.strip_suffix('B'))
        .or_else(|| text.strip_suffix('b'))
        .unwrap_or(text);
    let (number, scale) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&text[..i], 1 << 20),
        (i, 'g' | 'G') => (&text[..i], 1 << 30),
        (i, 't' | 'T') => (&text[..i], 1 << 40),
        _ => (text, 1),
    };
    let number = number.trim();
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(scale);
    }
    // 1.5G
    let n: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let bytes = n * scale as f64;
    (bytes < 9.0e18).then_some(bytes.round() as u64)
}

fn count_of(key: &str, value: &Value, min: i64) -> std::result::Result<Option<i64>, String> {
    let n = integer_of(key, value)?;
    match n {
        Some(n) if n < min || n > 100_000 => {
            Err(format!("{key} must be from {min} to 100000, not {n}"))
        }
        other => Ok(other),
    }
}

fn size_of(key: &str, value: &Value) -> std::result::Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| format!("{key} must be a size like 4G, not {n}")),
        Value::String(s) => parse_size(s)
            .and_then(|n| i64::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("{key} must be a size like 512M or 4G, not '{s}'")),
        other => Err(format!("{key} must be a size, found {}", describe(other))),
    }
}

/// `KEY=VALUE`: a name a shell would accept, and its value.
pub fn env_pair(text: &str) -> std::result::Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))?;
    check_env_name(key)?;
    Ok((key.to_string(), value.to_string()))
}

fn check_env_name(key: &str) -> std::result::Result<(), String> {
    let mut bytes = key.bytes();
    let good_start = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !good_start || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "'{key}' is not an environment variable name (letters, digits and _)"
        ));
    }
    Ok(())
}

fn env_of(
    value: Value,
) -> std::result::Result<Option<std::collections::BTreeMap<String, String>>, String> {
    let mut env = std::collections::BTreeMap::new();
    match value {
        Value::Null => return Ok(None),
        Value::Object(map) => {
            for (key, value) in map {
                check_env_name(&key)?;
                let value = match value {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    other => {
                        return Err(format!(
                            "env {key} must be text, found {}",
                            describe(&other)
                        ));
                    }
                };
                if value.contains('\0') {
                    return Err(format!("env {key} contains a NUL byte"));
                }
                // rq's listings hide the values of secret-looking variables: such a job
                // piped back in does not get the placeholder as its value.
                if value == crate::output::HIDDEN {
                    crate::note!(
                        "rq: env {key}: its value was hidden in the listing; the job gets the \
                         value given with --env {key}=..., or none"
                    );
                    continue;
                }
                env.insert(key, value);
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::String(s) => {
                        let (k, v) = env_pair(&s)?;
                        env.insert(k, v);
                    }
                    other => {
                        return Err(format!(
                            "env entries must be KEY=VALUE, found {}",
                            describe(&other)
                        ));
                    }
                }
            }
        }
        other => {
            return Err(format!(
                "env must be a mapping of names to values, found {}",
                describe(&other)
            ));
        }
    }
    Ok(Some(env))
}

/// `submit --array`: indices `1-1000`, `1-1000:2` (step), `3,5,8-10`, each optionally
/// ending in `%N` (at most N of the array run at once).
#[derive(Debug, Clone, PartialEq)]
pub struct ArraySpec {
    /// (first, last, step) ranges, in the order given.
    pub ranges: Vec<(i64, i64, i64)>,
    pub limit: Option<i64>,
}

/// The longest line rq reads in a job list or a list of jids: a job's command is at most
/// `job::MAX_COMMAND_BYTES` (120,000 bytes), and a YAML/JSON line holding one job, or a
/// compact JSON list of several, fits well within this.
pub const MAX_LIST_LINE: usize = 1 << 20;

/// A reader of a job list, an `--each-line` file or a list of jids that stops with a
/// clear error at the first NUL byte (binary input) or at a line longer than `limit`
/// (input without newlines): `submit - < /dev/zero` or `--each-line /dev/zero` fail at
/// once, in bounded memory, instead of spinning or growing without end.
pub struct LineGuard<R> {
    inner: R,
    what: String,
    limit: usize,
    line: usize,
    in_line: usize,
}

impl<R> LineGuard<R> {
    /// `what` names the input in errors ("standard input", a path).
    pub fn new(inner: R, what: impl Into<String>, limit: usize) -> LineGuard<R> {
        LineGuard {
            inner,
            what: what.into(),
            limit,
            line: 1,
            in_line: 0,
        }
    }

    fn check(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        for &b in bytes {
            match b {
                b'\n' => {
                    self.line += 1;
                    self.in_line = 0;
                }
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{}: line {} holds a NUL byte, which no command, item or jid can \
                             hold (binary input?); nothing was read from it",
                            self.what, self.line
                        ),
                    ));
                }
                _ => {
                    self.in_line += 1;
                    if self.in_line > self.limit {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "{}: line {} is longer than {} bytes (a job's command is at most {}); \
                                 nothing was read from it",
                                self.what,
                                self.line,
                                self.limit,
                                crate::job::MAX_COMMAND_BYTES
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for LineGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.check(&buf[..n])?;
        Ok(n)
    }
}

/// The error a `LineGuard` gave, as rq reports bad input (exit 1, one line).
pub fn guard_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::InvalidData {
        Error::input(e.to_string())
    } else {
        Error::Io {
            context: "cannot read the input".into(),
            source: e,
        }
    }
}

/// The most jobs one array may hold (a typo like `1-1000000000` is refused, not queued).
pub const MAX_ARRAY: i64 = 10_000_000;

impl ArraySpec {
    pub fn parse(text: &str) -> std::result::Result<ArraySpec, String> {
        let text = text.trim();
        let (list, limit) = match text.split_once('%') {
            Some((list, limit)) => {
                let n = limit
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        format!("--array: '%{limit}' must be a number of jobs (at least 1)")
                    })?;
                (list, Some(n))
            }
            None => (text, None),
        };
        let number = |w: &str| {
            w.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("--array: '{w}' is not an index (a whole number >= 0)"))
        };
        let mut ranges = Vec::new();
        let mut total = 0i64;
        for part in list.split(',').filter(|p| !p.trim().is_empty()) {
            let (span, step) = match part.split_once(':') {
                Some((span, step)) => {
                    let step = number(step)?;
                    if step == 0 {
                        return Err("--array: a step must be at least 1".into());
                    }
                    (span, step)
                }
                None => (part, 1),
            };
            let (first, last) = match span.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(span)?, number(span)?),
            };
            if last < first {
                return Err(format!("--array: '{span}' runs backwards"));
            }
            // Checked: `0-9223372036854775807` must be refused, not wrap around.
            total = ((last - first) / step)
                .checked_add(1)
                .and_then(|n| n.checked_add(total))
                .filter(|n| *n <= MAX_ARRAY)
                .ok_or_else(|| {
                    format!(
                        "--array: more than {MAX_ARRAY} jobs (the most one array may hold); \
                         nothing was submitted"
                    )
                })?;
            ranges.push((first, last, step));
        }
        if ranges.is_empty() {
            return Err("--array: no indices (e.g. 1-100, 1-100:2, 3,5,8-10, 1-1000%20)".into());
        }
        Ok(ArraySpec { ranges, limit })
    }

    /// Every index, in order.
    pub fn indices(&self) -> impl Iterator<Item = i64> + '_ {
        self.ranges
            .iter()
            .flat_map(|&(first, last, step)| (first..=last).step_by(step as usize))
    }
}

/// `{}` in a command replaced by `value` (`--subst`), shell-quoted unless it is a plain
/// word, so an item with spaces or quotes stays one argument.
pub fn substitute(command: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:,+@%=".contains(&b));
    let quoted = if plain {
        std::borrow::Cow::Borrowed(value)
    } else {
        std::borrow::Cow::Owned(shell_words::quote(value).into_owned())
    };
    command.replace("{}", &quoted)
}

/// A word naming jobs in a mode that takes jobs (see `rq help selections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Jid(i64),
    /// Every job of an array (`array:ID`, ID being the jid of its first job).
    Array(i64),
    /// Every job with this tag (`tag:NAME`).
    Tag(String),
    State(State),
    All,
}

/// True when the text is YAML or JSON rather than a plain list of lines.
pub fn is_structured(text: &str) -> bool {
    let Some(first) = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
    else {
        return false;
    };
    if first == "---" || first.starts_with("--- ") || first == "-" || first.starts_with("- ") {
        return true;
    }
    // JSON (or YAML flow) list of mappings; `[ -f x ] && ...` stays a shell command.
    let rest = first.strip_prefix('[').map(str::trim_start);
    matches!(rest, Some(r) if r.is_empty() || r.starts_with('{') || r.starts_with(']'))
        || first.starts_with('{')
}

/// Hand every item of YAML or JSON (one or more documents) to `each`, one at a time: a
/// top-level list is streamed item by item, a mapping is one item, an empty document
/// none. Memory does not grow with the input, so rq's own listing of millions of jobs
/// can be piped back in. Documents are split at their `---` and `...` lines, which YAML
/// forbids inside any content.
pub fn for_each_item(
    mut reader: impl BufRead,
    each: &mut dyn FnMut(Value) -> Result<()>,
) -> Result<()> {
    let mut pending = None;
    loop {
        let mut document = Document {
            inner: &mut reader,
            pending: &mut pending,
            line: Vec::new(),
            pos: 0,
            lines: 0,
            ended: false,
            error: None,
        };
        if !document.has_more()? {
            return Ok(());
        }
        let mut failure = None;
        // The whole stream is checked as it is read (memory stays bounded), so the
        // per-document budget only keeps its structural limits (depth, aliases).
        let options = serde_saphyr::options! {
            budget: serde_saphyr::budget! {
                max_reader_input_bytes: None,
                max_events: usize::MAX,
                max_nodes: usize::MAX,
                max_total_scalar_bytes: usize::MAX,
                max_documents: usize::MAX,
            },
        };
        let parsed = serde_saphyr::with_deserializer_from_reader_with_options(
            &mut document,
            options,
            |de| {
                serde::de::DeserializeSeed::deserialize(
                    ItemSink {
                        each: &mut *each,
                        failure: &mut failure,
                    },
                    de,
                )
            },
        );
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(e) = document.error.take() {
            return Err(Error::input(format!("cannot read the job list: {e}")));
        }
        parsed.map_err(|e| Error::input(first_line(&e.to_string())))?;
    }
}

/// One YAML document of a stream: its lines up to the next document start (`---`) or
/// after its end marker (`...`).
struct Document<'a, R> {
    inner: &'a mut R,
    /// A document-start line read ahead, which begins the next document.
    pending: &'a mut Option<Vec<u8>>,
    line: Vec<u8>,
    pos: usize,
    lines: usize,
    ended: bool,
    /// A read error, kept to report it as such (the parser would only see an end).
    error: Option<std::io::Error>,
}

impl<R: BufRead> Document<'_, R> {
    /// Load the next line of this document; false at its end.
    fn next_line(&mut self) -> std::io::Result<bool> {
        if self.ended {
            return Ok(false);
        }
        self.pos = 0;
        self.line.clear();
        if let Some(line) = self.pending.take() {
            self.line = line;
        } else if self.inner.read_until(b'\n', &mut self.line)? == 0 {
            self.ended = true;
            return Ok(false);
        }
        let marker = |m: &[u8]| {
            self.line.starts_with(m) && self.line.get(3).is_none_or(|c| c.is_ascii_whitespace())
        };
        if marker(b"---") && self.lines > 0 {
            *self.pending = Some(std::mem::take(&mut self.line));
            self.ended = true;
            return Ok(false);
        }
        if marker(b"...") {
            self.ended = true;
            self.pending.take();
        }
        self.lines += 1;
        Ok(true)
    }

    /// Whether anything but blank lines and comments is left in the stream; leaves the
    /// reader at the first such line.
    fn has_more(&mut self) -> Result<bool> {
        loop {
            if self.pending.is_some() {
                return Ok(true);
            }
            let mut line = Vec::new();
            let n = self
                .inner
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::input(format!("cannot read the job list: {e}")))?;
            if n == 0 {
                return Ok(false);
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if !text.is_empty() && !text.starts_with('#') && text != "..." {
                *self.pending = Some(line);
                return Ok(true);
            }
        }
    }
}

impl<R: BufRead> Read for Document<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.line.len() {
            match self.next_line() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    self.error = Some(e);
                    self.ended = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.line.len() - self.pos);
        buf[..n].copy_from_slice(&self.line[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Deserializes one document, handing its items on as they are parsed. An error of
/// `each` is kept in `failure` (the parser gets a stand-in to stop at).
struct ItemSink<'a> {
    each: &'a mut dyn FnMut(Value) -> Result<()>,
    failure: &'a mut Option<Error>,
}

impl ItemSink<'_> {
    fn give<E: serde::de::Error>(&mut self, item: Value) -> std::result::Result<(), E> {
        (self.each)(item).map_err(|e| {
            *self.failure = Some(e);
            E::custom("stopped")
        })
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ItemSink<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> std::result::Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ItemSink<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of jobs")
    }

    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        mut self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(item) = seq.next_element::<Value>()? {
            self.give(item)?;
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        mut self,
        map: A,
    ) -> std::result::Result<(), A::Error> {
        use serde::Deserialize;
        let item = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        self.give(item)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> std::result::Result<(), E> {
        Err(E::custom("expected a list of jobs, found a boolean"))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> std::result::Result<(), E> {
        Err(E::custom("expected a list of jobs, found a number"))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> std::result::Result<(), E> {
        Err(E::custom("expected a list of jobs, found a number"))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> std::result::Result<(), E> {
        Err(E::custom("expected a list of jobs, found a number"))
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> std::result::Result<(), E> {
        Err(E::custom("expected a list of jobs, found a string"))
    }
}

/// The first line of an error message, trimmed.
pub(crate) fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Jobs to submit from text: YAML/JSON records, or one command per line (blank lines and
/// lines starting with `#` skipped).
pub fn parse_jobs(text: &str) -> Result<Vec<JobSpec>> {
    let mut jobs = Vec::new();
    read_jobs(text.as_bytes(), &mut |job| {
        jobs.push(job);
        Ok(())
    })?;
    Ok(jobs)
}

/// Every job of a job list, in order, to `each`, reading as it goes: YAML/JSON records,
/// or one command per line (blank lines and lines starting with `#` skipped).
pub fn read_jobs(reader: impl BufRead, each: &mut dyn FnMut(JobSpec) -> Result<()>) -> Result<()> {
    let (first, reader) = peek_first_line(reader)?;
    if !is_structured(&first) {
        return for_each_line(reader, &mut |_, command| {
            each(JobSpec {
                command: command.to_string(),
                ..JobSpec::default()
            })
        });
    }
    let mut number = 0usize;
    for_each_item(reader, &mut |item| {
        number += 1;
        let job = job_from_value(item).map_err(|e| Error::input(format!("job {number}: {e}")))?;
        each(job)
    })
}

/// Whether a job list is YAML/JSON rather than one command per line.
pub fn is_structured_list(reader: impl BufRead) -> Result<bool> {
    let (first, _) = peek_first_line(reader)?;
    Ok(is_structured(&first))
}

/// Append a job to a spool of parsed jobs (one JSON object per line), so that a YAML list
/// is parsed once, outside the transaction that inserts it.
pub fn spool_job(out: &mut impl std::io::Write, job: &JobSpec) -> Result<()> {
    // serde writes `Some(None)` and `None` alike (null): the outer Option goes as a list.
    let wrap = |v: &Option<Option<String>>| v.as_ref().map(|inner| vec![inner.clone()]);
    let line = serde_json::json!({
        "command": job.command,
        "priority": job.priority,
        "tag": wrap(&job.tag),
        "hosts": wrap(&job.hosts),
        "restartable": job.restartable,
        "stdin": job.stdin,
        "data": job.data,
        "cwd": job.cwd,
        "timeout": job.timeout,
        "retries": job.retries,
        "retry_delay": job.retry_delay,
        "name": job.name,
        "after": job.after,
        "after_any": job.after_any,
        "env": job.env,
        "not_before": job.not_before,
        "array_index": job.array_index,
        "listed_jid": job.listed_jid,
        "cpus": job.cpus,
        "mem": job.mem,
        "gpus": job.gpus,
    });
    serde_json::to_writer(&mut *out, &line)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| Error::input(format!("cannot write the spool of parsed jobs: {e}")))
}

/// Every job of a spool written by [`spool_job`], in order.
pub fn read_spooled(
    reader: impl BufRead,
    each: &mut dyn FnMut(JobSpec) -> Result<()>,
) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Line {
        command: String,
        priority: Option<i64>,
        tag: Option<Vec<Option<String>>>,
        hosts: Option<Vec<Option<String>>>,
        restartable: Option<bool>,
        stdin: Option<String>,
        data: Option<String>,
        cwd: Option<String>,
        timeout: Option<f64>,
        retries: Option<i64>,
        retry_delay: Option<f64>,
        name: Option<String>,
        #[serde(default)]
        after: Vec<DepRef>,
        #[serde(default)]
        after_any: Vec<DepRef>,
        env: Option<std::collections::BTreeMap<String, String>>,
        not_before: Option<String>,
        array_index: Option<i64>,
        listed_jid: Option<i64>,
        cpus: Option<i64>,
        mem: Option<i64>,
        gpus: Option<i64>,
    }
    let unwrap = |v: Option<Vec<Option<String>>>| v.map(|list| list.into_iter().next().flatten());
    for line in reader.lines() {
        let line =
            line.map_err(|e| Error::input(format!("cannot read the spool of parsed jobs: {e}")))?;
        let job: Line = serde_json::from_str(&line)
            .map_err(|e| Error::input(format!("the spool of parsed jobs is damaged: {e}")))?;
        each(JobSpec {
            command: job.command,
            priority: job.priority,
            tag: unwrap(job.tag),
            hosts: unwrap(job.hosts),
            restartable: job.restartable,
            stdin: job.stdin,
            data: job.data,
            cwd: job.cwd,
            timeout: job.timeout,
            retries: job.retries,
            retry_delay: job.retry_delay,
            name: job.name,
            after: job.after,
            after_any: job.after_any,
            env: job.env,
            not_before: job.not_before,
            array_index: job.array_index,
            listed_jid: job.listed_jid,
            cpus: job.cpus,
            mem: job.mem,
            gpus: job.gpus,
        })?;
    }
    Ok(())
}

/// The first line that says something (not blank, not a comment), and a reader that
/// starts from the beginning again (without a byte-order mark, which editors on other
/// systems write and which is not part of the first job).
fn peek_first_line(mut reader: impl BufRead) -> Result<(String, impl BufRead)> {
    let mut head = Vec::new();
    let first = loop {
        let start = head.len();
        let n = reader
            .read_until(b'\n', &mut head)
            .map_err(|e| Error::input(format!("cannot read the input: {e}")))?;
        if start == 0 && head.starts_with("\u{feff}".as_bytes()) {
            head.drain(..3);
        }
        let line = String::from_utf8_lossy(&head[start..]).trim().to_string();
        if n == 0 || (!line.is_empty() && !line.starts_with('#')) {
            break line;
        }
    };
    Ok((first, std::io::Cursor::new(head).chain(reader)))
}

/// Each line that says something, trimmed, with its line number.
fn for_each_line(
    mut reader: impl BufRead,
    each: &mut dyn FnMut(usize, &str) -> Result<()>,
) -> Result<()> {
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        number += 1;
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::input(format!("cannot read the input: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| Error::input(format!("line {number} is not valid UTF-8 text")))?
            .trim();
        if !text.is_empty() && !text.starts_with('#') {
            each(number, text)?;
        }
    }
}

fn job_from_value(item: Value) -> std::result::Result<JobSpec, String> {
    let map = match item {
        Value::String(command) => {
            return non_empty_command(command).map(|command| JobSpec {
                command,
                ..JobSpec::default()
            });
        }
        Value::Object(map) => map,
        other => {
            return Err(format!(
                "expected a mapping with a command, found {}",
                describe(&other)
            ));
        }
    };
    let mut spec = JobSpec::default();
    let mut command = None;
    let mut runner = None;
    for (key, value) in map {
        match key.as_str() {
            "command" => command = Some(text_of(&key, value)?.ok_or("command is empty")?),
            "priority" => spec.priority = integer_of(&key, &value)?,
            "tag" => spec.tag = Some(text_of(&key, value)?),
            "hosts" => spec.hosts = Some(hosts_of(value)?),
            "runner" => runner = Some(hosts_of(value)?),
            "restartable" => spec.restartable = bool_of(&value)?,
            "stdin" => spec.stdin = text_of(&key, value)?,
            "data" => spec.data = text_of(&key, value)?,
            "cwd" => spec.cwd = text_of(&key, value)?,
            "timeout" => spec.timeout = duration_of(&key, &value)?,
            "retry_delay" => spec.retry_delay = duration_of(&key, &value)?,
            "name" => spec.name = text_of(&key, value)?.filter(|n| !n.trim().is_empty()),
            "after" => spec.after = deps_of(&key, value)?,
            "after_any" => spec.after_any = deps_of(&key, value)?,
            "env" => spec.env = env_of(value)?,
            "at" => {
                if let Some(text) = text_of(&key, value)? {
                    let at = crate::time::parse_start_time(&text, crate::time::now_ts())?;
                    spec.not_before = Some(crate::time::format(at));
                }
            }
            "not_before" => {
                if let Some(text) = text_of(&key, value)? {
                    let at = crate::time::parse(&text)
                        .ok_or_else(|| format!("not_before: '{text}' is not a timestamp"))?;
                    spec.not_before = Some(crate::time::format(at));
                }
            }
            "jid" => spec.listed_jid = integer_of(&key, &value)?.filter(|j| *j > 0),
            "cpus" => spec.cpus = count_of(&key, &value, 1)?,
            "gpus" => spec.gpus = count_of(&key, &value, 0)?,
            "mem" => spec.mem = size_of(&key, &value)?,
            "retries" => {
                spec.retries = integer_of(&key, &value)?;
                if spec.retries.is_some_and(|r| r < 0) {
                    return Err("retries cannot be negative".into());
                }
            }
            other if job::is_field(other) => {} // rq's own output: ignored
            other => return Err(format!("unknown field '{other}'")),
        }
    }
    // rq's own output carries `hosts` (the constraint) and `runner` (the host that ran
    // it): only hand-written input without `hosts` uses `runner` as the constraint.
    if spec.hosts.is_none() {
        spec.hosts = runner;
    }
    spec.command = non_empty_command(command.ok_or("no command")?)?;
    Ok(spec)
}

fn non_empty_command(command: String) -> std::result::Result<String, String> {
    if command.trim().is_empty() {
        Err("command is empty".into())
    } else {
        Ok(command)
    }
}

fn text_of(key: &str, value: Value) -> std::result::Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(format!("{key} must be text, found {}", describe(&other))),
    }
}

fn duration_of(key: &str, value: &Value) -> std::result::Result<Option<f64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_f64()
            .filter(|s| (0.0..=crate::time::MAX_DURATION_SECS).contains(s))
            .map(Some)
            .ok_or_else(|| format!("{key} must be {}, found {n}", crate::time::DURATION_FORMS)),
        Value::String(s) => crate::time::parse_duration(s)
            .map(Some)
            .ok_or_else(|| format!("{key} must be {}, not '{s}'", crate::time::DURATION_FORMS)),
        other => Err(format!(
            "{key} must be a duration, found {}",
            describe(other)
        )),
    }
}

fn integer_of(key: &str, value: &Value) -> std::result::Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{key} must be a whole number in range, found {n}")),
        Value::String(s) => parse_priority(s).map(Some),
        other => Err(format!(
            "{key} must be a whole number, found {}",
            describe(other)
        )),
    }
}

/// A priority given as text: any integer that fits in 64 bits.
pub fn parse_priority(text: &str) -> std::result::Result<i64, String> {
    text.trim()
        .parse::<i64>()
        .map_err(|_| format!("priority must be a whole number, not '{text}'"))
}

fn bool_of(value: &Value) -> std::result::Result<Option<bool>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Number(n) => Ok(Some(n.as_i64() != Some(0))),
        Value::String(s) => parse_bool(s).map(Some),
        other => Err(format!(
            "restartable must be true or false, found {}",
            describe(other)
        )),
    }
}

pub fn parse_bool(text: &str) -> std::result::Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" | "on" => Ok(true),
        "false" | "no" | "n" | "0" | "off" | "" => Ok(false),
        _ => Err(format!("expected true or false, not '{text}'")),
    }
}

fn hosts_of(value: Value) -> std::result::Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(normalize_hosts(&s)),
        Value::Array(list) => {
            let mut names = Vec::new();
            for item in list {
                match item {
                    Value::String(s) => names.push(s),
                    other => {
                        return Err(format!(
                            "host names must be text, found {}",
                            describe(&other)
                        ));
                    }
                }
            }
            Ok(normalize_hosts(&names.join(",")))
        }
        other => Err(format!(
            "runner must be host names, found {}",
            describe(&other)
        )),
    }
}

/// `a, b ,,c` -> `a,b,c`; empty -> None (any host).
pub fn normalize_hosts(text: &str) -> Option<String> {
    let names: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}

/// Targets from text: rq YAML/JSON (each record's `jid`), or lines holding a jid
/// (`12`, `jid=12`, `jid: 12`) or, where `states_allowed`, a state name or `all`.
pub fn parse_targets(text: &str, states_allowed: bool) -> Result<Vec<Target>> {
    read_targets(text.as_bytes(), states_allowed)
}

/// [`parse_targets`], reading as it goes (rq's listing of millions of jobs is not held).
pub fn read_targets(reader: impl BufRead, states_allowed: bool) -> Result<Vec<Target>> {
    let (first, reader) = peek_first_line(reader)?;
    let mut targets = Vec::new();
    if is_structured(&first) {
        let mut number = 0usize;
        for_each_item(reader, &mut |item| {
            number += 1;
            let jid = match &item {
                Value::Object(map) => map.get("jid").cloned().unwrap_or(Value::Null),
                other => other.clone(),
            };
            let jid = match jid {
                Value::Number(n) => n.as_i64().filter(|j| *j > 0),
                Value::String(s) => job::parse_jid(s.trim()),
                _ => None,
            };
            match jid {
                Some(j) => targets.push(Target::Jid(j)),
                None => return Err(Error::input(format!("item {number}: no valid jid"))),
            }
            Ok(())
        })?;
        return Ok(targets);
    }
    for_each_line(reader, &mut |number, line| {
        let word = line.strip_prefix("jid:").map(str::trim).unwrap_or(line);
        targets.push(
            parse_target_word(word, states_allowed)
                .map_err(|e| Error::input(format!("line {number}: {e}")))?,
        );
        Ok(())
    })?;
    Ok(targets)
}

/// One word naming jobs: a jid, a state (any prefix), or `all`/`a`.
pub fn parse_target_word(word: &str, states_allowed: bool) -> std::result::Result<Target, String> {
    if let Some(jid) = job::parse_jid(word) {
        return Ok(Target::Jid(jid));
    }
    if let Some(id) = word.strip_prefix("array:") {
        return job::parse_jid(id.trim())
            .map(Target::Array)
            .ok_or_else(|| format!("'{word}' is not an array (array:JID)"));
    }
    if let Some(tag) = word.strip_prefix("tag:") {
        if tag.trim().is_empty() {
            return Err(format!("'{word}' names no tag (tag:NAME)"));
        }
        return Ok(Target::Tag(tag.trim().to_string()));
    }
    if states_allowed {
        if word.eq_ignore_ascii_case("all") || word.eq_ignore_ascii_case("a") {
            return Ok(Target::All);
        }
        if let Some(state) = State::from_prefix(word) {
            return Ok(Target::State(state));
        }
        return Err(format!(
            "'{word}' is neither a jid, array:ID, tag:NAME nor a state (pending, holding, running, finished, dead, waiting, cancelled, all)"
        ));
    }
    Err(format!("'{word}' is not a jid (or array:ID, tag:NAME)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_mode_skips_blanks_and_comments() {
        let jobs = parse_jobs("echo a\n\n# note\n  echo b  \n").unwrap();
        let commands: Vec<_> = jobs.iter().map(|j| j.command.as_str()).collect();
        assert_eq!(commands, ["echo a", "echo b"]);
    }

    #[test]
    fn shell_tests_are_not_json() {
        assert!(!is_structured("[ -f x ] && echo yes"));
        assert!(is_structured("[{\"command\": \"x\"}]"));
        assert!(is_structured("---\n-\n command: x\n"));
        assert!(is_structured("- command: x\n"));
    }

    #[test]
    fn yaml_records() {
        let jobs =
            parse_jobs("- command: echo hi\n  priority: 5\n  runner: [a, b]\n- ls\n").unwrap();
        assert_eq!(jobs[0].priority, Some(5));
        assert_eq!(jobs[0].hosts, Some(Some("a,b".into())));
        assert_eq!(jobs[1].command, "ls");
        assert!(parse_jobs("- command: x\n  colour: red\n").is_err());
        assert!(parse_jobs("- priority: 1\n").is_err());
        assert!(parse_jobs("- command: x\n  priority: 1.5\n").is_err());
    }

    #[test]
    fn rq_output_keeps_constraint_not_last_runner() {
        let text = "---\n-\n jid: 3\n runner: node7\n hosts:\n command: x\n";
        let jobs = parse_jobs(text).unwrap();
        assert_eq!(jobs[0].hosts, Some(None));
    }

    #[test]
    fn targets() {
        let t = parse_targets("1\njid: 2\njid=3\n", false).unwrap();
        assert_eq!(t, [Target::Jid(1), Target::Jid(2), Target::Jid(3)]);
        assert!(parse_targets("pending\n", false).is_err());
        assert_eq!(
            parse_targets("p\n", true).unwrap(),
            [Target::State(State::Pending)]
        );
        let t = parse_targets("---\n-\n jid: 9\n command: x\n", false).unwrap();
        assert_eq!(t, [Target::Jid(9)]);
    }

    #[test]
    fn array_specs() {
        let a = ArraySpec::parse("1-5").unwrap();
        assert_eq!(a.indices().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(a.limit, None);
        let a = ArraySpec::parse("0-10:5,3,8-9%2").unwrap();
        assert_eq!(a.indices().collect::<Vec<_>>(), [0, 5, 10, 3, 8, 9]);
        assert_eq!(a.limit, Some(2));
        for bad in ["", "5-1", "1-10:0", "x", "1-10%0", "-3", "1-100000000"] {
            assert!(ArraySpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn absurd_array_ranges_are_refused_with_the_cap() {
        for absurd in [
            "0-9223372036854775807",
            "1-9223372036854775807:1",
            "0-9223372036854775806,0-9223372036854775806",
            "5000000-9999999,0-5000000",
            "0-99999999999999999999",
        ] {
            let err = ArraySpec::parse(absurd).unwrap_err();
            assert!(
                err.contains("10000000") || err.contains("not an index"),
                "{absurd}: {err}"
            );
        }
        assert!(ArraySpec::parse("0-9223372036854775807:9223372036854775807").is_ok());
    }

    #[test]
    fn substitution_quotes_what_is_not_a_plain_word() {
        assert_eq!(substitute("sim --seed {}", "42"), "sim --seed 42");
        assert_eq!(substitute("gzip {}", "a b.txt"), "gzip 'a b.txt'");
        assert_eq!(substitute("cat {} {}", "it's"), "cat 'it'\\''s' 'it'\\''s'");
        assert_eq!(substitute("echo", "x"), "echo");
    }

    #[test]
    fn waits_and_environments_in_job_lists() {
        let jobs = parse_jobs(
            "- {name: m, command: x, after: [1, prep, 'array:4'], after_any: '5,6', env: {A: 1, B: two}}\n",
        )
        .unwrap();
        assert_eq!(jobs[0].name.as_deref(), Some("m"));
        assert_eq!(
            jobs[0].after,
            [
                DepRef::Jid(1),
                DepRef::Name("prep".into()),
                DepRef::Array(4)
            ]
        );
        assert_eq!(jobs[0].after_any, [DepRef::Jid(5), DepRef::Jid(6)]);
        let env = jobs[0].env.as_ref().unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two");
        assert!(parse_jobs("- {command: x, env: {'1A': x}}\n").is_err());
        assert!(parse_jobs("- {command: x, after: [-1]}\n").is_err());
        assert!(env_pair("A=b=c").is_ok_and(|(k, v)| k == "A" && v == "b=c"));
        assert!(env_pair("A-B=1").is_err());
    }
}
