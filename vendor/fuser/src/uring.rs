//! FUSE over io_uring (Linux 6.14+; cowfs patch, see COWFS-PATCH.md).
//!
//! Why: with `/dev/fuse`, a request from a process on CPU A wakes whichever reader
//! thread the kernel picks, often on CPU B, and the reply wakes the caller back on
//! A. On a VM whose idle vCPUs halt, each cross-CPU wake-up is an IPI and a VM exit;
//! that, not the filesystem, dominates a metadata round trip. With io_uring the
//! kernel keeps one queue per CPU and hands a request to the queue of the CPU its
//! caller runs on; the threads serving queue `q` are pinned to CPU `q`, so both
//! wake-ups stay on one CPU, and the reply and the fetch of the next request are one
//! system call.
//!
//! Protocol (`Documentation/filesystems/fuse-io-uring.rst`, `fs/fuse/dev_uring.c`):
//! each ring entry is a pair of buffers, registered with an
//! `IORING_OP_URING_CMD` / `FUSE_IO_URING_CMD_REGISTER` naming the queue. The kernel
//! completes that command when it puts a request in the entry: `fuse_in_header` at
//! the start of the header buffer, the op's fixed argument at `OP_IN`, everything
//! else in the payload buffer, its length and the request's commit id in the
//! trailer. The answer goes back the same way (`fuse_out_header` at the start, the
//! payload in the payload buffer) with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which
//! also parks the entry for the next request. The kernel starts using the rings
//! only once every queue has an entry; until then, and always for FORGET and
//! INTERRUPT, requests come through `/dev/fuse`, whose readers keep running.
//!
//! Each ring thread owns one io_uring with one entry, so a thread is never handed a
//! request while it is busy with another; `THREADS_PER_QUEUE` threads per CPU let a
//! slow request (an fsync) not hold up the others of its CPU.

use std::io;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::thread::ThreadId;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::warn;
use nix::sys::eventfd::EfdFlags;
use nix::sys::eventfd::EventFd;
use parking_lot::Mutex;

use crate::Filesystem;
use crate::channel::ChannelSender;
use crate::ll;
use crate::ll::fuse_abi as abi;
use crate::passthrough::BackingId;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

/// Threads (each with one ring entry) serving one CPU's queue.
pub(crate) const THREADS_PER_QUEUE: usize = 2;

/// `struct fuse_uring_req_header`: `in_out[128]`, `op_in[128]`, then
/// `struct fuse_uring_ent_in_out { flags, commit_id, payload_sz, padding, reserved }`.
const HEADER_SZ: usize = 288;
const OP_IN: usize = 128;
const OP_IN_MAX: usize = 128;
const COMMIT_ID: usize = 256 + 8;
const PAYLOAD_SZ: usize = 256 + 16;
const IN_HEADER_SZ: usize = size_of::<abi::fuse_in_header>();
const OUT_HEADER_SZ: usize = size_of::<abi::fuse_out_header>();

/// `enum fuse_uring_cmd`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `user_data` of the entry's command and of the wake-up poll.
const ENTRY: u64 = 0;
const WAKE: u64 = 1;

/// What the kernel needs to know to accept a ring: set after FUSE_INIT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingParams {
    /// The kernel refuses a payload buffer smaller than
    /// `max(8192, max_write, max_pages * PAGE_SIZE)`.
    pub(crate) payload_size: usize,
}

/// The queues the kernel keeps: one per possible CPU (`num_possible_cpus()`), whose
/// ids are the CPU numbers.
pub(crate) fn possible_cpus() -> io::Result<usize> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    count_cpus(&list).ok_or_else(|| io::Error::other(format!("cpu list {list:?}")))
}

/// The number of CPUs in a kernel cpu list such as `0-3,6`.
fn count_cpus(list: &str) -> Option<usize> {
    let mut n = 0;
    for range in list.trim().split(',').filter(|r| !r.is_empty()) {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let (lo, hi) = (lo.parse::<usize>().ok()?, hi.parse::<usize>().ok()?);
        n += hi.checked_sub(lo)? + 1;
    }
    (n > 0).then_some(n)
}

