//! Output formats: rq's YAML (the original's layout, but valid YAML that round-trips) and
//! JSON. Everything is rendered to a string first, so no lock or transaction is ever held
//! while printing.

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::job::{Cell, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    /// A table for people: rendered by `human` (a table of a document is its YAML).
    Table,
}

impl Format {
    pub fn parse(text: &str) -> Result<Format> {
        match text.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Ok(Format::Yaml),
            "json" => Ok(Format::Json),
            "table" => Ok(Format::Table),
            other => Err(Error::usage(format!(
                "--format: unknown format '{other}' (use yaml, json or table)"
            ))),
        }
    }
}

/// Render job rows (or any result rows). YAML: `---`, then per row a `-` line and one
/// ` field: value` line per column. No rows: `[]` in both (an empty YAML document would
/// load as null, not as an empty list). (Tables for people are `human`'s.)
pub fn rows(rows: &[Row], fields: Option<&[String]>, format: Format) -> String {
    let Some(first) = rows.first() else {
        return "[]\n".into();
    };
    let names: Vec<String> = first.columns.iter().map(|(n, _)| n.clone()).collect();
    let writer = RowWriter::new(&names, fields, format);
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let cells = writer
            .columns
            .iter()
            .map(|(index, _, _)| CellRef::from(&row.columns[*index].1));
        writer.write_cells(i == 0, &mut out, cells);
    }
    writer.finish(rows.len(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// A result cell as written: borrowed, so rows can go from SQLite's cursor to the output
/// buffer without a copy.
#[derive(Debug, Clone)]
enum CellRef<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(std::borrow::Cow<'a, str>),
    Bool(bool),
}

impl<'a> From<&'a Cell> for CellRef<'a> {
    fn from(cell: &'a Cell) -> CellRef<'a> {
        match cell {
            Cell::Null => CellRef::Null,
            Cell::Int(i) => CellRef::Int(*i),
            Cell::Real(r) => CellRef::Real(*r),
            Cell::Text(t) => CellRef::Text(t.into()),
            Cell::Bool(b) => CellRef::Bool(*b),
        }
    }
}

/// Writes rows as rq's YAML or JSON into a byte buffer, one row at a time, so that a
/// listing of millions of jobs streams in bounded memory: the rows of one chunk are
/// written inside its read transaction (no I/O, nothing that blocks) and the buffer is
/// printed after the transaction ends. Also the one writer behind [`rows`], so chunked
/// and whole output are the same bytes.
pub struct RowWriter {
    format: Format,
    /// The kept columns: index in the result row, the key as written, and how its
    /// values are shown.
    columns: Vec<(usize, String, Shown)>,
}

/// How a column's values are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    AsIs,
    /// 0/1 as false/true.
    Bool,
    /// JSON text (a jid list, an environment) as a YAML/JSON value.
    Json,
}

impl RowWriter {
    /// A writer for result rows with these column names; `fields` keeps only those.
    /// A table is written as YAML here (tables need every row to size their columns).
    pub fn new(names: &[String], fields: Option<&[String]>, format: Format) -> RowWriter {
        let format = if format == Format::Json {
            Format::Json
        } else {
            Format::Yaml
        };
        let columns = names
            .iter()
            .enumerate()
            .filter(|(_, n)| fields.is_none_or(|f| f.iter().any(|x| x == *n)))
            .map(|(i, n)| {
                let shown = if crate::job::BOOLEAN_FIELDS.contains(&n.as_str()) {
                    Shown::Bool
                } else if crate::job::JSON_FIELDS.contains(&n.as_str()) {
                    Shown::Json
                } else {
                    Shown::AsIs
                };
                let key = if format == Format::Json {
                    let mut key = serde_json::to_string(n).unwrap_or_default();
                    key.insert_str(0, "    ");
                    key.push_str(": ");
                    key
                } else {
                    format!(" {}:", scalar(n))
                };
                (i, key, shown)
            })
            .collect();
        RowWriter { format, columns }
    }

    /// Append one row read from SQLite. `first`: it is the first row of the output.
    pub fn write_sql_row(
        &self,
        first: bool,
        out: &mut Vec<u8>,
        row: &crate::store::Cells<'_>,
    ) -> crate::error::Result<()> {
        use crate::store::ValueRef;
        // The columns come from the statement that produced the row, so each is there.
        let cells = self
            .columns
            .iter()
            .map(|(index, _, _)| match row.get_ref(*index) {
                Ok(ValueRef::Null) | Err(_) => CellRef::Null,
                Ok(ValueRef::Integer(i)) => CellRef::Int(i),
                Ok(ValueRef::Real(r)) => CellRef::Real(r),
                Ok(ValueRef::Text(t) | ValueRef::Blob(t)) => {
                    CellRef::Text(String::from_utf8_lossy(t))
                }
            });
        self.write_cells(first, out, cells);
        Ok(())
    }

    /// Append one row: the kept columns' cells, in order.
    fn write_cells<'c>(
        &self,
        first: bool,
        out: &mut Vec<u8>,
        cells: impl IntoIterator<Item = CellRef<'c>>,
    ) {
        let cells = self.columns.iter().zip(cells);
        match self.format {
            Format::Json => {
                out.extend_from_slice(if first { b"[\n  {" } else { b",\n  {" });
                if self.columns.is_empty() {
                    out.push(b'}');
                    return;
                }
                for (n, ((_, key, shown), cell)) in cells.enumerate() {
                    out.extend_from_slice(if n == 0 { b"\n" } else { b",\n" });
                    out.extend_from_slice(key.as_bytes());
                    match json_cell(&cell, *shown) {
                        Some(value) => {
                            let _ = serde_json::to_writer(&mut *out, &value);
                        }
                        None => write_json(out, bool_cell(cell, *shown)),
                    }
                }
                out.extend_from_slice(b"\n  }");
            }
            _ => {
                out.extend_from_slice(if first { b"---\n-\n" } else { b"-\n" });
                for ((_, key, shown), cell) in cells {
                    out.extend_from_slice(key.as_bytes());
                    if let Some(value) = json_cell(&cell, *shown) {
                        out.push(b' ');
                        out.extend_from_slice(yaml_flow(&value).as_bytes());
                        out.push(b'\n');
                        continue;
                    }
                    match bool_cell(cell, *shown) {
                        CellRef::Null => {}
                        value => {
                            out.push(b' ');
                            write_yaml(out, value);
                        }
                    }
                    out.push(b'\n');
                }
            }
        }
    }

    /// Close the output after `count` rows (none: an empty list, `[]`, in both formats).
    pub fn finish(&self, count: usize, out: &mut Vec<u8>) {
        match self.format {
            Format::Json => out.extend_from_slice(if count == 0 { b"[]\n" } else { b"\n]\n" }),
            _ if count == 0 => out.extend_from_slice(b"[]\n"),
            _ => {}
        }
    }
}

