//! The hooks' sandbox (sanitize::sandbox): a hook runs the clone's own code (a
//! database server on the clone's schema) and must see nothing of the host but
//! the system directories, the clone and what its profile lists. A hook here
//! tries to read a file in another directory of the host and a file on another
//! mount of the same pool (`main`, as production would be), and writes what it
//! managed into the clone; a tmpfs it mounts must not appear on the host; a
//! `read_only_paths` directory is visible and cannot be written; root in a
//! hook cannot undo any of it, and no descriptor of the daemon's reaches it.
//!
//! Needs root and /dev/fuse (FUSE mounts).

#[path = "sanitize_support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cowfs::control::sanitize::{run_hooks, HookReport, SanitizeConfig};
use cowfs::fuse::MountTable;
use cowfs::pool::{Pool, PoolOptions};
use support::*;

const KEY: &[u8] = b"pool-key-for-the-sandbox-test-01";

/// Unmounts every mount of the table when dropped, also when a test fails.
struct Unmount(Arc<MountTable>);

impl Drop for Unmount {
    fn drop(&mut self) {
        self.0.unmount_all();
    }
}

/// A pool with `main` holding a secret, a clone `c` of it, a scratch directory
/// and `main` mounted at `prod` (production, beside the clone).
/// Fields drop in order: the mounts go before the directory that holds them
/// (the other way round, the directory's removal met `prod` still mounted
/// and left the test's directory behind in /tmp).
struct Env {
    base: PathBuf,
    pool: Arc<Pool>,
    mounts: Arc<MountTable>,
    _unmount: Unmount,
    _tmp: tempfile::TempDir,
}

const SECRET: &str = "production-only-4711";

impl Env {
    fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("cowfs-sandbox-")
            .tempdir()
            .unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let opts = PoolOptions {
            capacity_bytes: Some(1 << 30),
            ..Default::default()
        };
        let pool = Arc::new(Pool::create(&base.join("pool"), &opts).unwrap());
        let mounts = MountTable::new(pool.clone());
        let unmount = Unmount(mounts.clone());
        let main = pool.branch_id("main").unwrap();
        put(&pool, main, "data/people.txt", b"the people\n");
        pool.branch_create("c", "main").unwrap();
        put(&pool, main, "data/secret.txt", SECRET.as_bytes());
        std::fs::create_dir(base.join("scratch")).unwrap();
        std::fs::create_dir(base.join("prod")).unwrap();
        mounts.mount("main", &base.join("prod"), false).unwrap();
        Env {
            _tmp: tmp,
            base,
            pool,
            mounts,
            _unmount: unmount,
        }
    }

    /// Run the profile `p` of `hooks` (TOML, `{base}` replaced) on `c`.
    fn run(&self, hooks: &str) -> Result<Vec<HookReport>, String> {
        self.run_after_load(hooks, || ())
    }

    /// `run`, calling `between` once the config has loaded, before the run.
    fn run_after_load(
        &self,
        hooks: &str,
        between: impl FnOnce(),
    ) -> Result<Vec<HookReport>, String> {
        let text = format!(
            "[sanitize]\nscratch_dir = \"{}\"\n{}",
            self.base.join("scratch").display(),
            hooks.replace("{base}", &self.base.display().to_string())
        );
        let cfg = SanitizeConfig::parse(&text, Path::new("/")).map_err(|e| e.to_string())?;
        between();
        run_hooks(
            &self.pool,
            &self.mounts,
            "c",
            profile(&cfg, "p"),
            KEY,
            &self.base.join("scratch"),
        )
        .map_err(|e| e.to_string())
    }

    /// A file of the clone `c`.
    fn clone_file(&self, path: &str) -> String {
        let c = self.pool.branch_id("c").unwrap();
        String::from_utf8_lossy(&files(&self.pool, c)[path]).into_owned()
    }
}

/// Shell for a hook: for each of its arguments, say whether it could be read.
const PROBE: &str = r#"for p in "$@"; do if cat "$p" >/dev/null 2>&1 || ls "$p" >/dev/null 2>&1; then echo "saw $p"; else echo "no $p"; fi; done"#;

