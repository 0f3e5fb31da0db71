//! The memory limit of sanitize hooks (sanitize::cgroup): each run has a memory
//! cgroup of its own below the daemon's, limited to `memory_max_mib`, which the
//! hook's process joins before it execs. A hook within the limit succeeds, and
//! its cgroup exists with the limit while it runs; a hook whose child allocates
//! past it fails with a message naming the limit; a limit that cannot be
//! applied (no cgroup file system) fails the run before the hook starts; bad
//! `memory_max_mib` values fail the config's load. No cgroup is left behind.
//!
//! Needs root and memory cgroups (v1 or v2); perl in /usr/bin allocates.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cowfs::control::sanitize::config::{Hook, DEFAULT_MEMORY_MAX_MIB};
use cowfs::control::sanitize::{run_hook, SanitizeConfig, SanitizeError};

/// The first hook of profile `p` of `hooks` (TOML).
fn load(hooks: &str) -> Result<Hook, String> {
    let cfg = SanitizeConfig::parse(hooks, Path::new("/")).map_err(|e| e.to_string())?;
    Ok(cfg.profiles["p"].hooks[0].clone())
}

/// A hook limited to 64 MiB that writes its /proc/self/cgroup to `cgroup` in
/// the clone, waits for `go` there (at most 30 s), then has perl (a child of
/// the shell) allocate `mib` MiB and say so.
fn hook_allocating(mib: u32) -> Hook {
    load(&format!(
        r#"
[[profiles.p.hooks]]
name = "alloc"
memory_max_mib = 64
timeout_secs = 60
command = ["/bin/sh", "-c", '''
cat /proc/self/cgroup > "$COWFS_CLONE_DIR/cgroup.new" && mv "$COWFS_CLONE_DIR/cgroup.new" "$COWFS_CLONE_DIR/cgroup"
i=0; while [ ! -e "$COWFS_CLONE_DIR/go" ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done
echo allocating
/usr/bin/perl -e '$x = "x" x ({mib} << 20); print "allocated ", length($x) >> 20, " MiB\n"'
''']
"#
    ))
    .unwrap()
}

/// The host directory of the memory cgroup named in `/proc/PID/cgroup` text,
/// and the file holding its limit (v1 preferred, as the daemon does).
fn memory_cgroup(text: &str) -> (PathBuf, &'static str) {
    let mut unified = None;
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(3, ':').collect();
        let path = f[2].trim_start_matches('/');
        if f[1].split(',').any(|c| c == "memory") {
            return (
                Path::new("/sys/fs/cgroup/memory").join(path),
                "memory.limit_in_bytes",
            );
        }
        if f[0] == "0" {
            unified = Some(Path::new("/sys/fs/cgroup").join(path));
        }
    }
    (unified.expect(text), "memory.max")
}

