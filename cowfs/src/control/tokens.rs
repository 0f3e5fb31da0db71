//! Tokens: named secrets with scopes per branch pattern, stored hashed in
//! `POOL.tokens` beside the pool (JSON, mode 0600, replaced atomically). The secret
//! itself is shown once (at creation, or written to `POOL.token` by `cowfs init`)
//! and never stored or logged; a presented secret is hashed with SHA-256 and
//! compared in constant time with every stored hash.
//!
//! Each token has a random id, never reused. A token owns what it creates: the
//! pool's catalog records the creator's id in the branch's own record, in the
//! commit that creates it (pool/catalog.rs). Token files written before that kept
//! the owned branch ids here (`owns`); the daemon moves them into the catalog at
//! start (`legacy_owners`, `finish_upgrade`) and never writes them again.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use cowfs_ctl::proto::{Grant, Scope};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::files::{make_side_dir, read_private, replace_private, side_file};
use crate::pool::{BranchId, TokenId, NO_OWNER};

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
    side_file(pool, ".tokens")
}

/// `POOL.token`: the first admin token's secret, written by `cowfs init`.
pub fn secret_path(pool: &Path) -> PathBuf {
    side_file(pool, ".token")
}

/// Create the token store of a new pool with one token, `admin` (scope `admin:*`),
/// and write its secret to `POOL.token` (mode 0600, a new file renamed into
/// place: a symlink or someone else's file already at that name never receives
/// the secret). Called by `cowfs init`. Returns the path of the secret file.
pub fn init_admin_token(pool_path: &Path) -> Result<PathBuf, TokenError> {
    let store = store_path(pool_path);
    if store.exists() {
        return Err(TokenError::AlreadyInitialized(store));
    }
    make_side_dir(pool_path).map_err(|source| TokenError::Io {
        path: store.clone(),
        source,
    })?;
    let (secret, hash) = new_secret(&store)?;
    let file = TokenFile {
        version: FILE_VERSION,
        tokens: vec![StoredToken {
            name: ADMIN_TOKEN.into(),
            id: new_id(&store, |_| false)?,
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
    replace_private(&secret_file, format!("{secret}\n").as_bytes()).map_err(|source| {
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
    /// Random, non-zero; 0 in files written before ids existed (one is given at
    /// the next start).
    #[serde(default)]
    id: TokenId,
    /// Hex SHA-256 of the secret.
    sha256: String,
    scopes: Vec<Grant>,
    created_unix: u64,
    /// Ids of the branches and snapshots it created, in files written before
    /// the catalog recorded owners: read for the upgrade, never written.
    #[serde(default, skip_serializing)]
    owns: Vec<BranchId>,
}

/// A token as the permission checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenView {
    pub name: String,
    pub id: TokenId,
    pub scopes: Vec<Grant>,
    pub created_unix: u64,
    /// The branches it created, from the pool's catalog: the store leaves this
    /// empty and the dispatcher fills it for each request.
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
    /// Ids were given or legacy `owns` lists read at open: `finish_upgrade` saves.
    upgrade_pending: Mutex<bool>,
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
        let text = read_private(&path).map_err(io)?;
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
        let mut file = file;
        let mut ids = std::collections::HashSet::new();
        for t in &file.tokens {
            if unhex(&t.sha256).is_none() {
                return Err(TokenError::Corrupt {
                    path,
                    why: format!("token '{}' has no valid hash", t.name),
                });
            }
            if t.id != NO_OWNER && !ids.insert(t.id) {
                return Err(TokenError::Corrupt {
                    path,
                    why: format!("token '{}' has the id of another token", t.name),
                });
            }
        }
        let mut upgrade = false;
        for i in 0..file.tokens.len() {
            if file.tokens[i].id == NO_OWNER {
                let taken = |id| file.tokens.iter().any(|t| t.id == id);
                file.tokens[i].id = new_id(&path, taken)?;
                upgrade = true;
            }
            upgrade |= !file.tokens[i].owns.is_empty();
        }
        Ok(TokenStore {
            path,
            file: Mutex::new(file),
            upgrade_pending: Mutex::new(upgrade),
        })
    }

    /// Owners a token file written before the catalog recorded them still
    /// holds: (branch, token) pairs for `Pool::set_owners`.
    pub fn legacy_owners(&self) -> Vec<(BranchId, TokenId)> {
        let f = self.file.lock();
        f.tokens
            .iter()
            .flat_map(|t| t.owns.iter().map(move |b| (*b, t.id)))
            .collect()
    }

    /// After the legacy owners are committed to the catalog: save the file with
    /// every token's id and without `owns`. Until then a restart redoes the
    /// upgrade from the old file (ids given again, owners set again).
    pub fn finish_upgrade(&self) -> Result<(), TokenError> {
        let mut pending = self.upgrade_pending.lock();
        if *pending {
            self.update(|f| {
                for t in &mut f.tokens {
                    t.owns.clear();
                }
                Ok(())
            })?;
            *pending = false;
        }
        Ok(())
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

    /// The name of the token with id `id`, if it still exists.
    pub fn name_of(&self, id: TokenId) -> Option<String> {
        let f = self.file.lock();
        f.tokens.iter().find(|t| t.id == id).map(|t| t.name.clone())
    }

    /// A new token; returns its secret (shown once). Its id is none of the
    /// current tokens' and none `in_use` says the pool still records (a revoked
    /// token's branches must not pass to a new token).
    pub fn create(
        &self,
        name: &str,
        scopes: Vec<Grant>,
        in_use: impl Fn(TokenId) -> bool,
    ) -> Result<String, TokenError> {
        let mut f = self.file.lock();
        if f.tokens.iter().any(|t| t.name == name) {
            return Err(TokenError::Exists(name.into()));
        }
        let (secret, hash) = new_secret(&self.path)?;
        let id = new_id(&self.path, |id| {
            in_use(id) || f.tokens.iter().any(|t| t.id == id)
        })?;
        let mut next = f.clone();
        next.tokens.push(StoredToken {
            name: name.into(),
            id,
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
        id: t.id,
        scopes: t.scopes.clone(),
        created_unix: t.created_unix,
        owns: Vec::new(),
    }
}

/// 32 random bytes from the kernel, as `cwt_<64 hex digits>`, and their SHA-256.
fn new_secret(near: &Path) -> Result<(String, [u8; 32]), TokenError> {
    let raw: [u8; 32] = random_bytes(near)?;
    let secret = format!("{SECRET_PREFIX}{}", hex(&raw));
    let hash = Sha256::digest(secret.as_bytes()).into();
    Ok((secret, hash))
}

/// `N` bytes from the kernel's random source (errors name the token store `near`).
fn random_bytes<const N: usize>(near: &Path) -> Result<[u8; N], TokenError> {
    let mut raw = [0u8; N];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|source| TokenError::Io {
            path: near.to_path_buf(),
            source,
        })?;
    Ok(raw)
}

/// A random non-zero token id that `taken` does not refuse.
fn new_id(near: &Path, taken: impl Fn(TokenId) -> bool) -> Result<TokenId, TokenError> {
    loop {
        let id = u64::from_le_bytes(random_bytes(near)?);
        if id != NO_OWNER && !taken(id) {
            return Ok(id);
        }
    }
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
    // Hex digits only: `from_str_radix` would also take a sign ("+a").
    if b.len() != 64 || !b.iter().all(u8::is_ascii_hexdigit) {
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

    /// `POOL.token` was opened with create+truncate: a symlink planted there (the
    /// pool's directory may be shared) made `cowfs init` overwrite the file it
    /// names with the admin secret, and a file someone else created there (and
    /// holds open) received the secret.
    #[test]
    fn init_does_not_write_through_a_planted_secret_file() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("p.cowfs");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::os::unix::fs::symlink(&victim, secret_path(&pool)).unwrap();
        init_admin_token(&pool).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");

        let pool = dir.path().join("q.cowfs");
        std::fs::write(secret_path(&pool), "").unwrap();
        std::fs::set_permissions(secret_path(&pool), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        let mut held = File::open(secret_path(&pool)).unwrap();
        init_admin_token(&pool).unwrap();
        let mut seen = String::new();
        held.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "", "the secret reached a file opened before init");
        let secret = std::fs::read_to_string(secret_path(&pool)).unwrap();
        assert!(secret.starts_with(SECRET_PREFIX), "{secret}");
    }

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
            .create("agent", vec!["branch:prod".parse().unwrap()], |_| false)
            .unwrap();
        let agent_id = store.list()[1].id;
        assert_ne!(agent_id, NO_OWNER);
        assert_ne!(agent_id, store.list()[0].id);
        // Reopen: everything was saved, ids included.
        let store = TokenStore::open(&pool).unwrap();
        assert!(store.legacy_owners().is_empty());
        let session = store.authenticate(&agent).expect("agent");
        assert_eq!(session.name, "agent");
        let view = store.current(&session).unwrap();
        assert_eq!(view.id, agent_id);
        assert_eq!(store.name_of(agent_id).as_deref(), Some("agent"));
        store.revoke("agent").unwrap();
        assert_eq!(store.name_of(agent_id), None);
        assert_eq!(store.authenticate(&agent), None);
        assert!(matches!(
            store.revoke("agent"),
            Err(TokenError::NotFound(_))
        ));
        // The same name again is another token for the old session, with
        // another id (here: the pool still records the old one).
        store
            .create("agent", vec!["admin:*".parse().unwrap()], |id| {
                id == agent_id
            })
            .unwrap();
        assert_eq!(store.current(&session), None);
        assert_ne!(store.list()[1].id, agent_id);
    }

    #[test]
    fn a_file_from_before_ids_is_upgraded_once() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("p.cowfs");
        // As written before tokens had ids and the catalog had owners.
        let old = r#"{"version": 1, "tokens": [
            {"name": "admin", "sha256": "HASH", "scopes": [], "created_unix": 1, "owns": []},
            {"name": "agent", "sha256": "HASH", "scopes": [], "created_unix": 2, "owns": [4, 9]}
        ]}"#;
        let old = old.replace("HASH", &"ab".repeat(32));
        replace_private(&store_path(&pool), old.as_bytes()).unwrap();
        let store = TokenStore::open(&pool).unwrap();
        let ids: Vec<TokenId> = store.list().iter().map(|t| t.id).collect();
        assert!(ids.iter().all(|id| *id != NO_OWNER) && ids[0] != ids[1]);
        assert_eq!(store.legacy_owners(), vec![(4, ids[1]), (9, ids[1])]);
        // Not finished: a restart starts over from the old file.
        drop(store);
        let store = TokenStore::open(&pool).unwrap();
        assert_eq!(store.legacy_owners().len(), 2);
        store.finish_upgrade().unwrap();
        let text = std::fs::read_to_string(store_path(&pool)).unwrap();
        assert!(!text.contains("owns"), "{text}");
        let ids: Vec<TokenId> = store.list().iter().map(|t| t.id).collect();
        let store = TokenStore::open(&pool).unwrap();
        assert!(store.legacy_owners().is_empty());
        assert_eq!(store.list().iter().map(|t| t.id).collect::<Vec<_>>(), ids);
        assert!(!*store.upgrade_pending.lock());
    }

    #[test]
    fn two_tokens_with_one_id_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("p.cowfs");
        let t = r#"{"name": "N", "id": 5, "sha256": "HASH", "scopes": [], "created_unix": 1}"#;
        let file = format!(
            r#"{{"version": 1, "tokens": [{}, {}]}}"#,
            t.replace("N", "a"),
            t.replace("N", "b")
        );
        let file = file.replace("HASH", &"ab".repeat(32));
        replace_private(&store_path(&pool), file.as_bytes()).unwrap();
        let e = TokenStore::open(&pool).err().unwrap().to_string();
        assert!(e.contains("token 'b' has the id of another token"), "{e}");
    }

    /// `u8::from_str_radix` takes a sign: a stored hash of "+a" pairs was read
    /// as bytes 0x0a, so a file whose hashes are not hex loaded.
    #[test]
    fn a_hash_with_signs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("p.cowfs");
        let file = format!(
            r#"{{"version": 1, "tokens": [{{"name": "a", "id": 5, "sha256": "{}", "scopes": [], "created_unix": 1}}]}}"#,
            "+a".repeat(32)
        );
        replace_private(&store_path(&pool), file.as_bytes()).unwrap();
        let e = TokenStore::open(&pool).err().unwrap().to_string();
        assert!(e.contains("token 'a' has no valid hash"), "{e}");
    }
}
