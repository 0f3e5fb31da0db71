//! No flush succeeds beside or after a failed one (fsync-gate).
//!
//! Linux reports a write-back error of a file to one `fdatasync` per open file
//! description (errseq): when two threads flush the one pool file at once and a
//! block failed to land, one of them gets EIO and the other 0. The other would
//! then acknowledge an fsync, or write a superblock naming blocks that may be
//! lost. Through the gate a flush that returned 0 waits until every flush that
//! ran beside it has returned too, and fails if any of them failed; once one has
//! failed, every later one fails without reaching the device.
//!
//! Why that is enough: an error of a block a flush covers is recorded before that
//! flush's wait for the block's write-back ends, so only a flush that checked for
//! errors between then and the caller's own check can have taken it, and such a
//! flush was running when the caller's returned (or it ended earlier, and has
//! recorded its failure).
//!
//! A pool file does not need the gate and is not wrapped: each of its flushes
//! goes through an open file description of its own, which Linux tells of
//! every error itself (flush_handles.rs), so no flush waits for another. The
//! gate serves every other device (those of the tests, which model a single
//! description). Waiting here costs: with this gate on the pool file, a branch
//! creation beside a writer's fsync loop took twice as long
//! (`benches/branches.sh`, 8 GiB parent: 10-11 ms against 5).

use std::collections::BTreeSet;
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
    /// Flushes started so far (the next one's number).
    started: u64,
    /// The numbers of the flushes that have not returned yet.
    running: BTreeSet<u64>,
    /// The error of the first flush that failed (its raw OS error, EIO if none).
    failed: Option<i32>,
}

impl FlushGate {
    /// `dev` behind a gate; a device that needs none (a pool file: its flushes
    /// each go through a description of their own, see flush_handles.rs) or
    /// is behind one already is returned as it is.
    pub fn wrap(dev: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
        if dev.flush_errors_reach_every_flush() {
            return dev;
        }
        Arc::new(FlushGate {
            dev,
            state: Mutex::new(GateState::default()),
            ended: Condvar::new(),
        })
    }
}

/// Records the return of flush `number` when dropped: its failure (`errno`), if
/// any, and wakes the flushes waiting for it.
struct Ending<'a> {
    gate: &'a FlushGate,
    number: u64,
    errno: Option<i32>,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock();
        s.running.remove(&self.number);
        if let Some(errno) = self.errno {
            s.failed.get_or_insert(errno);
        }
        self.gate.ended.notify_all();
    }
}

impl BlockDevice for FlushGate {
    fn flush(&self) -> std::io::Result<()> {
        let number = {
            let mut s = self.state.lock();
            if let Some(errno) = s.failed {
                return Err(std::io::Error::from_raw_os_error(errno));
            }
            let n = s.started;
            s.started += 1;
            s.running.insert(n);
            n
        };
        // Records the return even if the device panics (as a failure: whether
        // the flush landed is unknown), so that no flush waits forever.
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
        // A failure comes back as it came (its kind and message).
        r?;
        let mut s = self.state.lock();
        // Every flush running now started before this one returned: it may have
        // taken this one's error. Wait until they have all returned.
        let beside = s.started;
        while s.failed.is_none() && s.running.first().is_some_and(|&n| n < beside) {
            self.ended.wait(&mut s);
        }
        match s.failed {
            Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
    fn flush_errors_reach_every_flush(&self) -> bool {
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

    /// A device whose flushes (numbered from 1 as they enter) block until the
    /// test releases them one by one, counting how many run at once; the ones
    /// the test marks return EIO.
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
        fail: Vec<u32>,
        released: Vec<u32>,
    }

    impl SlowFlush {
        fn release(&self, n: u32) {
            self.state.lock().unwrap().released.push(n);
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
            while !s.released.contains(&n) {
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

    /// The errseq case: two flushes run at once, the device tells the first one
    /// of the error and the second one 0. The second, though its own flush
    /// returned first, waits for the first and fails with it.
    #[test]
    fn a_flush_beside_a_failing_one_fails() {
        let slow = Arc::new(SlowFlush::default());
        slow.state.lock().unwrap().fail.push(1);
        let gate = FlushGate::wrap(slow.clone());
        let first = flush_on_thread(&gate);
        slow.wait_entered(1);
        let second = flush_on_thread(&gate);
        slow.wait_entered(2);
        assert_eq!(
            slow.state.lock().unwrap().most_at_once,
            2,
            "flushes run at once"
        );
        slow.release(2);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!second.is_finished(), "returned while the first still ran");
        slow.release(1);
        let e = first.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        let e = second.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }

    /// Without a failure, the flush that returned first waits for the other
    /// and both succeed.
    #[test]
    fn flushes_beside_each_other_both_succeed() {
        let slow = Arc::new(SlowFlush::default());
        let gate = FlushGate::wrap(slow.clone());
        let first = flush_on_thread(&gate);
        slow.wait_entered(1);
        let second = flush_on_thread(&gate);
        slow.wait_entered(2);
        slow.release(2);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!second.is_finished(), "returned while the first still ran");
        slow.release(1);
        first.join().unwrap().unwrap();
        second.join().unwrap().unwrap();
    }

    /// Every flush after a failed one fails without reaching the device: on
    /// Linux the device's next flush would have returned 0.
    #[test]
    fn a_failed_flush_fails_every_flush_after_it() {
        let slow = Arc::new(SlowFlush::default());
        slow.state.lock().unwrap().fail.push(1);
        slow.release(1);
        let gate = FlushGate::wrap(slow.clone());
        let e = gate.flush().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        slow.release(2);
        let e = gate.flush().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert_eq!(slow.entered.load(Ordering::SeqCst), 1);
    }

    /// A flush alone neither waits nor is skipped.
    #[test]
    fn every_flush_reaches_the_device() {
        let slow = Arc::new(SlowFlush::default());
        let gate = FlushGate::wrap(slow.clone());
        slow.release(1);
        slow.release(2);
        gate.flush().unwrap();
        gate.flush().unwrap();
        assert_eq!(slow.entered.load(Ordering::SeqCst), 2);
    }

    /// A device whose flush panics: the gate counts it as failed, so flushes
    /// beside it or after it get an error instead of waiting forever.
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
        let e = flush_on_thread(&gate).join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn wrapping_twice_adds_no_second_gate() {
        let gate = FlushGate::wrap(Arc::new(MemDevice::new()));
        let again = FlushGate::wrap(gate.clone());
        assert!(Arc::ptr_eq(&gate, &again));
    }
}
