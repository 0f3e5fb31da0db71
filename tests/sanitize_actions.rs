//! Sanitize, every file-rule action on one branch: truncate, replace, redact with
//! mask / drop / pseudonym over IPv4, IPv6, IBAN and a custom regex; binary files
//! skipped unless a rule names them, a leading hole no sign of binary; hard links
//! rewritten once, with the rules of every name; inode, mode and xattrs kept;
//! rule order (a later truncate wins over an earlier redact); errors that name
//! the branch. Runs on an in-memory pool: no root needed.

#[path = "sanitize_support/mod.rs"]
mod support;

use std::path::Path;

use cowfs::control::sanitize::{self, SanitizeConfig, SanitizeError};
use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::FsckOptions;
use support::*;

const KEY: &[u8] = b"actions-test-key-0123456789";

const PROFILE: &str = r##"
[[profiles.t.rules]]
name = "net"
paths = ["**/*.log"]
action = "redact"
detectors = ["ip", "iban"]
with = "mask"
mask_char = "#"

[[profiles.t.rules]]
name = "tokens"
paths = ["**/*.log"]
action = "redact"
patterns = [{ name = "token", regex = "tok_[A-Za-z0-9]{8}" }]
with = "drop"

[[profiles.t.rules]]
name = "emails"
paths = ["**"]
action = "redact"
detectors = ["email"]

[[profiles.t.rules]]
name = "named dump"
paths = ["dumps/users.bin"]
action = "redact"
detectors = ["email"]

[[profiles.t.rules]]
name = "keys"
paths = ["secrets/*.key"]
action = "truncate"

[[profiles.t.rules]]
name = "db config"
paths = ["config/db.yml"]
action = "replace"
content = "password: REDACTED\n"

[[profiles.t.rules]]
name = "employee ids"
paths = ["hr/*.txt"]
action = "redact"
patterns = [{ name = "employee", regex = "EMP-[0-9]{6}" }]
"##;

