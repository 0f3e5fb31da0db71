//! `cowfs-ctl` and sanitize, against a control socket with profiles from its
//! config file: `branch create --sanitize` streams progress lines then the result
//! with `--json` (a stream of JSON lines) and prints a summary otherwise; an
//! unknown profile and a failing hook are typed errors (exit 1) naming the known
//! profiles or carrying the hook's exit code and output, and leave no branch;
//! `protect --require-sanitize` shows in `info` and applies to a non-admin token
//! that names no profile. A hook that leaves processes running fails with
//! their number in `error.sanitize.processes_left`.
//!
//! Needs root and /dev/fuse (hooks run on a private mount of the clone).

mod control_support;

use std::path::Path;
use std::process::{Command, Output};

use control_support::*;
use serde_json::Value;

const CONFIG: &str = r#"
[[profiles.slowish.rules]]
name = "emails"
paths = ["**"]
action = "redact"
detectors = ["email"]
with = "pseudonym"

[[profiles.slowish.hooks]]
name = "pause"
command = "sleep 1.2; echo paused"

[[profiles.boom.hooks]]
name = "boom"
command = "echo boom; exit 3"

[[profiles.leaves.hooks]]
name = "leaves"
command = "sleep 30 & sleep 30 & echo left"
"#;

const EMAIL: &str = "dora.explorer@example.com";

fn ctl(d: &Daemon, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cowfs-ctl"))
        .env("COWFS_SOCKET", &d.socket)
        .env("COWFS_TOKEN", token)
        .args(args)
        .output()
        .expect("run cowfs-ctl")
}

/// stdout as JSON lines.
fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l}: {e}")))
        .collect()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

fn names(d: &Daemon) -> Vec<String> {
    d.admin_client()
        .list()
        .expect("list")
        .into_iter()
        .map(|b| b.name)
        .collect()
}

