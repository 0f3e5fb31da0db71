//! The socket side: accept connections, one thread each; read bounded request
//! lines under a timeout; handshake; hand requests to `dispatch`; write replies.
//! Nothing a client sends or fails to send can affect the daemon or other clients:
//! bad frames get a typed error, oversized ones and stalled or vanished clients a
//! closed connection.

use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use cowfs_ctl::proto::{
    ErrorKind, ErrorReply, ProgressEvent, ProgressLine, Reply, Request, PROTOCOL_VERSION,
};
use parking_lot::Mutex;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::config::ServerConfig;
use super::dispatch::Ctx;
use super::errors;
use super::frame::{read_frame, Frame};
use super::peer::{self, Peer};
use super::slots::{Full, Slots};
use super::tokens::Authenticated;

/// Longest line read before a successful hello (a hello is about 150 bytes).
const PREAUTH_FRAME_BYTES: usize = 4096;

pub struct Shared {
    pub ctx: Ctx,
    pub cfg: ServerConfig,
    pub stopping: AtomicBool,
    slots: Slots,
    next_conn: AtomicU64,
    /// Live connections, so that shutdown can close them.
    conns: Mutex<HashMap<u64, UnixStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    pub fn new(ctx: Ctx, cfg: ServerConfig) -> Shared {
        // SAFETY: geteuid(2) always succeeds.
        let slots = Slots::new(cfg.max_clients, unsafe { libc::geteuid() });
        Shared {
            ctx,
            cfg,
            stopping: AtomicBool::new(false),
            slots,
            next_conn: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
        }
    }

    /// Close every connection and wait for their threads.
    pub fn close_all(&self) {
        for s in self.conns.lock().values() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            if t.join().is_err() {
                log::error!("a control connection thread panicked");
            }
        }
    }
}

/// Accept until `stopping` is set (shutdown wakes the loop with a connection).
pub fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("control socket: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let uid = peer::uid(&stream);
        if let Err(full) = shared.slots.take(uid) {
            let message = match full {
                Full::All(max) => {
                    format!("the daemon already serves {max} connections; retry later")
                }
                Full::User(n) => format!(
                    "your user already holds {n} of the daemon's {} connections, as many as one user may; close some, or retry later",
                    shared.cfg.max_clients
                ),
            };
            let mut s = stream;
            let _ = s.set_write_timeout(Some(shared.cfg.io_timeout()));
            let _ = send(
                &mut s,
                None,
                Err(ErrorReply::new(ErrorKind::TooManyClients, message)),
            );
            continue;
        }
        if let Ok(c) = stream.try_clone() {
            shared.conns.lock().insert(id, c);
        }
        let guard = Slot {
            shared: shared.clone(),
            id,
            uid,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("cowfs-ctl-{id}"))
            .spawn(move || {
                // The slot is given back when this closure ends, panics included.
                let slot = guard;
                if let Err(e) = serve(&slot.shared, stream) {
                    log::debug!("control connection {id} closed: {e}");
                }
            });
        match spawned {
            Ok(h) => {
                let mut threads = shared.threads.lock();
                threads.retain(|t| !t.is_finished());
                threads.push(h);
            }
            // The closure (and its slot) was dropped: the slot is free again.
            Err(e) => log::error!("control socket: cannot start a connection thread: {e}"),
        }
    }
}

/// One served connection's place in the table and the count.
struct Slot {
    shared: Arc<Shared>,
    id: u64,
    uid: Option<u32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Free the slot before the last descriptor closes, so a client that sees
        // the connection end can count on the slot being free.
        self.shared.slots.give_back(self.uid);
        self.shared.conns.lock().remove(&self.id);
    }
}

