//! Liveness of hosts without a central server or trusted clocks.
//!
//! Each feeder touches `Q/hosts/<host>.hb` every `heartbeat` seconds with
//! `utimensat(UTIME_NOW)`, which on NFS makes the *file server* stamp the time. It reads
//! "now" back from its own freshly touched file, so comparing another host's heartbeat
//! with it compares two server timestamps: a host whose own clock is minutes off is neither
//! declared dead nor kept alive wrongly. Reads use `statx(STATX_FORCE_SYNC)`, so an NFS
//! client asks the server instead of its attribute cache.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::error::{IoContext, Result};
// The heartbeat files themselves and the file operations they use.
pub use crate::beats::{
    create_new, heartbeat_age, heartbeat_older_than, heartbeat_path, hosts_dir, mtime, read_info,
    refresh_directory, server_now, touch, touch_existing,
};

/// Queue-wide liveness settings (`rq Q configure heartbeat=10s lease=60s max_attempts=3`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub heartbeat: f64,
    pub lease: f64,
    pub max_attempts: i64,
    /// Seconds after which the best job that does not fit a host yet makes that host stop
    /// claiming jobs behind it, until it fits (a simple reservation against starvation).
    pub reserve_after: f64,
    /// The most output kept per stream of a run, for a queue that keeps job files in its
    /// database (`in_database`).
    pub output_cap: u64,
    /// The shell prefix jobs run under where a feeder's `--shell` does not say (`shell`;
    /// empty for `none`): `None` for the feeder's default.
    pub shell: Option<Vec<String>>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            heartbeat: 10.0,
            lease: crate::beats::DEFAULT_LEASE,
            max_attempts: 3,
            reserve_after: 600.0,
            output_cap: crate::store::in_database::DEFAULT_OUTPUT_CAP,
            shell: None,
        }
    }
}

impl Settings {
    /// From the queue's attributes; unset or unreadable keys keep their defaults.
    pub fn from_attributes(get: impl Fn(&str) -> Option<String>) -> Settings {
        let d = Settings::default();
        let secs = |key: &str, default: f64| {
            get(key)
                .and_then(|v| crate::time::parse_duration(&v))
                .filter(|s| *s > 0.0)
                .unwrap_or(default)
        };
        let heartbeat = secs("heartbeat", d.heartbeat);
        Settings {
            heartbeat,
            // A lease shorter than two heartbeats would declare healthy hosts dead.
            lease: secs("lease", d.lease).max(2.0 * heartbeat),
            max_attempts: get("max_attempts")
                .and_then(|v| v.trim().parse().ok())
                .filter(|n: &i64| *n > 0)
                .unwrap_or(d.max_attempts),
            reserve_after: get("reserve_after")
                .and_then(|v| crate::time::parse_duration(&v))
                .filter(|s| *s >= 0.0)
                .unwrap_or(d.reserve_after),
            output_cap: get("output_cap")
                .and_then(|v| crate::input::parse_size(&v))
                .unwrap_or(d.output_cap),
            shell: get("shell").and_then(|v| shell_words(&v)),
        }
    }
}

/// A `shell` setting as a prefix: its words (`none`: no shell, plain commands); `None`
/// when it has no words.
pub fn shell_words(text: &str) -> Option<Vec<String>> {
    let words: Vec<String> = text.split_whitespace().map(String::from).collect();
    match words.as_slice() {
        [] => None,
        [none] if none == "none" => Some(Vec::new()),
        _ => Some(words),
    }
}

/// The settings `configure` accepts, with their ranges (README, "Settings").
pub const SETTING_RANGES: &[(&str, &str)] = &[
    ("heartbeat", "a duration from 0.5s to 1h (default 10s)"),
    (
        "lease",
        "a duration from 5s to 7d, at least two heartbeats (default 60s)",
    ),
    ("max_attempts", "a whole number from 1 to 1000 (default 3)"),
    (
        "files",
        "PostgreSQL queues only: the absolute path of a directory every host sees, for job files (stdin, data, output)",
    ),
    (
        "shell",
        "the shell jobs run under, as words, where a feeder's --shell does not say: e.g. 'bash -c' (the default is 'bash --login -c', which reads login profiles for every job; 'none': plain commands run without a shell)",
    ),
    (
        "output_cap",
        "a size from 1K to 1T, such as 64M (default 64M): PostgreSQL queues without files= only: the most of a run's stdout, and of its stderr, kept in the database; past it, a line says how much was cut",
    ),
    (
        "reserve_after",
        "a duration from 0s to 7d (default 10m): how long the best job that does not fit may wait before hosts it fits stop claiming jobs behind it",
    ),
];

