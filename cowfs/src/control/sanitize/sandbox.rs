//! The file system a hook sees: a mount namespace of its own whose tree is an
//! allow list, not the host's. A hook runs the clone's own code (a PostgreSQL
//! server executing the clone's schema as a superuser), and a clone may come
//! from a branch an agent controls; code run as the `postgres` OS user could
//! otherwise read every file that user can (production's mounted data
//! directory, other clusters) and copy it into the clone the agent then reads.
//!
//! The tree, built on a tmpfs that pivot_root then makes the root:
//!
//! - the system directories (`SYSTEM_DIRS`) bound read-only, nosuid, nodev
//!   (noexec too where the host's mount is: every bind keeps the restrictions
//!   of the host's mount it copies, see `mount_attr`);
//!   one that is a symlink on the host (`/bin -> usr/bin`) is the same symlink;
//! - a fresh /dev (a small tmpfs, `DEV_TMPFS`) with the host's null, zero,
//!   full, random, urandom and tty bound in, the /proc/self/fd links, and a
//!   fresh tmpfs /dev/shm (PostgreSQL's POSIX shared memory);
//! - a fresh /proc, of the hook's PID namespace;
//! - fresh tmpfs /tmp and /run, gone with the namespace (nothing a killed hook
//!   wrote there is left behind), /var/tmp and /var/run linking to them;
//!   /tmp, /run and /dev/shm hold at most the hook's `tmpfs_size_mib` each
//!   (their pages are the host's memory);
//! - the directory of the hook's program, read-only, when it is not in a
//!   system directory (a script finds its files beside it);
//! - the hook's `read_only_paths`, and `read_write_paths` (nosuid, nodev):
//!   not by name, but each as the object the daemon opened without following
//!   a symlink and checked (`host_path`), cloned as a detached mount
//!   (open_tree), made private and restricted while still detached
//!   (`mount_attr::set_on_detached`) and attached in the sandbox
//!   (move_mount). A bind of that
//!   descriptor's /proc/self/fd link would not do: the kernel binds only from
//!   mounts of the caller's own namespace, and the descriptor's mount is the
//!   daemon's;
//! - the clone's mount, read-write, at the path it has on the host, so that
//!   `$COWFS_CLONE_DIR` and the working directory stay valid.
//!
//! The root itself is then read-only. Every bind is non-recursive: a mount
//! below a bound directory on the host (another cowfs mount under /srv, say)
//! is not part of it. The host's mounts are made private in the namespace
//! before anything is mounted, so nothing mounted inside reaches the host, and
//! nothing the host mounts later appears inside. The host's root, reachable at
//! `OLD_ROOT` while the tree is built from it, is detached before the hook
//! starts: no path, `..` included, leads out of the tree.
//!
//! `Sandbox::new` (in the daemon) turns all of it into system calls on
//! prepared C strings; `Sandbox::build` makes them in a forked child, where
//! nothing may allocate (see `pid_ns`).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libc::{c_int, c_uint, c_ulong};

use super::config::Hook;
use super::host_path::{HostPath, Kind};
use super::mount_attr::{remount_adding, set_on_detached};

/// Host directories every hook sees, read-only: programs, libraries, and the
/// system's configuration (users for `runuser`, locales, time zones).
pub const SYSTEM_DIRS: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];

/// Directories the sandbox makes itself, of which nothing of the host may be
/// bound inside (a clone or a listed path there would be hidden or, for /proc,
/// not a place to make a mount point).
pub const OWN_DIRS: [&str; 2] = ["/dev", "/proc"];

/// The device nodes of the host a hook gets (those that leak nothing).
const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Where the sandbox's root tmpfs is mounted before pivot_root makes it the
/// root. Any directory of the host will do (the mount is in the hook's own
/// namespace, and pivot_root moves it away): /tmp is one everywhere.
const STAGING: &str = "/tmp";

/// Where the host's root is inside the sandbox while the tree is built from
/// it; detached and removed before the hook starts.
const OLD_ROOT: &str = "/.host";

/// How `Sandbox::new` names the clone's bind.
const CLONE: &str = "the clone's directory";

/// The options of the sandbox's /dev: it holds a dozen nodes and links, and
/// root in the hook could otherwise fill it (memory) like the other tmpfs.
const DEV_TMPFS: &str = "mode=0755,size=1m,nr_inodes=256";

