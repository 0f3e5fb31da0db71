//! Quotas and reservations (issue 4, check 5) on real mounts: an agent's branch
//! with a quota is filled until EDQUOT; another agent's branch without one is
//! filled until ENOSPC, which comes early because production's reservation is
//! never handed out; production keeps writing inside its reservation; fsck is clean
//! and the limits are kept beside the pool.

mod control_support;

use std::fs::File;
use std::io::Write;
use std::path::Path;

use control_support::*;
use cowfs::pool::FsckOptions;
use cowfs_ctl::proto::ErrorKind;

const MIB: u64 = 1 << 20;

/// Write 1 MiB chunks (each flushed with fsync) until an error or `limit` bytes;
/// returns (bytes written, errno of the error if any).
fn fill(path: &Path, limit: u64) -> (u64, Option<i32>) {
    let mut f = File::create(path).expect("create");
    let chunk = vec![0x5au8; MIB as usize];
    let mut done = 0;
    while done < limit {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
            return (done, e.raw_os_error());
        }
        done += MIB;
    }
    (done, None)
}

/// `df DIR`: (size, room for an unprivileged writer), in bytes.
fn df(dir: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("path");
    // SAFETY: statvfs fills the zeroed struct it is given; the path is NUL-ended.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0, "statvfs");
    (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize)
}

#[test]
fn quota_and_reservation_on_mounts() {
    let d = Daemon::start_with(None, 256 * MIB);
    let mut admin = d.admin_client();
    admin.branch_create("prod", "main", None).expect("prod");
    let q = admin.quota_set("prod", None, 64 * MIB).expect("reserve");
    assert_eq!(q.reserve_bytes, 64 * MIB);
    let agent_s = d.token("agent", &["branch:prod"]);
    let mut agent = d.client(&agent_s);
    agent.branch_create("a1", "prod", None).expect("a1");
    agent.branch_create("a2", "prod", None).expect("a2");
    assert_eq!(
        kind(agent.quota_set("a1", Some(MIB), 0)),
        ErrorKind::Forbidden,
        "quotas are set by admins"
    );
    admin.quota_set("a1", Some(32 * MIB), 0).expect("quota");
    // A reservation larger than the free space is refused and changes nothing.
    assert_eq!(
        kind(admin.quota_set("a2", None, 1 << 40)),
        ErrorKind::NoSpace
    );
    assert_eq!(admin.quota_list().expect("list").len(), 2);

    let (m1, m2, mp) = (d.dir("a1"), d.dir("a2"), d.dir("prod"));
    agent
        .mount("a1", m1.to_str().expect("utf-8"), false)
        .expect("mount a1");
    agent
        .mount("a2", m2.to_str().expect("utf-8"), false)
        .expect("mount a2");
    admin
        .mount("prod", mp.to_str().expect("utf-8"), false)
        .expect("mount prod");

    // `df` in a1 shows its quota as the size, not the pool's 256 MiB.
    let (size, room) = df(&m1);
    assert_eq!(size, 32 * MIB, "a1's df size");
    assert!(room <= 32 * MIB, "a1's df room {room}");
    let (n, e) = fill(&m1.join("fill"), 200 * MIB);
    assert_eq!(e, Some(libc::EDQUOT), "a1 stopped after {n} bytes");
    let (_, room) = df(&m1);
    assert!(room < 4 * MIB, "a1's df room at its quota: {room}");
    assert!((28 * MIB..=33 * MIB).contains(&n), "a1 wrote {n} bytes");
    let used = admin.quota_list().expect("list");
    let a1 = used.iter().find(|q| q.name == "a1").expect("a1 listed");
    assert!(a1.used_bytes >= 28 * MIB, "{a1:?}");

    // a2 has no quota, but prod's reservation is not room for it.
    let (pool_size, a2_room) = df(&m2);
    assert_eq!(pool_size, 256 * MIB);
    assert!(a2_room + 64 * MIB <= pool_size, "a2's df room {a2_room}");
    let (n, e) = fill(&m2.join("fill"), 400 * MIB);
    assert_eq!(e, Some(libc::ENOSPC), "a2 stopped after {n} bytes");
    assert!(
        n + a1.used_bytes + 64 * MIB <= 256 * MIB,
        "a2 took prod's reserve: {n}"
    );
    assert!(n > 100 * MIB, "a2 could use the free space: {n}");

    // Production writes inside its reservation although the pool is full otherwise.
    let (n, e) = fill(&mp.join("data"), 48 * MIB);
    assert_eq!((n, e), (48 * MIB, None), "prod must keep writing");

    for dir in [&m1, &m2, &mp] {
        admin
            .unmount(dir.to_str().expect("utf-8"))
            .expect("unmount");
    }
    let r = d
        .pool
        .fsck(&FsckOptions { verify_data: true })
        .expect("fsck");
    assert!(r.is_clean(), "{r}");
    // The limits are kept beside the pool for the next daemon.
    let mut quotas_file = d.pool_path.clone().into_os_string();
    quotas_file.push(".quotas");
    let text = std::fs::read_to_string(quotas_file).expect("POOL.quotas");
    assert!(text.contains("\"max_bytes\": 33554432"), "{text}");
    // Clearing a quota lifts EDQUOT.
    admin.quota_set("a1", None, 0).expect("clear");
    assert_eq!(admin.quota_list().expect("list").len(), 1);
}