#[test]
fn a_hook_sees_nothing_of_the_host_but_its_allow_list() {
    let env = Env::new();
    let elsewhere = env.base.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("secret.txt"), SECRET).unwrap();
    // The test sees both: the hook must not.
    let prod_secret = env.base.join("prod/data/secret.txt");
    assert_eq!(std::fs::read_to_string(&prod_secret).unwrap(), SECRET);
    let hooks = format!(
        r#"
[[profiles.p.hooks]]
name = "probe"
command = ["/bin/sh", "-c", '''
probe() {{ {PROBE}; }}
probe "{{base}}/elsewhere/secret.txt" "{{base}}/elsewhere" "{{base}}/prod/data/secret.txt" "{{base}}/prod" /root /home /srv /work > "$COWFS_CLONE_DIR/seen.txt"
cat "$COWFS_CLONE_DIR/data/people.txt"
ls -A "{{base}}"
echo scrubbed > "$COWFS_CLONE_DIR/data/people.txt"
echo "pid $$"
''']
"#
    );
    let reports = env.run(&hooks).unwrap_or_else(|e| panic!("{e}"));
    // The clone is there, readable and writable.
    // Only the path to the clone's mount, in the sandbox's own tmpfs.
    let out: Vec<&str> = reports[0].output.lines().collect();
    assert_eq!(out[..2], ["the people", "scratch"], "{}", reports[0].output);
    assert_eq!(env.clone_file("data/people.txt"), "scrubbed\n");
    // A fresh /proc: the hook's pid is its namespace's.
    assert!(
        reports[0].output.contains("pid 2\n"),
        "{}",
        reports[0].output
    );
    let seen = env.clone_file("seen.txt");
    let saw: Vec<&str> = seen.lines().filter(|l| !l.starts_with("no ")).collect();
    assert!(saw.is_empty(), "the hook saw host paths: {saw:?}\n{seen}");
    assert_eq!(seen.lines().count(), 8, "{seen}");
    assert!(!env.clone_file("seen.txt").contains(SECRET));
}

#[test]
fn a_mount_made_by_a_hook_does_not_reach_the_host() {
    let env = Env::new();
    let chan = env.base.join("chan");
    std::fs::create_dir_all(chan.join("sub")).unwrap();
    let source = format!("cowfs-sandbox-leak-{}", std::process::id());
    let hooks = format!(
        r#"
[[profiles.p.hooks]]
name = "mounts"
read_write_paths = ["{{base}}/chan"]
timeout_secs = 60
command = ["/bin/sh", "-c", '''
mkdir /tmp/x
mount -t tmpfs {source} /tmp/x 2>/dev/null
mount -t tmpfs {source} "{{base}}/chan/sub" 2>/dev/null
mount -t tmpfs {source} "$COWFS_CLONE_DIR/data" 2>/dev/null
grep -c {source} /proc/self/mounts
touch "{{base}}/chan/mounted"
while [ ! -e "{{base}}/chan/checked" ]; do sleep 0.05; done
''']
"#
    );
    let checker = {
        let chan = chan.clone();
        let source = source.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(50);
            while !chan.join("mounted").exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let _ = std::fs::write(chan.join("checked"), b"");
            host.lines()
                .filter(|l| l.contains(&source))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    };
    let r = env.run(&hooks);
    let _ = std::fs::write(chan.join("checked"), b"");
    let leaked = checker.join().unwrap();
    assert!(
        leaked.is_empty(),
        "the hook's mounts reached the host: {leaked:?}"
    );
    let reports = r.unwrap_or_else(|e| panic!("{e}"));
    // Not even in its own namespace: the hook has no CAP_SYS_ADMIN (see
    // `root_in_a_hook_cannot_undo_the_sandbox`).
    assert_eq!(reports[0].output, "0\n", "the hook's own mounts");
    assert!(chan.join("mounted").exists());
    // What the hook covered with its tmpfs is the clone's, unchanged.
    assert_eq!(env.clone_file("data/people.txt"), "the people\n");
}

