//! `configure`, the flags that hold feeders back (`pause`, `drain`) and single settings.

use super::*;
use crate::store::ops::attributes as op;

impl Queue {
    /// Set queue-wide settings (`key=value`; an empty value removes the key) and return
    /// them all.
    pub fn configure(&mut self, settings: &[(String, String)]) -> Result<Value> {
        let read_all = |tx: &Tx<'_>| -> Result<Value> {
            let mut stmt = tx.op(op::EVERY_SORTED);
            let mut map = Map::new();
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                map.insert(
                    r.get(0)?,
                    Value::String(r.get::<_, Option<String>>(1)?.unwrap_or_default()),
                );
            }
            Ok(Value::Object(map))
        };
        if settings.is_empty() {
            return self.store.read(|tx| read_all(tx));
        }
        let files = settings.iter().rev().find(|(k, _)| k == "files");
        if let Some((_, dir)) = files {
            self.prepare_files_dir(dir)?;
        }
        let report = self.store.write(|tx| {
            // Checked as the settings will be, with the stored ones: lease and heartbeat
            // depend on each other.
            let current = read_all(tx)?;
            let keys: Vec<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
            crate::liveness::check_settings(&keys, |key| {
                match settings.iter().rev().find(|(k, _)| k == key) {
                    Some((_, v)) if v.is_empty() => None,
                    Some((_, v)) => Some(v.clone()),
                    None => current.get(key).and_then(Value::as_str).map(String::from),
                }
            })
            .map_err(|e| Error::usage(format!("configure: {e}; nothing was changed")))?;
            for (key, value) in settings {
                if value.is_empty() {
                    tx.op(op::REMOVE).execute([key])?;
                } else {
                    tx.op(op::SET).execute([key, value])?;
                }
            }
            read_all(tx)
        })?;
        if let Some((_, dir)) = files {
            self.dir = PathBuf::from(dir);
        }
        Ok(report)
    }

    /// `configure files=DIR` (PostgreSQL queues): the directory and its job-file
    /// directories, made before the setting is stored so a stored one always exists.
    pub(super) fn prepare_files_dir(&self, dir: &str) -> Result<()> {
        if self.store.server_location().is_none() {
            return Err(Error::usage(
                "configure: files= is for PostgreSQL queues; a queue directory keeps its job \
                 files in itself; nothing was changed",
            ));
        }
        if dir.is_empty() {
            return Ok(());
        }
        let path = Path::new(dir);
        if !path.is_absolute() {
            return Err(Error::usage(format!(
                "configure: files must be an absolute path every host sees, not '{dir}'; nothing was changed"
            )));
        }
        for sub in [
            "", "bin", "stdin", "stdout", "stderr", "data", "hosts", "starts",
        ] {
            let p = path.join(sub);
            std::fs::create_dir_all(&p).context(|| format!("cannot create {}", p.display()))?;
            // Never a link planted in a shared directory.
            let meta =
                std::fs::symlink_metadata(&p).context(|| format!("cannot read {}", p.display()))?;
            if !meta.is_dir() {
                return Err(Error::Conflict(format!(
                    "{} is not a directory; nothing was changed",
                    p.display()
                )));
            }
        }
        Ok(())
    }

    /// Set (`Some`) or remove (`None`) a flag that holds feeders back: `paused`, or
    /// `drain.HOST`. Returns whether it changed.
    pub fn set_flag(&mut self, key: &str, value: Option<&str>) -> Result<bool> {
        let changed = self.store.write(|tx| {
            Ok(match value {
                Some(v) => tx.op(op::SET_IF_ABSENT).execute([key, v])?,
                None => tx.op(op::REMOVE).execute([key])?,
            })
        })?;
        if changed > 0 && value.is_none() {
            // Feeders that were held back come back at once.
            self.ring_doorbell();
        }
        Ok(changed > 0)
    }

    /// One queue-wide setting.
    pub fn setting(&mut self, key: &str) -> Result<Option<String>> {
        self.store
            .read(|tx| Ok(tx.op(op::GET).query_row([key], |r| r.get(0)).ok()))
    }
}
