//! kill -9 of the daemon in the middle of a write load: writers append records and
//! fdatasync each one, and create small files made durable with fsync of the file
//! and its directory. After each crash fsck must be clean, and every record and
//! file whose fsync was acknowledged must be there, intact, also after later
//! crashes.

mod mount;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mount::*;

const WRITERS: usize = 4;
const RECORD: usize = 4096;

fn record(w: usize, round: usize, i: usize) -> Vec<u8> {
    (0..RECORD)
        .map(|j| ((w * 31 + round * 17 + i * 7 + j) % 251) as u8)
        .collect()
}

/// What a writer got acknowledged before the crash.
#[derive(Default)]
struct Acked {
    records: usize,
    files: Vec<(PathBuf, Vec<u8>)>,
}

fn writer(root: PathBuf, w: usize, round: usize, stop: Arc<AtomicBool>) -> Acked {
    let mut acked = Acked::default();
    let dir = root.join(format!("r{round}w{w}"));
    let step = || -> std::io::Result<()> {
        fs::create_dir(&dir)?;
        File::open(&root)?.sync_all()
    };
    if step().is_err() {
        return acked;
    }
    let Ok(mut log) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
    else {
        return acked;
    };
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        if log.write_all(&record(w, round, i)).is_err() || log.sync_data().is_err() {
            break;
        }
        i += 1;
        acked.records = i;
        if i % 8 == 0 {
            let p = dir.join(format!("f{i}"));
            let body = format!("file {i} of writer {w} round {round}").into_bytes();
            let made = File::create(&p)
                .and_then(|mut f| {
                    f.write_all(&body)?;
                    f.sync_all()
                })
                .and_then(|()| File::open(&dir))
                .and_then(|d| fsync(d.as_raw_fd()));
            if made.is_err() {
                break;
            }
            acked
                .files
                .push((p.strip_prefix(&root).expect("under root").into(), body));
        }
    }
    acked
}

fn verify(root: &Path, round: usize, acked: &[Acked]) {
    for (w, a) in acked.iter().enumerate() {
        let log = root.join(format!("r{round}w{w}/log"));
        let data = fs::read(&log).unwrap_or_default();
        assert!(
            data.len() >= a.records * RECORD,
            "round {round} writer {w}: {} records acknowledged, {} bytes on disk",
            a.records,
            data.len()
        );
        for i in 0..a.records {
            assert!(
                data[i * RECORD..(i + 1) * RECORD] == record(w, round, i)[..],
                "round {round} writer {w}: acknowledged record {i} is damaged"
            );
        }
        for (p, body) in &a.files {
            assert_eq!(
                fs::read(root.join(p)).ok().as_ref(),
                Some(body),
                "round {round} writer {w}: acknowledged file {}",
                p.display()
            );
        }
    }
}

#[test]
fn acknowledged_fsyncs_survive_kill_9_mid_load() {
    let fx = Fixture::new();
    let mut history: Vec<Vec<Acked>> = Vec::new();
    for (round, delay_ms) in [350u64, 800, 1300].into_iter().enumerate() {
        let m = fx.mount();
        for (r, acked) in history.iter().enumerate() {
            verify(&m.mnt, r, acked);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (root, stop) = (m.mnt.clone(), stop.clone());
                std::thread::spawn(move || writer(root, w, round, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let mnt = m.mnt.clone();
        m.crash();
        stop.store(true, Ordering::Relaxed);
        let acked: Vec<Acked> = threads
            .into_iter()
            .map(|t| t.join().expect("writer panicked"))
            .collect();
        let total: usize = acked.iter().map(|a| a.records).sum();
        assert!(
            total > 0,
            "round {round}: no fsync was acknowledged before the crash"
        );
        assert!(!is_mounted(&mnt));
        let (code, text) = fx.fsck();
        assert_eq!(code, 0, "round {round}: fsck after kill -9:\n{text}");
        history.push(acked);
    }
    let m = fx.mount();
    for (r, acked) in history.iter().enumerate() {
        verify(&m.mnt, r, acked);
    }
    m.stop();
    fx.assert_fsck_clean();
}
