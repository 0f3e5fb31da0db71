//! A PostgreSQL 15 server for the scenario tests that run one on a cowfs mount:
//! initdb, a postmaster started as the test's own child (it and every backend
//! killed on drop, so a failing test leaves no postgres behind), psql, pgbench and
//! pg_amcheck, all as user postgres. Needs root and PostgreSQL 15 in /usr/lib/postgresql/15/bin (`.ci/run`
//! installs it).
#![allow(dead_code)] // each scenario uses the part it needs

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PGBIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Postgres {
    pub uid: u32,
    pub gid: u32,
    pub data: PathBuf,
    pub sock: PathBuf,
    port: u16,
}

/// A postmaster started as our own child, so that killing it also reaps it (a
/// reaped postmaster leaves no live PID behind to block the restart). Dropping it
/// kills it, so a failing test leaves no postgres behind.
pub struct Running {
    child: Child,
    /// The server's log, every server process's stderr.
    log: PathBuf,
}

impl Running {
    /// Fast shutdown (SIGINT): checkpoint and exit 0.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child, which we have not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let st = self.child.wait().expect("wait for postgres");
        assert!(st.success(), "postgres fast shutdown exited with {st}");
    }
}

impl Drop for Running {
    /// SIGKILL to the postmaster, then to every process whose stderr is this
    /// server's log. A backend waiting on a lock whose holder died (a crash test)
    /// never notices its postmaster is gone: it would stay behind, holding files
    /// of a detached mount. Backends are forked from the postmaster and keep its
    /// stderr; nothing else finds them (each calls setsid, so no process group
    /// holds them; the process title overwrites their environment; a crash test
    /// has detached their cwd).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_writing_to(&self.log);
            if left.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in left {
                // SAFETY: kill(2) on a process whose stderr is our server's log.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Live processes (zombies have no descriptors) whose stderr is `log`.
fn processes_writing_to(log: &Path) -> Vec<i32> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/fd/2")).is_ok_and(|p| p == log))
        .collect()
}

pub fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id")
        .arg("-u")
        .arg("postgres")
        .output()
        .expect("id");
    let uid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("postgres uid");
    let out = Command::new("id")
        .arg("-g")
        .arg("postgres")
        .output()
        .expect("id");
    let gid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("postgres gid");
    (uid, gid)
}

impl Postgres {
    pub fn new(data: PathBuf, sock: PathBuf) -> Postgres {
        let (uid, gid) = postgres_ids();
        let port = 20000 + (std::process::id() % 20000) as u16;
        Postgres {
            uid,
            gid,
            data,
            sock,
            port,
        }
    }

    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(Path::new(PGBIN).join(prog));
        c.uid(self.uid)
            .gid(self.gid)
            .env("PGHOST", &self.sock)
            .env("PGPORT", self.port.to_string());
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, prog: &str, args: &[&str]) -> Output {
        let out = self
            .cmd(prog)
            .args(args)
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{prog} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn start(&self) -> Running {
        let log = self.sock.join("postgres.log");
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("postgres log");
        let child = self
            .cmd("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses="])
            .arg("-k")
            .arg(&self.sock)
            .args([
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
                "full_page_writes=on",
            ])
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start postgres");
        let mut running = Running {
            child,
            log: log.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let ready = self
                .cmd("pg_isready")
                .arg("-q")
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return running;
            }
            if let Ok(Some(st)) = running.child.try_wait() {
                panic!(
                    "postgres exited with {st}:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn sql(&self, q: &str) -> String {
        let out = self.run(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                q,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn count(&self, table: &str) -> u64 {
        self.sql(&format!("SELECT count(*) FROM {table}"))
            .parse()
            .expect("a count")
    }

    pub fn amcheck(&self) {
        let out = self.run(
            "pg_amcheck",
            &[
                "--install-missing",
                "--heapallindexed",
                "--no-dependent-toast",
                "-d",
                "postgres",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.trim().is_empty(),
            "pg_amcheck reported problems:\n{text}"
        );
    }

    pub fn pgbench_background(&self, seconds: u32) -> Child {
        self.cmd("pgbench")
            .args([
                "-n",
                "-c",
                "4",
                "-j",
                "2",
                "-T",
                &seconds.to_string(),
                "postgres",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbench")
    }
}
