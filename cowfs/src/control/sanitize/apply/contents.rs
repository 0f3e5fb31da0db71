//! Redaction of a regular file's contents, in place: the file is streamed through
//! the scanner and, from the first change on, the output goes to a hidden scratch
//! inode; at the end the output is shared back into the file with `clone_range`,
//! so inode number, owner, mode, xattrs and hard links stay. The unchanged bytes
//! before the first change are shared, not copied, and a file in which nothing
//! was found is not written at all (it keeps sharing its blocks with the parent).

use crate::fs::file::SeekWhence;
use crate::fs::readplan::FileBytes;
use crate::fs::{FsError, Owner, SetAttr, ROOT_INO};

use super::super::config::Redactor;
use super::super::scan::Scanner;
use super::super::SanitizeError;
use super::{fs_err, Walker, CHUNK};

/// A file with a NUL byte in its first 8 KiB (after any leading zeros: a hole
/// is no sign of binary) is binary: text detectors skip it unless a rule names
/// it explicitly (or sets `binary = true`).
const BINARY_SNIFF: usize = 8 << 10;

impl Walker<'_> {
    pub(super) fn redact_file(
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
        let mut out = Vec::with_capacity(CHUNK + 2 * super::super::detect::MAX_VALUE_LEN);
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
                self.report_progress(path);
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
            self.report_progress(path);
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
        self.report_progress(path);
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

    pub(super) fn truncate(&self, ino: u64, size: u64) -> Result<(), FsError> {
        let s = SetAttr {
            size: Some(size),
            ..SetAttr::default()
        };
        self.pool.setattr(self.b, ino, &s).map(|_| ())
    }

    pub(super) fn write_all(&self, ino: u64, mut off: u64, mut data: &[u8]) -> Result<(), FsError> {
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
}
