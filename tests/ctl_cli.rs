//! Every `cowfs-ctl` subcommand against a running control socket with real mounts:
//! tables by default, `--json` for machines, socket and token from flags, files or
//! the environment, typed errors with exit code 1, usage errors with exit code 2.

mod control_support;

use std::path::Path;
use std::process::{Command, Output};

use control_support::*;
use serde_json::Value;

struct Ctl<'a> {
    d: &'a Daemon,
    token: String,
}

impl Ctl<'_> {
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cowfs-ctl"));
        c.env("COWFS_SOCKET", &self.d.socket)
            .env("COWFS_TOKEN", &self.token);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run cowfs-ctl")
    }

    /// Succeeds; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cowfs-ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Succeeds with --json; returns the parsed result.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("JSON output")
    }

    /// Fails with exit code 1 and a typed error of `kind` (read from --json).
    fn fails(&self, args: &[&str], kind: &str) {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        assert_eq!(out.status.code(), Some(1), "cowfs-ctl {args:?}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON error");
        assert_eq!(v["ok"], Value::Bool(false));
        assert_eq!(v["error"]["kind"].as_str(), Some(kind), "{args:?}: {v}");
        // Without --json: the message on stderr, nothing on stdout.
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty());
        assert!(!out.stderr.is_empty());
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn every_subcommand() {
    let d = Daemon::start();
    let admin = Ctl {
        d: &d,
        token: d.admin.clone(),
    };
    let m1 = d.dir("m1");
    let m2 = d.dir("m2");

    // branch create with --mount, then write through the mount.
    let out = admin.ok(&[
        "branch",
        "create",
        "dev",
        "--from",
        "main",
        "--mount",
        s(&m1),
    ]);
    assert!(out.starts_with("NAME"), "a table with a header: {out}");
    assert!(out.contains("dev") && out.contains(s(&m1)), "{out}");
    std::fs::write(m1.join("hello.txt"), "hello from dev").expect("write via mount");
    // snapshot create (flushes the mount first), group create.
    let v = admin.json(&["snapshot", "create", "dev-snap", "--from", "dev"]);
    assert_eq!(v["kind"], "snapshot");
    assert_eq!(v["parent"], "dev");
    let v = admin.json(&[
        "branch",
        "create",
        "--group",
        "g-app=dev",
        "--group",
        "g-db=main",
    ]);
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    // list / info, table and JSON.
    let v = admin.json(&["list"]);
    let names: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(names, ["main", "dev", "dev-snap", "g-app", "g-db"]);
    let out = admin.ok(&["list"]);
    assert_eq!(out.lines().count(), 6, "{out}");
    let v = admin.json(&["info", "dev"]);
    assert_eq!(v["mounts"][0]["dir"], s(&m1));
    assert!(admin.ok(&["info", "dev"]).contains("owner"));
    // diff: the file written through the mount is in the branch and the snapshot.
    let v = admin.json(&["diff", "main", "dev-snap"]);
    assert_eq!(v["entries"][0]["path"], "/hello.txt");
    assert_eq!(v["entries"][0]["change"], "added");
    let out = admin.ok(&["diff", "main", "dev-snap"]);
    assert!(out.contains("added") && out.contains("/hello.txt"), "{out}");
    // mount a snapshot read-only elsewhere; unmount.
    admin.ok(&["mount", "dev-snap", s(&m2)]);
    let v = admin.json(&["mounts"]);
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    let out = admin.ok(&["mounts"]);
    assert!(out.contains("dev-snap") && out.contains(" ro"), "{out}");
    assert_eq!(
        std::fs::read_to_string(m2.join("hello.txt")).expect("read snapshot"),
        "hello from dev"
    );
    assert!(
        std::fs::write(m2.join("x"), "x").is_err(),
        "snapshot mounts are read-only"
    );
    admin.ok(&["unmount", s(&m2)]);
    assert!(!is_mountpoint(&m2));
    // reset: refused while mounted, then done after unmount.
    std::fs::write(m1.join("hello.txt"), "changed").expect("write");
    // diff of a modified file: its changed bytes and what changed, in both forms.
    let v = admin.json(&["diff", "dev-snap", "dev"]);
    let e = &v["entries"][0];
    assert_eq!(
        (&e["path"], &e["change"]),
        (&"/hello.txt".into(), &"modified".into())
    );
    assert_eq!(
        e["aspects"],
        serde_json::json!(["content", "size", "times"])
    );
    let out = admin.ok(&["diff", "dev-snap", "dev"]);
    let line = out.lines().find(|l| l.contains("/hello.txt")).unwrap_or("");
    assert!(
        line.starts_with("modified") && line.ends_with("0+14 [content,size,times]"),
        "{out}"
    );
    admin.fails(&["reset", "dev", "--to", "dev-snap"], "mounted");
    admin.ok(&["unmount", s(&m1)]);
    admin.ok(&["reset", "dev", "--to", "dev-snap"]);
    admin.ok(&["mount", "dev", s(&m1), "--ro"]);
    assert_eq!(
        std::fs::read_to_string(m1.join("hello.txt")).expect("read"),
        "hello from dev"
    );
    admin.ok(&["unmount", s(&m1)]);
    // rename, protect / unprotect, usage.
    admin.ok(&["rename", "g-app", "app"]);
    let v = admin.json(&["protect", "app"]);
    assert_eq!(v["protected"], true);
    let v = admin.json(&["unprotect", "app"]);
    assert_eq!(v["protected"], false);
    let v = admin.json(&["usage"]);
    assert!(v["capacity_bytes"].as_u64().is_some_and(|c| c > 0));
    assert_eq!(v["branches"].as_array().map(Vec::len), Some(5));
    assert!(admin.ok(&["usage"]).contains("EXCLUSIVE"));
    let v = admin.json(&["quota", "set", "app", "--max", "1G", "--reserve", "4M"]);
    assert_eq!(v["max_bytes"], 1u64 << 30);
    assert_eq!(v["reserve_bytes"], 4u64 << 20);
    assert!(admin.ok(&["quota", "list"]).contains("1.0 GiB"));
    admin.ok(&["quota", "set", "app"]);
    assert_eq!(
        admin.json(&["quota", "list"]).as_array().map(Vec::len),
        Some(0)
    );

    // tokens: create, use, list, revoke.
    let v = admin.json(&[
        "token",
        "create",
        "agent",
        "--scope",
        "branch:main",
        "--scope",
        "read:main",
    ]);
    let secret = v["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("cwt_"));
    let agent = Ctl {
        d: &d,
        token: secret.clone(),
    };
    agent.ok(&["branch", "create", "agent-1", "--from", "main"]);
    agent.fails(&["delete", "main"], "forbidden");
    // `dev` matches none of its grants: as if it did not exist.
    agent.fails(&["info", "dev"], "not_found");
    agent.fails(&["token", "list"], "forbidden");
    let v = admin.json(&["token", "list"]);
    let t = v
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["name"] == "agent")
        .expect("agent token listed");
    assert_eq!(t["owns"][0], "agent-1");
    assert!(
        !admin.ok(&["token", "list"]).contains(&secret),
        "secrets are never shown again"
    );
    // --token and --token-file take precedence over the environment.
    let file = d.dir("t").join("agent.token");
    std::fs::write(&file, format!("{secret}\n")).expect("write token file");
    let out = admin
        .cmd()
        .args(["--json", "--token-file", s(&file), "list"])
        .output()
        .expect("run");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "the agent's view: {v}");
    let out = admin
        .cmd()
        .env_remove("COWFS_TOKEN")
        .args(["--json", "--token", &secret, "list"])
        .output()
        .expect("run");
    assert!(out.status.success());
    admin.ok(&["token", "revoke", "agent"]);
    agent.fails(&["list"], "unauthenticated");

    // delete.
    admin.ok(&["delete", "agent-1"]);
    admin.fails(&["delete", "agent-1"], "not_found");
    admin.fails(&["info", "a/b"], "invalid_name");

    // Usage errors: exit code 2.
    let out = admin.run(&["branch", "create", "x"]);
    assert_eq!(out.status.code(), Some(2), "missing --from");
    let out = admin.run(&["token", "create", "t", "--scope", "fly:*"]);
    assert_eq!(out.status.code(), Some(2), "bad scope");
    let out = admin
        .cmd()
        .env_remove("COWFS_SOCKET")
        .arg("list")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "no socket");
    // A daemon that is not there: exit code 1 with a hint.
    let out = admin
        .cmd()
        .env("COWFS_SOCKET", d.dir("none").join("no.sock"))
        .arg("list")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cowfs serve"));
}

/// `branch create` without --sanitize returns as soon as the daemon answers: the
/// progress-bar timer of the CLI must not hold the exit back. It used to sleep in
/// 50 ms steps and be joined, adding up to 50 ms to every create (a snapshot create,
/// which has no timer, took 5 ms). Any create that waits out the timer takes at
/// least 50 ms, so the fastest of several must be well under that.
#[test]
fn branch_create_is_not_held_back_by_the_progress_timer() {
    let d = Daemon::start();
    let admin = Ctl {
        d: &d,
        token: d.admin.clone(),
    };
    let mut fastest = std::time::Duration::MAX;
    for i in 0..10 {
        let name = format!("quick-{i}");
        let t = std::time::Instant::now();
        admin.ok(&["branch", "create", &name, "--from", "main"]);
        fastest = fastest.min(t.elapsed());
        admin.ok(&["delete", &name]);
    }
    assert!(
        fastest < std::time::Duration::from_millis(45),
        "fastest of 10 branch creates took {fastest:?}"
    );
}
