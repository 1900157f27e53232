//! Administration of a whole queue: snapshot, backup, rotate, recover. Databases are copied
//! only through SQLite's online backup API (never as files while in use); job files are
//! copied outside any transaction.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::store::SqlValue;
use serde_json::{Value, json};

use crate::error::{Error, IoContext, Result};
use crate::queue::{self, JOB_DIRS, Queue};
use crate::store;
use crate::store::ops::copies;

/// A timestamp for file names: 20261127T211503Z.
fn stamp() -> String {
    crate::time::now_ts().strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// `<parent of Q>/<name of Q>.<suffix>`: archives and backups live next to the queue.
pub fn beside(queue: &Path, suffix: &str) -> PathBuf {
    let name = queue
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "q".into());
    queue.with_file_name(format!("{name}.{suffix}"))
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        return Err(Error::Conflict(format!(
            "{} already exists; choose another destination",
            path.display()
        )));
    }
    Ok(())
}

/// Copy the queue's database into `dest_db` (a directory queue's only; see
/// `store::repair::copy_database`).
fn copy_database(q: &mut Queue, dest_db: &Path) -> Result<()> {
    q.store()
        .read(|tx| store::repair::copy_database(tx, dest_db))?;
    store::repair::keep_rollback_journal(dest_db)
}

/// Where a PostgreSQL queue's copy goes by default: `rq_NAME.SUFFIX` in the current
/// directory.
fn postgres_copy_path(q: &Queue, suffix: &str) -> Option<PathBuf> {
    let location = q.postgres_location()?;
    Some(queue::resolve(Path::new(&format!(
        "{}.{suffix}",
        location.schema()
    ))))
}

/// `snapshot [DEST]`: a consistent copy of the database, usable by every read-only mode.
/// A PostgreSQL queue's is a new queue directory holding its rows.
pub fn snapshot(q: &mut Queue, dest: Option<&Path>) -> Result<Value> {
    if let Some(default) = postgres_copy_path(q, "snapshot") {
        let dest = dest.map(Path::to_path_buf).unwrap_or(default);
        return crate::export::copy_into_directory(q, &dest, false, true);
    }
    let dest = dest
        .map(queue::resolve)
        .unwrap_or_else(|| beside(q.dir(), "snapshot"));
    refuse_existing(&dest)?;
    std::fs::create_dir_all(&dest).context(|| format!("cannot create {}", dest.display()))?;
    let result = (|| {
        copy_database(q, &dest.join("db"))?;
        std::fs::write(dest.join("db.schema"), store::schema_file_text())
            .context(|| format!("cannot write {}", dest.join("db.schema").display()))?;
        Ok(json!({"q": dest, "db": dest.join("db"), "schema": dest.join("db.schema")}))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dest);
    }
    result
}

/// `backup [DEST]`: the database (backup API) plus every job file, bin/ and the schema.
/// A PostgreSQL queue's is a new queue directory holding its rows and job files (restored
/// with `rq DEST export --to URL`).
pub fn backup(q: &mut Queue, dest: Option<&Path>, quiet: bool) -> Result<Value> {
    if let Some(default) = postgres_copy_path(q, &format!("{}.bak", stamp())) {
        let dest = dest.map(Path::to_path_buf).unwrap_or(default);
        return crate::export::copy_into_directory(q, &dest, true, quiet);
    }
    let dest = dest
        .map(queue::resolve)
        .unwrap_or_else(|| beside(q.dir(), &format!("{}.bak", stamp())));
    refuse_existing(&dest)?;
    std::fs::create_dir_all(&dest).context(|| format!("cannot create {}", dest.display()))?;
    let result = (|| {
        copy_database(q, &dest.join("db"))?;
        for entry in [
            "db.schema",
            "doorbell",
            "bin",
            "stdin",
            "stdout",
            "stderr",
            "data",
        ] {
            let src = q.dir().join(entry);
            if src.exists() {
                queue::copy_tree(&src, &dest.join(entry))?;
            }
        }
        Ok(json!({"backup": dest}))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dest);
    }
    result
}

/// Rows of the archive read back per statement while the live queue's rows are deleted.
const ARCHIVE_PAGE: i64 = 10_000;

