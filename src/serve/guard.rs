//! What keeps the dashboard for the people it is meant for: the names it answers to
//! (against DNS rebinding), and a bounded number of connections, each with a bounded
//! time to send its request's headers (against slow clients that hold connections open).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a client may take to send a request's headers (also how long an idle
/// keep-alive connection stays open).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections open at once, well under a process's usual 1,024 descriptors.
pub const MAX_CONNECTIONS: usize = 256;

/// The `Host` names the dashboard answers to. A web page elsewhere can point its own
/// name at 127.0.0.1 (DNS rebinding) and have the user's browser fetch from the
/// dashboard as if from its own site; the browser then sends that page's name as `Host`,
/// so a request for any other name is refused.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    listen: IpAddr,
    names: Vec<String>,
}

impl AllowedHosts {
    pub fn new(listen: IpAddr, names: &[String]) -> AllowedHosts {
        AllowedHosts {
            listen,
            names: names.iter().map(|n| normal(n)).collect(),
        }
    }

    /// Loopback names (`localhost`, `*.localhost`), a loopback address, the address
    /// listened on (any address when it listens on all of them: an address cannot be
    /// rebound), and the names given with `--allow-host`; with or without a port.
    pub fn allows(&self, host: &str) -> bool {
        let name = strip_port(host.trim());
        if name.is_empty() {
            return false;
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return ip.is_loopback() || ip == self.listen || self.listen.is_unspecified();
        }
        let name = normal(name);
        name == "localhost" || name.ends_with(".localhost") || self.names.contains(&name)
    }
}

fn normal(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `name:port` → `name`; `[v6]:port` → `[v6]`; a bare IPv6 address stays whole.
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|rest| rest.find(']')) {
        return &host[..end + 2];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// The open connections, oldest first. When all places are taken, a new connection
/// closes the oldest one that is not in the middle of a request (a slow client still
/// sending headers, or an idle keep-alive), so slow clients cannot keep others out; if
/// every one is busy with a request, the new one is closed instead.
#[derive(Default)]
pub struct Connections {
    open: Mutex<VecDeque<Entry>>,
    next_id: AtomicUsize,
}

struct Entry {
    id: usize,
    /// Requests of this connection being answered now.
    busy: Arc<AtomicUsize>,
    abort: Option<tokio::task::AbortHandle>,
}

/// A connection's place: `busy` counts its requests in progress.
pub struct Place {
    pub id: usize,
    pub busy: Arc<AtomicUsize>,
}

impl Connections {
    /// A place for a new connection, making room if needed; None when every open
    /// connection is busy answering a request.
    pub fn admit(&self) -> Option<Place> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= MAX_CONNECTIONS {
            let idle = open
                .iter()
                .position(|e| e.busy.load(Ordering::SeqCst) == 0)?;
            if let Some(entry) = open.remove(idle)
                && let Some(abort) = entry.abort
            {
                abort.abort();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicUsize::new(0));
        open.push_back(Entry {
            id,
            busy: busy.clone(),
            abort: None,
        });
        Some(Place { id, busy })
    }

    /// The task serving connection `id`, so that it can be closed to make room.
    pub fn serving(&self, id: usize, abort: tokio::task::AbortHandle) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.iter_mut().find(|e| e.id == id) {
            Some(entry) => entry.abort = Some(abort),
            // Closed to make room before its task was known.
            None => abort.abort(),
        }
    }

    /// Connection `id` ended.
    pub fn close(&self, id: usize) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|e| e.id != id);
    }
}

/// Counts a request as in progress on its connection while it lives.
pub struct InRequest(pub Arc<AtomicUsize>);

impl InRequest {
    pub fn enter(busy: &Arc<AtomicUsize>) -> InRequest {
        busy.fetch_add(1, Ordering::SeqCst);
        InRequest(busy.clone())
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_the_listen_address_and_allowed_names() {
        let loopback =
            AllowedHosts::new("127.0.0.1".parse().unwrap(), &["Dash.Example.org".into()]);
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:1",
            "[::1]:8080",
            "127.0.0.2",
            "dash.example.org",
            "dash.example.org.:443",
        ] {
            assert!(loopback.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "10.0.0.5:8080",
            "",
            ":8080",
        ] {
            assert!(!loopback.allows(refused), "{refused}");
        }
        let wide = AllowedHosts::new("0.0.0.0".parse().unwrap(), &[]);
        assert!(wide.allows("10.0.0.5:8080"));
        assert!(!wide.allows("rebound.example:8080"));
        let one = AllowedHosts::new("10.0.0.5".parse().unwrap(), &[]);
        assert!(one.allows("10.0.0.5:8080"));
        assert!(!one.allows("10.0.0.6:8080"));
    }
}