/// Check a queue's settings as they would be after a `configure`: every key known, every
/// value in its range, and the lease at least two heartbeats (a shorter one would declare
/// healthy hosts dead). `get` gives the value a key would have (None: unset, default).
pub fn check_settings(keys: &[&str], get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    for key in keys {
        // limit.TAG=N: at most N jobs tagged TAG run at once, over all hosts.
        if let Some(tag) = key.strip_prefix("limit.") {
            if tag.is_empty() {
                return Err("limit. needs a tag: limit.TAG=N".into());
            }
            if let Some(text) = get(key)
                && !text
                    .trim()
                    .parse::<i64>()
                    .is_ok_and(|n| (0..=1_000_000).contains(&n))
            {
                return Err(format!(
                    "{key} must be how many jobs tagged {tag} may run at once (0 to 1000000), not '{text}'"
                ));
            }
            continue;
        }
        if !SETTING_RANGES.iter().any(|(k, _)| k == key) {
            let known: Vec<&str> = SETTING_RANGES.iter().map(|(k, _)| *k).collect();
            return Err(format!(
                "unknown setting '{key}' (known: {}, limit.TAG)",
                known.join(", ")
            ));
        }
    }
    let range = |key: &str| {
        SETTING_RANGES
            .iter()
            .find(|(k, _)| *k == key)
            .map_or("", |r| r.1)
    };
    let duration = |key: &str, min: f64, max: f64| -> Result<Option<f64>, String> {
        let Some(text) = get(key) else {
            return Ok(None);
        };
        match crate::time::parse_duration(&text) {
            Some(secs) if (min..=max).contains(&secs) => Ok(Some(secs)),
            _ => Err(format!("{key} must be {}, not '{text}'", range(key))),
        }
    };
    duration("reserve_after", 0.0, 7.0 * 86400.0)?;
    if let Some(text) = get("shell")
        && shell_words(&text).is_none()
    {
        return Err(format!("shell must be {}, not '{text}'", range("shell")));
    }
    if let Some(text) = get("output_cap")
        && !crate::input::parse_size(&text).is_some_and(|n| ((1 << 10)..=(1 << 40)).contains(&n))
    {
        return Err(format!(
            "output_cap must be {}, not '{text}'",
            range("output_cap")
        ));
    }
    let heartbeat = duration("heartbeat", 0.5, 3600.0)?.unwrap_or(Settings::default().heartbeat);
    let lease = duration("lease", 1.0, 7.0 * 86400.0)?.unwrap_or(Settings::default().lease);
    if lease < 2.0 * heartbeat {
        return Err(format!(
            "the lease ({lease}s) must be at least two heartbeats ({heartbeat}s each): \
             a shorter one would declare healthy hosts dead"
        ));
    }
    if let Some(text) = get("max_attempts") {
        match text.trim().parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => {}
            _ => {
                return Err(format!(
                    "max_attempts must be {}, not '{text}'",
                    range("max_attempts")
                ));
            }
        }
    }
    Ok(())
}

/// Where a queue's heartbeats are judged: files in its `hosts/`, by their times on the
/// file server's clock, or rows of a PostgreSQL queue that keeps no job-file directory,
/// stamped with the database server's clock. Whoever reclaims dead hosts' jobs judges
/// through this, never asking which it is.
#[derive(Debug, Clone)]
pub enum Heartbeats {
    Files(PathBuf),
    Rows,
}

impl Heartbeats {
    /// Of `hosts`, those without a beat for over `lease` seconds: a first look, outside
    /// the queue's lock. `now`: the file server's clock (files).
    pub fn stale(
        &self,
        store: &mut crate::store::Store,
        hosts: Vec<String>,
        now: Timestamp,
        lease: f64,
    ) -> Result<Vec<String>> {
        match self {
            Heartbeats::Files(queue) => Ok(hosts
                .into_iter()
                .filter(|h| heartbeat_older_than(queue, h, now, lease))
                .collect()),
            Heartbeats::Rows => {
                let ages = store.read(|tx| {
                    hosts
                        .iter()
                        .map(|h| crate::store::in_database::heartbeat_age(tx, h))
                        .collect::<Result<Vec<_>>>()
                })?;
                Ok(hosts
                    .into_iter()
                    .zip(ages)
                    .filter(|(_, age)| age.is_none_or(|a| a > lease))
                    .map(|(h, _)| h)
                    .collect())
            }
        }
    }

