//! A private directory for one fuzz input, removed when dropped. The decoders of
//! files beside the pool and of the control socket's replies are fuzzed through
//! their real entry points, which take paths, so each input gets a fresh directory
//! and leaves nothing behind.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cowfs-fuzz-{}-{n}", std::process::id()));
        // A directory of an earlier process with the same pid that was killed.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("create the scratch directory");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Write `data` to `path` as cowfs writes its private files (mode 0600), so
    /// that the readers' ownership and mode checks pass and the content is reached.
    pub fn write_private(path: &Path, data: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .expect("create a private file");
        f.write_all(data).expect("write a private file");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
