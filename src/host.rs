//! Host identity: `RQ_HOST` when set (tests, clusters whose host names collide), else the
//! kernel's host name (per UTS namespace).

pub fn name() -> String {
    if let Ok(host) = std::env::var("RQ_HOST")
        && !host.trim().is_empty()
    {
        return host.trim().to_string();
    }
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// The host name up to its first dot.
pub fn short(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// Does a job's host list (`a,b.example.org,c`) allow `host` to run it? Each entry must
/// equal the host name or its short name (no substring matches).
pub fn allowed(hosts: Option<&str>, host: &str) -> bool {
    let Some(hosts) = hosts else { return true };
    let short_host = short(host);
    hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .any(|h| {
            h.eq_ignore_ascii_case(host)
                || h.eq_ignore_ascii_case(short_host)
                || short(h).eq_ignore_ascii_case(host)
        })
}

/// The login name of the real user running rq (`getpwuid_r` of the real uid; the uid in
/// digits when the password database does not know it). Recorded as a job's `user`:
/// bookkeeping, not a permission (every job runs as its feeder's user).
pub fn user_name() -> String {
    let uid = unsafe { libc::getuid() };
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer points into buffers that outlive the call; the result is
    // read only when the call says it filled `pwd`.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc == 0 && !found.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        let name = name.to_string_lossy();
        if !name.is_empty() {
            return name.into_owned();
        }
    }
    uid.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_or_short_name_only() {
        assert!(allowed(None, "n1"));
        assert!(allowed(Some("n1,n2"), "n1"));
        assert!(allowed(Some("n1"), "n1.cluster.org"));
        assert!(allowed(Some("n1.cluster.org"), "n1.cluster.org"));
        assert!(!allowed(Some("n1"), "n10"));
        assert!(!allowed(Some("n10"), "n1"));
        assert!(!allowed(Some("n2,n3"), "n1"));
    }
}
