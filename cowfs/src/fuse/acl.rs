//! POSIX ACLs as the kernel hands them over (`system.posix_acl_access` and
//! `system.posix_acl_default` xattr blobs). With FUSE_POSIX_ACL the kernel checks
//! permissions against the ACLs it reads from us; what remains for the filesystem
//! is what ext4 does in posix_acl_create / posix_acl_chmod / posix_acl_update_mode:
//! inherit a directory's default ACL, and keep the mode and the access ACL in step.
//!
//! Blob layout (little-endian): u32 version (2), then entries of u16 tag, u16 perm,
//! u32 id.

use crate::fs::{FsError, FsResult, SetAttr};
use crate::pool::{BranchId, Pool};

pub(crate) const ACCESS: &[u8] = b"system.posix_acl_access";
pub(crate) const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl(Vec<Entry>);

impl Acl {
    /// Parse and validate a blob; `None` if it is not a well-formed ACL.
    pub fn parse(b: &[u8]) -> Option<Acl> {
        let (head, rest) = b.split_first_chunk::<4>()?;
        if u32::from_le_bytes(*head) != VERSION || rest.len() % 8 != 0 {
            return None;
        }
        let entries: Vec<Entry> = rest
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let count = |t| entries.iter().filter(|e| e.tag == t).count();
        let named = count(USER) + count(GROUP);
        let valid = count(USER_OBJ) == 1
            && count(GROUP_OBJ) == 1
            && count(OTHER) == 1
            && count(MASK) <= 1
            && (named == 0 || count(MASK) == 1)
            && entries.iter().all(|e| {
                e.perm & !7 == 0 && [USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag)
            });
        valid.then_some(Acl(entries))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    fn perm_of(&self, tag: u16) -> Option<u32> {
        self.0
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| u32::from(e.perm))
    }

    /// The permission bits this access ACL implies (group bits from the mask if
    /// there is one), and whether the ACL says nothing more than those bits.
    pub(crate) fn mode_bits(&self) -> (u32, bool) {
        let user = self.perm_of(USER_OBJ).unwrap_or(0);
        let group = self
            .perm_of(MASK)
            .or_else(|| self.perm_of(GROUP_OBJ))
            .unwrap_or(0);
        let other = self.perm_of(OTHER).unwrap_or(0);
        let equiv = self
            .0
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER));
        ((user << 6) | (group << 3) | other, equiv)
    }

    /// A new inode's access ACL from its directory's default ACL, and the mode
    /// narrowed by it (posix_acl_create_masq). Returns the new mode and whether the
    /// ACL must be stored (it says more than the mode).
    pub(crate) fn create_masq(&mut self, mode: u32) -> (u32, bool) {
        let mut mode = mode;
        let mut not_equiv = false;
        let mut group_obj = None;
        let mut mask = None;
        for (i, e) in self.0.iter_mut().enumerate() {
            let p = u32::from(e.perm);
            match e.tag {
                USER_OBJ => {
                    let p = p & ((mode >> 6) & 7);
                    e.perm = p as u16;
                    mode &= (p << 6) | !0o700;
                }
                USER | GROUP => not_equiv = true,
                GROUP_OBJ => group_obj = Some(i),
                MASK => {
                    mask = Some(i);
                    not_equiv = true;
                }
                _ => {
                    let p = p & (mode & 7);
                    e.perm = p as u16;
                    mode &= p | !0o7;
                }
            }
        }
        if let Some(i) = mask.or(group_obj) {
            let p = u32::from(self.0[i].perm) & ((mode >> 3) & 7);
            self.0[i].perm = p as u16;
            mode &= (p << 3) | !0o070;
        }
        (mode, not_equiv)
    }

    /// Carry a chmod into the access ACL (posix_acl_chmod).
    pub(crate) fn chmod(&mut self, mode: u32) {
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in &mut self.0 {
            match e.tag {
                USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
                MASK => e.perm = ((mode >> 3) & 7) as u16,
                GROUP_OBJ if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
                OTHER => e.perm = (mode & 7) as u16,
                _ => {}
            }
        }
    }
}