fn bool_cell(cell: CellRef<'_>, shown: Shown) -> CellRef<'_> {
    match cell {
        CellRef::Int(i) if shown == Shown::Bool => CellRef::Bool(i != 0),
        other => other,
    }
}

/// The value of a JSON column, with the values of secret-looking variables hidden
/// (`secrets::is_secret`: by name, or a value holding a password); None
/// for other columns, NULL, and text that is not JSON (shown as text).
fn json_cell(cell: &CellRef<'_>, shown: Shown) -> Option<Value> {
    let CellRef::Text(text) = cell else {
        return None;
    };
    if shown != Shown::Json {
        return None;
    }
    let mut value: Value = serde_json::from_str(text).ok()?;
    if let Value::Object(env) = &mut value {
        for (name, value) in env.iter_mut() {
            let text = match value {
                Value::String(text) => text.as_str(),
                _ => "",
            };
            if crate::secrets::is_secret(name, text) {
                *value = Value::from(HIDDEN);
            }
        }
    }
    Some(value)
}

/// A JSON column's text as people see it: values of secret-looking variables hidden
/// (tables, the dashboard); text that is not JSON as it is.
pub fn json_for_people(text: &str) -> String {
    match json_cell(&CellRef::Text(text.into()), Shown::Json) {
        Some(value) => value.to_string(),
        None => text.to_string(),
    }
}

/// What rq shows instead of the value of a secret-looking variable (see `secrets`).
pub use crate::secrets::HIDDEN;

fn write_json(out: &mut Vec<u8>, cell: CellRef<'_>) {
    let _ = match cell {
        CellRef::Null => serde_json::to_writer(&mut *out, &()),
        CellRef::Int(i) => serde_json::to_writer(&mut *out, &i),
        CellRef::Real(r) if r.is_finite() => serde_json::to_writer(&mut *out, &to_millis(r)),
        CellRef::Real(_) => serde_json::to_writer(&mut *out, &()),
        CellRef::Text(t) => serde_json::to_writer(&mut *out, t.as_ref()),
        CellRef::Bool(b) => serde_json::to_writer(&mut *out, &b),
    };
}

fn write_yaml(out: &mut Vec<u8>, cell: CellRef<'_>) {
    match cell {
        CellRef::Null => out.push(b'~'),
        CellRef::Int(i) => {
            let _ = write!(out, "{i}");
        }
        CellRef::Real(r) => out.extend_from_slice(real(r).as_bytes()),
        CellRef::Text(t) => {
            if plain_is_safe(&t) {
                out.extend_from_slice(t.as_bytes());
            } else {
                out.extend_from_slice(double_quoted(&t).as_bytes());
            }
        }
        CellRef::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
    }
}

pub fn cell_json(cell: &Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Int(i) => Value::from(*i),
        Cell::Real(r) => {
            serde_json::Number::from_f64(to_millis(*r)).map_or(Value::Null, Value::Number)
        }
        Cell::Text(t) => Value::from(t.as_str()),
        Cell::Bool(b) => Value::from(*b),
    }
}

