//! How requests reach the daemon. With FUSE over io_uring (the fuse module's
//! `enable_uring` on, as `.ci/run` and `install.sh` set it), a request must be
//! served by the ring threads of the CPU its caller runs on, and not by the
//! /dev/fuse readers; without it, there must be no ring threads and the log must
//! say why. Each mode is checked when it is the one in effect.

mod mount;

use std::collections::BTreeMap;
use std::fs;

use mount::*;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// CPU time (ticks) of the daemon's threads, summed by thread name, and the CPU
/// each ring thread last ran on.
fn ticks_by_thread(pid: u32) -> (BTreeMap<String, u64>, Vec<(String, usize)>) {
    let mut out = BTreeMap::new();
    let mut ran_on = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("daemon tasks") {
        let Ok(stat) = fs::read_to_string(task.expect("task").path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // "tid (comm) state ..." : comm may hold spaces, the fields after it do not
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after comm
        let t: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        if name.starts_with("fuser-ring-") {
            // field 39: the CPU the thread last ran on
            ran_on.push((name.clone(), fields[36].parse().unwrap()));
        }
        *out.entry(name).or_insert(0) += t;
    }
    (out, ran_on)
}

fn pin_this_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin the test thread to CPU {cpu}"
        );
    }
}

#[test]
fn requests_are_served_on_the_callers_cpu() {
    let offered = fs::read_to_string(ENABLE_URING).is_ok_and(|v| v.trim() == "Y");
    let fx = Fixture::new();
    let m = fx.mount();
    let (before, _) = ticks_by_thread(m.pid());
    let ring_threads: Vec<&String> = before
        .keys()
        .filter(|n| n.starts_with("fuser-ring-"))
        .collect();
    if !offered {
        eprintln!("{ENABLE_URING} is not Y: checking the /dev/fuse-only mode");
        assert!(ring_threads.is_empty(), "ring threads: {ring_threads:?}");
        assert!(
            m.log_text().contains("FUSE over io_uring not offered"),
            "the log says why there is no ring:\n{}",
            m.log_text()
        );
        m.stop();
        return;
    }
    assert!(
        m.log_text().contains("FUSE over io_uring:"),
        "{}",
        m.log_text()
    );
    // The last CPU the test may run on: its queue is `cpu`, its threads
    // fuser-ring-<cpu>.<k>.
    let cpus = std::thread::available_parallelism().unwrap().get();
    let cpu = (0..1024)
        .rev()
        .find(|&c| {
            // SAFETY: as in pin_this_thread; reads this thread's own mask.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) == 0
                    && libc::CPU_ISSET(c, &set)
            }
        })
        .expect("a CPU");
    let mine = format!("fuser-ring-{cpu}.");
    assert!(
        ring_threads.iter().any(|n| n.starts_with(&mine)),
        "no ring thread for CPU {cpu}: {ring_threads:?}"
    );
    // 50,000 lookups of names that do not exist (each one request), from a
    // thread pinned to `cpu`.
    let dir = m.mnt.clone();
    std::thread::spawn(move || {
        pin_this_thread(cpu);
        for i in 0..50_000 {
            assert!(fs::metadata(dir.join(format!("missing-{i}"))).is_err());
        }
    })
    .join()
    .expect("lookup thread");
    let (after, ran_on) = ticks_by_thread(m.pid());
    // Each ring thread is pinned to its queue's CPU: fuser-ring-<cpu>.<k>.
    for (name, on) in &ran_on {
        let queue: usize = name["fuser-ring-".len()..]
            .split('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(*on, queue, "{name} ran on CPU {on}");
    }
    let spent = |keep: &dyn Fn(&str) -> bool| -> u64 {
        after
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, t)| t - before.get(n).copied().unwrap_or(0))
            .sum()
    };
    let on_my_queue = spent(&|n| n.starts_with(&mine));
    let elsewhere = spent(&|n| n.starts_with("fuser-") && !n.starts_with(&mine));
    eprintln!("{cpus} CPUs; ticks: queue {cpu} {on_my_queue}, other FUSE threads {elsewhere}");
    assert!(
        on_my_queue >= 5,
        "the ring threads of CPU {cpu} served the lookups ({on_my_queue} ticks)"
    );
    assert!(
        on_my_queue > 3 * elsewhere,
        "other FUSE threads did the work: queue {cpu} {on_my_queue} ticks, others {elsewhere}"
    );
    m.stop();
}