/// The entry's buffers, reached only through raw pointers: the request being
/// dispatched borrows one part of them while its reply may be written into
/// another, from any thread.
///
/// The header is 8-byte aligned (`fuse_in_header`); the payload follows `SPARE`
/// bytes of the same allocation, so that a request can be made contiguous
/// (header, op argument, payload) in place, without copying the payload, for the
/// parser.
struct Buffers {
    header: *mut u8,
    /// `[spare | payload]`, 8-byte aligned.
    data: *mut u8,
    data_words: usize,
    iov: Box<[libc::iovec; 2]>,
}

const SPARE: usize = IN_HEADER_SZ + OP_IN_MAX;

// SAFETY: the pointers are owned by `Buffers` (freed only in its Drop); who may
// touch which bytes when is governed by `Shared::state` (see `Entry`).
unsafe impl Send for Buffers {}
unsafe impl Sync for Buffers {}

impl Buffers {
    fn new(payload_size: usize) -> Buffers {
        let header: *mut u8 = Box::into_raw(Box::new([0u64; HEADER_SZ / 8])).cast();
        let data_words = (SPARE + payload_size).div_ceil(8);
        let data: *mut u8 = Box::into_raw(vec![0u64; data_words].into_boxed_slice()).cast();
        let iov = Box::new([
            libc::iovec {
                iov_base: header.cast(),
                iov_len: HEADER_SZ,
            },
            libc::iovec {
                // SAFETY: SPARE is within the allocation.
                iov_base: unsafe { data.add(SPARE) }.cast(),
                iov_len: payload_size,
            },
        ]);
        Buffers {
            header,
            data,
            data_words,
            iov,
        }
    }

    fn payload_cap(&self) -> usize {
        self.iov[1].iov_len
    }

