//! Apply a profile's file rules to one branch through the pool API: walk the tree
//! and decide each entry's fate from the rules in order (`rules`); redact the
//! contents of regular files in place (`contents`) and what sits beside them:
//! names (directories included), symlink targets and `user.*` xattrs (`names`).
//! A file with several names is redacted once, after the walk, with the rules of
//! all its names. Renames and rewritten symlinks of one directory wait until its
//! listing is complete, so no entry is met (and redacted) twice.

mod contents;
mod names;
mod rules;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::fs::{FsError, ROOT_INO};
use crate::pool::{BranchId, Pool};

use super::config::Profile;
use super::pseudo::Pseudonymizer;
use super::{Progress, SanitizeError, SanitizeReport};
use names::Move;
use rules::{matched, Fate, Matched, Redaction};

/// Bytes read from a file at a time.
pub const CHUNK: usize = 1 << 20;
const READDIR_BATCH: usize = 256;

pub(super) struct Walker<'a> {
    pool: &'a Pool,
    b: BranchId,
    profile: &'a Profile,
    pseudo: &'a Pseudonymizer,
    progress: &'a mut dyn FnMut(Progress),
    /// Set when the run must stop (the daemon is stopping).
    cancel: &'a AtomicBool,
    pub report: SanitizeReport,
    /// Hidden scratch file (unlinked, kept alive by an open count).
    tmp: Option<u64>,
    /// Files with several names met so far, by inode: redacted after the walk,
    /// once, with the rules of every name.
    linked: BTreeMap<u64, Linked<'a>>,
}

/// The `redact` rules gathered from the names of one file with several names.
struct Linked<'a> {
    redaction: Redaction<'a>,
    /// The first name met, for progress and errors.
    path: Vec<u8>,
}

