//! Sanitize profiles from the daemon's TOML config: `[profiles.NAME]` tables with
//! ordered `[[profiles.NAME.rules]]` and `[[profiles.NAME.hooks]]`. Other top-level
//! tables of the daemon config are left to their owners. Everything is checked and
//! compiled here (globs, regexes, detector names), so a profile that loads is one
//! that can run; every error names the profile and the rule or hook.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::detect::Detector;
use super::hook::{find_program, hook_search_path};
use super::host_path::HostPath;
use super::sandbox::{OWN_DIRS, SYSTEM_DIRS};
use super::SanitizeError;

/// Hooks that do not say otherwise are killed after this long.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(600);

/// The size of each of a hook's tmpfs mounts (/tmp, /run, /dev/shm), in MiB,
/// unless its `tmpfs_size_mib` says otherwise. Their pages are the host's
/// memory: without a limit the kernel allows half the RAM each, which code in
/// the clone could fill. PostgreSQL needs little there: its socket and lock
/// file in /run, a few MiB of dynamic shared memory in /dev/shm (parallel
/// queries; `shared_buffers` is anonymous memory, not /dev/shm), and the
/// hook's scratch files in /tmp.
pub const DEFAULT_TMPFS_SIZE_MIB: u32 = 256;

/// The largest `tmpfs_size_mib`: 16 GiB each.
pub const MAX_TMPFS_SIZE_MIB: u32 = 16 << 10;

/// The memory limit of a hook and everything it starts (its memory cgroup,
/// see `cgroup`), in MiB, unless its `memory_max_mib` says otherwise. What the
/// cgroup is charged with: the processes' memory, PostgreSQL's or MariaDB's
/// shared buffers (128 MiB by default each) and the backends' work memory,
/// the files in the hook's tmpfs mounts (up to three times `tmpfs_size_mib`,
/// 768 MiB by default), and the page cache of what they read and write (which
/// the kernel reclaims at the limit rather than killing). 2 GiB leaves such a
/// server, its SQL and full tmpfs mounts room, and still stops code in the
/// clone from taking the host's memory.
pub const DEFAULT_MEMORY_MAX_MIB: u32 = 2 << 10;

/// The smallest `memory_max_mib`: below it a shell and its tools hardly start.
pub const MIN_MEMORY_MAX_MIB: u32 = 16;

/// The largest `memory_max_mib`: 1 TiB.
pub const MAX_MEMORY_MAX_MIB: u32 = 1 << 20;

/// Every profile of one config file.
#[derive(Debug)]
pub struct SanitizeConfig {
    pub profiles: BTreeMap<String, Profile>,
    /// `[sanitize] scratch_dir`: where hooks get their private mount of a clone
    /// (default: the system temporary directory).
    pub scratch_dir: PathBuf,
}

/// One compiled profile.
#[derive(Debug)]
pub struct Profile {
    pub name: String,
    pub rules: Vec<Rule>,
    pub hooks: Vec<Hook>,
}

/// A file rule: which paths (relative to the branch root, no leading '/') and what
/// to do with them.
#[derive(Debug)]
pub struct Rule {
    /// "rule 3 ('emails')" or "rule 3": how errors name it.
    pub label: String,
    paths: GlobSet,
    exclude: GlobSet,
    /// Globs without wildcards: a rule that names a file explicitly also scans it
    /// when it looks binary.
    literals: Vec<String>,
    /// Scan binary files too (text detectors skip them otherwise).
    binary: bool,
    pub action: Action,
}

#[derive(Debug)]
pub enum Action {
    Remove,
    Truncate,
    Replace(Vec<u8>),
    Redact(Vec<Redactor>),
}

