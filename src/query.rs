//! The query language: `field=value` terms (`=`, `==`, `!=`, `=~`/`!~` for SQL LIKE),
//! AND-ed, with every value bound as a parameter; anything else is a raw SQL
//! where-clause, which callers run on a read-only connection.

use crate::store::SqlValue;

use crate::error::{Error, Result};
use crate::job;
use crate::store::{Filter, TermOp};

struct Term<'a> {
    field: &'a str,
    op: TermOp,
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
        (TermOp::Eq, v)
    } else if let Some(v) = rest.strip_prefix("=~") {
        (TermOp::Like, v)
    } else if let Some(v) = rest.strip_prefix("!=") {
        (TermOp::Ne, v)
    } else if let Some(v) = rest.strip_prefix("!~") {
        (TermOp::NotLike, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (TermOp::Eq, v)
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

fn bind(field: &str, op: TermOp, value: &str) -> SqlValue {
    if matches!(op, TermOp::Like | TermOp::NotLike) {
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

/// Which jobs `rq Q query ARGS...` asks for.
pub fn parse(args: &[String]) -> Result<Filter> {
    if args.iter().all(|a| a.trim().is_empty()) {
        return Err(Error::usage(
            "query needs a condition, e.g.  rq Q query tag=x  or  rq Q query \"exit_status != 0\"  (use 'list' for every job)",
        ));
    }
    let terms: Option<Vec<Term<'_>>> = args.iter().map(|a| split_term(a)).collect();
    let Some(terms) = terms else {
        return Ok(Filter::Raw(args.join(" ")));
    };
    Ok(Filter::Terms(checked(terms)?))
}

/// Whether a word is a `field=value` term (`=`, `==`, `!=`, `=~`, `!~`).
pub fn is_term(word: &str) -> bool {
    split_term(word).is_some()
}

/// The `field=value` words of a selection (`rq help selections`), each a term; a word
/// that is not one is an error.
pub fn terms(words: &[String]) -> Result<Vec<crate::store::Term>> {
    let mut parsed = Vec::new();
    for word in words {
        parsed.push(split_term(word).ok_or_else(|| {
            Error::usage(format!(
                "'{word}' is not a term (field=value, field!=value, field=~pattern)"
            ))
        })?);
    }
    checked(parsed)
}

/// Terms of known fields, with their values bound as the fields want them.
fn checked(terms: Vec<Term<'_>>) -> Result<Vec<crate::store::Term>> {
    let mut chosen = Vec::new();
    for mut term in terms {
        // The host a job was submitted from is the original's `submitter`.
        if term.field == "submit_host" {
            term.field = "submitter";
        }
        if !job::is_field(term.field) {
            return Err(Error::usage(format!(
                "unknown field '{}' (fields: {})",
                term.field,
                job::FIELDS.join(", ")
            )));
        }
        let null = matches!(
            term.value.to_ascii_lowercase().as_str(),
            "null" | "~" | "nil"
        );
        let op = match (term.op, null) {
            (TermOp::Eq, true) => TermOp::IsNull,
            (TermOp::Ne, true) => TermOp::NotNull,
            (op, _) => op,
        };
        chosen.push(crate::store::Term {
            field: term.field.to_string(),
            op,
            value: bind(term.field, term.op, term.value),
        });
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Term;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    fn terms(filter: Filter) -> Vec<Term> {
        match filter {
            Filter::Terms(terms) => terms,
            other => panic!("not terms: {other:?}"),
        }
    }

    #[test]
    fn simple_terms_are_bound() {
        let t = terms(parse(&args(&["tag=x", "priority!=3", "command=~%foo%"])).unwrap());
        let ops: Vec<TermOp> = t.iter().map(|t| t.op).collect();
        assert_eq!(ops, [TermOp::Eq, TermOp::Ne, TermOp::Like]);
        assert_eq!(t[1].value, SqlValue::Integer(3));
        assert_eq!(t[2].value, SqlValue::Text("%foo%".into()));
    }

    #[test]
    fn injection_stays_a_value() {
        let t = terms(parse(&args(&["tag='x';DROP"])).unwrap());
        assert_eq!(t[0].value, SqlValue::Text("'x';DROP".into()));
    }

    #[test]
    fn other_text_is_raw_sql() {
        let f = parse(&args(&["state='dead' or exit_status != 0"])).unwrap();
        assert_eq!(f, Filter::Raw("state='dead' or exit_status != 0".into()));
        assert!(parse(&args(&[])).is_err());
        assert!(parse(&args(&["colour=red"])).is_err());
        assert_eq!(
            terms(parse(&args(&["exit_status=null"])).unwrap())[0].op,
            TermOp::IsNull
        );
    }
}
