//! The reply decoder of `cowfs-ctl` (and of every program that links its client):
//! what comes back on the control socket may be anything a daemon of another
//! version, a crashed daemon or whatever listens on that path sends. A socket
//! here plays the daemon: it answers the handshake properly, then sends the input
//! as the reply to one request. The client must return a reply or a typed error,
//! never panic or hang.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::sync::Once;
use std::time::Duration;

use cowfs_ctl::proto::ProgressEvent;
use cowfs_ctl::{Client, ClientResult};

use super::scratch::Scratch;

const HELLO: &[u8] =
    b"{\"id\":1,\"ok\":true,\"result\":{\"version\":1,\"server\":\"fuzz\",\"token\":\"t\"}}\n";

/// First byte: which request (and so which result type is decoded); the rest is
/// what the daemon sends after the handshake reply.
pub fn ctl_reply(data: &[u8]) {
    let Some((&op, reply)) = data.split_first() else {
        return;
    };
    // The client may stop reading before the end of the input and close: the
    // daemon side's write must fail with EPIPE, not kill the process (libFuzzer's
    // own main does not ignore SIGPIPE as a Rust main does).
    static IGNORE_SIGPIPE: Once = Once::new();
    IGNORE_SIGPIPE.call_once(|| unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    });
    let dir = Scratch::new();
    let sock = dir.path().join("s");
    let listener = UnixListener::bind(&sock).expect("bind");
    let sent = [HELLO, reply].concat();
    let daemon = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut r = BufReader::new(&s);
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).expect("read the hello");
        let _ = (&s).write_all(&sent);
        // Wait for the request before closing, so the client's write never
        // meets a closed socket.
        let _ = r.read_until(b'\n', &mut line);
    });
    let mut c = Client::connect(&sock, "cwt_fuzz").expect("handshake");
    c.set_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = request(&mut c, op);
    drop(c);
    daemon.join().expect("daemon side");
}

fn request(c: &mut Client, op: u8) -> ClientResult<()> {
    match op % 8 {
        0 => c.list().map(drop),
        1 => c.info("main").map(drop),
        2 => c.diff("a", "b").map(drop),
        3 => c.usage().map(drop),
        4 => c.mounts().map(drop),
        5 => c.token_list().map(drop),
        6 => c.quota_list().map(drop),
        _ => {
            let mut events = 0u64;
            let mut on = |_: &ProgressEvent| events += 1;
            let on: &mut dyn FnMut(&ProgressEvent) = &mut on;
            c.branch_create_with("x", "main", None, Some("pii"), Some(on))
                .map(drop)
        }
    }
}
