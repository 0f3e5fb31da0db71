//! Tokens: named secrets with scopes per branch pattern, stored hashed in
//! `POOL.tokens` beside the pool (JSON, mode 0600, replaced atomically). The secret
//! itself is shown once (at creation, or written to `POOL.token` by `cowfs init`)
//! and never stored or logged; a presented secret is hashed with SHA-256 and
//! compared in constant time with every stored hash.
//!
//! The file also records which branches each token created (by branch id, which a
//! pool never reuses): a token owns what it creates.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use cowfs_ctl::proto::{Grant, Scope};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::files::{replace_private, with_suffix, write_private};
use crate::pool::BranchId;

/// Name of the token `cowfs init` creates.
pub const ADMIN_TOKEN: &str = "admin";
const FILE_VERSION: u32 = 1;
const SECRET_PREFIX: &str = "cwt_";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid token file ({why}); restore it from a backup or move it away and run `cowfs init`'s token step again")]
    Corrupt { path: PathBuf, why: String },
    #[error("{0}: tokens already exist for this pool; create more with `cowfs-ctl token create`")]
    AlreadyInitialized(PathBuf),
    #[error("a token named '{0}' already exists; revoke it first or pick another name")]
    Exists(String),
    #[error("no token named '{0}' (see `cowfs-ctl token list`)")]
    NotFound(String),
}

/// `POOL.tokens`: the hashed token store.
pub fn store_path(pool: &Path) -> PathBuf {
    with_suffix(pool, ".tokens")
}

/// `POOL.token`: the first admin token's secret, written by `cowfs init`.
pub fn secret_path(pool: &Path) -> PathBuf {
    with_suffix(pool, ".token")
}

/// Create the token store of a new pool with one token, `admin` (scope `admin:*`),
/// and write its secret to `POOL.token` (mode 0600). Called by `cowfs init`.
/// Returns the path of the secret file.
pub fn init_admin_token(pool_path: &Path) -> Result<PathBuf, TokenError> {
    let store = store_path(pool_path);
    if store.exists() {
        return Err(TokenError::AlreadyInitialized(store));
    }
    let (secret, hash) = new_secret(&store)?;
    let file = TokenFile {
        version: FILE_VERSION,
        tokens: vec![StoredToken {
            name: ADMIN_TOKEN.into(),
            sha256: hex(&hash),
            scopes: vec![Grant {
                scope: Scope::Admin,
                pattern: "*".into(),
            }],
            created_unix: unix_now(),
            owns: Vec::new(),
        }],
    };
    let secret_file = secret_path(pool_path);
    write_private(&secret_file, format!("{secret}\n").as_bytes()).map_err(|source| {
        TokenError::Io {
            path: secret_file.clone(),
            source,
        }
    })?;
    save(&store, &file)?;
    log::info!(
        "created admin token; its secret is in {}",
        secret_file.display()
    );
    Ok(secret_file)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TokenFile {
    version: u32,
    tokens: Vec<StoredToken>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredToken {
    name: String,
    /// Hex SHA-256 of the secret.
    sha256: String,
    scopes: Vec<Grant>,
    created_unix: u64,
    /// Ids of the branches and snapshots it created.
    #[serde(default)]
    owns: Vec<BranchId>,
}

/// A token as the permission checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenView {
    pub name: String,
    pub scopes: Vec<Grant>,
    pub created_unix: u64,
    pub owns: Vec<BranchId>,
}

/// Who a connection authenticated as: the token's name and its secret's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub name: String,
    sha256: [u8; 32],
}

/// The daemon's token store.
pub struct TokenStore {
    path: PathBuf,
    file: Mutex<TokenFile>,
}

