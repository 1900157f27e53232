//! Processes: identity that survives pid reuse, process-group signals, signal names.

use std::path::Path;

/// This boot's id: a process identity is only meaningful within one boot. Read once.
pub fn boot_id() -> String {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        })
        .clone()
}

/// The start time of a process (clock ticks since boot), from /proc/PID/stat.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // Fields from 3 on; starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `boot_id/starttime`: names one process across pid reuse.
pub fn identity(pid: u32) -> Option<String> {
    start_time(pid).map(|t| format!("{}/{t}", boot_id()))
}

/// Is the process named by `identity` still this pid on this boot?
pub fn same_process(pid: u32, identity: &str) -> bool {
    self::identity(pid).as_deref() == Some(identity)
}

/// Processes whose environment holds one of `entries` (e.g. `RQ_CLAIM=<token>`): finds a
/// job's processes even when its pid was never recorded. Returns (pid, process group, entry).
pub fn find_by_environment(entries: &[String]) -> Vec<(u32, u32, String)> {
    let mut found = Vec::new();
    if entries.is_empty() {
        return found;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        for var in environ.split(|b| *b == 0) {
            if let Some(hit) = entries.iter().find(|e| e.as_bytes() == var) {
                // SAFETY: getpgid(2) on a pid.
                let pgid = unsafe { libc::getpgid(pid as libc::pid_t) };
                if pgid > 1 {
                    found.push((pid, pgid as u32, hit.clone()));
                }
            }
        }
    }
    found
}

/// What a run used, as the kernel accounted it when it was reaped: CPU seconds of the
/// process and the children it waited for, the peak resident memory of the largest of
/// them (bytes; the kernel keeps no peak of a whole tree outside a cgroup), and the bytes
/// they passed through read and write calls (files, pipes, network filesystems: the
/// `rchar`/`wchar` of `/proc/PID/io`, as Slurm's accounting reads them).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub cpu_user: Option<f64>,
    pub cpu_system: Option<f64>,
    pub max_rss: Option<i64>,
    #[serde(default)]
    pub read_bytes: Option<i64>,
    #[serde(default)]
    pub write_bytes: Option<i64>,
}

/// Whether the child `pid` has exited, leaving it a zombie (`waitid` with `WNOWAIT`).
fn has_exited(pid: u32) -> std::io::Result<bool> {
    loop {
        // SAFETY: siginfo_t is a plain C struct; all-zero is valid, and a zero si_pid
        // after WNOHANG means no child has changed state.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with a valid pointer to a siginfo_t.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: si_pid is valid to read after waitid filled (or left zeroed) the struct.
        return Ok(unsafe { info.si_pid() } != 0);
    }
}

/// The bytes process `pid` and the children it waited for read and wrote (`rchar`,
/// `wchar` of `/proc/PID/io`; the kernel adds a reaped child's to its parent's).
fn io_bytes(pid: u32) -> (Option<i64>, Option<i64>) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/io")) else {
        return (None, None);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    (field("rchar:"), field("wchar:"))
}

/// Reap the child `pid` if it has exited, with what it used (`wait4`, without waiting;
/// its I/O is read while it is a zombie, before the reap frees it). Once reaped here, its
/// `std::process::Child` must not be waited for or signalled.
pub fn try_reap(pid: u32) -> std::io::Result<Option<(std::process::ExitStatus, Usage)>> {
    use std::os::unix::process::ExitStatusExt;
    if !has_exited(pid)? {
        return Ok(None);
    }
    let (read_bytes, write_bytes) = io_bytes(pid);
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 with valid pointers to a status and an rusage.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, libc::WNOHANG, &mut usage) };
        if rc == 0 {
            return Ok(None);
        }
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        return Ok(Some((
            std::process::ExitStatus::from_raw(status),
            Usage {
                cpu_user: Some(seconds(usage.ru_utime)),
                cpu_system: Some(seconds(usage.ru_stime)),
                // Kilobytes on Linux.
                max_rss: Some(usage.ru_maxrss as i64 * 1024),
                read_bytes,
                write_bytes,
            },
        )));
    }
}

/// A process group's members on this host and the memory they hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Group {
    /// Resident memory of its processes, summed (bytes).
    pub rss: i64,
    pub pids: Vec<u32>,
}

