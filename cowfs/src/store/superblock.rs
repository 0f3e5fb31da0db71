//! The two superblock slots (blocks 0 and 1). A commit writes generation g into slot
//! g % 2, so the previous commit's slot is never touched; open picks the valid slot
//! with the highest generation.

use super::le::*;
use super::BLOCK_SIZE;

pub const SB_MAGIC: [u8; 8] = *b"COWFSPL\0";
/// The version this build writes. Versions 1 (no intent log), 2 (branch records
/// without an owner), 3 (no chunked xattr values) and 4 (no drop records in the
/// catalog) are read as well and become version 5 at the next commit.
pub const FORMAT_VERSION: u32 = 5;
/// The oldest version this build reads.
pub const OLDEST_VERSION: u32 = 1;
pub const SLOT_COUNT: u64 = 2;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_BLOCK_SIZE: usize = 12;
const OFF_GENERATION: usize = 16;
const OFF_POOL_ID: usize = 24;
const OFF_CAPACITY: usize = 32;
const OFF_CATALOG_ROOT: usize = 40;
const OFF_SPACE_ROOT: usize = 48;
const OFF_SPACE_DEPTH: usize = 56;
const OFF_NEXT_BRANCH_ID: usize = 64;
const OFF_CREATED: usize = 72;
const OFF_USED: usize = 80;
const OFF_MANIFEST_LEN: usize = 88;
const OFF_MANIFEST: usize = 96;
const OFF_LOG_START: usize = BLOCK_SIZE - 16;
const OFF_LOG_BLOCKS: usize = BLOCK_SIZE - 8;
const OFF_CRC: usize = BLOCK_SIZE - 4;
/// Entries of (block address u64, CRC32 u32) that fit in a slot before the log fields.
pub const MANIFEST_MAX: usize = (OFF_LOG_START - OFF_MANIFEST) / 12;
/// Version 1 had no log fields: its manifest could run up to the CRC.
const MANIFEST_MAX_V1: usize = (OFF_CRC - OFF_MANIFEST) / 12;
/// The largest intent log region a slot may name (format-spec §8.1).
pub const LOG_MAX_BLOCKS: u32 = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    pub pool_id: u64,
    pub capacity_blocks: u64,
    pub catalog_root: u64,
    pub space_root: u64,
    pub space_depth: u8,
    pub next_branch_id: u64,
    pub created_unix: u64,
    /// Blocks with a non-zero reference count (for statfs without a scan).
    pub used_blocks: u64,
    /// Every block the commit wrote, with the CRC32 of its full 4 KiB, when the commit
    /// was small enough to list them: such a commit is made durable by one flush, and
    /// open accepts it only if every listed block reads back with its CRC (a torn
    /// commit falls back to the previous slot). Empty for two-flush commits.
    pub manifest: Vec<(u64, u32)>,
    /// The intent log region `(first block, blocks)`, if the pool has one (every
    /// pool from version 2 on; a version-1 pool gets one at its next commit).
    pub log: Option<(u64, u32)>,
}

/// Why a slot was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotError {
    Empty,
    NotCowfs,
    Version(u32),
    Checksum,
    Invalid(&'static str),
}

