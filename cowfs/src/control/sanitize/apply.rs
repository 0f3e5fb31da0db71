//! Apply a profile's file rules to one branch through the pool API: walk the tree,
//! decide each file's fate from the rules in order, and rewrite redacted files in
//! place through a hidden temporary inode (the rewritten bytes are shared back into
//! the file with `clone_range`, so inode number, owner, mode, xattrs and hard
//! links stay). Files in which nothing was found are not written at all and keep
//! sharing their blocks with the parent. A file with several names is rewritten
//! once, after the walk, with the rules of all its names.
//!
//! `redact` rules also apply to what sits beside the contents: every matching
//! entry's name (directories included), a symlink's target and the values of
//! `user.*` xattrs. Renames and rewritten symlinks of one directory wait until
//! its listing is complete, so no entry is met (and redacted) twice.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::fs::file::SeekWhence;
use crate::fs::items::MAX_NAME_LEN;
use crate::fs::readplan::FileBytes;
use crate::fs::{FsError, Owner, SetAttr, ROOT_INO};
use crate::pool::{BranchId, Pool};

use super::config::{Action, Profile, Redactor};
use super::pseudo::Pseudonymizer;
use super::scan::Scanner;
use super::{Progress, SanitizeError, SanitizeReport};

/// Bytes read from a file at a time.
pub const CHUNK: usize = 1 << 20;
/// A file with a NUL byte in its first 8 KiB (after any leading zeros: a hole
/// is no sign of binary) is binary: text detectors skip it unless a rule names
/// it explicitly (or sets `binary = true`).
const BINARY_SNIFF: usize = 8 << 10;
const READDIR_BATCH: usize = 256;
/// A symlink target the pool stores is shorter than this.
const MAX_TARGET: usize = 4096;

pub(super) struct Walker<'a> {
    pub pool: &'a Pool,
    pub b: BranchId,
    pub profile: &'a Profile,
    pub pseudo: &'a Pseudonymizer,
    pub progress: &'a mut dyn FnMut(Progress),
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
    redactors: Vec<&'a Redactor>,
    rules: Vec<&'a str>,
    binary_ok: bool,
    /// For the `user.*` xattrs (see `Matched::meta`).
    meta: Vec<&'a Redactor>,
    meta_rules: Vec<&'a str>,
    /// The first name met, for progress and errors.
    path: Vec<u8>,
}

enum Fate<'r> {
    Keep,
    Remove(&'r str),
    Truncate(&'r str),
    Replace(&'r str, &'r [u8]),
}

/// What the rules say about one entry.
struct Matched<'r> {
    fate: Fate<'r>,
    /// For the contents: a later `truncate` or `replace` makes earlier ones moot.
    content: Vec<&'r Redactor>,
    content_rules: Vec<&'r str>,
    binary_ok: bool,
    /// For the name, a symlink's target and `user.*` xattrs: every matching
    /// `redact` rule, since a truncated or replaced file keeps all three.
    meta: Vec<&'r Redactor>,
    meta_rules: Vec<&'r str>,
}

