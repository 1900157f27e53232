//! How a job runs: its files, directory, environment and shell, in its own process
//! group with default signal handling.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::error::{Error, IoContext, Result};
use crate::job::{Cell, Row};

/// Make every signal the feeder inherited as ignored (e.g. HUP under nohup) default again,
/// so jobs never inherit ignored signals. Called once at feeder start, before handlers are
/// installed; handled signals are reset to default by exec anyway.
pub fn reset_inherited_signals() {
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction(2) query, then signal(2) only for ignored signals.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
            {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
    // SAFETY: an empty mask; the feeder never blocks signals on purpose.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// rq's own switches (test hooks, debugging, re-exec): a job has no use for them, and a
/// job that runs rq must not inherit them.
const HIDDEN_FROM_JOBS: &[&str] = &[
    "RQ_FAULT",
    "RQ_FEEDER_REEXEC",
    "RQ_SQL_DEBUG",
    "RQ_TEST_CLOCK_OFFSET",
    "RQ_TEST_MOUNTINFO",
];

/// The absolute path of a program named without a slash, searched on `PATH` like the
/// shell would. The feeder resolves its shell once: the standard library can only use the
/// cheap `posix_spawn` (vfork, no page-table copy) when the program needs no PATH search
/// in a changed environment, and jobs get their own PATH.
pub fn resolve_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    search_path(name, &std::env::var_os("PATH")?)
}

/// A new, empty output file for this run. Never the previous run's inode: a stale copy of
/// the job on a host that was cut off (and killed there) may still have writes in its NFS
/// client's cache, which reach the server after the partition heals; they must land in the
/// old, unlinked file, not in this run's output. Created with O_EXCL, so a link planted in
/// the queue is replaced, never followed.
fn fresh_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    let file = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path).and_then(|()| create())
        }
        other => other,
    };
    file.context(|| format!("cannot create {}", path.display()))
}

/// A job's data (`$RQ_DATA`, `Q/data/<jid>`): what was stored at submit (a directory or a
/// file), or a directory made now for a job submitted without `--data`. Anyone who can
/// write the queue could plant a link there (or in place of `Q/data`), through which the
/// job would read and write wherever it points: the job is then not started.
fn data_path(path: &Path) -> Result<()> {
    let refuse = |what: &Path| {
        Err(Error::Conflict(format!(
            "{} is a symbolic link, not what rq made: not starting the job",
            what.display()
        )))
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => return refuse(path),
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(|| format!("cannot read {}", path.display())),
    }
    if let Some(parent) = path.parent() {
        match std::fs::symlink_metadata(parent) {
            Ok(meta) if meta.file_type().is_symlink() => return refuse(parent),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(parent)
                    .context(|| format!("cannot create {}", parent.display()))?
            }
            Err(e) => return Err(e).context(|| format!("cannot read {}", parent.display())),
        }
    }
    // Fails on anything that appeared meanwhile; never follows a link.
    std::fs::create_dir(path).context(|| format!("cannot create {}", path.display()))
}

/// A job's stdin file, opened without following a link and only if it is a regular file
/// (a link planted there could make the job read the feeder user's files; a FIFO could
/// hang the start). None when it is gone: the job reads nothing, as before.
fn open_stdin(path: &Path) -> Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e)
                .context(|| format!("cannot open the job's stdin {} (a link?)", path.display()));
        }
    };
    let meta = file
        .metadata()
        .context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        return Err(Error::Conflict(format!(
            "the job's stdin {} is not a regular file: not starting it",
            path.display()
        )));
    }
    // Reads block as usual from here.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok(Some(file))
}

/// A claimed job made ready to start: its data directory and fresh output files created,
/// its stdin opened and its command built. The feeder prepares the next jobs while the
/// running ones run, so that a slot coming free costs only the start journal's sync and
/// the spawn (creating files is the costliest part of a start on most filesystems).
pub struct Prepared {
    command: Command,
    outputs: [PathBuf; 2],
}

impl Prepared {
    /// Start it, in the cgroup whose `cgroup.procs` is `group` if given. No other pre_exec
    /// hook: one forces fork() instead of the much cheaper posix_spawn (only jobs with a
    /// cgroup pay that). Signal dispositions are made default in the feeder itself (see
    /// `reset_inherited_signals`), and std gives the child an empty signal mask.
    pub fn spawn(mut self, group: Option<&std::fs::File>) -> Result<Child> {
        if let Some(procs) = group {
            crate::cgroup::join_in_child(&mut self.command, procs);
        }
        let program = self.command.get_program().to_string_lossy().into_owned();
        self.command
            .spawn()
            .context(|| format!("cannot run {program}"))
    }

