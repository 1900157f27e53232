//! Which jobs a mode reads or changes (`Filter`): built from selections (`3 7 running
//! array:5`), the query language (`tag=x`) or a user's own where-clause, and written out
//! by each store in its own SQL, into the statements of the `scan` operations
//! (`Tx::scan`). A user's where-clause is run as written, in the store's dialect.

use crate::store::SqlValue;

use super::Dialect;

/// Which jobs: a store-neutral description, rendered by `render`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every job.
    All,
    /// Jobs in any of these lists (an empty list adds nothing; all empty: no job).
    AnyOf {
        states: Vec<String>,
        jids: Vec<i64>,
        arrays: Vec<i64>,
        tags: Vec<String>,
    },
    /// Jobs that meet every term.
    Terms(Vec<Term>),
    /// The user's own where-clause, run as written in the store's dialect.
    Raw(String),
    /// Jobs `first..=last`.
    JidRange(i64, i64),
    /// Jobs after (`JidAbove`) or before (`JidBelow`) a jid: keyset pages.
    JidAbove(i64),
    JidBelow(i64),
    /// Jobs in (true) or not in (false) a state.
    State(&'static str, bool),
    /// Jobs every filter chooses.
    And(Vec<Filter>),
}

/// `field op value`: the field is one of the job's (checked by whoever built it).
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub field: String,
    pub op: TermOp,
    /// Bound as a parameter (unused for the null tests).
    pub value: SqlValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermOp {
    Eq,
    Ne,
    /// SQL LIKE, ignoring ASCII case on both stores.
    Like,
    NotLike,
    /// The value is part of the field's text.
    Contains,
    /// Equal, compared row by row rather than through an index that starts with the
    /// field (SQLite's `+field`: a value most jobs have is found sooner in jid order).
    EqScanning,
    IsNull,
    NotNull,
}

/// Columns holding integers (the others compared with lists hold text).
const INTEGER_COLUMNS: &[&str] = &["jid", "array_id"];

