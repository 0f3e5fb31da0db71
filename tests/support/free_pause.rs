//! Shared by the tests of stepped frees: holding the pool's freeing thread
//! (pool/free_steps.rs) before its steps, deterministically, while the test
//! acts on the pool.

use std::sync::mpsc::{self, Receiver, Sender};

use cowfs::pool::Pool;

/// Holds the freeing thread before its steps numbered `from` (1: the first)
/// and on: each time it tells `reached` and waits for a word on `go` (or for
/// the test to drop its sender, after which it holds nothing).
pub fn hold_steps(p: &Pool, from: usize) -> (Receiver<usize>, Sender<()>) {
    let (reached_tx, reached) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let mut step = 0;
    p.set_free_pause(Some(Box::new(move || {
        step += 1;
        if step >= from && reached_tx.send(step).is_ok() {
            let _ = go_rx.recv();
        }
    })));
    (reached, go)
}