#[test]
fn every_action_on_one_branch() {
    let pool = mem_pool(256 << 20);
    let main = pool.branch_id("main").unwrap();
    let net = b"2026-01-01 GET / from 192.168.10.77 and 2001:db8:85a3::8a2e:370:7334 \
        iban GB82 WEST 1234 5698 7654 32 token=tok_AbCd1234; version 1.2.3.4.5\n";
    put(&pool, main, "logs/net.log", net);
    put(
        &pool,
        main,
        "secrets/api.key",
        b"-----BEGIN KEY-----\nabc\n",
    );
    put(
        &pool,
        main,
        "config/db.yml",
        b"password: hunter2\nuser: bob@corp.com\n",
    );
    let mut bin = b"\0\0\0\x01header".to_vec();
    bin.extend_from_slice(b" owner=carol@corp.com \0tail");
    put(&pool, main, "dumps/users.bin", &bin);
    put(&pool, main, "dumps/other.bin", &bin);
    put(
        &pool,
        main,
        "hr/staff.txt",
        b"EMP-004217 dave@corp.com\nEMP-004218\n",
    );
    // A file with two names and an xattr.
    let ino = put(&pool, main, "shared/a.txt", b"contact: erin@corp.com\n");
    let shared = pool.lookup(main, ROOT_INO, b"shared").unwrap().ino;
    pool.link(main, ino, shared, b"b.txt").unwrap();
    pool.setxattr(main, ino, b"user.tag", b"keep", 0).unwrap();
    pool.setattr(
        main,
        ino,
        &cowfs::fs::SetAttr {
            mode: Some(libc::S_IFREG | 0o640),
            ..Default::default()
        },
    )
    .unwrap();
    let parent = support::files(&pool, main);

    let cfg = SanitizeConfig::parse(PROFILE, Path::new("/")).unwrap();
    let t = profile(&cfg, "t");
    pool.branch_create("c", "main").unwrap();
    let report = sanitize::run(&pool, "c", t, KEY, &mut |_| {}).unwrap();
    let c = pool.branch_id("c").unwrap();
    let got = support::files(&pool, c);
    let text = |p: &str| String::from_utf8_lossy(&got[p]).into_owned();

    // Masks over IPs and the IBAN, the token dropped, the non-address kept.
    assert_eq!(
        text("logs/net.log"),
        "2026-01-01 GET / from ############# and ############################ \
        iban ########################### token=; version 1.2.3.4.5\n"
    );
    assert_eq!(report.values_replaced["ipv4"], 1);
    assert_eq!(report.values_replaced["ipv6"], 1);
    assert_eq!(report.values_replaced["iban"], 1);
    assert_eq!(report.values_replaced["token"], 1);

    // Truncate and replace; a redact before a replace is moot.
    assert!(got["secrets/api.key"].is_empty());
    assert_eq!(text("config/db.yml"), "password: REDACTED\n");
    assert_eq!(report.files_truncated, 1);
    assert_eq!(report.files_replaced, 1);

    // Binary: scanned only where a rule names the file.
    assert!(!text("dumps/users.bin").contains("carol@corp.com"));
    assert!(got["dumps/users.bin"].starts_with(b"\0\0\0\x01header owner=u"));
    assert_eq!(got["dumps/other.bin"], bin);
    assert_eq!(report.binary_files_skipped, 1);

    // Custom pattern pseudonyms keep the shape; the same value maps the same way
    // in a binary and a text file.
    let staff = text("hr/staff.txt");
    let lines: Vec<&str> = staff.lines().collect();
    assert!(!staff.contains("EMP-004217") && !staff.contains("EMP-004218"));
    for l in &lines {
        let id = &l[..10];
        assert!(
            id.starts_with(|c: char| c.is_ascii_uppercase())
                && id[3..4] == *"-"
                && id[4..].chars().all(|c| c.is_ascii_digit()),
            "{id}"
        );
    }
    assert!(!staff.contains("dave@corp.com") && lines[0][11..].ends_with(".example"));

    // Hard links: one inode, rewritten once (a second pass would have replaced
    // the pseudonym by a pseudonym of itself), inode number, mode and xattr kept.
    assert_eq!(got["shared/a.txt"], got["shared/b.txt"]);
    let a = pool.lookup(c, shared, b"a.txt").unwrap();
    assert_eq!(a.ino, ino);
    assert_eq!(a.mode, libc::S_IFREG | 0o640);
    assert_eq!(a.nlink, 2);
    assert_eq!(pool.getxattr(c, ino, b"user.tag").unwrap(), b"keep");
    let once = pool.branch_create("once", "main").unwrap();
    pool.unlink(once, shared, b"b.txt").unwrap();
    sanitize::run(&pool, "once", t, KEY, &mut |_| {}).unwrap();
    let again = support::files(&pool, once).remove("shared/a.txt").unwrap();
    assert_eq!(got["shared/a.txt"], again);

    // The parent is unchanged; nothing leaked.
    assert_eq!(support::files(&pool, main), parent);
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

#[test]
fn rule_order_and_errors() {
    let pool = mem_pool(64 << 20);
    let main = pool.branch_id("main").unwrap();
    put(&pool, main, "a.log", b"mail ann@x.io\n");
    put(&pool, main, "b.log", b"mail ann@x.io\n");
    let cfg = SanitizeConfig::parse(
        r#"
        [[profiles.o.rules]]
        paths = ["*.log"]
        action = "redact"
        detectors = ["email"]
        with = "drop"
        [[profiles.o.rules]]
        paths = ["b.log"]
        action = "truncate"
        [[profiles.o.rules]]
        paths = ["b.log"]
        action = "remove"
        exclude = ["*"]
        "#,
        Path::new("/"),
    )
    .unwrap();
    let o = profile(&cfg, "o");
    pool.branch_create("c", "main").unwrap();
    let rep = sanitize::run(&pool, "c", o, KEY, &mut |_| {}).unwrap();
    let got = support::files(&pool, pool.branch_id("c").unwrap());
    assert_eq!(got["a.log"], b"mail \n");
    assert!(got["b.log"].is_empty(), "the later truncate wins");
    assert_eq!(rep.files_removed, 0, "exclude overrides paths");

    // Snapshots are read-only, unknown branches unknown, short keys refused.
    pool.snapshot_create("snap", "main").unwrap();
    let e = sanitize::run(&pool, "snap", o, KEY, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&e, SanitizeError::Branch { branch, .. } if branch == "snap"),
        "{e}"
    );
    let e = sanitize::run(&pool, "nope", o, KEY, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("'nope'"), "{e}");
    let e = sanitize::run(&pool, "c", o, b"short", &mut |_| {}).unwrap_err();
    assert!(matches!(e, SanitizeError::KeyTooShort), "{e}");

    // A write that fails (the pool is full) names the rule and the file: masking
    // with a 3-byte character triples the file, more than the pool holds.
    let small = mem_pool(4 << 20);
    let m = small.branch_id("main").unwrap();
    let line = b"someone.with.a.long.address@example-mail.com\n";
    let big: Vec<u8> = line.iter().copied().cycle().take(1 << 20).collect();
    put(&small, m, "big.log", &big);
    small.branch_create("c", "main").unwrap();
    let cfg = SanitizeConfig::parse(
        "[[profiles.m.rules]]\nname = \"wide\"\npaths = [\"*.log\"]\naction = \"redact\"\ndetectors = [\"email\"]\nwith = \"mask\"\nmask_char = \"•\"\n",
        Path::new("/"),
    )
    .unwrap();
    match sanitize::run(&small, "c", profile(&cfg, "m"), KEY, &mut |_| {}) {
        Err(e @ SanitizeError::File { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains("rule 1 ('wide')") && s.contains("big.log"),
                "{s}"
            );
        }
        other => panic!("expected a write failure on a full pool, got {other:?}"),
    }
}

