//! What a person sees on a terminal, through a real pseudo-terminal: tables that fit the
//! width, colour unless NO_COLOR, YAML whenever output is piped, `status` on one screen,
//! `top` that draws, redraws and gives the terminal back, a `wait` that says what went
//! wrong, and help, man page and completions from one source.

mod common;

use std::time::Duration;

use common::pty::{self, Pty, strip_ansi};
use common::*;

/// `rq Q args...` as a command for the pty, in the queue's temp dir.
fn on_terminal(q: &TestQueue, args: &[&str]) -> std::process::Command {
    let mut cmd = rq_command();
    cmd.current_dir(q.tmp.path())
        .env("HOME", q.home())
        .arg(q.q())
        .args(args);
    cmd
}

/// A queue with a finished job, a failed one, a pending one with a long command and a
/// holding one.
fn queue_with_history(store: StoreKind) -> TestQueue {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "echo hello"]).ok();
    q.rq(&[
        "submit",
        "-q",
        "-t",
        "nightly",
        "--env",
        "DB_PASSWORD=hunter2",
        "echo broken >&2; exit 3",
    ])
    .ok();
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    let long = format!("./simulate --input data/{} --verbose", "x".repeat(200));
    q.rq(&["submit", "-q", "-p", "5", &long]).ok();
    q.rq(&["submit", "-q", "--stage", "sleep 1"]).ok();
    q
}

fn lines_fit(text: &str, width: usize) {
    for line in strip_ansi(text).lines() {
        assert!(
            unicode_width(line) <= width,
            "a line wider than {width}: {line:?}\n{text}"
        );
    }
}

fn unicode_width(line: &str) -> usize {
    line.chars().count()
}

fn list_is_a_table_on_a_terminal_and_yaml_when_piped(store: StoreKind) {
    let q = queue_with_history(store);
    for width in [80u16, 200] {
        let (code, out) = pty::run(on_terminal(&q, &["list"]), width);
        assert_eq!(code, 0, "{out}");
        let text = strip_ansi(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "a header and four jobs: {text}");
        for header in [
            "jid",
            "state",
            "pri",
            "tag",
            "host",
            "started/age",
            "elapsed",
            "exit",
            "command",
        ] {
            assert!(lines[0].contains(header), "{header} in {}", lines[0]);
        }
        assert!(
            lines[1].contains("finished")
                && lines[1].contains("h1")
                && lines[1].ends_with("echo hello"),
            "{text}"
        );
        assert!(
            lines[2].contains("nightly") && lines[2].contains(" 3 "),
            "exit status 3: {text}"
        );
        assert!(
            lines[3].contains("pending") && lines[3].contains("ago"),
            "{text}"
        );
        assert!(lines[3].ends_with('…'), "a long command is cut: {text}");
        assert!(lines[4].contains("holding"), "{text}");
        lines_fit(&out, width as usize);
        if width == 200 {
            assert!(
                lines[3].contains("--input data/xxxxxxxx"),
                "more of it at 200: {text}"
            );
        }
    }
    // Piped: YAML, byte for byte what --format yaml prints.
    let piped = q.rq(&["list"]).ok();
    assert!(
        piped.stdout.starts_with("---\n-\n jid: 1\n"),
        "{}",
        piped.stdout
    );
    assert_eq!(
        piped.stdout,
        q.rq(&["list", "--format", "yaml"]).ok().stdout
    );
    assert_eq!(piped.records().len(), 4);
    // On a terminal, --format yaml is still YAML.
    let (_, out) = pty::run(on_terminal(&q, &["list", "--format", "yaml"]), 80);
    assert!(strip_ansi(&out).starts_with("---\n-\n jid: 1\n"), "{out}");
}

