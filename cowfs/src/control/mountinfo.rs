//! The daemon's view of the host's mounts (`/proc/self/mountinfo`): which mount a
//! path lives on, and what is mounted below a directory. The mount checks use it
//! because a path's own string says nothing about what is mounted along it.

use std::io;
use std::path::{Path, PathBuf};

/// One line of mountinfo: the mount's id, its parent's id (for a mount stacked
/// on another's point: that one), the device of its filesystem (`MAJOR:MINOR`; a
/// FUSE connection's own), where it is mounted, its filesystem type and source
/// (for a cowfs mount, `POOL:BRANCH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    pub parent: u64,
    pub dev: String,
    pub point: PathBuf,
    pub fstype: String,
    pub source: PathBuf,
}

/// The mounts of the daemon's namespace, in mountinfo order (a mount stacked on
/// the same point as an earlier one comes after it).
pub fn read() -> io::Result<Vec<Mount>> {
    read_from(Path::new("/proc/self/mountinfo"))
}

/// Read as bytes: a mount point or source is whatever name a user chose, not
/// necessarily UTF-8, and one such mount must not hide the whole table.
fn read_from(path: &Path) -> io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read(path)?))
}

/// The mounts in mountinfo `text`; lines that are not mountinfo lines are skipped.
pub fn parse(text: &[u8]) -> Vec<Mount> {
    text.split(|&b| b == b'\n')
        .filter_map(|l| {
            let mut f = l.split(|&b| b == b' ');
            let number = |x: &[u8]| std::str::from_utf8(x).ok()?.parse().ok();
            let id = number(f.next()?)?;
            let parent = number(f.next()?)?;
            let dev = String::from_utf8_lossy(f.next()?).into_owned();
            let point = unescape(f.nth(1)?);
            // Optional fields (any number) end with a lone "-"; then type, source.
            let mut rest = f.skip_while(|x| *x != b"-").skip(1);
            let fstype = String::from_utf8_lossy(rest.next().unwrap_or_default()).into_owned();
            let source = unescape(rest.next().unwrap_or_default());
            Some(Mount {
                id,
                parent,
                dev,
                point,
                fstype,
                source,
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape(b: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |a, c| a.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The id of the mount that holds `path` (canonical): the last-listed mount whose
/// point is the longest prefix of it.
pub fn holding(mounts: &[Mount], path: &Path) -> Option<u64> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        let longer = best.is_none_or(|b| m.point.as_os_str().len() >= b.point.as_os_str().len());
        if path.starts_with(&m.point) && longer {
            best = Some(m);
        }
    }
    best.map(|m| m.id)
}

/// The mounts at `path` (canonical) and above it: those its lookup may cross.
pub fn along(mounts: &[Mount], path: &Path) -> Vec<Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.point))
        .cloned()
        .collect()
}

/// Mount points strictly below `dir` (canonical).
pub fn below(mounts: &[Mount], dir: &Path) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.point != dir && m.point.starts_with(dir))
        .map(|m| m.point.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw - ext4 /dev/sda1 rw
30 22 0:25 / /tmp rw - tmpfs tmpfs rw
41 30 0:40 / /tmp/a\\040b rw shared:5 master:2 - fuse /p\\040q:main rw
42 30 0:41 / /tmp/x rw - fuse cowfs rw
43 30 0:42 / /tmp/x rw - fuse cowfs rw
";

    #[test]
    fn longest_prefix_and_stacking() {
        let m = parse(SAMPLE.as_bytes());
        assert_eq!(m[2].point, Path::new("/tmp/a b"));
        assert_eq!((m[2].parent, m[2].dev.as_str()), (30, "0:40"));
        assert_eq!(m[2].fstype, "fuse");
        assert_eq!(m[2].source, Path::new("/p q:main"));
        assert_eq!(m[0].source, Path::new("/dev/sda1"));
        assert_eq!(holding(&m, Path::new("/etc")), Some(22));
        assert_eq!(holding(&m, Path::new("/tmp")), Some(30));
        assert_eq!(holding(&m, Path::new("/tmp/a b/c")), Some(41));
        // "/tmp/a" is not inside "/tmp/a b".
        assert_eq!(holding(&m, Path::new("/tmp/a")), Some(30));
        // The mount stacked last on /tmp/x is the one a path there reaches.
        assert_eq!(holding(&m, Path::new("/tmp/x/y")), Some(43));
        assert_eq!(below(&m, Path::new("/tmp")).len(), 3);
        assert!(below(&m, Path::new("/tmp/x")).is_empty());
        let ids = |v: Vec<Mount>| v.iter().map(|m| m.id).collect::<Vec<_>>();
        // Every mount a lookup of the path crosses, the stacked ones included;
        // not "/tmp/a b" for "/tmp/a".
        assert_eq!(ids(along(&m, Path::new("/tmp/x/y"))), [22, 30, 42, 43]);
        assert_eq!(ids(along(&m, Path::new("/tmp/a"))), [22, 30]);
    }

    /// Any user can mount (with fusermount) on a directory of theirs whose name
    /// is not UTF-8: the daemon's mount checks must still read the table, and
    /// see that name's bytes.
    #[test]
    fn names_that_are_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let file = std::env::temp_dir().join(format!("cowfs-mountinfo-{}", std::process::id()));
        let line = b"50 22 0:50 / /home/u/\xff\\040x rw - fuse.sshfs u@h:\xfe rw\n";
        std::fs::write(&file, [SAMPLE.as_bytes(), line].concat()).unwrap();
        let m = read_from(&file);
        std::fs::remove_file(&file).unwrap();
        let m = m.unwrap();
        assert_eq!(m.len(), 6);
        assert_eq!(m[5].point.as_os_str().as_bytes(), b"/home/u/\xff x");
        assert_eq!(m[5].source.as_os_str().as_bytes(), b"u@h:\xfe");
        assert_eq!(
            holding(
                &m,
                Path::new(std::ffi::OsStr::from_bytes(b"/home/u/\xff x/d"))
            ),
            Some(50)
        );
        assert_eq!(m[0].point, Path::new("/"));
    }
}
