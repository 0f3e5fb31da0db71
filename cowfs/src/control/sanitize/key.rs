//! The per-pool pseudonym key: 32 random bytes, hex, in `POOL.sanitize-key`
//! (mode 0600) beside the pool. Created on first use; the same key gives the same
//! pseudonyms in every clone of the pool, so keep it as long as the pool.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::super::files::{private_temp, read_private, sync_parent};
use super::SanitizeError;

/// Bytes in a key: every key cowfs creates has exactly this many, so a file
/// holding another number of hex digits is damaged (a key cut short would
/// silently give other pseudonyms) and is refused.
const KEY_LEN: usize = 32;

/// `POOL.sanitize-key`.
pub fn key_path(pool: &Path) -> PathBuf {
    crate::control::side_file(pool, ".sanitize-key")
}

/// Read the pool's key, creating it (from /dev/urandom) if there is none.
pub fn load_or_create_key(pool: &Path) -> Result<Vec<u8>, SanitizeError> {
    let path = key_path(pool);
    if let Some(key) = read_key(&path)? {
        return Ok(key);
    }
    let mut key = [0u8; KEY_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|source| key_io(&path, source))?;
    match create_key(&path, &key) {
        Ok(()) => Ok(key.to_vec()),
        // Another creator got there first: everyone uses its key.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read_key(&path)?.ok_or_else(|| key_io(&path, e))
        }
        Err(e) => Err(key_io(&path, e)),
    }
}

fn key_io(path: &Path, source: std::io::Error) -> SanitizeError {
    SanitizeError::Key {
        path: path.to_path_buf(),
        source,
    }
}

/// The key in `path`, None if there is no such file.
fn read_key(path: &Path) -> Result<Option<Vec<u8>>, SanitizeError> {
    match read_private(path) {
        Ok(text) => parse_hex(text.trim())
            .map(Some)
            .ok_or(SanitizeError::KeyInvalid(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(key_io(path, e)),
    }
}

/// Write `key` to a private temporary file, fsync it, then give it the name
/// `path` only if that name is free (rename without replace, or link), and
/// fsync the directory. The name never shows a partial key, not even after a
/// crash, and a key that exists is never replaced: AlreadyExists then.
fn create_key(path: &Path, key: &[u8]) -> std::io::Result<()> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut tmp = private_temp(path)?;
    tmp.write_all(format!("{hex}\n").as_bytes())?;
    tmp.as_file().sync_all()?;
    // On failure the returned temporary file is dropped, which removes it.
    tmp.persist_noclobber(path).map_err(|e| e.error)?;
    sync_parent(path)
}

/// Exactly `2 * KEY_LEN` hex digits (checked first: `from_str_radix` would also
/// take a sign, "+a").
fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 2 * KEY_LEN || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_private_and_stable() {
        let dir = std::env::temp_dir().join(format!("cowfs-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pool = dir.join("pool");
        let k1 = load_or_create_key(&pool).unwrap();
        let k2 = load_or_create_key(&pool).unwrap();
        assert_eq!(k1.len(), 32);
        assert_eq!(k1, k2);
        let mode = std::fs::metadata(key_path(&pool))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(key_path(&pool), "abcd\n").unwrap();
        assert!(matches!(
            load_or_create_key(&pool),
            Err(SanitizeError::KeyInvalid(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A key file cut short (here 20 of 32 bytes) was used as it was: every
    /// pseudonym changed without a word.
    #[test]
    fn a_key_of_the_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        let full = hex_of(&load_or_create_key(&pool).unwrap());
        for bad in [&full[..40], &full[..62], &format!("{full}00")] {
            std::fs::write(key_path(&pool), format!("{bad}\n")).unwrap();
            let e = load_or_create_key(&pool).unwrap_err();
            assert!(matches!(e, SanitizeError::KeyInvalid(_)), "{e:?}");
            assert!(e.to_string().contains("64 hex digits"), "{e}");
        }
        std::fs::write(key_path(&pool), format!("{full}\n")).unwrap();
        assert_eq!(hex_of(&load_or_create_key(&pool).unwrap()), full);
    }

    /// `u8::from_str_radix` takes a sign: "+a" was read as the byte 0x0a, so a
    /// file of 64 characters that are not all hex digits loaded as a key
    /// (found by the side_files fuzz target).
    #[test]
    fn a_key_with_signs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        load_or_create_key(&pool).unwrap();
        std::fs::write(key_path(&pool), format!("{}\n", "+a".repeat(32))).unwrap();
        let e = load_or_create_key(&pool).unwrap_err();
        assert!(matches!(e, SanitizeError::KeyInvalid(_)), "{e:?}");
    }

    /// Daemons starting together on a new pool: each saw no key and created one
    /// (O_EXCL, then write): the losers failed on the existing name or read the
    /// winner's file before its key was written. Now every one gets the one key
    /// that was published, and no temporary file is left.
    #[test]
    fn racing_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let pool = dir.path().join(format!("pool{round}"));
            let start = std::sync::Barrier::new(8);
            let keys: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            load_or_create_key(&pool)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let on_disk = load_or_create_key(&pool).unwrap();
            for k in keys {
                assert_eq!(k.unwrap_or_else(|e| panic!("round {round}: {e}")), on_disk);
            }
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 20);
    }

    fn hex_of(k: &[u8]) -> String {
        k.iter().map(|b| format!("{b:02x}")).collect()
    }
}
