//! What people see on a terminal: short durations, local times, colour, and tables cut
//! to the terminal's width. The machine formats (YAML, JSON), which pipes get, are in
//! `output` and never change with the terminal.

use std::fmt::Write as _;

use comfy_table::{Cell as TableCell, Color, ColumnConstraint, ContentArrangement, Table, Width};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::error::{Error, Result};
use crate::job::{Cell, Row, State};
use crate::overview::{Feeder, Summary};

/// `--color`: when to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set or `TERM=dumb`.
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    pub fn parse(text: &str) -> Result<ColorChoice> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(ColorChoice::Auto),
            "always" | "yes" | "force" => Ok(ColorChoice::Always),
            "never" | "no" | "none" => Ok(ColorChoice::Never),
            other => Err(Error::usage(format!(
                "--color: '{other}' is not auto, always or never"
            ))),
        }
    }
}

/// Where human output goes: whether to colour it, how wide it may be, and the time and
/// zone that times are shown against.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub color: bool,
    /// Columns; None: no limit (a table piped to a file keeps whole lines).
    pub width: Option<usize>,
    pub now: Timestamp,
    pub zone: TimeZone,
}

impl Terminal {
    /// For standard output: its width when it is a terminal (else `COLUMNS`, else none),
    /// colour as `choice` and the environment say.
    pub fn for_stdout(choice: ColorChoice) -> Terminal {
        use std::io::IsTerminal;
        let tty = std::io::stdout().is_terminal();
        let width = if tty {
            rustix::termios::tcgetwinsize(std::io::stdout())
                .ok()
                .map(|size| size.ws_col as usize)
                .filter(|&w| w > 0)
        } else {
            None
        }
        .or_else(|| {
            std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.trim().parse().ok())
        });
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => tty && colour_allowed(),
        };
        Terminal {
            color,
            width,
            now: crate::time::now_ts(),
            zone: TimeZone::system(),
        }
    }

    /// A terminal of a given width, without colour (for tests and `top`).
    pub fn plain(width: Option<usize>) -> Terminal {
        Terminal {
            color: false,
            width,
            now: crate::time::now_ts(),
            zone: TimeZone::system(),
        }
    }

    /// A timestamp as a person reads it: `14:03:27` today, `Nov 28 14:03` this year,
    /// `2025-11-28` before, in local time.
    pub fn time(&self, ts: Timestamp) -> String {
        let local = ts.to_zoned_datetime(self.zone.clone());
        let today = self.now.to_zoned_datetime(self.zone.clone());
        if local.date() == today.date() {
            local.strftime("%H:%M:%S").to_string()
        } else if local.year() == today.year() {
            local.strftime("%b %d %H:%M").to_string()
        } else {
            local.strftime("%Y-%m-%d").to_string()
        }
    }

    /// A stored timestamp (text) shown with [`Terminal::time`]; other text as it is.
    pub fn time_text(&self, text: &str) -> String {
        crate::time::parse(text).map_or_else(|| text.to_string(), |ts| self.time(ts))
    }

    /// Seconds from a stored timestamp to now.
    pub fn since(&self, text: &str) -> Option<f64> {
        crate::time::parse(text).map(|ts| crate::time::seconds_between(ts, self.now))
    }

    /// Wrap `text` in an ANSI colour when colouring.
    pub fn paint(&self, text: &str, color: Option<Color>) -> String {
        match (self.color, color) {
            (true, Some(c)) => {
                use crossterm::style::Stylize;
                format!("{}", text.with(c))
            }
            _ => text.to_string(),
        }
    }
}

/// `NO_COLOR` (any non-empty value) and `TERM=dumb` turn colour off.
pub fn colour_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

// comfy-table and ratatui share crossterm 0.29; rq takes it through ratatui.
use ratatui::crossterm;

// Durations are written the same everywhere (the store's messages too).
pub use crate::time::duration_text as duration;

/// Bytes as `512M`, `4.0G`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 10.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// The colour of a job state (and, for a finished job, of its result).
pub fn state_color(state: &str, failed: bool) -> Option<Color> {
    match state {
        "running" => Some(Color::Cyan),
        "finished" if failed => Some(Color::Red),
        "finished" => Some(Color::Green),
        "dead" => Some(Color::Red),
        "holding" => Some(Color::Yellow),
        "waiting" => Some(Color::Magenta),
        "cancelled" => Some(Color::DarkGrey),
        _ => None,
    }
}

