//! `rq Q serve`: a live web dashboard and an OpenMetrics endpoint, from the binary alone.
//!
//! axum on a small tokio runtime that exists only in this mode (the feeder and the CLI
//! stay synchronous). SQLite is read on the blocking pool, through one cached snapshot
//! per second for every viewer (`data::Cache`), never under the write lock. Read-only
//! unless `--allow-actions`: then kill, hold, release and resubmit buttons work for
//! whoever shows the token from `~/.rq/serve-token` (a header or a same-site cookie),
//! by POST only, through the same queue functions as the CLI, and each is logged.

mod data;
mod guard;
mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::error::{Error, IoContext, Result};
use crate::queue::{Changes, Queue, Selection, SubmitOptions};
use crate::store::Access;

pub use data::Snapshot;

/// How `serve` was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: String,
    pub daemon: bool,
    pub allow_actions: bool,
    /// Host names answered besides loopback names and the listen address.
    pub allow_hosts: Vec<String>,
    pub log: Option<PathBuf>,
    pub quiet: bool,
}

struct App {
    cache: Mutex<data::Cache>,
    queue_name: String,
    token: Option<String>,
    hosts: guard::AllowedHosts,
    /// Signed-in browsers: random session values (the cookie), until they expire. The
    /// cookie is never the token: browsers send a host's cookies to every port of it, so
    /// any other local web server would receive it.
    sessions: Mutex<HashMap<String, Instant>>,
}

/// How long a sign-in lasts.
const SESSION_LIFE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 1000;

type Shared = Arc<App>;

/// Run the server until it is stopped (TERM, INT).
pub fn run(queue: &Path, queue_name: &str, opts: Options) -> Result<i32> {
    let addr: SocketAddr = opts.listen.parse().map_err(|_| {
        Error::usage(format!(
            "--listen: '{}' is not an address and port like 127.0.0.1:8080",
            opts.listen
        ))
    })?;
    // The queue must open before anything else happens (a clear error, not a dead page).
    drop(Queue::open(queue, Access::ReadOnly)?);
    if !addr.ip().is_loopback() {
        crate::note!(
            "rq: serve: listening on {addr}: anyone who can reach this port sees every job's \
             command, output and host. To keep it private, listen on 127.0.0.1 and use an \
             ssh tunnel (ssh -L 8080:127.0.0.1:8080 HOST)."
        );
    }
    let token = if opts.allow_actions {
        Some(token()?)
    } else {
        None
    };
    let listener = std::net::TcpListener::bind(addr)
        .context(|| format!("cannot listen on {addr} (is another server there?)"))?;
    let local = listener
        .local_addr()
        .context(|| "cannot read the listening address".into())?;
    listener
        .set_nonblocking(true)
        .context(|| "cannot set up the listening socket".into())?;
    if opts.daemon {
        // SAFETY: no thread and no database connection exists yet.
        match unsafe { libc::fork() } {
            -1 => {
                return Err(std::io::Error::last_os_error()).context(|| "cannot fork".into());
            }
            0 => {
                // SAFETY: in the child, still single-threaded.
                unsafe {
                    libc::setsid();
                    match libc::fork() {
                        -1 => libc::_exit(1),
                        0 => {}
                        pid => {
                            if !opts.quiet {
                                crate::note!(inline "");
                                let _ = crate::output::to_stdout(&format!(
                                    "pid {pid} serving http://{local}/\n"
                                ));
                            }
                            libc::_exit(0)
                        }
                    }
                }
                crate::control::redirect_stdio(opts.log.as_deref())?;
                let _ = std::env::set_current_dir("/");
            }
            child => {
                let mut status = 0;
                // SAFETY: reap the intermediate child, which printed the pid.
                unsafe { libc::waitpid(child, &mut status, 0) };
                return Ok(0);
            }
        }
    } else if !opts.quiet {
        crate::output::to_stdout(&format!(
            "serving http://{local}/ ({}; Ctrl-C stops)\n",
            if token.is_some() {
                "actions allowed with the token"
            } else {
                "read-only"
            }
        ))?;
    }
    let access = if opts.allow_actions {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    let q = Queue::open(queue, access)?;
    let app = Arc::new(App {
        cache: Mutex::new(data::Cache::new(q)),
        queue_name: queue_name.to_string(),
        token,
        hosts: guard::AllowedHosts::new(addr.ip(), &opts.allow_hosts),
        sessions: Mutex::new(HashMap::new()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context(|| "cannot start the server's runtime".into())?;
    runtime.block_on(serve(listener, app))
}

async fn serve(listener: std::net::TcpListener, app: Shared) -> Result<i32> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .context(|| "cannot use the listening socket".into())?;
    let router = Router::new()
        .route("/", get(overview))
        .route("/hosts", get(hosts))
        .route("/jobs", get(jobs))
        .route("/jobs/{jid}", get(job))
        .route("/jobs/{jid}/action", post(action))
        .route("/login", get(login_form).post(login))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(16 * 1024))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(20),
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            host_check,
        ))
        .with_state(app);
    let connections = Arc::new(guard::Connections::default());
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors, say: not the end of the server.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(place) = connections.admit() else {
            // Every connection is busy answering a request: this one waits its turn
            // elsewhere (closed now).
            drop(stream);
            continue;
        };
        let router = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let busy = place.busy.clone();
        let service = hyper::service::service_fn(move |request| {
            let in_request = guard::InRequest::enter(&busy);
            let router = router.clone();
            async move {
                let response = tower::ServiceExt::oneshot(router, request).await;
                drop(in_request);
                response
            }
        });
        let id = place.id;
        let open = connections.clone();
        let task = tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(guard::HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = connection.await;
            open.close(id);
        });
        connections.serving(id, task.abort_handle());
    }
    Ok(0)
}