    /// The judge of staleness inside a write transaction, for a second look under the
    /// queue's lock: a host that beat meanwhile keeps its jobs. For files, the file
    /// server's clock is read anew by touching `me`'s heartbeat (waiting for the lock
    /// took time); `now` serves should that fail.
    pub fn judge<'a, 'c>(
        &'a self,
        tx: &'a crate::store::Tx<'c>,
        me: &str,
        now: Timestamp,
        lease: f64,
    ) -> Judge<'a, 'c> {
        let now = match self {
            Heartbeats::Files(queue) => {
                let mine = heartbeat_path(queue, me);
                touch(&mine).ok().and_then(|_| mtime(&mine)).unwrap_or(now)
            }
            Heartbeats::Rows => now,
        };
        Judge {
            place: self,
            tx,
            now,
            lease,
        }
    }
}

/// Judges hosts' staleness inside a write transaction (`Heartbeats::judge`).
pub struct Judge<'a, 'c> {
    place: &'a Heartbeats,
    tx: &'a crate::store::Tx<'c>,
    /// The file server's clock (files).
    now: Timestamp,
    lease: f64,
}

impl Judge<'_, '_> {
    /// Whether `host` has not beaten for over the lease.
    pub fn stale(&self, host: &str) -> Result<bool> {
        Ok(match self.place {
            Heartbeats::Files(queue) => heartbeat_older_than(queue, host, self.now, self.lease),
            Heartbeats::Rows => crate::store::in_database::heartbeat_age(self.tx, host)?
                .is_none_or(|a| a > self.lease),
        })
    }
}

/// This feeder's heartbeat: a file in the queue's `hosts/`, or a row of a PostgreSQL
/// queue that keeps no job-file directory (`in_database`).
pub struct Heartbeat {
    target: Target,
    info: Value,
}

enum Target {
    File(PathBuf),
    Row {
        host: String,
        connection: Box<crate::store::in_database::BeatConnection>,
        /// The info changed since it was last published.
        info_changed: bool,
    },
}

/// Where a queue's feeders beat.
pub enum BeatPlace<'a> {
    Dir(&'a Path),
    Database(&'a crate::store::postgres::Location),
}

impl Heartbeat {
    /// Publish who is feeding (host, feeder id, pid, started, max_feed, version).
    pub fn start(
        place: BeatPlace<'_>,
        host: &str,
        feeder: &str,
        max_feed: usize,
        capacity: &crate::claims::Capacity,
        lease: f64,
    ) -> Result<Heartbeat> {
        let info = json!({
            "host": host,
            "feeder": feeder,
            "pid": std::process::id(),
            "started": crate::time::now(),
            "max_feed": max_feed,
            "cpus": capacity.cpus,
            "mem": capacity.mem,
            "gpus": capacity.devices.join(","),
            "version": env!("CARGO_PKG_VERSION"),
            // For processes that wait for the queue's lock and cannot read the settings
            // (`lock_recovery::lease`).
            "lease": lease,
            "stopped": false,
        });
        let target = match place {
            BeatPlace::Dir(queue) => {
                let dir = hosts_dir(queue);
                std::fs::create_dir_all(&dir)
                    .context(|| format!("cannot create {}", dir.display()))?;
                Target::File(heartbeat_path(queue, host))
            }
            BeatPlace::Database(location) => Target::Row {
                host: host.to_string(),
                connection: Box::new(crate::store::in_database::BeatConnection::new(location)),
                info_changed: true,
            },
        };
        let mut hb = Heartbeat { target, info };
        hb.write()?;
        Ok(hb)
    }

    /// Publish the info: a file written through a temporary file and a rename (atomic for
    /// readers), or the host's row.
    fn write(&mut self) -> Result<()> {
        let path = match &mut self.target {
            Target::File(path) => path.clone(),
            Target::Row { info_changed, .. } => {
                *info_changed = true;
                return self.beat().map(drop).map_err(|e| crate::Error::Io {
                    context: "cannot publish the heartbeat in the database".into(),
                    source: e,
                });
            }
        };
        let tmp = path.with_extension(format!("hb.{}.tmp", std::process::id()));
        // A new file (a link planted under the temporary name is removed, not followed),
        // then a rename, which replaces whatever is at the heartbeat's name.
        let _ = std::fs::remove_file(&tmp);
        create_new(&tmp)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, format!("{}\n", self.info).as_bytes())
            })
            .and_then(|_| std::fs::rename(&tmp, &path))
            .context(|| format!("cannot write {}", path.display()))?;
        touch(&path).context(|| format!("cannot touch {}", path.display()))
    }

    /// Beat: touch the file (or stamp the row) and return the server's "now" read back.
    pub fn beat(&mut self) -> std::io::Result<Timestamp> {
        match &mut self.target {
            Target::File(path) => {
                touch(path)?;
                mtime(path).ok_or_else(|| std::io::Error::other("heartbeat file has no time"))
            }
            Target::Row {
                host,
                connection,
                info_changed,
            } => {
                let info = self.info.to_string();
                let now = connection
                    .beat(host, &info, *info_changed)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                *info_changed = false;
                Ok(now)
            }
        }
    }

    /// Publish why this feeder is not claiming (None: it is again).
    pub fn set_note(&mut self, text: Option<&str>) {
        match text {
            Some(t) => self.info["note"] = json!(t),
            None => {
                if let Some(map) = self.info.as_object_mut() {
                    map.remove("note");
                }
            }
        }
        let _ = self.write();
    }

    /// Mark this feeder as stopped: cleanly, or by the error that ended it.
    pub fn stopped(mut self, error: Option<&str>) {
        self.info["stopped"] = json!(true);
        if let Some(e) = error {
            self.info["error"] = json!(e);
        }
        let _ = self.write();
    }
}

