//! The one selection rule of every mode that takes jobs (list, status, wait, state,
//! usage, stdout, stderr, tail, ioview, kill, cancel, delete, update, resubmit): see
//! `rq help selections`.
//!
//! - Words name jobs: a jid, `array:ID`, `tag:NAME`, a state (any prefix) or `all`; any
//!   of them chooses a job. `field=value` terms (as `query` takes them) narrow that down,
//!   or alone choose among all jobs.
//! - `-` reads jids (or rq's YAML/JSON) from standard input; an empty input chooses
//!   nothing, and the mode then does nothing and succeeds (`query x | rq q kill -`).
//! - Named jids, arrays and tags that the queue does not hold are each an error line, and
//!   the mode exits 1 after acting on the rest.

use super::Context;
use crate::error::{Error, Result};
use crate::input;
use crate::query;
use crate::queue::{Outcome, Queue, Selection};

/// What a mode does when nothing at all is named.
#[derive(Debug, Clone, Copy)]
pub(super) enum WhenNone {
    /// Every job (list, wait).
    All,
    /// A usage error saying what to name.
    Usage(&'static str),
}

impl Context<'_> {
    /// The jobs `words` (and standard input, after `-` or when nothing is named and it is
    /// not a terminal) name; `None` when `-` was given and named nothing.
    pub(super) fn select(&self, words: &[String], none: WhenNone) -> Result<Option<Selection>> {
        let mut targets = Vec::new();
        let mut terms = Vec::new();
        for word in words {
            match input::parse_target_word(word, true) {
                Ok(target) => targets.push(target),
                Err(_) if query::is_term(word) => terms.push(word.clone()),
                Err(why) => return Err(Error::usage(why)),
            }
        }
        let named = !targets.is_empty() || !terms.is_empty();
        if self.stdin_wanted(named) {
            targets.extend(input::read_targets(super::data::stdin_reader(), true)?);
        }
        let mut selection = Selection::from_targets(&targets);
        selection.terms = query::terms(&terms)?;
        if selection.is_empty() {
            if self.inv.dash {
                return Ok(None);
            }
            match none {
                WhenNone::All => selection.all = true,
                WhenNone::Usage(what) => return Err(Error::usage(what)),
            }
        }
        Ok(Some(selection))
    }

    /// How the chosen jobs stand, in the order named: the named jids first, as named (one
    /// that is not there is left out: `say_absent` says it), then the jobs the other
    /// targets choose, by jid. A job named twice comes once.
    pub(super) fn chosen(&self, q: &mut Queue, selection: &Selection) -> Result<Vec<Outcome>> {
        let mut by_jid: std::collections::BTreeMap<i64, Outcome> = q
            .outcomes(&selection.clause())?
            .into_iter()
            .map(|o| (o.jid, o))
            .collect();
        let mut ordered = Vec::with_capacity(by_jid.len());
        for jid in &selection.jids {
            if let Some(outcome) = by_jid.remove(jid) {
                ordered.push(outcome);
            }
        }
        ordered.extend(by_jid.into_values());
        Ok(ordered)
    }

    /// Say (stderr) what the selection names that the queue does not hold: arrays, tags,
    /// terms that choose nothing, and with `jids` the jids too. True when anything was
    /// said (the mode then exits 1).
    pub(super) fn say_absent(
        &self,
        q: &mut Queue,
        selection: &Selection,
        jids: bool,
    ) -> Result<bool> {
        let absent = q.absent(selection, jids)?;
        for line in &absent {
            crate::note!("rq: {line}");
        }
        Ok(!absent.is_empty())
    }
}
