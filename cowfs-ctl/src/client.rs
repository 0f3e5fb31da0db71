//! A blocking client: one Unix-socket connection, one request at a time.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::proto::*;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot connect to the cowfs daemon at {path}: {source} (is `cowfs serve` running? set --socket or $COWFS_SOCKET)")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to the cowfs daemon: {0}")]
    Io(#[from] io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("unexpected reply from the daemon: {0}")]
    Protocol(String),
    #[error("{0}")]
    Server(ErrorReply),
}

impl ClientError {
    /// The daemon's typed error, if that is what this is.
    pub fn server(&self) -> Option<&ErrorReply> {
        match self {
            ClientError::Server(e) => Some(e),
            _ => None,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    hello: HelloReply,
}

impl Client {
    /// Connect to the daemon at `socket` and authenticate with `token` (the secret).
    pub fn connect(socket: impl AsRef<Path>, token: &str) -> ClientResult<Client> {
        let path = socket.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let writer = stream.try_clone()?;
        let mut c = Client {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            hello: HelloReply {
                version: 0,
                server: String::new(),
                token: String::new(),
            },
        };
        c.hello = c.call(&Request::Hello {
            version: PROTOCOL_VERSION,
            token: Some(token.to_string()),
            client: Some(format!("cowfs-ctl {}", env!("CARGO_PKG_VERSION"))),
        })?;
        Ok(c)
    }

    /// What the daemon said at the handshake.
    pub fn server(&self) -> &HelloReply {
        &self.hello
    }

    /// Give up on a reply after `d` (default: wait as long as the daemon works).
    pub fn set_timeout(&mut self, d: Option<Duration>) -> ClientResult<()> {
        self.writer.set_read_timeout(d)?;
        self.writer.set_write_timeout(d)?;
        Ok(())
    }

    /// Send one request and decode its result.
    pub fn call<T: DeserializeOwned>(&mut self, req: &Request) -> ClientResult<T> {
        self.call_with_progress(req, &mut |_| {})
    }

    /// Send one request and decode its result; `progress` lines that come before
    /// the reply (see `branch_create_with`) are handed to `on_progress`.
    pub fn call_with_progress<T: DeserializeOwned>(
        &mut self,
        req: &Request,
        on_progress: &mut dyn FnMut(&ProgressEvent),
    ) -> ClientResult<T> {
        let id = self.next_id;
        self.next_id += 1;
        let mut v = serde_json::to_value(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("id".into(), id.into());
        }
        let mut line = v.to_string();
        line.push('\n');
        if let Err(e) = self.writer.write_all(line.as_bytes()) {
            // A daemon that refuses the connection (too_many_clients) sends its
            // error and closes: that error, already waiting to be read, says
            // more than the broken pipe.
            return Err(
                match self.read_line().map(serde_json::from_value::<Reply>) {
                    Ok(Ok(Reply {
                        error: Some(err), ..
                    })) => ClientError::Server(err),
                    _ => ClientError::Io(e),
                },
            );
        }
        let reply = loop {
            let v = self.read_line()?;
            let is_progress = v
                .as_object()
                .is_some_and(|o| o.contains_key("progress") && !o.contains_key("ok"));
            if !is_progress {
                break serde_json::from_value::<Reply>(v)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
            }
            let p: ProgressLine =
                serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if p.id != Some(id) {
                return Err(ClientError::Protocol(format!(
                    "progress id {:?} for request {id}",
                    p.id
                )));
            }
            on_progress(&p.progress);
        };
        // An error without id is about the connection, not a request (the
        // daemon could not read the id, or refused the connection).
        if let (None, false, Some(e)) = (reply.id, reply.ok, &reply.error) {
            return Err(ClientError::Server(e.clone()));
        }
        if reply.id != Some(id) {
            return Err(ClientError::Protocol(format!(
                "reply id {:?} for request {id}",
                reply.id
            )));
        }
        match (reply.ok, reply.result, reply.error) {
            (true, Some(r), _) => {
                serde_json::from_value(r).map_err(|e| ClientError::Protocol(e.to_string()))
            }
            (false, _, Some(e)) => Err(ClientError::Server(e)),
            _ => Err(ClientError::Protocol(
                "reply without result or error".into(),
            )),
        }
    }

    /// One line from the daemon, as JSON.
    fn read_line(&mut self) -> ClientResult<serde_json::Value> {
        read_json_line(&mut self.reader)
    }

    pub fn list(&mut self) -> ClientResult<Vec<BranchInfo>> {
        Ok(self.call::<BranchList>(&Request::List {})?.branches)
    }

    pub fn info(&mut self, name: &str) -> ClientResult<BranchInfo> {
        self.call(&Request::Info { name: name.into() })
    }

    /// A writable branch of `from` (a branch or snapshot), optionally mounted.
    /// If `from` requires a sanitize profile of this token, it runs (see
    /// `branch_create_with`).
    pub fn branch_create(
        &mut self,
        name: &str,
        from: &str,
        mount: Option<MountSpec>,
    ) -> ClientResult<BranchInfo> {
        self.call(&Request::BranchCreate {
            name: name.into(),
            from: from.into(),
            mount,
            sanitize: None,
            progress: false,
        })
    }

    /// A writable branch of `from`, sanitized with profile `sanitize` (or the one
    /// `from` requires) before the daemon replies: the reply comes once every rule
    /// and hook succeeded and the branch is ready, or the clone was deleted and the
    /// error (`sanitize_failed`) says which rule or hook failed. With
    /// `on_progress`, the daemon's progress events are passed to it meanwhile.
    pub fn branch_create_with(
        &mut self,
        name: &str,
        from: &str,
        mount: Option<MountSpec>,
        sanitize: Option<&str>,
        on_progress: Option<&mut dyn FnMut(&ProgressEvent)>,
    ) -> ClientResult<BranchInfo> {
        let req = Request::BranchCreate {
            name: name.into(),
            from: from.into(),
            mount,
            sanitize: sanitize.map(str::to_string),
            progress: on_progress.is_some(),
        };
        match on_progress {
            Some(f) => self.call_with_progress(&req, f),
            None => self.call(&req),
        }
    }

    pub fn snapshot_create(&mut self, name: &str, from: &str) -> ClientResult<BranchInfo> {
        self.call(&Request::SnapshotCreate {
            name: name.into(),
            from: from.into(),
        })
    }

    /// Several branches or snapshots from several parents, in one commit.
    pub fn group_create(&mut self, members: Vec<GroupMember>) -> ClientResult<Vec<BranchInfo>> {
        Ok(self
            .call::<BranchList>(&Request::GroupCreate { members })?
            .branches)
    }

    pub fn rename(&mut self, old: &str, new: &str) -> ClientResult<BranchInfo> {
        self.call(&Request::Rename {
            old: old.into(),
            new: new.into(),
        })
    }

    pub fn delete(&mut self, name: &str) -> ClientResult<()> {
        self.call::<Done>(&Request::Delete { name: name.into() })
            .map(|_| ())
    }

    pub fn mount(&mut self, name: &str, dir: &str, read_only: bool) -> ClientResult<BranchInfo> {
        self.call(&Request::Mount {
            name: name.into(),
            dir: dir.into(),
            read_only,
        })
    }

    pub fn unmount(&mut self, dir: &str) -> ClientResult<()> {
        self.call::<Done>(&Request::Unmount { dir: dir.into() })
            .map(|_| ())
    }

    pub fn mounts(&mut self) -> ClientResult<Vec<MountInfo>> {
        Ok(self.call::<MountList>(&Request::Mounts {})?.mounts)
    }

    pub fn diff(&mut self, a: &str, b: &str) -> ClientResult<DiffReply> {
        self.call(&Request::Diff {
            a: a.into(),
            b: b.into(),
        })
    }

    pub fn reset(&mut self, branch: &str, to: &str) -> ClientResult<BranchInfo> {
        self.call(&Request::Reset {
            branch: branch.into(),
            to: to.into(),
        })
    }

    pub fn protect(&mut self, name: &str) -> ClientResult<BranchInfo> {
        self.protect_with(name, None)
    }

    /// Protect `name`; with `require_sanitize`, every branch a non-admin token
    /// creates from it runs that profile, and its snapshots are admin-only.
    pub fn protect_with(
        &mut self,
        name: &str,
        require_sanitize: Option<&str>,
    ) -> ClientResult<BranchInfo> {
        self.protect_forcing(name, require_sanitize, false)
    }

    /// `protect_with`; with `force`, read-write mounts of the branch made by
    /// tokens without `admin` on it are ended (without: refused, `mounted`).
    pub fn protect_forcing(
        &mut self,
        name: &str,
        require_sanitize: Option<&str>,
        force: bool,
    ) -> ClientResult<BranchInfo> {
        self.call(&Request::Protect {
            name: name.into(),
            require_sanitize: require_sanitize.map(str::to_string),
            force,
        })
    }

    pub fn unprotect(&mut self, name: &str) -> ClientResult<BranchInfo> {
        self.call(&Request::Unprotect { name: name.into() })
    }

    pub fn usage(&mut self) -> ClientResult<UsageReply> {
        self.call(&Request::Usage {})
    }

    /// Set a branch's quota and reservation; `None` and 0 clear them.
    pub fn quota_set(
        &mut self,
        name: &str,
        max_bytes: Option<u64>,
        reserve_bytes: u64,
    ) -> ClientResult<QuotaInfo> {
        self.call(&Request::QuotaSet {
            name: name.into(),
            max_bytes,
            reserve_bytes,
        })
    }

    pub fn quota_list(&mut self) -> ClientResult<Vec<QuotaInfo>> {
        Ok(self.call::<QuotaList>(&Request::QuotaList {})?.quotas)
    }

    pub fn token_create(&mut self, name: &str, scopes: Vec<Grant>) -> ClientResult<TokenCreated> {
        self.call(&Request::TokenCreate {
            name: name.into(),
            scopes,
        })
    }

    pub fn token_list(&mut self) -> ClientResult<Vec<TokenInfo>> {
        Ok(self.call::<TokenList>(&Request::TokenList {})?.tokens)
    }

    /// Revoke token `name`; every mount made with it is ended (listed).
    pub fn token_revoke(&mut self, name: &str) -> ClientResult<Vec<EndedMount>> {
        Ok(self
            .call::<TokenRevoked>(&Request::TokenRevoke { name: name.into() })?
            .unmounted)
    }
}

/// One line of JSON from `reader`, at most `MAX_REPLY_BYTES` long. A read
/// interrupted by a signal is retried: a program linking the client may handle
/// signals without SA_RESTART, and the reply to a request the daemon carried out
/// must not be lost to that.
fn read_json_line(reader: &mut impl BufRead) -> ClientResult<serde_json::Value> {
    let mut buf = Vec::new();
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if chunk.is_empty() {
            return Err(ClientError::Closed);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        buf.extend_from_slice(&chunk[..take]);
        reader.consume(take);
        if buf.len() > MAX_REPLY_BYTES {
            return Err(ClientError::Protocol(format!(
                "reply longer than {MAX_REPLY_BYTES} bytes"
            )));
        }
        if done {
            break;
        }
    }
    serde_json::from_slice(&buf).map_err(|e| ClientError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// A reader whose first read is interrupted by a signal (EINTR).
    struct InterruptedOnce<R>(bool, R);

    impl<R: Read> Read for InterruptedOnce<R> {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            if !self.0 {
                self.0 = true;
                return Err(io::ErrorKind::Interrupted.into());
            }
            self.1.read(b)
        }
    }

    /// A program linking the client may handle signals without SA_RESTART (the
    /// ctl_reply fuzz target runs under libFuzzer's SIGALRM): the interrupted
    /// read failed the call ("Interrupted system call") although the daemon had
    /// done the request and its reply was on the way.
    #[test]
    fn a_read_interrupted_by_a_signal_is_retried() {
        let mut r = BufReader::new(InterruptedOnce(false, &b"{\"id\":1,\"ok\":true}\n"[..]));
        let v = read_json_line(&mut r).unwrap();
        assert_eq!(v["id"], 1);
    }
}