/// One detector and what replaces the values it finds.
#[derive(Debug)]
pub struct Redactor {
    pub detector: Detector,
    pub with: Replacement,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replacement {
    /// Deterministic, keyed, shape-keeping fake value.
    Pseudonym,
    /// This character once per character of the value.
    Mask(char),
    /// Remove the value.
    Drop,
}

/// A command run against a private mount of the clone.
#[derive(Clone, Debug)]
pub struct Hook {
    pub name: String,
    /// Program and arguments; the program path is absolute: a relative one was
    /// resolved against the config file's directory, a bare name against the
    /// absolute entries of the daemon's PATH.
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
    /// Run only when this path exists in the clone (relative to its root).
    pub when_exists: Option<String>,
    /// Run in the daemon's network namespace. By default (false) the hook gets
    /// one of its own, with no interface up: it and what it starts on the
    /// clone's files reach nothing over the network.
    pub network: bool,
    /// Host paths (absolute, without symlinks, checked at load) the hook sees
    /// read-only, besides the system directories, its program's directory and
    /// the clone (see `sandbox`).
    pub read_only_paths: Vec<HostPath>,
    /// Host paths the hook sees read-write.
    pub read_write_paths: Vec<HostPath>,
    /// The size limit of each of its tmpfs mounts (/tmp, /run, /dev/shm), MiB.
    pub tmpfs_size_mib: u32,
    /// The memory limit of the hook and what it starts (its cgroup), MiB.
    pub memory_max_mib: u32,
    /// Whether the config set `memory_max_mib`: a limit asked for that cannot be
    /// applied fails the run; the default one is skipped with a warning (on a
    /// cgroup v2 host whose daemon shares its cgroup with nothing below it, as a
    /// plain systemd service does, none can be made: see `cgroup`).
    pub memory_limit_required: bool,
}

impl Rule {
    /// Does this rule apply to `path`?
    pub fn matches(&self, path: &Path) -> bool {
        self.paths.is_match(path) && !self.exclude.is_match(path)
    }

    /// Does this rule scan `path` even when it looks binary?
    pub fn scans_binary(&self, path: &Path) -> bool {
        self.binary || self.literals.iter().any(|l| Path::new(l) == path)
    }
}

impl SanitizeConfig {
    /// Read the profiles of a daemon config file. Relative hook programs are
    /// resolved against the file's directory, bare names in the daemon's PATH.
    pub fn load(path: &Path) -> Result<SanitizeConfig, SanitizeError> {
        let text = std::fs::read_to_string(path).map_err(|e| SanitizeError::Config {
            file: Some(path.to_path_buf()),
            why: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        SanitizeConfig::parse(&text, base).map_err(|e| match e {
            SanitizeError::Config { why, .. } => SanitizeError::Config {
                file: Some(path.to_path_buf()),
                why,
            },
            other => other,
        })
    }

    /// Parse config text; `base` resolves relative hook programs (with a '/').
    pub fn parse(text: &str, base: &Path) -> Result<SanitizeConfig, SanitizeError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| config_err(e.to_string()))?;
        let mut profiles = BTreeMap::new();
        for (name, p) in raw.profiles {
            let profile = compile_profile(&name, p, base).map_err(config_err)?;
            profiles.insert(name, profile);
        }
        let scratch_dir = match raw.sanitize.scratch_dir {
            Some(d) if d.is_relative() => {
                return Err(config_err(format!(
                    "[sanitize] scratch_dir '{}' must be an absolute path",
                    d.display()
                )))
            }
            Some(d) => d,
            None => std::env::temp_dir(),
        };
        let cfg = SanitizeConfig {
            profiles,
            scratch_dir,
        };
        cfg.refuse_host_paths_near("the scratch directory", &cfg.scratch_dir)?;
        Ok(cfg)
    }

