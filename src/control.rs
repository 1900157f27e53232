//! Feeder control from the command line: `feed` (foreground or `--daemon`), `start` (for
//! cron), `shutdown`, `stop`, `restart`, `pid`, `feeder`. One feeder per host per queue,
//! enforced by a lock on a pid file in a per-host, per-queue state directory:
//! `~/.rq/<host>/<queue path, '/' as %2F>/pid` (with the host name in the path, an NFS-shared
//! home directory works).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::feeder::{Config, Exit, Feeder};
use crate::lock::{self, PidLock};
use crate::log::{Age, Level, Logger};
use crate::process;
use crate::queue::{self, Queue};
use crate::store::Access;

/// Set in the environment of a feeder that re-executes itself for `restart`: it is
/// already detached, so it must not daemonize again.
const REEXEC_ENV: &str = "RQ_FEEDER_REEXEC";

/// Where this host keeps its pid file and default log for a queue.
pub fn state_dir(base: Option<&Path>, host: &str, queue_dir: &Path) -> PathBuf {
    let base = base.map(Path::to_path_buf).unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"))
            .join(".rq")
    });
    let mut encoded = queue_dir
        .to_string_lossy()
        .replace('%', "%25")
        .replace('/', "%2F");
    // A file name has at most 255 bytes (a long PostgreSQL URL can have more).
    if encoded.len() > 200 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in encoded.bytes() {
            hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let cut = (0..=160)
            .rev()
            .find(|i| encoded.is_char_boundary(*i))
            .unwrap_or(0);
        encoded = format!("{}..{hash:016x}", &encoded[..cut]);
    }
    base.join(host).join(encoded)
}

/// Logging options of a feeder.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub path: Option<PathBuf>,
    pub level: Level,
    pub max_size: Option<u64>,
    pub age: Option<Age>,
}

/// Everything `feed`/`start` need.
#[derive(Debug, Clone)]
pub struct FeedRequest {
    pub queue: PathBuf,
    pub state_base: Option<PathBuf>,
    pub config: Config,
    pub log: LogOptions,
    pub daemon: bool,
    pub quiet: bool,
    /// The exact argv to re-execute on `restart`, and the directory it was given in.
    pub argv: Vec<String>,
    pub cwd: PathBuf,
}

fn pid_path(req: &FeedRequest, queue_dir: &Path) -> PathBuf {
    state_dir(req.state_base.as_deref(), &req.config.host, queue_dir).join("pid")
}

/// The pid of the feeder running for this queue on this host, if any.
pub fn running_feeder(queue: &Path, host: &str, state_base: Option<&Path>) -> Result<Option<u32>> {
    let dir = feeder_dir(queue)?;
    lock::holder(&state_dir(state_base, host, &dir).join("pid"))
}

/// What names a queue to its feeders (their state directory on each host is kept under
/// it): the queue directory, a PostgreSQL queue's job-file directory (`configure
/// files=DIR`), or for a PostgreSQL queue that keeps everything in its database, its URL
/// (without a password).
pub fn feeder_dir(queue: &Path) -> Result<PathBuf> {
    if queue::postgres_location(queue)?.is_none() {
        return Ok(queue::resolve(queue));
    }
    let q = Queue::open(queue, Access::ReadOnly)?;
    if !q.has_files() {
        return Ok(PathBuf::from(q.name()));
    }
    Ok(q.dir().to_path_buf())
}

/// How a feeder opens its queue again (after detaching): by its directory, or by its URL.
fn reopen_path(req: &FeedRequest, queue_dir: &Path) -> PathBuf {
    match queue::postgres_location(&req.queue) {
        Ok(Some(_)) => req.queue.clone(),
        _ => queue_dir.to_path_buf(),
    }
}