/// Every host that has published a heartbeat: its info and heartbeat age.
pub fn known_hosts(queue: &Path, server_now: Timestamp) -> Vec<(Value, Option<f64>)> {
    if queue.as_os_str().is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(hosts_dir(queue)) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".hb") {
            continue;
        }
        let info = read_info(&entry.path())
            .unwrap_or_else(|| json!({ "host": name.trim_end_matches(".hb") }));
        let age = mtime(&entry.path()).map(|m| crate::time::seconds_between(m, server_now));
        hosts.push((info, age));
    }
    hosts.sort_by(|a, b| a.0["host"].as_str().cmp(&b.0["host"].as_str()));
    hosts
}

/// The most CPUs, memory and GPUs any live feeder of `hosts` (as `known_hosts` gives
/// them) offers (each the largest of its kind), or None when no live feeder says what it
/// offers.
pub fn largest_live(hosts: &[(Value, Option<f64>)], lease: f64) -> Option<crate::claims::Capacity> {
    let mut largest: Option<crate::claims::Capacity> = None;
    for (info, age) in hosts {
        let alive = !info["stopped"].as_bool().unwrap_or(false) && age.is_some_and(|a| a <= lease);
        let Some(cpus) = info["cpus"].as_i64().filter(|_| alive) else {
            continue;
        };
        let mem = info["mem"].as_i64().unwrap_or(0);
        let gpus = info["gpus"].as_str().unwrap_or("");
        let devices: Vec<String> = gpus
            .split(',')
            .filter(|d| !d.is_empty())
            .map(String::from)
            .collect();
        let l = largest.get_or_insert_with(Default::default);
        l.cpus = l.cpus.max(cpus);
        l.mem = l.mem.max(mem);
        if devices.len() > l.devices.len() {
            l.devices = devices;
        }
    }
    largest
}

/// The largest live feeder, as a listing in this process found it: read by the SQL
/// function `rq_unfit` so `list` can say why a job cannot run. Unset: nothing is said.
/// Seconds on a clock that keeps counting while the machine is suspended or the process
/// stopped: what self-fencing measures missed heartbeats with.
pub fn boot_clock() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_and_floor() {
        let s = Settings::from_attributes(|_| None);
        assert_eq!(s, Settings::default());
        let s = Settings::from_attributes(|k| match k {
            "heartbeat" => Some("5s".into()),
            "lease" => Some("6".into()),
            "max_attempts" => Some("x".into()),
            _ => None,
        });
        assert_eq!(s.heartbeat, 5.0);
        assert_eq!(s.lease, 10.0, "lease is at least two heartbeats");
        assert_eq!(s.max_attempts, 3);
    }

    #[test]
    fn heartbeat_age_uses_file_times() {
        let dir = tempfile::tempdir().unwrap();
        let mut hb = Heartbeat::start(
            BeatPlace::Dir(dir.path()),
            "h1",
            "f",
            2,
            &Default::default(),
            60.0,
        )
        .unwrap();
        let now = hb.beat().unwrap();
        let age = heartbeat_age(dir.path(), "h1", now).unwrap();
        assert!(age.abs() < 1.0);
        assert!(heartbeat_age(dir.path(), "h2", now).is_none());
        let hosts = known_hosts(dir.path(), now);
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].0["max_feed"], 2);
        // A deleted hosts/ directory does not stop the heartbeat.
        std::fs::remove_dir_all(hosts_dir(dir.path())).unwrap();
        assert!(hb.beat().is_ok());
    }
}
