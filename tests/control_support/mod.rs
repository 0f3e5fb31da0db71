//! Shared by the control-plane scenario tests: a daemon's control socket served in
//! the test process (a pool file in a temporary directory, its mount table and a
//! `ControlServer`), clients with tokens of given scopes, and a guard that always
//! unmounts everything and stops the server, also when the test fails.
#![allow(dead_code)] // each scenario uses the part it needs

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cowfs::control::{tokens, ControlServer};
use cowfs::fuse::MountTable;
use cowfs::pool::{Pool, PoolOptions};
use cowfs_ctl::proto::{ErrorKind, Grant};
use cowfs_ctl::{Client, ClientError};

pub struct Daemon {
    pub tmp: tempfile::TempDir,
    pub pool_path: PathBuf,
    pub socket: PathBuf,
    pub pool: Arc<Pool>,
    pub mounts: Arc<MountTable>,
    /// The admin secret `init_admin_token` wrote to POOL.token.
    pub admin: String,
    server: Option<ControlServer>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with_config(None)
    }

    /// With a daemon config file holding `config` (TOML).
    pub fn start_with_config(config: Option<&str>) -> Daemon {
        Daemon::start_with(config, 8 << 30)
    }

    /// With a control config and a pool of `capacity` bytes.
    pub fn start_with(config: Option<&str>, capacity: u64) -> Daemon {
        let tmp = test_dir();
        let pool_path = tmp
            .path()
            .canonicalize()
            .expect("canonical tmp")
            .join("pool");
        let opts = PoolOptions {
            capacity_bytes: Some(capacity),
            ..Default::default()
        };
        let pool = Pool::create(&pool_path, &opts).expect("create pool");
        Daemon::start_on(tmp, pool, config)
    }

    /// Serve `pool`, whose file is `tmp/pool` (a pool made otherwise, say one
    /// left by a crash), with a new admin token and a control config holding
    /// `config` (TOML).
    pub fn start_on(tmp: tempfile::TempDir, pool: Pool, config: Option<&str>) -> Daemon {
        let base = tmp.path().canonicalize().expect("canonical tmp");
        let pool_path = base.join("pool");
        assert_eq!(pool.name(), pool_path, "the pool must be tmp/pool");
        let pool = Arc::new(pool);
        let secret_file = tokens::init_admin_token(&pool_path).expect("admin token");
        let admin = std::fs::read_to_string(secret_file)
            .expect("read POOL.token")
            .trim()
            .to_string();
        let mounts = MountTable::new(pool.clone());
        let socket = base.join("pool.sock");
        let cfg_path = config.map(|c| {
            let p = base.join("cowfs.toml");
            std::fs::write(&p, c).expect("write config");
            p
        });
        let server =
            ControlServer::start(pool.clone(), mounts.clone(), &socket, cfg_path.as_deref())
                .expect("start control server");
        Daemon {
            tmp,
            pool_path,
            socket,
            pool,
            mounts,
            admin,
            server: Some(server),
        }
    }

    /// A directory under the daemon's default mount root (`POOL.mnt`), where
    /// every token may mount.
    pub fn dir(&self, name: &str) -> PathBuf {
        let d = self.mount_root().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    /// The default mount root, `POOL.mnt`.
    pub fn mount_root(&self) -> PathBuf {
        let mut p = self.pool_path.clone().into_os_string();
        p.push(".mnt");
        PathBuf::from(p)
    }

    pub fn admin_client(&self) -> Client {
        self.client(&self.admin)
    }

    pub fn client(&self, secret: &str) -> Client {
        Client::connect(&self.socket, secret).expect("connect")
    }

    /// Create a token with these grants; returns its secret.
    pub fn token(&self, name: &str, scopes: &[&str]) -> String {
        let grants: Vec<Grant> = scopes.iter().map(|s| s.parse().expect("grant")).collect();
        self.admin_client()
            .token_create(name, grants)
            .expect("token create")
            .secret
    }

    /// Stop the server now (the guard also does it).
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        self.mounts.unmount_all();
    }

    /// Stop the server and start a new one on the same pool, as a daemon
    /// restart would (the pool stays open).
    pub fn restart(&mut self) {
        self.stop();
        let server =
            ControlServer::start(self.pool.clone(), self.mounts.clone(), &self.socket, None)
                .expect("restart control server");
        self.server = Some(server);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        lazy_unmount_under(self.tmp.path());
    }
}

/// A temporary directory for a daemon's pool and side files.
pub fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cowfs-ctl-test-")
        .tempdir()
        .expect("tempdir")
}

/// Detach any FUSE mount left under `dir` (a failed test must leave nothing).
pub fn lazy_unmount_under(dir: &Path) {
    let Ok(canon) = dir.canonicalize() else {
        return;
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (_, Some(target), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if fstype.starts_with("fuse") && Path::new(target).starts_with(&canon) {
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
    }
}

/// Is anything mounted on `dir`?
pub fn is_mountpoint(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    let d = dir.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(d.as_ref()))
}

/// `cowfs init --size 1G POOL` with the `cowfs` binary `bin`; the admin token's
/// secret it wrote.
pub fn init_pool(bin: &str, pool: &Path) -> String {
    let out = Command::new(bin)
        .args(["init", "--size", "1G"])
        .arg(pool)
        .output()
        .expect("cowfs init");
    assert!(
        out.status.success(),
        "cowfs init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(tokens::secret_path(pool))
        .expect("POOL.token")
        .trim()
        .to_string()
}

/// A client of a `cowfs serve` that may still be starting: retries for 20 s.
pub fn connect(socket: &Path, secret: &str) -> Client {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match Client::connect(socket, secret) {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "daemon never answered: {e}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// The server's error kind of a failed call (panics on success or a transport
/// error, which would be a different bug).
pub fn kind<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error reply, got {v:?}"),
        Err(ClientError::Server(e)) => e.kind,
        Err(e) => panic!("expected an error reply, got {e}"),
    }
}

/// A `cowfs serve` child process started by a test. `stop` sends SIGTERM and returns
/// the exit code (SIGKILL after a minute); `kill` is a crash. Dropping it stops the
/// daemon and lazily unmounts whatever it left under `base`, also when the test fails.
pub struct Served {
    child: Option<std::process::Child>,
    base: PathBuf,
}

impl Served {
    pub fn new(child: std::process::Child, base: &Path) -> Served {
        Served {
            child: Some(child),
            base: base.to_path_buf(),
        }
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // kill(1) rather than libc: this module is shared with cowfs-ctl's tests.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return st.code(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
        lazy_unmount_under(&self.base);
    }
}
