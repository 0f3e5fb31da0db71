//! `/proc/self/mountinfo` as the daemon parses it for its mount checks. The
//! kernel writes it, but mount points and sources are names users choose: any
//! bytes (only space, tab, newline and backslash are escaped as `\ooo`).

use cowfs::control::mountinfo::{below, holding, parse};

pub fn mountinfo(data: &[u8]) {
    let mounts = parse(data);
    assert!(mounts.len() <= data.split(|&b| b == b'\n').count());
    for m in &mounts {
        // A mount's own point is on some mount.
        assert!(holding(&mounts, &m.point).is_some());
        let _ = below(&mounts, &m.point);
    }
}
