//! `rq Q cron start|add|tab|delete|shutdown|stop`: a crontab entry, tagged with a marker
//! derived from this rq and this queue, that runs `rq Q start` every 15 minutes (and, if
//! asked, `rq Q rotate` daily). Installing is idempotent; delete removes exactly its own
//! lines and leaves every other line of the crontab alone.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, IoContext, Result};

/// The marker that ends each of our lines: stable for the same rq binary and queue.
pub fn marker(rq: &Path, queue: &Path) -> String {
    // FNV-1a: a fixed, dependency-free hash (the marker only has to be stable).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("{} {}", rq.display(), queue.display()).bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("###rq-cron:{hash:016x}")
}

/// The lines for this queue: `start` with the given feeder options, and optionally a
/// daily rotate. Refuses words that cannot be put in a crontab line.
pub fn lines(rq: &Path, queue: &Path, options: &[String], rotate: bool) -> Result<Vec<String>> {
    let rq_word = cron_word(&rq.to_string_lossy())?;
    let queue_word = cron_word(&queue.to_string_lossy())?;
    let tag = marker(rq, queue);
    let mut start = format!("*/15 * * * * {rq_word} {queue_word} start");
    for o in options {
        start.push(' ');
        start.push_str(&cron_word(o)?);
    }
    let mut out = vec![format!("{start} {tag}")];
    if rotate {
        out.push(format!("0 0 * * * {rq_word} {queue_word} rotate {tag}"));
    }
    Ok(out)
}

/// A word of a crontab command: quoted for the shell cron runs, and with `%` escaped,
/// because cron turns an unescaped `%` into a newline (the rest becomes the command's
/// stdin). A control character, above all a newline, would end the crontab line and
/// start another: refused.
fn cron_word(word: &str) -> Result<String> {
    if word.chars().any(char::is_control) {
        return Err(Error::usage(format!(
            "cannot put {word:?} into a crontab line: it holds a control character"
        )));
    }
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=,+-@".contains(c));
    let quoted = if plain {
        word.to_string()
    } else {
        shell_words::quote(word).into_owned()
    };
    Ok(quoted.replace('%', "\\%"))
}

/// The current crontab (empty when the user has none).
fn read_crontab() -> Result<Vec<String>> {
    let out = Command::new("crontab")
        .arg("-l")
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Conflict(format!("cannot run crontab ({e}); is cron installed?")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("no crontab") {
        return Ok(Vec::new());
    }
    Err(Error::Conflict(format!(
        "crontab -l failed: {}",
        err.trim()
    )))
}

fn write_crontab(lines: &[String]) -> Result<()> {
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Conflict(format!("cannot run crontab ({e}); is cron installed?")))?;
    let mut text = lines.join("\n");
    text.push('\n');
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .context(|| "cannot write to crontab".into())?;
    let out = child
        .wait_with_output()
        .context(|| "crontab failed".into())?;
    if !out.status.success() {
        return Err(Error::Conflict(format!(
            "crontab refused the new table: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn is_ours(line: &str, tag: &str) -> bool {
    !line.trim_start().starts_with('#') && line.trim_end().ends_with(tag)
}

/// Install our lines (replacing older versions of them). Returns the lines now installed
/// and whether the crontab changed.
pub fn add(
    rq: &Path,
    queue: &Path,
    options: &[String],
    rotate: bool,
) -> Result<(Vec<String>, bool)> {
    let tag = marker(rq, queue);
    let wanted = lines(rq, queue, options, rotate)?;
    let current = read_crontab()?;
    let ours: Vec<&String> = current.iter().filter(|l| is_ours(l, &tag)).collect();
    if ours.len() == wanted.len() && ours.iter().zip(&wanted).all(|(a, b)| *a == b) {
        return Ok((wanted, false));
    }
    let mut table: Vec<String> = current.into_iter().filter(|l| !is_ours(l, &tag)).collect();
    table.extend(wanted.iter().cloned());
    write_crontab(&table)?;
    Ok((wanted, true))
}

/// Remove exactly our lines; returns them.
pub fn delete(rq: &Path, queue: &Path) -> Result<Vec<String>> {
    let tag = marker(rq, queue);
    let current = read_crontab()?;
    let (ours, rest): (Vec<String>, Vec<String>) =
        current.into_iter().partition(|l| is_ours(l, &tag));
    if !ours.is_empty() {
        write_crontab(&rest)?;
    }
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_tagged_and_quoted() {
        let rq = Path::new("/usr/bin/rq");
        let q = Path::new("/nfs/my q");
        let l = lines(rq, q, &["--max_feed=4".into()], true).unwrap();
        assert_eq!(l.len(), 2);
        assert!(
            l[0].starts_with("*/15 * * * * /usr/bin/rq '/nfs/my q' start --max_feed=4 ###rq-cron:")
        );
        assert!(l[1].starts_with("0 0 * * * /usr/bin/rq '/nfs/my q' rotate ###rq-cron:"));
        assert_eq!(marker(rq, q), marker(rq, q));
        assert_ne!(marker(rq, q), marker(rq, Path::new("/other")));
        assert!(is_ours(&l[0], &marker(rq, q)));
        assert!(!is_ours(&format!("# {}", l[0]), &marker(rq, q)));
    }

    #[test]
    fn percent_is_escaped_and_control_characters_refused() {
        let rq = Path::new("/usr/bin/rq");
        let l = lines(rq, Path::new("/nfs/50%q"), &["--log=/a%b".into()], false).unwrap();
        assert!(
            l[0].contains(" '/nfs/50\\%q' start '--log=/a\\%b' "),
            "{}",
            l[0]
        );
        // What cron hands the shell (it turns \% into %) is the original words.
        let command = l[0]
            .trim_start_matches("*/15 * * * * ")
            .split(" ###")
            .next()
            .unwrap()
            .replace("\\%", "%");
        assert_eq!(
            shell_words::split(&command).unwrap(),
            ["/usr/bin/rq", "/nfs/50%q", "start", "--log=/a%b"]
        );
        for bad in ["/nfs/q\n* * * * * evil", "/nfs/q\r", "/nfs/\u{7f}q"] {
            assert!(lines(rq, Path::new(bad), &[], false).is_err(), "{bad:?}");
        }
        assert!(lines(rq, Path::new("/nfs/q"), &["--log=/x\ny".into()], true).is_err());
    }
}