impl Superblock {
    pub fn slot_for(generation: u64) -> u64 {
        generation % SLOT_COUNT
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&SB_MAGIC);
        put_u32(&mut b, OFF_VERSION, FORMAT_VERSION);
        put_u32(&mut b, OFF_BLOCK_SIZE, BLOCK_SIZE as u32);
        put_u64(&mut b, OFF_GENERATION, self.generation);
        put_u64(&mut b, OFF_POOL_ID, self.pool_id);
        put_u64(&mut b, OFF_CAPACITY, self.capacity_blocks);
        put_u64(&mut b, OFF_CATALOG_ROOT, self.catalog_root);
        put_u64(&mut b, OFF_SPACE_ROOT, self.space_root);
        b[OFF_SPACE_DEPTH] = self.space_depth;
        put_u64(&mut b, OFF_NEXT_BRANCH_ID, self.next_branch_id);
        put_u64(&mut b, OFF_CREATED, self.created_unix);
        put_u64(&mut b, OFF_USED, self.used_blocks);
        let n = self.manifest.len().min(MANIFEST_MAX);
        put_u32(&mut b, OFF_MANIFEST_LEN, n as u32);
        for (i, (addr, crc)) in self.manifest.iter().take(n).enumerate() {
            put_u64(&mut b, OFF_MANIFEST + i * 12, *addr);
            put_u32(&mut b, OFF_MANIFEST + i * 12 + 8, *crc);
        }
        if let Some((start, blocks)) = self.log {
            put_u64(&mut b, OFF_LOG_START, start);
            put_u32(&mut b, OFF_LOG_BLOCKS, blocks);
        }
        let crc = crc32fast::hash(&b[..OFF_CRC]);
        put_u32(&mut b, OFF_CRC, crc);
        b
    }

    /// The format version a slot that `decode` accepted was written in.
    pub fn version_of(b: &[u8]) -> u32 {
        u32_at(b, OFF_VERSION)
    }

    pub fn decode(b: &[u8]) -> Result<Superblock, SlotError> {
        if b.len() < BLOCK_SIZE {
            return Err(SlotError::Empty);
        }
        if b.iter().all(|&x| x == 0) {
            return Err(SlotError::Empty);
        }
        if b[OFF_MAGIC..OFF_MAGIC + 8] != SB_MAGIC {
            return Err(SlotError::NotCowfs);
        }
        if crc32fast::hash(&b[..OFF_CRC]) != u32_at(b, OFF_CRC) {
            return Err(SlotError::Checksum);
        }
        let version = u32_at(b, OFF_VERSION);
        if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(SlotError::Version(version));
        }
        if u32_at(b, OFF_BLOCK_SIZE) as usize != BLOCK_SIZE {
            return Err(SlotError::Invalid("block size is not 4096"));
        }
        let sb = Superblock {
            generation: u64_at(b, OFF_GENERATION),
            pool_id: u64_at(b, OFF_POOL_ID),
            capacity_blocks: u64_at(b, OFF_CAPACITY),
            catalog_root: u64_at(b, OFF_CATALOG_ROOT),
            space_root: u64_at(b, OFF_SPACE_ROOT),
            space_depth: b[OFF_SPACE_DEPTH],
            next_branch_id: u64_at(b, OFF_NEXT_BRANCH_ID),
            created_unix: u64_at(b, OFF_CREATED),
            used_blocks: u64_at(b, OFF_USED),
            manifest: Vec::new(),
            log: None,
        };
        let n = u32_at(b, OFF_MANIFEST_LEN) as usize;
        let max = if version == 1 {
            MANIFEST_MAX_V1
        } else {
            MANIFEST_MAX
        };
        if n > max {
            return Err(SlotError::Invalid("commit manifest too long"));
        }
        let mut sb = sb;
        sb.manifest = (0..n)
            .map(|i| {
                (
                    u64_at(b, OFF_MANIFEST + i * 12),
                    u32_at(b, OFF_MANIFEST + i * 12 + 8),
                )
            })
            .collect();
        let in_pool = |a: u64| a >= SLOT_COUNT && a < sb.capacity_blocks;
        if version >= 2 {
            let (start, blocks) = (u64_at(b, OFF_LOG_START), u32_at(b, OFF_LOG_BLOCKS));
            if blocks > 0 {
                // Checked: a crafted slot may put the region's start near u64::MAX.
                let fits = blocks <= LOG_MAX_BLOCKS
                    && in_pool(start)
                    && start
                        .checked_add(u64::from(blocks))
                        .is_some_and(|end| end <= sb.capacity_blocks);
                if !fits {
                    return Err(SlotError::Invalid("intent log region out of range"));
                }
                sb.log = Some((start, blocks));
            }
        }
        if sb.capacity_blocks <= SLOT_COUNT
            || !in_pool(sb.catalog_root)
            || !in_pool(sb.space_root)
            || sb.space_depth == 0
            || sb.space_depth > 8
            || sb.used_blocks > sb.capacity_blocks
        {
            return Err(SlotError::Invalid("root pointers or capacity out of range"));
        }
        Ok(sb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            generation: 7,
            pool_id: 0xfeed,
            capacity_blocks: 1000,
            catalog_root: 5,
            space_root: 6,
            space_depth: 1,
            next_branch_id: 3,
            created_unix: 1,
            used_blocks: 9,
            manifest: vec![(5, 0xdead), (6, 7)],
            log: Some((10, 16)),
        }
    }

    #[test]
    fn round_trip_and_rejects() {
        let sb = sample();
        let b = sb.encode();
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        let mut c = b.clone();
        c[20] ^= 1;
        assert_eq!(Superblock::decode(&c), Err(SlotError::Checksum));
        assert_eq!(
            Superblock::decode(&[0u8; BLOCK_SIZE]),
            Err(SlotError::Empty)
        );
        let mut d = b.clone();
        d[0] = b'X';
        assert_eq!(Superblock::decode(&d), Err(SlotError::NotCowfs));
        // A log region past the capacity is refused.
        let far = Superblock {
            log: Some((995, 16)),
            ..sb.clone()
        };
        assert_eq!(
            Superblock::decode(&far.encode()),
            Err(SlotError::Invalid("intent log region out of range"))
        );
    }

    /// Version 1 slots have no log fields and a manifest of up to 333 entries.
    #[test]
    fn version_1_slots_still_decode() {
        let mut sb = sample();
        sb.log = None;
        sb.manifest = (0..MANIFEST_MAX_V1 as u64).map(|a| (a + 2, 1)).collect();
        let mut b = vec![0u8; BLOCK_SIZE];
        let full = Superblock {
            manifest: Vec::new(),
            ..sb.clone()
        }
        .encode();
        b[..OFF_MANIFEST].copy_from_slice(&full[..OFF_MANIFEST]);
        put_u32(&mut b, OFF_VERSION, 1);
        put_u32(&mut b, OFF_MANIFEST_LEN, MANIFEST_MAX_V1 as u32);
        for (i, (addr, crc)) in sb.manifest.iter().enumerate() {
            put_u64(&mut b, OFF_MANIFEST + i * 12, *addr);
            put_u32(&mut b, OFF_MANIFEST + i * 12 + 8, *crc);
        }
        let crc = crc32fast::hash(&b[..OFF_CRC]);
        put_u32(&mut b, OFF_CRC, crc);
        assert_eq!(Superblock::decode(&b), Ok(sb));
    }
}
