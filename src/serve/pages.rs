//! The dashboard's HTML, rendered on the server with maud (templates checked at compile
//! time, every value escaped). Each page's live part is also served alone
//! (`?partial=1`): a few lines of script fetch it every 1.5 s and swap it in, so pages
//! update without reloading, and read fine with JavaScript off.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::data::{Bar, JobFilter, Snapshot, TIMELINE_MINUTES};
use crate::human::{self, Terminal, duration};
use crate::job::{Cell, Row, State};

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:8px 16px;display:flex;gap:20px;align-items:center}
header a{color:#cfd6e4;text-decoration:none}header a.on{color:#fff;font-weight:600}
header .q{font-weight:700;margin-right:12px}main{padding:12px 16px}
table{border-collapse:collapse;background:#fff;width:100%}th,td{padding:3px 8px;text-align:left;border-bottom:1px solid #e3e6eb;white-space:nowrap}
td.cmd{white-space:normal;font-family:ui-monospace,monospace;max-width:60ch;overflow-wrap:anywhere}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:12px}.card{background:#fff;padding:8px 12px;border:1px solid #e3e6eb;border-radius:6px;min-width:110px}
.card b{display:block;font-size:22px}.bar{display:flex;height:14px;border-radius:3px;overflow:hidden;background:#e3e6eb;margin:8px 0}
.pending{background:#9aa5b8}.running{background:#2b8fd6}.finished,.ok{background:#2e9e5b}.failed,.dead{background:#d64545}.holding{background:#d6a52b}.waiting{background:#8e5bd6}.cancelled{background:#6b7280}
.s-running{color:#1f6fb0}.s-finished{color:#23794a}.s-failed,.s-dead,.s-down{color:#c22}.s-holding{color:#a57800}.s-alive{color:#23794a}
pre{background:#11151c;color:#dfe6ee;padding:8px;max-height:24em;overflow:auto;white-space:pre-wrap}
form.filter input,form.filter select{margin-right:6px}.muted{color:#6b7280}svg{background:#fff;border:1px solid #e3e6eb}
.warn{background:#fff4d6;border:1px solid #e6c15c;padding:6px 10px;margin-bottom:8px}
"#;

const LIVE_SCRIPT: &str = r#"
(function(){var live=document.getElementById('live');if(!live)return;var busy=false;
setInterval(function(){if(busy||document.hidden)return;busy=true;
var u=location.pathname+location.search+(location.search?'&':'?')+'partial=1';
fetch(u,{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null})
.then(function(t){if(t!==null){live.innerHTML=t;document.body.dataset.refreshed=String(Date.now());}})
.catch(function(){}).then(function(){busy=false});},1500);})();
"#;

/// Which page is shown (for the navigation bar).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Overview,
    Hosts,
    Jobs,
}

/// A whole page around its live part.
pub fn layout(
    queue: &str,
    page: Page,
    title: &str,
    live: Markup,
    actions_note: Option<&str>,
) -> Markup {
    let link = |href: &str, name: &str, this: Page| {
        html! { a href=(href) class=[(page == this).then_some("on")] { (name) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · rq " (queue) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    span.q { "rq " (queue) }
                    (link("/", "Overview", Page::Overview))
                    (link("/hosts", "Hosts", Page::Hosts))
                    (link("/jobs", "Jobs", Page::Jobs))
                    @if let Some(note) = actions_note { span.muted { (note) } }
                }
                main { div #live { (live) } }
                script { (PreEscaped(LIVE_SCRIPT)) }
            }
        }
    }
}

fn state_bar(snap: &Snapshot) -> Markup {
    let s = &snap.view.summary;
    html! {
        div.bar title="jobs by state" {
            @for (state, n) in &s.counts {
                @if *n > 0 {
                    div class=(state.as_str()) style=(format!("width:{:.3}%", *n as f64 * 100.0 / s.total.max(1) as f64))
                        title=(format!("{} {}", state.as_str(), n)) {}
                }
            }
        }
    }
}

/// The overview's live part.
pub fn overview(snap: &Snapshot) -> Markup {
    let s = &snap.view.summary;
    let term = Terminal::plain(None);
    let alive = snap.view.feeders.iter().filter(|f| f.alive).count();
    let rate = s.rate_per_minute();
    html! {
        @if let Some(p) = &s.paused { div.warn { "Paused " (p) ": no feeder claims jobs (rq Q resume)." } }
        @if alive == 0 && s.count(State::Pending) + s.count(State::Running) > 0 {
            div.warn { "No feeder is alive: nothing runs until one starts (rq Q feed --daemon)." }
        }
        div.cards {
            div.card #total { "jobs" b { (human::count(s.total)) } }
            @for (state, n) in &s.counts {
                div.card id=(format!("count-{}", state.as_str())) {
                    span class=(format!("s-{}", state.as_str())) { (state.as_str()) }
                    b { (human::count(*n)) }
                }
            }
        }
        (state_bar(snap))
        div.cards {
            div.card { "ok" b #ok { (human::count(s.successes)) } }
            div.card { "failed" b #failed { (human::count(s.failed)) } }
            div.card { "ended per minute" b { (format!("{rate:.1}")) } }
            div.card { "ETA for pending" b { (s.eta().map_or("-".to_string(), duration)) } }
            div.card { "oldest pending" b { (s.oldest_pending.map_or("-".to_string(), |(_, a)| duration(a))) } }
            div.card { "feeders alive" b { (alive) " / " (snap.view.feeders.len()) } }
        }
        h3 { "Jobs ended per minute, last hour" }
        (throughput_chart(&snap.per_minute))
        p.muted { "Read " (term.time(snap.taken)) "." }
    }
}

fn throughput_chart(per_minute: &[i64]) -> Markup {
    let max = per_minute.iter().copied().max().unwrap_or(0).max(1);
    let (w, h) = (720.0, 120.0);
    let step = w / per_minute.len().max(1) as f64;
    html! {
        svg #throughput width=(w) height=(h + 20.0) viewBox=(format!("0 0 {w} {}", h + 20.0)) role="img" aria-label="jobs ended per minute" {
            @for (i, n) in per_minute.iter().enumerate() {
                @let bar = *n as f64 / max as f64 * h;
                rect x=(format!("{:.1}", i as f64 * step)) y=(format!("{:.1}", h - bar)) width=(format!("{:.1}", step - 1.0)) height=(format!("{bar:.1}")) fill="#2b8fd6" {
                    title { (n) " jobs, " (per_minute.len() - i - 1) " min ago" }
                }
            }
            text x="0" y=(h + 16.0) font-size="11" { "-60 min" }
            text x=(w - 40.0) y=(h + 16.0) font-size="11" { "now" }
            text x=(w - 120.0) y="12" font-size="11" { "max " (max) "/min" }
        }
    }
}

/// The hosts page's live part: the feeders and the timeline.
pub fn hosts(snap: &Snapshot) -> Markup {
    html! {
        table #feeders {
            thead { tr { th { "host" } th { "state" } th { "heartbeat" } th { "running" } th { "done (1 h)" } th { "cpus" } th { "version" } th { "note" } } }
            tbody {
                @for f in &snap.view.feeders {
                    tr data-host=(f.host) {
                        td { (f.host) }
                        td class=(format!("s-{}", if f.alive { "alive" } else if f.state == "dead" || f.state == "failed" { "dead" } else { "other" })) { (f.state) }
                        td { (f.heartbeat_age.map_or("-".to_string(), |a| format!("{} ago", duration(a)))) }
                        td { (f.running) @if let Some(m) = f.max_feed { " / " (m) } }
                        td { (snap.per_host_hour.get(&f.host).copied().unwrap_or(0)) }
                        td { (f.cpus.map_or("-".to_string(), |c| c.to_string())) }
                        td { (f.version.clone().unwrap_or_default()) }
                        td { (f.error.clone().unwrap_or_default()) }
                    }
                }
            }
        }
        @if snap.view.feeders.is_empty() { p { "No feeder has fed this queue yet: start one with rq Q feed --daemon." } }
        h3 { "Last " (TIMELINE_MINUTES) " minutes" }
        (timeline(snap))
        p.muted { span.ok style="padding:0 6px" {} " ok " span.failed style="padding:0 6px" {} " failed or dead " span.running style="padding:0 6px" {} " running" }
    }
}

/// Jobs that ran at the same time on a host get rows of their own within its lane (the
/// first row free at their start), so concurrent jobs do not hide each other.
fn rows_within_lanes(bars: &[Bar], now: jiff::Timestamp) -> Vec<usize> {
    let mut order: Vec<usize> = (0..bars.len()).collect();
    order.sort_by_key(|&i| (bars[i].host.clone(), bars[i].start));
    let mut row_of = vec![0; bars.len()];
    let mut ends: Vec<jiff::Timestamp> = Vec::new();
    let mut host: Option<&str> = None;
    for i in order {
        if host != Some(bars[i].host.as_str()) {
            host = Some(bars[i].host.as_str());
            ends.clear();
        }
        let end = bars[i].end.unwrap_or(now);
        let row = match ends.iter().position(|e| *e <= bars[i].start) {
            Some(free) => free,
            None => {
                ends.push(end);
                ends.len() - 1
            }
        };
        ends[row] = end;
        row_of[i] = row;
    }
    row_of
}

fn timeline(snap: &Snapshot) -> Markup {
    let mut hosts: Vec<&str> = snap.view.feeders.iter().map(|f| f.host.as_str()).collect();
    for bar in &snap.timeline {
        if !hosts.contains(&bar.host.as_str()) {
            hosts.push(&bar.host);
        }
    }
    let row_of = rows_within_lanes(&snap.timeline, snap.taken);
    // Each host's lane is as tall as the jobs it ran at once need (4 px a row, 22 at least).
    let rows_per_host: Vec<usize> = hosts
        .iter()
        .map(|h| {
            snap.timeline
                .iter()
                .zip(&row_of)
                .filter(|(b, _)| b.host == *h)
                .map(|(_, r)| r + 1)
                .max()
                .unwrap_or(1)
        })
        .collect();
    let lane_height = |rows: usize| (rows as f64 * 4.0 + 6.0).max(22.0);
    let mut tops = Vec::new();
    let mut y = 0.0;
    for rows in &rows_per_host {
        tops.push(y);
        y += lane_height(*rows);
    }
    let label = 110.0;
    let width = 960.0;
    let span = TIMELINE_MINUTES as f64 * 60.0;
    let x = |t: jiff::Timestamp| {
        let back = crate::time::seconds_between(t, snap.taken).clamp(0.0, span);
        label + (span - back) / span * (width - label)
    };
    let height = y.max(22.0) + 20.0;
    let lane_of = |b: &Bar| hosts.iter().position(|h| *h == b.host).unwrap_or(0);
    html! {
        svg #timeline width=(width) height=(height) viewBox=(format!("0 0 {width} {height}")) role="img" aria-label="jobs per host over time" {
            @for (i, host) in hosts.iter().enumerate() {
                text x="4" y=(format!("{:.0}", tops[i] + 15.0)) font-size="12" { (host) }
                line x1=(label) x2=(width) y1=(format!("{:.0}", tops[i] + lane_height(rows_per_host[i]))) y2=(format!("{:.0}", tops[i] + lane_height(rows_per_host[i]))) stroke="#e3e6eb" {}
            }
            @for (b, row) in snap.timeline.iter().zip(&row_of) {
                @let lane = lane_of(b);
                @let rows = rows_per_host[lane];
                @let bar_height = (lane_height(rows) - 6.0) / rows as f64;
                @let x0 = x(b.start);
                @let x1 = x(b.end.unwrap_or(snap.taken)).max(x0 + 1.5);
                rect class=(b.outcome) x=(format!("{x0:.1}")) y=(format!("{:.1}", tops[lane] + 3.0 + *row as f64 * bar_height)) width=(format!("{:.1}", x1 - x0)) height=(format!("{:.1}", (bar_height - 0.5).max(1.0)))
                    fill=(match b.outcome { "ok" => "#2e9e5b", "running" => "#2b8fd6", _ => "#d64545" }) {
                    title { "job " (b.jid) " " (b.outcome) }
                }
            }
            text x=(label) y=(height - 4.0) font-size="11" { "-" (TIMELINE_MINUTES) " min" }
            text x=(width - 30.0) y=(height - 4.0) font-size="11" { "now" }
        }
    }
}

fn exit_text(row: &Row) -> (String, bool) {
    match (row.get("signal").as_text(), row.get("exit_status").as_int()) {
        (Some(sig), _) => (sig.to_string(), true),
        (None, Some(code)) => (code.to_string(), code != 0),
        _ => ("-".into(), false),
    }
}

fn job_rows(rows: &[Row]) -> Markup {
    let term = Terminal::plain(None);
    html! {
        table #jobs {
            thead { tr { th { "jid" } th { "state" } th { "pri" } th { "tag" } th { "host" } th { "started/age" } th { "elapsed" } th { "exit" } th { "command" } } }
            tbody {
                @for row in rows {
                    @let state = row.get("state").as_text().unwrap_or("").to_string();
                    @let (exit, bad) = exit_text(row);
                    tr data-jid=(row.jid()) {
                        td { a href=(format!("/jobs/{}", row.jid())) { (row.jid()) } }
                        td class=(format!("s-{}", if bad && state == "finished" { "failed" } else { &state })) { (state) }
                        td { (row.get("priority").to_plain()) }
                        td { (row.get("tag").as_text().unwrap_or("-")) }
                        td { (row.get("runner").as_text().unwrap_or("-")) }
                        td { (match (row.get("started").as_text(), row.get("submitted").as_text()) {
                            (Some(s), _) => term.time_text(s),
                            (None, Some(s)) => term.since(s).map_or("-".into(), |a| format!("{} ago", duration(a))),
                            _ => "-".into(),
                        }) }
                        td { (match row.get("elapsed") {
                            Cell::Real(e) => duration(*e),
                            _ if state == "running" => row.get("started").as_text().and_then(|s| term.since(s)).map_or("-".into(), duration),
                            _ => "-".into(),
                        }) }
                        td class=[bad.then_some("s-failed")] { (exit) }
                        td.cmd { (row.get("command").as_text().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

/// The jobs page's live part: filters, a page of jobs, paging links.
pub fn jobs(rows: &[Row], f: &JobFilter) -> Markup {
    let base = f.query_string();
    let sep = if base.is_empty() { "" } else { "&" };
    let first = rows.first().map(Row::jid);
    let last = rows.last().map(Row::jid);
    html! {
        form.filter method="get" action="/jobs" {
            select name="state" {
                option value="" { "any state" }
                @for s in State::ALL {
                    option value=(s.as_str()) selected[f.state.as_deref() == Some(s.as_str())] { (s.as_str()) }
                }
            }
            input name="tag" placeholder="tag" value=(f.tag.clone().unwrap_or_default());
            input name="host" placeholder="host" value=(f.host.clone().unwrap_or_default());
            input name="q" placeholder="command contains" value=(f.q.clone().unwrap_or_default());
            select name="order" {
                option value="asc" selected[!f.descending()] { "oldest first" }
                option value="desc" selected[f.descending()] { "newest first" }
            }
            button type="submit" { "Filter" }
        }
        (job_rows(rows))
        p {
            @if let Some(first) = first { a #prev href=(format!("/jobs?{base}{sep}before={first}")) { "← previous" } " " }
            @if rows.len() as i64 == super::data::PAGE { @if let Some(last) = last { a #next href=(format!("/jobs?{base}{sep}after={last}")) { "next →" } } }
            @if rows.is_empty() { span.muted { "No jobs here." } }
        }
    }
}

/// A job's page: every field, the tails of its output, and (with actions) buttons.
pub fn job(
    row: &Row,
    stdout: Option<(String, bool)>,
    stderr: Option<(String, bool)>,
    actions: Option<&[&str]>,
) -> Markup {
    let term = Terminal::plain(None);
    html! {
        h2 { "Job " (row.jid()) " " span class=(format!("s-{}", row.get("state").as_text().unwrap_or(""))) #state { (row.get("state").as_text().unwrap_or("")) } }
        @if let Some(actions) = actions {
            @for action in actions {
                form method="post" action=(format!("/jobs/{}/action", row.jid())) style="display:inline" {
                    input type="hidden" name="do" value=(action);
                    button type="submit" id=(format!("do-{action}")) { (action) }
                }
                " "
            }
        }
        @for (name, stream) in [("stdout", stdout), ("stderr", stderr)] {
            h3 { (name) @if stream.as_ref().is_some_and(|s| s.1) { span.muted { " (the last part)" } } }
            pre id=(name) { (stream.map(|s| s.0).unwrap_or_default()) }
        }
        h3 { "Fields" }
        table #fields {
            @for (name, cell) in &row.columns {
                @if !matches!(cell, Cell::Null) {
                    tr { th { (name) } td.cmd { (match cell {
                        Cell::Text(t) if ["submitted", "started", "finished", "not_before", "reclaimed_at"].contains(&name.as_str()) =>
                            format!("{} ({t})", term.time_text(t)),
                        Cell::Text(t) if crate::job::JSON_FIELDS.contains(&name.as_str()) =>
                            crate::output::json_for_people(t),
                        Cell::Int(n) if ["max_rss", "mem", "read_bytes", "write_bytes"].contains(&name.as_str()) =>
                            format!("{} ({n} bytes)", crate::human::bytes(*n)),
                        Cell::Real(r) => format!("{}", (r * 1000.0).round() / 1000.0),
                        other => other.to_plain(),
                    }) } }
                }
            }
        }
    }
}

/// The login form for actions.
pub fn login(error: Option<&str>) -> Markup {
    html! {
        h2 { "Sign in to act on jobs" }
        @if let Some(e) = error { div.warn { (e) } }
        p { "The token is in the file ~/.rq/serve-token of the user who started rq serve." }
        form method="post" action="/login" {
            input type="password" name="token" placeholder="token" autocomplete="off";
            button type="submit" #login { "Sign in" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_at_the_same_time_on_a_host_get_rows_of_their_own() {
        let t = |s: i64| jiff::Timestamp::from_second(1_800_000_000 + s).unwrap();
        let bar = |host: &str, start: i64, end: i64| Bar {
            jid: start,
            host: host.into(),
            start: t(start),
            end: Some(t(end)),
            outcome: "ok",
        };
        let bars = [
            bar("a", 0, 10),
            bar("a", 5, 15),
            bar("a", 10, 20),
            bar("b", 0, 30),
            bar("a", 16, 18),
        ];
        // a: 0-10 row 0; 5-15 row 1; 10-20 row 0 again; 16-18 row 1 again; b alone.
        assert_eq!(rows_within_lanes(&bars, t(100)), [0, 1, 0, 0, 1]);
    }
}