/// Requests addressed to a name the dashboard does not answer to (DNS rebinding: a web
/// page that pointed its own name at this address) get 421, on every route.
async fn host_check(
    State(app): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    match host {
        Some(host) if app.hosts.allows(host) => next.run(request).await,
        _ => (
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard answers only to localhost, the address it listens on, and the \
             names given with --allow-host",
        )
            .into_response(),
    }
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The actions token: read from `~/.rq/serve-token`, or made there (0600) and printed
/// once. A link or anything but a regular file there is refused.
fn token() -> Result<String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| Error::Conflict("--allow-actions: HOME is not set".into()))?;
    let dir = home.join(".rq");
    std::fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("serve-token");
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(mut file) => {
            let meta = file
                .metadata()
                .context(|| format!("cannot read {}", path.display()))?;
            use std::os::unix::fs::MetadataExt;
            if !meta.is_file() || meta.mode() & 0o077 != 0 {
                return Err(Error::Conflict(format!(
                    "{} must be a regular file only you can read (chmod 600)",
                    path.display()
                )));
            }
            let mut text = String::new();
            file.read_to_string(&mut text)
                .context(|| format!("cannot read {}", path.display()))?;
            let text = text.trim().to_string();
            if text.len() < 32 {
                return Err(Error::Conflict(format!(
                    "{} holds no token: remove it and start again",
                    path.display()
                )));
            }
            crate::note!("rq: serve: actions need the token in {}", path.display());
            Ok(text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token: String = (0..4)
                .map(|_| format!("{:016x}", rand::random::<u64>()))
                .collect();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .context(|| format!("cannot create {}", path.display()))?;
            writeln!(file, "{token}").context(|| format!("cannot write {}", path.display()))?;
            crate::note!(
                "rq: serve: actions need this token (kept in {}): {token}",
                path.display()
            );
            Ok(token)
        }
        Err(e) => Err(Error::Conflict(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

#[derive(serde::Deserialize, Default)]
struct Partial {
    partial: Option<String>,
}

impl Partial {
    fn only_live(&self) -> bool {
        self.partial.is_some()
    }
}

/// Run blocking queue work off the async threads.
async fn blocking<T: Send + 'static>(
    app: &Shared,
    work: impl FnOnce(&mut data::Cache) -> Result<T> + Send + 'static,
) -> std::result::Result<T, Response> {
    let app = app.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut cache = app.cache.lock().unwrap_or_else(|e| e.into_inner());
        work(&mut cache)
    })
    .await;
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the queue: {e}"),
        )
            .into_response()),
        Err(_) => Err(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    }
}