fn fields_pick_columns_in_order_and_long_adds_the_rest(store: StoreKind) {
    let q = queue_with_history(store);
    let (_, out) = pty::run(on_terminal(&q, &["list", "-f", "command,jid"]), 120);
    let text = strip_ansi(&out);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["command", "jid"], "{text}");
    // -l (as in ls -l) is --long in list: every field of the job, a line each.
    let (_, out) = pty::run(on_terminal(&q, &["list", "-l", "2"]), 60);
    let text = strip_ansi(&out);
    assert!(text.starts_with("job 2  finished  exit 3"), "{text}");
    for more in [
        "submitted",
        "finished",
        "submitter",
        "user",
        "cwd",
        "tag            nightly",
    ] {
        assert!(text.contains(more), "{more} in {text}");
    }
    lines_fit(&out, 60);
    assert!(
        text.contains("DB_PASSWORD") && !text.contains("hunter2"),
        "secrets hidden: {text}"
    );
    // Elsewhere -l is --log, as in the original.
    let out = q.rq(&["feed", "-l"]);
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--log"), "{}", out.stderr);
    // Piped, --fields keeps the YAML field order, as it always did.
    let yaml = q.rq(&["list", "1", "-f", "command,jid"]).ok().stdout;
    assert_eq!(yaml, "---\n-\n jid: 1\n command: echo hello\n");
}

fn colour_on_a_terminal_unless_no_color_or_never(store: StoreKind) {
    let q = queue_with_history(store);
    let (_, coloured) = pty::run(on_terminal(&q, &["list"]), 120);
    assert!(
        coloured.contains("\x1b["),
        "colour on a terminal: {coloured:?}"
    );
    // (Pty::spawn starts from a clean slate: NO_COLOR is set by the shell it runs.)
    let mut cmd = std::process::Command::new("sh");
    cmd.current_dir(q.tmp.path()).args([
        "-c",
        &format!("NO_COLOR=1 exec {} {} list", rq_bin(), q.q()),
    ]);
    let (_, plain) = pty::run(cmd, 120);
    assert!(!plain.contains("\x1b["), "NO_COLOR: {plain:?}");
    assert!(plain.contains("finished"));
    let (_, never) = pty::run(on_terminal(&q, &["status", "--color", "never"]), 120);
    assert!(!never.contains("\x1b["), "--color never: {never:?}");
    // Forced: a table with colour into a pipe.
    let forced = q
        .rq(&["list", "--format", "table", "--color", "always"])
        .ok();
    assert!(forced.stdout.contains("\x1b[") && forced.stdout.starts_with("\x1b[1mjid"));
    // A failed exit status is red, a finished job's state green.
    assert!(
        forced.stdout.contains("\x1b[38;5;9m3"),
        "{:?}",
        forced.stdout
    );
    q.rq(&["list", "--color", "sometimes"]).fails();
}

fn tables_into_a_pipe_take_columns_from_the_environment(store: StoreKind) {
    let q = queue_with_history(store);
    let mut cmd = rq_command();
    cmd.current_dir(q.tmp.path())
        .env("COLUMNS", "60")
        .args([q.q(), "list", "--format", "table"]);
    let out = run_cmd(cmd, None);
    assert_eq!(out.status, 0);
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.stdout);
    lines_fit(&out.stdout, 60);
    assert!(!out.stdout.contains("\x1b["), "no colour into a pipe");
}

fn status_on_a_terminal_is_one_screen(store: StoreKind) {
    let q = queue_with_history(store);
    let (code, out) = pty::run(on_terminal(&q, &["status"]), 100);
    assert_eq!(code, 0);
    let text = strip_ansi(&out);
    assert!(text.starts_with(q.q()) && text.contains("4 jobs"), "{text}");
    for expect in [
        "pending",
        "holding",
        "finished",
        "█",
        "jobs/min",
        "1 ok",
        "1 failed",
        "eta",
        "oldest",
        "pending for",
        "feeders",
        "0 alive",
        "start one with 'rq Q feed --daemon'",
    ] {
        assert!(text.contains(expect), "{expect:?} in\n{text}");
    }
    lines_fit(&out, 100);
    // Piped: the YAML report, as ever.
    let report = q.rq(&["status"]).ok().value();
    assert_eq!(report["jobs"]["finished"], 2);
    // Some jobs only.
    let (_, out) = pty::run(on_terminal(&q, &["status", "1", "2"]), 100);
    let text = strip_ansi(&out);
    assert!(
        text.contains("2 jobs") && text.contains("1 failed"),
        "{text}"
    );
}