/// Wait (at most 30 s) for the hook's `cgroup` file in `dir`.
fn wait_for_cgroup(dir: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(t) = std::fs::read_to_string(dir.join("cgroup")) {
            return t;
        }
        assert!(Instant::now() < deadline, "the hook never wrote its cgroup");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Within the limit, the hook succeeds. While it runs, its cgroup is a new one
/// below the daemon's, limited to 64 MiB (memory and swap), with the hook's
/// processes in it; after the run it is gone.
#[test]
fn a_hook_runs_in_a_cgroup_of_its_own_with_its_limit() {
    let clone = tempfile::tempdir().unwrap();
    let (own, _) = memory_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap());
    let h = hook_allocating(16);
    let r = std::thread::scope(|s| {
        let run = s.spawn(|| run_hook(&h, clone.path(), "b", "k"));
        let (dir, limit_file) = memory_cgroup(&wait_for_cgroup(clone.path()));
        // Checked before the hook goes on, so that a failed check does not
        // leave it waiting: it gives up after 30 s by itself.
        let seen = (|| {
            let limit = std::fs::read_to_string(dir.join(limit_file)).ok()?;
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
            let memsw = std::fs::read_to_string(dir.join("memory.memsw.limit_in_bytes")).ok();
            Some((limit, procs, memsw))
        })();
        std::fs::write(clone.path().join("go"), "").unwrap();
        let r = run.join().unwrap();
        (dir, seen, r)
    });
    let (dir, seen, r) = r;
    let (limit, procs, memsw) = seen.unwrap_or_else(|| panic!("no cgroup at {}", dir.display()));
    assert_eq!(dir.parent(), Some(own.as_path()), "{}", dir.display());
    assert!(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("cowfs-hook-"),
        "{}",
        dir.display()
    );
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    if let Some(memsw) = memsw {
        assert_eq!(memsw.trim(), (64u64 << 20).to_string(), "memory+swap");
    }
    // The hook's shell (and, while it waited, its sleep): not the daemon.
    assert!(!procs.trim().is_empty(), "no process in the cgroup");
    let own_pid = std::process::id().to_string();
    assert!(!procs.lines().any(|p| p == own_pid), "{procs}");
    let r = r.unwrap_or_else(|e| panic!("{e}"));
    assert!(r.output.contains("allocated 16 MiB"), "{}", r.output);
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

/// A child of the hook that allocates past the limit is killed by the kernel
/// (and not the host's memory taken): the run fails, naming the limit, with
/// the output so far, and the cgroup is removed.
#[test]
fn a_hook_over_its_limit_fails_naming_it() {
    let clone = tempfile::tempdir().unwrap();
    std::fs::write(clone.path().join("go"), "").unwrap();
    let e = run_hook(&hook_allocating(256), clone.path(), "b", "k").unwrap_err();
    let msg = e.to_string();
    match &e {
        SanitizeError::HookOutOfMemory {
            memory_max_mib,
            oom_kills,
            output,
            ..
        } => {
            assert_eq!(*memory_max_mib, 64);
            assert!(*oom_kills >= 1);
            assert!(output.contains("allocating"), "{output}");
            assert!(!output.contains("allocated"), "{output}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        msg.contains("hook 'alloc' exceeded its memory limit of 64 MiB (memory_max_mib)"),
        "{msg}"
    );
    let text = std::fs::read_to_string(clone.path().join("cgroup")).unwrap();
    let (dir, _) = memory_cgroup(&text);
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

/// A daemon killed while a hook ran could not remove that run's cgroup; the
/// next run removes it (empty: its processes died with the daemon), and keeps
/// those of daemons still running.
#[test]
fn a_stale_cgroup_of_a_dead_daemon_is_removed() {
    let (own, _) = memory_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap());
    let mut dead = std::process::Command::new("/bin/true").spawn().unwrap();
    dead.wait().unwrap();
    let stale = own.join(format!("cowfs-hook-{}-0", dead.id()));
    // pid 1 runs: its cgroup (as another daemon's would) stays.
    let live = own.join(format!("cowfs-hook-1-{}", std::process::id()));
    std::fs::create_dir(&stale).unwrap();
    std::fs::create_dir(&live).unwrap();
    let h = load("[[profiles.p.hooks]]\nname = \"h\"\ncommand = \"true\"\n").unwrap();
    let r = run_hook(&h, &std::env::temp_dir(), "b", "k");
    let live_kept = live.exists();
    let _ = std::fs::remove_dir(&live);
    r.unwrap_or_else(|e| panic!("{e}"));
    assert!(!stale.exists(), "{} was left", stale.display());
    assert!(live_kept, "{} was removed", live.display());
}

/// Where the memory cgroup cannot be made (here: an empty read-only tmpfs over
/// /sys/fs/cgroup, in a mount namespace of this test's thread), a hook whose
/// config set `memory_max_mib` is not run, and the error names the limit and
/// the path.
#[test]
fn a_limit_that_cannot_be_applied_fails_the_run() {
    let clone = tempfile::tempdir().unwrap();
    let h = load(
        "[[profiles.p.hooks]]\nname = \"h\"\ncommand = \"touch \\\"$COWFS_CLONE_DIR/ran\\\"\"\nmemory_max_mib = 512\n",
    )
    .unwrap();
    let e = std::thread::scope(|s| {
        s.spawn(|| {
            hide_cgroups();
            run_hook(&h, clone.path(), "b", "k").unwrap_err()
        })
        .join()
        .unwrap()
    });
    let msg = e.to_string();
    assert!(matches!(e, SanitizeError::HookMemoryLimit { .. }), "{e:?}");
    assert!(
        msg.contains(
            "hook 'h' was not run: its memory limit (memory_max_mib = 512) cannot be applied: /sys/fs/cgroup"
        ),
        "{msg}"
    );
    assert!(!clone.path().join("ran").exists(), "the hook ran");
}

/// The default limit, where it cannot be applied, is done without (a warning
/// is logged): the hook runs, as on a cgroup v2 host whose daemon runs in a
/// plain service cgroup.
#[test]
fn the_default_limit_is_skipped_where_it_cannot_be_applied() {
    let clone = tempfile::tempdir().unwrap();
    let h = load(
        "[[profiles.p.hooks]]\nname = \"h\"\ncommand = \"touch \\\"$COWFS_CLONE_DIR/ran\\\"\"\n",
    )
    .unwrap();
    assert_eq!(h.memory_max_mib, DEFAULT_MEMORY_MAX_MIB);
    std::thread::scope(|s| {
        s.spawn(|| {
            hide_cgroups();
            run_hook(&h, clone.path(), "b", "k").unwrap_or_else(|e| panic!("{e}"))
        })
        .join()
        .unwrap()
    });
    assert!(clone.path().join("ran").exists(), "the hook did not run");
}

/// In a mount namespace of the calling thread's own: an empty read-only tmpfs
/// over /sys/fs/cgroup.
fn hide_cgroups() {
    // SAFETY: unshare and mount on this thread only, with NUL-terminated
    // strings that outlive the calls.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare");
        let root = c"/";
        let r = libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        let r = libc::mount(
            c"none".as_ptr(),
            c"/sys/fs/cgroup".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY,
            std::ptr::null(),
        );
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    }
}

/// `memory_max_mib` defaults to 2 GiB; 0, less than 16 MiB and more than 1 TiB
/// fail the load, naming the setting.
#[test]
fn memory_max_mib_is_validated() {
    let hook = |extra: &str| {
        load(&format!(
            "[[profiles.p.hooks]]\nname = \"h\"\ncommand = \"true\"\n{extra}"
        ))
    };
    assert_eq!(hook("").unwrap().memory_max_mib, 2048);
    assert_eq!(hook("memory_max_mib = 16").unwrap().memory_max_mib, 16);
    for bad in ["0", "15", "1048577"] {
        let e = hook(&format!("memory_max_mib = {bad}\n")).unwrap_err();
        assert!(
            e.contains("hook 1 ('h')")
                && e.contains(&format!("`memory_max_mib` is {bad}: give 16 to 1048576")),
            "{e}"
        );
    }
}
