//! Rows read straight from the pages of a damaged SQLite file, for `recover` when SQLite
//! itself gives up (a truncated file: "database disk image is malformed" before the first
//! row). It walks the `jobs` table's b-tree from its root page (found in `sqlite_master`
//! on page 1) and decodes every table-leaf cell it can reach, following overflow chains;
//! a page that is missing or does not parse is skipped, so every intact leaf counts.
//! If page 1 or the root is gone, it scans every page for leaf cells shaped like job rows.
//!
//! Only the file format's basics are needed (<https://www.sqlite.org/fileformat.html>):
//! page header, cell pointer array, varints, record header and serial types.

use std::collections::BTreeMap;

use crate::store::SqlValue;

/// One table row: its rowid and its columns in table order.
pub type Record = (i64, Vec<SqlValue>);

struct File<'a> {
    bytes: &'a [u8],
    page_size: usize,
    usable: usize,
}

impl<'a> File<'a> {
    fn new(bytes: &'a [u8]) -> Option<File<'a>> {
        if bytes.len() < 100 || &bytes[..16] != b"SQLite format 3\0" {
            return None;
        }
        let raw = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
        let page_size = if raw == 1 { 65536 } else { raw };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        let usable = page_size - bytes[20] as usize;
        Some(File {
            bytes,
            page_size,
            usable,
        })
    }

    fn pages(&self) -> usize {
        self.bytes.len() / self.page_size
    }

    /// Page `n` (1-based) and where its b-tree header starts.
    fn page(&self, n: usize) -> Option<(&'a [u8], usize)> {
        let start = n.checked_sub(1)? * self.page_size;
        let page = self.bytes.get(start..start + self.page_size)?;
        Some((page, if n == 1 { 100 } else { 0 }))
    }

    /// The cells of a table b-tree leaf page, or None if it is not one.
    fn leaf_cells(&self, n: usize) -> Option<Vec<Record>> {
        let (page, h) = self.page(n)?;
        if page.get(h)? != &0x0d {
            return None;
        }
        let count = u16::from_be_bytes([*page.get(h + 3)?, *page.get(h + 4)?]) as usize;
        let mut out = Vec::new();
        for i in 0..count {
            let at = h + 8 + 2 * i;
            let ptr = u16::from_be_bytes([*page.get(at)?, *page.get(at + 1)?]) as usize;
            if let Some(record) = self.cell(page, ptr) {
                out.push(record);
            }
        }
        Some(out)
    }

    fn cell(&self, page: &[u8], at: usize) -> Option<Record> {
        let (size, a) = varint(page, at)?;
        let (rowid, b) = varint(page, at + a)?;
        let size = usize::try_from(size).ok()?;
        let start = at + a + b;
        // How much of the payload is on this page (the file format's rule).
        let x = self.usable - 35;
        let local = if size <= x {
            size
        } else {
            let m = (self.usable - 12) * 32 / 255 - 23;
            let k = m + (size - m) % (self.usable - 4);
            if k <= x { k } else { m }
        };
        let mut payload = page.get(start..start + local)?.to_vec();
        if local < size {
            let mut next = u32::from_be_bytes(
                page.get(start + local..start + local + 4)?
                    .try_into()
                    .ok()?,
            );
            let mut hops = 0;
            while payload.len() < size && next != 0 && hops < self.pages() {
                let (over, _) = self.page(next as usize)?;
                next = u32::from_be_bytes(over[..4].try_into().ok()?);
                let take = (size - payload.len()).min(self.usable - 4);
                payload.extend_from_slice(over.get(4..4 + take)?);
                hops += 1;
            }
            if payload.len() < size {
                return None;
            }
        }
        Some((rowid, record(&payload)?))
    }

    /// Every leaf reachable from `root`, skipping what does not parse.
    fn walk(&self, root: usize, out: &mut BTreeMap<i64, Vec<SqlValue>>) {
        let mut stack = vec![root];
        let mut seen = vec![false; self.pages() + 1];
        while let Some(n) = stack.pop() {
            if n == 0 || n > self.pages() || std::mem::replace(&mut seen[n], true) {
                continue;
            }
            let Some((page, h)) = self.page(n) else {
                continue;
            };
            match page[h] {
                0x0d => {
                    for (rowid, cols) in self.leaf_cells(n).unwrap_or_default() {
                        out.entry(rowid).or_insert(cols);
                    }
                }
                0x05 => {
                    let Some(count) = page.get(h + 3..h + 5) else {
                        continue;
                    };
                    let count = u16::from_be_bytes([count[0], count[1]]) as usize;
                    if let Some(right) = page.get(h + 8..h + 12) {
                        stack.push(u32::from_be_bytes(right.try_into().unwrap_or_default()) as usize);
                    }
                    for i in 0..count {
                        let at = h + 12 + 2 * i;
                        let Some(ptr) = page.get(at..at + 2) else {
                            break;
                        };
                        let ptr = u16::from_be_bytes([ptr[0], ptr[1]]) as usize;
                        if let Some(child) = page.get(ptr..ptr + 4) {
                            stack
                                .push(u32::from_be_bytes(child.try_into().unwrap_or_default())
                                    as usize);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// A SQLite varint at `at`: (value, length).
fn varint(bytes: &[u8], at: usize) -> Option<(i64, usize)> {
    let mut value: u64 = 0;
    for i in 0..9 {
        let b = *bytes.get(at + i)?;
        if i == 8 {
            return Some(((value << 8 | b as u64) as i64, 9));
        }
        value = value << 7 | (b & 0x7f) as u64;
        if b & 0x80 == 0 {
            return Some((value as i64, i + 1));
        }
    }
    None
}

/// Decode a record (header of serial types, then the values).
fn record(payload: &[u8]) -> Option<Vec<SqlValue>> {
    let (header_len, mut h) = varint(payload, 0)?;
    let header_len = usize::try_from(header_len).ok()?;
    let mut body = header_len;
    let mut out = Vec::new();
    while h < header_len {
        let (serial, n) = varint(payload, h)?;
        h += n;
        let int = |len: usize| -> Option<i64> {
            let bytes = payload.get(body..body + len)?;
            let mut v: i64 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
            for b in bytes {
                v = v << 8 | *b as i64;
            }
            Some(v)
        };
        let (value, len) = match serial {
            0 => (SqlValue::Null, 0),
            1..=4 => (SqlValue::Integer(int(serial as usize)?), serial as usize),
            5 => (SqlValue::Integer(int(6)?), 6),
            6 => (SqlValue::Integer(int(8)?), 8),
            7 => {
                let bytes: [u8; 8] = payload.get(body..body + 8)?.try_into().ok()?;
                (SqlValue::Real(f64::from_be_bytes(bytes)), 8)
            }
            8 => (SqlValue::Integer(0), 0),
            9 => (SqlValue::Integer(1), 0),
            s if s >= 12 && s % 2 == 0 => {
                let len = ((s - 12) / 2) as usize;
                (SqlValue::Blob(payload.get(body..body + len)?.to_vec()), len)
            }
            s if s >= 13 => {
                let len = ((s - 13) / 2) as usize;
                let text = String::from_utf8_lossy(payload.get(body..body + len)?).into_owned();
                (SqlValue::Text(text), len)
            }
            _ => return None,
        };
        body += len;
        out.push(value);
    }
    Some(out)
}

/// The root page of table `name`, from `sqlite_master` on page 1.
fn root_of(file: &File<'_>, name: &str) -> Option<usize> {
    let mut master = BTreeMap::new();
    file.walk(1, &mut master);
    master
        .values()
        .find_map(|cols| match (cols.first(), cols.get(1), cols.get(3)) {
            (
                Some(SqlValue::Text(kind)),
                Some(SqlValue::Text(n)),
                Some(SqlValue::Integer(root)),
            ) if kind == "table" && n == name => usize::try_from(*root).ok(),
            _ => None,
        })
}

/// The rows of table `name` that can be read from `bytes` (a damaged database file),
/// by rowid. `shape` says whether a record found by scanning (when the table's root is
/// lost) belongs to the table.
pub fn table_rows(
    bytes: &[u8],
    name: &str,
    shape: impl Fn(&[SqlValue]) -> bool,
) -> BTreeMap<i64, Vec<SqlValue>> {
    let mut rows = BTreeMap::new();
    let Some(file) = File::new(bytes) else {
        return rows;
    };
    match root_of(&file, name) {
        Some(root) => file.walk(root, &mut rows),
        None => {
            for n in 2..=file.pages() {
                for (rowid, cols) in file.leaf_cells(n).unwrap_or_default() {
                    if shape(&cols) {
                        rows.entry(rowid).or_insert(cols);
                    }
                }
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_of_a_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE jobs (jid INTEGER PRIMARY KEY, state TEXT, command TEXT, elapsed REAL);",
        )
        .unwrap();
        let long = "x".repeat(9000); // overflow pages
        for i in 1..=3000i64 {
            let command = if i % 500 == 0 {
                long.clone()
            } else {
                format!("echo {i}")
            };
            conn.execute(
                "INSERT INTO jobs VALUES (?, 'pending', ?, ?)",
                rusqlite::params![i, command, i as f64 / 4.0],
            )
            .unwrap();
        }
        drop(conn);
        let bytes = std::fs::read(&path).unwrap();
        let all = table_rows(&bytes, "jobs", |_| true);
        assert_eq!(all.len(), 3000);
        assert_eq!(all[&500][2], SqlValue::Text(long.clone()));
        assert_eq!(all[&7][3], SqlValue::Real(1.75));
        let cut = &bytes[..bytes.len() * 9 / 10];
        let some = table_rows(cut, "jobs", |_| true);
        assert!(some.len() > 2000 && some.len() < 3000, "{}", some.len());
        assert_eq!(some[&1][2], SqlValue::Text("echo 1".into()));
    }
}