/// Most steps a sandbox may have: the step's number travels in 10 bits of
/// spawn's error (see `pid_ns::failed_at`).
pub const MAX_STEPS: usize = 1000;

/// One system call of the build.
enum Op {
    Unshare,
    /// MS_REC|MS_PRIVATE on this mount and all below.
    Private(CString),
    Tmpfs {
        dst: CString,
        flags: c_ulong,
        data: CString,
    },
    Proc(CString),
    Mkdir(CString),
    /// An empty file, the mount point of a bound file.
    File(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    /// A non-recursive bind, then a remount of it adding `flags` (MS_RDONLY,
    /// MS_NOSUID, ...) to the host mount's restrictions (`mount_attr`).
    Bind {
        src: CString,
        dst: CString,
        flags: c_ulong,
    },
    /// A detached mount (`tree`, from open_tree) attached at `dst`. Made
    /// private and restricted while detached where the kernel has
    /// mount_setattr; otherwise (`fallback`: the flags to add) made private
    /// once attached (a clone of a shared mount joins its peer group: the
    /// host's mounts there would appear inside), then remounted like a bind.
    Attach {
        tree: c_int,
        dst: CString,
        fallback: Option<c_ulong>,
    },
    /// Close a descriptor the build needed: the hook is forked after it.
    Close(c_int),
    PivotRoot {
        new_root: CString,
        put_old: CString,
    },
    Detach(CString),
    /// The root's bind remounted MS_RDONLY|MS_NOSUID|MS_NODEV.
    ReadOnlyRoot,
    Rmdir(CString),
    Chdir(CString),
}

struct Step {
    op: Op,
    /// What the step does, for the hook's error when it fails.
    what: String,
}

/// A hook's file system view, ready to build in a forked child.
pub struct Sandbox {
    steps: Vec<Step>,
    /// The detached mounts `Op::Attach` attaches: open until the sandbox is
    /// dropped (after the spawn), where a mount never attached goes away.
    _trees: Vec<OwnedFd>,
    /// The hook's program as the sandbox shows it.
    program: PathBuf,
    /// The clone's directory, its real path: where the sandbox shows it.
    clone: PathBuf,
}

/// What a host path becomes in the sandbox.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadOnly,
    ReadWrite,
}

impl Access {
    /// The mount flags the sandbox adds to those of the host's mount.
    fn flags(self) -> c_ulong {
        match self {
            Access::ReadOnly => libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            Access::ReadWrite => libc::MS_NOSUID | libc::MS_NODEV,
        }
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| invalid(format!("{} contains a NUL byte", p.display())))
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

/// The host's `path` as seen from inside while the tree is built.
fn on_host(path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    Path::new(OLD_ROOT).join(rel)
}

struct Plan {
    steps: Vec<Step>,
    /// Directories made on the sandbox's own tmpfs mounts.
    made: BTreeSet<PathBuf>,
    /// Host paths bound, and how.
    bound: Vec<(PathBuf, Access)>,
}

impl Plan {
    fn push(&mut self, op: Op, what: String) {
        self.steps.push(Step { op, what });
    }

    /// Every directory above `path` not made yet (on the sandbox's tmpfs: a
    /// path under a bound directory was refused before).
    fn parents(&mut self, path: &Path) -> io::Result<()> {
        let mut dirs: Vec<&Path> = path.ancestors().skip(1).collect();
        dirs.reverse();
        for d in dirs {
            if d == Path::new("/") || self.made.contains(d) {
                continue;
            }
            self.made.insert(d.to_path_buf());
            self.push(Op::Mkdir(cstr(d)?), format!("making {}", d.display()));
        }
        Ok(())
    }

    fn mkdir(&mut self, path: &str) -> io::Result<()> {
        self.made.insert(PathBuf::from(path));
        let p = Path::new(path);
        self.push(Op::Mkdir(cstr(p)?), format!("making {path}"));
        Ok(())
    }

