//! Repair of a directory queue's SQLite file, below SQLite's SQL where it must be: a
//! consistent copy through the online backup API, the integrity check, removal of objects
//! planted in the schema, and a salvage of every row that can still be read (by SQL in
//! halving ranges of jids, then from the pages themselves: `pages`) into a rebuilt
//! database written back over the damaged one. `admin` runs `recover`, `snapshot` and
//! `backup` with these.

use std::path::Path;

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

use super::{SqlValue, Tx};
use crate::error::{Error, Result};

/// Copy a directory queue's database (`tx` a read transaction of it) into `dest_db` in
/// one step of the backup API: a consistent copy; writers wait only while it is made.
pub fn copy_database(tx: &Tx<'_>, dest_db: &Path) -> Result<()> {
    let conn = tx.sqlite().ok_or_else(|| {
        Error::usage(
            "this mode works on a queue directory's database file; back up a PostgreSQL \
             queue with pg_dump --schema=rq_NAME",
        )
    })?;
    let mut dest = Connection::open(dest_db)?;
    let backup = Backup::new(conn, &mut dest)?;
    match backup.step(-1)? {
        rusqlite::backup::StepResult::Done => Ok(()),
        other => Err(Error::Conflict(format!(
            "the database copy did not complete ({other:?}); try again"
        ))),
    }
}

/// Make a copy a rollback-journal database like the queue's own.
pub fn keep_rollback_journal(db: &Path) -> Result<()> {
    let conn = Connection::open(db)?;
    conn.query_row("PRAGMA journal_mode = PERSIST", [], |r| {
        r.get::<_, String>(0)
    })?;
    Ok(())
}

/// Make a new queue database at `fresh` holding what `salvage` found, its jids continuing
/// above `top` (jids are never reused).
pub fn rebuild(fresh: &Path, salvage: &Salvage, top: i64) -> Result<()> {
    super::create_database(fresh)?;
    let conn = Connection::open(fresh)?;
    let fields = crate::job::FIELDS.join(", ");
    let placeholders = vec!["?"; crate::job::FIELDS.len()].join(", ");
    let tx = conn.unchecked_transaction()?;
    {
        let mut insert = tx.prepare(&format!(
            "INSERT OR REPLACE INTO jobs ({fields}) VALUES ({placeholders})"
        ))?;
        for row in &salvage.rows {
            let values: Vec<&dyn super::ToSql> = row.iter().map(|v| v as _).collect();
            insert.execute(super::sqlite::bind(&values))?;
        }
        for (k, v) in &salvage.attributes {
            tx.execute(
                "INSERT OR REPLACE INTO attributes (key, value) VALUES (?, ?)",
                [k, v],
            )?;
        }
    }
    tx.execute(
        "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'jobs'",
        [top],
    )?;
    tx.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'jobs', ? WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'jobs')",
        [top],
    )?;
    tx.commit()?;
    Ok(())
}

/// Write the rebuilt database `fresh` over the damaged `db`, page by page, under its lock
/// (same inode: other hosts' connections stay valid). An error when SQLite cannot even
/// open `db` as a database: the caller then puts `fresh` in its place instead.
pub fn write_over(fresh: &Path, db: &Path) -> Result<()> {
    let src = Connection::open(fresh)?;
    let mut live = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    live.busy_timeout(std::time::Duration::from_secs(600))?;
    let backup = Backup::new(&src, &mut live)?;
    loop {
        match backup.step(-1)? {
            rusqlite::backup::StepResult::Done => return Ok(()),
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// Remove from a sound queue database what rq's schema does not make (a planted trigger,
/// view, index or table: writers refuse such a queue), in one write transaction, without
/// touching rq's own tables. Returns what was removed ("trigger evil").
pub fn drop_foreign_objects(db: &Path) -> Result<Vec<String>> {
    let mut conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(std::time::Duration::from_secs(600))?;
    let foreign = super::sqlite::foreign_objects(&conn)?;
    if foreign.is_empty() {
        return Ok(Vec::new());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Triggers and views first: a table's go with it, and dropping a table must not
    // fire anything planted.
    let order = |kind: &str| match kind {
        "trigger" => 0,
        "view" => 1,
        "index" => 2,
        _ => 3,
    };
    let mut sorted = foreign.clone();
    sorted.sort_by_key(|(kind, _)| order(kind));
    let mut dropped = Vec::new();
    for (kind, name) in &sorted {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let statement = match kind.as_str() {
            "trigger" => format!("DROP TRIGGER IF EXISTS {quoted}"),
            "view" => format!("DROP VIEW IF EXISTS {quoted}"),
            "index" => format!("DROP INDEX IF EXISTS {quoted}"),
            _ => format!("DROP TABLE IF EXISTS {quoted}"),
        };
        tx.execute_batch(&statement)?;
        dropped.push(format!("{kind} {name}"));
    }
    tx.commit()?;
    Ok(dropped)
}

/// Does this (sound) SQLite file hold an rq queue's schema?
pub fn rq_schema(db: &Path) -> std::result::Result<(), String> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let _ = conn.busy_timeout(std::time::Duration::from_secs(600));
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('jobs', 'attributes', 'meta')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    if app_id == super::APPLICATION_ID && tables == 3 {
        Ok(())
    } else if tables == 0 && std::fs::metadata(db).map(|m| m.len()).unwrap_or(0) == 0 {
        Err("the database file is empty".into())
    } else {
        Err("the database file holds no rq queue".into())
    }
}

pub fn integrity(db: &Path) -> std::result::Result<String, String> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| e.to_string())?;
    let _ = conn.busy_timeout(std::time::Duration::from_secs(600));
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| e.to_string())?;
    let lines: std::result::Result<Vec<String>, _> = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| e.to_string())?
        .collect();
    lines.map(|l| l.join("\n")).map_err(|e| e.to_string())
}