/// `feed`: run a feeder in the foreground, or detached with `daemon`. Returns the exit
/// status for rq.
pub fn feed(mut req: FeedRequest, start_mode: bool) -> Result<i32> {
    crate::process::inherited_fds_cloexec();
    let reexec = std::env::var_os(REEXEC_ENV).is_some();
    if reexec {
        // SAFETY: single-threaded at this point (no thread has been started yet).
        unsafe { std::env::remove_var(REEXEC_ENV) };
    }
    // Check the queue before detaching, so mistakes are reported to the user.
    // Feeding with host-local locks could run a job on two hosts at once (checked before
    // opening, which would only warn).
    let on_postgres = queue::postgres_location(&req.queue)?.is_some();
    if !on_postgres
        && let Some(problem) = crate::fsguard::check(&queue::resolve(&req.queue))
        && std::env::var_os("RQ_ALLOW_LOCAL_LOCKS").is_none()
    {
        return Err(Error::Conflict(format!(
            "refusing to feed: {problem} (if no other host ever feeds this queue, set RQ_ALLOW_LOCAL_LOCKS=1)"
        )));
    }
    let queue_dir = feeder_dir(&req.queue)?;
    let pid_file = pid_path(&req, &queue_dir);
    if let Some(pid) = lock::holder(&pid_file)? {
        if start_mode {
            return Ok(0);
        }
        if req.quiet {
            return Ok(1);
        }
        return Err(Error::Conflict(format!(
            "a feeder (pid {pid}) is already feeding {} on host {}; stop it with 'rq {} shutdown'",
            queue_dir.display(),
            req.config.host,
            queue_dir.display()
        )));
    }
    // A detached feeder always logs somewhere: its errors have no other place to go.
    if (start_mode || req.daemon) && req.log.path.is_none() {
        req.log.path = Some(pid_file.with_file_name("log"));
    }
    std::fs::create_dir_all(pid_file.parent().unwrap_or(Path::new("/")))
        .context(|| format!("cannot create {}", pid_file.display()))?;
    if req.daemon && !reexec {
        return daemonize(req, queue_dir, pid_file, start_mode);
    }
    let Some(lock) = PidLock::acquire(&pid_file)? else {
        if req.quiet || start_mode {
            return Ok(if start_mode { 0 } else { 1 });
        }
        return Err(Error::Conflict(format!(
            "another feeder is already feeding {} on host {}",
            queue_dir.display(),
            req.config.host
        )));
    };
    let log = open_log(&req.log)?;
    run_feeder(req, queue_dir, lock, log)
}

fn open_log(opts: &LogOptions) -> Result<Logger> {
    match &opts.path {
        Some(path) => Logger::to_file(opts.level, path.clone(), opts.max_size, opts.age),
        None => Ok(Logger::stderr(opts.level)),
    }
}

fn run_feeder(req: FeedRequest, queue_dir: PathBuf, lock: PidLock, log: Logger) -> Result<i32> {
    let queue = Queue::open(&reopen_path(&req, &queue_dir), Access::ReadWrite)?;
    let mut config = req.config.clone();
    if queue.in_database() {
        // Jobs read their stdin and data, and write their output, on this host's disk;
        // the feeder moves them to and from the database.
        config.local_files =
            Some(state_dir(req.state_base.as_deref(), &config.host, &queue_dir).join("files"));
    }
    let mut feeder = Feeder::new(queue, config, log);
    let exit = feeder.run()?;
    drop(feeder);
    match exit {
        Exit::Done | Exit::Stopped => {
            lock.release();
            Ok(0)
        }
        Exit::Restart => {
            // The lock goes with the exec (its descriptor is close-on-exec); the new image
            // takes it again at once.
            let exe = std::env::current_exe()
                .context(|| "cannot find the rq executable to restart".into())?;
            let exe = PathBuf::from(
                exe.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string(),
            );
            lock.release();
            let err = std::process::Command::new(&exe)
                .args(&req.argv)
                .current_dir(&req.cwd)
                .env(REEXEC_ENV, "1")
                .exec();
            Err(Error::Io {
                context: format!("cannot restart {}", exe.display()),
                source: err,
            })
        }
    }
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors, which we take ownership of.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context(|| "cannot make a pipe".into());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Detach: fork, setsid, fork again; the grandchild takes the pid lock, points its stdio
/// at the log (or /dev/null) and reports back through a pipe, so the user sees either
/// `pid N started` or the reason it could not start. No database connection or thread
/// exists yet when this forks.
fn daemonize(
    req: FeedRequest,
    queue_dir: PathBuf,
    pid_file: PathBuf,
    start_mode: bool,
) -> Result<i32> {
    let (read_end, write_end) = pipe_cloexec()?;
    // SAFETY: single-threaded; the child only continues with plain Rust code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context(|| "cannot fork".into()),
        0 => {
            drop(read_end);
            // SAFETY: setsid/fork in the child, still single-threaded.
            unsafe {
                libc::setsid();
                match libc::fork() {
                    -1 => libc::_exit(1),
                    0 => {}
                    _ => libc::_exit(0),
                }
            }
            let mut report = Some(std::fs::File::from(write_end));
            let code = match daemon_child(&req, queue_dir, &pid_file, &mut report) {
                Ok(code) => code,
                Err(e) => {
                    match report.as_mut() {
                        Some(r) => {
                            let _ = writeln!(r, "err {e}");
                        }
                        // After start-up stderr is the log.
                        None => crate::note!("rq: feeder exiting: {e}"),
                    }
                    1
                }
            };
            std::process::exit(code);
        }
        child => {
            drop(write_end);
            let mut status = 0;
            // SAFETY: reap the intermediate child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            let mut text = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut text);
            let line = text.lines().next().unwrap_or("");
            if let Some(pid) = line.strip_prefix("ok ") {
                if !req.quiet || start_mode {
                    crate::output::to_stdout(&format!("pid {pid} started\n"))?;
                }
                Ok(0)
            } else if line == "busy" {
                Ok(if start_mode { 0 } else { 1 })
            } else {
                Err(Error::Conflict(
                    line.strip_prefix("err ")
                        .unwrap_or("the feeder did not start (see its log)")
                        .to_string(),
                ))
            }
        }
    }
}

