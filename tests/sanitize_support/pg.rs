//! A PostgreSQL 15 cluster for the sanitize tests: initdb, a server started as our
//! own child (killed on drop), psql, the example schema with generated people, and
//! a byte search over a data directory. Needs root (to run as user postgres) and
//! PostgreSQL 15 in /usr/lib/postgresql/15/bin (`.ci/run` installs it).
#![allow(dead_code)] // each scenario uses the part it needs

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cowfs::control::sanitize::config::{DEFAULT_MEMORY_MAX_MIB, DEFAULT_TMPFS_SIZE_MIB};
use cowfs::control::sanitize::host_path::HostPath;
use cowfs::control::sanitize::pseudo::hook_key_hex;
use cowfs::control::sanitize::{run_hook, HookReport, SanitizeError};

use super::{any_of, example_inserts, Person};

pub const PGBIN: &str = "/usr/lib/postgresql/15/bin";

pub fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "no user postgres: install PostgreSQL 15 (apt-get install postgresql)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
}

/// A directory owned by postgres with `mode`.
pub fn pg_dir(path: &Path, mode: u32) {
    let (uid, gid) = postgres_ids();
    fs::create_dir_all(path).expect("mkdir");
    chown(path, uid, gid);
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

pub struct Cluster {
    pub data: PathBuf,
    pub sock: PathBuf,
    uid: u32,
    gid: u32,
}

pub struct Running {
    child: Child,
}

impl Running {
    /// Fast shutdown: checkpoint and exit 0.
    pub fn stop(mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
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

impl Cluster {
    /// A cluster at `data` (created by initdb when `init`), with its socket in
    /// `sock` (created, owned by postgres).
    pub fn new(data: &Path, sock: &Path, init: bool) -> Cluster {
        assert!(
            Path::new(PGBIN).join("initdb").exists(),
            "PostgreSQL 15 is needed at {PGBIN} (apt-get install postgresql)"
        );
        let (uid, gid) = postgres_ids();
        pg_dir(sock, 0o700);
        let c = Cluster {
            data: data.to_path_buf(),
            sock: sock.to_path_buf(),
            uid,
            gid,
        };
        if init {
            pg_dir(data, 0o700);
            let out = c
                .cmd("initdb")
                .args(["-U", "postgres", "--auth=trust", "-D"])
                .arg(data)
                .output()
                .expect("initdb");
            assert!(
                out.status.success(),
                "initdb: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        c
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(Path::new(PGBIN).join(prog));
        c.uid(self.uid)
            .gid(self.gid)
            .env("PGHOST", &self.sock)
            .env("PGPORT", "5432")
            .env("PGUSER", "postgres")
            .current_dir("/")
            .stdin(Stdio::null());
        c
    }

    pub fn start(&self) -> Running {
        let log = self.sock.join("postgres.log");
        let logf = fs::File::create(&log).expect("postgres log");
        let child = self
            .cmd("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-p", "5432", "-c", "listen_addresses=", "-k"])
            .arg(&self.sock)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start postgres");
        let mut r = Running { child };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self
                .cmd("pg_isready")
                .arg("-q")
                .status()
                .is_ok_and(|s| s.success())
            {
                return r;
            }
            if let Ok(Some(st)) = r.child.try_wait() {
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

    /// Run SQL in `db`; the unaligned, tuples-only output.
    pub fn sql(&self, db: &str, q: &str) -> String {
        let out = self
            .cmd("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                q,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {q}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Database `app` with users (email, name, phone, card), and orders and tickets
/// referencing users by email; some rows updated (dead tuples) and analyzed
/// (statistics hold values).
pub fn load_example_schema(c: &Cluster, people: &[Person]) {
    c.sql("postgres", "CREATE DATABASE app");
    let mut q = String::from(
        "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE NOT NULL, name text, phone text, card text);
         CREATE INDEX ON users (phone);
         CREATE INDEX ON users (card);
         CREATE TABLE orders (id serial PRIMARY KEY, user_email text NOT NULL REFERENCES users (email), amount int);
         CREATE INDEX ON orders (user_email);
         CREATE TABLE tickets (id serial PRIMARY KEY, user_email text NOT NULL REFERENCES users (email), body text);
         ",
    );
    q.push_str(&example_inserts(people));
    c.sql("app", &q);
    c.sql("app", "UPDATE users SET phone = phone WHERE id % 3 = 0");
    c.sql("app", "ANALYZE");
    c.sql("app", "CHECKPOINT");
}

/// Row counts of the joins the sanitized clone must keep.
pub fn join_counts(c: &Cluster) -> String {
    c.sql(
        "app",
        "SELECT (SELECT count(*) FROM users), \
                (SELECT count(*) FROM orders o JOIN users u ON u.email = o.user_email), \
                (SELECT count(*) FROM tickets t JOIN users u ON u.email = t.user_email), \
                (SELECT count(DISTINCT user_email) FROM orders)",
    )
}

/// Every original value found in any file under `dir`: (value, file).
pub fn byte_search(dir: &Path, values: &[String]) -> Vec<(String, PathBuf)> {
    let re = any_of(values);
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("dir entry");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let data = fs::read(e.path()).expect("read file");
                for m in re.find_iter(&data) {
                    found.push((String::from_utf8_lossy(m.as_bytes()).into_owned(), e.path()));
                }
            }
        }
    }
    found
}

/// `clone` (mode 0755) holding a copy of the stopped cluster `data` at pg/, as a
/// cowfs branch would.
pub fn copy_clone(data: &Path, clone: &Path) {
    std::fs::create_dir(clone).unwrap();
    std::fs::set_permissions(clone, std::fs::Permissions::from_mode(0o755)).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(data)
        .arg(clone.join("pg"))
        .status()
        .unwrap();
    assert!(st.success());
}

pub fn append(file: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Run the example PostgreSQL hook on `clone` with SQL that changes nothing
/// (written to `base`), in database postgres.
pub fn run_noop_hook(base: &Path, clone: &Path) -> Result<HookReport, SanitizeError> {
    run_sql_hook(base, clone, "SELECT 1;\n")
}

/// Run the example PostgreSQL hook on `clone` with the site SQL `site_sql`
/// (written to `base/sql`), in database postgres.
pub fn run_sql_hook(
    base: &Path,
    clone: &Path,
    site_sql: &str,
) -> Result<HookReport, SanitizeError> {
    run_sql_hook_in(base, clone, "postgres", site_sql)
}

/// Run the example PostgreSQL hook on `clone` with the site SQL `site_sql`
/// (written to `base/sql`), in database `db`.
pub fn run_sql_hook_in(
    base: &Path,
    clone: &Path,
    db: &str,
    site_sql: &str,
) -> Result<HookReport, SanitizeError> {
    // In a directory of its own, which the hook's sandbox shows it (read-only).
    let sql_dir = base.join("sql");
    std::fs::create_dir_all(&sql_dir).unwrap();
    let sql = sql_dir.join("site.sql");
    std::fs::write(&sql, site_sql).unwrap();
    let hook = cowfs::control::sanitize::config::Hook {
        name: "postgresql".into(),
        argv: vec![concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/pg-sanitize-hook.sh"
        )
        .into()],
        timeout: std::time::Duration::from_secs(300),
        env: [
            (
                "PG_SANITIZE_SQL".to_string(),
                sql.to_string_lossy().into_owned(),
            ),
            ("PG_SANITIZE_DB".to_string(), db.to_string()),
        ]
        .into(),
        when_exists: None,
        network: false,
        read_only_paths: vec![HostPath::new(&sql_dir).expect("the SQL directory")],
        read_write_paths: Vec::new(),
        tmpfs_size_mib: DEFAULT_TMPFS_SIZE_MIB,
        memory_max_mib: DEFAULT_MEMORY_MAX_MIB,
        memory_limit_required: false,
    };
    run_hook(
        &hook,
        clone,
        "clone",
        &hook_key_hex(b"0123456789abcdef").unwrap(),
    )
}