    fn tmpfs(&mut self, dst: &str, flags: c_ulong, data: &str) -> io::Result<()> {
        self.mkdir(dst)?;
        self.push(
            Op::Tmpfs {
                dst: cstr(Path::new(dst))?,
                flags,
                data: CString::new(data).map_err(|e| invalid(e.to_string()))?,
            },
            format!("mounting a fresh tmpfs on {dst}"),
        );
        Ok(())
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
        self.push(
            Op::Symlink {
                target: cstr(target)?,
                link: cstr(link)?,
            },
            format!("linking {} to {}", link.display(), target.display()),
        );
        Ok(())
    }

    /// Bind the host's `path` (a canonical, absolute path) at the same path:
    /// by name from the host's tree, or from `from`'s detached mount.
    fn bind(&mut self, path: &Path, access: Access, from: &From) -> io::Result<()> {
        let is_dir = match from {
            From::Host => std::fs::metadata(path)?.is_dir(),
            From::Tree(_, kind, _) => *kind == Kind::Directory,
        };
        self.parents(path)?;
        let dst = cstr(path)?;
        if is_dir {
            self.made.insert(path.to_path_buf());
            self.push(Op::Mkdir(dst.clone()), format!("making {}", path.display()));
        } else {
            self.push(Op::File(dst.clone()), format!("making {}", path.display()));
        }
        let flags = access.flags();
        let how = match access {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        };
        match from {
            From::Host => self.push(
                Op::Bind {
                    src: cstr(&on_host(path))?,
                    dst,
                    flags,
                },
                format!("binding {} {how}", path.display()),
            ),
            From::Tree(tree, _, set) => {
                self.push(
                    Op::Attach {
                        tree: *tree,
                        dst,
                        fallback: (!set).then_some(flags),
                    },
                    format!("attaching {} {how} (move_mount)", path.display()),
                );
                self.push(
                    Op::Close(*tree),
                    format!("closing the mount descriptor of {}", path.display()),
                );
            }
        }
        self.bound.push((path.to_path_buf(), access));
        Ok(())
    }

    /// The bound path `path` is in, if any.
    fn covering(&self, path: &Path) -> Option<&(PathBuf, Access)> {
        // The last: a bind inside another one is the one that shows.
        self.bound.iter().rev().find(|(b, _)| path.starts_with(b))
    }
}

/// Where a bind's source comes from.
enum From {
    /// The host's tree, by name (under `OLD_ROOT`).
    Host,
    /// This detached mount (a descriptor `Sandbox::_trees` holds), of a
    /// directory or a file, and whether it is private with its flags set
    /// already (`mount_attr::set_on_detached`).
    Tree(c_int, Kind, bool),
}

/// A detached, non-recursive clone of the mount of `fd` at the object `fd`
/// is: what a bind of it would be, made now in the daemon's namespace.
fn open_tree(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as c_uint;
    // SAFETY: an open descriptor, an empty C string (AT_EMPTY_PATH: the
    // descriptor's own object) and flags; nothing of ours is written.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as c_int) })
}

/// The detached mount of a listed path, opened and checked now (`host_path`),
/// its kind, and whether it was made private with `access`'s flags added.
fn listed_tree(listed: &HostPath, access: Access, what: &str) -> io::Result<(OwnedFd, Kind, bool)> {
    let fd = listed
        .open()
        .map_err(|e| io::Error::new(e.kind(), format!("{what} {e}")))?;
    let tree = open_tree(&fd).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{what} '{}': cloning its mount (open_tree, Linux 5.2 or later): {e}",
                listed.path.display()
            ),
        )
    })?;
    let set = set_on_detached(&tree, access.flags()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{what} '{}': making its mount private (mount_setattr): {e}",
                listed.path.display()
            ),
        )
    })?;
    Ok((tree, listed.kind, set))
}