/// The detached feeder. `report` is closed once the start-up outcome is written, so
/// the waiting parent returns.
fn daemon_child(
    req: &FeedRequest,
    queue_dir: PathBuf,
    pid_file: &Path,
    report: &mut Option<std::fs::File>,
) -> Result<i32> {
    let Some(lock) = PidLock::acquire(pid_file)? else {
        if let Some(mut r) = report.take() {
            let _ = writeln!(r, "busy");
        }
        return Ok(1);
    };
    let log = open_log(&req.log)?;
    redirect_stdio(req.log.path.as_deref())?;
    let _ = std::env::set_current_dir("/");
    if let Some(mut r) = report.take() {
        let _ = writeln!(r, "ok {}", std::process::id());
    }
    run_feeder(req.clone(), queue_dir, lock, log)
}

/// stdin from /dev/null; stdout and stderr to the log file (or /dev/null).
pub(crate) fn redirect_stdio(log: Option<&Path>) -> Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context(|| "cannot open /dev/null".into())?;
    let out = match log {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .context(|| format!("cannot open {}", path.display()))?,
        None => null
            .try_clone()
            .context(|| "cannot open /dev/null".into())?,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto the standard descriptors.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(out.as_raw_fd(), 1);
        libc::dup2(out.as_raw_fd(), 2);
    }
    Ok(())
}

/// `shutdown` / `stop` / `restart`: signal this host's feeder. Returns the exit status.
pub fn signal_feeder(
    queue: &Path,
    host: &str,
    state_base: Option<&Path>,
    how: &str,
    quiet: bool,
) -> Result<i32> {
    let Some(pid) = running_feeder(queue, host, state_base)? else {
        if !quiet {
            crate::note!(
                "rq: no feeder is running for {} on host {host}",
                queue::resolve(queue).display()
            );
        }
        return Ok(1);
    };
    let (signal, message) = match how {
        "shutdown" => (
            libc::SIGTERM,
            "signaled to stop a.s.a.p (running jobs finish first)",
        ),
        "stop" => (
            libc::SIGQUIT,
            "signaled to stop now (running jobs are killed)",
        ),
        "restart" => (
            libc::SIGHUP,
            "signaled to restart (after running jobs finish)",
        ),
        other => return Err(Error::usage(format!("unknown feeder command '{other}'"))),
    };
    if !process::signal_process(pid, signal) {
        return Err(Error::Conflict(format!("cannot signal feeder pid {pid}")));
    }
    if !quiet {
        crate::output::to_stdout(&format!("pid {pid} {message}\n"))?;
    }
    if how == "stop" {
        // A feeder stuck (e.g. waiting for the queue lock) is killed after a while; its
        // jobs are then handled as crashed by the next feeder on this host.
        let deadline = Instant::now() + Duration::from_secs(20);
        while process::is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if process::is_alive(pid) {
            process::signal_process(pid, libc::SIGKILL);
        }
    }
    Ok(0)
}