fn send(w: &mut UnixStream, id: Option<u64>, r: Result<Value, ErrorReply>) -> io::Result<()> {
    let reply = match r {
        Ok(v) => Reply {
            id,
            ok: true,
            result: Some(v),
            error: None,
        },
        Err(e) => Reply {
            id,
            ok: false,
            result: None,
            error: Some(e),
        },
    };
    let mut line = serde_json::to_vec(&reply).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// The top level of a request, fields kept as raw JSON text borrowed from the
/// line: nothing is built for fields that are not read (unknown ones are skipped),
/// and `args` goes straight into the typed `Request`. A `serde_json::Value` of a
/// line costs many times the line's size.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    op: Option<&'a RawValue>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

/// Parse a line into (id, request), or the typed error to answer with. Never
/// panics, whatever the bytes (public for fuzzing).
pub fn parse(line: &[u8]) -> (Option<u64>, Result<Request, ErrorReply>) {
    // A struct also deserializes from an array: only an object is a request.
    let object = line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = if object {
        serde_json::from_slice::<Envelope>(line)
    } else {
        serde_json::from_slice::<IgnoredAny>(line)
            .and_then(|_| Err(serde::de::Error::custom("not an object")))
    };
    let env = match parsed {
        Ok(e) => e,
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return (
                None,
                Err(ErrorReply::new(
                    ErrorKind::BadJson,
                    format!("a request must be a JSON object (with distinct keys): {e}"),
                )),
            )
        }
        Err(e) => {
            return (
                None,
                Err(ErrorReply::new(
                    ErrorKind::BadJson,
                    format!("not a JSON line: {e}; send one JSON object per line"),
                )),
            )
        }
    };
    let id = match env.id {
        None => None,
        Some(raw) => match serde_json::from_str::<u64>(raw.get()) {
            Ok(id) => Some(id),
            Err(_) => {
                return (
                    None,
                    Err(ErrorReply::new(
                        ErrorKind::BadRequest,
                        "'id' must be a non-negative integer",
                    )),
                )
            }
        },
    };
    let Some(op) = env
        .op
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
    else {
        return (
            id,
            Err(ErrorReply::new(
                ErrorKind::BadRequest,
                "missing 'op' (a string naming the operation)",
            )),
        );
    };
    if !Request::OPS.contains(&op.as_str()) {
        let shown: String = op.chars().take(64).collect();
        return (
            id,
            Err(ErrorReply::new(
                ErrorKind::UnknownOp,
                format!(
                    "unknown operation '{}'; known: {}",
                    shown.escape_debug(),
                    Request::OPS.join(", ")
                ),
            )),
        );
    }
    // `null` arrives as `None` here: missing or null means `{}`.
    let args = env.args.map_or("{}", |a| a.get());
    // `op` is one of the known names: plain ASCII, no escaping needed.
    let req = format!("{{\"op\":\"{op}\",\"args\":{args}}}");
    match serde_json::from_str::<Request>(&req) {
        Ok(r) => (id, Ok(r)),
        Err(e) => (
            id,
            Err(ErrorReply::new(
                ErrorKind::BadRequest,
                format!("bad arguments for '{op}': {e}"),
            )),
        ),
    }
}

