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
#[path = "mariadb_support/mod.rs"]
mod mariadb_support;
#[path = "mount/mod.rs"]
mod mount;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use control_support::Daemon;
use cowfs::pool::FsckOptions;
use cowfs_ctl::proto::MountSpec;
use mariadb_support::{install_db, Server};
use mount::Fixture;

/// Rows of app.t matching `filter` (a WHERE clause, or nothing).
fn count(server: &Server, filter: &str) -> u64 {
    server
        .sql(&format!("SELECT COUNT(*) FROM app.t {filter}"))
        .parse()
        .expect("a count")
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
    while count(&parent, "") < 300 {
        assert!(Instant::now() < deadline, "the writer committed too little");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every row counted here was committed (and so made durable) before the branch.
    let committed = count(&parent, "");
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
    let parent_rows = count(&parent, "");
    assert!(
        parent_rows > committed,
        "the writer kept committing during the branch"
    );

    let clone = Server::start(&clone_dir.join("mysql"), &run.join("clone"));
    let clone_rows = count(&clone, "");
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
    assert_eq!(count(&clone, "WHERE v = 'parent-only'"), 0);
    assert_eq!(count(&parent, "WHERE v = 'clone-only'"), 0);
    assert_eq!(count(&clone, "WHERE v = 'clone-only'"), 1);
    assert_eq!(count(&parent, ""), parent_rows + 1);

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
