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