/// The ACL stored under `name` on `ino`, if there is a valid one.
fn load(pool: &Pool, b: BranchId, ino: u64, name: &[u8]) -> FsResult<Option<Acl>> {
    match pool.getxattr(b, ino, name) {
        Ok(v) => Ok(Acl::parse(&v)),
        Err(e) if e.errno() == libc::ENODATA => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a new inode inherits from its directory's default ACL.
#[derive(Default)]
pub(crate) struct Inherited {
    access: Option<Vec<u8>>,
    default: Option<Vec<u8>>,
}

/// Narrow a new inode's `mode` by the parent's default ACL if it has one, else by
/// the creating process's umask (POSIX.1e: a default ACL replaces the umask).
pub(crate) fn inherit(
    pool: &Pool,
    b: BranchId,
    parent: u64,
    mode: u32,
    umask: u32,
) -> FsResult<(u32, Inherited)> {
    let Some(def) = load(pool, b, parent, DEFAULT)? else {
        return Ok((mode & !(umask & 0o777), Inherited::default()));
    };
    let mut access = def.clone();
    let (mode, store) = access.create_masq(mode);
    let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
    Ok((
        mode,
        Inherited {
            access: store.then(|| access.encode()),
            default: is_dir.then(|| def.encode()),
        },
    ))
}

/// Store what `inherit` computed on the inode just created.
pub(crate) fn store_inherited(pool: &Pool, b: BranchId, ino: u64, i: Inherited) -> FsResult<()> {
    if let Some(v) = i.access {
        pool.setxattr(b, ino, ACCESS, &v, 0)?;
    }
    if let Some(v) = i.default {
        pool.setxattr(b, ino, DEFAULT, &v, 0)?;
    }
    Ok(())
}

/// A chmod changed the mode: carry it into the access ACL.
pub(crate) fn after_chmod(pool: &Pool, b: BranchId, ino: u64, mode: u32) -> FsResult<()> {
    if let Some(mut a) = load(pool, b, ino, ACCESS)? {
        a.chmod(mode);
        pool.setxattr(b, ino, ACCESS, &a.encode(), 0)?;
    }
    Ok(())
}

/// setxattr of an ACL. An access ACL sets the mode's permission bits, and drops
/// set-group-ID unless `keeps_setgid(file's gid)` says the caller keeps it
/// (privileges.rs `acl_keeps_setgid`); one that says no more than the mode is not
/// stored (as on ext4).
pub(crate) fn set(
    pool: &Pool,
    b: BranchId,
    ino: u64,
    name: &[u8],
    value: &[u8],
    flags: u32,
    keeps_setgid: impl FnOnce(u32) -> bool,
) -> FsResult<()> {
    let Some(a) = Acl::parse(value) else {
        return Err(FsError::Posix(libc::EINVAL));
    };
    if name == DEFAULT {
        return pool.setxattr(b, ino, name, value, flags);
    }
    let (bits, equiv) = a.mode_bits();
    let old = pool.getattr(b, ino)?;
    let mut special = old.mode & 0o7000;
    if special & libc::S_ISGID != 0 && !keeps_setgid(old.gid) {
        special &= !libc::S_ISGID;
    }
    let s = SetAttr {
        mode: Some(special | bits),
        ..Default::default()
    };
    pool.setattr(b, ino, &s)?;
    if !equiv {
        return pool.setxattr(b, ino, name, value, flags);
    }
    match pool.removexattr(b, ino, name) {
        Err(e) if e.errno() != libc::ENODATA => Err(e),
        _ => Ok(()),
    }
}

/// removexattr of an ACL. The kernel turns it into "set no ACL", which Linux
/// filesystems (ext4, xfs, tmpfs) grant also when there is none; ENODATA here
/// made `removexattr` of an absent ACL fail only on cowfs.
pub(crate) fn remove(pool: &Pool, b: BranchId, ino: u64, name: &[u8]) -> FsResult<()> {
    match pool.removexattr(b, ino, name) {
        Err(e) if e.errno() == libc::ENODATA => pool.getattr(b, ino).map(|_| ()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl(entries
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect())
    }

    #[test]
    fn round_trip_and_validation() {
        let a = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(Acl::parse(&a.encode()), Some(a));
        // A named entry needs a mask; a missing OTHER is invalid; bad version.
        let no_mask = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 1),
            (GROUP_OBJ, 5, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(Acl::parse(&no_mask.encode()), None);
        let no_other = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0)]);
        assert_eq!(Acl::parse(&no_other.encode()), None);
        let mut bad = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)]).encode();
        bad[0] = 1;
        assert_eq!(Acl::parse(&bad), None);
        assert_eq!(Acl::parse(&[2, 0, 0]), None);
    }

    #[test]
    fn mode_bits_use_the_mask() {
        let a = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 7, 0),
            (MASK, 4, 0),
            (OTHER, 1, 0),
        ]);
        assert_eq!(a.mode_bits(), (0o641, false));
        let plain = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 5, 0)]);
        assert_eq!(plain.mode_bits(), (0o755, true));
    }

    #[test]
    fn inheritance_narrows_by_the_create_mode() {
        let mut d = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let (mode, store) = d.create_masq(libc::S_IFREG | 0o644);
        assert!(store);
        assert_eq!(mode, libc::S_IFREG | 0o644);
        assert_eq!(d.perm_of(USER_OBJ), Some(6));
        assert_eq!(d.perm_of(MASK), Some(4));
        assert_eq!(d.perm_of(OTHER), Some(4));
        assert_eq!(d.perm_of(GROUP_OBJ), Some(5), "masked, not changed");
        let mut plain = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 0, 0), (OTHER, 0, 0)]);
        assert_eq!(plain.create_masq(0o777), (0o700, false));
    }

    #[test]
    fn chmod_rewrites_owner_mask_and_other() {
        let mut a = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 7, 0),
            (MASK, 7, 0),
            (OTHER, 7, 0),
        ]);
        a.chmod(0o640);
        assert_eq!(a.mode_bits(), (0o640, false));
        assert_eq!(a.perm_of(GROUP_OBJ), Some(7));
        assert_eq!(a.perm_of(USER), Some(7));
    }
}