/// One file with two names, each name matched by a different `redact` rule: the
/// file holds the values of both rules' detectors, so both must be replaced,
/// whichever name the walk meets first (it rewrites the inode only once).
#[test]
fn hard_links_get_the_rules_of_every_name() {
    let cfg = SanitizeConfig::parse(
        r#"
        [[profiles.h.rules]]
        paths = ["**/*.log"]
        action = "redact"
        detectors = ["ipv4"]
        with = "mask"
        [[profiles.h.rules]]
        paths = ["**/*.txt"]
        action = "redact"
        detectors = ["email"]
        with = "mask"
        "#,
        Path::new("/"),
    )
    .unwrap();
    let h = profile(&cfg, "h");
    for (first, second) in [("a.log", "b.txt"), ("a.txt", "b.log")] {
        let pool = mem_pool(64 << 20);
        let main = pool.branch_id("main").unwrap();
        let path = format!("x/{first}");
        let ino = put(&pool, main, &path, b"from 192.168.10.77 by erin@corp.com\n");
        let x = pool.lookup(main, ROOT_INO, b"x").unwrap().ino;
        pool.link(main, ino, x, second.as_bytes()).unwrap();
        pool.branch_create("c", "main").unwrap();
        let rep = sanitize::run(&pool, "c", h, KEY, &mut |_| {}).unwrap();
        let got = support::files(&pool, pool.branch_id("c").unwrap());
        let text = String::from_utf8_lossy(&got[&path]).into_owned();
        assert_eq!(
            text, "from ************* by *************\n",
            "names {first} and {second}"
        );
        assert_eq!(got[&path], got[&format!("x/{second}")]);
        assert_eq!(rep.files_changed, 1, "rewritten once");
        assert_eq!(rep.values_replaced["ipv4"], 1);
        assert_eq!(rep.values_replaced["email"], 1);
    }
}

/// A text file that starts with a hole (a log rotated with `copytruncate` while
/// its writer keeps its offset) is not binary: the zeros of a hole are not the
/// file's content. A file whose data holds a NUL still is.
#[test]
fn a_leading_hole_does_not_make_a_file_binary() {
    let pool = mem_pool(64 << 20);
    let main = pool.branch_id("main").unwrap();
    let line = b"login erin@corp.com\n";
    for (path, hole) in [
        ("big-hole.log", 2 * CHUNK_U64 + 100),
        ("block-hole.log", 4096),
    ] {
        let ino = put(&pool, main, path, b"");
        pool.write_file(main, ino, hole, line).unwrap();
    }
    let ino = put(&pool, main, "hole-then-binary.log", b"");
    pool.write_file(main, ino, 4096, b"\x01\0bin erin@corp.com\n")
        .unwrap();
    let cfg = SanitizeConfig::parse(
        "[[profiles.s.rules]]\npaths = [\"*.log\"]\naction = \"redact\"\ndetectors = [\"email\"]\nwith = \"mask\"\n",
        Path::new("/"),
    )
    .unwrap();
    pool.branch_create("c", "main").unwrap();
    let rep = sanitize::run(&pool, "c", profile(&cfg, "s"), KEY, &mut |_| {}).unwrap();
    let got = support::files(&pool, pool.branch_id("c").unwrap());
    for path in ["big-hole.log", "block-hole.log"] {
        assert!(
            got[path].ends_with(b"login *************\n"),
            "{path} was not scanned"
        );
    }
    assert!(got["hole-then-binary.log"].ends_with(b"erin@corp.com\n"));
    assert_eq!(rep.binary_files_skipped, 1);
    assert_eq!(rep.values_replaced["email"], 2);
}