fn serve(sh: &Shared, stream: UnixStream) -> io::Result<()> {
    stream.set_write_timeout(Some(sh.cfg.io_timeout()))?;
    // Recorded by the kernel at connect: requests that depend on the client's
    // user (mounts of tokens without `admin:*`) are refused without it.
    let caller = Peer::of(&stream)
        .inspect_err(|e| log::warn!("control connection: the client's credentials: {e}"))
        .ok();
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut token: Option<Authenticated> = None;
    // Until a hello succeeds, one deadline for the whole connection; then one per
    // request line, from the previous reply. Blank lines do not move it.
    let mut deadline = Instant::now() + sh.cfg.idle_timeout();
    loop {
        // Before authentication only a hello is worth reading: a small limit
        // keeps strangers from making the daemon buffer and parse big lines.
        let limit = if token.is_some() {
            sh.cfg.max_frame_bytes
        } else {
            PREAUTH_FRAME_BYTES.min(sh.cfg.max_frame_bytes)
        };
        let line = match read_frame(&mut r, limit, deadline)? {
            Frame::Line(l) => l,
            Frame::Eof | Frame::Late => return Ok(()),
            Frame::TooLarge => {
                send(
                    &mut w,
                    None,
                    Err(ErrorReply::new(
                        ErrorKind::FrameTooLarge,
                        format!(
                            "request longer than {limit} bytes{}; the connection is closed",
                            if token.is_some() {
                                ""
                            } else {
                                " before a successful hello"
                            }
                        ),
                    )),
                )?;
                return Ok(());
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (id, req) = parse(&line);
        let result = match (req, &token) {
            (Err(e), _) => Err(e),
            (
                Ok(Request::Hello {
                    version,
                    token: secret,
                    client,
                }),
                None,
            ) => hello(sh, version, secret.as_deref()).map(|(who, v)| {
                log::debug!(
                    "control client '{}' authenticated as token '{}'",
                    client.as_deref().unwrap_or("?").escape_debug(),
                    who.name
                );
                token = Some(who);
                v
            }),
            (Ok(r), None) => Err(ErrorReply::new(
                ErrorKind::HandshakeRequired,
                format!(
                    "send hello first: {{\"op\":\"hello\",\"args\":{{\"version\":{PROTOCOL_VERSION},\"token\":\"...\"}}}} (got '{}')",
                    r.op()
                ),
            )),
            (Ok(r), Some(who)) => match sh.ctx.session(who) {
                None => Err(errors::revoked(&who.name)),
                Some(t) => {
                    let op = r.op();
                    let wants_progress =
                        matches!(&r, Request::BranchCreate { progress: true, .. });
                    // Progress lines go out as they come; a client that stops
                    // reading them gets no more (the request still completes),
                    // nor does one whose token is revoked meanwhile (they name
                    // the files being sanitized).
                    let mut sink_ok = true;
                    let mut sink = |ev: ProgressEvent| {
                        if !wants_progress || !sink_ok {
                            return;
                        }
                        if sh.ctx.tokens.current(who).is_none() {
                            sink_ok = false;
                            return;
                        }
                        let line = ProgressLine { id, progress: ev };
                        let sent = serde_json::to_vec(&line)
                            .map_err(io::Error::other)
                            .and_then(|mut l| {
                                l.push(b'\n');
                                w.write_all(&l)
                            });
                        if let Err(e) = sent {
                            log::debug!("progress line not sent: {e}");
                            sink_ok = false;
                        }
                    };
                    let res = sh.ctx.handle(&t, caller.as_ref(), r, &mut sink);
                    if let Err(e) = &res {
                        log::info!("{op} by token '{}' refused: {}", t.name, e.kind.as_str());
                    }
                    res
                }
            },
        };
        send(&mut w, id, result)?;
        if token.is_some() {
            deadline = Instant::now() + sh.cfg.idle_timeout();
        }
    }
}

fn hello(
    sh: &Shared,
    version: u32,
    secret: Option<&str>,
) -> Result<(Authenticated, Value), ErrorReply> {
    if version != PROTOCOL_VERSION {
        return Err(ErrorReply::new(
            ErrorKind::UnsupportedVersion,
            format!("protocol version {version} is not supported; this daemon speaks version {PROTOCOL_VERSION}"),
        ));
    }
    let Some(secret) = secret else {
        return Err(ErrorReply::new(
            ErrorKind::Unauthenticated,
            "no token: pass one (cowfs-ctl --token, --token-file or $COWFS_TOKEN; the first admin token is in POOL.token)",
        ));
    };
    let Some(who) = sh.ctx.tokens.authenticate(secret) else {
        log::info!("control: a client presented an unknown token");
        return Err(ErrorReply::new(
            ErrorKind::Unauthenticated,
            "unknown or revoked token; check the secret you passed",
        ));
    };
    let v = serde_json::json!({
        "version": PROTOCOL_VERSION,
        "server": format!("cowfs {}", env!("CARGO_PKG_VERSION")),
        "token": who.name,
    });
    Ok((who, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_are_typed() {
        let kind = |l: &str| parse(l.as_bytes()).1.map_err(|e| e.kind).err();
        assert_eq!(kind("{nope"), Some(ErrorKind::BadJson));
        assert_eq!(kind("[1,2]"), Some(ErrorKind::BadJson));
        assert_eq!(kind(r#"{"op":5}"#), Some(ErrorKind::BadRequest));
        assert_eq!(
            kind(r#"{"op":"list","id":-1}"#),
            Some(ErrorKind::BadRequest)
        );
        assert_eq!(kind(r#"{"op":"frobnicate"}"#), Some(ErrorKind::UnknownOp));
        assert_eq!(
            kind(r#"{"op":"info","args":{"nam":"x"}}"#),
            Some(ErrorKind::BadRequest)
        );
        assert_eq!(kind(r#"{"op":"list"}"#), None);
        assert_eq!(kind(r#"{"op":"list","id":null,"args":null}"#), None);
        assert_eq!(kind(r#"{"op":"list","extra":[0,0,{"a":1}]}"#), None);
        assert_eq!(
            kind(r#"{"op":"list","id":1.5}"#),
            Some(ErrorKind::BadRequest)
        );
        assert_eq!(
            kind(r#"{"op":"info","args":[0,0]}"#),
            Some(ErrorKind::BadRequest)
        );
        let (id, r) = parse(br#"{"id":9,"op":"info","args":{"name":"x"}}"#);
        assert_eq!(id, Some(9));
        assert_eq!(r.unwrap(), Request::Info { name: "x".into() });
    }

    /// Mutations of valid requests (byte flips, truncations, splices) and random
    /// bytes: every input gets a request or a typed error of the parsing kinds.
    #[test]
    fn parse_survives_mutated_and_random_input() {
        use rand::{Rng, SeedableRng};
        let seeds: Vec<Vec<u8>> = [
            r#"{"id":1,"op":"hello","args":{"version":1,"token":"cwt_00"}}"#,
            r#"{"id":2,"op":"branch_create","args":{"name":"a","from":"main","mount":{"dir":"/m","read_only":true}}}"#,
            r#"{"id":3,"op":"group_create","args":{"members":[{"name":"x","from":"y","snapshot":true}]}}"#,
            r#"{"id":4,"op":"token_create","args":{"name":"t","scopes":["read:*","branch:prod"]}}"#,
            r#"{"id":5,"op":"quota_set","args":{"name":"b","max_bytes":1,"reserve_bytes":2}}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut parsed = 0;
        for i in 0..20_000 {
            let mut b = seeds[i % seeds.len()].clone();
            match i % 4 {
                0 => {
                    for _ in 0..rng.gen_range(1..4) {
                        let at = rng.gen_range(0..b.len());
                        b[at] = rng.gen();
                    }
                }
                1 => b.truncate(rng.gen_range(0..b.len())),
                2 => {
                    let other = &seeds[rng.gen_range(0..seeds.len())];
                    let at = rng.gen_range(0..b.len());
                    b.splice(at..at, other.iter().copied());
                }
                _ => b = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect(),
            }
            match parse(&b).1 {
                Ok(_) => parsed += 1,
                Err(e) => assert!(
                    matches!(
                        e.kind,
                        ErrorKind::BadJson | ErrorKind::BadRequest | ErrorKind::UnknownOp
                    ),
                    "{e:?}"
                ),
            }
        }
        assert!(parsed > 0, "some mutations stay valid requests");
    }
}
