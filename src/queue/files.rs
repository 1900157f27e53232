//! A queue's job files (stdin, stdout, stderr, data): copied without following a link
//! or writing through one, removed after the transaction that removed their jobs.

use super::*;

pub(super) fn paths_of(row: &Row) -> Vec<String> {
    JOB_DIRS
        .iter()
        .filter_map(|f| row.get(f).as_text().map(String::from))
        .collect()
}

/// Remove a job's files: the paths its row names and the conventional `<dir>/<jid>`.
pub fn remove_files_of(dir: &Path, jid: i64, named: &[String]) {
    for rel in named {
        remove_path(&dir.join(rel));
    }
    for sub in JOB_DIRS {
        remove_path(&dir.join(sub).join(jid.to_string()));
    }
}

/// Remove a file or directory tree; missing is fine (NFS may also leave `.nfs*` files
/// behind for open files, which their last close removes).
pub fn remove_path(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Copy a file, or a directory recursively (symlinks copied as links), to `dest` in a
/// queue. Whatever is at `dest` already (a link someone planted under the next jid, a
/// leftover of a crash) is removed first, never followed, and every file and directory
/// of the copy is created new: nothing outside the queue is written through it.
pub fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    clear(dest)?;
    copy_new(src, dest)
}

/// Remove what is at `path` (a link itself, not its target).
pub(super) fn clear(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
    .context(|| format!("cannot remove {}", path.display()))
}

pub(super) fn copy_new(src: &Path, dest: &Path) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(src).context(|| format!("cannot read {}", src.display()))?;
    if meta.file_type().is_symlink() {
        let target =
            std::fs::read_link(src).context(|| format!("cannot read {}", src.display()))?;
        std::os::unix::fs::symlink(target, dest)
            .context(|| format!("cannot create {}", dest.display()))?;
    } else if meta.is_dir() {
        std::fs::create_dir(dest).context(|| format!("cannot create {}", dest.display()))?;
        for entry in std::fs::read_dir(src).context(|| format!("cannot read {}", src.display()))? {
            let entry = entry.context(|| format!("cannot read {}", src.display()))?;
            copy_new(&entry.path(), &dest.join(entry.file_name()))?;
        }
    } else if meta.is_file() {
        copy_file_new(src, dest)?;
    } else {
        return Err(Error::input(format!(
            "{} is not a regular file or directory",
            src.display()
        )));
    }
    Ok(())
}

/// Copy a regular file to a new file `dest` (O_EXCL, O_NOFOLLOW), with its permissions.
pub fn copy_file_new(src: &Path, dest: &Path) -> Result<()> {
    let context = || format!("cannot copy {} to {}", src.display(), dest.display());
    let mut from = std::fs::File::open(src).context(context)?;
    let mut to = crate::liveness::create_new(dest).context(context)?;
    std::io::copy(&mut from, &mut to).context(context)?;
    if let Ok(meta) = from.metadata() {
        let _ = to.set_permissions(meta.permissions());
    }
    Ok(())
}

/// A job's data as a queue keeping job files in its database stores it: a file as it is,
/// a directory as a tar archive made in a local temporary file (links kept as links, as
/// `copy_tree` keeps them).
pub(super) struct DbData {
    stream: &'static str,
    path: PathBuf,
    _archive: Option<tempfile::NamedTempFile>,
}

pub(super) fn db_data(src: &Path) -> Result<DbData> {
    let meta = std::fs::metadata(src).context(|| format!("cannot read {}", src.display()))?;
    if !meta.is_dir() {
        return Ok(DbData {
            stream: "data",
            path: src.to_path_buf(),
            _archive: None,
        });
    }
    let context = || format!("cannot archive {}", src.display());
    let archive = tempfile::NamedTempFile::new().context(context)?;
    let mut builder = tar::Builder::new(archive.as_file());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", src).context(context)?;
    builder.into_inner().context(context)?;
    Ok(DbData {
        stream: crate::store::in_database::DATA_TAR,
        path: archive.path().to_path_buf(),
        _archive: Some(archive),
    })
}

