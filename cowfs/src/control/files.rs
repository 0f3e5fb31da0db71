//! Private files beside the pool (`POOL.token`, `POOL.tokens`, `POOL.quotas`,
//! `POOL.sanitize-state`; for a pool on a block device under `/var/lib/cowfs`, see
//! `side_file`): mode 0600, written durably, replaced atomically.
//!
//! The pool's directory may be shared with other users, so nothing here opens an
//! existing name for writing: the data goes to a new file with a random name,
//! created with O_CREAT|O_EXCL (which never follows a symlink and fails on any
//! existing name), and is renamed over the target. A symlink or a hard link
//! someone planted at the target or at a predictable temporary name is replaced
//! (or avoided), never written through, and a file someone else created at the
//! target (and may hold open) never receives the secrets.
//!
//! For the same reason a file is read only if it is what cowfs writes: a regular
//! file (not a symlink) of the daemon's user that no one else may read or write.
//! One planted before cowfs first wrote the name (a token store granting its
//! author admin, a pseudonym key its author knows, a sanitize state without the
//! required profiles) is refused, not trusted.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `POOL` + `suffix`, e.g. `pool.cowfs.tokens`.
pub fn with_suffix(pool: &Path, suffix: &str) -> PathBuf {
    let mut s = pool.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Where the side files of pools on block devices live (`$COWFS_STATE_DIR`
/// overrides it).
pub const STATE_DIR: &str = "/var/lib/cowfs";

/// A side file of the pool at `pool` (`suffix` `.tokens`, `.token`, `.quotas`,
/// `.sanitize-key`, `.sanitize-state`, `.lock`, `.sock`, `.mnt`): beside a pool
/// file; for a pool on a block device, in the state directory under the pool's id
/// (`/var/lib/cowfs/<pool id>/pool.tokens`). Beside the device they would land in
/// `/dev`, a memory filesystem: after a reboot the tokens, the pseudonym key and
/// the sanitize state (unfinished clones, required profiles) would be gone. Keyed
/// by the id in the superblock, not by the device's name, every name of the
/// device finds them (`/dev/sdb`, `/dev/disk/by-id/X`, a symlink, after the kernel
/// numbers devices differently): under another name a daemon would have found
/// none, made a new admin token and started without the profiles production's
/// clones require.
pub fn side_file(pool: &Path, suffix: &str) -> PathBuf {
    match blockdev_state_base(pool) {
        Some(base) => with_suffix(&base, suffix),
        None => with_suffix(pool, suffix),
    }
}

/// Creates the directory of a block-device pool's side files if missing; nothing
/// to do for a pool file. Mode 0755, as a pool file's directory usually is: the
/// secrets are in 0600 files, and services running as their own users must reach
/// mounts under the default mount root (`POOL.mnt`) there.
pub fn make_side_dir(pool: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match blockdev_state_base(pool) {
        Some(base) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent_dir(&base)),
        None => Ok(()),
    }
}

/// For a pool on a block device, `STATE_DIR/<pool id>/pool`. A device that holds
/// no pool yet (`cowfs init` takes its lock before it writes one) gets the state
/// directory joined with the device's absolute path instead.
fn blockdev_state_base(pool: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(pool).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let dir =
        std::env::var_os("COWFS_STATE_DIR").map_or_else(|| PathBuf::from(STATE_DIR), PathBuf::from);
    if let Some(id) = device_pool_id(pool) {
        return Some(dir.join(format!("{id:016x}")).join("pool"));
    }
    let abs = absolute_by_name(pool)?;
    Some(dir.join(abs.strip_prefix("/").unwrap_or(&abs)))
}

/// The pool id recorded in the device's superblock slots, if either is valid.
/// A plain read-only open, which the daemon's exclusive claim allows; the id never
/// changes after `cowfs init`, so either slot has it.
fn device_pool_id(dev: &Path) -> Option<u64> {
    use crate::store::superblock::Superblock;
    use crate::store::BLOCK_SIZE;
    let mut slots = vec![0u8; 2 * BLOCK_SIZE];
    File::open(dev).ok()?.read_exact(&mut slots).ok()?;
    slots
        .chunks(BLOCK_SIZE)
        .find_map(|slot| Superblock::decode(slot).ok())
        .map(|sb| sb.pool_id)
}

/// `path` made absolute with its `..` taken by name (`/a/b/../c` is `/a/c`; `..`
/// of `/` is `/`, as for the kernel). Joined to the state directory as given, a
/// `..` would be resolved there instead: each would leave a directory named after
/// the working directory, and enough of them climbed out of the state directory
/// (from `/tmp`, `../../../../dev/sdb` put the side files beside the device).
fn absolute_by_name(path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in std::path::absolute(path).ok()?.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// The directory holding `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A new, empty file with mode 0600 beside `path`, named `.NAME.XXXXXX.tmp` (the
/// `tempfile` crate: O_CREAT|O_EXCL, a random name, retried on collision, and
/// removed when dropped unless persisted: every error path below cleans up).
pub fn private_temp(path: &Path) -> io::Result<tempfile::NamedTempFile> {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(parent_dir(path))?;
    // Exactly 0600 whatever the daemon's umask.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(tmp)
}

/// fsync the directory holding `path`, so that a rename or link into it survives
/// a crash.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(parent_dir(path))?.sync_all()
}

/// Replace `path` atomically with `data`: a new private temporary file (see
/// `private_temp`), fsync, rename over `path`, fsync the directory. Readers see
/// the old content or the new, never a mix, also after a crash.
pub fn replace_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = private_temp(path)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    // On failure the returned temporary file is dropped, which removes it.
    tmp.persist(path).map_err(|e| e.error)?;
    sync_parent(path)
}