/// Every process group on this host, from one pass over `/proc` (processes that end
/// meanwhile are skipped).
pub fn groups() -> std::collections::HashMap<u32, Group> {
    // SAFETY: sysconf with a valid name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as i64;
    let mut groups: std::collections::HashMap<u32, Group> = std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return groups;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command's closing parenthesis: state ppid pgrp ... (rss is field 24).
        let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(pgrp), Some(rss)) = (
            fields.get(2).and_then(|f| f.parse::<u32>().ok()),
            fields.get(21).and_then(|f| f.parse::<i64>().ok()),
        ) else {
            continue;
        };
        let group = groups.entry(pgrp).or_default();
        group.rss += rss * page;
        group.pids.push(pid);
    }
    groups
}

/// Pin process `pid` to `cpus` (its threads started later, and its children, inherit
/// it); false if the kernel refused or it is gone.
pub fn pin(pid: u32, cpus: &[usize]) -> bool {
    // SAFETY: cpu_set_t is a plain C bit set; all-zero is the empty set. CPU_SET writes a
    // bit below CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: sched_setaffinity of a process with a valid set.
    unsafe { libc::sched_setaffinity(pid as libc::pid_t, size, &set) == 0 }
}

/// The CPUs this thread may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain C bit set; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity of this thread into a set of the size given.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set for any cpu below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Send a signal to a whole process group (a job and everything it started).
pub fn signal_group(pgid: u32, signal: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill(2) with a negative pid signals the process group.
    unsafe { libc::kill(-(pgid as libc::pid_t), signal) == 0 }
}

pub fn signal_process(pid: u32, signal: i32) -> bool {
    if pid <= 1 {
        return false;
    }
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

pub fn is_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    pid > 1 && unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

const SIGNALS: &[(i32, &str)] = &[
    (libc::SIGHUP, "HUP"),
    (libc::SIGINT, "INT"),
    (libc::SIGQUIT, "QUIT"),
    (libc::SIGILL, "ILL"),
    (libc::SIGTRAP, "TRAP"),
    (libc::SIGABRT, "ABRT"),
    (libc::SIGBUS, "BUS"),
    (libc::SIGFPE, "FPE"),
    (libc::SIGKILL, "KILL"),
    (libc::SIGUSR1, "USR1"),
    (libc::SIGSEGV, "SEGV"),
    (libc::SIGUSR2, "USR2"),
    (libc::SIGPIPE, "PIPE"),
    (libc::SIGALRM, "ALRM"),
    (libc::SIGTERM, "TERM"),
    (libc::SIGCHLD, "CHLD"),
    (libc::SIGCONT, "CONT"),
    (libc::SIGSTOP, "STOP"),
    (libc::SIGTSTP, "TSTP"),
    (libc::SIGTTIN, "TTIN"),
    (libc::SIGTTOU, "TTOU"),
    (libc::SIGURG, "URG"),
    (libc::SIGXCPU, "XCPU"),
    (libc::SIGXFSZ, "XFSZ"),
    (libc::SIGVTALRM, "VTALRM"),
    (libc::SIGPROF, "PROF"),
    (libc::SIGWINCH, "WINCH"),
    (libc::SIGIO, "IO"),
    (libc::SIGPWR, "PWR"),
    (libc::SIGSYS, "SYS"),
];

pub fn signal_name(signal: i32) -> String {
    SIGNALS
        .iter()
        .find(|(n, _)| *n == signal)
        .map(|(_, name)| name.to_string())
        .unwrap_or_else(|| signal.to_string())
}

/// `TERM`, `SIGTERM`, `term` or `15`.
pub fn parse_signal(text: &str) -> Option<i32> {
    if let Ok(n) = text.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
}

/// Number of CPUs this process may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Mark every descriptor above 2 close-on-exec, so jobs get exactly stdin, stdout and
/// stderr whatever the shell that started the feeder had open (and so cannot, say, keep a
/// pipe of that shell open forever). Called first thing by a feeder; rq's own descriptors
/// are close-on-exec already.
pub fn inherited_fds_cloexec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11: one by one.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; a closed one just fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_self_is_stable() {
        let pid = std::process::id();
        let id = identity(pid).unwrap();
        assert!(same_process(pid, &id));
        assert!(!same_process(pid, "other-boot/1"));
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("TERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("sigkill"), Some(libc::SIGKILL));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(signal_name(libc::SIGKILL), "KILL");
    }
}
