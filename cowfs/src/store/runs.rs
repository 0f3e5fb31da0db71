//! Writing blocks in runs: a commit writes its nodes and space-map pages at
//! addresses the next-fit allocator handed out together, mostly consecutive. Each
//! run of consecutive blocks goes to the device in one call instead of one per
//! block (a 10-node commit: 1-3 writes instead of 10).

use super::device::BlockDevice;
use super::{BlockAddr, StoreError, StoreResult, BLOCK_SIZE};

/// Longest run written with one call (1 MiB).
const RUN_MAX_BLOCKS: usize = 256;

pub struct RunWriter<'a> {
    dev: &'a dyn BlockDevice,
    start: BlockAddr,
    buf: Vec<u8>,
}

impl<'a> RunWriter<'a> {
    pub fn new(dev: &'a dyn BlockDevice) -> RunWriter<'a> {
        RunWriter {
            dev,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// A zeroed buffer for block `addr`, written by a later `block` or `finish`.
    /// Blocks given in ascending order coalesce best; any order is correct.
    pub fn block(&mut self, addr: BlockAddr) -> StoreResult<&mut [u8]> {
        let n = self.buf.len() / BLOCK_SIZE;
        if n > 0 && (addr != self.start + n as u64 || n == RUN_MAX_BLOCKS) {
            self.write_out()?;
        }
        if self.buf.is_empty() {
            self.start = addr;
        }
        let at = self.buf.len();
        self.buf.resize(at + BLOCK_SIZE, 0);
        Ok(&mut self.buf[at..])
    }

    /// Write what is pending.
    pub fn finish(mut self) -> StoreResult<()> {
        self.write_out()
    }

    fn write_out(&mut self) -> StoreResult<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.dev
            .write_at(self.start, &self.buf)
            .map_err(|e| StoreError::Io {
                pool: self.dev.name(),
                block: self.start,
                source: e,
            })?;
        self.buf.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::{DeviceEvent, MemDevice};

    #[test]
    fn consecutive_blocks_coalesce_and_all_land() {
        let dev = MemDevice::new();
        dev.start_recording();
        let mut w = RunWriter::new(&dev);
        for addr in [5u64, 6, 7, 9, 10, 3] {
            w.block(addr).unwrap()[0] = addr as u8;
        }
        w.finish().unwrap();
        let runs: Vec<(u64, usize)> = dev
            .take_log()
            .into_iter()
            .filter_map(|e| match e {
                DeviceEvent::Write { addr, data } => Some((addr, data.len() / BLOCK_SIZE)),
                DeviceEvent::Flush => None,
            })
            .collect();
        assert_eq!(runs, vec![(5, 3), (9, 2), (3, 1)]);
        let mut b = vec![0u8; BLOCK_SIZE];
        for addr in [3u64, 5, 6, 7, 9, 10] {
            dev.read_at(addr, &mut b).unwrap();
            assert_eq!(b[0], addr as u8);
        }
    }
}