/// Fields whose text is a timestamp.
const TIME_FIELDS: &[&str] = &[
    "submitted",
    "started",
    "finished",
    "not_before",
    "reclaimed_at",
];
/// Fields holding seconds.
const SECONDS_FIELDS: &[&str] = &["elapsed", "timeout", "retry_delay"];

/// A column of the job table.
#[derive(Debug, Clone, PartialEq)]
enum Column {
    Jid,
    State,
    Priority,
    Tag,
    Host,
    /// When it started, or how long ago it was submitted.
    StartedAge,
    /// How long it ran, or has been running.
    Elapsed,
    /// Exit status, or the signal that ended it.
    Exit,
    Command,
    /// Any other field, by name.
    Field(String),
}

impl Column {
    fn header(&self) -> &str {
        match self {
            Column::Jid => "jid",
            Column::State => "state",
            Column::Priority => "pri",
            Column::Tag => "tag",
            Column::Host => "host",
            Column::StartedAge => "started/age",
            Column::Elapsed => "elapsed",
            Column::Exit => "exit",
            Column::Command => "command",
            Column::Field(name) => name,
        }
    }

    /// Columns that may be cut (with `…`) to fit the width; the others keep their width.
    fn flexible(&self) -> bool {
        matches!(
            self,
            Column::Tag | Column::Host | Column::Command | Column::Field(_)
        )
    }

    fn cell(&self, row: &Row, term: &Terminal) -> (String, Option<Color>) {
        let text = |name: &str| row.get(name).as_text().map(str::to_string);
        let state = text("state").unwrap_or_default();
        let exit = row.get("exit_status").as_int();
        let signal = text("signal");
        let failed = exit.is_some_and(|e| e != 0) || signal.is_some();
        let none = || ("-".to_string(), None);
        match self {
            Column::Jid => (row.jid().to_string(), None),
            Column::State => {
                let color = state_color(&state, failed);
                (state, color)
            }
            Column::Priority => (row.get("priority").to_plain(), None),
            Column::Tag => text("tag").map_or_else(none, |t| (one_line(&t), None)),
            Column::Host => text("runner").map_or_else(none, |t| (one_line(&t), None)),
            Column::StartedAge => match (text("started"), text("submitted")) {
                (Some(started), _) => (term.time_text(&started), None),
                (None, Some(submitted)) => term
                    .since(&submitted)
                    .map_or_else(none, |s| (format!("{} ago", duration(s)), None)),
                _ => none(),
            },
            Column::Elapsed => match (row.get("elapsed"), text("started")) {
                (Cell::Real(e), _) => (duration(*e), None),
                (Cell::Int(e), _) => (duration(*e as f64), None),
                (_, Some(started)) if state == "running" => term
                    .since(&started)
                    .map_or_else(none, |s| (duration(s), Some(Color::Cyan))),
                _ => none(),
            },
            Column::Exit => match (exit, signal) {
                (_, Some(sig)) => (sig, Some(Color::Red)),
                (Some(0), None) => ("0".into(), None),
                (Some(e), None) => (e.to_string(), Some(Color::Red)),
                (None, None) => none(),
            },
            Column::Command => (one_line(&text("command").unwrap_or_default()), None),
            Column::Field(name) => {
                let cell = row.get(name);
                let shown = match cell {
                    Cell::Null => "-".to_string(),
                    Cell::Text(t) if TIME_FIELDS.contains(&name.as_str()) => term.time_text(t),
                    Cell::Real(r) if SECONDS_FIELDS.contains(&name.as_str()) => duration(*r),
                    Cell::Int(i) if SECONDS_FIELDS.contains(&name.as_str()) => duration(*i as f64),
                    Cell::Int(i) if name == "mem" => bytes(*i),
                    Cell::Text(t) if crate::job::JSON_FIELDS.contains(&name.as_str()) => {
                        one_line(&crate::output::json_for_people(t))
                    }
                    Cell::Real(r) => format!("{}", (r * 1000.0).round() / 1000.0),
                    Cell::Int(i) if crate::job::BOOLEAN_FIELDS.contains(&name.as_str()) => {
                        (*i != 0).to_string()
                    }
                    other => one_line(&other.to_plain()),
                };
                let color = match name.as_str() {
                    "state" => state_color(&state, failed),
                    "exit_status" if failed => Some(Color::Red),
                    _ => None,
                };
                (shown, color)
            }
        }
    }
}

