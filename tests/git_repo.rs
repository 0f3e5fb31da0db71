//! A git repository on a branch: clone a local repository (made here on the
//! native filesystem) onto the mount, commit in the clone, repack; `git fsck
//! --full` is clean, also after a remount; cowfs fsck clean.

mod mount;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use mount::*;

fn git(dir: &Path, home: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=cowfs test",
            "-c",
            "user.email=test@cowfs.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("LC_ALL", "C")
        .output()
        .expect("run git (install the git package)");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn clone_commit_fsck() {
    let fx = Fixture::new();
    let home = fx.native_dir("home");
    let origin = fx.native_dir("origin");
    git(&origin, &home, &["init", "-q"]);
    fs::create_dir_all(origin.join("src/deep/er")).unwrap();
    for i in 0..40 {
        let body: String = (0..200 + i * 50)
            .map(|j| format!("line {j} of file {i}\n"))
            .collect();
        fs::write(origin.join(format!("src/deep/er/f{i}.txt")), body).unwrap();
    }
    fs::write(origin.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(origin.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/deep", origin.join("link")).unwrap();
    fs::write(origin.join("big.bin"), vec![0xabu8; 3 << 20]).unwrap();
    git(&origin, &home, &["add", "-A"]);
    git(&origin, &home, &["commit", "-q", "-m", "first"]);
    fs::write(origin.join("README"), "second commit\n").unwrap();
    git(&origin, &home, &["add", "-A"]);
    git(&origin, &home, &["commit", "-q", "-m", "second"]);

    let m = fx.mount();
    git(
        &m.mnt,
        &home,
        &[
            "clone",
            "-q",
            "--no-local",
            origin.to_str().expect("utf-8 path"),
            "clone",
        ],
    );
    let clone = m.mnt.join("clone");
    assert_eq!(fs::read(clone.join("README")).unwrap(), b"second commit\n");
    assert_eq!(
        fs::metadata(clone.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(clone.join("link")).unwrap(),
        Path::new("src/deep")
    );
    // Work in the clone: modify, add, remove, rename, commit, repack.
    fs::write(clone.join("src/deep/er/f3.txt"), "rewritten\n").unwrap();
    fs::write(clone.join("new.txt"), "new file\n").unwrap();
    fs::remove_file(clone.join("src/deep/er/f7.txt")).unwrap();
    git(&clone, &home, &["mv", "src/deep/er/f9.txt", "moved.txt"]);
    git(&clone, &home, &["add", "-A"]);
    git(&clone, &home, &["commit", "-q", "-m", "third, on cowfs"]);
    git(&clone, &home, &["gc", "-q", "--aggressive", "--prune=now"]);
    git(&clone, &home, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&clone, &home, &["status", "--porcelain"]), "");
    assert_eq!(git(&clone, &home, &["rev-list", "--count", "HEAD"]), "3");
    let head = git(&clone, &home, &["rev-parse", "HEAD"]);

    m.stop();
    let m = fx.mount();
    let clone = m.mnt.join("clone");
    git(&clone, &home, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&clone, &home, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(&clone, &home, &["status", "--porcelain"]), "");
    assert_eq!(fs::read(clone.join("new.txt")).unwrap(), b"new file\n");
    m.stop();
    fx.assert_fsck_clean();
}
