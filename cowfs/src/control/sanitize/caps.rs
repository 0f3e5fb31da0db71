//! What root may still do inside a hook's sandbox. The hook starts as the
//! daemon's user (root), and with all of root's capabilities the sandbox was a
//! suggestion: CAP_SYS_ADMIN remounts a read-only bind read-write or mounts
//! anything, CAP_MKNOD makes a node of the host's disk in the sandbox's /dev
//! to mount it, CAP_DAC_READ_SEARCH opens the host's root through
//! open_by_handle_at from any bound directory of the same file system. The
//! init of the hook's namespace, once it built the sandbox, keeps only `KEEP`
//! (in the bounding set too, so that no exec gets the rest back) before it
//! starts the hook.
//!
//! Runs between fork and exec: system calls only, no allocation.

use libc::c_int;

/// CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_KILL, CAP_SETGID,
/// CAP_SETUID, CAP_NET_BIND_SERVICE, CAP_SYS_RESOURCE, CAP_AUDIT_WRITE: what a
/// hook needs to prepare a clone's files for a server's user, switch to that
/// user (`runuser` and its PAM session, which sets limits and writes audit
/// records) and stop what it started. CAP_KILL is also the init's, which kills
/// the hook's leftovers of other users.
const KEEP: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 10)
    | (1 << 24)
    | (1 << 29);

/// Capabilities are numbered below 64 (two 32-bit words in capset).
const MAX_CAPS: c_int = 64;

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct Header {
    version: u32,
    pid: c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

fn errno() -> c_int {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Drop every capability but `KEEP` from this process's bounding, ambient,
/// inheritable, permitted and effective sets. The errno of the call that
/// failed, if one did (the daemon lacks CAP_SETPCAP, say): the hook must then
/// not start.
pub(super) fn keep_only_what_hooks_need() -> Result<(), c_int> {
    // SAFETY: prctl, capget and capset are system calls; the header and the two
    // data structs are live for the calls that read and write them.
    unsafe {
        for cap in 0..MAX_CAPS {
            if KEEP & (1 << cap) != 0 {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                // EINVAL: past the kernel's last capability.
                match errno() {
                    libc::EINVAL => break,
                    e => return Err(e),
                }
            }
        }
        // EINVAL: a kernel without ambient capabilities (before 4.3) has none.
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) != 0
            && errno() != libc::EINVAL
        {
            return Err(errno());
        }
        let mut h = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut d = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) != 0 {
            return Err(errno());
        }
        for (i, word) in d.iter_mut().enumerate() {
            let keep = (KEEP >> (32 * i)) as u32;
            word.effective &= keep;
            word.permitted &= keep;
            word.inheritable = 0;
        }
        if libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) != 0 {
            return Err(errno());
        }
    }
    Ok(())
}