/// `rotate [DEST|DIR]`: move finished and dead jobs (rows and files) into an archive queue,
/// then (unless `keep_dir`) pack it as `DEST.tgz`. Nothing changes in the live queue unless
/// the archive is complete; jobs that change state meanwhile stay.
pub fn rotate(q: &mut Queue, dest: Option<&Path>, keep_dir: bool) -> Result<Value> {
    // A PostgreSQL queue's archive is named after its schema, in the current directory.
    let pg_default = postgres_copy_path(q, &stamp());
    let name = match q.postgres_location() {
        Some(location) => location.schema(),
        None => q
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "q".into()),
    };
    let dest = match dest.map(queue::resolve) {
        None => pg_default.unwrap_or_else(|| beside(q.dir(), &stamp())),
        Some(d) if d.is_dir() => d.join(format!("{name}.{}", stamp())),
        Some(d) => d,
    };
    refuse_existing(&dest)?;
    let tgz = PathBuf::from(format!("{}.tgz", dest.display()));
    if !keep_dir {
        refuse_existing(&tgz)?;
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .context(|| format!("cannot create {}", parent.display()))?;
    }
    queue::create(&dest)?;
    if let Err(e) = fill_archive(q, &dest) {
        let _ = std::fs::remove_dir_all(&dest);
        return Err(e);
    }
    // The live queue changes only now, in one transaction: rows still as archived go. The
    // archive's (jid, finished) pairs are read back a page at a time inside it, so memory
    // stays bounded however many jobs there are (a private file: no other lock is taken).
    let mut archive = match Queue::open(&dest, store::Access::ReadOnly) {
        Ok(archive) => archive,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dest);
            return Err(e);
        }
    };
    let outcome = q.store().write(|tx| {
        let mut deleted = 0usize;
        let mut kept = HashSet::new();
        let mut del = tx.op(copies::DELETE_ARCHIVED);
        let mut after = 0i64;
        loop {
            let page = archive.store().read(|atx| {
                let rows = atx
                    .op(copies::ENDED_PAGE)
                    .query_map(crate::params![after, ARCHIVE_PAGE], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })?
                    .collect::<crate::error::Result<Vec<_>>>()?;
                Ok(rows)
            })?;
            let Some(&(last, _)) = page.last() else { break };
            after = last;
            for (jid, finished) in &page {
                if del.execute(crate::params![jid, finished])? > 0 {
                    deleted += 1;
                } else {
                    kept.insert(*jid);
                }
            }
        }
        Ok((deleted, kept))
    });
    drop(archive);
    let (deleted, kept) = match outcome {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dest);
            return Err(e);
        }
    };
    if deleted > 0 {
        q.store().reclaim_space()?;
    }
    // Jobs resubmitted during the rotation are not archived.
    if !kept.is_empty() {
        let mut archive = Queue::open(&dest, store::Access::ReadWrite)?;
        let kept_list: Vec<i64> = kept.iter().copied().collect();
        archive.store().write(|tx| {
            tx.op(copies::DELETE_LISTED)
                .execute([serde_json::to_string(&kept_list).unwrap_or_default()])?;
            Ok(())
        })?;
        for jid in &kept {
            queue::remove_files_of(&dest, *jid, &[]);
        }
    }
    // The archived jobs' files leave the live queue, a page of the archive (which now
    // holds only the deleted jobs) at a time.
    let mut archive = Queue::open(&dest, store::Access::ReadOnly)?;
    let every = queue::Selection {
        all: true,
        ..Default::default()
    };
    archive.list(&every, &mut |chunk| {
        for row in &chunk {
            let named: Vec<String> = JOB_DIRS
                .iter()
                .filter_map(|f| row.get(f).as_text().map(String::from))
                .collect();
            queue::remove_files_of(q.dir(), row.jid(), &named);
        }
        Ok(())
    })?;
    drop(archive);
    let rotation = if keep_dir {
        dest
    } else {
        pack(&dest, &tgz)?;
        tgz
    };
    Ok(json!({"rotation": rotation, "jobs": deleted}))
}

