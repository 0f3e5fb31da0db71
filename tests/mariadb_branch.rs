//! MariaDB on a mounted branch, through the control socket: InnoDB writes its data
//! files with O_DIRECT and asynchronous I/O (io_uring or libaio) and commits with
//! fsync, so it takes other paths through the mount than PostgreSQL does.
//!
//! A branch taken while clients commit single-row transactions must be a
//! crash-consistent copy: a second server started on the clone recovers, has every
//! row committed before the branch request, and `CHECK TABLE ... EXTENDED` passes.
//! Writes on either side stay on that side, both servers shut down cleanly, and
//! fsck of the pool is clean.
//!
//! And `kill -9` of the cowfs daemon while a client commits: after a restart, the
//! server recovers with every commit it acknowledged.
//!
//! Needs root and MariaDB (`.ci/run` installs `mariadb-server`).

mod control_support;
#[path = "mount/mod.rs"]
mod mount;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control_support::Daemon;
use cowfs::pool::FsckOptions;
use cowfs_ctl::proto::MountSpec;
use mount::Fixture;

/// A `mariadbd` started as the test's child (it does not fork), killed on drop so
/// that a failing test leaves no server holding files on a mount.
struct Server {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts the server on `datadir` with its socket, pid file and error log in
    /// `run` (outside the branch), and waits until it answers.
    fn start(datadir: &Path, run: &Path) -> Server {
        fs::create_dir_all(run).expect("mkdir run dir");
        chown_mysql(run);
        let sock = run.join("mysqld.sock");
        let log = run.join("error.log");
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg("--user=mysql")
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--pid-file={}", run.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--tmpdir={}", run.display()))
            .args(["--skip-networking", "--innodb-buffer-pool-size=64M"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd (is mariadb-server installed?)");
        let mut server = Server { child, sock, log };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !server.answers() {
            if let Some(st) = server.child.try_wait().expect("wait mariadbd") {
                panic!("mariadbd exited with {st}:\n{}", server.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not answer in 120 s:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn answers(&self) -> bool {
        self.sock.exists()
            && self
                .client(&["-e", "SELECT 1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// The command-line client on this server's socket, as root (unix_socket auth).
    fn client(&self, args: &[&str]) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.sock.display()))
            .args(["--batch", "--skip-column-names"])
            .args(args);
        c
    }

    /// Runs `sql`; its output, trimmed. Panics with the server's log on failure.
    fn sql(&self, sql: &str) -> String {
        let out = self.client(&["-e", sql]).output().expect("run mariadb");
        assert!(
            out.status.success(),
            "{sql}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 output")
            .trim()
            .to_string()
    }

    fn count(&self, filter: &str) -> u64 {
        self.sql(&format!("SELECT COUNT(*) FROM app.t {filter}"))
            .parse()
            .expect("a count")
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Clean shutdown (SIGTERM): InnoDB writes its pages and exits 0.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child, which we have not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().expect("wait for mariadbd");
        assert!(
            st.success(),
            "mariadbd shutdown exited with {st}:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client committing one row per transaction until killed (dropped).
struct Writer(Child);

impl Writer {
    fn start(server: &Server) -> Writer {
        let script: String = (0..20_000)
            .map(|i| format!("INSERT INTO app.t (v, n) VALUES (REPEAT('w{i}', 20), {i});\n"))
            .collect();
        let mut child = server
            .client(&[])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start writer");
        let mut stdin = child.stdin.take().expect("writer stdin");
        // The pipe buffer is smaller than the script: feed it from a thread that
        // ends (broken pipe) when the writer is killed.
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(script.as_bytes());
        });
        Writer(child)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes an empty data directory at `data` (on a mount) with mariadb-install-db,
/// whose server puts temporary tables in `tmp`: two bootstraps sharing `/tmp` (the
/// two tests of this file at once) collide on a temporary table's name.
fn install_db(data: &Path, tmp: &Path) {
    fs::create_dir(data).expect("mkdir datadir");
    chown_mysql(data);
    fs::create_dir_all(tmp).expect("mkdir tmpdir");
    chown_mysql(tmp);
    let out = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg("--user=mysql")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .output()
        .expect("run mariadb-install-db");
    assert!(
        out.status.success(),
        "mariadb-install-db: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown_mysql(p: &Path) {
    let st = Command::new("chown")
        .arg("mysql:mysql")
        .arg(p)
        .status()
        .expect("chown");
    assert!(st.success(), "chown mysql {}", p.display());
}

#[test]
fn a_branch_of_a_busy_mariadb_is_a_consistent_copy() {
    let mut d = Daemon::start();
    // mariadbd runs as user mysql: it must reach the mounts in the test's directory.
    fs::set_permissions(d.tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod tmp");
    let mut admin = d.admin_client();
    let main_dir = d.dir("main");
    fs::set_permissions(d.mount_root(), fs::Permissions::from_mode(0o755)).expect("chmod root");
    admin
        .mount("main", main_dir.to_str().expect("utf-8"), false)
        .expect("mount main");

    let data = main_dir.join("mysql");
    let run = d.tmp.path().join("run");
    install_db(&data, &run.join("install"));

    let parent = Server::start(&data, &run.join("main"));
    // O_DIRECT is what this test is for; a changed default would make it moot.
    assert_eq!(parent.sql("SELECT @@innodb_flush_method"), "O_DIRECT");
    parent.sql(
        "CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY AUTO_INCREMENT, \
         v VARCHAR(200) NOT NULL, n INT NOT NULL, KEY (n)) ENGINE=InnoDB",
    );

    let writer = Writer::start(&parent);
    let deadline = Instant::now() + Duration::from_secs(60);
    while parent.count("") < 300 {
        assert!(Instant::now() < deadline, "the writer committed too little");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every row counted here was committed (and so made durable) before the branch.
    let committed = parent.count("");
    let clone_dir = d.dir("clone");
    admin
        .branch_create(
            "clone",
            "main",
            Some(MountSpec {
                dir: clone_dir.to_str().expect("utf-8").into(),
                read_only: false,
            }),
        )
        .expect("branch of the busy main");
    std::thread::sleep(Duration::from_millis(500));
    drop(writer);
    let parent_rows = parent.count("");
    assert!(
        parent_rows > committed,
        "the writer kept committing during the branch"
    );

    let clone = Server::start(&clone_dir.join("mysql"), &run.join("clone"));
    let clone_rows = clone.count("");
    assert!(
        (committed..=parent_rows).contains(&clone_rows),
        "clone has {clone_rows} rows; {committed} were committed before the branch, \
         the parent ended with {parent_rows}"
    );
    assert_eq!(
        clone.sql("CHECK TABLE app.t EXTENDED"),
        "app.t\tcheck\tstatus\tOK",
        "{}",
        clone.log_text()
    );
    assert!(
        clone.log_text().contains("crash recovery"),
        "the clone was taken from a running server, so InnoDB must recover it:\n{}",
        clone.log_text()
    );

    // Each side's writes stay on that side.
    clone.sql("INSERT INTO app.t (v, n) VALUES ('clone-only', -1)");
    parent.sql("INSERT INTO app.t (v, n) VALUES ('parent-only', -2)");
    assert_eq!(clone.count("WHERE v = 'parent-only'"), 0);
    assert_eq!(parent.count("WHERE v = 'clone-only'"), 0);
    assert_eq!(clone.count("WHERE v = 'clone-only'"), 1);
    assert_eq!(parent.count(""), parent_rows + 1);

    for s in [clone, parent] {
        let log = s.log.clone();
        s.stop();
        let text = fs::read_to_string(log).unwrap_or_default();
        assert!(!text.contains("[ERROR]"), "server log has errors:\n{text}");
    }
    d.stop();
    let report = d.pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(report.is_clean(), "fsck: {report:?}");
}

/// A client that commits `INSERT INTO app.a VALUES (i)` for i = 1, 2, ... and
/// prints i once the commit is acknowledged; killed on drop.
struct AckedInserts {
    child: Child,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl AckedInserts {
    fn start(server: &Server) -> AckedInserts {
        use std::io::{BufRead, Write};
        use std::sync::atomic::Ordering;
        let mut child = server
            .client(&["--unbuffered"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start client");
        let mut stdin = child.stdin.take().expect("stdin");
        std::thread::spawn(move || {
            for i in 1..=100_000 {
                if writeln!(stdin, "INSERT INTO app.a VALUES ({i}); SELECT {i};").is_err() {
                    return;
                }
            }
        });
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = acked.clone();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(Ok(i)) = line.map(|l| l.trim().parse::<u64>()) else {
                    return;
                };
                seen.store(i, Ordering::SeqCst);
            }
        });
        AckedInserts { child, acked }
    }

    fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for AckedInserts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mariadb_keeps_every_acknowledged_commit_across_a_daemon_crash() {
    let fx = Fixture::new();
    let m = fx.mount();
    let data = fx.mnt.join("mysql");
    let run = fx.tmp.path().join("run");
    install_db(&data, &run.join("install"));

    let acked_before_crash;
    {
        let server = Server::start(&data, &run);
        server.sql("CREATE DATABASE app; CREATE TABLE app.a (id INT PRIMARY KEY) ENGINE=InnoDB");
        let inserts = AckedInserts::start(&server);
        let deadline = Instant::now() + Duration::from_secs(60);
        while inserts.acked() < 1000 {
            assert!(
                Instant::now() < deadline,
                "only {} commits in 60 s",
                inserts.acked()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Every id read here was acknowledged; the client keeps committing until
        // the crash.
        acked_before_crash = inserts.acked();
        m.crash();
        drop(inserts);
        drop(server);
    }
    fx.assert_fsck_clean();

    let m = fx.mount();
    let server = Server::start(&data, &run);
    let kept = server
        .sql(&format!(
            "SELECT COUNT(*) FROM app.a WHERE id <= {acked_before_crash}"
        ))
        .parse::<u64>()
        .expect("a count");
    assert_eq!(
        kept,
        acked_before_crash,
        "acknowledged commits lost in the crash:\n{}",
        server.log_text()
    );
    assert_eq!(
        server.sql("CHECK TABLE app.a EXTENDED"),
        "app.a\tcheck\tstatus\tOK"
    );
    server.stop();
    m.stop();
    fx.assert_fsck_clean();
}