    /// The profile called `name`, or an error listing the known ones.
    pub fn profile(&self, name: &str) -> Result<&Profile, SanitizeError> {
        self.profiles
            .get(name)
            .ok_or_else(|| SanitizeError::UnknownProfile {
                name: name.to_string(),
                known: self.profiles.keys().cloned().collect(),
            })
    }
}

fn config_err(why: String) -> SanitizeError {
    SanitizeError::Config { file: None, why }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    sanitize: RawSanitize,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSanitize {
    scratch_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    hooks: Vec<RawHook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    paths: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    action: RawAction,
    content: Option<String>,
    #[serde(default)]
    detectors: Vec<String>,
    #[serde(default)]
    patterns: Vec<RawPattern>,
    with: Option<RawWith>,
    mask_char: Option<char>,
    #[serde(default)]
    binary: bool,
}

#[derive(Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawAction {
    Remove,
    Truncate,
    Replace,
    Redact,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawWith {
    Pseudonym,
    Mask,
    Drop,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPattern {
    name: String,
    regex: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawCommand {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    name: String,
    command: RawCommand,
    timeout_secs: Option<u64>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    when_exists: Option<String>,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    read_only_paths: Vec<PathBuf>,
    #[serde(default)]
    read_write_paths: Vec<PathBuf>,
    tmpfs_size_mib: Option<u32>,
    memory_max_mib: Option<u32>,
}

fn compile_profile(name: &str, p: RawProfile, base: &Path) -> Result<Profile, String> {
    if p.rules.is_empty() && p.hooks.is_empty() {
        return Err(format!("profile '{name}': has no rules and no hooks"));
    }
    let mut rules = Vec::with_capacity(p.rules.len());
    for (i, r) in p.rules.into_iter().enumerate() {
        let label = match &r.name {
            Some(n) => format!("rule {} ('{n}')", i + 1),
            None => format!("rule {}", i + 1),
        };
        let rule = compile_rule(label, r)
            .map_err(|(label, why)| format!("profile '{name}', {label}: {why}"))?;
        rules.push(rule);
    }
    let mut hooks: Vec<Hook> = Vec::with_capacity(p.hooks.len());
    for (i, h) in p.hooks.into_iter().enumerate() {
        let label = format!("profile '{name}', hook {} ('{}')", i + 1, h.name);
        if hooks.iter().any(|o| o.name == h.name) {
            return Err(format!("{label}: another hook has the same name"));
        }
        hooks.push(compile_hook(h, base).map_err(|why| format!("{label}: {why}"))?);
    }
    Ok(Profile {
        name: name.to_string(),
        rules,
        hooks,
    })
}

fn compile_rule(label: String, r: RawRule) -> Result<Rule, (String, String)> {
    let fail = |why: String| Err((label.clone(), why));
    if r.paths.is_empty() {
        return fail("`paths` is empty; give at least one glob such as \"**\"".into());
    }
    let is_redact = r.action == RawAction::Redact;
    if r.content.is_some() && r.action != RawAction::Replace {
        return fail("`content` only applies to action = \"replace\"".into());
    }
    if !is_redact
        && (!r.detectors.is_empty()
            || !r.patterns.is_empty()
            || r.with.is_some()
            || r.mask_char.is_some()
            || r.binary)
    {
        return fail(
            "`detectors`, `patterns`, `with`, `mask_char` and `binary` only apply to action = \"redact\""
                .into(),
        );
    }
    let paths = match glob_set(&r.paths) {
        Ok(s) => s,
        Err(why) => return fail(why),
    };
    let exclude = match glob_set(&r.exclude) {
        Ok(s) => s,
        Err(why) => return fail(why),
    };
    let literals = r
        .paths
        .iter()
        .filter(|g| !g.contains(['*', '?', '[', '{']))
        .map(|g| g.trim_start_matches('/').to_string())
        .collect();
    let action = match r.action {
        RawAction::Remove => Action::Remove,
        RawAction::Truncate => Action::Truncate,
        RawAction::Replace => match r.content {
            Some(c) => Action::Replace(c.into_bytes()),
            None => return fail("action = \"replace\" needs `content` (the new file text)".into()),
        },
        RawAction::Redact => {
            let with = match (r.with.unwrap_or(RawWith::Pseudonym), r.mask_char) {
                (RawWith::Mask, c) => Replacement::Mask(c.unwrap_or('*')),
                (_, Some(_)) => {
                    return fail("`mask_char` only applies to with = \"mask\"".into());
                }
                (RawWith::Pseudonym, None) => Replacement::Pseudonym,
                (RawWith::Drop, None) => Replacement::Drop,
            };
            if r.detectors.is_empty() && r.patterns.is_empty() {
                return fail(
                    "action = \"redact\" needs `detectors` (email, phone, card, ipv4, ipv6, ip, iban) or `patterns`"
                        .into(),
                );
            }
            let mut redactors = Vec::new();
            for d in &r.detectors {
                match Detector::builtin(d) {
                    Some(ds) => {
                        redactors.extend(ds.into_iter().map(|detector| Redactor { detector, with }))
                    }
                    None => {
                        return fail(format!(
                        "unknown detector '{d}'; known: email, phone, card, ipv4, ipv6, ip, iban"
                    ))
                    }
                }
            }
            for p in r.patterns {
                match Detector::custom(&p.name, &p.regex) {
                    Ok(detector) => redactors.push(Redactor { detector, with }),
                    Err(why) => return fail(format!("pattern '{}': {why}", p.name)),
                }
            }
            Action::Redact(redactors)
        }
    };
    Ok(Rule {
        label,
        paths,
        exclude,
        literals,
        binary: r.binary,
        action,
    })
}

/// Globs over paths relative to the branch root: `*` stays inside one directory,
/// `**` crosses directories; a leading '/' is ignored.
fn glob_set(globs: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        let pat = g.trim_start_matches('/');
        let glob: Glob = GlobBuilder::new(pat)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("bad glob '{g}': {e}"))?;
        b.add(glob);
    }
    b.build().map_err(|e| format!("bad globs: {e}"))
}

fn compile_hook(h: RawHook, base: &Path) -> Result<Hook, String> {
    if h.name.is_empty() {
        return Err("`name` is empty".into());
    }
    let mut argv = match h.command {
        RawCommand::Shell(s) if s.trim().is_empty() => return Err("`command` is empty".into()),
        RawCommand::Shell(s) => vec!["/bin/sh".to_string(), "-c".to_string(), s],
        RawCommand::Argv(v) if v.is_empty() || v[0].is_empty() => {
            return Err("`command` is empty".into())
        }
        RawCommand::Argv(v) => v,
    };
    if argv[0].contains('/') && Path::new(&argv[0]).is_relative() {
        // Absolute, against the daemon's working directory now: `base` is itself
        // relative for `--config examples/cowfs.toml`, and a hook runs with the
        // clone as its working directory, so a relative program would be looked up
        // in the clone (its data, not the site's hook).
        let p: PathBuf = std::path::absolute(base.join(&argv[0]))
            .map_err(|e| format!("resolving the program '{}': {e}", argv[0]))?;
        argv[0] = p.to_string_lossy().into_owned();
    } else if !argv[0].contains('/') {
        // A bare name, looked up now rather than by exec in the hook: exec would
        // search with the clone as working directory, where a relative or empty
        // PATH entry names the clone's files. Only absolute entries count.
        let path = hook_search_path();
        let found = find_program(&argv[0], &path).ok_or_else(|| {
            format!(
                "program '{}' is not in the daemon's PATH (searched its absolute entries: {}); give the program's path",
                argv[0],
                path.to_string_lossy()
            )
        })?;
        argv[0] = found.to_string_lossy().into_owned();
    }
    let timeout = match h.timeout_secs {
        Some(0) => return Err("`timeout_secs` must be at least 1".into()),
        Some(s) => Duration::from_secs(s),
        None => DEFAULT_HOOK_TIMEOUT,
    };
    for k in h.env.keys() {
        if k.is_empty() || k.contains(['=', '\0']) || k.starts_with("COWFS_") {
            return Err(format!(
                "env name '{k}' is not allowed (empty, contains '=' or NUL, or uses the reserved COWFS_ prefix)"
            ));
        }
    }
    let when_exists = match h.when_exists {
        Some(p) if p.split('/').any(|c| c == "..") => {
            return Err(format!("when_exists '{p}' must not contain '..'"))
        }
        Some(p) => Some(p.trim_matches('/').to_string()),
        None => None,
    };
    let tmpfs_size_mib = match h.tmpfs_size_mib {
        None => DEFAULT_TMPFS_SIZE_MIB,
        Some(m @ 1..=MAX_TMPFS_SIZE_MIB) => m,
        Some(m) => {
            return Err(format!(
                "`tmpfs_size_mib` is {m}: give 1 to {MAX_TMPFS_SIZE_MIB} (MiB for each of /tmp, /run and /dev/shm)"
            ))
        }
    };
    let memory_max_mib = match h.memory_max_mib {
        None => DEFAULT_MEMORY_MAX_MIB,
        Some(m @ MIN_MEMORY_MAX_MIB..=MAX_MEMORY_MAX_MIB) => m,
        Some(m) => {
            return Err(format!(
                "`memory_max_mib` is {m}: give {MIN_MEMORY_MAX_MIB} to {MAX_MEMORY_MAX_MIB} (MiB for the hook and everything it starts, its tmpfs files included)"
            ))
        }
    };
    let read_only_paths = host_paths("read_only_paths", h.read_only_paths)?;
    let read_write_paths = host_paths("read_write_paths", h.read_write_paths)?;
    let all: Vec<&PathBuf> = read_only_paths
        .iter()
        .chain(&read_write_paths)
        .map(|h| &h.path)
        .collect();
    for (i, a) in all.iter().enumerate() {
        if let Some(b) = all[i + 1..]
            .iter()
            .find(|b| a.starts_with(b) || b.starts_with(a))
        {
            return Err(format!(
                "host paths '{}' and '{}' are one inside the other; list one",
                a.display(),
                b.display()
            ));
        }
    }
    Ok(Hook {
        name: h.name,
        argv,
        timeout,
        env: h.env,
        when_exists,
        network: h.network,
        read_only_paths,
        read_write_paths,
        tmpfs_size_mib,
        memory_max_mib,
        memory_limit_required: h.memory_max_mib.is_some(),
    })
}

/// Most entries of `read_only_paths` or `read_write_paths`: each is a few steps
/// of the sandbox (`sandbox::MAX_STEPS`).
const MAX_HOST_PATHS: usize = 64;

/// The hook's `key` entries: absolute, existing, without symlinks (see
/// `host_path`: the names are the real paths the checks here and at daemon
/// start compare), and not what every hook sees or builds anyway.
fn host_paths(key: &str, paths: Vec<PathBuf>) -> Result<Vec<HostPath>, String> {
    if paths.len() > MAX_HOST_PATHS {
        return Err(format!("`{key}` has more than {MAX_HOST_PATHS} entries"));
    }
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let shown = p.display();
        let listed = HostPath::new(&p).map_err(|e| format!("`{key}` entry {e}"))?;
        let real = &listed.path;
        if real == Path::new("/") {
            return Err(format!(
                "`{key}` entry '{shown}' is the host's root: list the directories the hook needs"
            ));
        }
        if let Some(d) = OWN_DIRS.iter().find(|d| real.starts_with(d)) {
            return Err(format!(
                "`{key}` entry '{shown}' is in {d}, which the hook's sandbox makes itself"
            ));
        }
        if let Some(d) = SYSTEM_DIRS.iter().find(|d| real.starts_with(d)) {
            return Err(format!(
                "`{key}` entry '{shown}' is in {d}, which every hook sees read-only already"
            ));
        }
        out.push(listed);
    }
    Ok(out)
}

impl SanitizeConfig {
    /// Refuse a hook's host path that is `dir` (`what`: "the pool's mount
    /// root", ...), inside it, or holds it: a hook would see what is there
    /// (production's mounted branches, other clones).
    pub fn refuse_host_paths_near(&self, what: &str, dir: &Path) -> Result<(), SanitizeError> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        self.refuse_host_paths(&format!("{what} {}", dir.display()), |x| {
            x.starts_with(&dir) || dir.starts_with(x)
        })
    }