/// Copy every finished/dead row (with its jid) and its files into the archive queue, a
/// chunk of the live queue's rows at a time (each read in a read transaction of its own,
/// written to the archive, which nobody else uses yet, after it ended).
fn fill_archive(q: &mut Queue, dest: &Path) -> Result<()> {
    let selection = queue::Selection {
        states: vec![crate::job::State::Finished, crate::job::State::Dead],
        ..Default::default()
    };
    let mut archive = Queue::open(dest, store::Access::ReadWrite)?;
    // A queue keeping job files in its database: each job's are fetched into a local
    // staging directory first.
    let staging = tempfile::tempdir().context(|| "cannot make a temporary directory".into())?;
    let in_database = q.in_database();
    let clause = selection.clause();
    let mut after = 0;
    loop {
        let rows = q.chunk_after(&clause, after)?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.jid();
        // Rows are read with every field in `FIELDS` order, as the archive takes them.
        let values: Vec<Vec<SqlValue>> = rows
            .iter()
            .map(|row| {
                row.columns
                    .iter()
                    .map(|(_, cell)| match cell {
                        crate::job::Cell::Null => SqlValue::Null,
                        crate::job::Cell::Int(i) => SqlValue::Integer(*i),
                        crate::job::Cell::Real(r) => SqlValue::Real(*r),
                        crate::job::Cell::Text(t) => SqlValue::Text(t.clone()),
                        crate::job::Cell::Bool(b) => SqlValue::Integer(*b as i64),
                    })
                    .collect()
            })
            .collect();
        archive
            .store()
            .write(|tx| tx.copy_rows(store::Table::Jobs, &values))?;
        for row in &rows {
            let named: Vec<&str> = JOB_DIRS
                .iter()
                .filter(|f| row.get(f).as_text().is_some())
                .copied()
                .collect();
            if in_database && !named.is_empty() {
                q.fetch_job_files(row.jid(), &named, staging.path())?;
            }
            for field in named {
                let Some(rel) = row.get(field).as_text() else {
                    continue;
                };
                let src = if in_database {
                    staging.path().join(field).join(row.jid().to_string())
                } else {
                    q.dir().join(rel)
                };
                if src.exists() {
                    queue::copy_tree(&src, &dest.join(rel))?;
                    queue::remove_path(&staging.path().join(field).join(row.jid().to_string()));
                }
            }
        }
    }
}

/// `tar czf DEST.tgz` of the archive directory, which is then removed.
fn pack(dir: &Path, tgz: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let name = dir.file_name().unwrap_or_default();
    let status = std::process::Command::new("tar")
        .arg("czf")
        .arg(tgz)
        .arg("-C")
        .arg(parent)
        .arg(name)
        .status()
        .context(|| "cannot run tar".into())?;
    if !status.success() {
        let _ = std::fs::remove_file(tgz);
        return Err(Error::Conflict(format!(
            "tar could not pack {}; the archive is kept as a directory",
            dir.display()
        )));
    }
    std::fs::remove_dir_all(dir).context(|| format!("cannot remove {}", dir.display()))
}

