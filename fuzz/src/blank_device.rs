//! The check `cowfs init` makes before it writes a block device: whatever the
//! device holds (a filesystem, a partition table, random data) is read and
//! named, never overwritten unless it is all zeros.

use cowfs::store::blank::what_is_on;
use cowfs::store::device::MemDevice;
use cowfs::store::BLOCK_SIZE;

/// Input: the block the rest starts at (1 byte, so signatures deep in the first
/// MiB are reached), then the bytes; the rest of the device is zeros.
pub fn blank_device(data: &[u8]) {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let dev = MemDevice::new();
    let first = u64::from(first);
    for (i, chunk) in bytes.chunks(BLOCK_SIZE).enumerate() {
        dev.apply(first + i as u64, chunk);
    }
    let found = what_is_on(&dev).expect("read a memory device");
    // Only the first MiB (256 blocks) is looked at.
    let looked_at = bytes.len().min((256 - first as usize) * BLOCK_SIZE);
    assert_eq!(found.is_none(), bytes[..looked_at].iter().all(|&b| b == 0));
}