fn feeders_show_a_dead_host_in_red(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["configure", "heartbeat=0.5s", "lease=1s"]).ok();
    let alive = q.feeder("alive1", &[]);
    let doomed = q.feeder("doomed", &[]);
    q.wait_for("two feeders", 20, |q| {
        q.rq(&["feeders"]).ok().records().len() == 2
    });
    doomed.signal(libc::SIGKILL);
    q.wait_for("the killed feeder to be dead", 20, |q| {
        q.rq(&["feeders"])
            .ok()
            .records()
            .iter()
            .any(|r| text(r, "host") == "doomed" && text(r, "state") == "dead")
    });
    let (_, out) = pty::run(on_terminal(&q, &["feeders"]), 120);
    let text = strip_ansi(&out);
    assert!(text.lines().next().unwrap().starts_with("host"), "{text}");
    let dead_line = out.lines().find(|l| l.contains("doomed")).unwrap();
    assert!(
        dead_line.contains("\x1b[38;5;9mdead"),
        "dead in red: {dead_line:?}"
    );
    let alive_line = out.lines().find(|l| l.contains("alive1")).unwrap();
    assert!(
        alive_line.contains("\x1b[38;5;10malive"),
        "alive in green: {alive_line:?}"
    );
    let (_, status) = pty::run(on_terminal(&q, &["status"]), 120);
    assert!(strip_ansi(&status).contains("1 dead (doomed"), "{status}");
    drop(alive);
    drop(doomed);
}

fn top_draws_redraws_switches_views_and_gives_the_terminal_back(store: StoreKind) {
    let q = TestQueue::on(store);
    let mut top = Pty::spawn(on_terminal(&q, &["top"]), 100, 30);
    assert!(
        top.wait_screen(20, |s| s.contains("0 jobs") && s.contains("Running")),
        "top draws: {}",
        top.screen()
    );
    // Raw mode while it runs.
    assert_eq!(top.termios().c_lflag & libc::ICANON, 0, "raw mode");
    // A job submitted meanwhile shows at the next refresh.
    q.rq(&["submit", "-q", "echo from-another-shell"]).ok();
    assert!(
        top.wait_screen(20, |s| s.contains("1 jobs") && s.contains("pending 1")),
        "top redraws: {}",
        top.screen()
    );
    top.send(b"p");
    assert!(
        top.wait_screen(10, |s| s.contains("echo from-another-shell")),
        "the pending view lists it: {}",
        top.screen()
    );
    // A command longer than the screen is cut with an ellipsis.
    let long = format!("echo {}", "y".repeat(150));
    q.rq(&["submit", "-q", &long]).ok();
    assert!(
        top.wait_screen(10, |s| s
            .lines()
            .any(|l| l.contains("echo yyyy") && l.trim_end().ends_with('…'))),
        "{}",
        top.screen()
    );
    top.send(b"f");
    assert!(
        top.wait_screen(10, |s| s.contains("no feeder has fed this queue")),
        "{}",
        top.screen()
    );
    top.send(b"q");
    let pid = top.pid();
    let (code, out) = top.finish(20);
    assert_eq!(code, Some(0), "top quits on q (pid {pid})");
    // Back to the main screen, cursor shown, cooked mode again.
    let tail = &out[out.rfind("\x1b[?1049l").expect("left the alternate screen")..];
    assert!(out.contains("\x1b[?1049h"), "used the alternate screen");
    assert!(out.contains("\x1b[?25h"), "cursor shown again: {tail:?}");
}

