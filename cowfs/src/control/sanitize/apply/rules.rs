//! What a profile's rules say about one entry: its fate (keep, remove, truncate,
//! replace) and the `redact` detectors for its contents and for what sits beside
//! them (name, symlink target, `user.*` xattrs).

use std::path::Path;

use super::super::config::{Action, Profile, Redactor};

pub(super) enum Fate<'r> {
    Keep,
    Remove(&'r str),
    Truncate(&'r str),
    Replace(&'r str, &'r [u8]),
}

/// The `redact` rules that apply to one file (or, for a file with several names,
/// to all its names), with their labels for errors.
#[derive(Default)]
pub(super) struct Redaction<'r> {
    /// For the contents: a later `truncate` or `replace` makes earlier ones moot.
    pub content: Vec<&'r Redactor>,
    pub content_rules: Vec<&'r str>,
    /// A rule names the file explicitly or sets `binary = true`.
    pub binary_ok: bool,
    /// For the name, a symlink's target and `user.*` xattrs: every matching
    /// `redact` rule, since a truncated or replaced file keeps all three.
    pub meta: Vec<&'r Redactor>,
    pub meta_rules: Vec<&'r str>,
}

impl<'r> Redaction<'r> {
    /// Add another name's rules, each detector and label once.
    pub fn merge(&mut self, other: &Redaction<'r>) {
        merge_redactors(&mut self.content, &other.content);
        merge_labels(&mut self.content_rules, &other.content_rules);
        merge_redactors(&mut self.meta, &other.meta);
        merge_labels(&mut self.meta_rules, &other.meta_rules);
        self.binary_ok |= other.binary_ok;
    }
}

pub(super) struct Matched<'r> {
    pub fate: Fate<'r>,
    pub redaction: Redaction<'r>,
}

/// The rules of `profile` that apply to `path`, in order. Directories are matched
/// by `redact` rules only: removing, truncating or replacing is for files.
pub(super) fn matched<'r>(profile: &'r Profile, path: &Path, is_dir: bool) -> Matched<'r> {
    let mut fate = Fate::Keep;
    let mut r = Redaction::default();
    for rule in &profile.rules {
        if !rule.matches(path) {
            continue;
        }
        match &rule.action {
            Action::Redact(rs) => {
                r.content.extend(rs.iter());
                r.content_rules.push(&rule.label);
                r.binary_ok |= rule.scans_binary(path);
                r.meta.extend(rs.iter());
                r.meta_rules.push(&rule.label);
            }
            _ if is_dir => {}
            Action::Remove => {
                fate = Fate::Remove(&rule.label);
                r.content.clear();
                r.meta.clear();
                break;
            }
            Action::Truncate => {
                fate = Fate::Truncate(&rule.label);
                r.content.clear();
                r.content_rules.clear();
            }
            Action::Replace(c) => {
                fate = Fate::Replace(&rule.label, c);
                r.content.clear();
                r.content_rules.clear();
            }
        }
    }
    Matched { fate, redaction: r }
}

fn merge_redactors<'r>(into: &mut Vec<&'r Redactor>, from: &[&'r Redactor]) {
    for r in from {
        if !into.iter().any(|have| std::ptr::eq(*have, *r)) {
            into.push(r);
        }
    }
}

fn merge_labels<'r>(into: &mut Vec<&'r str>, from: &[&'r str]) {
    for r in from {
        if !into.contains(r) {
            into.push(r);
        }
    }
}