/// A change to an entry's name or symlink target, made once its directory's
/// listing is complete.
struct Move {
    name: Vec<u8>,
    ino: u64,
    /// The redacted name, if it differs.
    new_name: Option<Vec<u8>>,
    /// A symlink's redacted target, if it differs.
    target: Option<Vec<u8>>,
    /// The original path and the rules, for errors.
    path: Vec<u8>,
    rules: String,
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
        let m = self.matched(Path::new(""), true);
        if m.meta.is_empty() {
            return Ok(());
        }
        self.redact_xattrs(ROOT_INO, &m.meta, b"", &m.meta_rules.join(", "))
    }

    /// The rules that apply to `path`, in order. Directories are matched by
    /// `redact` rules only: removing, truncating or replacing is for files.
    fn matched(&self, path: &Path, is_dir: bool) -> Matched<'a> {
        let mut m = Matched {
            fate: Fate::Keep,
            content: Vec::new(),
            content_rules: Vec::new(),
            binary_ok: false,
            meta: Vec::new(),
            meta_rules: Vec::new(),
        };
        let profile = self.profile;
        for rule in &profile.rules {
            if !rule.matches(path) {
                continue;
            }
            match &rule.action {
                Action::Redact(rs) => {
                    m.content.extend(rs.iter());
                    m.content_rules.push(&rule.label);
                    m.binary_ok |= rule.scans_binary(path);
                    m.meta.extend(rs.iter());
                    m.meta_rules.push(&rule.label);
                }
                _ if is_dir => {}
                Action::Remove => {
                    m.fate = Fate::Remove(&rule.label);
                    m.content.clear();
                    m.meta.clear();
                    break;
                }
                Action::Truncate => {
                    m.fate = Fate::Truncate(&rule.label);
                    m.content.clear();
                    m.content_rules.clear();
                }
                Action::Replace(c) => {
                    m.fate = Fate::Replace(&rule.label, c);
                    m.content.clear();
                    m.content_rules.clear();
                }
            }
        }
        m
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
        let m = self.matched(p, ftype == libc::S_IFDIR);
        let regular = ftype == libc::S_IFREG;
        match m.fate {
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
        if m.meta.is_empty() {
            return Ok(());
        }
        let meta_rules = m.meta_rules.join(", ");
        match ftype {
            libc::S_IFREG => self.file(ino, path, &m)?,
            libc::S_IFDIR => self.redact_xattrs(ino, &m.meta, path, &meta_rules)?,
            _ => {}
        }
        let planned = self.plan_move(name, ino, ftype, path, &m.meta, &meta_rules)?;
        moves.extend(planned);
        Ok(())
    }

    /// Redact a regular file's contents and xattrs now, or after the walk if it
    /// has several names.
    fn file(&mut self, ino: u64, path: &[u8], m: &Matched<'a>) -> Result<(), SanitizeError> {
        let rules = m.content_rules.join(", ");
        let meta_rules = m.meta_rules.join(", ");
        let attr = self
            .pool
            .getattr(self.b, ino)
            .map_err(|e| fs_err(&meta_rules, path, "reading", e))?;
        if attr.nlink > 1 {
            // Another name of this file may match other rules (other detectors):
            // redacting it now with this name's rules alone and skipping it under
            // its other names would leave their values in it.
            let l = self.linked.entry(ino).or_insert_with(|| Linked {
                redactors: Vec::new(),
                rules: Vec::new(),
                binary_ok: false,
                meta: Vec::new(),
                meta_rules: Vec::new(),
                path: path.to_vec(),
            });
            merge_redactors(&mut l.redactors, &m.content);
            merge_rules(&mut l.rules, &m.content_rules);
            merge_redactors(&mut l.meta, &m.meta);
            merge_rules(&mut l.meta_rules, &m.meta_rules);
            l.binary_ok |= m.binary_ok;
            return Ok(());
        }
        if !m.content.is_empty() {
            self.redact_file(ino, attr.size, &m.content, m.binary_ok, path, &rules)?;
        }
        self.redact_xattrs(ino, &m.meta, path, &meta_rules)
    }

    /// Redact every file with several names, once each, with the rules of all the
    /// names the walk met (one pass: a second one would pseudonymize pseudonyms).
    fn redact_linked(&mut self) -> Result<(), SanitizeError> {
        for (ino, l) in std::mem::take(&mut self.linked) {
            self.check_cancel()?;
            let rules = l.rules.join(", ");
            let meta_rules = l.meta_rules.join(", ");
            if !l.redactors.is_empty() {
                let size = self
                    .pool
                    .getattr(self.b, ino)
                    .map_err(|e| fs_err(&rules, &l.path, "reading", e))?
                    .size;
                self.redact_file(ino, size, &l.redactors, l.binary_ok, &l.path, &rules)?;
            }
            self.redact_xattrs(ino, &l.meta, &l.path, &meta_rules)?;
        }
        Ok(())
    }

    /// Redact the values of the inode's `user.*` xattrs. Other namespaces are the
    /// system's (security labels, ACLs, trusted data), not the user's.
    fn redact_xattrs(
        &mut self,
        ino: u64,
        redactors: &[&Redactor],
        path: &[u8],
        rules: &str,
    ) -> Result<(), SanitizeError> {
        let err = |e| fs_err(rules, path, "redacting the xattrs of", e);
        let names = self.pool.listxattr(self.b, ino).map_err(err)?;
        for name in names.split(|&c| c == 0).filter(|n| n.starts_with(b"user.")) {
            let value = self.pool.getxattr(self.b, ino, name).map_err(err)?;
            if let Some(new) = self.redact_value(redactors, &value) {
                self.pool
                    .setxattr(self.b, ino, name, &new, libc::XATTR_REPLACE as u32)
                    .map_err(err)?;
                self.report.xattrs_changed += 1;
            }
        }
        Ok(())
    }

    /// Redact a short value (a name, a symlink target, an xattr) whole; `None` if
    /// nothing was found. Never sniffed for binary: it is no file's contents.
    fn redact_value(&mut self, redactors: &[&Redactor], value: &[u8]) -> Option<Vec<u8>> {
        let mut scanner = Scanner::new(redactors, self.pseudo);
        let mut out = Vec::with_capacity(value.len());
        if !scanner.feed(value, true, &mut out) {
            return None;
        }
        for (k, n) in scanner.counts {
            *self.report.values_replaced.entry(k).or_insert(0) += n;
        }
        Some(out)
    }

    /// The entry's redacted name and, for a symlink, its redacted target, if
    /// they differ. Both are checked now, before anything of the directory
    /// changes.
    fn plan_move(
        &mut self,
        name: &[u8],
        ino: u64,
        ftype: u32,
        path: &[u8],
        redactors: &[&Redactor],
        rules: &str,
    ) -> Result<Option<Move>, SanitizeError> {
        let new_name = self.redact_value(redactors, name);
        if let Some(n) = &new_name {
            check_name(n).map_err(|why| name_err(rules, path, "name", n, why))?;
        }
        let mut target = None;
        if ftype == libc::S_IFLNK {
            let t = self
                .pool
                .readlink(self.b, ino)
                .map_err(|e| fs_err(rules, path, "reading the symlink", e))?;
            target = self.redact_value(redactors, &t);
        }
        if let Some(t) = &target {
            check_target(t).map_err(|why| name_err(rules, path, "symlink target", t, why))?;
        }
        if new_name.is_none() && target.is_none() {
            return Ok(None);
        }
        Ok(Some(Move {
            name: name.to_vec(),
            ino,
            new_name,
            target,
            path: path.to_vec(),
            rules: rules.to_string(),
        }))
    }

    /// Rename the entry (never over another one) or, for a new target, replace
    /// the symlink: a symlink's target cannot change in place.
    fn apply_move(&mut self, dir: u64, m: Move) -> Result<(), SanitizeError> {
        let to = m.new_name.as_deref().unwrap_or(&m.name);
        let what = match m.target {
            Some(_) => "rewriting the symlink",
            None => "renaming",
        };
        let err = |e: FsError| match e.errno() {
            libc::EEXIST => name_err(&m.rules, &m.path, "name", to, "is taken by another entry"),
            _ => fs_err(&m.rules, &m.path, what, e),
        };
        match &m.target {
            Some(t) => self.replace_symlink(dir, &m, to, t).map_err(err)?,
            None => self
                .pool
                .rename(self.b, dir, &m.name, dir, to, libc::RENAME_NOREPLACE)
                .map_err(err)?,
        }
        self.report.names_changed += u64::from(m.new_name.is_some());
        self.report.symlinks_changed += u64::from(m.target.is_some());
        Ok(())
    }

    /// A new symlink named `to` with `target`, in place of `m`'s: same owner and
    /// non-`user.*` xattrs (`user.*` cannot be set on a symlink through the kernel).
    fn replace_symlink(&self, dir: u64, m: &Move, to: &[u8], target: &[u8]) -> Result<(), FsError> {
        let attr = self.pool.getattr(self.b, m.ino)?;
        let mut xattrs = Vec::new();
        for name in self.pool.listxattr(self.b, m.ino)?.split(|&c| c == 0) {
            if !name.is_empty() && !name.starts_with(b"user.") {
                xattrs.push((name.to_vec(), self.pool.getxattr(self.b, m.ino, name)?));
            }
        }
        if to != m.name.as_slice() && self.pool.lookup(self.b, dir, to).is_ok() {
            return Err(FsError::Posix(libc::EEXIST));
        }
        self.pool.unlink(self.b, dir, &m.name)?;
        let owner = Owner {
            uid: attr.uid,
            gid: attr.gid,
        };
        let new = self.pool.symlink(self.b, dir, to, target, owner)?;
        for (name, value) in xattrs {
            self.pool.setxattr(self.b, new.ino, &name, &value, 0)?;
        }
        Ok(())
    }

    /// Does the file hold a NUL in the `BINARY_SNIFF` bytes after its leading
    /// zeros? Those are skipped (holes by `SEEK_DATA`): a log rotated with
    /// `copytruncate` while its writer keeps its offset starts with a hole, and
    /// a hole ending inside a block reads as written zeros up to the text.
    fn looks_binary(&self, ino: u64, size: u64) -> Result<bool, FsError> {
        let mut off = 0;
        let start = loop {
            off = match self.pool.seek(self.b, ino, off, SeekWhence::Data) {
                Ok(d) => d,
                // Nothing but holes: no content to call binary.
                Err(e) if e.errno() == libc::ENXIO => return Ok(false),
                Err(e) => return Err(e),
            };
            let want = CHUNK.min(usize::try_from(size - off).unwrap_or(CHUNK));
            let bytes = self.pool.read_file_bytes(self.b, ino, off, want)?;
            match bytes.as_slice().iter().position(|&c| c != 0) {
                Some(i) => break off + i as u64,
                None if bytes.as_slice().is_empty() => return Ok(false),
                None => off += bytes.as_slice().len() as u64,
            }
            if off >= size {
                return Ok(false);
            }
        };
        let want = BINARY_SNIFF.min(usize::try_from(size - start).unwrap_or(BINARY_SNIFF));
        let sniff = self.pool.read_file_bytes(self.b, ino, start, want)?;
        Ok(sniff.as_slice().contains(&0))
    }

    fn truncate(&self, ino: u64, size: u64) -> Result<(), FsError> {
        let s = SetAttr {
            size: Some(size),
            ..SetAttr::default()
        };
        self.pool.setattr(self.b, ino, &s).map(|_| ())
    }

    fn write_all(&self, ino: u64, mut off: u64, mut data: &[u8]) -> Result<(), FsError> {
        while !data.is_empty() {
            let n = self.pool.write_file(self.b, ino, off, data)?;
            if n == 0 {
                return Err(FsError::Posix(libc::EIO));
            }
            data = &data[n..];
            off += n as u64;
        }
        Ok(())
    }

    /// The scratch inode, empty: created on first use in the root directory and
    /// unlinked at once (kept alive by an open count), so it is never visible.
    fn scratch(&mut self) -> Result<u64, FsError> {
        if let Some(t) = self.tmp {
            self.truncate(t, 0)?;
            return Ok(t);
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(".cowfs-sanitize-{}-{nanos}", std::process::id());
        let owner = Owner { uid: 0, gid: 0 };
        let a = self.pool.mknod(
            self.b,
            ROOT_INO,
            name.as_bytes(),
            libc::S_IFREG | 0o600,
            0,
            owner,
        )?;
        self.pool.open_inode(self.b, a.ino);
        self.tmp = Some(a.ino);
        self.pool.unlink(self.b, ROOT_INO, name.as_bytes())?;
        Ok(a.ino)
    }

    fn redact_file(
        &mut self,
        ino: u64,
        size: u64,
        redactors: &[&Redactor],
        binary_ok: bool,
        path: &[u8],
        rules: &str,
    ) -> Result<(), SanitizeError> {
        let err = |what, e| fs_err(rules, path, what, e);
        let pseudo = self.pseudo;
        let mut scanner = Scanner::new(redactors, pseudo);
        let mut out = Vec::with_capacity(CHUNK + 2 * super::detect::MAX_VALUE_LEN);
        let mut off = 0u64;
        let mut out_off = 0u64;
        let mut tmp: Option<u64> = None;
        loop {
            self.check_cancel()?;
            let want = CHUNK.min(usize::try_from(size - off).unwrap_or(CHUNK));
            // The pool's own buffer: a `Vec` of its own would copy every chunk again.
            let bytes = if want == 0 {
                FileBytes::from(Vec::new())
            } else {
                self.pool
                    .read_file_bytes(self.b, ino, off, want)
                    .map_err(|e| err("reading", e))?
            };
            let chunk = bytes.as_slice();
            // The first chunk decides; a NUL there may be a hole's zeros, so only
            // then are the file's data extents looked at.
            if off == 0
                && !binary_ok
                && chunk[..chunk.len().min(BINARY_SNIFF)].contains(&0)
                && self
                    .looks_binary(ino, size)
                    .map_err(|e| err("reading", e))?
            {
                self.report.binary_files_skipped += 1;
                self.report.files_scanned += 1;
                let p = self.progress_now(path);
                (self.progress)(p);
                return Ok(());
            }
            off += chunk.len() as u64;
            let eof = chunk.is_empty() || off >= size;
            out.clear();
            let changed = scanner.feed(chunk, eof, &mut out);
            if changed && tmp.is_none() {
                // Everything before this output was unchanged input: share it.
                let t = self.scratch().map_err(|e| err("writing", e))?;
                let aligned = out_off & !(crate::store::BLOCK_SIZE as u64 - 1);
                for (from, len) in [(0, aligned), (aligned, out_off - aligned)] {
                    if len > 0 {
                        self.pool
                            .clone_range(self.b, ino, from, t, from, len)
                            .map_err(|e| err("writing", e))?;
                    }
                }
                tmp = Some(t);
            }
            if let Some(t) = tmp {
                self.write_all(t, out_off, &out)
                    .map_err(|e| err("writing", e))?;
            }
            out_off += out.len() as u64;
            self.report.bytes_scanned += chunk.len() as u64;
            let p = self.progress_now(path);
            (self.progress)(p);
            if eof {
                break;
            }
        }
        for (k, n) in scanner.counts {
            *self.report.values_replaced.entry(k).or_insert(0) += n;
        }
        if let Some(t) = tmp {
            self.truncate(ino, 0).map_err(|e| err("writing", e))?;
            if out_off > 0 {
                self.pool
                    .clone_range(self.b, t, 0, ino, 0, out_off)
                    .map_err(|e| err("writing", e))?;
            }
            self.truncate(t, 0).map_err(|e| err("writing", e))?;
            self.report.files_changed += 1;
        }
        self.report.files_scanned += 1;
        let p = self.progress_now(path);
        (self.progress)(p);
        Ok(())
    }

    fn check_cancel(&self) -> Result<(), SanitizeError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(SanitizeError::Cancelled);
        }
        Ok(())
    }

    fn progress_now(&self, path: &[u8]) -> Progress {
        Progress {
            files_scanned: self.report.files_scanned,
            bytes_scanned: self.report.bytes_scanned,
            current: String::from_utf8_lossy(path).into_owned(),
        }
    }
}