    /// It will not start here (given back unstarted): remove the output files it created,
    /// so the job shows no output until it runs. Only while our claim holds: once another
    /// host may run the job, these paths may be its files.
    pub fn discard(self) {
        for path in &self.outputs {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Prepare a claimed job to run: `SHELL... COMMAND` in the directory it was submitted from (else
/// `$HOME`), stdin from its stdin file (else /dev/null), stdout/stderr into the queue,
/// `Q/bin` last on PATH, and one `RQ_<FIELD>` variable per job field plus `RQ` (the
/// queue) and `RQ_JOB` (the job as JSON). Paths in RQ_STDIN/STDOUT/STDERR/DATA are absolute.
///
/// Resources: `RQ_CPUS` and `OMP_NUM_THREADS` (unless the job's own environment sets it)
/// are the CPUs it asked for; on a host with GPUs (`gpu_host`), `CUDA_VISIBLE_DEVICES`,
/// `ROCR_VISIBLE_DEVICES` and `RQ_GPUS` name exactly the devices it was given (none for
/// a job that asked for none, so it cannot take another job's device by accident).
pub fn prepare(
    dir: &Path,
    queue: &str,
    shell: &[String],
    job: &Row,
    gpu_host: bool,
) -> Result<Prepared> {
    let jid = job.jid();
    let path_of = |field: &str| job.get(field).as_text().map(|rel| dir.join(rel));
    let stdout_path = path_of("stdout").unwrap_or_else(|| dir.join("stdout").join(jid.to_string()));
    let stderr_path = path_of("stderr").unwrap_or_else(|| dir.join("stderr").join(jid.to_string()));
    let data_path = path_of("data").unwrap_or_else(|| dir.join("data").join(jid.to_string()));
    self::data_path(&data_path)?;
    let stdin_path = path_of("stdin");
    let stdout = fresh_file(&stdout_path)?;
    let stderr = fresh_file(&stderr_path)?;
    let stdin = match &stdin_path {
        Some(p) => open_stdin(p)?.map_or_else(Stdio::null, Stdio::from),
        None => Stdio::null(),
    };
    let cwd = job
        .get("cwd")
        .as_text()
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
        })
        .unwrap_or_else(|| PathBuf::from("/"));
    let command = job.get("command").to_plain();
    // Q/bin goes last: every command a job looks up on PATH would otherwise ask the file
    // server first, so a job running only local programs would hang while the server is
    // unreachable instead of going on (and its lookups would cost network round trips).
    // Once: a feeder started from a job (or a login profile) may have it there already.
    // The environment given at submit (`--env`, `--export`, `env:`) goes on top of the
    // feeder's, under rq's own RQ_* variables.
    let job_env: Vec<(String, String)> = job
        .get("env")
        .as_text()
        .and_then(|text| {
            serde_json::from_str::<std::collections::BTreeMap<String, String>>(text).ok()
        })
        .map(|env| env.into_iter().collect())
        .unwrap_or_default();
    let bin = dir.join("bin");
    let mut new_path = job_env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| std::ffi::OsString::from(v))
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    if !std::env::split_paths(&new_path).any(|p| p == bin) {
        if !new_path.is_empty() {
            new_path.push(":");
        }
        new_path.push(&bin);
    }
    let mut cmd = match shell {
        // --shell none: a plain command (words only) is the program and its arguments;
        // anything else, or a program not on the job's PATH, goes to `sh -c`.
        [] => match plain_argv(&command)
            .and_then(|argv| Some((search_path(&argv[0], &new_path)?, argv)))
        {
            Some((program, argv)) => {
                let mut cmd = Command::new(program);
                cmd.args(&argv[1..]).arg0(&argv[0]);
                cmd
            }
            None => {
                let mut cmd = Command::new(SH);
                cmd.arg("-c")
                    .arg(&command)
                    .arg0(format!("__rq_job__{jid}__sh__"));
                cmd
            }
        },
        [program, args @ ..] => {
            let shell_name = Path::new(program)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // A login shell's profile may reset PATH: add the queue's bin/ again unless
            // it is there.
            let text = if matches!(shell_name.as_str(), "bash" | "sh" | "dash" | "zsh" | "ksh") {
                format!(
                    "case \":$PATH:\" in *\":$RQ_BIN:\"*) ;; *) PATH=\"$PATH:$RQ_BIN\"; export PATH;; esac\n{command}"
                )
            } else {
                command.clone()
            };
            let mut cmd = Command::new(program);
            cmd.args(args)
                .arg(text)
                .arg0(format!("__rq_job__{jid}__{shell_name}__"));
            cmd
        }
    };
    cmd.current_dir(&cwd)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    // Jobs inherit the feeder's environment (as in the original rq), minus rq's internals.
    for internal in HIDDEN_FROM_JOBS {
        cmd.env_remove(internal);
    }
    for (key, value) in &job_env {
        cmd.env(key, value);
    }
    cmd.env("PATH", &new_path);
    cmd.env("RQ", queue);
    cmd.env("RQ_BIN", dir.join("bin"));
    // (The environment given at submit is not repeated in RQ_ENV nor RQ_JOB: its
    // variables are there, and the kernel limits each string to 128 KiB.)
    for (name, cell) in job.columns.iter().filter(|(n, _)| n != "env") {
        let value = match (name.as_str(), cell) {
            ("stdin" | "stdout" | "stderr" | "data", Cell::Text(rel)) => {
                dir.join(rel).to_string_lossy().into_owned()
            }
            _ => cell.to_plain(),
        };
        cmd.env(format!("RQ_{}", name.to_ascii_uppercase()), value);
    }
    let cpus = job.get("cpus").as_int().unwrap_or(1).max(1);
    if !job_env.iter().any(|(k, _)| k == "OMP_NUM_THREADS") {
        cmd.env("OMP_NUM_THREADS", cpus.to_string());
    }
    let gpu_ids = job.get("gpu_ids").as_text().unwrap_or_default().to_string();
    if gpu_host || !gpu_ids.is_empty() {
        for name in ["CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "RQ_GPUS"] {
            cmd.env(name, &gpu_ids);
        }
    }
    cmd.env("RQ_DATA", &data_path);
    cmd.env("RQ_STDOUT", &stdout_path);
    cmd.env("RQ_STDERR", &stderr_path);
    cmd.env(
        "RQ_STDIN",
        stdin_path.as_deref().unwrap_or(Path::new("/dev/null")),
    );
    let record: serde_json::Map<String, serde_json::Value> = job
        .columns
        .iter()
        .filter(|(name, _)| name != "env")
        .map(|(name, cell)| (name.clone(), crate::output::cell_json(cell)))
        .collect();
    cmd.env("RQ_JOB", serde_json::Value::Object(record).to_string());
    Ok(Prepared {
        command: cmd,
        outputs: [stdout_path, stderr_path],
    })
}

/// The shell `--shell none` falls back to for commands with shell syntax.
const SH: &str = "/bin/sh";

/// The words of a command that needs no shell: only letters, digits, non-ASCII text and
/// `-_./:,+@%^=` (no `=` in the first word, which would be an assignment), separated by
/// spaces or tabs. Anything a shell would expand, quote, redirect or split on is not.
pub fn plain_argv(command: &str) -> Option<Vec<String>> {
    let plain = |c: char| c.is_ascii_alphanumeric() || !c.is_ascii() || "-_./:,+@%^=".contains(c);
    let words: Vec<String> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    let first = words.first()?;
    if words.iter().all(|w| w.chars().all(plain)) && !first.contains('=') {
        Some(words)
    } else {
        None
    }
}

/// `name` looked up on `path` (as the job's shell would), or as given when it has a slash.
fn search_path(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::plain_argv;

    #[test]
    fn only_commands_without_shell_syntax_are_plain() {
        assert_eq!(
            plain_argv("  ./sim --n=5 -o out/1.dat\tx,y@z%^ ü ").unwrap(),
            ["./sim", "--n=5", "-o", "out/1.dat", "x,y@z%^", "ü"]
        );
        for shell in [
            "",
            "  ",
            "a | b",
            "a; b",
            "a && b",
            "a > f",
            "a < f",
            "echo $HOME",
            "echo `x`",
            "echo 'q'",
            "echo \"q\"",
            "echo \\n",
            "ls *.c",
            "ls ?",
            "ls [ab]",
            "cd ~",
            "a &",
            "(a)",
            "echo {a,b}",
            "# note",
            "X=1 cmd",
            "echo a\nb",
            "! true",
            "echo #x",
        ] {
            assert_eq!(plain_argv(shell), None, "{shell:?}");
        }
    }
}
