//! Holding a truncate or punch hole that runs in steps (pool/cut_steps.rs)
//! between two of its steps, deterministically, while the test acts on the
//! pool; or counting its steps. The pool calls the hook on the thread doing
//! the cut, without the pool lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use cowfs::pool::Pool;

/// Holds the cut after each of its steps: tells `reached` how many steps are
/// done and waits for a word on `go` (or for the test to drop its sender, after
/// which it holds nothing).
pub fn hold_cuts(p: &Pool) -> (Receiver<usize>, Sender<()>) {
    let (reached_tx, reached) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let mut done = 0;
    p.set_cut_pause(Some(Box::new(move || {
        done += 1;
        if reached_tx.send(done).is_ok() {
            let _ = go_rx.recv();
        }
    })));
    (reached, go)
}

/// Counts the pauses between steps of cuts from now on: steps less one, per cut.
pub fn count_cuts(p: &Pool) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    p.set_cut_pause(Some(Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })));
    n
}
