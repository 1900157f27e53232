//! The feeder's log: one line per event, to stderr or a file, rolled by size and/or age.
//! Lines: `2026-11-27T21:05:03.123456Z INFO  [pid] message`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Fatal = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    /// `0-4`, or a name or its first letter: fatal error warn info debug.
    pub fn parse(text: &str) -> Result<Level> {
        let levels = [
            Level::Fatal,
            Level::Error,
            Level::Warn,
            Level::Info,
            Level::Debug,
        ];
        if let Ok(n) = text.parse::<usize>() {
            return levels.get(n).copied().ok_or_else(|| bad_level(text));
        }
        let lower = text.to_ascii_lowercase();
        levels
            .into_iter()
            .find(|l| !lower.is_empty() && l.name().to_ascii_lowercase().starts_with(&lower))
            .ok_or_else(|| bad_level(text))
    }

    fn name(self) -> &'static str {
        match self {
            Level::Fatal => "FATAL",
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

fn bad_level(text: &str) -> Error {
    Error::usage(format!(
        "--verbosity: '{text}' is not 0-4 or fatal, error, warn, info, debug"
    ))
}

/// When to start a new log file by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Age {
    Daily,
    Weekly,
    Monthly,
}

impl Age {
    pub fn parse(text: &str) -> Result<Age> {
        match text.to_ascii_lowercase().as_str() {
            "daily" | "day" => Ok(Age::Daily),
            "weekly" | "week" => Ok(Age::Weekly),
            "monthly" | "month" => Ok(Age::Monthly),
            _ => Err(Error::usage(format!(
                "--log_age: '{text}' is not daily, weekly or monthly"
            ))),
        }
    }

    /// The period a moment falls in; a new period starts a new file.
    fn period(self, now: jiff::Timestamp) -> String {
        let date = now.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
        match self {
            Age::Daily => date.to_string(),
            Age::Weekly => {
                let week = date.iso_week_date();
                format!("{}-W{:02}", week.year(), week.week())
            }
            Age::Monthly => format!("{}-{:02}", date.year(), date.month()),
        }
    }
}

/// How many rolled files to keep (`log.1` is the newest).
const KEEP: usize = 9;

pub struct Logger {
    level: Level,
    path: Option<PathBuf>,
    file: Option<File>,
    max_size: Option<u64>,
    age: Option<Age>,
    period: String,
}

impl Logger {
    pub fn stderr(level: Level) -> Logger {
        Logger {
            level,
            path: None,
            file: None,
            max_size: None,
            age: None,
            period: String::new(),
        }
    }

    pub fn to_file(
        level: Level,
        path: PathBuf,
        max_size: Option<u64>,
        age: Option<Age>,
    ) -> Result<Logger> {
        let file = open_append(&path)?;
        let period = age
            .map(|a| a.period(jiff::Timestamp::now()))
            .unwrap_or_default();
        Ok(Logger {
            level,
            path: Some(path),
            file: Some(file),
            max_size,
            age,
            period,
        })
    }

    pub fn enabled(&self, level: Level) -> bool {
        level <= self.level
    }

    pub fn log(&mut self, level: Level, message: &str) {
        if !self.enabled(level) {
            return;
        }
        let now = jiff::Timestamp::now();
        self.roll_if_due(now);
        let line = format!(
            "{} {:<5} [{}] {}\n",
            crate::time::format(now),
            level.name(),
            std::process::id(),
            crate::secrets::redact(message)
        );
        match &mut self.file {
            Some(file) => {
                let _ = file.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn roll_if_due(&mut self, now: jiff::Timestamp) {
        let (Some(path), Some(file)) = (&self.path, &self.file) else {
            return;
        };
        let too_big = self
            .max_size
            .is_some_and(|max| file.metadata().map(|m| m.len() >= max).unwrap_or(false));
        let new_period = self.age.map(|a| a.period(now));
        let too_old = new_period.as_ref().is_some_and(|p| *p != self.period);
        if !(too_big || too_old) {
            return;
        }
        for i in (1..KEEP).rev() {
            let _ = std::fs::rename(rolled(path, i), rolled(path, i + 1));
        }
        let _ = std::fs::rename(path, rolled(path, 1));
        if let Ok(f) = open_append(path) {
            self.file = Some(f);
        }
        if let Some(p) = new_period {
            self.period = p;
        }
    }
}

fn rolled(path: &std::path::Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn open_append(path: &std::path::Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .context(|| format!("cannot open log {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(Level::parse("4").unwrap(), Level::Debug);
        assert_eq!(Level::parse("w").unwrap(), Level::Warn);
        assert_eq!(Level::parse("info").unwrap(), Level::Info);
        assert!(Level::parse("9").is_err());
        assert!(Level::parse("loud").is_err());
    }

    #[test]
    fn rolls_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = Logger::to_file(Level::Info, path.clone(), Some(200), None).unwrap();
        for i in 0..20 {
            log.log(
                Level::Info,
                &format!("line {i} with some padding to fill the file"),
            );
        }
        assert!(rolled(&path, 1).exists());
        assert!(std::fs::metadata(&path).unwrap().len() < 400);
    }

    #[test]
    fn rolls_by_age_when_the_period_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = Logger::to_file(Level::Info, path.clone(), None, Some(Age::Daily)).unwrap();
        log.log(Level::Info, "today");
        assert!(!rolled(&path, 1).exists());
        log.period = "2000-01-01".into(); // as if the file was opened on an earlier day
        log.log(Level::Info, "a new day");
        assert!(
            std::fs::read_to_string(rolled(&path, 1))
                .unwrap()
                .contains("today")
        );
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("a new day")
        );
        assert_ne!(Age::Weekly.period(jiff::Timestamp::now()), "");
        assert!(Age::parse("hourly").is_err());
    }
}
