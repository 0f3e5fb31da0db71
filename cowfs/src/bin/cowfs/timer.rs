//! The periodic commit: whatever is written reaches disk within a few seconds even
//! when no one calls fsync.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use cowfs::pool::Pool;

pub const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

pub struct CommitTimer {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl CommitTimer {
    pub fn start(pool: Arc<Pool>) -> std::io::Result<CommitTimer> {
        let (stop, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cowfs-commit".into())
            .spawn(move || loop {
                match rx.recv_timeout(COMMIT_INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = pool.commit() {
                            log::error!("periodic commit failed: {e}");
                        }
                    }
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(CommitTimer { stop, thread })
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            log::error!("commit timer thread panicked");
        }
    }
}
