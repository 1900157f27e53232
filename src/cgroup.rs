//! Kernel memory limits for jobs: a cgroup v2 group of its own for each job that asked for
//! memory (`--mem`), where the feeder may make child groups: as root, or in a subtree
//! delegated to its user (`systemd-run --user --scope -p Delegate=yes`). The kernel then
//! holds the job's whole process tree to `memory.max` (no swap beyond it) and kills the
//! whole group when it needs more, and `memory.peak` is the tree's peak. Elsewhere (no
//! cgroup v2 memory controller, no permission) the feeder watches `/proc` instead.
//!
//! Nothing here touches the shared filesystem: cgroups are this host's.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where this feeder makes its jobs' groups: a cgroup v2 directory whose children get
/// the memory controller.
#[derive(Debug)]
pub struct Cgroups {
    parent: PathBuf,
    /// How many groups this feeder made, for unique names (a job retried here while a
    /// process of its earlier run lingers gets a new group).
    made: u64,
}

/// One job's group, made before it starts and removed once it ended and emptied.
#[derive(Debug)]
pub struct JobGroup {
    path: PathBuf,
}

impl Cgroups {
    /// This feeder's place for job groups, or why there is none (a sentence for the log).
    /// Enabling the memory controller for children needs the feeder's group to hold no
    /// process (the kernel's rule, but for the root group): the feeder then moves itself
    /// into a leaf of its own, `rq-feeder-PID`, first.
    pub fn set_up() -> Result<Cgroups, String> {
        let own = own_group(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?)
            .ok_or("this host has no cgroup v2 hierarchy mounted")?;
        let controllers = read(own.join("cgroup.controllers"))?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(format!(
                "the cgroup v2 group {} has no memory controller (it is on cgroup v1 here, or not delegated)",
                own.display()
            ));
        }
        // A feeder that started again in place (re-exec) is in the leaf it made before.
        let own = match own.file_name().and_then(|n| n.to_str()) {
            Some(name) if name == format!("rq-feeder-{}", std::process::id()) => {
                own.parent().map(Path::to_path_buf).unwrap_or(own)
            }
            _ => own,
        };
        clean_up_after_dead_feeders(&own);
        let enabled = |dir: &Path| {
            read(dir.join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        };
        if !enabled(&own) {
            match write(&own.join("cgroup.subtree_control"), "+memory") {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let leaf = own.join(format!("rq-feeder-{}", std::process::id()));
                    std::fs::create_dir(&leaf)
                        .and_then(|()| write(&leaf.join("cgroup.procs"), "0"))
                        .map_err(|e| refused(&own, &e))?;
                    if let Err(e) = write(&own.join("cgroup.subtree_control"), "+memory") {
                        // Back where it was: other processes share the feeder's group.
                        let _ = write(&own.join("cgroup.procs"), "0");
                        let _ = std::fs::remove_dir(&leaf);
                        return Err(format!(
                            "cannot enable the memory controller under {}: {e} (other processes are in that group; start the feeder in a group of its own, e.g. under systemd-run --user --scope -p Delegate=yes)",
                            own.display()
                        ));
                    }
                }
                Err(e) => return Err(refused(&own, &e)),
            }
        }
        Ok(Cgroups {
            parent: own,
            made: 0,
        })
    }

    /// Where the groups are made.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// A group for job `jid` held to `mem` bytes, and its `cgroup.procs` opened for the
    /// job's first process to move itself in before it runs anything (`join_in_child`).
    pub fn make(&mut self, jid: i64, mem: i64) -> std::io::Result<(JobGroup, std::fs::File)> {
        self.made += 1;
        let path = self
            .parent
            .join(format!("rq-{}-job{jid}-{}", std::process::id(), self.made));
        std::fs::create_dir(&path)?;
        let group = JobGroup { path };
        let limit = || {
            write(&group.path.join("memory.max"), &mem.to_string())?;
            // No swap beyond the limit (absent without swap accounting: then none is used).
            match write(&group.path.join("memory.swap.max"), "0") {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            // Out of memory, the whole job goes, not one process picked from it.
            write(&group.path.join("memory.oom.group"), "1")?;
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(group.path.join("cgroup.procs"))
        };
        match limit() {
            Ok(procs) => Ok((group, procs)),
            Err(e) => {
                group.remove();
                Err(e)
            }
        }
    }
}