#[test]
fn read_only_paths_are_visible_and_read_only() {
    let env = Env::new();
    let sql = env.base.join("sql");
    std::fs::create_dir(&sql).unwrap();
    std::fs::write(sql.join("scrub.sql"), "UPDATE users SET email = 'x';\n").unwrap();
    std::fs::write(env.base.join("beside.txt"), SECRET).unwrap();
    let hooks = format!(
        r#"
[[profiles.p.hooks]]
name = "reads"
read_only_paths = ["{{base}}/sql"]
command = ["/bin/sh", "-c", '''
cat "{{base}}/sql/scrub.sql"
if {{ echo x > "{{base}}/sql/new.txt"; }} 2>/dev/null; then echo wrote; else echo "write refused"; fi
if rm "{{base}}/sql/scrub.sql" 2>/dev/null; then echo removed; else echo "remove refused"; fi
probe() {{ {PROBE}; }}
probe "{{base}}/beside.txt"
''']
"#
    );
    let reports = env.run(&hooks).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        reports[0].output,
        format!(
            "UPDATE users SET email = 'x';\nwrite refused\nremove refused\nno {}/beside.txt\n",
            env.base.display()
        )
    );
    assert!(!sql.join("new.txt").exists());
    assert!(sql.join("scrub.sql").exists());

    std::os::unix::fs::symlink(&sql, env.base.join("sql-link")).unwrap();
    for (entry, why) in [
        ("sql", "must be an absolute path"),
        ("{base}/sql-link", "leads through a symlink"),
        ("{base}/sql-link/scrub.sql", "leads through a symlink"),
        ("{base}/sql/../sql", "must not contain '..'"),
        // Production's mounted branch (FUSE), listed outright.
        ("{base}/prod/data", "FUSE"),
        ("{base}/nonexistent", "No such file"),
        ("/", "the host's root"),
        ("/proc/1", "in /proc"),
        ("/etc", "in /etc"),
        ("{base}/scratch", "the scratch directory"),
        ("{base}", "the scratch directory"),
    ] {
        let hooks = format!(
            "[[profiles.p.hooks]]\nname = \"h\"\ncommand = \"true\"\nread_only_paths = [\"{entry}\"]\n"
        );
        let e = env.run(&hooks).unwrap_err();
        assert!(
            e.contains("hook 1 ('h')") || e.contains("hook 'h'"),
            "{entry}: {e}"
        );
        assert!(e.contains(why), "{entry}: {e}");
    }
    let nested = "[[profiles.p.hooks]]\nname = \"h\"\ncommand = \"true\"\nread_only_paths = [\"{base}/sql\"]\nread_write_paths = [\"{base}/sql\"]\n";
    let e = env.run(nested).unwrap_err();
    assert!(e.contains("one inside the other"), "{e}");
    let unknown =
        "[[profiles.p.hooks]]\nname = \"h\"\ncommand = \"true\"\nreadonly_paths = [\"/srv\"]\n";
    let e = env.run(unknown).unwrap_err();
    assert!(e.contains("readonly_paths"), "{e}");
}