    /// The header area. Caller: the entry is with userspace and nobody else
    /// touches the header.
    // Shared `&self`, unique slices: the buffers are the kernel's or ours by
    // turns, and ours are split between a request and its reply by `EntryState`,
    // which the borrow checker cannot see.
    #[allow(clippy::mut_from_ref)]
    unsafe fn header(&self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.header, HEADER_SZ) }
    }

    /// `len` bytes of the data area from `off`. Caller: as for `header`, for
    /// that range.
    #[allow(clippy::mut_from_ref)]
    unsafe fn data(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.data_words * 8);
        unsafe { std::slice::from_raw_parts_mut(self.data.add(off), len) }
    }

    unsafe fn header_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(unsafe { self.header() }[off..off + 4].try_into().unwrap())
    }

    /// The request the kernel put in the entry, in the `/dev/fuse` layout, and the
    /// length of its payload; or why it is malformed. Caller: the entry is with
    /// userspace, no reply written yet.
    unsafe fn request(&self) -> Result<(&[u8], usize), String> {
        let (len, payload) = unsafe {
            (
                self.header_u32(0) as usize,
                self.header_u32(PAYLOAD_SZ) as usize,
            )
        };
        let op_len = len
            .checked_sub(IN_HEADER_SZ + payload)
            .filter(|&n| n <= OP_IN_MAX && n % 8 == 0 && payload <= self.payload_cap())
            .ok_or_else(|| format!("request length {len} with payload {payload}"))?;
        let start = SPARE - op_len - IN_HEADER_SZ;
        let header = unsafe { self.header() };
        let head = unsafe { self.data(start, IN_HEADER_SZ + op_len) };
        head[..IN_HEADER_SZ].copy_from_slice(&header[..IN_HEADER_SZ]);
        head[IN_HEADER_SZ..].copy_from_slice(&header[OP_IN..OP_IN + op_len]);
        Ok((unsafe { self.data(start, len) }, payload))
    }

    /// Put an answer (`fuse_out_header` then payload, as written to `/dev/fuse`,
    /// in pieces) where the kernel reads it at the commit. Caller: the entry is
    /// with userspace, and nothing borrows the header or the first `reply length`
    /// bytes of the payload buffer.
    unsafe fn put_reply(&self, reply: &[IoSlice<'_>]) {
        let total: usize = reply.iter().map(|d| d.len()).sum();
        let payload_len = total - OUT_HEADER_SZ;
        let header = unsafe { self.header() };
        let mut out = Vec::with_capacity(OUT_HEADER_SZ);
        let mut written = 0;
        for piece in reply {
            let mut piece: &[u8] = piece;
            if out.len() < OUT_HEADER_SZ {
                let n = piece.len().min(OUT_HEADER_SZ - out.len());
                out.extend_from_slice(&piece[..n]);
                piece = &piece[n..];
            }
            if payload_len <= self.payload_cap() && !piece.is_empty() {
                unsafe { self.data(SPARE + written, piece.len()) }.copy_from_slice(piece);
                written += piece.len();
            }
        }
        header[..OUT_HEADER_SZ].copy_from_slice(&out);
        if payload_len > self.payload_cap() {
            // The kernel never asks for more than the buffer holds; answer EIO
            // rather than overrun it.
            error!("reply of {payload_len} bytes exceeds the ring buffer");
            header[0..4].copy_from_slice(&(OUT_HEADER_SZ as u32).to_ne_bytes());
            header[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
            written = 0;
        }
        header[PAYLOAD_SZ..PAYLOAD_SZ + 4].copy_from_slice(&(written as u32).to_ne_bytes());
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` as these boxes, and no longer registered
        // with the kernel (see `serve_queue`).
        unsafe {
            drop(Box::from_raw(self.header.cast::<[u64; HEADER_SZ / 8]>()));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.data.cast::<u64>(),
                self.data_words,
            )));
        }
    }
}

/// Where a reply to a ring request goes.
#[derive(Debug, Clone)]
pub(crate) struct RingSender {
    shared: Arc<Shared>,
    /// For passthrough's ioctls, which go to /dev/fuse.
    ch: ChannelSender,
}

struct Shared {
    buf: Buffers,
    state: Mutex<EntryState>,
    /// Written when a reply comes from a thread other than the ring's.
    wake: EventFd,
    ring_thread: ThreadId,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &*self.state.lock())
            .finish_non_exhaustive()
    }
}

/// Who owns the entry's buffers. While a request is in hand, the request being
/// dispatched borrows the `[spare | payload_sz]` part of the data area; a reply
/// whose payload would overlap it is kept aside (`Pending::Copied`) and put in
/// place by the ring thread once dispatch has returned. Everything else (a READ,
/// a GETATTR: requests without payload) is written in place at once.
#[derive(Debug, Default)]
struct EntryState {
    /// The commit id and payload length of the request the entry holds.
    in_hand: Option<(u64, usize)>,
    reply: Option<Pending>,
}

#[derive(Debug)]
enum Pending {
    InPlace,
    Copied(Vec<u8>),
}

impl RingSender {
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let total: usize = data.iter().map(|d| d.len()).sum();
        if total < OUT_HEADER_SZ {
            return Err(io::Error::other("reply shorter than fuse_out_header"));
        }
        let mut state = self.shared.state.lock();
        let Some((_, request_payload)) = state.in_hand else {
            return Err(io::Error::other(
                "reply to a ring entry that holds no request",
            ));
        };
        if state.reply.is_some() {
            return Err(io::Error::other("second reply to one ring request"));
        }
        state.reply = Some(if request_payload == 0 || total == OUT_HEADER_SZ {
            // SAFETY: the entry is with userspace (`in_hand`), and the request
            // borrows none of the bytes written (see `EntryState`); the lock
            // keeps the ring thread out until the reply is complete.
            unsafe { self.shared.buf.put_reply(data) };
            Pending::InPlace
        } else {
            let mut copy = Vec::with_capacity(total);
            for d in data {
                copy.extend_from_slice(d);
            }
            Pending::Copied(copy)
        });
        drop(state);
        if std::thread::current().id() != self.shared.ring_thread {
            self.shared.wake.write(1).map_err(io::Error::from)?;
        }
        Ok(())
    }

    pub(crate) fn open_backing(&self, fd: BorrowedFd<'_>) -> io::Result<BackingId> {
        self.ch.open_backing(fd)
    }

    pub(crate) unsafe fn wrap_backing(&self, id: u32) -> BackingId {
        unsafe { self.ch.wrap_backing(id) }
    }
}

/// An SQE for the entry's command: REGISTER (with the iovecs) or COMMIT_AND_FETCH.
fn entry_command(fd: RawFd, op: u32, qid: u16, commit_id: u64, buf: &Buffers) -> squeue::Entry128 {
    // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 pad[6]; }
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(fd), op)
        .cmd(cmd)
        .addr(Some(buf.iov.as_ptr() as u64))
        .build()
        .user_data(ENTRY);
    // The kernel wants `sqe->len == 2` (two iovecs), which io-uring's UringCmd80
    // has no setter for: `len` is the u32 at byte 24 of `struct io_uring_sqe`.
    // SAFETY: Entry128 is repr(C), 128 bytes: an io_uring_sqe and 64 command bytes.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: as above; any byte pattern is a valid SQE to this type.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

fn wake_poll(wake: &EventFd) -> squeue::Entry128 {
    opcode::PollAdd::new(types::Fd(wake.as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(WAKE)
        .into()
}

fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
            debug!("ring thread for CPU {cpu} left unpinned: {e}");
        }
    }
}

/// Serve queue `qid` until the connection ends. Returns Ok when the kernel ends the
/// entry (unmount, abort) and an error when the ring cannot be set up; then the
/// kernel keeps sending requests through /dev/fuse.
pub(crate) fn serve_queue<FS: Filesystem>(
    se: &SessionEventLoop<FS>,
    qid: u16,
    params: RingParams,
) -> io::Result<()> {
    pin_to_cpu(usize::from(qid));
    // A queue whose entries are all gone would leave its CPU's callers waiting
    // forever once the ring is in use: an entry the kernel refuses a commit for
    // (no known cause but a kernel fault) is replaced, a few times at most.
    for _ in 0..MAX_LOST_ENTRIES {
        match serve_entry(se, qid, params)? {
            Outcome::Ended => return Ok(()),
            Outcome::EntryLost(e) => {
                error!("ring {qid}: the kernel refused a commit ({e}); registering a new entry")
            }
        }
    }
    Err(io::Error::other(format!(
        "ring {qid}: {MAX_LOST_ENTRIES} entries lost"
    )))
}

const MAX_LOST_ENTRIES: usize = 8;

enum Outcome {
    /// The connection ended: unmount or abort.
    Ended,
    /// A commit failed: the entry is no longer the kernel's to fill, nor ours to
    /// free (its buffers are leaked).
    EntryLost(io::Error),
}

/// Register one entry on a ring of its own and serve it until it ends.
fn serve_entry<FS: Filesystem>(
    se: &SessionEventLoop<FS>,
    qid: u16,
    params: RingParams,
) -> io::Result<Outcome> {
    let fd = se.ch.as_fd().as_raw_fd();
    // Single issuer with deferred task work: the kernel hands a request to this
    // thread only when it waits in io_uring_enter, with a plain wake-up (no
    // signal-style interruption). Measured: 5,000 creates 6.3-6.8k -> 8.1-10.1k/s.
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4)?;
    let shared = Arc::new(Shared {
        buf: Buffers::new(params.payload_size),
        state: Mutex::new(EntryState::default()),
        wake: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?,
        ring_thread: std::thread::current().id(),
    });
    let sender = RingSender {
        shared: shared.clone(),
        ch: se.ch.sender(),
    };
    let buf = &shared.buf;
    // SAFETY: the buffers outlive the command: they are freed only once the
    // kernel has completed the entry's command with an error (released it), and
    // leaked if the ring fails while the command may still be pending.
    unsafe {
        let mut sq = ring.submission();
        sq.push(&wake_poll(&shared.wake)).expect("ring has room");
        sq.push(&entry_command(fd, CMD_REGISTER, qid, 0, buf))
            .expect("ring has room");
    }
    let mut registered = false;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                // The entry may still be parked in the kernel, which would write
                // the next request into its buffers: they must outlive it.
                std::mem::forget(shared.clone());
                return Err(e);
            }
        }
        let cqes: Vec<(u64, i32, u32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (user_data, res, flags) in cqes {
            if user_data == WAKE {
                // Only drains the counter; the reply itself is in `state`.
                let _ = shared.wake.read();
                if !cqueue::more(flags) {
                    // SAFETY: the poll names only the eventfd.
                    unsafe { ring.submission().push(&wake_poll(&shared.wake)) }
                        .expect("ring has room");
                }
                continue;
            }
            if res < 0 {
                let err = io::Error::from_raw_os_error(-res);
                return match -res {
                    // The connection ended (unmount, abort) or the ring is being
                    // torn down: the kernel has released the entry.
                    libc::ENOTCONN | libc::ECANCELED | libc::ENODEV => Ok(Outcome::Ended),
                    // The REGISTER itself was refused.
                    _ if !registered => Err(err),
                    _ => {
                        std::mem::forget(shared.clone());
                        Ok(Outcome::EntryLost(err))
                    }
                };
            }
            // A request arrived: the REGISTER was accepted.
            registered = true;
            // SAFETY: the kernel handed the entry over (this completion) and it
            // stays ours until the commit; the reply, if any, comes after the
            // request is made and is written only where the request does not
            // reach (`EntryState`).
            let commit_id = u64_of(&unsafe { buf.header() }[COMMIT_ID..COMMIT_ID + 8]);
            let parsed = match unsafe { buf.request() } {
                Ok((data, payload)) => {
                    shared.state.lock().in_hand = Some((commit_id, payload));
                    match RequestWithSender::new_ring(sender.clone(), data) {
                        Some(req) => {
                            if let Ok(ll::Operation::Destroy(_)) = req.request.operation() {
                                req.reply::<crate::reply::ReplyEmpty>().ok();
                            } else {
                                req.dispatch(se);
                            }
                            true
                        }
                        None => false,
                    }
                }
                Err(why) => {
                    warn!("ring {qid}: malformed request: {why}");
                    false
                }
            };
            if !parsed {
                // Answer EIO: the caller gets an error, the entry comes back.
                let mut state = shared.state.lock();
                state.in_hand = Some((commit_id, 0));
                state.reply = Some(Pending::Copied(error_reply(commit_id, libc::EIO)));
            }
        }
        // The answer is committed as soon as there is one: at once for a request
        // answered during dispatch, at the wake-up for one answered later from
        // another thread.
        let mut state = shared.state.lock();
        if let (Some((commit_id, _)), Some(reply)) = (state.in_hand, state.reply.take()) {
            if let Pending::Copied(reply) = reply {
                // SAFETY: dispatch has returned: nothing borrows the buffers.
                unsafe { buf.put_reply(&[IoSlice::new(&reply)]) };
            }
            state.in_hand = None;
            let sqe = entry_command(fd, CMD_COMMIT_AND_FETCH, qid, commit_id, buf);
            // SAFETY: as for the REGISTER.
            unsafe { ring.submission().push(&sqe) }.expect("ring has room");
        }
    }
}

fn error_reply(unique: u64, errno: i32) -> Vec<u8> {
    let mut reply = vec![0u8; OUT_HEADER_SZ];
    reply[0..4].copy_from_slice(&(OUT_HEADER_SZ as u32).to_ne_bytes());
    reply[4..8].copy_from_slice(&(-errno).to_ne_bytes());
    reply[8..16].copy_from_slice(&unique.to_ne_bytes());
    reply
}

fn u64_of(b: &[u8]) -> u64 {
    u64::from_ne_bytes(b.try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_header(len: u32, opcode: u32, unique: u64) -> [u8; IN_HEADER_SZ] {
        let mut h = [0u8; IN_HEADER_SZ];
        h[0..4].copy_from_slice(&len.to_ne_bytes());
        h[4..8].copy_from_slice(&opcode.to_ne_bytes());
        h[8..16].copy_from_slice(&unique.to_ne_bytes());
        h
    }

    /// Fill an entry as the kernel does: header, op argument, payload, trailer.
    fn deliver(buf: &Buffers, header: &[u8], op_in: &[u8], payload: &[u8], unique: u64) {
        // SAFETY (all tests): the buffers are the test's alone.
        unsafe {
            buf.header()[..header.len()].copy_from_slice(header);
            buf.header()[OP_IN..OP_IN + op_in.len()].copy_from_slice(op_in);
            buf.data(SPARE, payload.len()).copy_from_slice(payload);
            buf.header()[COMMIT_ID..COMMIT_ID + 8].copy_from_slice(&unique.to_ne_bytes());
            buf.header()[PAYLOAD_SZ..PAYLOAD_SZ + 4]
                .copy_from_slice(&(payload.len() as u32).to_ne_bytes());
        }
    }

    #[test]
    fn a_request_is_made_contiguous_in_place() {
        let buf = Buffers::new(8192);
        let op_in = [7u8; 40]; // fuse_write_in
        let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let len = (IN_HEADER_SZ + op_in.len() + payload.len()) as u32;
        deliver(&buf, &in_header(len, 16, 42), &op_in, &payload, 42);
        let (req, payload_len) = unsafe { buf.request() }.expect("well formed");
        assert_eq!(payload_len, payload.len());
        assert_eq!(req.len(), len as usize);
        assert_eq!(&req[..IN_HEADER_SZ], &in_header(len, 16, 42));
        assert_eq!(&req[IN_HEADER_SZ..IN_HEADER_SZ + 40], &op_in);
        assert_eq!(&req[IN_HEADER_SZ + 40..], &payload[..]);
        // The payload was not copied, and fuse_in_header is 8-byte aligned.
        assert_eq!(
            req[IN_HEADER_SZ + 40..].as_ptr() as usize,
            buf.iov[1].iov_base as usize
        );
        assert_eq!(req.as_ptr() as usize % 8, 0);
    }

    #[test]
    fn a_request_without_op_argument_parses() {
        let buf = Buffers::new(8192);
        let name = b"file.txt\0";
        let len = (IN_HEADER_SZ + name.len()) as u32;
        deliver(&buf, &in_header(len, 1, 9), &[], name, 9);
        let (req, _) = unsafe { buf.request() }.expect("well formed");
        assert_eq!(&req[IN_HEADER_SZ..], name);
    }

    #[test]
    fn inconsistent_lengths_are_refused() {
        let buf = Buffers::new(8192);
        // shorter than its payload
        deliver(&buf, &in_header(50, 16, 1), &[], &[0u8; 100], 1);
        assert!(unsafe { buf.request() }.is_err());
        // an op argument longer than op_in
        let len = (IN_HEADER_SZ + 136) as u32;
        deliver(&buf, &in_header(len, 16, 1), &[], &[], 1);
        assert!(unsafe { buf.request() }.is_err());
        // an op argument of a size no op has (not whole 8-byte words)
        let len = (IN_HEADER_SZ + 12) as u32;
        deliver(&buf, &in_header(len, 16, 1), &[], &[], 1);
        assert!(unsafe { buf.request() }.is_err());
        // a payload larger than the buffer the entry registered
        unsafe {
            buf.header()[PAYLOAD_SZ..PAYLOAD_SZ + 4].copy_from_slice(&9000u32.to_ne_bytes());
            buf.header()[0..4].copy_from_slice(&((IN_HEADER_SZ + 9000) as u32).to_ne_bytes());
        }
        assert!(unsafe { buf.request() }.is_err());
    }

    #[test]
    fn a_reply_in_pieces_lands_where_the_kernel_reads_it() {
        let buf = Buffers::new(8192);
        let mut head = [0u8; OUT_HEADER_SZ];
        head[0..4].copy_from_slice(&(OUT_HEADER_SZ as u32 + 5).to_ne_bytes());
        head[8..16].copy_from_slice(&77u64.to_ne_bytes());
        // the header split across two slices, the payload across two more
        let pieces = [
            IoSlice::new(&head[..10]),
            IoSlice::new(&head[10..]),
            IoSlice::new(b"abc"),
            IoSlice::new(b"de"),
        ];
        unsafe {
            buf.put_reply(&pieces);
            assert_eq!(&buf.header()[..OUT_HEADER_SZ], &head[..]);
            assert_eq!(buf.header_u32(PAYLOAD_SZ), 5);
            assert_eq!(buf.data(SPARE, 5), b"abcde");
        }
    }

    #[test]
    fn a_reply_too_large_for_the_buffer_becomes_eio() {
        let buf = Buffers::new(8192);
        let mut reply = vec![0u8; OUT_HEADER_SZ + 9000];
        reply[8..16].copy_from_slice(&5u64.to_ne_bytes());
        unsafe {
            buf.put_reply(&[IoSlice::new(&reply)]);
            assert_eq!(buf.header_u32(0) as usize, OUT_HEADER_SZ);
            assert_eq!(buf.header_u32(4) as i32, -libc::EIO);
            assert_eq!(u64_of(&buf.header()[8..16]), 5, "same unique");
            assert_eq!(buf.header_u32(PAYLOAD_SZ), 0);
        }
    }

    #[test]
    fn an_unparsable_request_is_answered_eio() {
        let reply = error_reply(31, libc::EIO);
        assert_eq!(reply.len(), OUT_HEADER_SZ);
        assert_eq!(u32::from_ne_bytes(reply[0..4].try_into().unwrap()), 16);
        assert_eq!(
            i32::from_ne_bytes(reply[4..8].try_into().unwrap()),
            -libc::EIO
        );
        assert_eq!(u64_of(&reply[8..16]), 31);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpus("0-1\n"), Some(2));
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpus(""), None);
        assert_eq!(count_cpus("3-1"), None);
        assert_eq!(count_cpus("x"), None);
    }
}
