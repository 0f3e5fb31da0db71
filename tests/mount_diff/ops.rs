//! The random operations: a small namespace (a few directories, about twenty
//! names) so that creates collide, renames land on existing entries and rmdir
//! meets non-empty directories often; a handful of descriptor slots kept open
//! across steps, so that descriptors outlive unlinks, renames and truncates.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// Descriptor slots; each holds one open file on each side, or nothing.
pub const SLOTS: usize = 6;

/// Names meant as directories; the others are meant as files. Every operation
/// may pick any name, but creates favour their kind, so that most paths resolve
/// while collisions (a file where a directory is expected) stay common.
const DIRS: [&str; 5] = ["d0", "d1", "d0/d2", "d1/d0", "d0/d2/d3"];

/// The file names (relative to the tree's root).
fn files() -> Vec<String> {
    let long = "L".repeat(255);
    let mut v: Vec<String> = [
        "f0", "f1", "f2", "f3", "s0", "d0/f0", "d0/f1", "d0/s1", "d0/d2/f0", "d1/f0", "d1/f1",
        "d1/d0/f0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(long.clone());
    v.push(format!("d0/{long}"));
    // One byte over NAME_MAX: ENAMETOOLONG on both.
    v.push(format!("d1/{long}x"));
    v
}

/// Bytes to write, shown by their length in failure messages.
#[derive(Clone)]
pub struct Data(pub Vec<u8>);

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Open {
        path: String,
        flags: i32,
        mode: u32,
        slot: usize,
    },
    Close {
        slot: usize,
    },
    Write {
        slot: usize,
        data: Data,
    },
    Pwrite {
        slot: usize,
        off: i64,
        data: Data,
    },
    Read {
        slot: usize,
        len: usize,
    },
    Pread {
        slot: usize,
        off: i64,
        len: usize,
    },
    Seek {
        slot: usize,
        off: i64,
        whence: i32,
    },
    /// SEEK_DATA or SEEK_HOLE: compared only where POSIX fixes the answer.
    SeekDataHole {
        slot: usize,
        off: i64,
        whence: i32,
    },
    Ftruncate {
        slot: usize,
        len: i64,
    },
    Fstat {
        slot: usize,
    },
    Fsync {
        slot: usize,
    },
    Fallocate {
        slot: usize,
        mode: i32,
        off: i64,
        len: i64,
    },
    /// Write `data` at `off` through a shared writable mapping of the file.
    Mmap {
        slot: usize,
        off: i64,
        data: Data,
        msync: bool,
    },
    /// fsync, then drop the file's clean pages so the next read goes to the fs.
    DropCache {
        slot: usize,
    },
    Fchmod {
        slot: usize,
        mode: u32,
    },
    Fchown {
        slot: usize,
        uid: u32,
        gid: u32,
    },
    Truncate {
        path: String,
        len: i64,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    /// mknod: a FIFO, a socket, or a character or block device (as root).
    Mknod {
        path: String,
        mode: u32,
        rdev: u64,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Readlink {
        path: String,
    },
    Stat {
        path: String,
    },
    Lstat {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    /// utimensat with explicit (sec, nsec) times, then the times read back.
    Utimens {
        path: String,
        atime: (i64, i64),
        mtime: (i64, i64),
    },
    Setxattr {
        path: String,
        name: String,
        value: Data,
        flags: i32,
        /// lsetxattr: on a symlink itself.
        nofollow: bool,
    },
    Getxattr {
        path: String,
        name: String,
    },
    Removexattr {
        path: String,
        name: String,
    },
    Listxattr {
        path: String,
    },
    Readdir {
        path: String,
    },
    /// `op` with the credentials of an unprivileged user: permission checks
    /// apply (group bits and ACL entries through the supplementary groups too),
    /// and writes by a non-owner clear set-user-ID bits.
    As {
        cred: Cred,
        op: Box<Op>,
    },
    /// copy_file_range between two slots' descriptors at their offsets.
    CopyRange {
        from: usize,
        to: usize,
        len: usize,
    },
    Fsetxattr {
        slot: usize,
        name: String,
        value: Data,
    },
    Fgetxattr {
        slot: usize,
        name: String,
    },
    /// The names an open directory lists from its start (getdents after a rewind).
    DirList {
        slot: usize,
    },
    Lchown {
        path: String,
        uid: u32,
        gid: u32,
    },
    /// Set `path`'s times to an old value (as root), run `op`, then say whether
    /// `path`'s mtime changed: POSIX says which calls mark it for update.
    Probe {
        path: String,
        op: Box<Op>,
    },
}

const IDS: [u32; 3] = [0, 1000, 65534];
/// trusted.* needs CAP_SYS_ADMIN and is listed only to such callers. The POSIX
/// ACL names get valid ACLs most of the time (`xattr_value`).
const XATTRS: [&str; 6] = [
    "user.a",
    "user.b",
    "user.long_name_of_an_attribute",
    "trusted.t",
    ACCESS_ACL,
    DEFAULT_ACL,
];
pub const ACCESS_ACL: &str = "system.posix_acl_access";
pub const DEFAULT_ACL: &str = "system.posix_acl_default";

/// Who an `As` operation runs as: filesystem uid and gid, and the supplementary
/// groups, which may or may not hold the group of the file it meets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

pub struct Gen {
    files: Vec<String>,
}

impl Gen {
    pub fn new() -> Gen {
        Gen { files: files() }
    }

    /// Any name, a file name three times in four.
    fn path(&self, rng: &mut SmallRng) -> String {
        if rng.gen_bool(0.75) {
            self.file(rng)
        } else {
            self.dir(rng)
        }
    }

    fn file(&self, rng: &mut SmallRng) -> String {
        if rng.gen_bool(0.95) {
            self.files.choose(rng).expect("names").clone()
        } else {
            self.dir(rng)
        }
    }

    fn dir(&self, rng: &mut SmallRng) -> String {
        if rng.gen_bool(0.9) {
            DIRS.choose(rng).expect("dirs").to_string()
        } else {
            self.files.choose(rng).expect("names").clone()
        }
    }

    /// The next operation; `open` says which slots hold a descriptor, so that
    /// descriptor operations mostly find one (and sometimes an empty slot).
    pub fn op(&self, rng: &mut SmallRng, open: &[bool; SLOTS]) -> Op {
        let mut op = self.plain_op(rng, open);
        if rng.gen_bool(0.2) {
            op = Op::As {
                cred: cred(rng),
                op: Box::new(op),
            };
        }
        if rng.gen_bool(0.1) {
            op = Op::Probe {
                path: self.path(rng),
                op: Box::new(op),
            };
        }
        op
    }

    fn plain_op(&self, rng: &mut SmallRng, open: &[bool; SLOTS]) -> Op {
        let used: Vec<usize> = (0..SLOTS).filter(|s| open[*s]).collect();
        let slot = match used.choose(rng) {
            Some(s) if rng.gen_bool(0.95) => *s,
            _ => rng.gen_range(0..SLOTS),
        };
        let path = self.path(rng);
        match rng.gen_range(0..110) {
            0..=11 => Op::Open {
                path: if rng.gen_bool(0.15) {
                    self.dir(rng)
                } else {
                    self.file(rng)
                },
                flags: open_flags(rng),
                mode: rng.gen_range(0..0o10000),
                // Mostly a free slot, so descriptors pile up.
                slot: (0..SLOTS)
                    .find(|s| !open[*s])
                    .filter(|_| rng.gen_bool(0.8))
                    .unwrap_or(slot),
            },
            12..=15 => Op::Close { slot },
            16..=23 => Op::Write {
                slot,
                data: Data(data(rng)),
            },
            24..=30 => Op::Pwrite {
                slot,
                off: offset(rng),
                data: Data(data(rng)),
            },
            31..=33 => Op::Read {
                slot,
                len: rng.gen_range(0..70_000),
            },
            34..=37 => Op::Pread {
                slot,
                off: offset(rng),
                len: rng.gen_range(0..70_000),
            },
            38..=39 => Op::Seek {
                slot,
                off: offset(rng) - rng.gen_range(0..2) * 4096,
                whence: *[libc::SEEK_SET, libc::SEEK_CUR, libc::SEEK_END]
                    .choose(rng)
                    .unwrap(),
            },
            40..=41 => Op::SeekDataHole {
                slot,
                off: offset(rng),
                whence: *[libc::SEEK_DATA, libc::SEEK_HOLE].choose(rng).unwrap(),
            },
            42..=44 => Op::Ftruncate {
                slot,
                len: offset(rng),
            },
            45 => Op::Fstat { slot },
            46 => Op::Fsync { slot },
            47..=49 => Op::Fallocate {
                slot,
                mode: *[
                    0,
                    libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_ZERO_RANGE,
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                ]
                .choose(rng)
                .unwrap(),
                off: offset(rng),
                len: rng.gen_range(1..200_000),
            },
            50..=51 => Op::Mmap {
                slot,
                off: rng.gen_range(0..300_000),
                data: Data(data(rng)),
                msync: rng.gen(),
            },
            52 => Op::DropCache { slot },
            53 => Op::Fchmod {
                slot,
                mode: rng.gen_range(0..0o10000),
            },
            54 => Op::Fchown {
                slot,
                uid: *IDS.choose(rng).unwrap(),
                gid: *IDS.choose(rng).unwrap(),
            },
            55..=57 => Op::Truncate {
                path,
                len: offset(rng),
            },
            58..=61 => Op::Unlink {
                // Often a directory's name: clears what squats on it.
                path: if rng.gen_bool(0.4) {
                    self.dir(rng)
                } else {
                    path
                },
            },
            62..=63 => Op::Rmdir {
                path: self.dir(rng),
            },
            64..=67 => Op::Mkdir {
                path: self.dir(rng),
                mode: rng.gen_range(0..0o10000),
            },
            68 => {
                // Descriptors may be opened on the node and written to, so only
                // harmless devices: null, zero, full, and block devices of an
                // unassigned major (ENXIO).
                let (kind, rdev) = *[
                    (libc::S_IFIFO, 0),
                    (libc::S_IFIFO, 0),
                    (libc::S_IFSOCK, 0),
                    (libc::S_IFCHR, libc::makedev(1, 3)),
                    (libc::S_IFCHR, libc::makedev(1, 5)),
                    (libc::S_IFCHR, libc::makedev(1, 7)),
                    (libc::S_IFBLK, libc::makedev(60, 0)),
                ]
                .choose(rng)
                .unwrap();
                Op::Mknod {
                    path: self.file(rng),
                    mode: kind | rng.gen_range(0..0o1000),
                    rdev,
                }
            }
            69..=74 => Op::Rename {
                from: path,
                to: self.path(rng),
                flags: *[0, 0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]
                    .choose(rng)
                    .unwrap(),
            },
            75..=77 => Op::Link {
                from: path,
                to: self.path(rng),
            },
            78..=79 => {
                // Targets: relative names that may exist, a dangling one, a
                // long one, and a loop through a symlink.
                let target = match rng.gen_range(0..4) {
                    0 => self.path(rng),
                    1 => "nowhere".to_string(),
                    2 => "t".repeat(rng.gen_range(1..1000)),
                    _ => "s0".to_string(),
                };
                Op::Symlink {
                    target,
                    path: self.file(rng),
                }
            }
            80 => Op::Readlink { path },
            81..=82 => Op::Stat { path },
            83 => Op::Lstat { path },
            84..=85 => Op::Chmod {
                path,
                mode: rng.gen_range(0..0o10000),
            },
            86 => Op::Chown {
                path,
                uid: *IDS.choose(rng).unwrap(),
                gid: *IDS.choose(rng).unwrap(),
            },
            87..=88 => Op::Utimens {
                path,
                atime: (
                    rng.gen_range(-1_000_000..4_000_000_000),
                    rng.gen_range(0..1_000_000_000),
                ),
                mtime: (
                    rng.gen_range(-1_000_000..4_000_000_000),
                    rng.gen_range(0..1_000_000_000),
                ),
            },
            89..=92 => {
                let name = XATTRS.choose(rng).unwrap().to_string();
                Op::Setxattr {
                    path,
                    value: xattr_value(rng, &name),
                    name,
                    flags: *[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]
                        .choose(rng)
                        .unwrap(),
                    nofollow: rng.gen_bool(0.3),
                }
            }
            93 => Op::Getxattr {
                path,
                name: XATTRS.choose(rng).unwrap().to_string(),
            },
            94 => Op::Removexattr {
                path,
                name: XATTRS.choose(rng).unwrap().to_string(),
            },
            95 => Op::Listxattr { path },
            96..=99 => Op::Readdir {
                path: self.dir(rng),
            },
            100..=102 => Op::CopyRange {
                from: slot,
                to: *used.choose(rng).unwrap_or(&slot),
                len: rng.gen_range(0..300_000),
            },
            103..=104 => {
                let name = XATTRS.choose(rng).unwrap().to_string();
                Op::Fsetxattr {
                    slot,
                    value: xattr_value(rng, &name),
                    name,
                }
            }
            105 => Op::Fgetxattr {
                slot,
                name: XATTRS.choose(rng).unwrap().to_string(),
            },
            106..=107 => Op::DirList { slot },
            _ => Op::Lchown {
                path,
                uid: *IDS.choose(rng).unwrap(),
                gid: *IDS.choose(rng).unwrap(),
            },
        }
    }
}

/// An unprivileged user: uid 1000 or 65534, its own gid or another one, and
/// supplementary groups drawn from the ids files are given (0 included), so
/// that the caller is sometimes in a file's group only through them.
fn cred(rng: &mut SmallRng) -> Cred {
    let uid = *IDS[1..].choose(rng).unwrap();
    let gid = if rng.gen_bool(0.7) {
        uid
    } else {
        *IDS.choose(rng).unwrap()
    };
    let groups = IDS.iter().copied().filter(|_| rng.gen_bool(0.3)).collect();
    Cred { uid, gid, groups }
}

/// A value for xattr `name`. ext4 keeps one file's xattrs in a single block
/// (ENOSPC beyond): values of < 800 bytes always fit. An ACL name gets a valid
/// ACL nine times in ten, otherwise bytes the kernel refuses (EINVAL).
fn xattr_value(rng: &mut SmallRng, name: &str) -> Data {
    if (name == ACCESS_ACL || name == DEFAULT_ACL) && rng.gen_bool(0.9) {
        return Data(acl(rng));
    }
    Data(data(rng).into_iter().take(rng.gen_range(0..800)).collect())
}

/// A valid POSIX ACL in the kernel's xattr format (linux/posix_acl_xattr.h:
/// u32 version 2, then u16 tag, u16 perm, u32 id per entry, in tag order and
/// ids ascending): the three base entries, and sometimes named users and
/// groups with the mask they need. Without named entries the ACL equals a
/// mode, which ext4 stores as the mode alone (cowfs must do the same).
fn acl(rng: &mut SmallRng) -> Vec<u8> {
    const UNDEFINED: u32 = u32::MAX;
    let perm = |rng: &mut SmallRng| rng.gen_range(0..8u16);
    let named = |rng: &mut SmallRng| -> Vec<u32> {
        IDS.iter().copied().filter(|_| rng.gen_bool(0.3)).collect()
    };
    let (users, groups) = (named(rng), named(rng));
    let mut entries = vec![(0x01u16, perm(rng), UNDEFINED)];
    entries.extend(users.iter().map(|id| (0x02, perm(rng), *id)));
    entries.push((0x04, perm(rng), UNDEFINED));
    entries.extend(groups.iter().map(|id| (0x08, perm(rng), *id)));
    if !users.is_empty() || !groups.is_empty() {
        entries.push((0x10, perm(rng), UNDEFINED));
    }
    entries.push((0x20, perm(rng), UNDEFINED));
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(perm.to_le_bytes());
        out.extend(id.to_le_bytes());
    }
    out
}

fn open_flags(rng: &mut SmallRng) -> i32 {
    let acc = *[libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR, libc::O_RDWR]
        .choose(rng)
        .unwrap();
    let mut f = acc;
    for (bit, p) in [
        (libc::O_CREAT, 0.7),
        (libc::O_EXCL, 0.15),
        (libc::O_TRUNC, 0.15),
        (libc::O_APPEND, 0.2),
        (libc::O_DIRECTORY, 0.03),
        (libc::O_NOFOLLOW, 0.1),
    ] {
        if rng.gen_bool(p) {
            f |= bit;
        }
    }
    // Never block on a fifo without a peer.
    f | libc::O_NONBLOCK
}

/// Offsets cluster around the start, block edges and a few hundred KiB, with an
/// occasional far one (sparse files) kept small enough to read back whole.
fn offset(rng: &mut SmallRng) -> i64 {
    match rng.gen_range(0..10) {
        0 => 0,
        1..=3 => rng.gen_range(0..10_000),
        4..=5 => 4096 * rng.gen_range(0..40) + rng.gen_range(-2..3).max(0),
        6..=8 => rng.gen_range(0..400_000),
        _ => rng.gen_range(0..3_000_000),
    }
}

/// Data to write: mostly small, sometimes spanning many blocks; a pattern that
/// starts at a random byte and is never zero, so that holes (zeros) stand out.
fn data(rng: &mut SmallRng) -> Vec<u8> {
    let len = match rng.gen_range(0..10) {
        0 => 0,
        1..=6 => rng.gen_range(1..5000),
        7..=8 => rng.gen_range(1..70_000),
        _ => rng.gen_range(1..300_000),
    };
    let seed: u8 = rng.gen();
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}