/// The hook starts as root, and root with the daemon's capabilities undid the
/// sandbox from inside: it remounted a read-only bind read-write (and wrote
/// the host's directory through it), and could have made a device node of the
/// host's disk and mounted it, or opened the host's root by a file handle. The
/// hook keeps only what starting a server as another user needs.
#[test]
fn root_in_a_hook_cannot_undo_the_sandbox() {
    let env = Env::new();
    let sql = env.base.join("sql");
    std::fs::create_dir(&sql).unwrap();
    let hooks = r#"
[[profiles.p.hooks]]
name = "root"
read_only_paths = ["{base}/sql"]
command = ["/bin/sh", "-c", '''
try() { if "$@" 2>/dev/null; then echo "did $1"; else echo "refused $1"; fi; }
try mount -o remount,bind,rw "{base}/sql"
try touch "{base}/sql/through-remount"
try mknod /dev/cowfs-disk b 7 0
try mount -t tmpfs none /tmp
sed -n 's/^CapBnd:\t//p' /proc/self/status
try umount -l /usr
''']
"#;
    let reports = env.run(hooks).unwrap_or_else(|e| panic!("{e}"));
    let out = &reports[0].output;
    assert!(!sql.join("through-remount").exists(), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "refused mount",
            "refused touch",
            "refused mknod",
            "refused mount"
        ],
        "{out}"
    );
    // CAP_SYS_ADMIN (21), CAP_MKNOD (27), CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE
    // (19) and CAP_SYS_MODULE (16) are out of the bounding set.
    let bnd = u64::from_str_radix(lines[4], 16).unwrap();
    for cap in [2, 16, 19, 21, 27] {
        assert_eq!(bnd & (1 << cap), 0, "capability {cap} kept: {out}");
    }
    assert_eq!(lines[5..], ["refused umount"], "{out}");
}