pub struct Salvage {
    pub rows: Vec<Vec<SqlValue>>,
    pub attributes: Vec<(String, String)>,
    pub highest_jid: i64,
}

/// Read every row that can be read: ranges of jids, split in halves around errors.
pub fn salvage(db: &Path) -> Salvage {
    let mut out = Salvage {
        rows: Vec::new(),
        attributes: Vec::new(),
        highest_jid: 0,
    };
    let Ok(conn) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return out;
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(600));
    // Which columns the damaged schema has (it may be an older version).
    let present: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('jobs')")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_default();
    let select: Vec<String> = crate::job::FIELDS
        .iter()
        .map(|f| {
            if present.iter().any(|p| p == f) {
                f.to_string()
            } else {
                format!("NULL AS {f}")
            }
        })
        .collect();
    let sql = format!(
        "SELECT {} FROM jobs WHERE jid BETWEEN ? AND ? ORDER BY jid",
        select.join(", ")
    );
    let top: i64 = conn
        .query_row(
            "SELECT max(seq) FROM sqlite_sequence WHERE name = 'jobs'",
            [],
            |r| r.get::<_, Option<i64>>(0),
        )
        .ok()
        .flatten()
        .unwrap_or(0)
        .max(
            conn.query_row("SELECT max(jid) FROM jobs", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .ok()
            .flatten()
            .unwrap_or(0),
        );
    out.highest_jid = top;
    let mut stack = vec![(1i64, top.max(1))];
    while let Some((lo, hi)) = stack.pop() {
        let read = (|| -> rusqlite::Result<Vec<Vec<SqlValue>>> {
            let mut stmt = conn.prepare_cached(&sql)?;
            let n = crate::job::FIELDS.len();
            stmt.query_map([lo, hi], |r| {
                (0..n)
                    .map(|i| Ok(super::sqlite::value_of(r.get_ref(i)?).to_owned_value()))
                    .collect()
            })?
            .collect()
        })();
        match read {
            Ok(rows) => out.rows.extend(rows),
            Err(_) if hi > lo => {
                let mid = lo + (hi - lo) / 2;
                stack.push((mid + 1, hi));
                stack.push((lo, mid));
            }
            // Left to the page pass (`add_rows_from_pages`).
            Err(_) => {}
        }
    }
    // Ranges read in halves may repeat jids only if a full range read succeeded after a
    // split, which cannot happen; still, keep one row per jid.
    out.rows.sort_by_key(|r| match r.first() {
        Some(SqlValue::Integer(j)) => *j,
        _ => 0,
    });
    out.rows.dedup_by_key(|r| match r.first() {
        Some(SqlValue::Integer(j)) => *j,
        _ => 0,
    });
    out.attributes = conn
        .prepare("SELECT key, value FROM attributes")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                ))
            })?
            .collect()
        })
        .unwrap_or_default();
    add_rows_from_pages(db, &mut out);
    out
}

/// What SQLite could not read, read from the pages themselves (`salvage` module): rows of
/// jids the SQL pass missed, and the settings if that pass lost them.
fn add_rows_from_pages(db: &Path, out: &mut Salvage) {
    let Ok(bytes) = std::fs::read(db) else {
        return;
    };
    let n = crate::job::FIELDS.len();
    let state_at = crate::job::FIELDS.iter().position(|f| *f == "state");
    let is_job = |cols: &[SqlValue]| {
        cols.len() >= 25
            && cols.len() <= n
            && state_at.is_some_and(|i| {
                matches!(&cols[i], SqlValue::Text(s)
                    if ["pending", "holding", "running", "finished", "dead"].contains(&s.as_str()))
            })
    };
    let known: std::collections::HashSet<i64> = out
        .rows
        .iter()
        .filter_map(|r| match r.first() {
            Some(SqlValue::Integer(j)) => Some(*j),
            _ => None,
        })
        .collect();
    for (jid, mut cols) in super::pages::table_rows(&bytes, "jobs", is_job) {
        if known.contains(&jid) || !is_job(&cols) {
            continue;
        }
        // The INTEGER PRIMARY KEY is stored as the rowid; columns an older schema lacks
        // take their defaults on insert.
        cols[0] = SqlValue::Integer(jid);
        cols.resize(n, SqlValue::Null);
        out.highest_jid = out.highest_jid.max(jid);
        out.rows.push(cols);
    }
    out.rows.sort_by_key(|r| match r.first() {
        Some(SqlValue::Integer(j)) => *j,
        _ => 0,
    });
    // The highest jid ever given, from sqlite_sequence, shows the jids lost at the end.
    for cols in super::pages::table_rows(&bytes, "sqlite_sequence", |_| false).into_values() {
        if let (Some(SqlValue::Text(name)), Some(SqlValue::Integer(seq))) =
            (cols.first(), cols.get(1))
            && name == "jobs"
        {
            out.highest_jid = out.highest_jid.max(*seq);
        }
    }
    if out.attributes.is_empty() {
        let pairs = super::pages::table_rows(&bytes, "attributes", |_| false);
        out.attributes = pairs
            .into_values()
            .filter_map(|cols| match (cols.first(), cols.get(1)) {
                (Some(SqlValue::Text(k)), Some(SqlValue::Text(v))) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect();
    }
}
