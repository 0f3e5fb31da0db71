//! Bad input on the control socket: garbage bytes, non-objects, unknown operations,
//! bad arguments, wrong versions and tokens, invalid names, oversized and truncated
//! frames, stalled, vanishing and too many clients, 100 concurrent clients. Each
//! gets a typed error or a closed connection; the daemon keeps serving everyone
//! else and the pool is unchanged.

mod control_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use control_support::*;
use cowfs_ctl::proto::ErrorKind;
use serde_json::{json, Value};

struct Raw {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Raw {
    fn connect(d: &Daemon) -> Raw {
        let s = UnixStream::connect(&d.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Raw {
            w: s.try_clone().expect("clone"),
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).expect("send");
    }

    fn reply(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read reply");
        assert!(line.ends_with('\n'), "no reply line, got {line:?}");
        serde_json::from_str(&line).expect("reply is JSON")
    }

    /// Send one line, expect an error of `kind`; returns the reply.
    fn expect_err(&mut self, line: &str, kind: &str) -> Value {
        self.send(format!("{line}\n").as_bytes());
        let v = self.reply();
        assert_eq!(v["ok"], json!(false), "{line} -> {v}");
        assert_eq!(v["error"]["kind"], json!(kind), "{line} -> {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        v
    }

    fn expect_ok(&mut self, line: &str) -> Value {
        self.send(format!("{line}\n").as_bytes());
        let v = self.reply();
        assert_eq!(v["ok"], json!(true), "{line} -> {v}");
        v["result"].clone()
    }

    fn hello(&mut self, secret: &str) {
        let r = self.expect_ok(
            &json!({"id": 1, "op": "hello", "args": {"version": 1, "token": secret}}).to_string(),
        );
        assert_eq!(r["version"], json!(1));
    }

    /// True once the daemon has closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(n) => n == 0,
            // A close with unread input resets the connection (ECONNRESET).
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

fn branches(d: &Daemon) -> Vec<String> {
    d.pool.list().into_iter().map(|b| b.name).collect()
}

#[test]
fn malformed_requests_get_typed_errors_and_the_connection_stays_usable() {
    let d = Daemon::start();
    let before = branches(&d);
    let gen = d.pool.generation();
    let mut c = Raw::connect(&d);
    // Before the handshake.
    let v = c.expect_err("\u{1}\u{7f} garbage {{{", "bad_json");
    assert_eq!(v["id"], Value::Null);
    c.send(b"\xff\xfe\x00\x01 binary\n");
    assert_eq!(c.reply()["error"]["kind"], json!("bad_json"));
    c.expect_err("[1,2,3]", "bad_json");
    c.expect_err("\"just a string\"", "bad_json");
    c.expect_err(r#"{"id":2,"op":42}"#, "bad_request");
    c.expect_err(r#"{"id":"x","op":"list"}"#, "bad_request");
    let v = c.expect_err(r#"{"id":3,"op":"frobnicate","args":{}}"#, "unknown_op");
    assert_eq!(v["id"], json!(3));
    c.expect_err(r#"{"id":4,"op":"list"}"#, "handshake_required");
    c.expect_err(
        r#"{"id":5,"op":"hello","args":{"version":99,"token":"x"}}"#,
        "unsupported_version",
    );
    c.expect_err(
        r#"{"id":6,"op":"hello","args":{"version":1}}"#,
        "unauthenticated",
    );
    c.expect_err(
        r#"{"id":7,"op":"hello","args":{"version":1,"token":"cwt_0000"}}"#,
        "unauthenticated",
    );
    c.expect_err(
        r#"{"id":8,"op":"hello","args":{"token":"x"}}"#,
        "bad_request",
    );
    // Blank lines are ignored; then a good handshake.
    c.send(b"\n   \n");
    c.hello(&d.admin);
    c.expect_err(
        &json!({"id": 9, "op": "hello", "args": {"version": 1, "token": d.admin}}).to_string(),
        "bad_request",
    );
    // After it: bad arguments, unknown ops, invalid names.
    c.expect_err(
        r#"{"id":10,"op":"info","args":{"nam":"main"}}"#,
        "bad_request",
    );
    c.expect_err(r#"{"id":11,"op":"info","args":{"name":5}}"#, "bad_request");
    c.expect_err(r#"{"id":12,"op":"info","args":"main"}"#, "bad_request");
    c.expect_err(r#"{"id":13,"op":"drop_everything"}"#, "unknown_op");
    let long = "x".repeat(256);
    for bad in ["", "a/b", "a\u{0}b", "..", "tab\there", long.as_str()] {
        c.expect_err(
            &json!({"id": 14, "op": "info", "args": {"name": bad}}).to_string(),
            "invalid_name",
        );
        c.expect_err(
            &json!({"id": 15, "op": "branch_create", "args": {"name": bad, "from": "main"}})
                .to_string(),
            "invalid_name",
        );
        c.expect_err(
            &json!({"id": 16, "op": "rename", "args": {"old": "main", "new": bad}}).to_string(),
            "invalid_name",
        );
    }
    // 255 bytes is a valid name (it just does not exist).
    c.expect_err(
        &json!({"id": 17, "op": "info", "args": {"name": "y".repeat(255)}}).to_string(),
        "not_found",
    );
    // Null args and a missing id are fine.
    let r = c.expect_ok(r#"{"op":"list","args":null}"#);
    assert_eq!(r["branches"][0]["name"], json!("main"));
    assert_eq!(branches(&d), before);
    assert_eq!(
        d.pool.generation(),
        gen,
        "no refused request committed anything"
    );
}

/// Review finding: "prod\u{200b}", "main\u{202e}", " prod" and a Cyrillic "рrod"
/// were accepted and looked like prod/main in `cowfs-ctl list`. Every request that
/// names something new refuses them with `invalid_name` and a message that shows
/// the offending character escaped, with its code point; looking such a name up
/// is still `not_found` (names given by older daemons stay usable).
#[test]
fn lookalike_names_are_refused() {
    let d = Daemon::start();
    let mut c = Raw::connect(&d);
    c.hello(&d.admin);
    let before = branches(&d);
    for (bad, shown) in [
        ("prod\u{200b}", r"'\u{200b}' (U+200B)"),
        ("main\u{202e}", r"'\u{202e}' (U+202E)"),
        (" prod", "' ' (U+0020)"),
        ("prod\t", r"'\t' (U+0009)"),
        ("\u{440}rod", "'\u{440}' (U+0440)"),
    ] {
        let member = json!([{"name": bad, "from": "main"}]);
        for (op, args) in [
            ("branch_create", json!({"name": bad, "from": "main"})),
            ("snapshot_create", json!({"name": bad, "from": "main"})),
            ("group_create", json!({"members": member})),
            ("rename", json!({"old": "main", "new": bad})),
            ("token_create", json!({"name": bad, "scopes": ["read:*"]})),
        ] {
            let line = json!({"id": 1, "op": op, "args": args}).to_string();
            let v = c.expect_err(&line, "invalid_name");
            let message = v["error"]["message"].as_str().expect("message");
            assert!(message.contains(shown), "{op} {bad:?}: {message}");
            assert_eq!(v["error"]["target"], json!(bad.escape_debug().to_string()));
        }
        if bad != "prod\t" {
            let line = json!({"id": 2, "op": "info", "args": {"name": bad}}).to_string();
            c.expect_err(&line, "not_found");
        }
    }
    assert_eq!(branches(&d), before);
    let tokens = d.admin_client().token_list().expect("token list");
    assert_eq!(tokens.len(), 1, "no token was created");
}

#[test]
fn oversized_truncated_and_vanishing_frames_leave_other_clients_served() {
    let d = Daemon::start_with_config(Some("[control]\nmax_frame_bytes = 65536\n"));
    let mut ok = d.admin_client();
    // Oversized: one typed error, then the connection is closed.
    let mut big = Raw::connect(&d);
    let mut line = br#"{"op":"hello","args":{"version":1,"token":""#.to_vec();
    line.extend(std::iter::repeat_n(b'a', 200_000));
    let w = big.w.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let mut w = w;
        // The daemon stops reading at the limit; the rest may fail to send.
        let _ = w.write_all(&line);
    });
    let v = big.reply();
    assert_eq!(v["error"]["kind"], json!("frame_too_large"), "{v}");
    assert!(big.closed(), "connection closed after an oversized frame");
    writer.join().expect("writer thread");
    // Truncated frames from clients that vanish mid-request.
    for cut in [1, 10, 30] {
        let mut t = Raw::connect(&d);
        let full =
            json!({"id": 1, "op": "hello", "args": {"version": 1, "token": d.admin}}).to_string();
        t.send(&full.as_bytes()[..cut]);
        drop(t);
    }
    // One that vanishes after a complete handshake, mid-request.
    let mut t = Raw::connect(&d);
    t.hello(&d.admin);
    t.send(br#"{"id":2,"op":"branch_create","args":{"name":"half","#);
    drop(t);
    // A stalled client holding a partial line does not block anyone.
    let mut stalled = Raw::connect(&d);
    stalled.send(br#"{"id":1,"op":"hel"#);
    let t0 = Instant::now();
    assert_eq!(ok.list().expect("list").len(), 1);
    ok.branch_create("after", "main", None).expect("create");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        d.pool.branch_id("half").is_err(),
        "a partial request did nothing"
    );
    // The stalled client can still finish its line and be served.
    stalled.send(
        format!(
            "lo\",\"args\":{{\"version\":1,\"token\":\"{}\"}}}}\n",
            d.admin
        )
        .as_bytes(),
    );
    assert_eq!(stalled.reply()["ok"], json!(true));
}

#[test]
fn idle_and_surplus_clients_are_closed() {
    let d = Daemon::start_with_config(Some("[control]\nidle_timeout_secs = 1\nmax_clients = 3\n"));
    let mut idle = Raw::connect(&d);
    idle.hello(&d.admin);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        idle.closed(),
        "an idle connection is closed after the timeout"
    );
    // Wait until the daemon has reaped it, then fill the slots.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<Raw> = (0..3).map(|_| Raw::connect(&d)).collect();
    let mut extra = Raw::connect(&d);
    let v = extra.reply();
    assert_eq!(v["error"]["kind"], json!("too_many_clients"), "{v}");
    assert!(extra.closed());
    // The Rust client shows the daemon's error, not a broken pipe.
    match cowfs_ctl::Client::connect(&d.socket, &d.admin) {
        Err(cowfs_ctl::ClientError::Server(e)) => {
            assert_eq!(e.kind, ErrorKind::TooManyClients, "{e}");
            assert!(e.to_string().contains("retry later"), "{e}");
        }
        Err(e) => panic!("expected the daemon's too_many_clients, got {e}"),
        Ok(_) => panic!("a surplus client was served"),
    }
    drop(held);
    // Slots free up again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cowfs_ctl::Client::connect(&d.socket, &d.admin) {
            Ok(mut c) => {
                assert_eq!(c.list().expect("list").len(), 1);
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "daemon never freed a slot: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The idle timeout bounds a whole request line (and, before a successful hello,
/// the whole connection), not each read: clients that trickle a byte at a time,
/// or send blank lines, lose their slot at the deadline.
#[test]
fn trickling_clients_are_closed_at_the_deadline() {
    let d = Daemon::start_with_config(Some("[control]\nidle_timeout_secs = 1\nmax_clients = 4\n"));
    let mut partial = Raw::connect(&d);
    let mut blank = Raw::connect(&d);
    let mut authed = Raw::connect(&d);
    authed.hello(&d.admin);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3000) {
        for (c, b) in [
            (&mut partial, b" "),
            (&mut blank, b"\n"),
            (&mut authed, b" "),
        ] {
            // Writes fail once the daemon has closed the connection.
            let _ = c.w.write_all(b);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (name, c) in [
        ("partial", &mut partial),
        ("blank", &mut blank),
        ("authed", &mut authed),
    ] {
        c.w.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        assert!(c.closed(), "{name}: still open after 3 s of trickling");
    }
}

/// Before a successful hello only a short line is read: a stranger cannot make
/// the daemon buffer and parse big requests.
#[test]
fn lines_before_hello_are_short() {
    let d = Daemon::start();
    let mut c = Raw::connect(&d);
    let big = format!("{{\"op\":\"list\",\"pad\":[{}0]}}\n", "0,".repeat(32 << 10));
    c.send(big.as_bytes());
    let v = c.reply();
    assert_eq!(v["error"]["kind"], json!("frame_too_large"), "{v}");
    assert!(c.closed());
    // After hello the configured limit applies.
    let mut c = Raw::connect(&d);
    c.hello(&d.admin);
    c.send(big.as_bytes());
    assert_eq!(c.reply()["ok"], json!(true));
}

#[test]
fn a_hundred_concurrent_clients() {
    let d = Daemon::start();
    let agent = d.token("agent", &["branch:main", "read:main"]);
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let socket = d.socket.clone();
            let secret = if i % 2 == 0 {
                d.admin.clone()
            } else {
                agent.clone()
            };
            std::thread::spawn(move || -> Result<(), String> {
                let mut c =
                    cowfs_ctl::Client::connect(&socket, &secret).map_err(|e| e.to_string())?;
                let name = format!("c{i}");
                c.branch_create(&name, "main", None)
                    .map_err(|e| e.to_string())?;
                let info = c.info(&name).map_err(|e| e.to_string())?;
                if info.parent.as_deref() != Some("main") {
                    return Err(format!("{name}: parent {:?}", info.parent));
                }
                // Garbage on a second connection of the same client changes nothing.
                let mut s = UnixStream::connect(&socket).map_err(|e| e.to_string())?;
                s.write_all(b"}}}}\n").map_err(|e| e.to_string())?;
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread").expect("client");
    }
    let names = branches(&d);
    assert_eq!(names.len(), 101);
    let mut a = d.client(&agent);
    // The agent sees main and the 50 branches it created, nothing else: the
    // admin's branches are as missing to it.
    assert_eq!(a.list().expect("list").len(), 51);
    let kind = kind(a.info("c0"));
    assert_eq!(kind, ErrorKind::NotFound);
}

#[test]
fn shutdown_does_not_hang_when_the_socket_file_is_gone() {
    let mut d = Daemon::start();
    let mut c = d.admin_client();
    assert_eq!(c.list().expect("list").len(), 1);
    std::fs::remove_file(&d.socket).expect("remove socket file");
    let (tx, rx) = std::sync::mpsc::channel();
    // Detached: if shutdown hangs, the test fails instead of hanging with it.
    std::thread::spawn(move || {
        d.stop();
        let _ = tx.send(());
        drop(d);
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(20)).is_ok(),
        "shutdown hung"
    );
    // The open connection was closed by the shutdown.
    assert!(c.list().is_err());
}

/// Review finding: anyone who may connect to the socket, without a token, could
/// hold every connection slot (connections that never send a hello keep theirs
/// for the whole hello deadline, and new ones replace those closed), and the
/// daemon answered everyone else, the admin included, `too_many_clients`. Now
/// one user other than the daemon's own holds at most half the slots.
#[test]
fn one_user_cannot_take_every_connection_slot() {
    use std::os::unix::fs::PermissionsExt;

    let d = Daemon::start_with_config(Some("[control]\nmax_clients = 4\n"));
    // The socket is 0660 root:root: a user of group root reaches it, as the
    // daemon's group would.
    std::fs::set_permissions(d.tmp.path(), std::fs::Permissions::from_mode(0o750))
        .expect("chmod tmp");
    let socket = d.socket.clone();
    // Connected by a thread that is user 65534 (group root) for the kernel: the
    // raw syscall changes this thread's credentials only, and the daemon reads
    // the connecting thread's (SO_PEERCRED). The thread ends with them.
    let held = std::thread::spawn(move || {
        // SAFETY: plain syscall; the saved uid stays 0 and nothing in this
        // thread needs root afterwards.
        let r = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 0) };
        assert_eq!(r, 0, "setresuid: {}", std::io::Error::last_os_error());
        (0..4)
            .map(|_| {
                let s = UnixStream::connect(&socket).expect("connect as 65534");
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .expect("timeout");
                s
            })
            .collect::<Vec<_>>()
    })
    .join()
    .expect("connecting thread");
    // Its last connections were refused at once; the first ones are served
    // (waiting for their hello).
    let answers: Vec<Option<String>> = held
        .iter()
        .map(|s| {
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).ok()?;
            let v: Value = serde_json::from_str(&line).ok()?;
            v["error"]["kind"].as_str().map(String::from)
        })
        .collect();
    let refused = answers
        .iter()
        .filter(|k| k.as_deref() == Some("too_many_clients"))
        .count();
    assert_eq!(refused, 2, "{answers:?}");
    // The admin (the daemon's own user) still gets in while those are held.
    let mut admin = cowfs_ctl::Client::connect(&d.socket, &d.admin).expect("admin connects");
    assert_eq!(admin.list().expect("list").len(), 1);
    drop(held);
}
