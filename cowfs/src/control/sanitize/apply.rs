//! Apply a profile's file rules to one branch through the pool API: walk the tree,
//! decide each file's fate from the rules in order, and rewrite redacted files in
//! place through a hidden temporary inode (the rewritten bytes are shared back into
//! the file with `clone_range`, so inode number, owner, mode, xattrs and hard
//! links stay). Files in which nothing was found are not written at all and keep
//! sharing their blocks with the parent. A file with several names is rewritten
//! once, after the walk, with the rules of all its names.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::fs::file::SeekWhence;
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
    /// The first name met, for progress and errors.
    path: Vec<u8>,
}

enum Fate<'r> {
    Keep,
    Remove(&'r str),
    Truncate(&'r str),
    Replace(&'r str, &'r [u8]),
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
        let mut stack: Vec<(u64, Vec<u8>)> = vec![(ROOT_INO, Vec::new())];
        while let Some((dir, dpath)) = stack.pop() {
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
                    if ent.ftype == libc::S_IFDIR {
                        stack.push((ent.ino, path));
                    } else {
                        self.entry(dir, &ent.name, ent.ino, ent.ftype, &path)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dir: u64,
        name: &[u8],
        ino: u64,
        ftype: u32,
        path: &[u8],
    ) -> Result<(), SanitizeError> {
        let p = Path::new(OsStr::from_bytes(path));
        let mut fate = Fate::Keep;
        let mut redact: Vec<&Redactor> = Vec::new();
        let mut redact_rules: Vec<&str> = Vec::new();
        let mut binary_ok = false;
        let profile = self.profile;
        for rule in &profile.rules {
            if !rule.matches(p) {
                continue;
            }
            match &rule.action {
                Action::Remove => {
                    fate = Fate::Remove(&rule.label);
                    redact.clear();
                    break;
                }
                Action::Truncate => {
                    fate = Fate::Truncate(&rule.label);
                    redact.clear();
                    redact_rules.clear();
                }
                Action::Replace(c) => {
                    fate = Fate::Replace(&rule.label, c);
                    redact.clear();
                    redact_rules.clear();
                }
                Action::Redact(rs) => {
                    redact.extend(rs.iter());
                    redact_rules.push(&rule.label);
                    binary_ok |= rule.scans_binary(p);
                }
            }
        }
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
        if !regular || redact.is_empty() {
            return Ok(());
        }
        let rules = redact_rules.join(", ");
        let attr = self
            .pool
            .getattr(self.b, ino)
            .map_err(|e| fs_err(&rules, path, "reading", e))?;
        if attr.nlink > 1 {
            // Another name of this file may match other rules (other detectors):
            // redacting it now with this name's rules alone and skipping it under
            // its other names would leave their values in it.
            let l = self.linked.entry(ino).or_insert_with(|| Linked {
                redactors: Vec::new(),
                rules: Vec::new(),
                binary_ok: false,
                path: path.to_vec(),
            });
            for r in redact {
                if !l.redactors.iter().any(|have| std::ptr::eq(*have, r)) {
                    l.redactors.push(r);
                }
            }
            for r in redact_rules {
                if !l.rules.contains(&r) {
                    l.rules.push(r);
                }
            }
            l.binary_ok |= binary_ok;
            return Ok(());
        }
        self.redact_file(ino, attr.size, &redact, binary_ok, path, &rules)
    }

    /// Redact every file with several names, once each, with the rules of all the
    /// names the walk met (one pass: a second one would pseudonymize pseudonyms).
    fn redact_linked(&mut self) -> Result<(), SanitizeError> {
        for (ino, l) in std::mem::take(&mut self.linked) {
            self.check_cancel()?;
            let rules = l.rules.join(", ");
            let size = self
                .pool
                .getattr(self.b, ino)
                .map_err(|e| fs_err(&rules, &l.path, "reading", e))?
                .size;
            self.redact_file(ino, size, &l.redactors, l.binary_ok, &l.path, &rules)?;
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

fn fs_err(rule: &str, path: &[u8], what: &'static str, source: FsError) -> SanitizeError {
    SanitizeError::File {
        rule: rule.to_string(),
        path: String::from_utf8_lossy(path).into_owned(),
        what,
        source,
    }
}
