//! The header every metadata block carries: magic, CRC32, its own address, the
//! generation that wrote it, the pool id, kind, level and item count. A block is
//! accepted only if all of these match what the reader expected.

use super::le::*;
use super::{BlockAddr, BLOCK_SIZE};

pub const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"CWBK");
pub const HEADER_SIZE: usize = 48;
pub const PAYLOAD_SIZE: usize = BLOCK_SIZE - HEADER_SIZE;

pub const OFF_MAGIC: usize = 0;
pub const OFF_CRC: usize = 4;
pub const OFF_ADDR: usize = 8;
pub const OFF_GEN: usize = 16;
pub const OFF_POOL_ID: usize = 24;
pub const OFF_KIND: usize = 32;
pub const OFF_LEVEL: usize = 33;
pub const OFF_COUNT: usize = 34;

/// What a metadata block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BlockKind {
    TreeNode = 1,
    SpaceLeaf = 2,
    SpaceIndex = 3,
    /// An intent log record (`intent_log.rs`).
    LogRecord = 4,
}

#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub generation: u64,
    pub level: u8,
    pub count: u16,
}

/// CRC32 of a block with its CRC field skipped.
pub fn block_crc(buf: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[..OFF_CRC]);
    h.update(&buf[OFF_CRC + 4..BLOCK_SIZE]);
    h.finalize()
}

/// Fill in the header of `buf` and its checksum. The payload must already be in place.
pub fn seal(
    buf: &mut [u8],
    kind: BlockKind,
    addr: BlockAddr,
    generation: u64,
    pool_id: u64,
    level: u8,
    count: u16,
) {
    put_u32(buf, OFF_MAGIC, BLOCK_MAGIC);
    put_u64(buf, OFF_ADDR, addr);
    put_u64(buf, OFF_GEN, generation);
    put_u64(buf, OFF_POOL_ID, pool_id);
    buf[OFF_KIND] = kind as u8;
    buf[OFF_LEVEL] = level;
    put_u16(buf, OFF_COUNT, count);
    buf[36..HEADER_SIZE].fill(0);
    let crc = block_crc(buf);
    put_u32(buf, OFF_CRC, crc);
}

/// Check a block read from `addr`; returns the header or a reason it is bad.
pub fn verify(
    buf: &[u8],
    addr: BlockAddr,
    pool_id: u64,
    kind: BlockKind,
) -> Result<Header, String> {
    if buf.len() != BLOCK_SIZE {
        return Err(format!("short block ({} bytes)", buf.len()));
    }
    if u32_at(buf, OFF_MAGIC) != BLOCK_MAGIC {
        return Err("bad magic (not a metadata block, or never written)".into());
    }
    let stored = u32_at(buf, OFF_CRC);
    let computed = block_crc(buf);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let self_addr = u64_at(buf, OFF_ADDR);
    if self_addr != addr {
        return Err(format!(
            "misdirected block: header says address {self_addr}"
        ));
    }
    if u64_at(buf, OFF_POOL_ID) != pool_id {
        return Err("block belongs to another pool".into());
    }
    if buf[OFF_KIND] != kind as u8 {
        return Err(format!(
            "expected block kind {:?}, found kind {}",
            kind, buf[OFF_KIND]
        ));
    }
    Ok(Header {
        generation: u64_at(buf, OFF_GEN),
        level: buf[OFF_LEVEL],
        count: u16_at(buf, OFF_COUNT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_verify_and_detect_flips() {
        let mut b = vec![0u8; BLOCK_SIZE];
        b[100] = 7;
        seal(&mut b, BlockKind::TreeNode, 42, 3, 9, 1, 5);
        let h = verify(&b, 42, 9, BlockKind::TreeNode).unwrap();
        assert_eq!((h.generation, h.level, h.count), (3, 1, 5));
        assert!(verify(&b, 43, 9, BlockKind::TreeNode)
            .unwrap_err()
            .contains("misdirected"));
        assert!(verify(&b, 42, 8, BlockKind::TreeNode).is_err());
        assert!(verify(&b, 42, 9, BlockKind::SpaceLeaf).is_err());
        for off in [0usize, 5, 40, 100, 4095] {
            let mut c = b.clone();
            c[off] ^= 1;
            assert!(
                verify(&c, 42, 9, BlockKind::TreeNode).is_err(),
                "flip at {off}"
            );
        }
    }
}