fn top_restores_the_terminal_on_term_and_refuses_a_pipe(store: StoreKind) {
    let q = TestQueue::on(store);
    let top = Pty::spawn(on_terminal(&q, &["status", "--watch"]), 80, 24);
    assert!(
        top.wait_screen(20, |s| s.contains("Pending")),
        "{}",
        top.screen()
    );
    unsafe { libc::kill(top.pid(), libc::SIGTERM) };
    let (code, out) = top.finish(20);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("\x1b[?1049l"),
        "left the alternate screen on TERM"
    );
    let piped = q.rq(&["top"]);
    assert_eq!(piped.status, 2);
    assert!(
        piped.stderr.contains("needs a terminal"),
        "{}",
        piped.stderr
    );
}

fn top_leaves_cooked_mode_behind(store: StoreKind) {
    let q = TestQueue::on(store);
    let mut top = Pty::spawn(on_terminal(&q, &["top"]), 80, 24);
    assert!(top.wait_screen(20, |s| s.contains("Running")));
    assert_eq!(top.termios().c_lflag & libc::ICANON, 0, "raw while running");
    top.send(b"\x03"); // Ctrl-C
    // The line discipline outlives the program while the master is open: its modes are
    // what rq left behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline && common::alive(top.pid()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let modes = top.termios();
    assert_ne!(modes.c_lflag & libc::ICANON, 0, "canonical mode restored");
    assert_ne!(modes.c_lflag & libc::ECHO, 0, "echo restored");
    let (code, _) = top.finish(10);
    assert_eq!(code, Some(0), "Ctrl-C quits");
}

fn top_gives_the_terminal_back_after_a_panic(store: StoreKind) {
    let q = TestQueue::on(store);
    let mut cmd = on_terminal(&q, &["top"]);
    cmd.env("RQ_FAULT", "top_panic");
    let top = Pty::spawn(cmd, 80, 24);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline && common::alive(top.pid()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let modes = top.termios();
    let (code, out) = top.finish(10);
    assert_eq!(code, Some(101), "a panic: {out}");
    assert_ne!(
        modes.c_lflag & libc::ICANON,
        0,
        "cooked mode after the panic"
    );
    assert!(out.contains("\x1b[?1049l"), "left the alternate screen");
    assert!(
        out.contains("injected fault"),
        "the panic message is readable: {out}"
    );
}

fn wait_says_which_jobs_failed_and_why(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    q.rq(&["submit", "-q", "echo 'cannot open input.dat' >&2; exit 3"])
        .ok();
    q.rq(&["submit", "-q", "kill -KILL $$"]).ok();
    let _f = q.feeder("h1", &[]);
    let out = q.rq(&["wait"]);
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("rq: job 2 failed with exit status 3 on h1: cannot open input.dat"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("rq: job 3 was killed by KILL on h1"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("job 1 "), "{}", out.stderr);
    assert_eq!(q.rq(&["wait", "1"]).status, 0);
}

fn wait_warns_when_nothing_can_run_and_gives_up_at_its_timeout(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    let out = q.rq(&["wait", "--timeout", "1s"]);
    assert_eq!(out.status, 124, "{}", out.stderr);
    assert!(out.stderr.contains("no feeder is alive"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("gave up after 1s: 1 of 1 jobs not done"),
        "{}",
        out.stderr
    );

    // Holding jobs.
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "--stage", "true"]).ok();
    let out = q.rq(&["wait", "--timeout", "1s"]);
    assert_eq!(out.status, 124);
    assert!(
        out.stderr.contains("holding: they run only once released"),
        "{}",
        out.stderr
    );

    // Jobs only hosts without a live feeder may run.
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "--runner", "gpu7", "true"]).ok();
    let _f = q.feeder("h1", &[]);
    q.wait_for("the feeder to live", 20, |q| {
        q.rq(&["feeders"])
            .ok()
            .records()
            .iter()
            .any(|r| text(r, "state") == "alive")
    });
    let out = q.rq(&["wait", "--timeout", "2s"]);
    assert_eq!(out.status, 124);
    assert!(
        out.stderr.contains(
            "may run only on hosts with no live feeder (e.g. job 1: --runner gpu7; live: h1)"
        ),
        "{}",
        out.stderr
    );
    q.rq(&["wait", "--timeout", "soon"]).fails();
}