/// A descriptor the daemon holds without FD_CLOEXEC (one it inherited from
/// whatever started it: under `cargo test`, 10 and 251) reached the hook, and
/// through it the server the hook starts: one on a host file outside the
/// sandbox read that file. The hook gets its stdio and nothing else.
#[test]
fn no_descriptor_of_the_daemon_reaches_a_hook() {
    let env = Env::new();
    let secret = env.base.join("elsewhere.txt");
    std::fs::write(&secret, SECRET).unwrap();
    let path = std::ffi::CString::new(secret.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: open of a live C string; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // The descriptors of listed paths' mounts (`sandbox`) are the daemon's too.
    std::fs::create_dir(env.base.join("sql")).unwrap();
    let hooks = format!(
        r#"
[[profiles.p.hooks]]
name = "fds"
read_only_paths = ["{{base}}/sql"]
command = ["/bin/sh", "-c", '''
cat /proc/self/fd/{fd} 2>/dev/null
for f in /proc/self/fd/*; do echo "${{f##*/}}"; done
''']
"#
    );
    let r = env.run(&hooks);
    // SAFETY: the descriptor opened above, closed once.
    unsafe { libc::close(fd) };
    let out = r.unwrap_or_else(|e| panic!("{e}")).remove(0).output;
    assert!(
        !out.contains(SECRET),
        "the hook read the daemon's descriptor: {out}"
    );
    // stdin, stdout, stderr, and the one the shell's glob read /proc/self/fd by.
    assert_eq!(out, "0\n1\n2\n3\n", "{out}");
}

/// A listed path is checked when the config loads, and the hook runs later:
/// resolved again by name then, a directory on the way swapped for a symlink
/// meanwhile (by whoever may write its parent) had the sandbox bind the
/// symlink's target, read-write here, and the hook read its secret. Whether
/// the swapped component is the last one or one above it, the run must fail,
/// naming the path, before the hook sees anything.
#[test]
fn a_listed_path_swapped_for_a_symlink_after_the_load_is_not_bound() {
    let env = Env::new();
    for (listed, swapped) in [("shared", "shared"), ("mid/shared", "mid")] {
        let target = env.base.join(format!("target-of-{swapped}"));
        let secret_dir = if listed == swapped {
            target.clone()
        } else {
            target.join("shared")
        };
        std::fs::create_dir_all(&secret_dir).unwrap();
        std::fs::write(secret_dir.join("secret.txt"), SECRET).unwrap();
        std::fs::create_dir_all(env.base.join(listed)).unwrap();
        let hooks = format!(
            r#"
[[profiles.p.hooks]]
name = "swap"
read_write_paths = ["{{base}}/{listed}"]
command = ["/bin/sh", "-c", '''
cat "{{base}}/{listed}/secret.txt" "{secret}/secret.txt" > "$COWFS_CLONE_DIR/seen.txt" 2>/dev/null
echo ran
''']
"#,
            secret = secret_dir.display()
        );
        let swap = || {
            let at = env.base.join(swapped);
            std::fs::remove_dir_all(&at).unwrap();
            std::os::unix::fs::symlink(&target, &at).unwrap();
        };
        let r = env.run_after_load(&hooks, swap);
        let c = env.pool.branch_id("c").unwrap();
        let seen = files(&env.pool, c)
            .get("seen.txt")
            .map(|b| String::from_utf8_lossy(b).into_owned());
        assert!(
            !seen.as_deref().unwrap_or("").contains(SECRET),
            "{listed}: the hook read the symlink's target: {seen:?}"
        );
        let e = r.expect_err(listed);
        let named = format!("'{}/{listed}'", env.base.display());
        assert!(
            e.contains(&named) && e.contains("leads through a symlink"),
            "{listed}: {e}"
        );
        assert!(seen.is_none(), "{listed}: the hook ran: {seen:?}");
    }
}

/// The sandbox's tmpfs mounts are the host's memory: without a size they
/// took half the RAM each, and root in the hook (or the clone's code) could
/// fill them. Each is bounded: by `tmpfs_size_mib`, and 256 MiB by default.
#[test]
fn tmpfs_mounts_are_bounded() {
    let env = Env::new();
    // For each directory: what writing `count` MiB there came to.
    let fill = |dirs: &str, count: u32| {
        format!(
            r#"for d in {dirs}; do
  if dd if=/dev/zero of="$d/fill" bs=1M count={count} 2>"$COWFS_CLONE_DIR/dd.err"; then r=wrote; else r=$(grep -o 'No space left on device' "$COWFS_CLONE_DIR/dd.err"); fi
  echo "$d $(stat -c %s "$d/fill") $r"
  rm -f "$d/fill"
done"#
        )
    };
    let mib = 1u64 << 20;
    let check = |out: &str, dirs: &[&str], limit: u64| {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), dirs.len(), "{out}");
        for (line, dir) in lines.iter().zip(dirs) {
            let f: Vec<&str> = line.splitn(3, ' ').collect();
            assert_eq!(f[0], *dir, "{out}");
            assert_eq!(f[2], "No space left on device", "{dir}: {out}");
            // It stopped at the limit, not short of it.
            let size: u64 = f[1].parse().unwrap();
            assert!(
                size <= limit && size + 2 * mib >= limit,
                "{dir}: {size} bytes against a limit of {limit}: {out}"
            );
        }
    };
    let hooks = format!(
        r#"
[[profiles.p.hooks]]
name = "small"
tmpfs_size_mib = 8
command = ["/bin/sh", "-c", '''
{}
''']
"#,
        fill("/tmp /run /dev/shm /dev", 32)
    );
    let reports = env.run(&hooks).unwrap_or_else(|e| panic!("{e}"));
    let out = &reports[0].output;
    let (tmpfs, dev) = out.split_at(out.find("/dev ").expect(out));
    check(tmpfs, &["/tmp", "/run", "/dev/shm"], 8 * mib);
    // /dev holds a few nodes and links: 1 MiB at most.
    check(dev, &["/dev"], mib);

    let hooks = format!(
        "[[profiles.p.hooks]]\nname = \"default\"\ncommand = [\"/bin/sh\", \"-c\", '''\n{}\n''']\n",
        fill("/dev/shm", 300)
    );
    let reports = env.run(&hooks).unwrap_or_else(|e| panic!("{e}"));
    check(&reports[0].output, &["/dev/shm"], 256 * mib);

    for bad in ["0", "16385"] {
        let hooks = format!(
            "[[profiles.p.hooks]]\nname = \"h\"\ncommand = \"true\"\ntmpfs_size_mib = {bad}\n"
        );
        let e = env.run(&hooks).unwrap_err();
        assert!(
            e.contains("hook 1 ('h')") && e.contains(&format!("`tmpfs_size_mib` is {bad}")),
            "{e}"
        );
    }
}

/// A mount the test makes on the host, detached when dropped (also when the
/// test fails).
struct HostMount(std::ffi::CString);

impl HostMount {
    fn cstr(dir: &Path) -> std::ffi::CString {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap()
    }

