//! The files the daemon keeps beside the pool: the token store, the quota file,
//! the sanitize state (JSON) and the pseudonym key (hex). The daemon's user can
//! edit them and a crash or a full disk can leave anything there, so each is fed
//! to its real loader: any content loads or gives a typed error. A file that
//! loads is written back by the store's own writer and must load again to the
//! same content (decode, encode, decode).

use std::path::Path;

use cowfs::control::quotas::QuotaStore;
use cowfs::control::sanitize::{key_path, load_or_create_key};
use cowfs::control::sanitizing::{state_path, SanitizeState};
use cowfs::control::side_file;
use cowfs::control::tokens::{store_path, TokenStore};
use cowfs::pool::quota::QuotaLimits;
use cowfs::pool::{Pool, PoolOptions};
use cowfs::store::BLOCK_SIZE;

use super::scratch::Scratch;

/// First byte: which file; the rest is its content.
pub fn side_files(data: &[u8]) {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let dir = Scratch::new();
    let pool = dir.path().join("pool");
    match which % 4 {
        0 => token_store(&pool, text),
        1 => quota_file(&pool, text),
        2 => sanitize_state(&pool, text),
        _ => pseudonym_key(&pool, text),
    }
}

fn token_store(pool: &Path, text: &[u8]) {
    Scratch::write_private(&store_path(pool), text);
    let Ok(store) = TokenStore::open(pool) else {
        return;
    };
    let before = store.list();
    // `create` saves the whole store (ids given at open included).
    let grant = "read:*".parse().expect("grant");
    if store
        .create("fuzz-round-trip", vec![grant], |_| false)
        .is_err()
    {
        return;
    }
    let again = TokenStore::open(pool).expect("a token store cowfs wrote loads");
    let after = again.list();
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(after[..before.len()], before[..]);
}

/// The smallest pool: the quota file and the sanitize state are read against its
/// branches.
fn small_pool(path: &Path) -> Pool {
    let opts = PoolOptions {
        cache_bytes: 1 << 20,
        dirty_limit_bytes: 1 << 20,
        capacity_bytes: Some(256 * BLOCK_SIZE as u64),
        root_uid: 0,
        root_gid: 0,
    };
    Pool::create(path, &opts).expect("create a pool")
}

fn quota_file(pool_path: &Path, text: &[u8]) {
    let pool = small_pool(pool_path);
    Scratch::write_private(&side_file(pool_path, ".quotas"), text);
    let Ok(store) = QuotaStore::open(&pool) else {
        return;
    };
    let before = pool.quota_list();
    // Forgetting a branch that does not exist saves the file unchanged otherwise.
    store
        .set(u64::MAX, QuotaLimits::default())
        .expect("write the quota file");
    QuotaStore::open(&pool).expect("a quota file cowfs wrote loads");
    assert_eq!(pool.quota_list(), before);
}

fn sanitize_state(pool_path: &Path, text: &[u8]) {
    let pool = small_pool(pool_path);
    Scratch::write_private(&state_path(pool_path), text);
    // A version-1 file is upgraded (against the pool's branches) and written back
    // as version 2 here; what follows checks that version 2 round trip.
    let Ok(state) = SanitizeState::open(&pool) else {
        return;
    };
    let running = state.running();
    let ids: Vec<u64> = running.iter().map(|r| r.id).chain(0..4).collect();
    let required: Vec<Option<String>> = ids.iter().map(|&id| state.required(id)).collect();
    // Ending a clone that is not running saves the file unchanged otherwise.
    let absent = (0..).find(|id| !ids.contains(id)).expect("a free id");
    state.end(absent).expect("write the sanitize state");
    let again = SanitizeState::open(&pool).expect("a sanitize state cowfs wrote loads");
    assert_eq!(again.running(), running);
    let again_required: Vec<Option<String>> = ids.iter().map(|&id| again.required(id)).collect();
    assert_eq!(again_required, required);
}

fn pseudonym_key(pool: &Path, text: &[u8]) {
    Scratch::write_private(&key_path(pool), text);
    if let Ok(key) = load_or_create_key(pool) {
        // cowfs writes the key as hex digits: a key that loads is what they say.
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let text = std::str::from_utf8(text).expect("a key that loads is text");
        assert!(
            text.trim().eq_ignore_ascii_case(&hex),
            "key file {text:?} loaded as {hex}"
        );
    }
}
