//! A real PostgreSQL server for the tests: Debian's `postgresql` package (installed when
//! missing, as `.ci/run` does), a cluster made with `initdb` in a temporary directory and
//! started with `pg_ctl` as the unprivileged `postgres` user, listening only on a Unix
//! socket in that directory. One server per test process, started on first use; a guard
//! process stops it and removes the directory once the test process is gone (statics are
//! never dropped), so no server outlives the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Server {
    /// The directory holding the cluster and the socket.
    pub dir: PathBuf,
    bin: PathBuf,
}

fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn installed() -> PathBuf {
    if let Some(bin) = bin_dir() {
        return bin;
    }
    let status = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql",
        ])
        .stdout(Stdio::null())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "the PostgreSQL tests need Debian's postgresql package (apt-get install postgresql)"
    );
    bin_dir().expect("initdb after installing postgresql")
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Run a PostgreSQL program as the unprivileged user (the server refuses root).
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl Server {
    fn start() -> Server {
        Server::start_in(format!("rq-pg-{}", std::process::id()))
    }

    /// A server of the calling test's own (for faults that would disturb other tests:
    /// restarts), stopped when dropped.
    pub fn private() -> Server {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Server::start_in(format!("rq-pg-{}-{n}", std::process::id()))
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start_in(name: String) -> Server {
        let bin = installed();
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let server = Server { dir, bin };
        let out = as_server_user(&server.bin.join("initdb"))
            .arg("-D")
            .arg(server.data())
            .args(["-A", "trust", "-U", "rq", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.start_server();
        // The guard: once this test process is gone, stop the server and clean up.
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             {runuser} {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            runuser = if is_root() {
                "runuser -u postgres --"
            } else {
                ""
            },
            pg_ctl = server.bin.join("pg_ctl").display(),
            data = server.data().display(),
            dir = server.dir.display(),
        );
        use std::os::unix::process::CommandExt;
        // In the background of a shell that exits at once (so nothing is left to reap).
        Command::new("sh")
            .args(["-c", &format!("({stop}) </dev/null >/dev/null 2>&1 &")])
            .process_group(0)
            .status()
            .expect("the server's guard");
        server
    }

    fn start_server(&self) {
        let options = format!(
            // fsync off: a test stops the server, never the machine, so what the server
            // wrote survives in the page cache; commits stay synchronous, as rq requires.
            "-k {} -c listen_addresses='' -c max_connections=200 -c fsync=off",
            self.dir.display()
        );
        let out = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "start"])
            .stdout(Stdio::null())
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m immediate` (the server is killed, as in a crash, and recovers from
    /// its WAL on start), then a start after `down`.
    pub fn crash_and_restart(&self, down: std::time::Duration) {
        let stop = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl stop");
        assert!(stop.success(), "pg_ctl stop");
        std::thread::sleep(down);
        self.start_server();
    }

    /// A URL for a new queue on this server.
    pub fn queue_url(&self, name: &str) -> String {
        format!("{}?queue={name}", self.url())
    }

    /// The connection URL of database `postgres` (percent-encoded socket directory).
    pub fn url(&self) -> String {
        let socket = self.dir.display().to_string().replace('/', "%2F");
        format!("postgres://rq@{socket}/postgres")
    }

    /// Run SQL with psql (for tests that look behind rq's back).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h"])
            .arg(&self.dir)
            .args([
                "-U",
                "rq",
                "-d",
                "postgres",
                "-AtX",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test process's PostgreSQL server.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

/// A URL for a new, unused queue on the test server.
pub fn new_queue_url() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}?queue=t{}_{n}", server().url(), std::process::id())
}