    /// `dir` bound onto itself, then remounted with `flags` (MS_RDONLY, ...).
    fn bind(dir: &Path, flags: libc::c_ulong) -> HostMount {
        let c = Self::cstr(dir);
        let none = std::ptr::null();
        // SAFETY: mount(2) on a live C string and the null pointers it allows.
        let r = unsafe { libc::mount(c.as_ptr(), c.as_ptr(), none, libc::MS_BIND, none.cast()) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        let bind = HostMount(c);
        bind.set(libc::MS_BIND | libc::MS_REMOUNT | flags);
        bind
    }

    /// A small tmpfs on `dir`, mounted with `flags` (MS_NOEXEC, ...).
    fn tmpfs(dir: &Path, flags: libc::c_ulong) -> HostMount {
        let c = Self::cstr(dir);
        // SAFETY: mount(2) on live C strings.
        let r = unsafe {
            libc::mount(
                c"cowfs-test".as_ptr(),
                c.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                c"size=1m".as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        HostMount(c)
    }

    /// mount(2) of this mount with `flags` alone (a remount, a propagation).
    fn set(&self, flags: libc::c_ulong) {
        let none = std::ptr::null();
        // SAFETY: mount(2) on a live C string and the null pointers it allows.
        let r = unsafe { libc::mount(none, self.0.as_ptr(), none, flags, none.cast()) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        // SAFETY: umount2 of a live C string.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A listed path is attached in the sandbox, then remounted with the flags
/// the sandbox adds (nosuid, nodev, and read-only for `read_only_paths`); a
/// bind remount sets a mount's flags, it does not add to them, so a host
/// mount the host made read-only (or noexec) came out writable (executable)
/// when listed in `read_write_paths`: the hook, the clone's code, wrote where
/// no one on the host may. The sandbox keeps the host mount's restrictions.
#[test]
fn a_listed_path_keeps_the_host_mounts_restrictions() {
    let env = Env::new();
    let dir = env.base.join("ro-on-host");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\necho executed\n").unwrap();
    std::fs::set_permissions(
        dir.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let _bind = HostMount::bind(&dir, libc::MS_RDONLY | libc::MS_NOEXEC);
    let hooks = r#"
[[profiles.p.hooks]]
name = "writes"
read_write_paths = ["{base}/ro-on-host"]
command = ["/bin/sh", "-c", '''
if { echo x > "{base}/ro-on-host/new.txt"; } 2>/dev/null; then echo wrote; else echo "write refused"; fi
"{base}/ro-on-host/run.sh" 2>/dev/null || echo "exec refused"
''']
"#;
    let reports = env.run(hooks).unwrap_or_else(|e| panic!("{e}"));
    assert!(!dir.join("new.txt").exists(), "{}", reports[0].output);
    assert_eq!(reports[0].output, "write refused\nexec refused\n");
}

/// Every bind of the sandbox was remounted with the flags it adds (nosuid,
/// nodev, read-only), and a bind remount sets a mount's flags: a host mount
/// that was noexec came out executable. The hook's program's directory on a
/// noexec mount of the host let the program run in the sandbox, where the
/// host refuses it; it must stay noexec, as every bind keeps the host's
/// restrictions.
#[test]
fn a_hook_programs_directory_keeps_the_host_mounts_noexec() {
    let env = Env::new();
    let dir = env.base.join("hooks");
    std::fs::create_dir(&dir).unwrap();
    let _tmpfs = HostMount::tmpfs(&dir, libc::MS_NOEXEC | libc::MS_NOSUID | libc::MS_NODEV);
    let program = dir.join("run.sh");
    std::fs::write(&program, "#!/bin/sh\necho executed\n").unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The host refuses it.
    let e = std::process::Command::new(&program).output().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    let hooks = "[[profiles.p.hooks]]\nname = \"noexec\"\ncommand = [\"{base}/hooks/run.sh\"]\n";
    let r = env.run(hooks);
    let e = r.expect_err("the hook's program ran from a noexec mount");
    assert!(
        e.contains("hook 'noexec'") && e.contains("Permission denied"),
        "{e}"
    );
}