fn wait_shows_progress_on_a_terminal(store: StoreKind) {
    let q = TestQueue::on(store);
    for i in 0..3 {
        q.rq(&["submit", "-q", &format!("sleep 0.{i}")]).ok();
    }
    let _f = q.feeder("h1", &[]);
    let (code, out) = pty::run(on_terminal(&q, &["wait"]), 100);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3/3 done"), "{out:?}");
}

#[test]
fn help_man_page_and_completions_say_the_same_thing() {
    let tmp = tempfile::tempdir().unwrap();
    let man = rq_in(tmp.path(), &["man"], None).ok().stdout;
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH MODES",
        ".SH OPTIONS",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH \"EXIT STATUS\"",
        ".SH EXAMPLES",
    ] {
        assert!(man.contains(section), "{section}");
    }
    // Every mode has its section, with the text `rq help MODE` prints.
    for mode in [
        "create",
        "submit",
        "list",
        "status",
        "wait",
        "top",
        "feed",
        "configure",
        "kill",
        "rotate",
    ] {
        assert!(man.contains(&format!(".SS {mode}\n")), "{mode}");
        let help = rq_in(tmp.path(), &["help", mode], None).ok().stdout;
        let line = help.lines().nth(2).unwrap();
        let roff = line.replace('\\', "\\e").replace('-', "\\-");
        assert!(man.contains(&roff), "man has {mode}'s help: {line}");
    }
    // Options with their arguments, in help and man alike.
    let help = rq_in(tmp.path(), &["help", "wait"], None).ok().stdout;
    assert!(help.contains("--timeout DURATION"), "{help}");
    assert!(help.contains("124"), "the exit status rule: {help}");
    let help = rq_in(tmp.path(), &["help", "submit"], None).ok().stdout;
    assert!(
        help.contains("-p, --priority N") && help.contains("--after JIDS"),
        "{help}"
    );
    assert!(
        man.contains("\\-\\-timeout DURATION") || man.contains("\\-\\-timeout\\fR \\fIDURATION"),
        "man lists option arguments"
    );

    // Completions offer states, fields, formats and configure keys (bash, for real).
    let script = rq_in(tmp.path(), &["completions", "bash"], None)
        .ok()
        .stdout;
    let file = tmp.path().join("rq.bash");
    std::fs::write(&file, script).unwrap();
    let complete = |words: &[&str]| -> String {
        let line = words.join(" ");
        let program = format!(
            "source {}; COMP_WORDS=({line}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; _rq rq '{}' '{}'; echo \"${{COMPREPLY[*]}}\"",
            file.display(),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &program])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete(&["rq", "/q", "list", "ru"]), "running");
    assert_eq!(complete(&["rq", "/q", "wait", "ca"]), "cancelled");
    assert_eq!(
        complete(&["rq", "/q", "list", "--fields", "subm"]),
        "submitted submitter"
    );
    assert_eq!(complete(&["rq", "/q", "list", "--format", "j"]), "json");
    assert_eq!(complete(&["rq", "/q", "configure", "lea"]), "lease=");
    assert!(complete(&["rq", "/q", "to"]).split(' ').any(|m| m == "top"));
}

crate::on_both_stores!(
    list_is_a_table_on_a_terminal_and_yaml_when_piped,
    fields_pick_columns_in_order_and_long_adds_the_rest,
    colour_on_a_terminal_unless_no_color_or_never,
    tables_into_a_pipe_take_columns_from_the_environment,
    status_on_a_terminal_is_one_screen,
    feeders_show_a_dead_host_in_red,
    top_draws_redraws_switches_views_and_gives_the_terminal_back,
    top_restores_the_terminal_on_term_and_refuses_a_pipe,
    top_leaves_cooked_mode_behind,
    top_gives_the_terminal_back_after_a_panic,
    wait_says_which_jobs_failed_and_why,
    wait_warns_when_nothing_can_run_and_gives_up_at_its_timeout,
    wait_shows_progress_on_a_terminal,
);
