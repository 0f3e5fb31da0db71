//! A pool on a block device (a loop device here), through the `cowfs` binary:
//! - `cowfs init` refuses a device that holds a filesystem or a pool, and leaves
//!   it intact; it creates a pool on a zeroed one;
//! - the side files (tokens, lock, ...) go to the state directory, not to `/dev`
//!   (a memory filesystem, emptied at every boot);
//! - the device is claimed while open: a second cowfs through another name of the
//!   same device (a symlink, as `/dev/disk/by-id/...` is) is refused;
//! - what a mount wrote is there after a refused re-init, and fsck is clean;
//! - through a stable name of the device (a symlink, as `/dev/disk/by-id/...` is),
//!   `cowfs serve` finds the side files `cowfs init` wrote under that name.
//!
//! Needs root, loop devices and e2fsprogs (`.ci/run` installs them).

#[path = "control_support/mod.rs"]
mod control_support;
#[path = "mount/mod.rs"]
mod mount;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use control_support::{connect, Served};
use cowfs_ctl::proto::MountSpec;
use mount::{cowfs_bin, Mounted};

/// A loop device over a sparse file, detached on drop.
struct LoopDevice {
    dev: PathBuf,
}

impl LoopDevice {
    fn new(image: &Path, bytes: u64) -> LoopDevice {
        fs::File::create(image)
            .and_then(|f| f.set_len(bytes))
            .expect("image file");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()
            .expect("run losetup");
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        LoopDevice { dev: dev.into() }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Runs `cowfs ARGS` with the test's state directory; (success, stdout + stderr).
fn cowfs(state: &Path, args: &[&Path]) -> (bool, String) {
    let out = Command::new(cowfs_bin())
        .args(args)
        .env("COWFS_STATE_DIR", state)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cowfs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("run");
    assert!(st.success(), "{cmd:?}: {st}");
}

fn zero_first_mib(dev: &Path) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .expect("open device");
    std::io::Write::write_all(&mut f, &vec![0u8; 1 << 20]).expect("zero");
    f.sync_all().expect("sync device");
}

/// The side files cowfs could have put beside the device.
fn beside(dev: &Path) -> Vec<PathBuf> {
    let name = dev
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    fs::read_dir(dev.parent().expect("/dev"))
        .expect("read /dev")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let n = p.file_name().expect("name").to_string_lossy();
            n.starts_with(&format!("{name}.")) && n.len() > name.len() + 1
        })
        .collect()
}

/// A temporary directory others may traverse (mariadbd and the like run as
/// their own users), and its canonical path.
fn scratch_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-blockdev-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod tmp");
    let base = tmp.path().canonicalize().expect("canonical tmp");
    (tmp, base)
}

#[test]
fn a_pool_on_a_block_device() {
    let (_tmp, base) = scratch_dir();
    let state = base.join("state");
    let lo = LoopDevice::new(&base.join("image"), 256 << 20);
    let dev = lo.dev.as_path();

    // A device holding a filesystem is refused and left as it was.
    run(Command::new("mkfs.ext4").arg("-q").arg(dev));
    let (ok, text) = cowfs(&state, &[Path::new("init"), dev]);
    assert!(!ok, "init over ext4 succeeded: {text}");
    assert!(
        text.contains("holds an ext2/ext3/ext4 filesystem"),
        "{text}"
    );
    run(Command::new("e2fsck")
        .args(["-n", "-f"])
        .arg(dev)
        .stdout(std::process::Stdio::null()));

    // A zeroed one takes a pool; its side files land in the state directory.
    zero_first_mib(dev);
    let (ok, text) = cowfs(&state, &[Path::new("init"), dev]);
    assert!(ok, "init on a zeroed device: {text}");
    let token = side(&state, ".token");
    let mode = fs::metadata(&token)
        .expect("token in the state dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", token.display());
    assert_eq!(beside(dev), Vec::<PathBuf>::new(), "side files in /dev");

    // Mounted, the device is taken: under another name, the pool's lock (keyed by
    // its id) refuses a second cowfs; with other side files (another state
    // directory), the device's exclusive claim does.
    std::env::set_var("COWFS_STATE_DIR", &state);
    let mnt = base.join("mnt");
    fs::create_dir(&mnt).expect("mkdir mnt");
    let m = Mounted::start(dev, "main", &mnt, false);
    fs::write(mnt.join("kept"), b"on the device").expect("write on the mount");
    let alias = base.join("alias");
    std::os::unix::fs::symlink(dev, &alias).expect("symlink");
    let (ok, text) = cowfs(&state, &[Path::new("fsck"), &alias]);
    assert!(!ok, "fsck through an alias of a device in use ran: {text}");
    assert!(
        text.contains("is in use by another cowfs process"),
        "{text}"
    );
    let (ok, text) = cowfs(&base.join("other-state"), &[Path::new("fsck"), &alias]);
    assert!(!ok, "fsck of a device in use ran: {text}");
    assert!(text.contains("the device is in use"), "{text}");
    m.stop();

    // Unmounted, a second init is refused: the device holds a pool.
    let (ok, text) = cowfs(&state, &[Path::new("init"), &alias]);
    assert!(!ok, "init over a pool succeeded: {text}");
    assert!(text.contains("holds a cowfs pool"), "{text}");
    // Under the name whose side files are there too: the pool is what refuses.
    let (ok, text) = cowfs(&state, &[Path::new("init"), dev]);
    assert!(!ok, "init over a pool succeeded: {text}");
    assert!(text.contains("holds a cowfs pool"), "{text}");
    let m = Mounted::start(dev, "main", &mnt, false);
    assert_eq!(
        fs::read(mnt.join("kept")).expect("read back"),
        b"on the device"
    );
    m.stop();
    let (ok, text) = cowfs(&state, &[Path::new("fsck"), dev]);
    assert!(ok, "fsck: {text}");
    assert!(text.contains("clean"), "{text}");
    assert_eq!(beside(dev), Vec::<PathBuf>::new(), "side files in /dev");
}

