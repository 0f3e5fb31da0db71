//! Issue 3, check 6 (isolation): while `main` is mounted and being written, a branch
//! is created through `cowfs-ctl branch create --mount`; the branch holds every write
//! that completed before the request; then both mounts are written with different
//! data and each sees only its own writes.

mod control_support;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use control_support::*;

fn ctl(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cowfs-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("--token-file")
        .arg(cowfs::control::tokens::secret_path(&d.pool_path))
        .args(args)
        .env_remove("COWFS_SOCKET")
        .env_remove("COWFS_TOKEN")
        .output()
        .expect("run cowfs-ctl")
}

/// Writes numbered files and appends numbered lines to a log, recording the last
/// write that completed (returned from write(2) and close(2)).
fn writer(dir: PathBuf, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> std::io::Result<()> {
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        fs::write(dir.join(format!("f{i}")), format!("main {i}"))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))?;
        log.write_all(format!("{i}\n").as_bytes())?;
        drop(log);
        done.store(i + 1, Ordering::SeqCst);
        i += 1;
    }
    Ok(())
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[test]
fn branch_of_a_mounted_branch_being_written() {
    let d = Daemon::start();
    let main_mnt = d.dir("main");
    let feat_mnt = d.dir("feature");
    let out = ctl(&d, &["mount", "main", main_mnt.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mountpoint(&main_mnt));

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let w = {
        let (dir, stop, done) = (main_mnt.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || writer(dir, stop, done))
    };
    while done.load(Ordering::SeqCst) < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = done.load(Ordering::SeqCst);
    let out = ctl(
        &d,
        &[
            "branch",
            "create",
            "feature",
            "--from",
            "main",
            "--mount",
            feat_mnt.to_str().expect("utf-8"),
        ],
    );
    let after = done.load(Ordering::SeqCst);
    // Keep writing main a little while the branch is mounted.
    while done.load(Ordering::SeqCst) < after + 100 {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    w.join().expect("writer thread").expect("writes to main");
    let total = done.load(Ordering::SeqCst);
    assert!(
        out.status.success(),
        "branch create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("feature") && table.contains(feat_mnt.to_str().expect("utf-8")),
        "{table}"
    );
    assert!(is_mountpoint(&feat_mnt));

    // Every write completed before the request is in the branch.
    for i in 0..before {
        assert_eq!(read(&feat_mnt.join(format!("f{i}"))), format!("main {i}"));
    }
    let feat_log = read(&feat_mnt.join("log"));
    let lines: Vec<u64> = feat_log
        .lines()
        .map(|l| l.parse().expect("log line"))
        .collect();
    assert!(lines.len() as u64 >= before, "{} < {before}", lines.len());
    assert_eq!(lines, (0..lines.len() as u64).collect::<Vec<_>>());
    // Writes that started after the branch existed stay in main only.
    for i in after + 1..total {
        assert!(
            !feat_mnt.join(format!("f{i}")).exists(),
            "f{i} was written to main after the branch was taken"
        );
        assert_eq!(read(&main_mnt.join(format!("f{i}"))), format!("main {i}"));
    }
    assert_eq!(read(&main_mnt.join("log")).lines().count() as u64, total);

    // Different data in both: each mount sees only its own writes.
    fs::write(main_mnt.join("f0"), "changed in main").expect("write main");
    fs::write(feat_mnt.join("f1"), "changed in feature").expect("write feature");
    fs::write(main_mnt.join("only-main"), "m").expect("write main");
    fs::write(feat_mnt.join("only-feature"), "f").expect("write feature");
    fs::remove_file(feat_mnt.join("f2")).expect("unlink in feature");
    assert_eq!(read(&main_mnt.join("f0")), "changed in main");
    assert_eq!(read(&feat_mnt.join("f0")), "main 0");
    assert_eq!(read(&feat_mnt.join("f1")), "changed in feature");
    assert_eq!(read(&main_mnt.join("f1")), "main 1");
    assert!(!feat_mnt.join("only-main").exists());
    assert!(!main_mnt.join("only-feature").exists());
    assert_eq!(read(&main_mnt.join("f2")), "main 2");
    assert!(!feat_mnt.join("f2").exists());

    // The same holds in the engine (diff flushes both mounts first, which must
    // survive the file unlinked in the feature mount).
    let diff = d.admin_client().diff("main", "feature").expect("diff");
    let paths: Vec<&str> = diff.entries.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"/only-feature") && paths.contains(&"/only-main"));
    assert!(paths.contains(&"/f0") && paths.contains(&"/f1") && paths.contains(&"/f2"));

    for dir in [&feat_mnt, &main_mnt] {
        let out = ctl(&d, &["unmount", dir.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!is_mountpoint(dir));
    }
}
