//! Unmounting one of the table's mounts, and no other. umount2(2) takes a path,
//! which names whatever is on top of the directory when the call runs: checking
//! that the top is ours and then unmounting would take a mount made on the
//! directory in between. (A descriptor does not help: umount2 of
//! `/proc/self/fd/N` looks down from the descriptor's mount to the topmost one
//! stacked on it, and the descriptor's own reference makes ours busy. Both
//! measured on Linux 6.18.)
//!
//! MNT_EXPIRE closes the window: it unmounts the top mount only if an earlier
//! MNT_EXPIRE marked it and nothing used it since, and otherwise marks it
//! (EAGAIN). So: mark the top, check that it is ours, unmount it if still
//! marked. A mount made on the directory after the check is new, so unmarked:
//! the last call only marks it, and the next round finds ours covered. The
//! mark is all such a mount keeps of it, and its next use clears it.

use std::io;
use std::path::Path;

use super::mounts::{place, MountId, Place};
use super::sys::{self, Expired};

/// Rounds before an unmount whose mark keeps being cleared (ours used between
/// the mark and the unmount, by a process reaching into it) is called busy.
const ROUNDS: usize = 10;

/// How an unmount of one of the table's mounts ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unmount {
    Done,
    /// Files are open on it (or a process uses it): not unmounted.
    Busy,
    /// Another mount is stacked on it: neither is unmounted.
    Covered,
    /// No longer on its directory (unmounted or detached from outside).
    Gone,
}

/// Unmount `ours` from `dir` (not lazily), never another mount.
pub(super) fn unmount_ours(dir: &Path, ours: &MountId) -> io::Result<Unmount> {
    unmount_ours_checked(dir, ours, || {})
}

/// `unmount_ours`, calling `checked` after each check that ours is on top and
/// before the unmount it allows (where a test mounts something on `dir`).
fn unmount_ours_checked(
    dir: &Path,
    ours: &MountId,
    mut checked: impl FnMut(),
) -> io::Result<Unmount> {
    for _ in 0..ROUNDS {
        if let Some(end) = unless_on_top(dir, ours)? {
            return Ok(end);
        }
        // Ours was on top just now, and a mount made since is unmarked: this
        // unmounts only ours, marked by an earlier round and not used since.
        if let Some(end) = expire(dir)? {
            return Ok(end);
        }
        // Marked the top: if that was not ours, it is caught here.
        if let Some(end) = unless_on_top(dir, ours)? {
            return Ok(end);
        }
        checked();
        if let Some(end) = expire(dir)? {
            return Ok(end);
        }
    }
    Ok(Unmount::Busy)
}

/// None while `ours` is on top of `dir`; else how the unmount ends.
fn unless_on_top(dir: &Path, ours: &MountId) -> io::Result<Option<Unmount>> {
    Ok(match place(dir, ours)? {
        Place::Top => None,
        Place::Covered => Some(Unmount::Covered),
        Place::Gone => Some(Unmount::Gone),
    })
}

/// One MNT_EXPIRE on `dir`: None if it only marked the top mount.
fn expire(dir: &Path) -> io::Result<Option<Unmount>> {
    match sys::expire(dir) {
        Ok(Expired::Unmounted) => Ok(Some(Unmount::Done)),
        Ok(Expired::Marked) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(Some(Unmount::Busy)),
        // Unmounted from outside since `place` looked.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some(Unmount::Gone)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::test_mounts::{is_listed, mounted, tmpfs, top};
    use std::process::Command;

    /// Review finding: the unmount checked that ours was on top, then
    /// unmounted the directory by path: a mount made on it in between was the
    /// one unmounted. A tmpfs mounted right after the check is left now, and
    /// ours too (covered).
    #[test]
    fn a_mount_made_after_the_check_is_left_alone() {
        let (_tmp, cleanup, ours) = mounted();
        let dir = cleanup.0.clone();
        let mut since = None;
        let r = unmount_ours_checked(&dir, &ours, || {
            if since.is_none() {
                since = Some(tmpfs(&dir, "cowfs-unit-since"));
            }
        });
        assert_eq!(r.expect("unmount"), Unmount::Covered);
        let on_top = top(&dir).expect("a mount on the directory");
        assert_eq!(
            on_top.1,
            Path::new("cowfs-unit-since"),
            "took the new mount"
        );
        assert!(is_listed(&ours), "ours went too");

        let st = Command::new("umount").arg(&dir).status().expect("umount");
        assert!(st.success(), "umount the covering tmpfs");
        assert_eq!(unmount_ours(&dir, &ours).expect("unmount"), Unmount::Done);
        assert!(!is_listed(&ours) && top(&dir).is_none());
    }

    /// A use of ours between the mark and the unmount clears the mark: tried
    /// again, not refused. A file open on it: busy, as with a plain unmount.
    #[test]
    fn a_use_in_between_retries_and_an_open_file_is_busy() {
        let (_tmp, cleanup, ours) = mounted();
        let dir = cleanup.0.clone();
        let held = std::fs::File::create(dir.join("held")).expect("create");
        assert_eq!(unmount_ours(&dir, &ours).expect("unmount"), Unmount::Busy);
        drop(held);

        // The use clears the mark, so the second call only marks ours again;
        // the next round's first call unmounts it.
        let mut uses = 0;
        let r = unmount_ours_checked(&dir, &ours, || {
            std::fs::metadata(dir.join("held")).expect("stat inside ours");
            uses += 1;
        });
        assert_eq!(r.expect("unmount"), Unmount::Done);
        assert_eq!(uses, 1);
        assert!(!is_listed(&ours));
        assert_eq!(unmount_ours(&dir, &ours).expect("again"), Unmount::Gone);
    }
}