impl Sandbox {
    /// The view of `hook` run on the clone at `clone_dir`: its program, its
    /// listed host paths, its tmpfs size. Fails on a path that cannot be
    /// resolved (a listed one: through a symlink, or not what it was at load),
    /// and on one the sandbox cannot place (the clone in a read-only
    /// directory, anything in /dev or /proc).
    pub fn new(clone_dir: &Path, hook: &Hook) -> io::Result<Sandbox> {
        let program = Path::new(&hook.argv[0]);
        let resolve = |p: &Path, what: &str| {
            p.canonicalize()
                .map_err(|e| io::Error::new(e.kind(), format!("{what} {}: {e}", p.display())))
        };
        let clone = resolve(clone_dir, "the clone's directory")?;
        // Mount sources are looked up under OLD_ROOT, where an absolute symlink
        // would lead into the sandbox, not the host: only real paths.
        let mut extra: Vec<(PathBuf, Access, &str, From)> = Vec::new();
        let mut trees = Vec::new();
        // The program by its directory's real path (exec would not find
        // `/etc/cowfs/../hooks/x.sh` where /etc/cowfs is not in the sandbox),
        // its own name kept (a program may tell by it what to be). Its real
        // directory too, for a symlink to a file elsewhere. A program that is
        // not there is left to exec, whose error names it.
        let mut exec = program.to_path_buf();
        let mut dirs = Vec::new();
        if let (Some(dir), Some(name)) = (program.parent(), program.file_name()) {
            if let Ok(dir) = dir.canonicalize() {
                exec = dir.join(name);
                dirs.push(dir);
            }
        }
        if let Some(dir) = program
            .canonicalize()
            .ok()
            .as_deref()
            .and_then(Path::parent)
        {
            dirs.push(dir.to_path_buf());
        }
        for dir in dirs {
            if dir.starts_with(&clone) {
                // In the clone, which is there anyway.
            } else if clone.starts_with(&dir) {
                // A directory that holds the clone (a program in the scratch
                // directory's parent): the program alone, not what is beside it.
                extra.push((
                    exec.clone(),
                    Access::ReadOnly,
                    "the hook's program",
                    From::Host,
                ));
            } else {
                extra.push((
                    dir,
                    Access::ReadOnly,
                    "the hook's program's directory",
                    From::Host,
                ));
            }
        }
        let listed = (hook.read_only_paths.iter())
            .map(|p| (p, Access::ReadOnly, "read_only_paths entry"))
            .chain(
                (hook.read_write_paths.iter())
                    .map(|p| (p, Access::ReadWrite, "read_write_paths entry")),
            );
        for (p, access, what) in listed {
            let (tree, kind, set) = listed_tree(p, access, what)?;
            extra.push((
                p.path.clone(),
                access,
                what,
                From::Tree(tree.as_raw_fd(), kind, set),
            ));
            trees.push(tree);
        }
        let cwd = cstr(&clone)?;
        extra.push((clone.clone(), Access::ReadWrite, CLONE, From::Host));

        let mut plan = Plan {
            steps: Vec::new(),
            made: BTreeSet::new(),
            bound: Vec::new(),
        };
        let staging = Path::new(STAGING);
        let put_old = staging.join(OLD_ROOT.trim_start_matches('/'));
        plan.push(Op::Unshare, "unshare(CLONE_NEWNS)".into());
        // First of all: a mount made or moved below would otherwise propagate
        // to the host's peer mounts (systemd makes / shared), and the host's
        // new mounts into the sandbox.
        plan.push(
            Op::Private(cstr(Path::new("/"))?),
            "making the host's mounts private to the namespace (MS_REC|MS_PRIVATE)".into(),
        );
        plan.push(
            Op::Tmpfs {
                dst: cstr(staging)?,
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: c"mode=0755".into(),
            },
            format!("mounting the sandbox's root tmpfs on {STAGING}"),
        );
        plan.push(
            Op::Mkdir(cstr(&put_old)?),
            format!("making {}", put_old.display()),
        );
        // pivot_root rather than chroot: it moves the process's root mount, so
        // once the old root is detached below, no `..` and no second chroot
        // leads back to the host's tree.
        plan.push(
            Op::PivotRoot {
                new_root: cstr(staging)?,
                put_old: cstr(&put_old)?,
            },
            "pivot_root into the sandbox's root".into(),
        );
        plan.push(Op::Chdir(c"/".into()), "entering the sandbox's root".into());

        for dir in SYSTEM_DIRS {
            let path = Path::new(dir);
            match std::fs::symlink_metadata(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{dir}: {e}"))),
                Ok(m) if m.file_type().is_symlink() => {
                    plan.symlink(&std::fs::read_link(path)?, path)?;
                }
                Ok(_) => {
                    // The system directory as the host names it (not resolved:
                    // a symlinked one is the link above).
                    plan.bind(path, Access::ReadOnly, &From::Host)?;
                }
            }
        }

        plan.tmpfs("/dev", libc::MS_NOSUID | libc::MS_NOEXEC, DEV_TMPFS)?;
        // Each at most the hook's size, and an inode per 16 KiB of it: empty
        // files cost memory too, outside `size`.
        let size = |mode: &str| {
            let mib = hook.tmpfs_size_mib;
            format!("mode={mode},size={mib}m,nr_inodes={}", u64::from(mib) * 64)
        };
        for node in DEV_NODES {
            let path = Path::new("/dev").join(node);
            if !std::fs::symlink_metadata(&path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()))
            {
                continue;
            }
            plan.push(Op::File(cstr(&path)?), format!("making {}", path.display()));
            plan.push(
                Op::Bind {
                    src: cstr(&on_host(&path))?,
                    dst: cstr(&path)?,
                    flags: libc::MS_NOSUID | libc::MS_NOEXEC,
                },
                format!("binding {}", path.display()),
            );
        }
        plan.symlink(Path::new("/proc/self/fd"), Path::new("/dev/fd"))?;
        for (i, name) in ["stdin", "stdout", "stderr"].iter().enumerate() {
            plan.symlink(
                &Path::new("/proc/self/fd").join(i.to_string()),
                &Path::new("/dev").join(name),
            )?;
        }
        plan.tmpfs("/dev/shm", libc::MS_NOSUID | libc::MS_NODEV, &size("1777"))?;
        plan.mkdir("/proc")?;
        // Mounted by the init, inside the new PID namespace: proc shows the
        // namespace of the process that mounts it.
        plan.push(Op::Proc(c"/proc".into()), "mounting a fresh /proc".into());
        plan.tmpfs("/tmp", libc::MS_NOSUID | libc::MS_NODEV, &size("1777"))?;
        plan.tmpfs("/run", libc::MS_NOSUID | libc::MS_NODEV, &size("0755"))?;
        plan.mkdir("/var")?;
        plan.symlink(Path::new("/tmp"), Path::new("/var/tmp"))?;
        plan.symlink(Path::new("/run"), Path::new("/var/run"))?;

