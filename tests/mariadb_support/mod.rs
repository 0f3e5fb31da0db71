//! A MariaDB server for the tests: a data directory made by mariadb-install-db,
//! `mariadbd` started as the test's child (it does not fork; killed on drop, so
//! that a failing test leaves no server holding files on a mount) and the
//! command-line client. Needs root (the server runs as user mysql) and
//! mariadb-server (`.ci/run` installs it). Also the example schema of
//! examples/mariadb-sanitize.sql.
#![allow(dead_code)] // each scenario uses the part it needs

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `chown mysql:mysql path`.
pub fn chown_mysql(p: &Path) {
    let st = Command::new("chown")
        .arg("mysql:mysql")
        .arg(p)
        .status()
        .expect("run chown");
    assert!(st.success(), "chown mysql {}", p.display());
}

/// A new data directory at `data` (its parent exists), made by mariadb-install-db,
/// whose server puts temporary tables in `run`: two bootstraps sharing `/tmp` (two
/// tests at once) collide on a temporary table's name.
pub fn install_db(data: &Path, run: &Path) {
    fs::create_dir(data).expect("mkdir datadir");
    chown_mysql(data);
    fs::create_dir_all(run).expect("mkdir run dir");
    chown_mysql(run);
    let out = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg("--user=mysql")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", run.display()))
        .arg("--skip-test-db")
        .output()
        .expect("run mariadb-install-db (is mariadb-server installed?)");
    assert!(
        out.status.success(),
        "mariadb-install-db: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `mariadbd` on one data directory, our child, killed on drop.
pub struct Server {
    child: Child,
    sock: PathBuf,
    /// The error log (read it after `stop` to see the shutdown too).
    pub log: PathBuf,
}

impl Server {
    /// Starts the server on `data` with its socket, pid file and error log in
    /// `run` (outside a branch), and waits until it answers.
    pub fn start(data: &Path, run: &Path) -> Server {
        Server::start_with(data, run, &[])
    }

    /// `start` with `extra` server options.
    pub fn start_with(data: &Path, run: &Path, extra: &[&str]) -> Server {
        fs::create_dir_all(run).expect("mkdir run dir");
        chown_mysql(run);
        let sock = run.join("mysqld.sock");
        let log = run.join("error.log");
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg("--user=mysql")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--pid-file={}", run.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--tmpdir={}", run.display()))
            .args(["--skip-networking", "--innodb-buffer-pool-size=64M"])
            .args(extra)
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

    /// The client on this server's socket, as root (unix_socket authentication).
    pub fn client(&self, args: &[&str]) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.sock.display()))
            .args(["--batch", "--skip-column-names"])
            .args(args);
        c
    }

    /// Runs `sql`; its output, trimmed. Panics with the server's log on failure.
    pub fn sql(&self, sql: &str) -> String {
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

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Clean shutdown (SIGTERM): InnoDB writes its pages and exits 0.
    pub fn stop(mut self) {
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

/// The schema examples/mariadb-sanitize.sql expects, in database `app`, filled by
/// `inserts` (sanitize_support's `example_inserts`): users, and orders and tickets referencing users by email with ON
/// UPDATE CASCADE; plus an audit table that a trigger fills with the old email
/// on every update of users (empty here, as the rows below are only inserted
/// and rewritten with their own values), a view and a procedure.
pub fn load_example_schema(s: &Server, inserts: &str) {
    let mut q = String::from(
        "CREATE DATABASE app;
         USE app;
         CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(200) UNIQUE NOT NULL,
                             name TEXT, phone VARCHAR(40), card VARCHAR(40),
                             INDEX (phone), INDEX (card)) ENGINE=InnoDB;
         CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, user_email VARCHAR(200) NOT NULL,
                              amount INT, INDEX (user_email),
                              FOREIGN KEY (user_email) REFERENCES users (email) ON UPDATE CASCADE) ENGINE=InnoDB;
         CREATE TABLE tickets (id INT AUTO_INCREMENT PRIMARY KEY, user_email VARCHAR(200) NOT NULL,
                               body TEXT,
                               FOREIGN KEY (user_email) REFERENCES users (email) ON UPDATE CASCADE) ENGINE=InnoDB;
         CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, old_email VARCHAR(200)) ENGINE=InnoDB;
         CREATE VIEW big_orders AS SELECT user_email, amount FROM orders WHERE amount > 100;
         CREATE PROCEDURE order_count(OUT n INT) SELECT COUNT(*) INTO n FROM orders;
         ",
    );
    q.push_str(inserts);
    // Old row versions in the undo log and the redo log.
    q.push_str("UPDATE users SET phone = CONCAT(phone, 'x') WHERE id % 3 = 0;\n");
    q.push_str("UPDATE users SET phone = LEFT(phone, CHAR_LENGTH(phone) - 1) WHERE id % 3 = 0;\n");
    q.push_str(
        "CREATE TRIGGER users_audit BEFORE UPDATE ON users FOR EACH ROW
           INSERT INTO audit (old_email) VALUES (OLD.email);
         CREATE USER 'app'@'localhost' IDENTIFIED BY 'app-password';
         GRANT SELECT, INSERT, UPDATE ON app.* TO 'app'@'localhost';",
    );
    s.sql(&q);
}

/// Row counts of the joins the sanitized clone must keep.
pub fn join_counts(s: &Server) -> String {
    s.sql(
        "SELECT (SELECT COUNT(*) FROM app.users),
                (SELECT COUNT(*) FROM app.orders o JOIN app.users u ON u.email = o.user_email),
                (SELECT COUNT(*) FROM app.tickets t JOIN app.users u ON u.email = t.user_email),
                (SELECT COUNT(DISTINCT user_email) FROM app.orders)",
    )
}