/// Seconds to the millisecond: rq measures no finer, and 1.7160269559999999 is noise.
fn to_millis(r: f64) -> f64 {
    (r * 1000.0).round() / 1000.0
}

fn real(r: f64) -> String {
    if r.is_finite() {
        let text = format!("{}", to_millis(r));
        if text.contains(['.', 'e', 'E']) {
            text
        } else {
            format!("{text}.0")
        }
    } else {
        "~".into()
    }
}

/// Render a value (status report, created paths, settings) as a document.
pub fn value(value: &Value, format: Format) -> String {
    match format {
        // A table of a single document is its YAML.
        Format::Table => self::value(value, Format::Yaml),
        Format::Json => {
            let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
            text.push('\n');
            text
        }
        Format::Yaml => {
            let mut out = String::from("---\n");
            match value {
                Value::Object(map) if !map.is_empty() => yaml_block(&mut out, value, 0),
                Value::Array(list) if !list.is_empty() => yaml_block(&mut out, value, 0),
                _ => {
                    out.push_str(&yaml_inline(value));
                    out.push('\n');
                }
            }
            out
        }
    }
}

/// A value on one line in YAML's flow style: `[12, 13]`, `{STAGE: merge, N: "1,2"}`.
fn yaml_flow(value: &Value) -> String {
    let text = |s: &str| {
        let plain = scalar(s);
        if plain == s && !s.contains([',', '[', ']', '{', '}', '#']) {
            plain
        } else {
            double_quoted(s)
        }
    };
    match value {
        Value::String(s) => text(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(yaml_flow).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", text(k), yaml_flow(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        other => yaml_inline(other),
    }
}

fn yaml_inline(value: &Value) -> String {
    match value {
        Value::Null => "~".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => real(f),
            _ => n.to_string(),
        },
        Value::String(s) => scalar(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn is_collection(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(list) => !list.is_empty(),
        _ => false,
    }
}

fn yaml_block(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                if is_collection(item) {
                    let _ = writeln!(out, "{pad}{}:", scalar(key));
                    yaml_block(out, item, indent + 2);
                } else {
                    let _ = writeln!(out, "{pad}{}: {}", scalar(key), yaml_inline(item));
                }
            }
        }
        Value::Array(list) => {
            for item in list {
                if is_collection(item) {
                    let _ = writeln!(out, "{pad}-");
                    yaml_block(out, item, indent + 2);
                } else {
                    let _ = writeln!(out, "{pad}- {}", yaml_inline(item));
                }
            }
        }
        _ => {
            let _ = writeln!(out, "{pad}{}", yaml_inline(value));
        }
    }
}

/// A string as a YAML scalar: plain when that reads back as the same string, otherwise
/// double-quoted.
pub fn scalar(text: &str) -> String {
    if plain_is_safe(text) {
        text.to_string()
    } else {
        double_quoted(text)
    }
}

/// A YAML double-quoted scalar that any YAML 1.1 or 1.2 parser reads back as exactly
/// `text`: besides `"` and `\`, every character YAML does not allow in a stream (C0
/// and C1 controls, DEL) or treats as a line break (NEL, U+2028, U+2029), the BOM and
/// the non-characters U+FFFE/U+FFFF are escaped. (JSON's escaping misses DEL, C1 and
/// the Unicode line breaks.)
fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_rq_timestamp(text: &str) -> bool {
    // The shape first (cheap, and every listed job has three of these), then the calendar.
    let shape = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
    text.len() == shape.len()
        && text.bytes().zip(shape).all(|(c, s)| match s {
            b'd' => c.is_ascii_digit(),
            s => c == *s,
        })
        && crate::time::parse(text).is_some()
}

