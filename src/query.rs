//! The query language: `field=value` terms (`=`, `==`, `!=`, `=~`/`!~` for SQL LIKE),
//! AND-ed, with every value bound as a parameter; anything else is a raw SQL
//! where-clause, which callers run on a read-only connection.

use rusqlite::types::Value as SqlValue;

use crate::error::{Error, Result};
use crate::job;

/// A where-clause and its bound parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub sql: String,
    pub params: Vec<SqlValue>,
    /// True when the clause is the user's own SQL.
    pub raw: bool,
}

impl Clause {
    /// Only the jobs of this clause that `user` submitted (`--mine`).
    pub fn of_user(self, user: &str) -> Clause {
        let mut params = self.params;
        params.push(SqlValue::Text(user.to_string()));
        Clause {
            sql: format!("({}) AND user = ?", self.sql),
            params,
            raw: self.raw,
        }
    }

    /// Jobs `first..=last`.
    pub fn jid_range(first: i64, last: i64) -> Clause {
        Clause {
            sql: "jid >= ? AND jid <= ?".into(),
            params: vec![SqlValue::Integer(first), SqlValue::Integer(last)],
            raw: false,
        }
    }
}

struct Term<'a> {
    field: &'a str,
    op: &'static str,
    value: &'a str,
}

fn split_term(arg: &str) -> Option<Term<'_>> {
    let at = arg.find(['=', '!', '~'])?;
    let (field, rest) = arg.split_at(at);
    let ident = !field.is_empty()
        && field
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ident {
        return None;
    }
    let (op, value) = if let Some(v) = rest.strip_prefix("==") {
        ("=", v)
    } else if let Some(v) = rest.strip_prefix("=~") {
        ("LIKE", v)
    } else if let Some(v) = rest.strip_prefix("!=") {
        ("!=", v)
    } else if let Some(v) = rest.strip_prefix("!~") {
        ("NOT LIKE", v)
    } else if let Some(v) = rest.strip_prefix('=') {
        ("=", v)
    } else {
        return None;
    };
    let value = unquote(value)?;
    Some(Term { field, op, value })
}

/// A value is simple when it has no white space, or is wholly quoted.
fn unquote(value: &str) -> Option<&str> {
    for quote in ['\'', '"'] {
        if value.len() >= 2 && value.starts_with(quote) && value.ends_with(quote) {
            let inner = &value[1..value.len() - 1];
            return (!inner.contains(quote)).then_some(inner);
        }
    }
    (!value.contains(char::is_whitespace)).then_some(value)
}

fn bind(field: &str, op: &str, value: &str) -> SqlValue {
    if op.contains("LIKE") {
        return SqlValue::Text(value.to_string());
    }
    if job::BOOLEAN_FIELDS.contains(&field)
        && let Ok(b) = crate::input::parse_bool(value)
    {
        return SqlValue::Integer(b as i64);
    }
    if let Ok(i) = value.parse::<i64>() {
        return SqlValue::Integer(i);
    }
    if let Ok(r) = value.parse::<f64>()
        && r.is_finite()
    {
        return SqlValue::Real(r);
    }
    SqlValue::Text(value.to_string())
}

/// Build the where-clause for `rq Q query ARGS...`.
pub fn parse(args: &[String]) -> Result<Clause> {
    if args.iter().all(|a| a.trim().is_empty()) {
        return Err(Error::usage(
            "query needs a condition, e.g.  rq Q query tag=x  or  rq Q query \"exit_status != 0\"  (use 'list' for every job)",
        ));
    }
    let terms: Option<Vec<Term<'_>>> = args.iter().map(|a| split_term(a)).collect();
    let Some(terms) = terms else {
        return Ok(Clause {
            sql: args.join(" "),
            params: Vec::new(),
            raw: true,
        });
    };
    let mut sql = Vec::new();
    let mut params = Vec::new();
    for mut term in terms {
        // The host a job was submitted from is the original's `submitter`.
        if term.field == "submit_host" {
            term.field = "submitter";
        }
        if !job::is_field(term.field) {
            return Err(Error::usage(format!(
                "query: unknown field '{}' (fields: {})",
                term.field,
                job::FIELDS.join(", ")
            )));
        }
        let null = matches!(
            term.value.to_ascii_lowercase().as_str(),
            "null" | "~" | "nil"
        );
        match (term.op, null) {
            ("=", true) => sql.push(format!("({} IS NULL)", term.field)),
            ("!=", true) => sql.push(format!("({} IS NOT NULL)", term.field)),
            _ => {
                sql.push(format!("({} {} ?)", term.field, term.op));
                params.push(bind(term.field, term.op, term.value));
            }
        }
    }
    Ok(Clause {
        sql: sql.join(" AND "),
        params,
        raw: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn simple_terms_are_bound() {
        let c = parse(&args(&["tag=x", "priority!=3", "command=~%foo%"])).unwrap();
        assert_eq!(c.sql, "(tag = ?) AND (priority != ?) AND (command LIKE ?)");
        assert_eq!(c.params[1], SqlValue::Integer(3));
        assert!(!c.raw);
    }

    #[test]
    fn injection_stays_a_value() {
        let c = parse(&args(&["tag='x';DROP"])).unwrap();
        assert!(!c.raw);
        assert_eq!(c.params, vec![SqlValue::Text("'x';DROP".into())]);
    }

    #[test]
    fn other_text_is_raw_sql() {
        let c = parse(&args(&["state='dead' or exit_status != 0"])).unwrap();
        assert!(c.raw);
        assert!(parse(&args(&[])).is_err());
        assert!(parse(&args(&["colour=red"])).is_err());
        assert_eq!(
            parse(&args(&["exit_status=null"])).unwrap().sql,
            "(exit_status IS NULL)"
        );
    }
}