fn merge_redactors<'r>(into: &mut Vec<&'r Redactor>, from: &[&'r Redactor]) {
    for r in from {
        if !into.iter().any(|have| std::ptr::eq(*have, *r)) {
            into.push(r);
        }
    }
}

fn merge_rules<'r>(into: &mut Vec<&'r str>, from: &[&'r str]) {
    for r in from {
        if !into.contains(r) {
            into.push(r);
        }
    }
}

/// Why a redacted name cannot be a directory entry (a mask of '/' or NUL, a
/// dropped value that was the whole name, a longer pseudonym...).
fn check_name(name: &[u8]) -> Result<(), &'static str> {
    match name {
        b"" => Err("is empty"),
        b"." | b".." => Err("is '.' or '..'"),
        _ if name.contains(&b'/') || name.contains(&0) => Err("holds '/' or NUL"),
        _ if name.len() > MAX_NAME_LEN => Err("is longer than 255 bytes"),
        _ => Ok(()),
    }
}

/// Why a redacted symlink target cannot be stored.
fn check_target(target: &[u8]) -> Result<(), &'static str> {
    match target {
        b"" => Err("is empty"),
        _ if target.contains(&0) => Err("holds NUL"),
        _ if target.len() >= MAX_TARGET => Err("is 4096 bytes or longer"),
        _ => Ok(()),
    }
}

fn name_err(rule: &str, path: &[u8], what: &'static str, new: &[u8], why: &str) -> SanitizeError {
    SanitizeError::Name {
        rule: rule.to_string(),
        path: String::from_utf8_lossy(path).into_owned(),
        what,
        why: format!("'{}' {why}", String::from_utf8_lossy(new)),
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
