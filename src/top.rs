//! `rq Q top` (or `status --watch`): a full-screen view of the queue that refreshes every
//! second, like `htop`. Read-only: it reads the queue in one read transaction per refresh
//! (never the write lock) and has no key that changes a job. The terminal is restored on
//! `q`, Ctrl-C, TERM/HUP and on a panic (ratatui's panic hook).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table, Tabs};
use ratatui::{DefaultTerminal, Frame};

use crate::error::{Error, Result};
use crate::human::{self, Terminal, duration};
use crate::job::{Cell as JobCell, Row, State};
use crate::overview::{self, View};
use crate::queue::Queue;

/// How often the view is read again.
const REFRESH: Duration = Duration::from_secs(1);

/// The lists `top` can show, in tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tab {
    Running,
    Pending,
    Ended,
    Dead,
    Feeders,
}

const TABS: [Tab; 5] = [
    Tab::Running,
    Tab::Pending,
    Tab::Ended,
    Tab::Dead,
    Tab::Feeders,
];

impl Tab {
    fn title(self) -> &'static str {
        match self {
            Tab::Running => "Running",
            Tab::Pending => "Pending",
            Tab::Ended => "Ended",
            Tab::Dead => "Dead/cancelled",
            Tab::Feeders => "Feeders",
        }
    }

    fn key(self) -> char {
        match self {
            Tab::Running => 'r',
            Tab::Pending => 'p',
            Tab::Ended => 'e',
            Tab::Dead => 'd',
            Tab::Feeders => 'f',
        }
    }
}

struct App {
    queue_name: String,
    tab: Tab,
    /// First row shown of the current list.
    scroll: usize,
    view: View,
    /// The last refresh's error, shown instead of failing (e.g. the file server is slow).
    problem: Option<String>,
    color: bool,
    read_at: String,
}

/// Run the live view until the user quits. Needs a terminal on standard output.
pub fn run(q: &mut Queue, queue_name: &str, term: &Terminal) -> Result<i32> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return Err(Error::usage(
            "top needs a terminal; for a one-off report use 'rq Q status'",
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(|e| Error::Io {
            context: "cannot set up signal handling".into(),
            source: e,
        })?;
    }
    let mut app = App {
        queue_name: queue_name.to_string(),
        tab: Tab::Running,
        scroll: 0,
        view: View::default(),
        problem: None,
        color: term.color,
        read_at: String::new(),
    };
    // Read once before taking over the screen, so a queue that cannot be read is a
    // plain error.
    app.view = overview::view(q)?;
    app.read_at = Terminal::plain(None).time(crate::time::now_ts());
    let mut screen = ratatui::try_init().map_err(|e| Error::Io {
        context: "cannot set up the terminal".into(),
        source: e,
    })?;
    let result = event_loop(&mut screen, &mut app, q, &stop);
    ratatui::restore();
    result
}

fn event_loop(
    screen: &mut DefaultTerminal,
    app: &mut App,
    q: &mut Queue,
    stop: &AtomicBool,
) -> Result<i32> {
    let io = |e: std::io::Error| Error::Io {
        context: "cannot draw on the terminal".into(),
        source: e,
    };
    let mut next_read = Instant::now() + REFRESH;
    loop {
        screen.draw(|frame| draw(frame, app)).map_err(io)?;
        // Test-only fault injection: the terminal must come back from a panic too.
        if std::env::var("RQ_FAULT").is_ok_and(|f| f == "top_panic") {
            panic!("injected fault RQ_FAULT=top_panic");
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let wait = next_read.saturating_duration_since(Instant::now());
        if event::poll(wait.min(Duration::from_millis(250))).map_err(io)? {
            if let Event::Key(key) = event::read().map_err(io)? {
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(0),
                    KeyCode::Char('c') if ctrl => return Ok(0),
                    KeyCode::Tab | KeyCode::Right => app.switch(1),
                    KeyCode::BackTab | KeyCode::Left => app.switch(TABS.len() - 1),
                    KeyCode::Down | KeyCode::Char('j') => app.scroll += 1,
                    KeyCode::Up | KeyCode::Char('k') => app.scroll = app.scroll.saturating_sub(1),
                    KeyCode::PageDown => app.scroll += 20,
                    KeyCode::PageUp => app.scroll = app.scroll.saturating_sub(20),
                    KeyCode::Home => app.scroll = 0,
                    KeyCode::Char(c) => {
                        if let Some(tab) = TABS.iter().find(|t| t.key() == c) {
                            app.tab = *tab;
                            app.scroll = 0;
                        }
                    }
                    _ => {}
                }
            }
            continue;
        }
        if Instant::now() >= next_read {
            match overview::view(q) {
                Ok(view) => {
                    app.view = view;
                    app.problem = None;
                    app.read_at = Terminal::plain(None).time(crate::time::now_ts());
                }
                Err(e) => app.problem = Some(e.to_string()),
            }
            next_read = Instant::now() + REFRESH;
        }
    }
}

