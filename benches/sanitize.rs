//! Sanitize throughput: a 1 GiB tree of mixed text files (CSV, JSON lines, logs; a
//! realistic density of emails, phone numbers and card numbers) in a pool file on disk,
//! cloned and sanitized with the `pii` profile of examples/cowfs.toml. Prints MiB/s.
//!
//!   cargo bench --bench sanitize            # 1 GiB
//!   SANITIZE_MIB=128 cargo bench --bench sanitize

use std::path::Path;
use std::time::Instant;

use cowfs::control::sanitize::{self, SanitizeConfig};
use cowfs::fs::Owner;
use cowfs::pool::{Pool, PoolOptions};

fn line(kind: usize, i: u64) -> String {
    let email = format!("user{}.{}@mail{}.example.org", i % 50_000, i % 7, i % 13);
    let phone = format!("+1 415 555 {:04}", i % 10_000);
    let card = [
        "4111 1111 1111 1111",
        "5500-0000-0000-0004",
        "340000000000009",
    ][(i % 3) as usize];
    match kind {
        0 => format!("{i},{email},Jane Doe {i},{phone},ordered item {}\n", i % 977),
        1 => format!(
            "{{\"id\":{i},\"email\":\"{email}\",\"card\":\"{card}\",\"note\":\"customer since {}\"}}\n",
            2000 + i % 25
        ),
        _ => format!(
            "2026-11-28T10:{:02}:{:02}Z INFO request id={i} path=/api/v1/orders/{} status=200 latency_ms={}\n",
            (i / 60) % 60,
            i % 60,
            i % 5000,
            i % 300
        ),
    }
}

fn main() {
    let mib: u64 = std::env::var("SANITIZE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = Pool::create(&dir.path().join("pool"), &PoolOptions::default()).expect("pool");
    let main = pool.branch_id("main").expect("main");
    let own = Owner::default();
    let cfg_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cowfs.toml");
    let cfg = SanitizeConfig::load(&cfg_path).expect("examples/cowfs.toml");
    let profile = cfg.profile("pii").expect("profile pii");

    // 64 files of 16 MiB each (for 1 GiB), a third of each kind.
    let file_bytes: u64 = 16 << 20;
    let files = (mib << 20).div_ceil(file_bytes);
    let d = pool.mkdir(main, 1, b"data", 0o755, own).expect("mkdir");
    let mut total = 0u64;
    let mut n = 0u64;
    for f in 0..files {
        let kind = (f % 3) as usize;
        let ext = ["csv", "jsonl", "log"][kind];
        let a = pool
            .mknod(
                main,
                d.ino,
                format!("part-{f:03}.{ext}").as_bytes(),
                libc::S_IFREG | 0o644,
                0,
                own,
            )
            .expect("create");
        let mut off = 0u64;
        let mut buf = String::with_capacity(1 << 20);
        while off < file_bytes {
            buf.clear();
            while buf.len() < (1 << 20) - 200 {
                buf.push_str(&line(kind, n));
                n += 1;
            }
            pool.write_file(main, a.ino, off, buf.as_bytes())
                .expect("write");
            off += buf.len() as u64;
        }
        total += off;
    }
    pool.commit().expect("commit");

    pool.branch_create("clone", "main").expect("clone");
    let key = b"benchmark-key-0123456789abcdef-0123456789";
    let t = Instant::now();
    let report = sanitize::run(&pool, "clone", profile, key, &mut |_| {}).expect("sanitize");
    pool.commit().expect("commit");
    let secs = t.elapsed().as_secs_f64();
    let replaced: u64 = report.values_replaced.values().sum();
    println!(
        "sanitize {:.0} MiB in {} files: {:.2} s, {:.1} MiB/s; {} files changed, {} values replaced",
        total as f64 / (1 << 20) as f64,
        files,
        secs,
        total as f64 / (1 << 20) as f64 / secs,
        report.files_changed,
        replaced
    );
    assert!(replaced > 0, "the generated data holds personal data");
}
