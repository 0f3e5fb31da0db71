//! PostgreSQL on a mounted branch: initdb, pgbench (scale 10, thousands of
//! transactions), pg_amcheck --heapallindexed clean; then kill -9 the cowfs daemon in
//! the middle of a pgbench run, restart it, and PostgreSQL must recover with amcheck
//! clean and every transaction it acknowledged before the crash present.
//!
//! Needs root and PostgreSQL 15 (`.ci/run` installs it).

#[path = "mount/mod.rs"]
mod mount;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mount::{Fixture, Mounted};

const PGBIN: &str = "/usr/lib/postgresql/15/bin";

struct Postgres {
    uid: u32,
    gid: u32,
    data: PathBuf,
    sock: PathBuf,
    port: u16,
}

/// A postmaster started as our own child, so that killing it also reaps it (a
/// reaped postmaster leaves no live PID behind to block the restart). Dropping it
/// kills it, so a failing test leaves no postgres behind.
struct Running {
    child: Child,
}

impl Running {
    /// Fast shutdown (SIGINT): checkpoint and exit 0.
    fn stop(mut self) {
        mount::signal(self.child.id(), libc::SIGINT);
        let st = self.child.wait().expect("wait for postgres");
        assert!(st.success(), "postgres fast shutdown exited with {st}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn postgres_ids() -> (u32, u32) {
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
    fn new(data: PathBuf, sock: PathBuf) -> Postgres {
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

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(Path::new(PGBIN).join(prog));
        c.uid(self.uid)
            .gid(self.gid)
            .env("PGHOST", &self.sock)
            .env("PGPORT", self.port.to_string());
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, prog: &str, args: &[&str]) -> Output {
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

    fn start(&self) -> Running {
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
            .args(["-p", &self.port.to_string()])
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
        let mut running = Running { child };
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

    fn sql(&self, q: &str) -> String {
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

    fn count(&self, table: &str) -> u64 {
        self.sql(&format!("SELECT count(*) FROM {table}"))
            .parse()
            .expect("a count")
    }

    fn amcheck(&self) {
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

    fn pgbench_background(&self, seconds: u32) -> Child {
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

#[test]
fn postgres_on_a_branch_survives_a_daemon_crash() {
    let fx = Fixture::new();
    let base = fx.pool.parent().expect("fixture dir").to_path_buf();
    let sock = base.join("pgsock");
    fs::create_dir(&sock).expect("socket dir");
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o1777)).expect("chmod socket dir");
    let data = fx.mnt.join("pg");
    let pg = Postgres::new(data.clone(), sock);

    let m = fx.mount();
    fs::create_dir(&data).expect("mkdir data dir on the mount");
    std::os::unix::fs::chown(&data, Some(pg.uid), Some(pg.gid)).expect("chown data dir");
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).expect("chmod data dir");
    pg.run(
        "initdb",
        &[
            "-D",
            data.to_str().expect("utf-8 path"),
            "-A",
            "trust",
            "--data-checksums",
        ],
    );

    let acked_before_crash;
    {
        let server = pg.start();
        pg.run("pgbench", &["-i", "-s", "10", "-q", "postgres"]);
        pg.run("pgbench", &["-c", "4", "-j", "2", "-t", "750", "postgres"]);
        let history = pg.count("pgbench_history");
        assert!(history >= 3000, "pgbench ran {history} transactions");
        pg.amcheck();

        // Acknowledged commits we will look for after the crash.
        pg.sql("CREATE TABLE acked (id int PRIMARY KEY)");
        for i in 0..50 {
            pg.sql(&format!("INSERT INTO acked VALUES ({i})"));
        }
        let before_bench = pg.count("pgbench_history");
        let mut bench = pg.pgbench_background(60);
        // Let it run until it has committed a good number of transactions.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = before_bench;
        while seen < before_bench + 500 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            seen = pg.count("pgbench_history");
        }
        assert!(
            seen >= before_bench + 500,
            "background pgbench made no progress ({seen})"
        );
        std::thread::sleep(Duration::from_millis(500));
        // Every transaction counted here was acknowledged to its client; pgbench keeps
        // committing until the crash.
        acked_before_crash = pg.count("pgbench_history");
        m.crash();
        let _ = bench.kill();
        let _ = bench.wait();
        drop(server);
    }

    // The pool is consistent after the crash, before anything replays.
    fx.assert_fsck_clean();

    let m: Mounted = fx.mount();
    {
        let server = pg.start();
        assert_eq!(pg.count("acked"), 50, "acknowledged inserts lost");
        let after = pg.count("pgbench_history");
        assert!(
            after >= acked_before_crash,
            "{after} pgbench transactions after recovery, {acked_before_crash} acknowledged before the crash"
        );
        pg.amcheck();
        server.stop();
    }
    m.stop();
    fx.assert_fsck_clean();
}