impl TokenStore {
    /// Load `POOL.tokens`. A pool without one (created before tokens existed, or
    /// its token step failed) gets one now, exactly as `cowfs init` would make it.
    pub fn open(pool_path: &Path) -> Result<TokenStore, TokenError> {
        let path = store_path(pool_path);
        if !path.exists() {
            log::warn!(
                "{}: no token store; creating one with an admin token",
                path.display()
            );
            init_admin_token(pool_path)?;
        }
        let io = |source| TokenError::Io {
            path: path.clone(),
            source,
        };
        let mut text = String::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(io)?;
        let file: TokenFile = serde_json::from_str(&text).map_err(|e| TokenError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if file.version != FILE_VERSION {
            return Err(TokenError::Corrupt {
                path,
                why: format!(
                    "version {} (this daemon reads {FILE_VERSION})",
                    file.version
                ),
            });
        }
        for t in &file.tokens {
            if unhex(&t.sha256).is_none() {
                return Err(TokenError::Corrupt {
                    path,
                    why: format!("token '{}' has no valid hash", t.name),
                });
            }
        }
        Ok(TokenStore {
            path,
            file: Mutex::new(file),
        })
    }

    /// The token whose secret this is. Every stored hash is compared, each in
    /// constant time.
    pub fn authenticate(&self, secret: &str) -> Option<Authenticated> {
        let h: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let f = self.file.lock();
        let mut found = None;
        for t in &f.tokens {
            if let Some(stored) = unhex(&t.sha256) {
                if bool::from(stored.ct_eq(&h)) {
                    found = Some(Authenticated {
                        name: t.name.clone(),
                        sha256: h,
                    });
                }
            }
        }
        found
    }

    /// The token a connection authenticated as, if it still exists: the same
    /// name *and* secret, so that a token revoked and created again under its
    /// name is a different token to connections opened with the old secret.
    pub fn current(&self, a: &Authenticated) -> Option<TokenView> {
        self.file
            .lock()
            .tokens
            .iter()
            .find(|t| t.name == a.name && unhex(&t.sha256).is_some_and(|h| h == a.sha256))
            .map(view)
    }

    pub fn list(&self) -> Vec<TokenView> {
        self.file.lock().tokens.iter().map(view).collect()
    }

    /// A new token; returns its secret (shown once).
    pub fn create(&self, name: &str, scopes: Vec<Grant>) -> Result<String, TokenError> {
        let mut f = self.file.lock();
        if f.tokens.iter().any(|t| t.name == name) {
            return Err(TokenError::Exists(name.into()));
        }
        let (secret, hash) = new_secret(&self.path)?;
        let mut next = f.clone();
        next.tokens.push(StoredToken {
            name: name.into(),
            sha256: hex(&hash),
            scopes,
            created_unix: unix_now(),
            owns: Vec::new(),
        });
        save(&self.path, &next)?;
        *f = next;
        Ok(secret)
    }

    pub fn revoke(&self, name: &str) -> Result<(), TokenError> {
        self.update(|f| {
            let before = f.tokens.len();
            f.tokens.retain(|t| t.name != name);
            if f.tokens.len() == before {
                return Err(TokenError::NotFound(name.into()));
            }
            Ok(())
        })
    }

    /// Record that `token` created branch `id`.
    pub fn add_owned(&self, token: &str, ids: &[BranchId]) -> Result<(), TokenError> {
        self.update(|f| {
            if let Some(t) = f.tokens.iter_mut().find(|t| t.name == token) {
                t.owns.extend_from_slice(ids);
            }
            Ok(())
        })
    }

    /// Forget a deleted branch.
    pub fn forget_branch(&self, id: BranchId) -> Result<(), TokenError> {
        if self.owner_of(id).is_none() {
            return Ok(());
        }
        self.update(|f| {
            for t in &mut f.tokens {
                t.owns.retain(|x| *x != id);
            }
            Ok(())
        })
    }

    pub fn owner_of(&self, id: BranchId) -> Option<String> {
        self.file
            .lock()
            .tokens
            .iter()
            .find(|t| t.owns.contains(&id))
            .map(|t| t.name.clone())
    }

    /// Change a copy, write it durably, then make it current.
    fn update(
        &self,
        change: impl FnOnce(&mut TokenFile) -> Result<(), TokenError>,
    ) -> Result<(), TokenError> {
        let mut f = self.file.lock();
        let mut next = f.clone();
        change(&mut next)?;
        save(&self.path, &next)?;
        *f = next;
        Ok(())
    }
}

fn view(t: &StoredToken) -> TokenView {
    TokenView {
        name: t.name.clone(),
        scopes: t.scopes.clone(),
        created_unix: t.created_unix,
        owns: t.owns.clone(),
    }
}

/// 32 random bytes from the kernel, as `cwt_<64 hex digits>`, and their SHA-256.
fn new_secret(near: &Path) -> Result<(String, [u8; 32]), TokenError> {
    let mut raw = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|source| TokenError::Io {
            path: near.to_path_buf(),
            source,
        })?;
    let secret = format!("{SECRET_PREFIX}{}", hex(&raw));
    let hash = Sha256::digest(secret.as_bytes()).into();
    Ok((secret, hash))
}

/// Write the store durably and atomically.
fn save(path: &Path, file: &TokenFile) -> Result<(), TokenError> {
    let text = serde_json::to_vec_pretty(file).map_err(std::io::Error::other);
    text.and_then(|t| replace_private(path, &t))
        .map_err(|source| TokenError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(&b[2 * i..2 * i + 2]).ok()?;
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("p.cowfs");
        let secret_file = init_admin_token(&pool).unwrap();
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(store_path(&pool))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            init_admin_token(&pool),
            Err(TokenError::AlreadyInitialized(_))
        ));
        let secret = std::fs::read_to_string(&secret_file).unwrap();
        let secret = secret.trim();
        let store = TokenStore::open(&pool).unwrap();
        let name = |a: Option<Authenticated>| a.map(|a| a.name);
        assert_eq!(
            name(store.authenticate(secret)).as_deref(),
            Some(ADMIN_TOKEN)
        );
        assert_eq!(store.authenticate("cwt_wrong"), None);
        let text = std::fs::read_to_string(store_path(&pool)).unwrap();
        assert!(!text.contains(secret), "the secret is stored only hashed");
        let agent = store
            .create("agent", vec!["branch:prod".parse().unwrap()])
            .unwrap();
        store.add_owned("agent", &[7]).unwrap();
        // Reopen: everything was saved.
        let store = TokenStore::open(&pool).unwrap();
        let session = store.authenticate(&agent).expect("agent");
        assert_eq!(session.name, "agent");
        assert!(store.current(&session).is_some());
        assert_eq!(store.owner_of(7).as_deref(), Some("agent"));
        store.forget_branch(7).unwrap();
        assert_eq!(store.owner_of(7), None);
        store.revoke("agent").unwrap();
        assert_eq!(store.authenticate(&agent), None);
        assert!(matches!(
            store.revoke("agent"),
            Err(TokenError::NotFound(_))
        ));
        // The same name again is another token for the old session.
        store
            .create("agent", vec!["admin:*".parse().unwrap()])
            .unwrap();
        assert_eq!(store.current(&session), None);
    }
}