/// `STATE/<pool id>/pool + suffix`: where the side file `suffix` of the one pool
/// made in the state directory `state` belongs (its directory is named by the
/// pool's id, 16 hex digits).
fn side(state: &Path, suffix: &str) -> PathBuf {
    let ids: Vec<PathBuf> = fs::read_dir(state)
        .expect("state dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| is_pool_id(p))
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "pool directories in {}: {ids:?}",
        state.display()
    );
    ids[0].join(format!("pool{suffix}"))
}

fn is_pool_id(p: &Path) -> bool {
    let name = p.file_name().expect("name").to_string_lossy();
    name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit())
}

/// The README's advice: a pool named by a stable symlink to its device; then the
/// daemon started under the kernel's name of the device finds the same side
/// files, keyed by the pool's id (its token still works, its branch is there).
/// (Before: side files were keyed by name; the daemon resolved the symlink and
/// did not even start, and under another name it would have made a new admin
/// token and started without the sanitize profiles the pool requires.)
#[test]
fn a_pool_served_through_a_stable_name_of_its_device() {
    let (_tmp, base) = scratch_dir();
    let state = base.join("state");
    let lo = LoopDevice::new(&base.join("image"), 256 << 20);
    let by_id = base.join("by-id");
    std::os::unix::fs::symlink(&lo.dev, &by_id).expect("symlink");

    let (ok, text) = cowfs(&state, &[Path::new("init"), &by_id]);
    assert!(ok, "init: {text}");
    let secret = fs::read_to_string(side(&state, ".token")).expect("POOL.token");
    let serve = |name: &Path| {
        let child = Command::new(cowfs_bin())
            .arg("serve")
            .arg(name)
            .env("COWFS_STATE_DIR", &state)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn cowfs serve");
        Served::new(child, &base)
    };
    let mut served = serve(&by_id);
    let mut c = connect(&side(&state, ".sock"), secret.trim());
    let dir = side(&state, ".mnt").join("b");
    fs::create_dir(&dir).expect("mkdir under the mount root");
    let mount = MountSpec {
        dir: dir.to_string_lossy().into_owned(),
        read_only: false,
    };
    c.branch_create("b", "main", Some(mount))
        .expect("branch create --mount");
    fs::write(dir.join("f"), b"through by-id").expect("write on the mount");
    drop(c);
    assert_eq!(served.stop(), Some(0), "cowfs serve exit code");

    let mut served = serve(&lo.dev);
    let mut c = connect(&side(&state, ".sock"), secret.trim());
    let names: Vec<String> = c
        .list()
        .expect("list")
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert!(names.contains(&"b".to_string()), "{names:?}");
    drop(c);
    assert_eq!(served.stop(), Some(0), "cowfs serve exit code");
    let (ok, text) = cowfs(&state, &[Path::new("fsck"), &by_id]);
    assert!(ok, "fsck: {text}");
}

/// A relative device path: its side files are keyed by the absolute path it
/// names, with `..` taken by name, inside the state directory. (Before: `..`
/// was joined as given, climbed out of the state directory, and from deep enough
/// put them beside the device in /dev.)
#[test]
fn a_relative_device_path_keeps_the_side_files_in_the_state_directory() {
    let (_tmp, base) = scratch_dir();
    let state = base.join("state");
    let lo = LoopDevice::new(&base.join("image"), 256 << 20);
    // More `..` than base is deep: the kernel stops at `/`.
    let up = "../".repeat(base.components().count() + state.components().count());
    let relative = PathBuf::from(up).join(lo.dev.strip_prefix("/").expect("absolute"));
    let out = Command::new(cowfs_bin())
        .arg("init")
        .arg(&relative)
        .current_dir(&base)
        .env("COWFS_STATE_DIR", &state)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cowfs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "init {}: {text}", relative.display());
    let side_files = beside(&lo.dev);
    for f in &side_files {
        let _ = fs::remove_file(f);
    }
    assert_eq!(side_files, Vec::<PathBuf>::new(), "side files in /dev");
    assert!(side(&state, ".token").exists(), "no token in the state dir");
    // The pool's directory, and `dev/` for init's lock (taken before the device
    // held a pool, so by name); nothing named after the working directory.
    let entries: Vec<PathBuf> = fs::read_dir(&state)
        .expect("state dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| !is_pool_id(p) && p.file_name() != Some("dev".as_ref()))
        .collect();
    assert_eq!(
        entries,
        Vec::<PathBuf>::new(),
        "directories named after the working directory"
    );
}

/// A mistyped device path (`cowfs init /dev/sdx` for `/dev/sdb`): refused, not
/// taken for a new pool file in `/dev`, a memory filesystem whose pool and tokens
/// a reboot would erase. (Before: init made one there and succeeded.)
#[test]
fn init_of_a_missing_device_makes_no_pool_file_in_dev() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = PathBuf::from(format!("/dev/cowfs-test-missing-{}", std::process::id()));
    let (ok, text) = cowfs(tmp.path(), &[Path::new("init"), &missing]);
    let made: Vec<PathBuf> = ["", ".lock", ".token", ".tokens"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", missing.display())))
        .filter(|p| p.exists())
        .collect();
    for p in &made {
        let _ = fs::remove_file(p);
    }
    assert!(!ok, "init of a missing device succeeded: {text}");
    assert!(text.contains("no such device"), "{text}");
    assert_eq!(made, Vec::<PathBuf>::new(), "files made in /dev");
}
