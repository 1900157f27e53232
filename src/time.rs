//! Timestamps. Stored as fixed-width UTC ISO-8601 text with microseconds
//! (`2026-11-27T21:05:03.123456Z`): unambiguous across time zones, sorts and compares
//! correctly as plain text in SQL, understood by SQLite's date functions, and readable.

use jiff::Timestamp;

/// The format of every timestamp rq stores.
pub const FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

pub fn format(ts: Timestamp) -> String {
    ts.strftime(FORMAT).to_string()
}

/// Now, on this host's clock: for human-facing times and retry delays, never for
/// liveness (see `liveness`, which uses the file server's clock). `RQ_TEST_CLOCK_OFFSET`
/// (e.g. `+300s`, `-5m`) skews it, to test that a host with a wrong clock does no harm.
pub fn now_ts() -> Timestamp {
    let now = Timestamp::now();
    match clock_offset() {
        Some(offset) => now
            .checked_add(jiff::SignedDuration::from_secs_f64(offset))
            .unwrap_or(now),
        None => now,
    }
}

pub fn now() -> String {
    format(now_ts())
}

fn clock_offset() -> Option<f64> {
    let text = std::env::var("RQ_TEST_CLOCK_OFFSET").ok()?;
    let text = text.trim();
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    parse_duration(rest).map(|s| sign * s)
}

pub fn parse(text: &str) -> Option<Timestamp> {
    text.parse::<Timestamp>().ok()
}

/// Seconds from `earlier` to `later`, as a float.
pub fn seconds_between(earlier: Timestamp, later: Timestamp) -> f64 {
    (later.as_microsecond() - earlier.as_microsecond()) as f64 / 1e6
}

/// A start time given by a user (`submit --at`): `22:00` or `22:00:30` (the next time the
/// clock shows it, local time), `2026-12-24` (midnight), `2026-12-24T08:00` or
/// `2026-12-24 08:00` (local time), or any of these with a zone: `...Z`, `...+01:00`,
/// `...[Europe/Paris]`.
pub fn parse_start_time(text: &str, now: Timestamp) -> std::result::Result<Timestamp, String> {
    use jiff::civil;
    let text = text.trim();
    let bad = || {
        format!(
            "'{text}' is not a time: use 22:00, 2026-12-24, 2026-12-24T08:00 (local time), \
             or add a zone (Z, +01:00, [Europe/Paris])"
        )
    };
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Ok(ts);
    }
    if let Ok(zoned) = text.parse::<jiff::ZonedDateTime>() {
        return Ok(zoned.timestamp());
    }
    let zone = jiff::tz::TimeZone::system();
    let local = |dt: civil::DateTime| -> std::result::Result<Timestamp, String> {
        dt.to_zoned_datetime(zone.clone())
            .map(|z| z.timestamp())
            .map_err(|e| format!("{text}: {e}"))
    };
    if let Ok(dt) = text.replacen(' ', "T", 1).parse::<civil::DateTime>() {
        return local(dt);
    }
    if let Ok(date) = text.parse::<civil::Date>() {
        return local(date.to_datetime(civil::Time::midnight()));
    }
    if let Ok(time) = text.parse::<civil::Time>() {
        let today = now.to_zoned_datetime(zone.clone()).date();
        let at = local(today.to_datetime(time))?;
        if at > now {
            return Ok(at);
        }
        let tomorrow = today.tomorrow().map_err(|e| format!("{text}: {e}"))?;
        return local(tomorrow.to_datetime(time));
    }
    Err(bad())
}

/// `12h03m07.25s`: the original rq's duration layout in `status`.
pub fn hms(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    let hours = (seconds / 3600.0).floor();
    let minutes = ((seconds - hours * 3600.0) / 60.0).floor();
    let secs = seconds - hours * 3600.0 - minutes * 60.0;
    format!("{:02}h{:02}m{:05.2}s", hours as u64, minutes as u64, secs)
}

/// The longest duration rq takes anywhere (options, environment, configure, job lists):
/// 100 years. A longer one is a typo (or an attempt to overflow a clock) and is refused.
pub const MAX_DURATION_SECS: f64 = 100.0 * 365.25 * 86400.0;

/// What `parse_duration` takes, for error messages.
pub const DURATION_FORMS: &str = "a duration like 90s, 15m, 2h, 1d or 1h30m, at most 100 years";

