//! PostgreSQL on a mounted branch: initdb, pgbench (scale 10, thousands of
//! transactions), pg_amcheck --heapallindexed clean; then kill -9 the cowfs daemon in
//! the middle of a pgbench run, restart it, and PostgreSQL must recover with amcheck
//! clean and every transaction it acknowledged before the crash present.
//!
//! Needs root and PostgreSQL 15 (`.ci/run` installs it).

#[path = "mount/mod.rs"]
mod mount;
mod pg_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use mount::{Fixture, Mounted};
use pg_support::Postgres;

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