/// The contents of the private file `path` (NotFound if there is none), refused
/// with PermissionDenied unless it is a regular file owned by the daemon's user
/// with no permission bits for group or others.
pub fn read_private(path: &Path) -> io::Result<String> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => untrusted("is a symlink"),
            _ => e,
        })?;
    let m = f.metadata()?;
    // SAFETY: geteuid(2) always succeeds.
    let me = unsafe { libc::geteuid() };
    if !m.is_file() {
        return Err(untrusted("is not a regular file"));
    }
    if m.uid() != me {
        return Err(untrusted(&format!(
            "belongs to uid {}, not to the daemon's user (uid {me})",
            m.uid()
        )));
    }
    if m.mode() & 0o077 != 0 {
        return Err(untrusted(&format!(
            "has mode {:04o}: group and others may read or change it (chmod 600 it if it is yours)",
            m.mode() & 0o7777
        )));
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(text)
}

fn untrusted(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{why}; cowfs writes its private files itself (mode 0600) and reads no other"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A symlink at the old fixed temporary name (`PATH.tmp`) or at the target
    /// itself pointed the daemon's write (truncate, secrets, chmod 0600) at any
    /// file it names.
    #[test]
    fn planted_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let target = dir.path().join("pool.tokens");
        std::os::unix::fs::symlink(&victim, with_suffix(&target, ".tmp")).unwrap();
        replace_private(&target, b"secret 1\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("pool.token")).unwrap();
        replace_private(&dir.path().join("pool.token"), b"secret 2\n").unwrap();

        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret 1\n");
        let token = dir.path().join("pool.token");
        assert!(!std::fs::symlink_metadata(&token).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "secret 2\n");
        for f in [&target, &token] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", f.display());
        }
        // No temporary file is left behind.
        assert_eq!(
            names(dir.path()),
            ["pool.token", "pool.tokens", "pool.tokens.tmp", "victim"]
        );
    }

    /// Only what `replace_private` writes is read back: a file planted by someone
    /// else, readable or writable by others, or a symlink is refused.
    #[test]
    fn only_private_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.tokens");
        let refused =
            |p: &Path| read_private(p).unwrap_err().kind() == io::ErrorKind::PermissionDenied;
        assert_eq!(
            read_private(&path).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        replace_private(&path, b"mine").unwrap();
        assert_eq!(read_private(&path).unwrap(), "mine");
        for mode in [0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(refused(&path), "mode {mode:o}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("pool.quotas");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(refused(&link), "symlink");
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        assert!(refused(&path), "owned by nobody");
    }

    /// A failed rename (here: the target is a directory) removes the temporary file.
    #[test]
    fn failure_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("pool.quotas");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("x"), "x").unwrap();
        assert!(replace_private(&target, b"data").is_err());
        assert_eq!(names(dir.path()), ["pool.quotas"]);
    }
}
