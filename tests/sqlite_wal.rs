//! SQLite on a branch: a WAL-mode database written by several sqlite3 processes at
//! once (with a reader alongside), then `PRAGMA integrity_check` and exact row
//! counts; again after a kill -9 of the daemon (every committed transaction was
//! fsynced) and after a clean remount; cowfs fsck clean.

mod mount;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use mount::*;

const WRITERS: usize = 4;
const TXNS: usize = 150;

fn sqlite(db: &Path, sql: &str) -> String {
    let mut child = Command::new("sqlite3")
        .arg("-batch")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sqlite3 (install the sqlite3 package)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(sql.as_bytes())
        .expect("feed sqlite3");
    let out = child.wait_with_output().expect("sqlite3 output");
    assert!(
        out.status.success(),
        "sqlite3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn writer_script(w: usize) -> String {
    let mut s = String::from(".timeout 60000\nPRAGMA synchronous=FULL;\n");
    for i in 0..TXNS {
        s.push_str(&format!(
            "BEGIN IMMEDIATE;\n\
             INSERT INTO t(writer, seq, payload) VALUES ({w}, {i}, hex(randomblob({})));\n\
             UPDATE counters SET n = n + 1 WHERE writer = {w};\n\
             COMMIT;\n",
            100 + (i * 37) % 3000
        ));
    }
    s
}

fn check(db: &Path, when: &str) {
    assert_eq!(
        sqlite(db, "PRAGMA integrity_check;"),
        "ok",
        "{when}: integrity_check"
    );
    let per_writer = sqlite(
        db,
        "SELECT writer, count(*), count(DISTINCT seq) FROM t GROUP BY writer ORDER BY writer;",
    );
    let want: Vec<String> = (0..WRITERS).map(|w| format!("{w}|{TXNS}|{TXNS}")).collect();
    assert_eq!(per_writer, want.join("\n"), "{when}: rows per writer");
    let counters = sqlite(db, "SELECT group_concat(n) FROM counters ORDER BY writer;");
    assert_eq!(
        counters,
        vec![TXNS.to_string(); WRITERS].join(","),
        "{when}"
    );
}

#[test]
fn wal_database_under_concurrent_writers() {
    let fx = Fixture::new();
    let m = fx.mount();
    let db = m.mnt.join("app").join("data.db");
    std::fs::create_dir(m.mnt.join("app")).unwrap();
    let mode = sqlite(
        &db,
        "PRAGMA journal_mode=WAL;\n\
         CREATE TABLE t(id INTEGER PRIMARY KEY, writer INT, seq INT, payload TEXT);\n\
         CREATE INDEX t_writer ON t(writer, seq);\n\
         CREATE TABLE counters(writer INT PRIMARY KEY, n INT);\n\
         INSERT INTO counters VALUES (0,0),(1,0),(2,0),(3,0);",
    );
    assert_eq!(mode, "wal");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || sqlite(&db, &writer_script(w)))
        })
        .collect();
    // A reader runs alongside and always sees a consistent database.
    for _ in 0..20 {
        let r = sqlite(
            &db,
            ".timeout 60000\nSELECT (SELECT count(*) FROM t) = (SELECT sum(n) FROM counters);",
        );
        assert_eq!(r, "1", "reader saw rows and counters disagree");
    }
    for w in writers {
        w.join().expect("writer thread");
    }
    assert_eq!(sqlite(&db, "PRAGMA journal_mode;"), "wal");
    check(&db, "after the writers");

    // Every COMMIT was fsynced: a crash loses none of them.
    m.crash();
    fx.assert_fsck_clean();
    let m = fx.mount();
    let db = m.mnt.join("app/data.db");
    check(&db, "after kill -9 and remount");
    assert_eq!(
        sqlite(&db, "PRAGMA wal_checkpoint(TRUNCATE);"),
        "0|0|0",
        "checkpoint"
    );
    m.stop();
    let m = fx.mount();
    check(&m.mnt.join("app/data.db"), "after a clean remount");
    m.stop();
    fx.assert_fsck_clean();
}
