//! The `cowfs` command: argument parsing and wiring only.

mod daemon;
mod lockfile;
mod timer;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cowfs::pool::{FsckOptions, Pool, PoolOptions};

const EXIT_CODES: &str = "\
Exit codes:
  0  success (fsck, scrub: the pool is clean)
  1  error: the command could not do its work (message on stderr)
  2  usage error (bad arguments)
  3  fsck: leaked blocks only (space is lost, no data is damaged)
  4  fsck: corruption found; scrub: damaged files found";

#[derive(Parser)]
#[command(
    name = "cowfs",
    version,
    about = "Copy-on-write FUSE filesystem: pools, O(1) branches and snapshots",
    after_help = EXIT_CODES,
    after_long_help = EXIT_CODES,
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new pool (a file, created if missing, or a block device) with one
    /// branch, `main`.
    #[command(after_help = EXIT_CODES)]
    Init {
        /// Pool file or block device.
        pool: PathBuf,
        /// Capacity in bytes (suffixes K, M, G, T accepted). A pool file is sparse and
        /// grows as it is written. Default: the device size, or 1T for a file.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Write zeros over the whole capacity of a pool file now, so that the host
        /// never allocates blocks under a running pool (fsyncs into fresh space
        /// then also write the host's metadata). Takes the capacity on the host.
        #[arg(long)]
        preallocate: bool,
    },
    /// Serve a pool in the foreground: mount branches as asked over the control
    /// socket; on SIGTERM or SIGINT unmount everything, commit, exit 0.
    #[command(after_help = EXIT_CODES)]
    Serve {
        /// Pool file or block device.
        pool: PathBuf,
        /// Control socket [default: $COWFS_SOCKET, else POOL.sock].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Daemon configuration file (TOML: `[control]` limits and mount roots,
        /// sanitize profiles; tokens are not in it but in POOL.tokens).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Mount one branch in the foreground until SIGTERM or SIGINT (or until the
    /// mount point is unmounted), then unmount, commit and exit 0. fsync makes
    /// data durable at once; everything else is committed every 5 s.
    #[command(after_help = EXIT_CODES)]
    Mount {
        /// Pool file or block device.
        pool: PathBuf,
        /// Branch or snapshot to mount (snapshots are always read-only).
        branch: String,
        /// Existing directory to mount on.
        mountpoint: PathBuf,
        /// Mount read-only: writes fail with EROFS.
        #[arg(long)]
        ro: bool,
    },
    /// Check a pool: tree structure, reference counts, filesystem invariants. The
    /// pool is opened read-only and checked as its last commit left it: nothing is
    /// written, nothing freed, no fsync logged after that commit applied.
    #[command(after_help = EXIT_CODES)]
    Fsck {
        /// Pool file or block device (must not be in use by a daemon).
        pool: PathBuf,
        /// Check metadata only; skip reading every data block to verify its checksum.
        #[arg(long)]
        quick: bool,
    },
    /// Read every live data block of every branch, check it against its checksum and
    /// list damaged files by path (exit 4 if any). Read-only, as fsck.
    #[command(after_help = EXIT_CODES)]
    Scrub {
        /// Pool file or block device (must not be in use by a daemon).
        pool: PathBuf,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix '{c}' (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size in bytes"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Info by default. Two of fuser's messages are noise: its complaint when the kernel
/// already tore a mount down at unmount, and "Failed to send FUSE reply: ENOENT",
/// which is the kernel refusing the reply to a request it already answered because
/// the caller was interrupted (fuser 0.18 cannot act on FUSE_INTERRUPT; PostgreSQL's
/// signals made about 1,000 of these in a 20-minute soak).
const LOG_DEFAULT: &str = "info,fuser::session=error,fuser::reply=off";

type Fallible = Result<ExitCode, Box<dyn std::error::Error>>;

fn init(pool: &std::path::Path, size: Option<u64>, preallocate: bool) -> Fallible {
    use std::os::unix::fs::FileTypeExt;
    // Refused before anything is written: a pool made and then left without its
    // admin token would need a second init, which it refuses.
    if preallocate && std::fs::metadata(pool).is_ok_and(|m| m.file_type().is_block_device()) {
        return Err(format!(
            "{}: --preallocate is for pool files; a block device has all its blocks",
            pool.display()
        )
        .into());
    }
    refuse_new_file_in_dev(pool)?;
    let _lock = lockfile::lock(pool)?;
    Pool::refuse_to_create(pool)?;
    refuse_earlier_side_files(pool)?;
    let opts = PoolOptions {
        capacity_bytes: size,
        ..Default::default()
    };
    let p = Pool::create(pool, &opts)?;
    p.commit()?;
    let capacity = p.statfs().blocks * cowfs::store::BLOCK_SIZE as u64;
    drop(p);
    if preallocate {
        let n = cowfs::store::device::preallocate_file(pool, capacity)
            .map_err(|e| format!("preallocating {}: {e}", pool.display()))?;
        println!("preallocated {} MiB of {}", n >> 20, pool.display());
    }
    // Under the name the daemon will use: through a symlink to a pool file, the
    // tokens go beside the file itself, where `cowfs serve` looks.
    let secret = cowfs::control::tokens::init_admin_token(&daemon::pool_name(pool))?;
    println!("created pool {} with branch main", pool.display());
    println!("admin token secret in {} (mode 0600)", secret.display());
    Ok(ExitCode::SUCCESS)
}

/// A path in `/dev` that names nothing is a mistyped device (`/dev/sdx`), not a
/// new pool file: `/dev` is a memory filesystem, so the pool and its tokens would
/// be gone at the next boot. Checked before the lock file, which would land there.
fn refuse_new_file_in_dev(pool: &std::path::Path) -> Result<(), String> {
    if pool.exists() {
        return Ok(());
    }
    let dir = std::path::absolute(pool)
        .ok()
        .and_then(|p| p.parent()?.canonicalize().ok());
    match dir {
        Some(d) if d.starts_with("/dev") => Err(format!(
            "{}: no such device (a pool file is not made in /dev, which is emptied at \
             every boot; see `lsblk` or /dev/disk/by-id for the device's name)",
            pool.display()
        )),
        _ => Ok(()),
    }
}

/// The side files of an earlier pool at this path (its pool file deleted, its
/// device zeroed) would apply to the new one: its tokens would be honoured, its
/// quotas and sanitize records would name branches the new pool may get. Init
/// refuses them before anything is written; the lock file and the socket are
/// harmless (the socket is replaced at start).
fn refuse_earlier_side_files(pool: &std::path::Path) -> Result<(), String> {
    let found: Vec<String> = [
        ".token",
        ".tokens",
        ".quotas",
        ".sanitize-key",
        ".sanitize-state",
    ]
    .iter()
    .flat_map(|suffix| {
        names_of(pool)
            .into_iter()
            .map(move |name| cowfs::control::side_file(&name, suffix))
    })
    .filter(|p| p.symlink_metadata().is_ok())
    .map(|p| p.display().to_string())
    .collect::<std::collections::BTreeSet<_>>()
    .into_iter()
    .collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}: files of an earlier pool are in the way: {}; they would apply to the new \
         pool (its tokens would be accepted): move or remove them first",
        pool.display(),
        found.join(", ")
    ))
}