        // Outer paths first, so that one inside another is seen as covered.
        extra.sort_by_key(|(p, ..)| p.components().count());
        for (path, access, what, from) in extra {
            let shown = path.display();
            if path == Path::new("/") {
                return Err(invalid(format!(
                    "{what} {shown}: the host's root cannot be bound"
                )));
            }
            if let Some(own) = OWN_DIRS.iter().find(|d| path.starts_with(d)) {
                return Err(invalid(format!(
                    "{what} {shown}: is in {own}, which the sandbox makes itself"
                )));
            }
            let outer = plan.covering(&path).cloned();
            match outer {
                None => plan.bind(&path, access, &from)?,
                // Its own bind, on a mount point of its own: never through
                // another (binds are not recursive, and the mount point's
                // parents would be made on the host's file system).
                Some((outer, _)) if what == CLONE => {
                    return Err(invalid(format!(
                        "{what} {shown}: is inside {}, which the sandbox binds from the host",
                        outer.display()
                    )))
                }
                // Visible already, and as writable as it needs to be.
                Some((_, Access::ReadWrite)) => {}
                Some((_, Access::ReadOnly)) if access == Access::ReadOnly => {}
                Some((outer, _)) => {
                    return Err(invalid(format!(
                        "{what} {shown}: is inside {}, which the sandbox binds read-only",
                        outer.display()
                    )))
                }
            }
        }

        // The host's root goes, and with it every way back to the host's tree.
        plan.push(
            Op::Detach(cstr(Path::new(OLD_ROOT))?),
            "detaching the host's root".into(),
        );
        plan.push(
            Op::Rmdir(cstr(Path::new(OLD_ROOT))?),
            format!("removing {OLD_ROOT}"),
        );
        plan.push(
            Op::ReadOnlyRoot,
            "making the sandbox's root read-only".into(),
        );
        // The working directory spawn set is the host's clone directory, in the
        // detached tree: `..` from it would walk the host's. The same path,
        // entered again, is the sandbox's bind of the clone.
        plan.push(Op::Chdir(cwd), format!("entering {}", clone_dir.display()));
        if plan.steps.len() > MAX_STEPS {
            return Err(invalid(format!(
                "the sandbox would take {} steps, more than {MAX_STEPS}: fewer paths",
                plan.steps.len()
            )));
        }
        Ok(Sandbox {
            steps: plan.steps,
            _trees: trees,
            program: exec,
            clone,
        })
    }
}