const CHUNK_U64: u64 = sanitize::CHUNK as u64;

/// `redact` rules also cover what sits beside the contents: the names of files,
/// directories and symlinks, symlink targets and `user.*` xattr values (files and
/// directories; other namespaces stay). One email gets one pseudonym in all of
/// them; a file with two names gets its xattrs redacted once; an excluded path
/// keeps its name; a truncated file still gets its name redacted.
#[test]
fn names_targets_and_xattrs_are_redacted() {
    const ERIN: &str = "erin@corp.com";
    let pool = mem_pool(64 << 20);
    let main = pool.branch_id("main").unwrap();
    let dir = |b, path: &str| {
        path.split('/').fold(ROOT_INO, |d, n| {
            pool.lookup(b, d, n.as_bytes()).unwrap().ino
        })
    };
    put(
        &pool,
        main,
        "users/erin@corp.com/notes.txt",
        b"mail erin@corp.com\n",
    );
    put(&pool, main, "mail/erin@corp.com", b"nothing here\n");
    put(&pool, main, "secrets/erin@corp.com", b"key\n");
    let report = put(&pool, main, "docs/report.txt", b"text\n");
    pool.setxattr(main, report, b"user.owner", ERIN.as_bytes(), 0)
        .unwrap();
    pool.setxattr(main, report, b"trusted.owner", ERIN.as_bytes(), 0)
        .unwrap();
    let users = dir(main, "users");
    pool.setxattr(main, users, b"user.owner", b"owner erin@corp.com", 0)
        .unwrap();
    let shared = put(&pool, main, "shared/a.txt", b"x\n");
    pool.link(main, shared, dir(main, "shared"), b"b.txt")
        .unwrap();
    pool.setxattr(main, shared, b"user.owner", ERIN.as_bytes(), 0)
        .unwrap();
    let kept = put(&pool, main, "keep/erin@corp.com", b"erin@corp.com\n");
    pool.setxattr(main, kept, b"user.owner", ERIN.as_bytes(), 0)
        .unwrap();
    let links = pool
        .mkdir(main, ROOT_INO, b"links", 0o755, Owner::default())
        .unwrap()
        .ino;
    let owner = Owner {
        uid: 1000,
        gid: 1001,
    };
    pool.symlink(
        main,
        links,
        b"me",
        b"../users/erin@corp.com/notes.txt",
        owner,
    )
    .unwrap();
    let renamed = pool
        .symlink(main, links, ERIN.as_bytes(), b"notes", owner)
        .unwrap()
        .ino;
    pool.symlink(main, links, b"bob@corp.com", b"/home/bob@corp.com", owner)
        .unwrap();
    pool.setxattr(main, ROOT_INO, b"user.owner", ERIN.as_bytes(), 0)
        .unwrap();
    let parent = support::files(&pool, main);

    let cfg = SanitizeConfig::parse(
        r#"
        [[profiles.n.rules]]
        name = "emails"
        paths = ["**"]
        exclude = ["keep/**"]
        action = "redact"
        detectors = ["email"]
        [[profiles.n.rules]]
        name = "keys"
        paths = ["secrets/*"]
        action = "truncate"
        "#,
        Path::new("/"),
    )
    .unwrap();
    pool.branch_create("c", "main").unwrap();
    let rep = sanitize::run(&pool, "c", profile(&cfg, "n"), KEY, &mut |_| {}).unwrap();
    let c = pool.branch_id("c").unwrap();
    let got = support::files(&pool, c);

    // The pseudonym the contents got is the one in every name, target and xattr.
    let notes = got.keys().find(|p| p.starts_with("users/")).unwrap();
    let p = notes["users/".len()..].strip_suffix("/notes.txt").unwrap();
    assert!(valid_email(p) && p != ERIN, "{p}");
    assert_eq!(got[notes], format!("mail {p}\n").as_bytes());
    assert_eq!(got[&format!("mail/{p}")], b"nothing here\n");
    assert!(
        got[&format!("secrets/{p}")].is_empty(),
        "truncated, renamed"
    );
    let link = |name: &str| pool.readlink(c, pool.lookup(c, links, name.as_bytes()).unwrap().ino);
    assert_eq!(
        link("me").unwrap(),
        format!("../users/{p}/notes.txt").as_bytes()
    );
    assert_eq!(link(p).unwrap(), b"notes");
    assert_eq!(pool.lookup(c, links, p.as_bytes()).unwrap().ino, renamed);
    let bob = pool.readdir(c, links, 2, 16).unwrap();
    let bob: Vec<&[u8]> = bob.iter().map(|e| e.name.as_slice()).collect();
    assert!(
        !bob.iter().any(|n| n.windows(7).any(|w| w == b"@corp.c")),
        "{bob:?}"
    );
    let me = pool.lookup(c, links, b"me").unwrap();
    assert_eq!(
        (me.uid, me.gid),
        (1000, 1001),
        "the new symlink keeps its owner"
    );
    let xattr = |ino, name: &[u8]| pool.getxattr(c, ino, name).unwrap();
    assert_eq!(xattr(report, b"user.owner"), p.as_bytes());
    assert_eq!(xattr(report, b"trusted.owner"), ERIN.as_bytes());
    assert_eq!(xattr(users, b"user.owner"), format!("owner {p}").as_bytes());
    assert_eq!(xattr(shared, b"user.owner"), p.as_bytes(), "redacted once");
    assert_eq!(
        xattr(ROOT_INO, b"user.owner"),
        p.as_bytes(),
        "the root, as \"\""
    );

    // Excluded: name, contents and xattr as they were.
    assert_eq!(got["keep/erin@corp.com"], b"erin@corp.com\n");
    assert_eq!(xattr(kept, b"user.owner"), ERIN.as_bytes());

    // Five names (a directory, two files, two symlinks), two targets, four
    // xattrs and one file's contents: every value once.
    assert_eq!(rep.names_changed, 5);
    assert_eq!(rep.symlinks_changed, 2);
    assert_eq!(rep.xattrs_changed, 4);
    assert_eq!(rep.files_changed, 1);
    assert_eq!(rep.values_replaced["email"], 12);
    assert_eq!(support::files(&pool, main), parent);
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

/// A redacted name that cannot be stored fails the run and names the entry and
/// the rule: two names that mask to one, a '/' mask, a name that was all value
/// and is dropped.
#[test]
fn names_that_cannot_be_stored_fail_the_run() {
    let pool = mem_pool(64 << 20);
    let main = pool.branch_id("main").unwrap();
    put(&pool, main, "d/a1@x.io", b"");
    put(&pool, main, "d/b2@x.io", b"");
    for (i, (with, why)) in [
        ("with = \"mask\"", "is taken by another entry"),
        ("with = \"mask\"\nmask_char = \"/\"", "holds '/' or NUL"),
        ("with = \"drop\"", "is empty"),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = SanitizeConfig::parse(
            &format!("[[profiles.m.rules]]\nname = \"names\"\npaths = [\"d/*\"]\naction = \"redact\"\ndetectors = [\"email\"]\n{with}\n"),
            Path::new("/"),
        )
        .unwrap();
        let name = format!("c{i}");
        pool.branch_create(&name, "main").unwrap();
        let e = sanitize::run(&pool, &name, profile(&cfg, "m"), KEY, &mut |_| {}).unwrap_err();
        let s = e.to_string();
        assert!(
            matches!(&e, SanitizeError::Name { rule, path, what: "name", .. }
                if rule == "rule 1 ('names')" && path.starts_with("d/") && path.ends_with("@x.io"))
                && s.contains(why),
            "{s}"
        );
    }
}