/// A duration given by a user: `90`, `90s`, `15m`, `2h`, `1d`, `1.5h`; None for anything
/// else, and for more than `MAX_DURATION_SECS`.
pub fn parse_duration(text: &str) -> Option<f64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    let mut terms = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let value: f64 = number.parse().ok()?;
        let scale = match unit {
            // A bare number is seconds, but only on its own: "1h30" is a mistake.
            "" if terms == 0 && after.trim().is_empty() => 1.0,
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            _ => return None,
        };
        total += value * scale;
        terms += 1;
        rest = after.trim_start();
    }
    (total.is_finite() && total <= MAX_DURATION_SECS).then_some(total)
}

/// `RQ_LOCK_TIMEOUT`: how long to wait for the queue's lock (or a PostgreSQL server)
/// before giving up; None when unset. A value that is not a duration is an error.
pub fn lock_timeout_from_env() -> crate::error::Result<Option<std::time::Duration>> {
    match std::env::var("RQ_LOCK_TIMEOUT") {
        Err(_) => Ok(None),
        Ok(text) => parse_duration(&text)
            .map(|secs| Some(std::time::Duration::from_secs_f64(secs)))
            .ok_or_else(|| {
                crate::error::Error::usage(format!(
                    "RQ_LOCK_TIMEOUT: '{text}' is not {DURATION_FORMS}"
                ))
            }),
    }
}

/// A duration as a person reads it: `0.4s`, `3s`, `4m12s`, `2h05m`, `3d4h`.
pub fn duration_text(seconds: f64) -> String {
    let s = if seconds.is_finite() {
        seconds.max(0.0)
    } else {
        0.0
    };
    if s < 10.0 {
        let tenths = (s * 10.0).round() / 10.0;
        if tenths.fract() == 0.0 {
            format!("{tenths:.0}s")
        } else {
            format!("{tenths:.1}s")
        }
    } else {
        let whole = s.round() as u64;
        match whole {
            0..60 => format!("{whole}s"),
            60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
            3600..86400 => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
            _ => format!("{}d{}h", whole / 86400, whole % 86400 / 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_may_be_compound() {
        assert_eq!(parse_duration("90"), Some(90.0));
        assert_eq!(parse_duration("1.5s"), Some(1.5));
        assert_eq!(parse_duration("10ms"), Some(0.01));
        assert_eq!(parse_duration("1h30m"), Some(5400.0));
        assert_eq!(parse_duration("2d 4h"), Some(187_200.0));
        assert_eq!(parse_duration("1m30s"), Some(90.0));
        for bad in [
            "", "-5s", "1h30", "5x", "h", "1.2.3s", "1e400s", "nan", "inf",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timestamps_are_fixed_width_utc_and_round_trip() {
        let ts: Timestamp = "2026-01-02T03:04:05.5+02:00".parse().unwrap();
        let text = format(ts);
        assert_eq!(text, "2026-01-02T01:04:05.500000Z");
        assert_eq!(parse(&text), Some(ts));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(90.0));
        assert_eq!(parse_duration("2h"), Some(7200.0));
        assert_eq!(parse_duration("1.5m"), Some(90.0));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("-3s"), None);
        assert_eq!(hms(3725.5), "01h02m05.50s");
    }

    #[test]
    fn start_times() {
        let now: Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        let utc = |text: &str| parse_start_time(text, now).map(format);
        assert_eq!(
            utc("2026-12-24T08:00Z").unwrap(),
            "2026-12-24T08:00:00.000000Z"
        );
        assert_eq!(
            utc("2026-12-24T08:00+01:00").unwrap(),
            "2026-12-24T07:00:00.000000Z"
        );
        assert_eq!(
            utc("2026-12-24T08:00[Europe/Paris]").unwrap(),
            "2026-12-24T07:00:00.000000Z"
        );
        // Local times: in the future, at most a day ahead.
        for text in ["09:00", "11:30", "10:00:01"] {
            let at = parse_start_time(text, now).unwrap();
            let ahead = seconds_between(now, at);
            assert!(ahead > 0.0 && ahead <= 86_400.0, "{text}: {ahead}");
        }
        assert!(parse_start_time("2026-12-24", now).is_ok());
        assert!(parse_start_time("2026-12-24 08:00", now).is_ok());
        for bad in ["soon", "25:00", "2026-13-01", ""] {
            assert!(parse_start_time(bad, now).is_err(), "{bad}");
        }
    }
}
