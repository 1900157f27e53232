//! Guard against filesystems whose locks do not work between hosts. rq's safety rests on
//! POSIX locks that the NFS server arbitrates; an NFS mount with `nolock` or
//! `local_lock=posix|all` keeps locks local to each host, so two hosts could claim the
//! same job. Feeders refuse such a queue; other commands warn.

use std::path::{Path, PathBuf};

/// One line of /proc/self/mountinfo, as far as rq needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
    /// Per-mount and per-superblock options together.
    pub options: Vec<String>,
}

/// `\040` and friends: mountinfo escapes spaces, tabs, newlines and backslashes in octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let mount_point = PathBuf::from(unescape(left.get(4)?));
            let mut options: Vec<String> = left.get(5)?.split(',').map(String::from).collect();
            options.extend(right.get(2).unwrap_or(&"").split(',').map(String::from));
            Some(Mount {
                mount_point,
                fstype: right.first()?.to_string(),
                options,
            })
        })
        .collect()
}

/// The mount a path lives on: the longest mount point that is a prefix of it.
pub fn mount_of<'a>(path: &Path, mounts: &'a [Mount]) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
}

/// What is wrong with this mount's locking, if anything.
pub fn lock_problem(mount: &Mount) -> Option<String> {
    if !mount.fstype.starts_with("nfs") {
        return None;
    }
    let has = |o: &str| mount.options.iter().any(|x| x == o);
    let bad = if has("nolock") {
        Some("nolock")
    } else if has("local_lock=posix") {
        Some("local_lock=posix")
    } else if has("local_lock=all") {
        Some("local_lock=all")
    } else {
        None
    }?;
    Some(format!(
        "{} is NFS mounted with {bad}: its locks are local to each host, so two hosts could run the same job; remount it with locking (local_lock=none, no nolock)",
        mount.mount_point.display()
    ))
}

/// Warn once per process that the queue's filesystem keeps locks local.
pub fn warn_once(queue_dir: &Path) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        if let Some(problem) = check(queue_dir) {
            crate::note!("rq: WARNING: {problem}");
        }
    });
}

/// Check the filesystem a queue lives on. `RQ_TEST_MOUNTINFO` names another mountinfo file,
/// so tests can present an NFS mount this machine cannot make.
pub fn check(queue_dir: &Path) -> Option<String> {
    let source = std::env::var_os("RQ_TEST_MOUNTINFO").map(PathBuf::from);
    let text = std::fs::read_to_string(
        source
            .as_deref()
            .unwrap_or(Path::new("/proc/self/mountinfo")),
    )
    .ok()?;
    let mounts = parse_mountinfo(&text);
    mount_of(queue_dir, &mounts).and_then(lock_problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:45 / /nfs rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2,rsize=1048576,hard,proto=tcp,local_lock=none,addr=10.0.0.1
41 22 0:46 / /old rw,relatime shared:21 - nfs server:/old rw,vers=3,nolock,proto=tcp,local_lock=all,addr=10.0.0.2
42 22 0:47 / /my\\040share rw - nfs4 server:/s rw,vers=4.1,local_lock=posix
";

    #[test]
    fn finds_the_mount_and_its_locking() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(mounts.len(), 4);
        let m = mount_of(Path::new("/nfs/q"), &mounts).unwrap();
        assert_eq!(m.fstype, "nfs4");
        assert_eq!(lock_problem(m), None);
        let old = mount_of(Path::new("/old/queues/q"), &mounts).unwrap();
        assert!(lock_problem(old).unwrap().contains("nolock"));
        let spaced = mount_of(Path::new("/my share/q"), &mounts).unwrap();
        assert!(lock_problem(spaced).unwrap().contains("local_lock=posix"));
        let root = mount_of(Path::new("/home/q"), &mounts).unwrap();
        assert_eq!(root.fstype, "ext4");
        assert_eq!(lock_problem(root), None);
    }

    #[test]
    fn this_machine_is_fine() {
        assert_eq!(check(Path::new("/tmp")), None);
    }
}
