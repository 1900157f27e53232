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
    let mut rest = text;
    // A URL's user information ends at its last '@' (a password may hold an unescaped
    // '/' or '@'; taking more than the password out is the safe mistake).
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(after.len());
        let url = &after[..end];
        match url
            .rfind('@')
            .and_then(|at| Some((at, url[..at].split_once(':')?)))
        {
            Some((at, (user, _password))) => {
                out.push_str(user);
                out.push(':');
                out.push_str(HIDDEN);
                out.push_str(&url[at..]);
            }
            None => out.push_str(url),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    redact_settings(&out)
}

/// `password=...` (and `passwd=`, `pwd=`) up to the next `&`, space or quote.
fn redact_settings(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = ["password=", "passwd=", "pwd="]
        .iter()
        .filter_map(|key| lower[search..].find(key).map(|i| (search + i, key.len())))
        .min()
    {
        let (start, len) = found;
        let boundary = start == 0
            || matches!(
                text.as_bytes()[start - 1],
                b'?' | b'&' | b' ' | b';' | b'\t' | b'\'' | b'"'
            );
        let value_start = start + len;
        if !boundary {
            search = value_start;
            continue;
        }
        let value_end = text[value_start..]
            .find(['&', ' ', ';', '\t', '\'', '"', '#'])
            .map_or(text.len(), |i| value_start + i);
        out.push_str(&text[copied..value_start]);
        if value_end > value_start {
            out.push_str(HIDDEN);
        }
        copied = value_end;
        search = value_end;
    }
    out.push_str(&text[copied..]);
    out
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