fn page(
    app: &App,
    which: pages::Page,
    title: &str,
    live: maud::Markup,
    partial: &Partial,
    authed: bool,
) -> Response {
    let mut response = if partial.only_live() {
        Html(live.into_string()).into_response()
    } else {
        let note = match (&app.token, authed) {
            (Some(_), true) => Some("actions allowed"),
            (Some(_), false) => Some("read-only (sign in at /login for actions)"),
            (None, _) => None,
        };
        Html(pages::layout(&app.queue_name, which, title, live, note).into_string()).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

/// A page made from the shared snapshot.
async fn snapshot_page(
    app: Shared,
    partial: Partial,
    headers: HeaderMap,
    which: pages::Page,
    title: &str,
    render: fn(&Snapshot) -> maud::Markup,
) -> Response {
    let snap = match blocking(&app, |c| c.get()).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let authed = authorized(&app, &headers);
    page(&app, which, title, render(&snap), &partial, authed)
}

async fn overview(
    State(app): State<Shared>,
    Query(partial): Query<Partial>,
    headers: HeaderMap,
) -> Response {
    snapshot_page(
        app,
        partial,
        headers,
        pages::Page::Overview,
        "Overview",
        pages::overview,
    )
    .await
}

async fn hosts(
    State(app): State<Shared>,
    Query(partial): Query<Partial>,
    headers: HeaderMap,
) -> Response {
    snapshot_page(
        app,
        partial,
        headers,
        pages::Page::Hosts,
        "Hosts",
        pages::hosts,
    )
    .await
}

async fn jobs(
    State(app): State<Shared>,
    Query(filter): Query<data::JobFilter>,
    Query(partial): Query<Partial>,
    headers: HeaderMap,
) -> Response {
    let f = filter.clone();
    let key = format!("jobs {f:?}");
    let rows = match blocking(&app, move |c| c.shared(key, |q| data::jobs_page(q, &f))).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let authed = authorized(&app, &headers);
    page(
        &app,
        pages::Page::Jobs,
        "Jobs",
        pages::jobs(&rows, &filter),
        &partial,
        authed,
    )
}

/// Bytes of each stream shown on a job's page.
const TAIL_BYTES: u64 = 64 * 1024;

async fn job(
    State(app): State<Shared>,
    UrlPath(jid): UrlPath<String>,
    Query(partial): Query<Partial>,
    headers: HeaderMap,
) -> Response {
    let Some(jid) = crate::job::parse_jid(&jid) else {
        return (StatusCode::NOT_FOUND, "no such job").into_response();
    };
    let found = blocking(&app, move |c| {
        c.shared(format!("job {jid}"), |q| {
            let row = data::job(q, jid)?;
            let out = data::tail(q, "stdout", jid, TAIL_BYTES);
            let err = data::tail(q, "stderr", jid, TAIL_BYTES);
            Ok(row.map(|r| (r, out, err)))
        })
    })
    .await;
    let found = match found {
        Ok(found) => found,
        Err(r) => return r,
    };
    let Some((row, out, err)) = found.as_ref().clone() else {
        return (StatusCode::NOT_FOUND, format!("no job {jid}")).into_response();
    };
    let authed = authorized(&app, &headers);
    let state = row.get("state").as_text().unwrap_or("").to_string();
    let offered = actions_for(&state);
    let actions = authed.then_some(offered);
    let live = pages::job(&row, out, err, actions);
    page(
        &app,
        pages::Page::Jobs,
        &format!("Job {jid}"),
        live,
        &partial,
        authed,
    )
}

fn actions_for(state: &str) -> &'static [&'static str] {
    match state {
        "running" => &["kill"],
        "pending" => &["hold"],
        "holding" => &["release"],
        "finished" | "dead" | "cancelled" => &["resubmit"],
        _ => &[],
    }
}

/// Whether the request may act: the token in the `X-RQ-Token` header (scripts), or the
/// cookie of a live session made by signing in (browsers). Without `--allow-actions`
/// nobody may.
fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(token) = &app.token else {
        return false;
    };
    if let Some(given) = headers.get("x-rq-token").and_then(|v| v.to_str().ok()) {
        return same(given.as_bytes(), token.as_bytes());
    }
    let sessions = app.sessions.lock().unwrap_or_else(|e| e.into_inner());
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix("rq_session="))
        .any(|given| {
            sessions.iter().any(|(session, until)| {
                same(given.as_bytes(), session.as_bytes()) && *until > Instant::now()
            })
        })
}