impl JobGroup {
    /// The most memory the group held (bytes): its processes' and the page cache and
    /// kernel memory charged to them, which is what `memory.max` limits. None before
    /// Linux 5.19 (no `memory.peak`).
    pub fn peak(&self) -> Option<i64> {
        read(self.path.join("memory.peak"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The kernel killed processes of the group for want of memory.
    pub fn out_of_memory(&self) -> bool {
        read(self.path.join("memory.events")).is_ok_and(|events| {
            events.lines().any(|line| {
                let mut words = line.split_whitespace();
                words.next() == Some("oom_kill")
                    && words.next().and_then(|n| n.parse::<u64>().ok()) > Some(0)
            })
        })
    }

    /// Remove the group; false while processes of the job linger in it (try again later).
    pub fn remove(&self) -> bool {
        match std::fs::remove_dir(&self.path) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }
}

/// Make the spawned job's first process move itself into its group (from `make`) before
/// it runs anything, so that every process it starts is in it too. Costs the cheap
/// `posix_spawn` (a hook makes std fork), so only jobs with a group pay it.
pub fn join_in_child(command: &mut std::process::Command, procs: &std::fs::File) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = procs.as_raw_fd();
    // SAFETY: the hook only calls write(2), which is async-signal-safe, on a descriptor
    // that stays open until the spawn returns.
    unsafe {
        command.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

fn refused(dir: &Path, e: &std::io::Error) -> String {
    format!(
        "cannot make cgroups under {}: {e} (run the feeder as root, or in a subtree delegated to you: see README, 'What jobs use')",
        dir.display()
    )
}

fn read(path: impl AsRef<Path>) -> Result<String, String> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?
        .write_all(text.as_bytes())
}

/// The directory of this process's cgroup v2 group, from `/proc/self/cgroup` (its `0::`
/// line) and `/proc/self/mountinfo` (where a cgroup2 hierarchy is mounted, and which part
/// of it: inside a cgroup namespace or a container the mount may show a subtree).
fn own_group(cgroup: &str, mountinfo: &str) -> Option<PathBuf> {
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        let fields: Vec<&str> = mount.split_whitespace().collect();
        let (root, point) = (*fields.get(3)?, *fields.get(4)?);
        let inside = if root == "/" {
            path
        } else {
            path.strip_prefix(root)
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
        };
        let inside = inside.trim_start_matches('/');
        Some(match inside {
            "" => PathBuf::from(point),
            _ => Path::new(point).join(inside),
        })
    })
}

/// Groups left by feeders of this host that died (`rq-PID-...`, `rq-feeder-PID`): removed
/// when empty (a group with processes cannot be removed, so a job still running is safe).
fn clean_up_after_dead_feeders(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("rq-feeder-")
            .or_else(|| name.strip_prefix("rq-").and_then(|r| r.split('-').next()))
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p != std::process::id() && !crate::process::is_alive(p)) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_group_below_the_mount() {
        let info = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_group("0::/user.slice/run.scope\n", info),
            Some(PathBuf::from("/sys/fs/cgroup/user.slice/run.scope"))
        );
        assert_eq!(
            own_group("0::/\n", info),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // A mount of a subtree (a container's view).
        let sub = "30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_group("0::/docker/abc/x\n", sub),
            Some(PathBuf::from("/sys/fs/cgroup/x"))
        );
        assert_eq!(own_group("0::/docker/abcd\n", sub), None);
    }

    #[test]
    fn no_group_without_cgroup2() {
        let v1 = "30 23 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(own_group("4:memory:/x\n0::/\n", v1), None);
        assert_eq!(own_group("4:memory:/x\n", v1), None);
    }
}
