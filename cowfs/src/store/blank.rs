//! Whether a block device is blank enough for `cowfs init` to overwrite.
//!
//! A pool file must be new or empty, but a block device always has a size and
//! usually a past: `cowfs init /dev/sdb1` on the wrong partition would destroy a
//! filesystem, and on a device that already holds a pool it would replace every
//! branch with an empty one. Like `mkfs.xfs` without `-f`, init refuses a device
//! whose first MiB is not all zeros (every common filesystem, volume and partition
//! label, and a cowfs superblock, lies there), and names what it recognises.

use super::superblock::SB_MAGIC;
use super::{BlockAddr, BLOCK_SIZE};
use crate::store::device::BlockDevice;

/// How much of the device must read as zeros.
const CHECKED_BYTES: usize = 1 << 20;

/// Known signatures: (byte offset, magic, what it is). Checked in this order, so
/// a filesystem inside a partition-table-less device wins over the MBR check.
const SIGNATURES: &[(usize, &[u8], &str)] = &[
    (0, &SB_MAGIC, "a cowfs pool"),
    (1024 + 56, &[0x53, 0xef], "an ext2/ext3/ext4 filesystem"),
    (0, b"XFSB", "an XFS filesystem"),
    (65536 + 64, b"_BHRfS_M", "a btrfs filesystem"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (512 + 24, b"LVM2 001", "an LVM physical volume"),
    (4096 - 10, b"SWAPSPACE2", "swap space"),
    (512, b"EFI PART", "a GPT partition table"),
    (510, &[0x55, 0xaa], "an MBR partition table or boot sector"),
];

/// None if the first MiB of `dev` is all zeros; otherwise what it holds ("an
/// ext2/ext3/ext4 filesystem", ..., or "data" when no signature matches).
pub fn what_is_on(dev: &dyn BlockDevice) -> std::io::Result<Option<&'static str>> {
    let blocks = (CHECKED_BYTES / BLOCK_SIZE).min(dev.len_blocks() as usize);
    let mut head = vec![0u8; blocks * BLOCK_SIZE];
    dev.read_at(0 as BlockAddr, &mut head)?;
    if head.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let found = SIGNATURES
        .iter()
        .find(|(off, magic, _)| head.get(*off..off + magic.len()) == Some(magic))
        .map_or("data", |(_, _, what)| what);
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::MemDevice;

    fn device_with(off: usize, bytes: &[u8]) -> MemDevice {
        let dev = MemDevice::with_capacity(1024);
        let mut head = vec![0u8; CHECKED_BYTES];
        head[off..off + bytes.len()].copy_from_slice(bytes);
        dev.write_at(0, &head).unwrap();
        dev
    }

    #[test]
    fn zeros_are_blank() {
        assert_eq!(what_is_on(&MemDevice::with_capacity(1024)).unwrap(), None);
    }

    #[test]
    fn names_what_it_recognises() {
        let ext4 = device_with(1024 + 56, &[0x53, 0xef]);
        assert_eq!(
            what_is_on(&ext4).unwrap(),
            Some("an ext2/ext3/ext4 filesystem")
        );
        let pool = device_with(0, &SB_MAGIC);
        assert_eq!(what_is_on(&pool).unwrap(), Some("a cowfs pool"));
        let btrfs = device_with(65536 + 64, b"_BHRfS_M");
        assert_eq!(what_is_on(&btrfs).unwrap(), Some("a btrfs filesystem"));
    }

    #[test]
    fn any_other_byte_is_data() {
        // The last byte checked counts too.
        let dev = device_with(CHECKED_BYTES - 1, &[1]);
        assert_eq!(what_is_on(&dev).unwrap(), Some("data"));
    }
}
