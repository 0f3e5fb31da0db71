//! Drive a cowfs daemon: the control protocol's types ([`proto`]) and a blocking
//! client ([`Client`]). No FUSE and no engine: any tool can link this.
//!
//! ```no_run
//! let mut c = cowfs_ctl::Client::connect("/var/lib/cowfs/pool.sock", "cwt_...")?;
//! c.branch_create("agent-1", "prod", None)?;
//! # Ok::<(), cowfs_ctl::ClientError>(())
//! ```

pub mod client;
pub mod proto;

pub use client::{Client, ClientError, ClientResult};
