//! The per-pool pseudonym key: 32 random bytes, hex, in `POOL.sanitize-key`
//! (mode 0600) beside the pool. Created on first use; the same key gives the same
//! pseudonyms in every clone of the pool, so keep it as long as the pool.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::pseudo::MIN_KEY_LEN;
use super::SanitizeError;

/// `POOL.sanitize-key`.
pub fn key_path(pool: &Path) -> PathBuf {
    let mut s = pool.as_os_str().to_os_string();
    s.push(".sanitize-key");
    PathBuf::from(s)
}

/// Read the pool's key, creating it (from /dev/urandom) if there is none.
pub fn load_or_create_key(pool: &Path) -> Result<Vec<u8>, SanitizeError> {
    let path = key_path(pool);
    let io = |source| SanitizeError::Key {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => return parse_hex(text.trim()).ok_or(SanitizeError::KeyInvalid(path.clone())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(io)?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    f.write_all(format!("{hex}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    Ok(key.to_vec())
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() < 2 * MIN_KEY_LEN {
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
}
