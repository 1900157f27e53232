//! The jobs a feeder claimed ahead and has not started: in claim order, the next few made
//! ready to start while the slots are busy (files created, command built), and when their
//! claims were last known to be ours.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::claim_of;
use crate::error::Result;
use crate::job::Row;
use crate::runner::Prepared;

pub(super) struct Claimed {
    rows: VecDeque<Row>,
    /// Made ready ahead, by claim token.
    prepared: HashMap<String, Result<Prepared>>,
    /// When the claims were last known to be ours (claimed, or read back).
    checked: Instant,
}

impl Claimed {
    pub fn new() -> Claimed {
        Claimed {
            rows: VecDeque::new(),
            prepared: HashMap::new(),
            checked: Instant::now(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter()
    }

    pub fn jids(&self) -> impl Iterator<Item = i64> + '_ {
        self.rows.iter().map(Row::jid)
    }

    /// Jobs a transaction just claimed join the end (with none waiting, the claims are
    /// known ours as of now).
    pub fn add(&mut self, rows: Vec<Row>) {
        if self.rows.is_empty() {
            self.checked = Instant::now();
        }
        self.rows.extend(rows);
    }

    /// The first `n`, to start now.
    pub fn take(&mut self, n: usize) -> Vec<Row> {
        self.rows.drain(..n.min(self.rows.len())).collect()
    }

    /// Jobs taken to start that did not start: back in front, in their order.
    pub fn put_back(&mut self, rows: Vec<Row>) {
        for row in rows.into_iter().rev() {
            self.rows.push_front(row);
        }
    }

    /// All of them: to give back, or to read back (then `keep_checked` those still ours).
    pub fn take_all(&mut self) -> Vec<Row> {
        self.rows.drain(..).collect()
    }

    /// The jobs read back and still ours, known so as of now.
    pub fn keep_checked(&mut self, rows: Vec<Row>) {
        self.rows = rows.into();
        self.checked = Instant::now();
    }

    /// How long since the claims were last known to be ours.
    pub fn unchecked_for(&self) -> Duration {
        self.checked.elapsed()
    }

    /// What was made ready of the job with this claim, if it was (taken: a start uses
    /// it, a give-back discards it).
    pub fn take_prepared(&mut self, claim: &str) -> Option<Result<Prepared>> {
        self.prepared.remove(claim)
    }

    /// The first `n` jobs not made ready yet; preparations of jobs no longer among the
    /// first `n` (taken over, killed before they started) are forgotten, their files left
    /// alone: another host may own those paths now.
    pub fn next_unprepared(&mut self, n: usize) -> Vec<Row> {
        let next: Vec<&Row> = self.rows.iter().take(n).collect();
        let claims: Vec<String> = next.iter().map(|row| claim_of(row).1).collect();
        self.prepared.retain(|claim, _| claims.contains(claim));
        next.into_iter()
            .zip(claims)
            .filter(|(_, claim)| !self.prepared.contains_key(claim))
            .map(|(row, _)| row.clone())
            .collect()
    }

    /// What was made ready of a job (`next_unprepared`).
    pub fn prepared(&mut self, claim: String, prepared: Result<Prepared>) {
        self.prepared.insert(claim, prepared);
    }
}