impl Filter {
    /// Jobs `jids`.
    pub fn jids(jids: &[i64]) -> Filter {
        Filter::AnyOf {
            states: Vec::new(),
            jids: jids.to_vec(),
            arrays: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// Only those of this filter's jobs that `user` submitted (`--mine`).
    pub fn of_user(self, user: &str) -> Filter {
        self.and(Filter::Terms(vec![Term {
            field: "user".into(),
            op: TermOp::Eq,
            value: SqlValue::Text(user.to_string()),
        }]))
    }

    /// Jobs both filters choose.
    pub fn and(self, other: Filter) -> Filter {
        match self {
            Filter::And(mut all) => {
                all.push(other);
                Filter::And(all)
            }
            first => Filter::And(vec![first, other]),
        }
    }

    /// The user's own where-clause, if this filter is (or holds) one.
    pub fn raw(&self) -> Option<&str> {
        match self {
            Filter::Raw(sql) => Some(sql),
            Filter::And(all) => all.iter().find_map(Filter::raw),
            _ => None,
        }
    }
}

/// A placeholder for parameter `n` (from 1).
fn placeholder(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => format!("?{n}"),
        Dialect::Postgres => format!("${n}"),
    }
}

/// A column's name in the store's SQL (`user` is a reserved word in PostgreSQL).
fn column(dialect: Dialect, name: &str) -> String {
    match (dialect, name) {
        (Dialect::Postgres, "user") => "\"user\"".into(),
        _ => name.into(),
    }
}

/// `column IN` a list bound as one JSON array. On PostgreSQL `= ANY` an array made of it
/// first: the planner then looks the few listed jobs up by index, where it takes `IN` a
/// set-returning function for a hundred rows and may scan and hash the whole table.
fn in_list(dialect: Dialect, name: &str, param: &str) -> String {
    let column = column(dialect, name);
    match dialect {
        Dialect::Sqlite => format!("{column} IN (SELECT value FROM json_each({param}))"),
        Dialect::Postgres if INTEGER_COLUMNS.contains(&name) => format!(
            "{column} = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST({param} AS jsonb)) AS bigint)))"
        ),
        Dialect::Postgres => format!(
            "{column} = ANY (ARRAY(SELECT jsonb_array_elements_text(CAST({param} AS jsonb))))"
        ),
    }
}

/// The filter as a where-clause of the store's SQL; its values are appended to `params`,
/// numbered on from those already there.
pub fn render(dialect: Dialect, filter: &Filter, params: &mut Vec<SqlValue>) -> String {
    let bind = |params: &mut Vec<SqlValue>, value: SqlValue| {
        params.push(value);
        placeholder(dialect, params.len())
    };
    match filter {
        Filter::All => "TRUE".into(),
        Filter::AnyOf {
            states,
            jids,
            arrays,
            tags,
        } => {
            let mut branches = Vec::new();
            let json = |list: String| SqlValue::Text(list);
            if !states.is_empty() {
                let p = bind(
                    params,
                    json(serde_json::to_string(states).unwrap_or_default()),
                );
                branches.push(in_list(dialect, "state", &p));
            }
            if !jids.is_empty() {
                let p = bind(
                    params,
                    json(serde_json::to_string(jids).unwrap_or_default()),
                );
                branches.push(in_list(dialect, "jid", &p));
            }
            if !arrays.is_empty() {
                let p = bind(
                    params,
                    json(serde_json::to_string(arrays).unwrap_or_default()),
                );
                branches.push(in_list(dialect, "array_id", &p));
            }
            if !tags.is_empty() {
                let p = bind(
                    params,
                    json(serde_json::to_string(tags).unwrap_or_default()),
                );
                branches.push(in_list(dialect, "tag", &p));
            }
            // Only the lists that name something: `state IN (..) OR jid IN (..)` kept
            // PostgreSQL from the primary key, so `resubmit 1` read every job.
            match branches.len() {
                0 => "FALSE".into(),
                _ => format!("({})", branches.join(" OR ")),
            }
        }
        Filter::Terms(terms) => {
            let parts: Vec<String> = terms
                .iter()
                .map(|t| {
                    let c = column(dialect, &t.field);
                    let like = match dialect {
                        Dialect::Sqlite => "LIKE",
                        Dialect::Postgres => "ILIKE",
                    };
                    match t.op {
                        TermOp::IsNull => format!("({c} IS NULL)"),
                        TermOp::NotNull => format!("({c} IS NOT NULL)"),
                        TermOp::Eq => format!("({c} = {})", bind(params, t.value.clone())),
                        TermOp::Ne => format!("({c} != {})", bind(params, t.value.clone())),
                        TermOp::Like => format!("({c} {like} {})", bind(params, t.value.clone())),
                        TermOp::NotLike => {
                            format!("({c} NOT {like} {})", bind(params, t.value.clone()))
                        }
                        TermOp::Contains => {
                            let p = bind(params, t.value.clone());
                            match dialect {
                                Dialect::Sqlite => format!("(instr({c}, {p}) > 0)"),
                                Dialect::Postgres => format!("(strpos({c}, {p}) > 0)"),
                            }
                        }
                        TermOp::EqScanning => {
                            let p = bind(params, t.value.clone());
                            match dialect {
                                Dialect::Sqlite => format!("(+{c} = {p})"),
                                Dialect::Postgres => format!("({c} = {p})"),
                            }
                        }
                    }
                })
                .collect();
            match parts.len() {
                0 => "TRUE".into(),
                _ => parts.join(" AND "),
            }
        }
        Filter::Raw(sql) => format!("({sql}\n)"),
        Filter::JidRange(first, last) => {
            let a = bind(params, SqlValue::Integer(*first));
            let b = bind(params, SqlValue::Integer(*last));
            format!("(jid >= {a} AND jid <= {b})")
        }
        Filter::JidAbove(jid) => format!("(jid > {})", bind(params, SqlValue::Integer(*jid))),
        Filter::JidBelow(jid) => format!("(jid < {})", bind(params, SqlValue::Integer(*jid))),
        Filter::State(state, true) => format!("(state = '{state}')"),
        Filter::State(state, false) => format!("(state != '{state}')"),
        Filter::And(all) => {
            let parts: Vec<String> = all.iter().map(|f| render(dialect, f, params)).collect();
            format!("({})", parts.join(" AND "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_store_gets_its_own_sql_and_values_are_bound() {
        let f = Filter::Terms(vec![
            Term {
                field: "user".into(),
                op: TermOp::Eq,
                value: SqlValue::Text("x'; DROP".into()),
            },
            Term {
                field: "command".into(),
                op: TermOp::Like,
                value: SqlValue::Text("%a%".into()),
            },
        ])
        .and(Filter::jids(&[3, 4]));
        let mut params = vec![SqlValue::Integer(0)];
        let sqlite = render(Dialect::Sqlite, &f, &mut params);
        assert_eq!(
            sqlite,
            "((user = ?2) AND (command LIKE ?3) AND (jid IN (SELECT value FROM json_each(?4))))"
        );
        assert_eq!(params[1], SqlValue::Text("x'; DROP".into()));
        let mut params = vec![SqlValue::Integer(0)];
        let pg = render(Dialect::Postgres, &f, &mut params);
        assert_eq!(
            pg,
            "((\"user\" = $2) AND (command ILIKE $3) AND (jid = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST($4 AS jsonb)) AS bigint)))))"
        );
        assert_eq!(params.len(), 4);
    }

    #[test]
    fn a_selection_names_only_its_lists_and_nothing_chooses_no_job() {
        let mut params = Vec::new();
        let none = Filter::AnyOf {
            states: vec![],
            jids: vec![],
            arrays: vec![],
            tags: vec![],
        };
        assert_eq!(render(Dialect::Sqlite, &none, &mut params), "FALSE");
        assert!(params.is_empty());
        let states = Filter::AnyOf {
            states: vec!["running".into()],
            jids: vec![],
            arrays: vec![],
            tags: vec!["x".into()],
        };
        assert_eq!(
            render(Dialect::Postgres, &states, &mut params),
            "(state = ANY (ARRAY(SELECT jsonb_array_elements_text(CAST($1 AS jsonb)))) \
             OR tag = ANY (ARRAY(SELECT jsonb_array_elements_text(CAST($2 AS jsonb)))))"
        );
        assert_eq!(
            params,
            vec![
                SqlValue::Text("[\"running\"]".into()),
                SqlValue::Text("[\"x\"]".into())
            ]
        );
    }

    #[test]
    fn a_raw_clause_is_kept_as_written() {
        let f = Filter::Raw("exit_status IS NOT 0 -- a comment".into()).of_user("me");
        let mut params = Vec::new();
        assert_eq!(
            render(Dialect::Sqlite, &f, &mut params),
            "((exit_status IS NOT 0 -- a comment\n) AND (user = ?1))"
        );
        assert_eq!(f.raw(), Some("exit_status IS NOT 0 -- a comment"));
    }
}