impl App {
    fn switch(&mut self, by: usize) {
        let at = TABS.iter().position(|t| *t == self.tab).unwrap_or(0);
        self.tab = TABS[(at + by) % TABS.len()];
        self.scroll = 0;
    }

    fn style(&self, color: Option<ratatui::crossterm::style::Color>) -> Style {
        match color {
            Some(c) if self.color => Style::default().fg(tui_color(c)),
            _ => Style::default(),
        }
    }

    fn count(&self, tab: Tab) -> String {
        let s = &self.view.summary;
        let n = match tab {
            Tab::Running => s.count(State::Running),
            Tab::Pending => s.count(State::Pending),
            Tab::Ended => s.count(State::Finished) + s.count(State::Dead),
            Tab::Dead => s.count(State::Dead) + s.count(State::Cancelled),
            Tab::Feeders => self.view.feeders.len() as i64,
        };
        human::count(n)
    }
}

fn tui_color(c: ratatui::crossterm::style::Color) -> Color {
    use ratatui::crossterm::style::Color as C;
    match c {
        C::Red | C::DarkRed => Color::Red,
        C::Green | C::DarkGreen => Color::Green,
        C::Yellow | C::DarkYellow => Color::Yellow,
        C::Cyan | C::DarkCyan => Color::Cyan,
        C::Magenta | C::DarkMagenta => Color::Magenta,
        C::Blue | C::DarkBlue => Color::Blue,
        C::DarkGrey | C::Grey => Color::DarkGray,
        _ => Color::Reset,
    }
}

fn draw(frame: &mut Frame, app: &App) {
    let [head, tabs, body, foot] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_summary(frame, head, app);
    let titles: Vec<Line> = TABS
        .iter()
        .map(|t| Line::from(format!("{} {}", t.title(), app.count(*t))))
        .collect();
    let selected = TABS.iter().position(|t| *t == app.tab).unwrap_or(0);
    frame.render_widget(
        Tabs::new(titles)
            .select(selected)
            .highlight_style(Style::default().add_modifier(Modifier::REVERSED)),
        tabs,
    );
    draw_list(frame, body, app);
    let help = match &app.problem {
        Some(problem) => Line::from(Span::styled(
            format!("cannot read the queue: {problem} (showing the last view)"),
            app.style(Some(ratatui::crossterm::style::Color::Red)),
        )),
        None => Line::from(format!(
            "q quit · r p e d f or ←/→ views · ↑/↓ PgUp/PgDn scroll · read {} · read-only",
            app.read_at
        )),
    };
    frame.render_widget(Paragraph::new(help), foot);
}

