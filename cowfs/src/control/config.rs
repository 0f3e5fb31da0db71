//! The control socket's settings: the `[control]` table of the daemon's TOML config
//! file (`cowfs serve --config FILE`). Every field is optional; unknown fields in
//! `[control]`, and top-level tables other than `[control]`, `[sanitize]` and
//! `[profiles.*]` (which belong to the sanitize module), are refused so that a typo
//! is noticed.
//!
//! ```toml
//! [control]
//! max_frame_bytes = 1048576
//! idle_timeout_secs = 300
//! io_timeout_secs = 30
//! max_clients = 256
//! mount_roots = ["/srv/cowfs"]   # default: POOL.mnt beside the pool
//! ```

use std::path::{Path, PathBuf};
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
    /// Connections served at once; more are answered `too_many_clients`. One
    /// user other than the daemon's own gets at most half of them (`slots`).
    pub max_clients: usize,
    /// Directories below which tokens without `admin:*` may mount; empty means the
    /// default, `POOL.mnt` (see `mount_roots`).
    pub mount_roots: Vec<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_bytes: cowfs_ctl::proto::MAX_REQUEST_BYTES,
            idle_timeout_secs: 300,
            io_timeout_secs: 30,
            max_clients: 256,
            mount_roots: Vec::new(),
        }
    }
}

/// The part of the config file this module reads. The other top-level tables are
/// named so that any table no module reads (`[sanitise]`) is refused, not ignored.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    control: ServerConfig,
    /// Read by `sanitize::SanitizeConfig`.
    #[serde(default, rename = "sanitize")]
    _sanitize: Option<serde::de::IgnoredAny>,
    /// Read by `sanitize::SanitizeConfig`.
    #[serde(default, rename = "profiles")]
    _profiles: Option<serde::de::IgnoredAny>,
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
        ServerConfig::parse(&text).map_err(|why| ControlError::Config {
            path: path.to_path_buf(),
            why,
        })
    }

    pub fn parse(text: &str) -> Result<ServerConfig, String> {
        let cfg = toml::from_str::<ConfigFile>(text)
            .map_err(|e| e.to_string())?
            .control;
        if let Some(r) = cfg.mount_roots.iter().find(|r| !r.is_absolute()) {
            return Err(format!(
                "[control] mount_roots: '{}' must be an absolute path",
                r.display()
            ));
        }
        if cfg.max_frame_bytes < 1024 || cfg.max_clients == 0 || cfg.idle_timeout_secs == 0 {
            return Err("[control] max_frame_bytes must be at least 1024, max_clients and idle_timeout_secs at least 1".into());
        }
        Ok(cfg)
    }

    /// The mount roots, resolved (symlinks followed). Without configured ones:
    /// `POOL.mnt` beside the pool, created (mode 0755, owned by the daemon) if
    /// missing, so that only the daemon's user decides what directories exist
    /// there.
    pub fn mount_roots(&self, pool: &Path) -> Result<Vec<PathBuf>, ControlError> {
        let default = [super::files::side_file(pool, ".mnt")];
        let roots = if self.mount_roots.is_empty() {
            use std::os::unix::fs::DirBuilderExt;
            // A block-device pool's state directory may not exist yet for a
            // program that links the library (the CLI makes it with its lock).
            let made = super::files::make_side_dir(pool)
                .and_then(|()| std::fs::DirBuilder::new().mode(0o755).create(&default[0]));
            if let Err(source) = made {
                if source.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(ControlError::Io {
                        path: default[0].clone(),
                        source,
                    });
                }
            }
            &default[..]
        } else {
            &self.mount_roots[..]
        };
        roots
            .iter()
            .map(|r| {
                r.canonicalize().map_err(|source| ControlError::Io {
                    path: r.clone(),
                    source,
                })
            })
            .collect()
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn io_timeout(&self) -> Duration {
        Duration::from_secs(self.io_timeout_secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_table_only() {
        assert_eq!(ServerConfig::parse("").unwrap(), ServerConfig::default());
        let c = ServerConfig::parse(
            "[control]\nmax_clients = 3\n\n[profiles.pii]\nrules = []\n[sanitize]\nx = 1\n",
        )
        .unwrap();
        assert_eq!(c.max_clients, 3);
        assert_eq!(c.max_frame_bytes, ServerConfig::default().max_frame_bytes);
        assert!(ServerConfig::parse("[control]\nmax_client = 3\n").is_err());
        assert!(ServerConfig::parse("[control]\nmax_frame_bytes = 10\n").is_err());
        assert!(ServerConfig::parse("not toml [").is_err());
        // A table no module reads (a typo, or tokens, which live in POOL.tokens)
        // would otherwise be ignored without a word.
        assert!(ServerConfig::parse("[sanitise]\nscratch_dir = \"/x\"\n").is_err());
        assert!(ServerConfig::parse("[tokens]\nx = 1\n").is_err());
        let c = ServerConfig::parse("[control]\nmount_roots = [\"/srv/a\"]\n").unwrap();
        assert_eq!(c.mount_roots, [PathBuf::from("/srv/a")]);
        assert!(ServerConfig::parse("[control]\nmount_roots = [\"rel\"]\n").is_err());
    }
}