#[test]
fn branch_create_sanitize_from_the_cli() {
    let d = Daemon::start_with_config(Some(CONFIG));
    let m = d.dir("src");
    let out = ctl(
        &d,
        &d.admin,
        &[
            "branch",
            "create",
            "src",
            "--from",
            "main",
            "--mount",
            s(&m),
        ],
    );
    ok(&out, "src");
    std::fs::write(m.join("people.csv"), format!("1,{EMAIL}\n2,{EMAIL}\n")).expect("write");
    ok(&ctl(&d, &d.admin, &["unmount", s(&m)]), "unmount");

    // --json: progress lines, then the result on one line.
    let out = ctl(
        &d,
        &d.admin,
        &[
            "--json",
            "branch",
            "create",
            "c1",
            "--from",
            "src",
            "--sanitize",
            "slowish",
        ],
    );
    ok(&out, "c1");
    let v = lines(&out);
    let (last, progress) = v.split_last().expect("output");
    assert!(!progress.is_empty(), "progress lines before the result");
    let phases: Vec<&str> = progress
        .iter()
        .map(|p| p["progress"]["phase"].as_str().expect("phase"))
        .collect();
    for want in ["files", "hooks", "commit"] {
        assert!(phases.contains(&want), "{phases:?}");
    }
    assert!(progress
        .iter()
        .all(|p| p["progress"]["bytes_scanned"].is_u64()));
    assert_eq!(last["name"], "c1");
    assert_eq!(last["state"], "ready");
    assert_eq!(last["sanitized"]["profile"], "slowish");
    assert_eq!(last["sanitized"]["values_replaced"]["email"], 2);
    assert_eq!(last["sanitized"]["hooks"][0]["name"], "pause");
    let mc = d.dir("c1");
    ok(
        &ctl(&d, &d.admin, &["mount", "c1", s(&mc), "--ro"]),
        "mount c1",
    );
    let text = std::fs::read_to_string(mc.join("people.csv")).expect("read clone");
    ok(&ctl(&d, &d.admin, &["unmount", s(&mc)]), "unmount c1");
    assert!(!text.contains(EMAIL) && text.lines().count() == 2, "{text}");

    // Table and summary without --json.
    let out = ctl(
        &d,
        &d.admin,
        &[
            "branch",
            "create",
            "c2",
            "--from",
            "src",
            "--sanitize",
            "slowish",
        ],
    );
    ok(&out, "c2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("NAME"), "{stdout}");
    assert!(stdout.contains("sanitized with 'slowish'"), "{stdout}");
    assert!(
        stdout.contains("0 names, 0 symlinks and 0 xattrs changed"),
        "{stdout}"
    );

    // Unknown profile: exit 1, typed, lists the known profiles; nothing created.
    let before = names(&d);
    let out = ctl(
        &d,
        &d.admin,
        &[
            "--json",
            "branch",
            "create",
            "c3",
            "--from",
            "src",
            "--sanitize",
            "nope",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v = lines(&out);
    let e = &v.last().expect("error line")["error"];
    assert_eq!(e["kind"], "unknown_profile");
    let msg = e["message"].as_str().expect("message");
    assert!(msg.contains("slowish") && msg.contains("boom"), "{msg}");
    // A failing hook: exit 1, exit code and output in the error; no branch left.
    let out = ctl(
        &d,
        &d.admin,
        &[
            "--json",
            "branch",
            "create",
            "c4",
            "--from",
            "src",
            "--sanitize",
            "boom",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v = lines(&out);
    let e = &v.last().expect("error line")["error"];
    assert_eq!(e["kind"], "sanitize_failed");
    assert_eq!(e["sanitize"]["exit_code"], 3);
    assert_eq!(e["sanitize"]["hook"], "boom");
    assert!(e["sanitize"]["output"]
        .as_str()
        .expect("output")
        .contains("boom"));
    let out = ctl(
        &d,
        &d.admin,
        &[
            "branch",
            "create",
            "c4",
            "--from",
            "src",
            "--sanitize",
            "boom",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exit code 3") && stderr.contains("boom"),
        "{stderr}"
    );
    assert_eq!(names(&d), before);

    // protect --require-sanitize: shown by info; a non-admin clone runs it.
    let out = ctl(
        &d,
        &d.admin,
        &["--json", "protect", "src", "--require-sanitize", "slowish"],
    );
    ok(&out, "protect");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["require_sanitize"], "slowish");
    let out = ctl(&d, &d.admin, &["info", "src"]);
    ok(&out, "info");
    assert!(String::from_utf8_lossy(&out.stdout).contains("slowish"));
    let agent = d.token("agent", &["branch:src"]);
    let out = ctl(
        &d,
        &agent,
        &["--json", "branch", "create", "a1", "--from", "src"],
    );
    ok(&out, "agent clone");
    let v = lines(&out);
    assert_eq!(v.last().expect("result")["sanitized"]["profile"], "slowish");
    let out = ctl(
        &d,
        &agent,
        &["--json", "snapshot", "create", "a-snap", "--from", "src"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("forbidden"));
}

/// How many processes a hook left running was only in the message: a client
/// had to parse English to learn it. It travels as `processes_left`; the
/// message, which `cowfs-ctl` prints without `--json`, still says it.
#[test]
fn a_hook_that_leaves_processes_reports_how_many() {
    let d = Daemon::start_with_config(Some(CONFIG));
    let before = names(&d);
    let create = [
        "branch",
        "create",
        "c",
        "--from",
        "main",
        "--sanitize",
        "leaves",
    ];
    let out = ctl(&d, &d.admin, &[&["--json"], &create[..]].concat());
    assert_eq!(out.status.code(), Some(1));
    let v = lines(&out);
    let e = &v.last().expect("error line")["error"];
    assert_eq!(e["kind"], "sanitize_failed");
    assert_eq!(e["sanitize"]["hook"], "leaves");
    assert_eq!(e["sanitize"]["processes_left"], 2, "{e}");
    assert!(e["sanitize"].get("exit_code").is_none(), "{e}");
    let out = ctl(&d, &d.admin, &create);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("left 2 processes running"), "{stderr}");
    assert_eq!(names(&d), before);
}