/// The names an earlier pool at `pool` may have kept side files under: the name
/// given, and for a symlink, the file it points to (existing or not: a pool file
/// deleted since leaves its side files beside its own name, where init writes them).
fn names_of(pool: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut names = vec![pool.to_path_buf(), daemon::pool_name(pool)];
    if let Ok(target) = std::fs::read_link(pool) {
        names.push(cowfs::control::parent_dir(pool).join(target));
    }
    names
}

fn fsck(pool: &std::path::Path, verify_data: bool) -> Fallible {
    let _lock = lockfile::lock_to_read(pool)?;
    let p = Pool::open_read_only(pool, &PoolOptions::default())?;
    let report = p.fsck(&FsckOptions { verify_data })?;
    println!("{report}");
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else if report.has_corruption() {
        ExitCode::from(4)
    } else {
        ExitCode::from(3)
    })
}

fn scrub(pool: &std::path::Path) -> Fallible {
    let _lock = lockfile::lock_to_read(pool)?;
    let p = Pool::open_read_only(pool, &PoolOptions::default())?;
    let report = p.scrub()?;
    for d in &report.damaged {
        println!("DAMAGED: branch '{}': {}: {}", d.branch, d.path, d.detail);
    }
    println!(
        "{} files, {} data blocks verified, {} damaged",
        report.files,
        report.data_blocks,
        report.damaged.len()
    );
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    })
}

/// Allocations of this size or more are mmapped, and unmapped when freed.
const MMAP_THRESHOLD: usize = 4 << 20;
/// See `tune_malloc`.
const TRIM_THRESHOLD: usize = 16 << 20;

/// Fix glibc's mmap threshold. By default it is dynamic: freeing an mmapped block
/// raises it to that block's size (up to 32 MiB). fuser gives every worker thread a
/// 16 MiB read buffer (`vec![0; 16 MiB + 4 KiB]`), 4 threads per mount; once one
/// such buffer was freed, the next ones came from the malloc arenas, which calloc
/// clears with memset, so each mount cost about 11 MiB resident before serving a
/// request (10 mounts: 17 -> 130 MiB), and arena memory freed at unmount was mostly
/// kept (52 MiB after unmounting them). A fixed threshold keeps those buffers
/// mmapped: untouched pages stay unbacked and unmount returns them. Smaller blocks
/// (1 MiB read and write buffers) stay in the arenas, as before.
///
/// And cap the number of malloc arenas: glibc gives busy threads arenas of their
/// own, up to 8 per core, and the daemon runs 4 FUSE workers per mount plus the
/// control server and hooks. The soak (benches/soak.sh) measured about 15 arenas of
/// 16-32 MiB each and 290-430 MiB resident by default; with 2 arenas the same run
/// peaked at 116-130 MiB. The daemon's threads mostly wait for the kernel or the
/// pool lock, so they gain little from private arenas.
///
/// And keep up to `TRIM_THRESHOLD` of free memory at the top of an arena: with a
/// fixed mmap threshold glibc trims anything over 128 KiB, so every 1 MiB request
/// buffer was returned to the kernel when freed and page-faulted back (zeroed) on
/// the next request: perf put page faults and page clearing at 10% of a sequential
/// write.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc parameters; no pointers are involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}

/// See `tune_malloc`.
const MALLOC_ARENAS: libc::c_int = 2;

fn main() -> ExitCode {
    tune_malloc();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(LOG_DEFAULT)).init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Init {
            pool,
            size,
            preallocate,
        } => init(&pool, size, preallocate),
        Cmd::Serve {
            pool,
            socket,
            config,
        } => daemon::serve(&pool, socket, config.as_deref()),
        Cmd::Mount {
            pool,
            branch,
            mountpoint,
            ro,
        } => daemon::mount(&pool, &branch, &mountpoint, ro),
        Cmd::Fsck { pool, quick } => fsck(&pool, !quick),
        Cmd::Scrub { pool } => scrub(&pool),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cowfs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