impl<'a> Walker<'a> {
    pub fn new(
        pool: &'a Pool,
        b: BranchId,
        profile: &'a Profile,
        pseudo: &'a Pseudonymizer,
        progress: &'a mut dyn FnMut(Progress),
        cancel: &'a AtomicBool,
    ) -> Walker<'a> {
        Walker {
            pool,
            b,
            profile,
            pseudo,
            progress,
            cancel,
            report: SanitizeReport::default(),
            tmp: None,
            linked: BTreeMap::new(),
        }
    }

    /// Walk the whole branch; the scratch inode is freed whatever happens.
    pub fn run(&mut self) -> Result<(), SanitizeError> {
        let r = self.walk().and_then(|()| self.redact_linked());
        if let Some(t) = self.tmp.take() {
            if let Err(e) = self.pool.release_inode(self.b, t) {
                log::warn!("sanitize: freeing the scratch inode {t}: {e}");
            }
        }
        r
    }

    fn walk(&mut self) -> Result<(), SanitizeError> {
        self.root()?;
        // Subdirectories are walked by inode with their original paths: rules are
        // written against the parent's names, and a directory may be renamed.
        let mut stack: Vec<(u64, Vec<u8>)> = vec![(ROOT_INO, Vec::new())];
        while let Some((dir, dpath)) = stack.pop() {
            let mut moves = Vec::new();
            let mut cookie = 2;
            loop {
                let entries = self
                    .pool
                    .readdir(self.b, dir, cookie, READDIR_BATCH)
                    .map_err(|e| fs_err("", &dpath, "listing the directory", e))?;
                let Some(last) = entries.last() else {
                    break;
                };
                cookie = last.offset;
                for ent in entries {
                    if ent.name == b"." || ent.name == b".." {
                        continue;
                    }
                    let mut path = dpath.clone();
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(&ent.name);
                    self.check_cancel()?;
                    self.entry(dir, &ent.name, ent.ino, ent.ftype, &path, &mut moves)?;
                    if ent.ftype == libc::S_IFDIR {
                        stack.push((ent.ino, path));
                    }
                }
            }
            // Made during the listing, a rename could show the entry again under
            // its new name, to be redacted twice (a pseudonym of a pseudonym).
            for m in moves {
                self.check_cancel()?;
                self.apply_move(dir, m)?;
            }
        }
        Ok(())
    }

    /// The root has no name to redact, but `user.*` xattrs like any directory;
    /// its path is "" (which `**` matches).
    fn root(&mut self) -> Result<(), SanitizeError> {
        let r = matched(self.profile, Path::new(""), true).redaction;
        if r.meta.is_empty() {
            return Ok(());
        }
        self.redact_xattrs(ROOT_INO, &r.meta, b"", &r.meta_rules.join(", "))
    }

    fn entry(
        &mut self,
        dir: u64,
        name: &[u8],
        ino: u64,
        ftype: u32,
        path: &[u8],
        moves: &mut Vec<Move>,
    ) -> Result<(), SanitizeError> {
        let p = Path::new(OsStr::from_bytes(path));
        let Matched { fate, redaction } = matched(self.profile, p, ftype == libc::S_IFDIR);
        let regular = ftype == libc::S_IFREG;
        match fate {
            Fate::Keep => {}
            Fate::Remove(rule) => {
                self.pool
                    .unlink(self.b, dir, name)
                    .map_err(|e| fs_err(rule, path, "removing", e))?;
                self.report.files_removed += 1;
                return Ok(());
            }
            Fate::Truncate(rule) if regular => {
                self.truncate(ino, 0)
                    .map_err(|e| fs_err(rule, path, "truncating", e))?;
                self.report.files_truncated += 1;
            }
            Fate::Replace(rule, content) if regular => {
                self.truncate(ino, 0)
                    .and_then(|_| self.write_all(ino, 0, content))
                    .map_err(|e| fs_err(rule, path, "replacing", e))?;
                self.report.files_replaced += 1;
            }
            Fate::Truncate(_) | Fate::Replace(..) => {}
        }
        if redaction.meta.is_empty() {
            return Ok(());
        }
        let meta_rules = redaction.meta_rules.join(", ");
        match ftype {
            libc::S_IFREG => self.file(ino, path, &redaction)?,
            libc::S_IFDIR => self.redact_xattrs(ino, &redaction.meta, path, &meta_rules)?,
            _ => {}
        }
        let planned = self.plan_move(name, ino, ftype, path, &redaction.meta, &meta_rules)?;
        moves.extend(planned);
        Ok(())
    }

    /// Redact a regular file's contents and xattrs now, or after the walk if it
    /// has several names.
    fn file(&mut self, ino: u64, path: &[u8], r: &Redaction<'a>) -> Result<(), SanitizeError> {
        let meta_rules = r.meta_rules.join(", ");
        let attr = self
            .pool
            .getattr(self.b, ino)
            .map_err(|e| fs_err(&meta_rules, path, "reading", e))?;
        if attr.nlink > 1 {
            // Another name of this file may match other rules (other detectors):
            // redacting it now with this name's rules alone and skipping it under
            // its other names would leave their values in it.
            self.linked
                .entry(ino)
                .or_insert_with(|| Linked {
                    redaction: Redaction::default(),
                    path: path.to_vec(),
                })
                .redaction
                .merge(r);
            return Ok(());
        }
        self.redact(ino, attr.size, r, path)
    }

    /// Redact every file with several names, once each, with the rules of all the
    /// names the walk met (one pass: a second one would pseudonymize pseudonyms).
    fn redact_linked(&mut self) -> Result<(), SanitizeError> {
        for (ino, l) in std::mem::take(&mut self.linked) {
            self.check_cancel()?;
            let size = self
                .pool
                .getattr(self.b, ino)
                .map_err(|e| fs_err(&l.redaction.meta_rules.join(", "), &l.path, "reading", e))?
                .size;
            self.redact(ino, size, &l.redaction, &l.path)?;
        }
        Ok(())
    }

    /// A regular file's contents (if a rule still applies to them) and xattrs.
    fn redact(
        &mut self,
        ino: u64,
        size: u64,
        r: &Redaction<'_>,
        path: &[u8],
    ) -> Result<(), SanitizeError> {
        if !r.content.is_empty() {
            let rules = r.content_rules.join(", ");
            self.redact_file(ino, size, &r.content, r.binary_ok, path, &rules)?;
        }
        self.redact_xattrs(ino, &r.meta, path, &r.meta_rules.join(", "))
    }

    fn check_cancel(&self) -> Result<(), SanitizeError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(SanitizeError::Cancelled);
        }
        Ok(())
    }

    fn report_progress(&mut self, path: &[u8]) {
        let p = Progress {
            files_scanned: self.report.files_scanned,
            bytes_scanned: self.report.bytes_scanned,
            current: String::from_utf8_lossy(path).into_owned(),
        };
        (self.progress)(p);
    }
}

fn fs_err(rule: &str, path: &[u8], what: &'static str, source: FsError) -> SanitizeError {
    SanitizeError::File {
        rule: rule.to_string(),
        path: String::from_utf8_lossy(path).into_owned(),
        what,
        source,
    }
}