/// Text on one line: line breaks and other controls shown escaped.
fn one_line(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| match c {
            '\n' => "\\n".to_string(),
            '\t' => " ".to_string(),
            c if c.is_control() => format!("\\x{:02x}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn text_width(text: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(text)
}

/// `text` in at most `width` terminal columns: cut with `…` when longer.
pub fn cut(text: &str, width: usize) -> String {
    if text_width(text) <= width {
        return text.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// The job table (`list`, `query` on a terminal), written a chunk of rows at a time so a
/// listing of a million jobs needs no more memory than a chunk: the first chunk sets the
/// columns and their widths, later chunks keep them.
pub struct JobTable {
    term: Terminal,
    /// The columns asked for: None means the default ones.
    fields: Option<Vec<String>>,
    long: bool,
    /// Decided by the first chunk.
    layout: Option<Vec<(Column, usize)>>,
    /// The width the last column's content wants.
    last_wanted: usize,
    /// The largest jid that may come, so that the jid column is wide enough from the
    /// first chunk on.
    largest_jid: i64,
}

/// A flexible column is cut at this width even when the terminal has room, so one long
/// tag does not push every command out of sight.
const MAX_FLEXIBLE_WIDTH: usize = 24;
/// Columns between columns.
const GAP: usize = 2;

impl JobTable {
    /// `fields`: the columns, in this order (`--fields`); `long`: every field of each job,
    /// a block per job.
    pub fn new(term: Terminal, fields: Option<Vec<String>>, long: bool) -> JobTable {
        JobTable {
            term,
            fields,
            long,
            layout: None,
            last_wanted: 0,
            largest_jid: 0,
        }
    }

    /// Size the jid column for jids up to `jid` (the queue's largest).
    pub fn expect_jids_up_to(mut self, jid: i64) -> JobTable {
        self.largest_jid = jid;
        self
    }

    fn columns_for(&self) -> Vec<Column> {
        if let Some(fields) = &self.fields {
            return fields.iter().map(|f| Column::Field(f.clone())).collect();
        }
        let mut columns = vec![
            Column::Jid,
            Column::State,
            Column::Priority,
            Column::Tag,
            Column::Host,
            Column::StartedAge,
            Column::Elapsed,
            Column::Exit,
        ];
        columns.push(Column::Command);
        columns
    }

    /// Render `rows` (the next chunk) as lines of text.
    pub fn render(&mut self, rows: &[Row]) -> String {
        if rows.is_empty() {
            return String::new();
        }
        if self.long && self.fields.is_none() {
            return self.records(rows);
        }
        let first = self.layout.is_none();
        if first {
            let columns = self.columns_for();
            self.layout = Some(columns.into_iter().map(|c| (c, 0)).collect());
            let cells = self.cells(rows);
            self.size_columns(&cells);
        }
        let cells = self.cells(rows);
        let layout = self.layout.as_ref().expect("set above");
        let headers: Vec<String> = layout.iter().map(|(c, _)| c.header().to_string()).collect();
        // Later chunks keep the first one's widths, but a wider number (jid 10000 after
        // 9999) is never cut, and the last column takes what the terminal has left.
        let last = layout.len() - 1;
        let widths: Vec<usize> = layout
            .iter()
            .enumerate()
            .map(|(i, (column, planned))| {
                let widest = || cells.iter().map(|r| text_width(&r[i].0)).max().unwrap_or(0);
                if i == last {
                    let room = self.term.width.map_or(usize::MAX, |total| {
                        let others: usize = layout[..last].iter().map(|(_, w)| w + GAP).sum();
                        total.saturating_sub(others).max(*planned)
                    });
                    widest().max(*planned).min(room)
                } else if column.flexible() {
                    *planned
                } else {
                    widest().max(*planned)
                }
            })
            .collect();
        draw(&self.term, first.then_some(&headers[..]), &widths, &cells)
    }

    /// `--long`: every field a job has, one per line, a block per job (46 columns do
    /// not fit a terminal side by side).
    fn records(&mut self, rows: &[Row]) -> String {
        let mut out = String::new();
        // Two spaces, the name in 13 columns, two spaces: 17 columns before the value.
        let value_width = self.term.width.map(|w| w.saturating_sub(17).max(10));
        for row in rows {
            if self.layout.is_some() {
                out.push('\n');
            }
            self.layout.get_or_insert_with(Vec::new);
            let state = Column::State.cell(row, &self.term);
            let exit = Column::Exit.cell(row, &self.term);
            let mut head = format!(
                "{} {}",
                self.term.paint("job", None),
                self.term.paint(&row.jid().to_string(), None)
            );
            head.push_str(&format!("  {}", self.term.paint(&state.0, state.1)));
            if exit.0 != "-" {
                head.push_str(&format!("  exit {}", self.term.paint(&exit.0, exit.1)));
            }
            out.push_str(&head);
            out.push('\n');
            for name in crate::job::FIELDS
                .iter()
                .filter(|n| !matches!(**n, "jid" | "state"))
            {
                if matches!(row.get(name), Cell::Null) {
                    continue;
                }
                let (mut value, color) = Column::Field(name.to_string()).cell(row, &self.term);
                if let Some(width) = value_width {
                    value = cut(&value, width);
                }
                out.push_str(&format!(
                    "  {}  {}\n",
                    self.term
                        .paint(&format!("{name:<13}"), Some(Color::DarkGrey)),
                    self.term.paint(&value, color)
                ));
            }
        }
        out
    }

    /// The rows' cells in the layout's columns.
    fn cells(&self, rows: &[Row]) -> Vec<Vec<(String, Option<Color>)>> {
        let layout = self.layout.as_deref().unwrap_or_default();
        rows.iter()
            .map(|row| {
                layout
                    .iter()
                    .map(|(c, _)| c.cell(row, &self.term))
                    .collect()
            })
            .collect()
    }

    /// Widths from the first chunk: each column as wide as its widest cell, flexible
    /// ones at most [`MAX_FLEXIBLE_WIDTH`] (the last one takes what is left), then cut
    /// flexible ones until the line fits the terminal.
    fn size_columns(&mut self, cells: &[Vec<(String, Option<Color>)>]) {
        let layout = self.layout.as_mut().expect("set by render");
        let last = layout.len() - 1;
        for (i, (column, width)) in layout.iter_mut().enumerate() {
            let widest = cells
                .iter()
                .map(|row| text_width(&row[i].0))
                .max()
                .unwrap_or(0)
                .max(text_width(column.header()));
            let widest = if *column == Column::Jid || *column == Column::Field("jid".into()) {
                widest.max(self.largest_jid.to_string().len())
            } else {
                widest
            };
            *width = if column.flexible() && i != last {
                widest.min(MAX_FLEXIBLE_WIDTH)
            } else {
                widest
            };
        }
        self.last_wanted = layout[last].1;
        let Some(total) = self.term.width else {
            return;
        };
        let line = |layout: &[(Column, usize)]| {
            layout.iter().map(|(_, w)| w).sum::<usize>() + GAP * (layout.len() - 1)
        };
        // The last column gets what is left, down to 10 columns.
        if line(layout) > total && layout[last].0.flexible() {
            let over = line(layout) - total;
            layout[last].1 -= over.min(layout[last].1.saturating_sub(10));
        }
        // Still too wide (a narrow terminal): leave out the columns that matter least,
        // as `ps` does, each giving its room to the last column.
        const LEAST_NEEDED_FIRST: [Column; 5] = [
            Column::StartedAge,
            Column::Priority,
            Column::Tag,
            Column::Elapsed,
            Column::Host,
        ];
        for drop in LEAST_NEEDED_FIRST {
            if line(layout) <= total {
                break;
            }
            if let Some(at) = layout.iter().position(|(c, _)| *c == drop) {
                let freed = layout.remove(at).1 + GAP;
                let last = layout.len() - 1;
                let room = total.saturating_sub(line(layout) - layout[last].1);
                layout[last].1 = (layout[last].1 + freed)
                    .min(self.last_wanted)
                    .min(room.max(10));
            }
        }
        // Then the widest other flexible column gives up columns, down to 4.
        let last = layout.len() - 1;
        while line(layout) > total {
            let Some(widest) = (0..last)
                .filter(|&i| layout[i].0.flexible() && layout[i].1 > 4)
                .max_by_key(|&i| layout[i].1)
            else {
                break;
            };
            layout[widest].1 -= 1;
        }
        let last = layout.len() - 1;
        if line(layout) > total && layout[last].1 > 1 {
            let over = line(layout) - total;
            layout[last].1 = layout[last].1.saturating_sub(over).max(1);
        }
    }
}

/// Each column's width: its widest cell or header.
fn column_widths(headers: &[String], cells: &[Vec<(String, Option<Color>)>]) -> Vec<usize> {
    (0..headers.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| text_width(&r[i].0))
                .chain([text_width(&headers[i])])
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// Lay out a table with comfy-table: no borders, `GAP` spaces between columns, each
/// column exactly its width, a cell longer than its column cut with `…`, one line per
/// row.
fn draw(
    term: &Terminal,
    headers: Option<&[String]>,
    widths: &[usize],
    cells: &[Vec<(String, Option<Color>)>],
) -> String {
    let mut table = Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_truncation_indicator("…");
    if term.color {
        table.enforce_styling();
    } else {
        table.force_no_tty();
    }
    let last = widths.len().saturating_sub(1);
    if let Some(headers) = headers {
        table.set_header(headers.iter().enumerate().map(|(i, h)| {
            let cell = TableCell::new(cut(h, widths[i]));
            if term.color {
                cell.add_attribute(comfy_table::Attribute::Bold)
            } else {
                cell
            }
        }));
    }
    for row in cells {
        table.add_row(row.iter().enumerate().map(|(i, (text, color))| {
            let cell = TableCell::new(cut(text, widths[i]));
            match color {
                Some(c) if term.color => cell.fg(*c),
                _ => cell,
            }
        }));
    }
    for (i, column) in table.column_iter_mut().enumerate() {
        let gap = if i == last { 0 } else { GAP as u16 };
        column.set_padding((0, gap));
        column.set_constraint(ColumnConstraint::Absolute(Width::Fixed(
            widths[i] as u16 + gap,
        )));
    }
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `rq Q feeders` on a terminal.
pub fn feeders_table(feeders: &[Feeder], fields: Option<&[String]>, term: &Terminal) -> String {
    if feeders.is_empty() {
        return String::new();
    }
    if let Some(fields) = fields {
        let rows: Vec<Row> = feeders.iter().map(Feeder::to_row).collect();
        let mut table = JobTable::new(term.clone(), Some(fields.to_vec()), false);
        return table.render(&rows);
    }
    let headers: Vec<String> = FEEDER_COLUMNS.iter().map(|h| h.to_string()).collect();
    let cells: Vec<Vec<(String, Option<Color>)>> =
        feeders.iter().map(|f| feeder_cells(f, term)).collect();
    let mut widths = column_widths(&headers, &cells);
    if let Some(total) = term.width {
        let used: usize =
            widths[..widths.len() - 1].iter().sum::<usize>() + GAP * (widths.len() - 1);
        let last = widths.len() - 1;
        widths[last] = widths[last].min(total.saturating_sub(used).max(4));
    }
    draw(term, Some(&headers), &widths, &cells)
}

/// The columns of a feeder for people (`feeders` on a terminal; `top` shows some).
pub const FEEDER_COLUMNS: [&str; 11] = [
    "host",
    "state",
    "heartbeat",
    "running",
    "cpus",
    "mem",
    "gpus",
    "pid",
    "started",
    "version",
    "note",
];

/// A feeder's cells in [`FEEDER_COLUMNS`] order, with their colours.
pub fn feeder_cells(f: &Feeder, term: &Terminal) -> Vec<(String, Option<Color>)> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    vec![
        (f.host.clone(), None),
        (f.state.to_string(), feeder_color(f.state)),
        (
            f.heartbeat_age
                .map_or("-".into(), |a| format!("{} ago", duration(a))),
            (!f.alive).then_some(Color::Red),
        ),
        (
            match f.max_feed {
                Some(m) => format!("{}/{m}", f.running),
                None => f.running.to_string(),
            },
            None,
        ),
        (opt(f.cpus.map(|c| c.to_string())), None),
        (opt(f.mem.map(bytes)), None),
        (opt(f.gpus.clone()), None),
        (opt(f.pid.map(|p| p.to_string())), None),
        (opt(f.started.as_deref().map(|s| term.time_text(s))), None),
        (opt(f.version.clone()), None),
        (opt(f.error.as_deref().map(one_line)), None),
    ]
}

pub fn feeder_color(state: &str) -> Option<Color> {
    match state {
        "alive" => Some(Color::Green),
        "dead" | "failed" => Some(Color::Red),
        "paused" | "draining" | "drained" | "waiting" => Some(Color::Yellow),
        _ => Some(Color::DarkGrey),
    }
}

/// A bar of `width` cells, `part` of `whole` filled.
pub fn bar(part: i64, whole: i64, width: usize) -> String {
    let filled = if whole > 0 {
        ((part as f64 / whole as f64) * width as f64).round() as usize
    } else {
        0
    };
    let filled = filled.min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// Counts per period as a line of block characters, the highest a full block.
pub fn sparkline(values: &[i64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| {
            if max == 0 || v == 0 {
                ' '
            } else {
                BLOCKS[((v as f64 / max as f64) * 7.0).round() as usize]
            }
        })
        .collect()
}

/// A count with thousands separated: 1,234,567.
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// `status` on a terminal: one screen.
pub fn status_screen(
    queue: &str,
    s: &Summary,
    feeders: &[Feeder],
    unfit: Option<(i64, Option<(i64, String)>)>,
    term: &Terminal,
) -> String {
    let mut out = String::new();
    let label = |text: &str| term.paint(&format!("{text:<11}"), Some(Color::DarkGrey));
    let _ = writeln!(out, "{}  {} jobs", term.paint(queue, None), count(s.total));
    if let Some(paused) = &s.paused {
        let _ = writeln!(
            out,
            "{}",
            term.paint(
                &format!("PAUSED {paused}: no feeder claims jobs (rq Q resume)"),
                Some(Color::Yellow)
            )
        );
    }
    let bar_width = term
        .width
        .map_or(30, |w| w.saturating_sub(30).clamp(10, 40));
    for (state, n) in &s.counts {
        if *n == 0 && matches!(state, State::Waiting | State::Cancelled | State::Holding) {
            continue;
        }
        let name = format!("{:<11}", state.as_str());
        let pct = if s.total > 0 {
            format!("{:>3.0}%", *n as f64 * 100.0 / s.total as f64)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{}{:>9}  {}  {pct}",
            term.paint(&name, state_color(state.as_str(), false)),
            count(*n),
            term.paint(
                &bar(*n, s.total, bar_width),
                state_color(state.as_str(), false)
            ),
        );
    }
    // A status of some jobs (array:12, --mine) has no rates: those are the queue's.
    let whole_queue = !s.ended_per_minute.is_empty();
    let rate = s.rate_per_minute();
    if whole_queue {
        let _ = writeln!(
            out,
            "{}{} jobs/min  {}  ({} min; {} in the last hour)",
            label("ended"),
            if rate >= 10.0 {
                format!("{rate:.0}")
            } else {
                format!("{rate:.1}")
            },
            sparkline(&s.ended_per_minute),
            s.ended_per_minute.len(),
            count(s.ended_last_hour)
        );
    }
    let dead = s.count(State::Dead);
    let cancelled = s.count(State::Cancelled);
    let bad = |n: i64, what: &str| {
        let text = format!("{} {what}", count(n));
        term.paint(&text, (n > 0).then_some(Color::Red))
    };
    let _ = writeln!(
        out,
        "{}{} · {} · {} · {}",
        label("results"),
        term.paint(
            &format!("{} ok", count(s.successes)),
            (s.successes > 0).then_some(Color::Green)
        ),
        bad(s.failed, "failed"),
        bad(dead, "dead"),
        bad(cancelled, "cancelled"),
    );
    let left = s.count(State::Pending) + s.count(State::Waiting);
    if left > 0 && whole_queue {
        let eta = match s.eta() {
            Some(secs) => format!(
                "{} for {} jobs at the last minutes' rate",
                duration(secs),
                count(left)
            ),
            None => format!(
                "- ({} jobs to run, none ended in the last minutes)",
                count(left)
            ),
        };
        let _ = writeln!(out, "{}{eta}", label("eta"));
    }
    if let Some((jid, age)) = s.oldest_pending {
        let _ = writeln!(
            out,
            "{}pending for {} (job {jid})",
            label("oldest"),
            duration(age)
        );
    }
    if let Some(avg) = s.avg_elapsed {
        let _ = writeln!(out, "{}{}", label("avg run"), duration(avg));
    }
    if !s.running_per_host.is_empty() {
        let hosts: Vec<String> = s
            .running_per_host
            .iter()
            .map(|(h, n)| {
                let max = feeders
                    .iter()
                    .find(|f| f.host == *h)
                    .and_then(|f| f.max_feed)
                    .map(|m| format!("/{m}"))
                    .unwrap_or_default();
                format!("{h} {n}{max}")
            })
            .collect();
        let _ = writeln!(out, "{}{}", label("running on"), hosts.join(" · "));
    }
    let alive = feeders.iter().filter(|f| f.alive).count();
    let mut line = term.paint(
        &format!("{alive} alive"),
        Some(if alive > 0 { Color::Green } else { Color::Red }),
    );
    let dead_feeders: Vec<String> = feeders
        .iter()
        .filter(|f| f.state == "dead" || f.state == "failed")
        .map(|f| {
            format!(
                "{}{}",
                f.host,
                f.heartbeat_age
                    .map(|a| format!(" {} ago", duration(a)))
                    .unwrap_or_default()
            )
        })
        .collect();
    if !dead_feeders.is_empty() {
        let _ = write!(
            line,
            " · {}",
            term.paint(
                &format!("{} dead ({})", dead_feeders.len(), dead_feeders.join(", ")),
                Some(Color::Red)
            )
        );
    }
    let other = feeders.len() - alive - dead_feeders.len();
    if other > 0 {
        let _ = write!(line, " · {other} stopped");
    }
    if alive == 0 && left + s.count(State::Running) > 0 {
        let _ = write!(
            line,
            "  (no feeder runs jobs: start one with 'rq Q feed --daemon')"
        );
    }
    let _ = writeln!(out, "{}{line}", label("feeders"));
    for (host, since) in &s.draining {
        let _ = writeln!(out, "{}{host} {since}", label("draining"));
    }
    if let Some((n, example)) = unfit.filter(|(n, _)| *n > 0) {
        let example = example
            .map(|(jid, why)| format!(", e.g. job {jid} {why}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}{}",
            label("unfit"),
            term.paint(
                &format!("{} jobs no live feeder can run{example}", count(n)),
                Some(Color::Yellow)
            )
        );
    }
    out
}

/// `usage` for people: a line per group (all, each tag, each array) and the jobs
/// furthest off what they asked for.
pub fn usage_table(report: &crate::usage::Report, term: &Terminal) -> String {
    let percent = |e: Option<f64>| e.map_or("-".to_string(), |e| format!("{:.0}%", e * 100.0));
    let hours = |seconds: f64| {
        if seconds < 3600.0 {
            duration(seconds)
        } else {
            format!("{:.1}h", seconds / 3600.0)
        }
    };
    let headers: Vec<String> = ["jobs of", "runs", "cpu", "wall", "cpu eff", "mem eff"]
        .iter()
        .map(|h| h.to_string())
        .collect();
    let line = |name: String, t: &crate::usage::Totals| -> Vec<(String, Option<Color>)> {
        vec![
            (name, None),
            (t.jobs.to_string(), None),
            (hours(t.cpu_seconds), None),
            (hours(t.wall_seconds), None),
            (percent(t.cpu_efficiency()), None),
            (percent(t.memory_efficiency()), None),
        ]
    };
    let mut cells = vec![line("all".into(), &report.total)];
    cells.extend(
        report
            .tags
            .iter()
            .map(|(tag, t)| line(format!("tag:{tag}"), t)),
    );
    cells.extend(
        report
            .arrays
            .iter()
            .map(|(a, t)| line(format!("array:{a}"), t)),
    );
    let widths = column_widths(&headers, &cells);
    let mut text = draw(term, Some(&headers), &widths, &cells);
    let furthest = report.to_json();
    let furthest = furthest["furthest_off"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !furthest.is_empty() {
        text.push_str("\nfurthest off what they asked for:\n");
        for f in furthest {
            let what = if f["off"] == "cpu" {
                format!(
                    "CPU {} of {} CPUs over {}",
                    percent(f["cpu_efficiency"].as_f64()),
                    f["cpus"],
                    duration(f["elapsed"].as_f64().unwrap_or(0.0))
                )
            } else {
                format!(
                    "memory {} of {} (peak {})",
                    percent(f["memory_efficiency"].as_f64()),
                    bytes(f["mem"].as_i64().unwrap_or(0)),
                    bytes(f["max_rss"].as_i64().unwrap_or(0))
                )
            };
            let tag = f["tag"]
                .as_str()
                .map(|t| format!(" (tag {t})"))
                .unwrap_or_default();
            text.push_str(&format!("  job {}{tag}: {what}\n", f["jid"]));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(duration(0.04), "0s");
        assert_eq!(duration(0.44), "0.4s");
        assert_eq!(duration(3.0), "3s");
        assert_eq!(duration(59.6), "1m00s");
        assert_eq!(duration(252.0), "4m12s");
        assert_eq!(duration(7500.0), "2h05m");
        assert_eq!(duration(3.0 * 86400.0 + 4.0 * 3600.0 + 5.0), "3d4h");
        assert_eq!(duration(-5.0), "0s");
    }

    #[test]
    fn times_are_local_and_short() {
        let mut term = Terminal::plain(None);
        term.zone = TimeZone::UTC;
        term.now = "2026-12-03T15:00:00Z".parse().unwrap();
        assert_eq!(term.time_text("2026-12-03T14:03:27.123456Z"), "14:03:27");
        assert_eq!(
            term.time_text("2026-11-28T14:03:27.123456Z"),
            "Nov 28 14:03"
        );
        assert_eq!(term.time_text("2025-11-28T14:03:27.123456Z"), "2025-11-28");
        term.zone = TimeZone::fixed(jiff::tz::offset(1));
        assert_eq!(term.time_text("2026-12-03T14:03:27.123456Z"), "15:03:27");
    }

    #[test]
    fn counts_and_sizes() {
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(bytes(4 * 1024 * 1024 * 1024), "4.0G");
        assert_eq!(bytes(512 * 1024 * 1024), "512M");
        assert_eq!(bar(1, 2, 4), "██░░");
        assert_eq!(sparkline(&[0, 1, 2]), " ▅█");
    }

    fn job(jid: i64, state: &str, command: &str) -> Row {
        Row {
            columns: vec![
                ("jid".into(), Cell::Int(jid)),
                ("state".into(), Cell::Text(state.into())),
                ("priority".into(), Cell::Int(0)),
                ("command".into(), Cell::Text(command.into())),
                (
                    "submitted".into(),
                    Cell::Text("2026-12-03T14:03:27.123456Z".into()),
                ),
            ],
        }
    }

    #[test]
    fn tables_fit_the_width_and_cut_commands() {
        let long = "x".repeat(300);
        for width in [80, 200] {
            let mut table = JobTable::new(Terminal::plain(Some(width)), None, false);
            let text = table.render(&[job(1, "pending", &long), job(22, "running", "echo hi")]);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 3, "{text}");
            assert!(lines[0].starts_with("jid  state"), "{text}");
            for line in &lines {
                assert!(text_width(line) <= width, "{width}: {line}");
            }
            assert!(lines[1].ends_with('…'), "{text}");
            assert!(lines[2].ends_with("echo hi"), "{text}");
            // A later chunk: no header, the same columns.
            let more = table.render(&[job(333, "pending", "true")]);
            assert_eq!(more.lines().count(), 1);
            assert_eq!(more.find("pending"), lines[1].find("pending"), "{more}");
        }
    }

    #[test]
    fn later_chunks_keep_the_columns_and_cut_nothing_they_need() {
        let mut table =
            JobTable::new(Terminal::plain(Some(100)), None, false).expect_jids_up_to(100_000);
        let first = table.render(&[job(1, "pending", "echo job 1")]);
        let later = table.render(&[job(100_000, "pending", "echo job 100000 and more words")]);
        let state_at = |text: &str| text.lines().last().unwrap().find("pending");
        assert_eq!(state_at(&first), state_at(&later), "{first}{later}");
        assert!(
            later.trim_end().ends_with("echo job 100000 and more words"),
            "{later}"
        );
        assert!(later.starts_with("100000 "), "{later}");
    }
}
