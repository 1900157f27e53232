//! What rq never shows: the values of secret-looking variables in listings and on the
//! dashboard, and passwords in connection strings (errors, status, logs, pages). One
//! place, so every display asks the same rule.

/// What rq shows instead of a hidden value.
pub const HIDDEN: &str = "<hidden>";

/// Parts of a variable's name (any case) that make its value secret: `API_TOKEN`,
/// `PGPASS`, `DB_PASSWD`, `AWS_SECRET_ACCESS_KEY`, `GOOGLE_CREDENTIALS`, `AUTH_HEADER`,
/// `SESSION_COOKIE`, `PRIVATE_KEY` ... Hiding a harmless value costs little; showing a
/// secret to everyone who can list the queue costs a lot.
const SECRET_WORDS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASS",
    "KEY",
    "CREDENTIAL",
    "AUTH",
    "COOKIE",
    "SESSION",
    "PRIVATE",
    "SIGNATURE",
];

/// Whether a variable's value is hidden in listings: by its name, or because the value
/// itself carries a password (`postgres://me:pw@host/db`, `host=db password=pw`).
pub fn is_secret(name: &str, value: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|word| upper.contains(word)) || has_password(value)
}

/// Whether text holds a password: a URL's `user:password@`, or a `password=` setting
/// (a URL's query, or a libpq keyword string).
pub fn has_password(text: &str) -> bool {
    redact(text) != text
}

/// `text` with every password taken out: in URLs (`scheme://user:pw@host` becomes
/// `scheme://user:<hidden>@host`), in `password=`/`passwd=`/`pwd=` settings (a URL's
/// query parameters, libpq's `key=value` strings). For every message, log line and page
/// that names a connection string.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for span in password_spans(text) {
        out.push_str(&text[copied..span.start]);
        out.push_str(HIDDEN);
        copied = span.end;
    }
    out.push_str(&text[copied..]);
    out
}

/// `bytes` with every password's bytes overwritten by `*`, in place (the same length):
/// for the process's own arguments, which `ps` shows to everyone on the host.
pub fn mask_in_place(bytes: &mut [u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    for span in password_spans(text) {
        bytes[span].fill(b'*');
    }
}

/// Where the passwords are in `text`, in order, not overlapping, none empty.
fn password_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    // A URL's user information ends at its last '@' (a password may hold an unescaped
    // '/' or '@'; taking more than the password out is the safe mistake).
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
            .map_or(text.len(), |i| start + i);
        let url = &text[start..end];
        if let Some(at) = url.rfind('@')
            && let Some(colon) = url[..at].find(':')
            && colon + 1 < at
        {
            spans.push(start + colon + 1..start + at);
        }
        from = end;
    }
    // `password=...` (and `passwd=`, `pwd=`) up to the next `&`, space or quote.
    let lower = text.to_ascii_lowercase();
    let mut search = 0;
    while let Some((key_start, key_len)) = ["password=", "passwd=", "pwd="]
        .iter()
        .filter_map(|key| lower[search..].find(key).map(|i| (search + i, key.len())))
        .min()
    {
        let value_start = key_start + key_len;
        search = value_start;
        let boundary = key_start == 0
            || matches!(
                text.as_bytes()[key_start - 1],
                b'?' | b'&' | b' ' | b';' | b'\t' | b'\'' | b'"'
            );
        if !boundary {
            continue;
        }
        let value_end = text[value_start..]
            .find(['&', ' ', ';', '\t', '\'', '"', '#'])
            .map_or(text.len(), |i| value_start + i);
        if value_end > value_start {
            spans.push(value_start..value_end);
        }
        search = value_end;
    }
    spans.sort_by_key(|span| span.start);
    let mut merged: Vec<std::ops::Range<usize>> = Vec::new();
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_taken_out_of_urls_and_settings() {
        assert_eq!(
            redact("postgres://me:s3cret@db.example:5432/rq?queue=a"),
            "postgres://me:<hidden>@db.example:5432/rq?queue=a"
        );
        assert_eq!(
            redact("postgres://me@db/rq?password=s3cret&queue=a"),
            "postgres://me@db/rq?password=<hidden>&queue=a"
        );
        assert_eq!(
            redact("bad queue name 'X' in postgresql://u:p%40ss@h/d?sslmode=disable&PassWord=x"),
            "bad queue name 'X' in postgresql://u:<hidden>@h/d?sslmode=disable&PassWord=<hidden>"
        );
        assert_eq!(
            redact("host=db user=me password=pw dbname=rq"),
            "host=db user=me password=<hidden> dbname=rq"
        );
        assert_eq!(redact("postgres://me@db/rq"), "postgres://me@db/rq");
        assert_eq!(
            redact("no url here; oldpassword_hint=x"),
            "no url here; oldpassword_hint=x"
        );
        assert_eq!(
            redact("a://u:p@h b://v:q@i"),
            "a://u:<hidden>@h b://v:<hidden>@i"
        );
        assert_eq!(
            redact("postgres://u:pa/ss@w@h/d"),
            "postgres://u:<hidden>@h/d"
        );
    }

    #[test]
    fn secrets_are_known_by_name_and_by_value() {
        for name in [
            "API_TOKEN",
            "PGPASS",
            "DB_PASS",
            "GOOGLE_CREDENTIALS",
            "X_AUTH",
            "pgpassword",
            "aws_secret_access_key",
            "SSH_PRIVATE",
            "SESSION_ID",
        ] {
            assert!(is_secret(name, "x"), "{name}");
        }
        assert!(is_secret("DATABASE_URL", "postgres://me:pw@db/x"));
        assert!(is_secret("DSN", "host=db password=pw"));
        assert!(!is_secret("DATABASE_URL", "postgres://me@db/x"));
        assert!(!is_secret("HOME", "/home/me"));
    }
}