/// Unpack an archive (`.tgz` made by rotate) into `into`; returns the queue directory.
pub fn unpack(tgz: &Path, into: &Path) -> Result<PathBuf> {
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(tgz)
        .arg("-C")
        .arg(into)
        .status()
        .context(|| "cannot run tar".into())?;
    if !status.success() {
        return Err(Error::NotAQueue {
            path: tgz.to_path_buf(),
            why: "it is not an archive made by rotate".into(),
        });
    }
    let mut dirs = std::fs::read_dir(into)
        .context(|| format!("cannot read {}", into.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("db").is_file());
    dirs.next().ok_or_else(|| Error::NotAQueue {
        path: tgz.to_path_buf(),
        why: "the archive holds no queue".into(),
    })
}

/// `recover`: check the database; if it is damaged, keep a copy of it, rebuild it from every
/// row that can still be read, and write the result back through the backup API (the file
/// keeps its inode, so other hosts' open connections stay valid; they wait meanwhile).
pub fn recover(dir: &Path) -> Result<Value> {
    let db = dir.join("db");
    if !db.is_file() {
        return Err(Error::NotAQueue {
            path: dir.to_path_buf(),
            why: "it has no db file".into(),
        });
    }
    let check = store::repair::integrity(&db);
    let problem = match &check {
        // A sound SQLite file is only a healthy queue if it holds an rq schema: an empty
        // (0-byte) file or some other database passes the integrity check too.
        Ok(text) if text == "ok" => match store::repair::rq_schema(&db) {
            Ok(()) => {
                // Sound after all (the damage seen was in a connection, not the file),
                // but without what someone planted in it.
                let dropped = store::repair::drop_foreign_objects(&db)?;
                let cleared = std::fs::remove_file(store::damage_mark(&db)).is_ok();
                return Ok(json!({
                    "integrity": "ok",
                    "damaged": false,
                    "mark_cleared": cleared,
                    "dropped": dropped,
                }));
            }
            Err(why) => why,
        },
        Ok(text) => text.lines().next().unwrap_or("").to_string(),
        Err(e) => e.clone(),
    };
    // Keep the damaged file first, before this process holds any SQLite lock on it.
    let copy = dir.join(format!("db.damaged.{}", stamp()));
    // A new file (O_EXCL|O_NOFOLLOW): its name is predictable, so a link planted there
    // must not be written through.
    queue::copy_file_new(&db, &copy)?;
    let salvage = store::repair::salvage(&db);
    let highest_file_jid = highest_jid_in_files(dir);
    let fresh = dir.join(format!("db.recovering.{}", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    // Whatever happens below, the half-built database does not stay behind.
    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            let _ = std::fs::remove_file(self.0.with_extension("creating-journal"));
            let mut journal = self.0.as_os_str().to_owned();
            journal.push("-journal");
            let _ = std::fs::remove_file(journal);
        }
    }
    let _cleanup = RemoveOnDrop(fresh.clone());
    // jids are never reused: continue above every jid seen anywhere.
    let top = salvage.highest_jid.max(highest_file_jid);
    store::repair::rebuild(&fresh, &salvage, top)?;
    // Written over the damaged one in place where SQLite can open that (see
    // `store::repair::write_over`), else put in its place.
    if store::repair::write_over(&fresh, &db).is_err() {
        std::fs::rename(&fresh, &db).context(|| {
            format!(
                "cannot put the rebuilt database in place of {}",
                db.display()
            )
        })?;
    }
    let after = store::repair::integrity(&db).unwrap_or_else(|e| e);
    let _ = std::fs::remove_file(store::damage_mark(&db));
    // The proof that counts: the queue opens again.
    if let Err(e) = store::SqliteStore::open(&db, store::Access::ReadOnly) {
        return Err(Error::Conflict(format!(
            "recover rebuilt {} but the queue still does not open ({e}); the damaged file is kept as {}",
            db.display(),
            copy.display()
        )));
    }
    Ok(json!({
        "integrity": after,
        "damaged": true,
        "problem": problem,
        "recovered_jobs": salvage.rows.len(),
        "missing_jids": missing_ranges(&salvage.rows, salvage.highest_jid),
        "lost_jobs_at_most": (salvage.highest_jid.max(highest_file_jid) as usize).saturating_sub(salvage.rows.len()),
        "damaged_copy": copy,
    }))
}

/// Jids from 1 to `top` that are not in `rows`, as ranges ("7", "12-40"): deleted on
/// purpose or lost with the damage (the file cannot tell which).
fn missing_ranges(rows: &[Vec<SqlValue>], top: i64) -> Vec<String> {
    let have: std::collections::BTreeSet<i64> = rows
        .iter()
        .filter_map(|r| match r.first() {
            Some(SqlValue::Integer(j)) => Some(*j),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    let mut start = None;
    for jid in 1..=top + 1 {
        let absent = jid <= top && !have.contains(&jid);
        match (absent, start) {
            (true, None) => start = Some(jid),
            (false, Some(s)) => {
                out.push(if s == jid - 1 {
                    s.to_string()
                } else {
                    format!("{s}-{}", jid - 1)
                });
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// The highest jid named by a file in the queue's job directories.
fn highest_jid_in_files(dir: &Path) -> i64 {
    JOB_DIRS
        .iter()
        .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .split('.')
                .next()
                .and_then(|n| n.parse::<i64>().ok())
        })
        .max()
        .unwrap_or(0)
}
