//! Issue 5, check 2 through the daemon: `cowfs serve --config examples/cowfs.toml`,
//! a PostgreSQL cluster and a MariaDB server running on a mount of the protected
//! branch `prod` (which requires profile `pii`), and an agent token that creates a
//! branch of it without naming a profile. The daemon flushes the mount, clones,
//! runs the example PostgreSQL and MariaDB hooks on a private mount of the clone
//! and publishes it. In the clone (mounted by the agent, servers started) the
//! joins return the parent's row counts and a byte search of every file of both
//! data directories finds none of the original values; the parent's servers
//! still run and are unchanged; `cowfs fsck` is clean after the daemon stops.
//!
//! Needs root (FUSE mounts, the servers as users postgres and mysql), PostgreSQL
//! 15 in /usr/lib/postgresql/15/bin and mariadb-server (`.ci/run` installs them).

mod control_support;
#[path = "mariadb_support/mod.rs"]
mod mariadb_support;
#[path = "sanitize_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control_support::Served;
use cowfs_ctl::proto::MountSpec;
use cowfs_ctl::Client;
use support::pg::{byte_search, join_counts, load_example_schema, pg_dir, Cluster};
use support::{example_inserts, originals, people, valid_email};

const BIN: &str = env!("CARGO_BIN_EXE_cowfs");

fn connect(socket: &Path, secret: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::connect(socket, secret) {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "daemon never answered: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8").to_string()
}

#[test]
fn agent_clone_of_a_running_cluster_is_sanitized_by_the_daemon() {
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-daemon-pg-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let base = tmp.path().canonicalize().expect("canonical");
    let pool = base.join("pool");
    let socket = base.join("pool.sock");
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/cowfs.toml")
        .canonicalize()
        .expect("examples/cowfs.toml");
    let out = Command::new(BIN)
        .args(["init", "--size", "4G"])
        .arg(&pool)
        .output()
        .expect("cowfs init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin_secret = std::fs::read_to_string(cowfs::control::tokens::secret_path(&pool))
        .expect("POOL.token")
        .trim()
        .to_string();
    let log = std::fs::File::create(base.join("daemon.log")).expect("log");
    let mut served = Served::new(
        Command::new(BIN)
            .arg("serve")
            .arg(&pool)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cowfs serve"),
        &base,
    );
    let mut admin = connect(&socket, &admin_secret);

    // prod, mounted read-write, with a running cluster holding personal data.
    let m_prod = base.join("prod");
    std::fs::create_dir(&m_prod).expect("mkdir");
    admin
        .branch_create(
            "prod",
            "main",
            Some(MountSpec {
                dir: s(&m_prod),
                read_only: false,
            }),
        )
        .expect("prod");
    let ppl = people(150, 41);
    let originals = originals(&ppl);
    pg_dir(&m_prod.join("pg"), 0o700);
    let parent = Cluster::new(&m_prod.join("pg"), &base.join("sock-parent"), true);
    let parent_server = parent.start();
    load_example_schema(&parent, &ppl);
    let counts = join_counts(&parent);
    let rows_sql = "SELECT string_agg(email || phone || card || name, ',' ORDER BY id) FROM users";
    let parent_rows = parent.sql("app", rows_sql);
    // And MariaDB, with a binary log, in mysql/ (a second service of the branch).
    let m_data = m_prod.join("mysql");
    mariadb_support::install_db(&m_data, &base.join("run-mariadb-install"));
    let m_parent = mariadb_support::Server::start_with(
        &m_data,
        &base.join("run-mariadb-parent"),
        &["--log-bin=binlog", "--server-id=1"],
    );
    mariadb_support::load_example_schema(&m_parent, &example_inserts(&ppl));
    let m_counts = mariadb_support::join_counts(&m_parent);
    let m_rows_sql = "SELECT GROUP_CONCAT(email, phone, card, name ORDER BY id) FROM app.users";
    let m_parent_rows = m_parent.sql(m_rows_sql);

    admin.protect_with("prod", Some("pii")).expect("protect");
    let agent = admin
        .token_create("agent", vec!["branch:prod".parse().expect("grant")])
        .expect("token")
        .secret;
    let mut a = connect(&socket, &agent);

    // The agent names no profile: the daemon applies `pii`, hooks included.
    let info = a
        .branch_create("agent-1", "prod", None)
        .unwrap_or_else(|e| panic!("agent clone: {e}"));
    let summary = info.sanitized.expect("sanitized");
    assert_eq!(summary.profile, "pii");
    let hooks: Vec<&str> = summary.hooks.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(hooks, ["postgresql", "mariadb"], "{summary:?}");

    // The clone, mounted by the agent (under the daemon's default mount root,
    // POOL.mnt): no original value in any file of pg/ or mysql/.
    let m_clone = base.join("pool.mnt/clone");
    std::fs::create_dir(&m_clone).expect("mkdir");
    a.mount("agent-1", &s(&m_clone), false)
        .expect("agent mounts its clone");
    let mut left = byte_search(&m_clone.join("pg"), &originals);
    left.extend(byte_search(&m_clone.join("mysql"), &originals));
    assert!(
        left.is_empty(),
        "original values in the clone: {:?}",
        &left[..left.len().min(20)]
    );
    {
        let clone = Cluster::new(&m_clone.join("pg"), &base.join("sock-clone"), false);
        let server = clone.start();
        assert_eq!(join_counts(&clone), counts, "joins keep their row counts");
        for e in clone
            .sql("app", "SELECT email FROM users ORDER BY id")
            .lines()
        {
            assert!(valid_email(e), "{e}");
        }
        server.stop();
        let server =
            mariadb_support::Server::start(&m_clone.join("mysql"), &base.join("run-mariadb-clone"));
        assert_eq!(mariadb_support::join_counts(&server), m_counts);
        for e in server
            .sql("SELECT email FROM app.users ORDER BY id")
            .lines()
        {
            assert!(valid_email(e), "{e}");
        }
        server.stop();
    }
    a.unmount(&s(&m_clone)).expect("unmount clone");

    // The parent kept running, unchanged.
    assert_eq!(parent.sql("app", rows_sql), parent_rows);
    assert_eq!(join_counts(&parent), counts);
    parent_server.stop();
    assert_eq!(m_parent.sql(m_rows_sql), m_parent_rows);
    assert_eq!(mariadb_support::join_counts(&m_parent), m_counts);
    m_parent.stop();
    admin.unmount(&s(&m_prod)).expect("unmount prod");
    drop((a, admin));
    assert_eq!(served.stop(), Some(0));
    let out = Command::new(BIN)
        .arg("fsck")
        .arg(&pool)
        .output()
        .expect("fsck");
    assert!(
        out.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