/// A new session for a browser that showed the token: a random value, unrelated to the
/// token, that this server alone knows, good for `SESSION_LIFE`.
fn new_session(app: &App) -> String {
    let session: String = (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    let mut sessions = app.sessions.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    sessions.retain(|_, until| *until > now);
    while sessions.len() >= MAX_SESSIONS {
        let oldest = sessions
            .iter()
            .min_by_key(|(_, until)| **until)
            .map(|(s, _)| s.clone());
        match oldest {
            Some(oldest) => sessions.remove(&oldest),
            None => break,
        };
    }
    sessions.insert(session.clone(), now + SESSION_LIFE);
    session
}

/// Compare without stopping at the first difference (no timing hint about the token).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A state-changing request must come from this site's own pages (or a script with the
/// header): browsers send `Origin` and `Sec-Fetch-Site` on cross-site POSTs.
fn same_site(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && origin != "null"
    {
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if origin_host.is_none() || origin_host != host {
            return false;
        }
    }
    !matches!(
        headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()),
        Some("cross-site" | "same-site")
    )
}

#[derive(serde::Deserialize)]
struct ActionForm {
    #[serde(rename = "do")]
    what: String,
}

async fn action(
    State(app): State<Shared>,
    UrlPath(jid): UrlPath<String>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    if app.token.is_none() {
        return (
            StatusCode::FORBIDDEN,
            "read-only: start rq serve with --allow-actions to act on jobs",
        )
            .into_response();
    }
    if !authorized(&app, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "the token is missing or wrong (sign in at /login, or send X-RQ-Token)",
        )
            .into_response();
    }
    if !same_site(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    let Some(jid) = crate::job::parse_jid(&jid) else {
        return (StatusCode::NOT_FOUND, "no such job").into_response();
    };
    let what = form.what.clone();
    if !["kill", "hold", "release", "resubmit"].contains(&what.as_str()) {
        return (StatusCode::BAD_REQUEST, format!("unknown action '{what}'")).into_response();
    }
    let done = blocking(&app, move |c| {
        let selection = Selection {
            jids: vec![jid],
            ..Default::default()
        };
        let q = c.queue();
        let (acted, skipped) = match what.as_str() {
            "kill" => q.request_kill(&[jid], "TERM")?,
            "hold" | "release" => {
                let changes = Changes {
                    state: Some(if what == "hold" {
                        crate::job::State::Holding
                    } else {
                        crate::job::State::Pending
                    }),
                    ..Default::default()
                };
                q.update(&selection, &changes)?
            }
            _ => q.resubmit(&selection, &SubmitOptions::default())?,
        };
        c.invalidate();
        Ok((acted.len(), skipped.into_iter().next().map(|s| s.why)))
    })
    .await;
    match done {
        Ok((1, _)) => {
            crate::note!("rq: serve: {} job {jid} (asked from {peer})", form.what);
            Redirect::to(&format!("/jobs/{jid}")).into_response()
        }
        Ok((_, why)) => (
            StatusCode::CONFLICT,
            format!(
                "job {jid} not changed: {}",
                why.unwrap_or_else(|| "it is in another state now".into())
            ),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn login_form(State(app): State<Shared>, headers: HeaderMap) -> Response {
    let authed = authorized(&app, &headers);
    page(
        &app,
        pages::Page::Overview,
        "Sign in",
        pages::login(None),
        &Partial::default(),
        authed,
    )
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(app): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(token) = &app.token else {
        return (
            StatusCode::FORBIDDEN,
            "read-only: start rq serve with --allow-actions to act on jobs",
        )
            .into_response();
    };
    if !same_site(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    if !same(form.token.trim().as_bytes(), token.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            Html(
                pages::layout(
                    &app.queue_name,
                    pages::Page::Overview,
                    "Sign in",
                    pages::login(Some("That is not the token.")),
                    None,
                )
                .into_string(),
            ),
        )
            .into_response();
    }
    let mut response = Redirect::to("/").into_response();
    let session = new_session(&app);
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "rq_session={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFE.as_secs()
    )) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn metrics(State(app): State<Shared>) -> Response {
    let snap = match blocking(&app, |c| c.get()).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match metrics_text(&snap) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn metrics_text(snap: &Snapshot) -> Result<String> {
    crate::metrics::render(&crate::metrics::Inputs {
        summary: &snap.view.summary,
        feeders: &snap.view.feeders,
        recent_durations: &snap.durations,
        recent_usage: &snap.usage,
        db_bytes: snap.db_bytes,
    })
}

/// `rq Q metrics`: the metrics text once.
pub fn metrics_once(q: &mut Queue) -> Result<String> {
    let snap = data::read(q, &mut data::MinuteCounts::default())?;
    metrics_text(&snap)
}