    /// Refuse a hook's host path that holds the pool `pool` or is one of its
    /// files (the pool itself, `POOL.tokens`, its key...: the pool's path and
    /// a suffix): a hook would read every branch, or the secrets beside them.
    pub fn refuse_host_paths_to_pool(&self, pool: &Path) -> Result<(), SanitizeError> {
        let pool = pool.canonicalize().unwrap_or_else(|_| pool.to_path_buf());
        let name = pool.as_os_str().as_encoded_bytes();
        self.refuse_host_paths(&format!("the pool {}", pool.display()), |x| {
            pool.starts_with(x) || x.as_os_str().as_encoded_bytes().starts_with(name)
        })
    }

    fn refuse_host_paths(
        &self,
        what: &str,
        bad: impl Fn(&Path) -> bool,
    ) -> Result<(), SanitizeError> {
        for p in self.profiles.values() {
            for h in &p.hooks {
                let found = h
                    .read_only_paths
                    .iter()
                    .chain(&h.read_write_paths)
                    .map(|x| &x.path)
                    .find(|x| bad(x));
                if let Some(x) = found {
                    return Err(config_err(format!(
                        "profile '{}', hook '{}': host path '{}' is, holds or is inside {what}: hooks must not see it",
                        p.name,
                        h.name,
                        x.display()
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SanitizeConfig, String> {
        SanitizeConfig::parse(text, Path::new("/etc/cowfs")).map_err(|e| e.to_string())
    }

    #[test]
    fn full_profile_compiles() {
        let cfg = parse(
            r#"
            [control]
            max_clients = 4

            [profiles.pii]
            [[profiles.pii.rules]]
            paths = ["**/.env"]
            action = "remove"
            [[profiles.pii.rules]]
            name = "text"
            paths = ["**"]
            exclude = ["pg/**"]
            action = "redact"
            detectors = ["email", "ip"]
            patterns = [{ name = "emp", regex = "EMP-[0-9]{6}" }]
            [[profiles.pii.hooks]]
            name = "pg"
            command = ["hooks/pg.sh", "--fast"]
            when_exists = "/pg/"
            env = { PGBIN = "/usr/lib/postgresql/15/bin" }
            [[profiles.pii.hooks]]
            name = "fetch"
            command = "true"
            network = true
            "#,
        )
        .unwrap();
        let p = cfg.profile("pii").unwrap();
        assert_eq!(p.rules.len(), 2);
        match &p.rules[1].action {
            Action::Redact(r) => assert_eq!(r.len(), 4),
            other => panic!("{other:?}"),
        }
        assert!(p.rules[0].matches(Path::new(".env")));
        assert!(p.rules[0].matches(Path::new("a/b/.env")));
        assert!(!p.rules[0].matches(Path::new("a/b/.envrc")));
        assert!(p.rules[1].matches(Path::new("a/x.csv")));
        assert!(!p.rules[1].matches(Path::new("pg/base/1/1234")));
        assert_eq!(p.hooks[0].argv, ["/etc/cowfs/hooks/pg.sh", "--fast"]);
        assert_eq!(p.hooks[0].when_exists.as_deref(), Some("pg"));
        assert_eq!(p.hooks[0].timeout, DEFAULT_HOOK_TIMEOUT);
        assert!(
            !p.hooks[0].network,
            "a network namespace of its own by default"
        );
        assert!(p.hooks[1].network);
        assert_eq!(cfg.scratch_dir, std::env::temp_dir());
        let e = cfg.profile("nope").unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("pii"), "{e}");
    }

    #[test]
    fn errors_name_profile_and_rule() {
        let e = parse(
            r#"
            [[profiles.p.rules]]
            paths = ["**"]
            action = "redact"
            detectors = ["emial"]
            "#,
        )
        .unwrap_err();
        assert!(
            e.contains("profile 'p', rule 1") && e.contains("emial"),
            "{e}"
        );

        let e = parse(
            r#"
            [[profiles.q.rules]]
            paths = ["a"]
            action = "remove"
            [[profiles.q.rules]]
            name = "bad"
            paths = ["**"]
            action = "redact"
            patterns = [{ name = "x", regex = "(" }]
            "#,
        )
        .unwrap_err();
        assert!(
            e.contains("profile 'q', rule 2 ('bad')") && e.contains("pattern 'x'"),
            "{e}"
        );

        let e =
            parse("[[profiles.r.rules]]\npaths = [\"**\"]\naction = \"replace\"\n").unwrap_err();
        assert!(e.contains("rule 1") && e.contains("content"), "{e}");

        let e = parse("[[profiles.r.rules]]\npaths = [\"**\"]\naction = \"shred\"\n").unwrap_err();
        assert!(e.contains("shred"), "{e}");

        let e = parse("[[profiles.r.rules]]\npaths = [\"a[\"]\naction = \"remove\"\n").unwrap_err();
        assert!(e.contains("bad glob 'a['"), "{e}");

        let e = parse("[[profiles.h.hooks]]\nname = \"x\"\ncommand = \"true\"\ntimeout_secs = 0\n")
            .unwrap_err();
        assert!(
            e.contains("profile 'h', hook 1 ('x')") && e.contains("timeout"),
            "{e}"
        );

        let e = parse("[sanitize]\nscratch_dir = \"run\"\n").unwrap_err();
        assert!(e.contains("scratch_dir 'run'"), "{e}");

        let e = parse("[profiles.empty]\n").unwrap_err();
        assert!(e.contains("profile 'empty'"), "{e}");
    }

    /// A bare program name is resolved at load, in the absolute entries of PATH
    /// (a hook runs in the clone, where exec would resolve relative ones).
    #[test]
    fn bare_program_names_are_resolved_at_load() {
        let cfg =
            parse("[[profiles.p.hooks]]\nname = \"x\"\ncommand = [\"sh\", \"-c\", \"true\"]\n")
                .unwrap();
        let argv = &cfg.profile("p").unwrap().hooks[0].argv;
        assert!(
            Path::new(&argv[0]).is_absolute() && argv[0].ends_with("/sh"),
            "{argv:?}"
        );
        assert_eq!(argv[1..], ["-c", "true"]);
        let e =
            parse("[[profiles.p.hooks]]\nname = \"x\"\ncommand = [\"cowfs-no-such-program\"]\n")
                .unwrap_err();
        assert!(
            e.contains("hook 1 ('x')")
                && e.contains("'cowfs-no-such-program' is not in the daemon's PATH"),
            "{e}"
        );
    }

    /// A hook's host paths must not show the pool's mounts or files: checked by
    /// the daemon at start, where it knows its mount roots and pool.
    #[test]
    fn host_paths_near_the_pool_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        for d in ["sql", "pool.mnt", "other"] {
            std::fs::create_dir(base.join(d)).unwrap();
        }
        std::fs::write(base.join("pool"), b"").unwrap();
        std::fs::write(base.join("pool.tokens"), b"").unwrap();
        let cfg = |path: &Path| {
            parse(&format!(
                "[sanitize]\nscratch_dir = \"{}\"\n[[profiles.p.hooks]]\nname = \"h\"\ncommand = \"true\"\nread_only_paths = [\"{}\"]\n",
                scratch.path().display(),
                path.display()
            ))
            .unwrap()
        };
        let pool = base.join("pool");
        let roots = base.join("pool.mnt");
        let ok = cfg(&base.join("sql"));
        ok.refuse_host_paths_near("the pool's mount root", &roots)
            .unwrap();
        ok.refuse_host_paths_to_pool(&pool).unwrap();
        for (listed, refused_as) in [
            (base.join("pool.mnt"), "mount root"),
            (base.clone(), "mount root"),
            (base.join("pool.tokens"), "the pool"),
        ] {
            let c = cfg(&listed);
            let e = c
                .refuse_host_paths_near("the pool's mount root", &roots)
                .and_then(|()| c.refuse_host_paths_to_pool(&pool))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("hook 'h'") && e.contains(refused_as),
                "{}: {e}",
                listed.display()
            );
        }
        let e = cfg(&base.join("other")).refuse_host_paths_to_pool(&pool);
        assert!(e.is_ok(), "{e:?}");
    }

    #[test]
    fn explicit_names_scan_binary() {
        let cfg = parse(
            "[[profiles.b.rules]]\npaths = [\"data/dump.bin\", \"**/*.log\"]\naction = \"redact\"\ndetectors = [\"email\"]\n",
        )
        .unwrap();
        let r = &cfg.profile("b").unwrap().rules[0];
        assert!(r.scans_binary(Path::new("data/dump.bin")));
        assert!(!r.scans_binary(Path::new("x/app.log")));
        assert!(r.matches(Path::new("x/app.log")));
    }
}
