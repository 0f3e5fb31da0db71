//! Redaction of what sits beside a file's contents: its name, a symlink's target
//! and the values of `user.*` xattrs. Names and targets are checked when the
//! entry is met and changed once its directory's listing is complete (`Move`).

use crate::fs::items::MAX_NAME_LEN;
use crate::fs::{FsError, Owner};

use super::super::config::Redactor;
use super::super::scan::Scanner;
use super::super::SanitizeError;
use super::{fs_err, Walker};

/// A symlink target the pool stores is shorter than this.
const MAX_TARGET: usize = 4096;

/// A change to an entry's name or symlink target, made once its directory's
/// listing is complete.
pub(super) struct Move {
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

impl Walker<'_> {
    /// Redact the values of the inode's `user.*` xattrs. Other namespaces are the
    /// system's (security labels, ACLs, trusted data), not the user's.
    pub(super) fn redact_xattrs(
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
    pub(super) fn plan_move(
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
    pub(super) fn apply_move(&mut self, dir: u64, m: Move) -> Result<(), SanitizeError> {
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
