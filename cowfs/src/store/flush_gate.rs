//! One flush of the pool's device at a time, and a failed flush fails every flush
//! after it (fsync-gate).
//!
//! Linux reports a write-back error of a file to one `fdatasync` per open file
//! description (errseq): when two threads flush the one pool file at once and a
//! block failed to land, one of them gets EIO and the other 0. The other would
//! then acknowledge an fsync, or write a superblock naming blocks that may be
//! lost. Through the gate every flush that could have seen an error either sees
//! it or comes after the flush that did, which recorded it for all.
//!
//! Flushes asked for while one runs are served together by the next one (group
//! flush): a flush covers the writes completed before it started, so a caller
//! waits for the running flush to end and then for one that starts after its own
//! call.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::device::BlockDevice;
use super::BlockAddr;

/// A device whose flushes go through the gate (see the module comment). Every
/// other call goes straight to the device underneath.
pub struct FlushGate {
    dev: Arc<dyn BlockDevice>,
    state: Mutex<GateState>,
    ended: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Flushes started so far; the running one, if any, is number `started`.
    started: u64,
    /// The number of the last flush that ended.
    ended: u64,
    running: bool,
    /// The error of the first flush that failed (its raw OS error, EIO if none).
    failed: Option<i32>,
}

impl FlushGate {
    /// `dev` behind a gate; a device already behind one is returned as it is.
    pub fn wrap(dev: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
        if dev.is_gated() {
            return dev;
        }
        Arc::new(FlushGate {
            dev,
            state: Mutex::new(GateState::default()),
            ended: Condvar::new(),
        })
    }
}

/// Records the end of flush `number` when dropped: its failure (`errno`), if
/// any, and wakes the callers waiting for it.
struct Ending<'a> {
    gate: &'a FlushGate,
    number: u64,
    errno: Option<i32>,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock();
        s.running = false;
        s.ended = self.number;
        if let Some(errno) = self.errno {
            s.failed.get_or_insert(errno);
        }
        self.gate.ended.notify_all();
    }
}