/// Store a job's stdin and data in the database under `claim` ('' for what readers and
/// feeders see; an update's staging key), replacing what was stored under it.
pub(super) fn store_inputs(
    tx: &Tx<'_>,
    jid: i64,
    claim: &str,
    stdin: Option<&Path>,
    data: Option<&DbData>,
) -> Result<()> {
    if let Some(path) = stdin {
        crate::store::in_database::put_file(tx, jid, "stdin", claim, path)?;
    }
    if let Some(data) = data {
        tx.op(crate::store::ops::in_database::DROP_DATA)
            .execute(crate::params![jid, claim])?;
        crate::store::in_database::put_file(tx, jid, data.stream, claim, &data.path)?;
    }
    Ok(())
}

impl Queue {
    /// Remove job files that belong to no job (in stdin/ stdout/ stderr/ data/, or stored
    /// in the database); returns how many (in the database: chunks). Only files older
    /// than ten minutes: a submit stores files before it inserts the rows naming them.
    /// The work is proportional to the files present, not to the jobs in the queue.
    pub fn reap_orphan_files(&mut self) -> Result<usize> {
        if self.in_database() {
            return self
                .store
                .write_shared(crate::store::in_database::reap_orphans);
        }
        let mut old_files: Vec<(i64, String, PathBuf)> = Vec::new();
        for sub in JOB_DIRS {
            let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".nfs") {
                    continue;
                }
                let Some(jid) = name.split('.').next().and_then(|n| n.parse::<i64>().ok()) else {
                    continue;
                };
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default() > std::time::Duration::from_secs(600))
                    .unwrap_or(false);
                if old {
                    old_files.push((jid, format!("{sub}/{name}"), entry.path()));
                }
            }
        }
        if old_files.is_empty() {
            return Ok(0);
        }
        let jids: Vec<i64> = old_files
            .iter()
            .map(|(j, _, _)| *j)
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        let referenced = self.store.read(|tx| crate::claims::job_files(tx, &jids))?;
        let mut removed = 0;
        for (jid, rel, path) in old_files {
            let in_use = referenced.iter().any(|(j, files)| {
                *j == jid
                    && (files.contains(&rel) || rel.rsplit('/').next() == Some(&jid.to_string()))
            });
            if !in_use {
                remove_path(&path);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The size of a job's stdin, stdout or stderr, None when it has none (yet).
    pub fn job_file_size(&mut self, jid: i64, stream: &str) -> Result<Option<u64>> {
        if self.in_database() {
            return self.files_tx(false, |tx| {
                crate::store::in_database::stream_size(tx, jid, stream)
            });
        }
        Ok(open_job_file(&self.dir, jid, stream).and_then(|f| f.metadata().ok().map(|m| m.len())))
    }

    /// Up to `limit` bytes of a job's stdin, stdout or stderr from byte `offset` on; None
    /// when it has none (yet). Never follows a link or opens anything but a regular file.
    pub fn read_job_file(
        &mut self,
        jid: i64,
        stream: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Option<Vec<u8>>> {
        if self.in_database() {
            return self.files_tx(false, |tx| {
                crate::store::in_database::read_range(tx, jid, stream, offset, limit)
            });
        }
        use std::io::{Read, Seek, SeekFrom};
        let Some(mut file) = open_job_file(&self.dir, jid, stream) else {
            return Ok(None);
        };
        let path = self.dir.join(stream).join(jid.to_string());
        let context = || format!("cannot read {}", path.display());
        file.seek(SeekFrom::Start(offset)).context(context)?;
        let mut bytes = Vec::new();
        file.take(limit).read_to_end(&mut bytes).context(context)?;
        Ok(Some(bytes))
    }
}

/// A job's file in a queue directory, opened to read if it is a regular file.
fn open_job_file(dir: &Path, jid: i64, stream: &str) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if dir.as_os_str().is_empty() {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(dir.join(stream).join(jid.to_string()))
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

impl Queue {
    /// A transaction on job-file rows of a queue keeping them in its database: no queue
    /// lock, so a long copy holds no writer back (see `PgStore::files`).
    pub(crate) fn files_tx<T>(
        &mut self,
        write: bool,
        body: impl FnMut(&Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.store.files_tx(write, body)
    }

    /// For a queue keeping job files in its database: write job `jid`'s stored `streams`
    /// (of stdin, data, stdout, stderr) into `into`, laid out like a queue directory
    /// (`stdin/<jid>`; `data/<jid>`, a directory again when it was one). What was there
    /// is replaced; a stream with nothing stored leaves nothing. Returns how many were
    /// written. One read transaction.
    pub fn fetch_job_files(&mut self, jid: i64, streams: &[&str], into: &Path) -> Result<usize> {
        self.files_tx(false, |tx| {
            let mut written = 0;
            for stream in streams {
                let sub = into.join(stream);
                std::fs::create_dir_all(&sub)
                    .context(|| format!("cannot create {}", sub.display()))?;
                let dest = sub.join(jid.to_string());
                clear(&dest)?;
                if write_stream(tx, jid, stream, &dest)? {
                    written += 1;
                    continue;
                }
                if *stream != "data" {
                    continue;
                }
                let archive = sub.join(format!(".{jid}.tar"));
                if write_stream(tx, jid, crate::store::in_database::DATA_TAR, &archive)? {
                    let unpacked = std::fs::create_dir(&dest)
                        .map_err(|e| (dest.clone(), e))
                        .and_then(|()| {
                            let file =
                                std::fs::File::open(&archive).map_err(|e| (archive.clone(), e))?;
                            tar::Archive::new(file)
                                .unpack(&dest)
                                .map_err(|e| (dest.clone(), e))
                        });
                    remove_path(&archive);
                    unpacked.map_err(|(path, e)| Error::Io {
                        context: format!(
                            "cannot unpack the data of job {jid} into {}",
                            path.display()
                        ),
                        source: e,
                    })?;
                    written += 1;
                }
            }
            Ok(written)
        })
    }

    /// For a queue keeping job files in its database: store `files` (each the kind of
    /// file, stdin, data, stdout or stderr, and where it is) that exist, as job `jid`'s,
    /// in one transaction. Returns how many were stored.
    pub fn store_job_files(&mut self, jid: i64, files: &[(String, PathBuf)]) -> Result<usize> {
        let mut present = Vec::new();
        for (sub, path) in files {
            if std::fs::symlink_metadata(path).is_err() {
                continue;
            }
            match sub.as_str() {
                "data" => present.push((sub.as_str(), path, Some(db_data(path)?))),
                "stdin" | "stdout" | "stderr" => present.push((sub.as_str(), path, None)),
                _ => {}
            }
        }
        if present.is_empty() {
            return Ok(0);
        }
        self.files_tx(true, |tx| {
            for (sub, path, data) in &present {
                match data {
                    Some(data) => store_inputs(tx, jid, "", None, Some(data))?,
                    None => crate::store::in_database::put_file(tx, jid, sub, "", path)?,
                }
            }
            Ok(present.len())
        })
    }
}

/// Write a stored stream of a job to a new file `dest`; false (and no file) when nothing
/// is stored.
fn write_stream(tx: &Tx<'_>, jid: i64, stream: &str, dest: &Path) -> Result<bool> {
    let mut file = crate::liveness::create_new(dest)
        .context(|| format!("cannot create {}", dest.display()))?;
    let mut sink = |bytes: &[u8]| {
        std::io::Write::write_all(&mut file, bytes)
            .context(|| format!("cannot write {}", dest.display()))
    };
    let any = crate::store::in_database::read_stream(tx, jid, stream, &mut sink)?;
    if !any {
        remove_path(dest);
    }
    Ok(any)
}