fn draw_summary(frame: &mut Frame, area: Rect, app: &App) {
    let s = &app.view.summary;
    let mut lines = Vec::new();
    let mut title = vec![Span::styled(
        format!("rq {}  ", app.queue_name),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    title.push(Span::raw(format!("{} jobs", human::count(s.total))));
    if let Some(paused) = &s.paused {
        title.push(Span::styled(
            format!("  PAUSED {paused}"),
            app.style(Some(ratatui::crossterm::style::Color::Yellow)),
        ));
    }
    lines.push(Line::from(title));
    let mut counts = Vec::new();
    for (state, n) in &s.counts {
        if *n == 0 && matches!(state, State::Waiting | State::Cancelled | State::Holding) {
            continue;
        }
        if !counts.is_empty() {
            counts.push(Span::raw(" · "));
        }
        counts.push(Span::styled(
            format!("{} {}", state.as_str(), human::count(*n)),
            app.style(human::state_color(state.as_str(), false)),
        ));
    }
    lines.push(Line::from(counts));
    // One bar for the whole queue, coloured by state.
    let width = area.width.saturating_sub(1) as i64;
    let mut bar = Vec::new();
    let mut used = 0;
    for (state, n) in &s.counts {
        let cells = if s.total > 0 { n * width / s.total } else { 0 };
        if cells > 0 {
            used += cells;
            bar.push(Span::styled(
                "█".repeat(cells as usize),
                app.style(human::state_color(state.as_str(), false)),
            ));
        }
    }
    if used < width {
        bar.push(Span::raw("░".repeat((width - used) as usize)));
    }
    lines.push(Line::from(bar));
    let rate = s.rate_per_minute();
    let eta = s
        .eta()
        .map(|e| format!(" · ETA {}", duration(e)))
        .unwrap_or_default();
    let oldest = s
        .oldest_pending
        .map(|(jid, age)| format!(" · oldest pending {} (job {jid})", duration(age)))
        .unwrap_or_default();
    lines.push(Line::from(vec![
        Span::raw(format!("ended {rate:.1}/min ")),
        Span::raw(human::sparkline(&s.ended_per_minute)),
        Span::raw(format!("{eta}{oldest}")),
    ]));
    let red = |n: i64| app.style((n > 0).then_some(ratatui::crossterm::style::Color::Red));
    lines.push(Line::from(vec![
        Span::styled(
            format!("{} ok", human::count(s.successes)),
            app.style(Some(ratatui::crossterm::style::Color::Green)),
        ),
        Span::raw(" · "),
        Span::styled(format!("{} failed", human::count(s.failed)), red(s.failed)),
        Span::raw(" · "),
        Span::styled(
            format!("{} dead", human::count(s.count(State::Dead))),
            red(s.count(State::Dead)),
        ),
        Span::raw(
            s.avg_elapsed
                .map(|a| format!(" · avg run {}", duration(a)))
                .unwrap_or_default(),
        ),
    ]));
    let alive = app.view.feeders.iter().filter(|f| f.alive).count();
    let dead = app
        .view
        .feeders
        .iter()
        .filter(|f| f.state == "dead" || f.state == "failed")
        .count();
    let mut feeders = vec![Span::styled(
        format!("feeders {alive} alive"),
        app.style(Some(if alive > 0 {
            ratatui::crossterm::style::Color::Green
        } else {
            ratatui::crossterm::style::Color::Red
        })),
    )];
    if dead > 0 {
        feeders.push(Span::styled(
            format!(" · {dead} dead"),
            app.style(Some(ratatui::crossterm::style::Color::Red)),
        ));
    }
    let running: Vec<String> = s
        .running_per_host
        .iter()
        .map(|(h, n)| format!("{h} {n}"))
        .collect();
    if !running.is_empty() {
        feeders.push(Span::raw(format!(" · running on {}", running.join(", "))));
    }
    lines.push(Line::from(feeders));
    frame.render_widget(Paragraph::new(lines), area);
}

/// One table row of text cells, with a colour for some.
type Cells = Vec<(String, Option<ratatui::crossterm::style::Color>)>;

fn job_cells(row: &Row, tab: Tab, term: &Terminal) -> Cells {
    let text = |name: &str| row.get(name).as_text().map(str::to_string);
    let state = text("state").unwrap_or_default();
    let exit = row.get("exit_status").as_int();
    let signal = text("signal");
    let failed = exit.is_some_and(|e| e != 0) || signal.is_some();
    let dash = || "-".to_string();
    let elapsed = match row.get("elapsed") {
        JobCell::Real(e) => duration(*e),
        JobCell::Int(e) => duration(*e as f64),
        _ => text("started")
            .and_then(|s| term.since(&s))
            .map_or_else(dash, duration),
    };
    let exit_text = match (&signal, exit) {
        (Some(sig), _) => sig.clone(),
        (None, Some(e)) => e.to_string(),
        _ => dash(),
    };
    let exit_color = failed.then_some(ratatui::crossterm::style::Color::Red);
    let command = text("command").unwrap_or_default().replace('\n', "\\n");
    let jid = (row.jid().to_string(), None);
    let host = (text("runner").unwrap_or_else(dash), None);
    match tab {
        Tab::Running => vec![
            jid,
            host,
            (elapsed, Some(ratatui::crossterm::style::Color::Cyan)),
            (row.get("priority").to_plain(), None),
            (text("tag").unwrap_or_else(dash), None),
            (command, None),
        ],
        Tab::Pending => vec![
            jid,
            (row.get("priority").to_plain(), None),
            (text("tag").unwrap_or_else(dash), None),
            (
                text("submitted")
                    .and_then(|s| term.since(&s))
                    .map_or_else(dash, duration),
                None,
            ),
            (command, None),
        ],
        Tab::Ended | Tab::Dead | Tab::Feeders => vec![
            jid,
            (state.clone(), human::state_color(&state, failed)),
            (exit_text, exit_color),
            host,
            (elapsed, None),
            (
                text("finished").map_or_else(dash, |f| term.time_text(&f)),
                None,
            ),
            (
                if tab == Tab::Dead {
                    text("reason").unwrap_or(command)
                } else {
                    command
                },
                None,
            ),
        ],
    }
}

fn draw_list(frame: &mut Frame, area: Rect, app: &App) {
    let term = Terminal::plain(None);
    let (headers, rows): (Vec<&str>, Vec<Cells>) = match app.tab {
        Tab::Feeders => {
            // The terminal table's feeder columns, those that fit a screen.
            let shown = [
                "host",
                "state",
                "heartbeat",
                "running",
                "cpus",
                "mem",
                "version",
                "note",
            ];
            let keep: Vec<usize> = shown
                .iter()
                .filter_map(|h| human::FEEDER_COLUMNS.iter().position(|c| c == h))
                .collect();
            (
                shown.to_vec(),
                app.view
                    .feeders
                    .iter()
                    .map(|f| {
                        let cells = human::feeder_cells(f, &term);
                        keep.iter().map(|&i| cells[i].clone()).collect()
                    })
                    .collect(),
            )
        }
        tab => {
            let (headers, jobs) = match tab {
                Tab::Running => (
                    vec!["jid", "host", "elapsed", "pri", "tag", "command"],
                    &app.view.running,
                ),
                Tab::Pending => (
                    vec!["jid", "pri", "tag", "age", "command"],
                    &app.view.pending,
                ),
                Tab::Ended => (
                    vec![
                        "jid", "state", "exit", "host", "elapsed", "ended", "command",
                    ],
                    &app.view.ended,
                ),
                _ => (
                    vec![
                        "jid",
                        "state",
                        "exit",
                        "host",
                        "elapsed",
                        "ended",
                        "reason/command",
                    ],
                    &app.view.dead,
                ),
            };
            (
                headers,
                jobs.iter().map(|r| job_cells(r, tab, &term)).collect(),
            )
        }
    };
    if rows.is_empty() {
        let empty = match app.tab {
            Tab::Feeders => "no feeder has fed this queue yet: start one with 'rq Q feed --daemon'",
            _ => "no jobs here",
        };
        frame.render_widget(Paragraph::new(empty), area);
        return;
    }
    let columns = headers.len();
    // Every column as wide as its widest cell, the last one takes the rest.
    let widths: Vec<Constraint> = (0..columns)
        .map(|i| {
            if i + 1 == columns {
                Constraint::Fill(1)
            } else {
                let widest = rows
                    .iter()
                    .map(|r| unicode_width::UnicodeWidthStr::width(r[i].0.as_str()))
                    .chain([headers[i].len()])
                    .max()
                    .unwrap_or(1)
                    .min(30);
                Constraint::Length(widest as u16)
            }
        })
        .collect();
    // The last column's room: cut what does not fit with `…`, as the tables do.
    let fixed: usize = widths
        .iter()
        .map(|c| match c {
            Constraint::Length(n) => *n as usize + 2,
            _ => 0,
        })
        .sum();
    let room = (area.width as usize).saturating_sub(fixed).max(1);
    let cut = |text: &str| human::cut(text, room);
    let visible = area.height.saturating_sub(1) as usize;
    let skip = app.scroll.min(rows.len().saturating_sub(visible.max(1)));
    let body: Vec<TableRow> = rows
        .iter()
        .skip(skip)
        .take(visible)
        .map(|cells| {
            TableRow::new(cells.iter().enumerate().map(|(i, (text, color))| {
                let text = if i + 1 == columns {
                    cut(text)
                } else {
                    text.clone()
                };
                Cell::from(text).style(app.style(*color))
            }))
        })
        .collect();
    let header = TableRow::new(headers.iter().map(|h| Cell::from(*h)))
        .style(Style::default().add_modifier(Modifier::BOLD));
    frame.render_widget(
        Table::new(body, widths).header(header).column_spacing(2),
        area,
    );
}