impl BlockDevice for FlushGate {
    fn flush(&self) -> std::io::Result<()> {
        let mut s = self.state.lock();
        // Any flush that starts from now on covers this caller's writes; the
        // running one may have started before they completed.
        let covering = s.started + 1;
        loop {
            if let Some(errno) = s.failed {
                return Err(std::io::Error::from_raw_os_error(errno));
            }
            if s.ended >= covering {
                return Ok(());
            }
            if s.running {
                self.ended.wait(&mut s);
                continue;
            }
            s.started += 1;
            s.running = true;
            let number = s.started;
            drop(s);
            // Ends the flush even if the device panics (as a failure: whether
            // it landed is unknown), so that no caller waits forever.
            let mut ending = Ending {
                gate: self,
                number,
                errno: Some(libc::EIO),
            };
            let r = self.dev.flush();
            ending.errno = r
                .as_ref()
                .err()
                .map(|e| e.raw_os_error().unwrap_or(libc::EIO));
            drop(ending);
            // Return this flush's own error as it came (its kind and message);
            // later callers get the recorded errno.
            return r;
        }
    }
    fn is_gated(&self) -> bool {
        true
    }
    fn read_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        self.dev.read_at(addr, buf)
    }
    fn write_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()> {
        self.dev.write_at(addr, buf)
    }
    fn read_data_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        self.dev.read_data_at(addr, buf)
    }
    fn write_data_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()> {
        self.dev.write_data_at(addr, buf)
    }
    fn back(&self, from: BlockAddr, blocks: u64) -> bool {
        self.dev.back(from, blocks)
    }
    fn is_sparse(&self) -> bool {
        self.dev.is_sparse()
    }
    fn len_blocks(&self) -> u64 {
        self.dev.len_blocks()
    }
    fn fixed_capacity(&self) -> Option<u64> {
        self.dev.fixed_capacity()
    }
    fn host_free_bytes(&self) -> Option<u64> {
        self.dev.host_free_bytes()
    }
    fn name(&self) -> PathBuf {
        self.dev.name()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::store::device::MemDevice;

    /// A device whose flushes block until released, counting how many run at
    /// once, and failing the ones the test marks.
    #[derive(Default)]
    struct SlowFlush {
        inner: MemDevice,
        state: std::sync::Mutex<Slow>,
        cv: std::sync::Condvar,
        entered: AtomicU32,
    }

    #[derive(Default)]
    struct Slow {
        running: u32,
        most_at_once: u32,
        /// Flushes (1-based, in the order they entered) that return EIO.
        fail: Vec<u32>,
        /// Flushes let through so far.
        released: u32,
    }

    impl SlowFlush {
        fn release_one(&self) {
            self.state.lock().unwrap().released += 1;
            self.cv.notify_all();
        }
        fn wait_entered(&self, n: u32) {
            while self.entered.load(Ordering::SeqCst) < n {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    impl BlockDevice for SlowFlush {
        fn read_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
            self.inner.read_at(addr, buf)
        }
        fn write_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()> {
            self.inner.write_at(addr, buf)
        }
        fn flush(&self) -> std::io::Result<()> {
            let n = self.entered.fetch_add(1, Ordering::SeqCst) + 1;
            let mut s = self.state.lock().unwrap();
            s.running += 1;
            s.most_at_once = s.most_at_once.max(s.running);
            while s.released < n {
                s = self.cv.wait(s).unwrap();
            }
            s.running -= 1;
            if s.fail.contains(&n) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            Ok(())
        }
        fn len_blocks(&self) -> u64 {
            self.inner.len_blocks()
        }
        fn fixed_capacity(&self) -> Option<u64> {
            None
        }
        fn host_free_bytes(&self) -> Option<u64> {
            None
        }
        fn name(&self) -> PathBuf {
            "<slow flush>".into()
        }
    }

    fn flush_on_thread(
        gate: &Arc<dyn BlockDevice>,
    ) -> std::thread::JoinHandle<std::io::Result<()>> {
        let gate = gate.clone();
        std::thread::spawn(move || gate.flush())
    }

    /// Three callers arrive while a flush runs: the device sees one more flush,
    /// not three, and never two at once.
    #[test]
    fn callers_during_a_flush_share_the_next_one() {
        let slow = Arc::new(SlowFlush::default());
        let gate = FlushGate::wrap(slow.clone());
        let first = flush_on_thread(&gate);
        slow.wait_entered(1);
        let waiting: Vec<_> = (0..3).map(|_| flush_on_thread(&gate)).collect();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            slow.entered.load(Ordering::SeqCst),
            1,
            "a second flush ran beside the first"
        );
        slow.release_one();
        first.join().unwrap().unwrap();
        slow.wait_entered(2);
        slow.release_one();
        for w in waiting {
            w.join().unwrap().unwrap();
        }
        assert_eq!(slow.entered.load(Ordering::SeqCst), 2);
        assert_eq!(slow.state.lock().unwrap().most_at_once, 1);
    }

    /// The failed flush's error reaches the callers waiting behind it, and every
    /// flush after it fails without reaching the device: on Linux the device's
    /// next flush would have returned 0.
    #[test]
    fn a_failed_flush_fails_every_flush_after_it() {
        let slow = Arc::new(SlowFlush::default());
        slow.state.lock().unwrap().fail.push(1);
        let gate = FlushGate::wrap(slow.clone());
        let first = flush_on_thread(&gate);
        slow.wait_entered(1);
        let second = flush_on_thread(&gate);
        std::thread::sleep(Duration::from_millis(20));
        slow.release_one();
        let e = first.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        let e = second.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert!(gate.flush().is_err());
        assert_eq!(slow.entered.load(Ordering::SeqCst), 1);
    }

    /// A caller that arrives after a flush ended is not covered by it.
    #[test]
    fn a_flush_that_ended_before_the_call_does_not_cover_it() {
        let slow = Arc::new(SlowFlush::default());
        let gate = FlushGate::wrap(slow.clone());
        slow.release_one();
        gate.flush().unwrap();
        slow.release_one();
        gate.flush().unwrap();
        assert_eq!(slow.entered.load(Ordering::SeqCst), 2);
    }

    /// A device whose flush panics: the gate counts it as failed, so callers
    /// waiting behind it get an error instead of waiting forever.
    struct PanickingFlush(MemDevice);

    impl BlockDevice for PanickingFlush {
        fn read_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
            self.0.read_at(addr, buf)
        }
        fn write_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()> {
            self.0.write_at(addr, buf)
        }
        fn flush(&self) -> std::io::Result<()> {
            panic!("flush panics");
        }
        fn len_blocks(&self) -> u64 {
            self.0.len_blocks()
        }
        fn fixed_capacity(&self) -> Option<u64> {
            None
        }
        fn host_free_bytes(&self) -> Option<u64> {
            None
        }
        fn name(&self) -> PathBuf {
            "<panicking flush>".into()
        }
    }

    #[test]
    fn a_flush_that_panicked_fails_later_flushes() {
        let gate = FlushGate::wrap(Arc::new(PanickingFlush(MemDevice::new())));
        let g = gate.clone();
        assert!(std::thread::spawn(move || g.flush()).join().is_err());
        let after = flush_on_thread(&gate);
        let e = after.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn wrapping_twice_adds_no_second_gate() {
        let gate = FlushGate::wrap(Arc::new(MemDevice::new()));
        let again = FlushGate::wrap(gate.clone());
        assert!(Arc::ptr_eq(&gate, &again));
    }
}
