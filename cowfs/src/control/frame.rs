//! Reading one request line off a control connection: bounded in size and in
//! time, whatever the client sends or fails to send.

use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::time::Instant;

pub(super) enum Frame {
    Line(Vec<u8>),
    Eof,
    TooLarge,
    /// The line was not complete by its deadline.
    Late,
}

/// One request line, at most `limit` bytes including the newline, complete by
/// `deadline`. The deadline bounds the whole line, not each read: a client that
/// trickles a byte now and then would otherwise hold its slot forever.
pub(super) fn read_frame(
    r: &mut BufReader<UnixStream>,
    limit: usize,
    deadline: Instant,
) -> io::Result<Frame> {
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Frame::Late);
        }
        r.get_ref().set_read_timeout(Some(left))?;
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            // A signal whose handler was installed without SA_RESTART (by a
            // program that links the server): not the client's doing. Read on;
            // the deadline still bounds the line.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Frame::Late)
            }
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            // End of stream; a partial frame means the client vanished mid-request:
            // there is nobody to answer.
            return Ok(Frame::Eof);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if buf.len() + take > limit {
            return Ok(Frame::TooLarge);
        }
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take);
        if done {
            return Ok(Frame::Line(buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Signals the no-op handler has caught.
    static CAUGHT: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn caught(_: libc::c_int) {
        CAUGHT.fetch_add(1, Ordering::SeqCst);
    }

    /// A no-op SIGUSR1 handler installed without SA_RESTART, as a program that
    /// links the server may install its own: a blocked read then fails with EINTR.
    fn catch_sigusr1_without_restart() {
        // SAFETY: zeroed is a valid sigaction; the handler only bumps an atomic
        // (async-signal-safe) and stays valid for the process's life.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = caught as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
    }

    /// Review finding: a signal interrupting the blocked read (EINTR) ended the
    /// frame with an error, and the connection was dropped mid-request. The
    /// reader is signalled while it waits for the line's first half, between the
    /// halves and until it returns; the line must come whole.
    #[test]
    fn a_signal_does_not_cut_a_frame() {
        catch_sigusr1_without_restart();
        let (mut client, server) = UnixStream::pair().expect("socketpair");
        let deadline = Instant::now() + Duration::from_secs(60);
        let reader =
            std::thread::spawn(move || read_frame(&mut BufReader::new(server), 4096, deadline));
        let thread = reader.as_pthread_t();
        // Until the reader has caught `n` more signals (a few while it waits in
        // recv, whatever the scheduling) or has returned. Joining comes after,
        // so its pthread_t stays valid for pthread_kill.
        let signal = |n: usize| {
            let until = CAUGHT.load(Ordering::SeqCst).saturating_add(n);
            while CAUGHT.load(Ordering::SeqCst) < until && !reader.is_finished() {
                // SAFETY: the thread is not joined yet, so its id is valid.
                unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        signal(20);
        // Write errors are left to the assertion below: a reader cut off has
        // closed its end.
        let _ = client.write_all(br#"{"op":"li"#);
        signal(20);
        let _ = client.write_all(b"st\"}\n");
        signal(usize::MAX);
        match reader.join().expect("reader thread") {
            Ok(Frame::Line(l)) => assert_eq!(l, b"{\"op\":\"list\"}\n"),
            Ok(_) => panic!("no whole line read"),
            Err(e) => panic!("the frame was cut by a signal: {e}"),
        }
    }
}
