//! `rq Q serve` in a real browser (headless Chromium through chromedriver), and its
//! /metrics read by a real Prometheus text parser and checked against the queue.

mod common;

use std::time::Duration;

use common::browser::{Browser, Server};
use common::*;
use fantoccini::Locator;

async fn the_overview_counts_and_updates_without_a_reload(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    q.rq(&["submit", "-q", "echo a"]).ok();
    q.rq(&["submit", "-q", "echo b"]).ok();
    let server = Server::start(&q, &[]);
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/", server.url))
        .await
        .unwrap();
    assert_eq!(browser.text("#count-pending b").await, "2");
    assert_eq!(browser.text("#count-finished b").await, "1");
    assert_eq!(browser.text("#total b").await, "3");
    assert_eq!(browser.text("#ok").await, "1");
    let source = browser.client.source().await.unwrap();
    assert_eq!(source.matches("<rect").count(), 60, "an hour of minutes");
    assert!(
        source.contains("1 jobs, 0 min ago") || source.contains("1 jobs, 1 min ago"),
        "the job that just ended is in the chart"
    );
    browser.screenshot("dashboard-overview").await;
    // A mark that a reload would wipe out.
    browser
        .client
        .execute("window.rqMark = 42; return 0;", vec![])
        .await
        .unwrap();
    q.rq(&["submit", "-q", "echo c"]).ok();
    let pending = browser
        .wait_text("#count-pending b", 15, |t| t == "3")
        .await;
    assert_eq!(pending, "3", "the page shows the new job by itself");
    let mark = browser
        .client
        .execute("return window.rqMark;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, serde_json::json!(42), "without a reload");
    // Without JavaScript the same numbers are in the HTML itself.
    let (status, html) = server.request("GET", "/", &[], "");
    assert_eq!(status, 200);
    assert!(html.contains("id=\"count-pending\""), "{html}");
    browser.close().await;
}

async fn a_jobs_page_follows_its_output_live(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&[
        "submit",
        "-q",
        "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.7; done; echo oops >&2",
    ])
    .ok();
    q.rq(&[
        "submit",
        "-q",
        "-t",
        "other",
        "--env",
        "API_TOKEN=s3cret",
        "--mem",
        "100M",
        "echo other",
    ])
    .ok();
    // Over its --mem: killed, and the page says why.
    q.rq(&[
        "submit",
        "-q",
        "--mem",
        "20M",
        "python3 -c \"import time\nx = b'1' * (200 << 20)\ntime.sleep(60)\"",
    ])
    .ok();
    let server = Server::start(&q, &[]);
    let browser = Browser::start().await;
    let _f = q.feeder("h1", &[]);
    browser
        .client
        .goto(&format!("{}/jobs/1", server.url))
        .await
        .unwrap();
    let out = browser
        .wait_text("#stdout", 20, |t| t.contains("line2"))
        .await;
    assert!(
        out.contains("line2") && !out.contains("line6"),
        "mid-run: {out:?}"
    );
    let out = browser
        .wait_text("#stdout", 20, |t| t.contains("line6"))
        .await;
    assert!(out.contains("line6"), "followed to the end: {out:?}");
    let state = browser.wait_text("#state", 20, |t| t == "finished").await;
    assert_eq!(state, "finished");
    assert_eq!(
        browser.wait_text("#stderr", 10, |t| t == "oops").await,
        "oops"
    );
    browser.screenshot("dashboard-job").await;
    // The jobs table filters (by tag here) and links to the job.
    browser
        .client
        .goto(&format!("{}/jobs?tag=other", server.url))
        .await
        .unwrap();
    let rows = browser
        .client
        .find_all(Locator::Css("#jobs tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(browser.text("#jobs tbody tr").await.contains("echo other"));
    // Secret-looking variables are not shown.
    q.wait_for("every job to end", 60, |q| q.count("finished") == 3);
    browser
        .client
        .goto(&format!("{}/jobs/2", server.url))
        .await
        .unwrap();
    let fields = browser.text("#fields").await;
    assert!(
        fields.contains("API_TOKEN") && fields.contains("<hidden>"),
        "{fields}"
    );
    assert!(!browser.client.source().await.unwrap().contains("s3cret"));
    // Memory in units, with the bytes; what the run read and wrote likewise.
    assert!(fields.contains("100M (104857600 bytes)"), "{fields}");
    for name in ["max_rss", "read_bytes", "write_bytes"] {
        let line = fields.lines().find(|l| l.starts_with(name)).unwrap_or("");
        assert!(line.ends_with(" bytes)"), "{name}: {fields}");
    }
    browser
        .client
        .goto(&format!("{}/jobs/3", server.url))
        .await
        .unwrap();
    let fields = browser.text("#fields").await;
    assert!(fields.contains("memory: peak"), "{fields}");
    assert!(fields.contains("above --mem 20M"), "{fields}");
    assert!(fields.contains("KILL"), "{fields}");
    browser
        .client
        .goto(&format!("{}/jobs", server.url))
        .await
        .unwrap();
    browser.screenshot("dashboard-jobs").await;
    // No path from a URL reaches a file: a jid is a number or nothing.
    let (status, _) = server.request("GET", "/jobs/..%2F..%2Fetc%2Fpasswd", &[], "");
    assert_eq!(status, 404);
    browser.close().await;
}

async fn the_hosts_view_shows_a_killed_feeder_as_dead(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["configure", "heartbeat=0.5s", "lease=1s"]).ok();
    for i in 0..6 {
        q.rq(&["submit", "-q", &format!("sleep 0.{i}")]).ok();
    }
    let _alive = q.feeder("alive1", &[]);
    let doomed = q.feeder("doomed", &[]);
    let server = Server::start(&q, &[]);
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/hosts", server.url))
        .await
        .unwrap();
    let state = browser
        .wait_text("tr[data-host=doomed] td:nth-child(2)", 15, |t| t == "alive")
        .await;
    assert_eq!(state, "alive");
    doomed.signal(libc::SIGKILL);
    let state = browser
        .wait_text("tr[data-host=doomed] td:nth-child(2)", 20, |t| t == "dead")
        .await;
    assert_eq!(
        state, "dead",
        "the page shows the killed feeder dead, by itself"
    );
    assert_eq!(
        browser.text("tr[data-host=alive1] td:nth-child(2)").await,
        "alive"
    );
    let bars = browser
        .client
        .find_all(Locator::Css("#timeline rect.ok"))
        .await
        .unwrap();
    assert!(!bars.is_empty(), "the timeline has the jobs that ran");
    browser.screenshot("dashboard-hosts").await;
    browser.close().await;
}

async fn actions_need_the_token(store: StoreKind) {
    let q = TestQueue::on(store);
    // Runs until killed (or the file goes), however slow the browser is to start.
    let hold = q.tmp.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    q.rq(&["submit", "-q", "while [ -e hold ]; do sleep 0.1; done"])
        .ok();
    q.rq(&["submit", "-q", "--stage", "echo later"]).ok();
    let _f = q.feeder("h1", &[]);
    q.wait_for("the job to run", 20, |q| q.count("running") == 1);

    // Read-only by default: POST is refused, whoever asks.
    let ro = Server::start(&q, &[]);
    let (status, body) = ro.request(
        "POST",
        "/jobs/1/action",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "do=kill",
    );
    assert_eq!(status, 403, "{body}");
    drop(ro);

    let server = Server::start(&q, &["--allow-actions"]);
    let token = std::fs::read_to_string(q.home().join(".rq/serve-token"))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        server.stderr().contains(&token),
        "printed once: {}",
        server.stderr()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(q.home().join(".rq/serve-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _) = server.request("POST", "/jobs/1/action", &form, "do=kill");
    assert_eq!(status, 401, "no token");
    let (status, _) = server.request(
        "POST",
        "/jobs/1/action",
        &[form[0], ("X-RQ-Token", "not-the-token")],
        "do=kill",
    );
    assert_eq!(status, 401, "a wrong token");
    // Signing in sets a session cookie: a random value, not the token (browsers send a
    // host's cookies to its every port), that expires.
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let (status, head, _) = server.request_to(
        &format!("127.0.0.1:{port}"),
        "POST",
        "/login",
        &[form[0]],
        &format!("token={token}"),
    );
    assert_eq!(status, 303, "{head}");
    let set_cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        !set_cookie.contains(&token),
        "the token is the cookie: {set_cookie}"
    );
    assert!(set_cookie.contains("Max-Age="), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    let session = set_cookie
        .split_once("rq_session=")
        .and_then(|(_, rest)| rest.split(';').next())
        .unwrap()
        .to_string();
    let cookie = format!("rq_session={session}");
    // The token itself as a cookie is nothing.
    let (status, _) = server.request(
        "POST",
        "/jobs/2/action",
        &[form[0], ("Cookie", &format!("rq_token={token}"))],
        "do=release",
    );
    assert_eq!(status, 401, "the token as a cookie");
    let (status, _) = server.request(
        "POST",
        "/jobs/2/action",
        &[form[0], ("Cookie", "rq_session=0123456789abcdef")],
        "do=release",
    );
    assert_eq!(status, 401, "a made-up session");
    // A cross-site form post is refused even with the session cookie.
    let (status, _) = server.request(
        "POST",
        "/jobs/2/action",
        &[
            form[0],
            ("Cookie", &cookie),
            ("Origin", "http://evil.example"),
        ],
        "do=release",
    );
    assert_eq!(status, 403, "cross-site");
    assert_eq!(q.count("holding"), 1);
    // With the token in a header: released, as `rq update 2 state=pending` would.
    let (status, _) = server.request(
        "POST",
        "/jobs/2/action",
        &[form[0], ("X-RQ-Token", &token)],
        "do=release",
    );
    assert_eq!(status, 303);
    q.wait_for("the released job to run", 20, |q| q.count("holding") == 0);

    // In the browser: no button before signing in; sign in; kill.
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/jobs/1", server.url))
        .await
        .unwrap();
    assert!(
        browser.client.find(Locator::Id("do-kill")).await.is_err(),
        "no kill button without the token"
    );
    let refused = browser
        .client
        .execute(
            "return fetch('/jobs/1/action', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'do=kill'}).then(r => r.status);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused, serde_json::json!(401));
    assert_eq!(q.count("running"), 1, "still running");
    browser
        .client
        .goto(&format!("{}/login", server.url))
        .await
        .unwrap();
    let field = browser
        .client
        .find(Locator::Css("input[name=token]"))
        .await
        .unwrap();
    field.send_keys(&token).await.unwrap();
    // The click may be answered "stale element" when the form's navigation wins the race
    // with the click's reply: whether it signed in is checked just below.
    let _ = browser
        .client
        .find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await;
    // Signed in once the form's answer (a redirect to the overview, with the cookie) has
    // arrived: the click does not wait for it. The deadline only guards against a hang
    // (seen taking over 15 s with a release build running beside the tests).
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while browser.client.current_url().await.unwrap().path() != "/" {
        assert!(
            std::time::Instant::now() < deadline,
            "the sign-in never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .client
        .goto(&format!("{}/jobs/1", server.url))
        .await
        .unwrap();
    browser.screenshot("dashboard-actions").await;
    browser
        .client
        .find(Locator::Id("do-kill"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    q.wait_for("the killed job to end", 20, |q| {
        let jobs = q.rq(&["list", "1"]).ok().records();
        text(&jobs[0], "state") == "finished" && text(&jobs[0], "signal") == "TERM"
    });
    assert!(
        server
            .stderr()
            .contains("rq: serve: kill job 1 (asked from 127.0.0.1"),
        "actions are logged: {}",
        server.stderr()
    );
    browser.close().await;
    let _ = std::fs::remove_file(hold);
}

/// Parse OpenMetrics/Prometheus text with a real parser: every sample, by name and labels.
fn samples(text: &str) -> Vec<prometheus_parse::Sample> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .expect("valid exposition text")
        .samples
}

fn value(samples: &[prometheus_parse::Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {name} {label:?}"));
    match sample.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("{name} is not a number"),
    }
}

// async only so one macro makes every test of this file (its calls all block).
async fn metrics_parse_and_match_the_queue(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "true"]).ok();
    q.rq(&["submit", "-q", "exit 3"]).ok();
    let mut f = q.feeder("h1", &["--exit_when_empty"]);
    assert_eq!(f.wait_exit(Duration::from_secs(30)), Some(0));
    q.rq(&["submit", "-q", "echo later"]).ok();
    q.rq(&["submit", "-q", "--stage", "echo held"]).ok();

    let once = q.rq(&["metrics"]).ok().stdout;
    assert!(
        once.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let server = Server::start(&q, &[]);
    let (status, served) = server.request("GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    for text in [&once, &served] {
        let s = samples(text);
        assert_eq!(value(&s, "rq_jobs", Some(("state", "pending"))), 1.0);
        assert_eq!(value(&s, "rq_jobs", Some(("state", "holding"))), 1.0);
        assert_eq!(value(&s, "rq_jobs", Some(("state", "finished"))), 2.0);
        assert_eq!(value(&s, "rq_jobs_finished_total", None), 2.0);
        assert_eq!(value(&s, "rq_jobs_failed_total", None), 1.0);
        assert_eq!(value(&s, "rq_jobs_dead_total", None), 0.0);
        assert_eq!(
            value(&s, "rq_feeder_up", Some(("host", "h1"))),
            0.0,
            "it exited"
        );
        assert_eq!(value(&s, "rq_feeder_max_feed", Some(("host", "h1"))), 2.0);
        assert!(value(&s, "rq_oldest_pending_age_seconds", None) >= 0.0);
        assert!(value(&s, "rq_queue_db_bytes", None) > 0.0);
        assert_eq!(value(&s, "rq_job_duration_seconds_count", None), 2.0);
    }
    // Names follow the conventions: the prefix, units, _total on counters.
    for line in once.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("rq_"), "{line}");
    }
}

// async only so one macro makes every test of this file (its calls all block).
async fn serve_listens_on_loopback_and_warns_about_wider_listening(store: StoreKind) {
    let q = TestQueue::on(store);
    let server = Server::start(&q, &[]);
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    assert!(!server.stderr().contains("anyone who can reach"));
    drop(server);
    let wide = Server::start(&q, &["--listen", "0.0.0.0:0"]);
    assert!(
        wide.stderr()
            .contains("anyone who can reach this port sees every job"),
        "{}",
        wide.stderr()
    );
    drop(wide);
    q.rq(&["serve", "--listen", "nowhere"]).fails();
    // --daemon: detached, says its pid and address, and answers.
    let out = q
        .rq_as("h1", &["serve", "--daemon", "--listen", "127.0.0.1:0"])
        .ok();
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(words[0], "pid", "{}", out.stdout);
    let pid: i32 = words[1].parse().unwrap();
    let addr = words[3]
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let answered = std::net::TcpStream::connect(&addr).is_ok();
    // SAFETY: ending the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(answered, "the daemon serves on {addr}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!common::alive(pid), "TERM stops it");
    // A big request body is refused, not read.
    let server = Server::start(&q, &[]);
    // A client that sends half a request and stalls does not hold up anyone else.
    let host = server.url.trim_start_matches("http://").to_string();
    let mut stalled = Vec::new();
    for _ in 0..20 {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&host).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        stalled.push(s);
    }
    let started = std::time::Instant::now();
    let (status, _) = server.request("GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served beside stalled clients"
    );
    drop(stalled);
    let big = "x".repeat(100_000);
    let (status, _) = server.request(
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("token={big}"),
    );
    assert!(status == 413 || status == 403, "{status}");
}

/// The Prometheus project's own parser of the OpenMetrics text format (the Python
/// client's, from PyPI in a virtual environment made once under the target directory):
/// every sample as `{name, labels, value}`. It fails on text that is not valid.
fn openmetrics_samples(text: &str) -> Vec<serde_json::Value> {
    static VENV: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let venv = VENV.get_or_init(|| {
        let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("openmetrics-venv");
        let python = venv.join("bin/python");
        let ready = || {
            std::process::Command::new(&python)
                .args(["-c", "import prometheus_client.openmetrics.parser"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ready() {
            let made = std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3");
            assert!(made.success(), "python3 -m venv");
            let installed = std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "prometheus-client==0.26.0"])
                .status()
                .expect("pip");
            assert!(installed.success(), "pip install prometheus-client");
        }
        assert!(ready());
        python
    });
    let script = "import sys, json\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = [{'name': s.name, 'labels': s.labels, 'value': s.value}\n\
               for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
        print(json.dumps(out))\n";
    let mut cmd = std::process::Command::new(venv);
    cmd.args(["-c", script]);
    let run = run_cmd(cmd, Some(text));
    assert_eq!(
        run.status, 0,
        "not valid OpenMetrics: {}\n{text}",
        run.stderr
    );
    serde_json::from_str(&run.stdout).unwrap()
}

/// A host name is anyone's to choose (`RQ_HOST`, a file dropped in `Q/hosts/`): one with a
/// quote, a brace, a backslash and a newline stays one label value of its own host's
/// samples, as the OpenMetrics parser reads it back, and adds no metric.
async fn a_hostile_host_name_cannot_forge_metrics(store: StoreKind) {
    let q = TestQueue::on(store);
    let hostile = "evil\"} 1\nrq_forged{x=\"y\\";
    let hosts = q.files().join("hosts");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("evil.hb"),
        serde_json::json!({ "host": hostile, "pid": 1, "max_feed": 2 }).to_string(),
    )
    .unwrap();
    let once = q.rq(&["metrics"]).ok().stdout;
    let server = Server::start(&q, &[]);
    let (status, served) = server.request("GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    for text in [&once, &served] {
        assert!(!text.contains("\nrq_forged"), "a forged line: {text}");
        let samples = openmetrics_samples(text);
        assert!(
            samples
                .iter()
                .all(|s| s["name"].as_str().unwrap().starts_with("rq_")),
            "{samples:?}"
        );
        let up: Vec<_> = samples
            .iter()
            .filter(|s| s["name"] == "rq_feeder_up")
            .collect();
        assert_eq!(up.len(), 1, "one host, one sample: {up:?}");
        assert_eq!(
            up[0]["labels"]["host"], hostile,
            "the name, read back whole"
        );
    }
}

/// DNS rebinding: a page whose own name now points at 127.0.0.1 has the browser send
/// requests with that name as `Host`. Every route refuses them (421); loopback names,
/// the address, and names given with --allow-host are answered.
async fn only_its_own_names_are_answered(store: StoreKind) {
    let q = TestQueue::on(store);
    q.rq(&["submit", "-q", "echo secret-output"]).ok();
    let server = Server::start(&q, &["--allow-actions", "--allow-host", "dash.example.org"]);
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let routes: [(&str, &str, &str); 10] = [
        ("GET", "/", ""),
        ("GET", "/?partial=1", ""),
        ("GET", "/hosts", ""),
        ("GET", "/jobs", ""),
        ("GET", "/jobs/1", ""),
        ("GET", "/jobs/1?partial=1", ""),
        ("GET", "/metrics", ""),
        ("GET", "/login", ""),
        ("POST", "/login", "token=x"),
        ("POST", "/jobs/1/action", "do=hold"),
    ];
    for (method, path, body) in routes {
        for host in [
            format!("rebound.example:{port}"),
            "rebound.example".to_string(),
            format!("127.0.0.1.rebound.example:{port}"),
            String::new(),
        ] {
            let (status, _, text) = server.request_to(&host, method, path, &[form], body);
            assert_eq!(status, 421, "{method} {path} as {host:?}: {text}");
            assert!(
                !text.contains("secret-output") && !text.contains("echo"),
                "{text}"
            );
        }
        if method == "GET" {
            for host in [
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("dash.example.org:{port}"),
            ] {
                let (status, _, text) = server.request_to(&host, method, path, &[], body);
                assert_eq!(status, 200, "{method} {path} as {host}: {text}");
            }
        }
    }
}

/// Slow clients (headers trickled, never finished) cannot take the dashboard away: more
/// of them than it keeps open at once, and it still answers; each is closed when its
/// headers are late.
async fn slow_clients_do_not_starve_the_dashboard(store: StoreKind) {
    use std::io::{Read, Write};
    let q = TestQueue::on(store);
    let server = Server::start(&q, &[]);
    let address = server.url.trim_start_matches("http://").to_string();
    // 400 connections (the dashboard keeps 256; well under the usual 1,024 descriptors of
    // this test process), each with half a request line.
    let mut slow = Vec::new();
    for _ in 0..400 {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0").unwrap();
        slow.push(stream);
    }
    for _ in 0..5 {
        let (status, body) = server.request("GET", "/metrics", &[], "");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("rq_jobs"), "{body}");
    }
    // The first slow client is closed once its headers are late (10 s): it reads the end
    // of its connection. The read bound only keeps a failure from hanging the test.
    let mut first = slow.swap_remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut rest = Vec::new();
    let read = first.read_to_end(&mut rest);
    assert!(read.is_ok(), "still open after 60 s: {read:?}");
    let (status, _) = server.request("GET", "/", &[], "");
    assert_eq!(status, 200);
}

crate::on_both_stores_async!(
    only_its_own_names_are_answered,
    slow_clients_do_not_starve_the_dashboard,
    a_hostile_host_name_cannot_forge_metrics,
    the_overview_counts_and_updates_without_a_reload,
    a_jobs_page_follows_its_output_live,
    the_hosts_view_shows_a_killed_feeder_as_dead,
    actions_need_the_token,
    metrics_parse_and_match_the_queue,
    serve_listens_on_loopback_and_warns_about_wider_listening,
);