impl Sandbox {
    /// In the init of the hook's PID namespace, between fork and the hook's
    /// fork: every step, in order. On failure, the failed step's number and
    /// errno. System calls only: no allocation (see `pid_ns`).
    pub fn build(&self) -> Result<(), (usize, c_int)> {
        for (i, step) in self.steps.iter().enumerate() {
            if !run(&step.op) {
                let errno = io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO);
                return Err((i, errno));
            }
        }
        Ok(())
    }

    /// The path to exec the hook's program by, inside the sandbox.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The clone's directory, as the sandbox shows it.
    pub fn clone_dir(&self) -> &Path {
        &self.clone
    }

    /// What step `i` does (for the error of a failed build).
    pub fn describe(&self, i: usize) -> Option<&str> {
        self.steps.get(i).map(|s| s.what.as_str())
    }
}

/// Make `op`'s system calls; false (errno set) if one failed.
fn run(op: &Op) -> bool {
    let none = std::ptr::null();
    // SAFETY: system calls on C strings prepared before the fork, alive as long
    // as `op`; the null pointers are those the calls allow.
    unsafe {
        match op {
            Op::Unshare => libc::unshare(libc::CLONE_NEWNS) == 0,
            Op::Private(p) => {
                libc::mount(
                    none,
                    p.as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    none.cast(),
                ) == 0
            }
            Op::Tmpfs { dst, flags, data } => {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    dst.as_ptr(),
                    c"tmpfs".as_ptr(),
                    *flags,
                    data.as_ptr().cast(),
                ) == 0
            }
            Op::Proc(p) => {
                libc::mount(
                    c"proc".as_ptr(),
                    p.as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    none.cast(),
                ) == 0
            }
            // 0755 whatever the daemon's umask: users the hook runs servers
            // as (postgres) pass through to the clone.
            Op::Mkdir(p) => {
                if libc::mkdir(p.as_ptr(), 0o755) == 0 {
                    libc::chmod(p.as_ptr(), 0o755) == 0
                } else {
                    io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST)
                }
            }
            Op::File(p) => {
                let fd = libc::open(
                    p.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o644 as libc::c_uint,
                );
                fd >= 0 && libc::close(fd) == 0
            }
            Op::Symlink { target, link } => libc::symlink(target.as_ptr(), link.as_ptr()) == 0,
            Op::Bind { src, dst, flags } => {
                libc::mount(src.as_ptr(), dst.as_ptr(), none, libc::MS_BIND, none.cast()) == 0
                    && remount_adding(dst, *flags)
            }
            Op::Attach {
                tree,
                dst,
                fallback,
            } => {
                libc::syscall(
                    libc::SYS_move_mount,
                    *tree,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    dst.as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                ) == 0
                    && fallback.is_none_or(|flags| {
                        libc::mount(none, dst.as_ptr(), none, libc::MS_PRIVATE, none.cast()) == 0
                            && remount_adding(dst, flags)
                    })
            }
            Op::Close(fd) => libc::close(*fd) == 0,
            Op::PivotRoot { new_root, put_old } => {
                libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) == 0
            }
            Op::Detach(p) => libc::umount2(p.as_ptr(), libc::MNT_DETACH) == 0,
            Op::ReadOnlyRoot => {
                libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV,
                    none.cast(),
                ) == 0
            }
            Op::Rmdir(p) => libc::rmdir(p.as_ptr()) == 0,
            Op::Chdir(p) => libc::chdir(p.as_ptr()) == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    /// `f` on a thread of its own in a mount namespace of its own (unshare by
    /// one thread leaves the others' namespace alone), which goes with it.
    fn in_own_namespace<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare and mount(2) on a C string literal and the
                // null pointers it allows.
                unsafe {
                    assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0);
                    let none = std::ptr::null();
                    let flags = libc::MS_REC | libc::MS_PRIVATE;
                    assert_eq!(
                        libc::mount(none, c"/".as_ptr(), none, flags, none.cast()),
                        0
                    );
                }
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn mount(src: &CStr, dst: &Path, fstype: Option<&CStr>, flags: c_ulong) {
        let dst = cstr(dst).unwrap();
        let fstype = fstype.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: mount(2) on live C strings or null where it allows one.
        let r = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fstype, flags, std::ptr::null()) };
        assert_eq!(
            r,
            0,
            "{}: {}",
            dst.to_string_lossy(),
            io::Error::last_os_error()
        );
    }

    /// The flags statvfs reports of the mount at `p`.
    fn mount_flags(p: &Path) -> c_ulong {
        let c = cstr(p).unwrap();
        // SAFETY: an all-zero statvfs is valid for statvfs to overwrite, and
        // the C string is live.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_flag
    }

    fn dev(p: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap())
    }

    /// In this thread's namespace: a shared tmpfs at `base/src`, noexec, with
    /// `listed/sub` in it, and `base/dst` to attach `listed` at.
    fn shared_source(base: &Path) -> (PathBuf, PathBuf) {
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        mount(c"cowfs-test", &src, Some(c"tmpfs"), libc::MS_NOEXEC);
        mount(c"", &src, None, libc::MS_SHARED);
        std::fs::create_dir_all(src.join("listed/sub")).unwrap();
        (src, dst)
    }

    /// Once `src/listed` is attached at `dst`: the host mounts below it, and
    /// that must not appear at `dst`, which is no peer of the host's and has
    /// the host's noexec, nosuid and nodev (and read-only if `ro`).
    fn host_mounts_below_and_check(src: &Path, dst: &Path, ro: bool) {
        mount(c"cowfs-host", &src.join("listed/sub"), Some(c"tmpfs"), 0);
        assert_ne!(dev(&src.join("listed/sub")), dev(&src.join("listed")));
        assert_eq!(
            dev(&dst.join("sub")),
            dev(dst),
            "the host's mount below the listed path appeared in the attached one"
        );
        let st = mount_flags(dst);
        let want = libc::ST_NOEXEC | libc::ST_NOSUID | libc::ST_NODEV;
        assert_eq!(st & want, want, "{st:#x}");
        assert_eq!(st & libc::ST_RDONLY != 0, ro, "{st:#x}");
        // This thread's namespace, not the process's (/proc/self).
        let info = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        let line = |p: &Path| {
            let at = format!(" {} ", p.display());
            info.lines().find(|l| l.contains(&at)).unwrap().to_string()
        };
        assert!(line(src).contains("shared:"), "{}", line(src));
        assert!(!line(dst).contains("shared:"), "{}", line(dst));
    }

    /// A listed path's detached mount (open_tree) of a shared host mount is in
    /// the host's peer group: attached first and made private after (the old
    /// sequence), a mount the host made below the listed path in between
    /// appeared inside the sandbox. Made private (and restricted) while still
    /// detached, it never is a peer.
    #[test]
    fn a_listed_paths_detached_mount_is_private_before_it_is_attached() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        in_own_namespace(|| {
            let (src, dst) = shared_source(&base);
            let listed = HostPath::new(&src.join("listed")).unwrap();
            let (tree, _, set) = listed_tree(&listed, Access::ReadWrite, "listed").unwrap();
            assert!(set, "mount_setattr is there since Linux 5.12");
            // SAFETY: move_mount of an open mount descriptor to a live C string.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_move_mount,
                    tree.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    cstr(&dst).unwrap().as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                )
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            host_mounts_below_and_check(&src, &dst, false);
        });
    }

    /// Without mount_setattr (before Linux 5.12) the attach step makes the
    /// mount private and remounts it once attached, keeping the host's flags.
    #[test]
    fn the_attach_step_without_mount_setattr_keeps_the_hosts_flags() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        in_own_namespace(|| {
            let (src, dst) = shared_source(&base);
            let fd = HostPath::new(&src.join("listed")).unwrap().open().unwrap();
            let tree = open_tree(&fd).unwrap();
            let attach = Op::Attach {
                tree: tree.as_raw_fd(),
                dst: cstr(&dst).unwrap(),
                fallback: Some(Access::ReadOnly.flags()),
            };
            assert!(run(&attach), "{}", io::Error::last_os_error());
            host_mounts_below_and_check(&src, &dst, true);
        });
    }
}
