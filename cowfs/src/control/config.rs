//! The daemon's control settings, read from the `--config` file (JSON). Every
//! field is optional; unknown fields are refused so that a typo is noticed.
//!
//! ```json
//! { "max_frame_bytes": 1048576, "idle_timeout_secs": 300, "io_timeout_secs": 30, "max_clients": 256 }
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ControlError;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Longest request line accepted; a longer one closes the connection.
    pub max_frame_bytes: usize,
    /// A connection with no complete request for this long is closed.
    pub idle_timeout_secs: u64,
    /// A reply the client does not read within this long closes the connection.
    pub io_timeout_secs: u64,
    /// Connections served at once; more are answered `too_many_clients`.
    pub max_clients: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_bytes: cowfs_ctl::proto::MAX_REQUEST_BYTES,
            idle_timeout_secs: 300,
            io_timeout_secs: 30,
            max_clients: 256,
        }
    }
}

impl ServerConfig {
    pub fn load(path: Option<&Path>) -> Result<ServerConfig, ControlError> {
        let Some(path) = path else {
            return Ok(ServerConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: ServerConfig = serde_json::from_str(&text).map_err(|e| ControlError::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        if cfg.max_frame_bytes < 1024 || cfg.max_clients == 0 || cfg.idle_timeout_secs == 0 {
            return Err(ControlError::Config {
                path: path.to_path_buf(),
                why: "max_frame_bytes must be at least 1024, max_clients and idle_timeout_secs at least 1".into(),
            });
        }
        Ok(cfg)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn io_timeout(&self) -> Duration {
        Duration::from_secs(self.io_timeout_secs.max(1))
    }
}