fn plain_is_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    if first.is_whitespace() || text.chars().next_back().is_some_and(char::is_whitespace) {
        return false;
    }
    if matches!(
        first,
        '-' | '?'
            | ':'
            | ','
            | '['
            | ']'
            | '{'
            | '}'
            | '#'
            | '&'
            | '*'
            | '!'
            | '|'
            | '>'
            | '\''
            | '"'
            | '%'
            | '@'
            | '`'
    ) || text.ends_with(':')
    {
        return false;
    }
    // One pass over the bytes (this runs for every text cell of a listing): `: ` and ` #`
    // would start a mapping or a comment, and controls must be escaped.
    let mut previous = 0u8;
    for &byte in text.as_bytes() {
        match (previous, byte) {
            (b':', b' ') | (b' ', b'#') => return false,
            (_, 0..=0x1f | 0x7f) => return false,
            _ => {}
        }
        previous = byte;
    }
    if !text.is_ascii()
        && text
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}'))
    {
        return false;
    }
    let special = [
        "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n", "=", "<<",
    ];
    let starts_with = |prefix: &str| {
        text.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    if (text.len() <= 5 && special.iter().any(|word| text.eq_ignore_ascii_case(word)))
        || starts_with(".inf")
        || starts_with(".nan")
    {
        return false;
    }
    // Anything that might read as a number, date or time (YAML 1.1 or 1.2) is quoted,
    // except rq's own timestamps, which are meant to read as timestamps.
    if (first.is_ascii_digit() || first == '+' || first == '.')
        && !text.contains(char::is_whitespace)
        && !is_rq_timestamp(text)
    {
        return false;
    }
    true
}

/// Write `text` to standard output now. A closed pipe is an `Io` error of kind
/// `BrokenPipe`, which the binary turns into a quiet exit (never a panic, as `print!` is).
pub fn to_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .context(|| "cannot write to standard output".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_print_to_the_millisecond() {
        assert_eq!(real(1.7160269559999999), "1.716");
        assert_eq!(real(91.179507759), "91.18");
        assert_eq!(real(5400.0), "5400.0");
        assert_eq!(cell_json(&Cell::Real(0.1 + 0.2)).to_string(), "0.3");
    }

    #[test]
    fn scalars_that_need_quotes_get_them() {
        assert_eq!(scalar("echo hi"), "echo hi");
        assert_eq!(scalar("42"), "\"42\"");
        assert_eq!(scalar("true"), "\"true\"");
        assert_eq!(scalar("a: b"), "\"a: b\"");
        assert_eq!(scalar("line\nbreak"), "\"line\\nbreak\"");
        assert_eq!(scalar("- x"), "\"- x\"");
        assert_eq!(scalar(""), "\"\"");
        assert_eq!(scalar(" x"), "\" x\"");
        assert_eq!(
            scalar("2026-11-27T21:05:03.123456Z"),
            "2026-11-27T21:05:03.123456Z"
        );
    }

    #[test]
    fn yaml_rows_round_trip_through_a_parser() {
        let hostile = [
            "echo 'a: b' # not a comment",
            "42",
            "null",
            "x\ny\ttab \u{1}",
            "[ -f x ] && echo {a}",
            "ünïcödé ✓",
            "- dash",
            "\"quoted\"",
        ];
        for text in hostile {
            let row = Row {
                columns: vec![
                    ("jid".into(), Cell::Int(1)),
                    ("command".into(), Cell::Text(text.into())),
                    ("tag".into(), Cell::Null),
                ],
            };
            let yaml = rows(&[row], None, Format::Yaml);
            let parsed: Vec<serde_json::Map<String, Value>> =
                serde_saphyr::from_str(&yaml).unwrap();
            assert_eq!(parsed[0]["command"], Value::from(text), "{yaml}");
            assert_eq!(parsed[0]["tag"], Value::Null);
        }
    }

    /// Every character YAML treats specially inside a stream, in one command.
    fn every_awkward_character() -> String {
        let mut text: String = (0u32..=0xff).filter_map(char::from_u32).collect();
        text.push_str("\u{2028}\u{2029}\u{feff}\u{fffe}\u{ffff}\u{d7ff}\u{e000}✓🦀 end");
        text
    }

    #[test]
    fn control_and_line_break_characters_round_trip() {
        let text = every_awkward_character();
        let quoted = scalar(&text);
        assert!(
            !quoted
                .chars()
                .any(|c| c.is_control() || ('\u{2028}'..='\u{2029}').contains(&c)),
            "{quoted:?}"
        );
        let back: String = serde_saphyr::from_str(&quoted).unwrap();
        assert_eq!(back, text);
        for c in ['\u{7f}', '\u{85}', '\u{9f}', '\u{2028}', '\u{feff}'] {
            let one = format!("a{c}b");
            let back: String = serde_saphyr::from_str(&scalar(&one)).unwrap();
            assert_eq!(back, one, "{c:?}");
        }
    }

    /// PyYAML is the strictest YAML 1.1 reader around: when this machine has it, it must
    /// read the same string back (a fresh machine may not: then this says so and passes).
    #[test]
    fn pyyaml_reads_back_the_exact_string() {
        use std::io::Write as _;
        let text = every_awkward_character();
        let doc = format!("- command: {}\n", scalar(&text));
        let child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())[0]['command']))",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("skipped: no python3 on this machine");
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(doc.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'yaml'") {
            eprintln!("skipped: python3 has no yaml module");
            return;
        }
        assert!(out.status.success(), "{err}");
        let back: String = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(back, text);
    }
}
