//! Sanitize, file rules (issue 5, check 1): a branch with CSV, JSON, logs and .env
//! files full of generated personal data, sanitized with the `pii` profile of
//! examples/cowfs.toml into a fresh clone. Afterwards no original email, phone or
//! card number appears in any file of the clone, every value has one pseudonym
//! across all files (occurrence counts match value by value), pseudonyms are valid
//! for their kind, .env files are gone, files without personal data and binary
//! files are untouched, the parent is byte-for-byte unchanged, a second clone gets
//! identical bytes under the same key and different ones under another key. A
//! 6 MiB log with values placed across every 1 MiB chunk boundary is streamed
//! chunk by chunk (progress never advances by more than one chunk) and every
//! straddling value is caught. Runs on an in-memory pool: no root needed.

#[path = "sanitize_support/mod.rs"]
mod support;

use std::collections::BTreeMap;

use cowfs::control::sanitize::{self, Progress, CHUNK};
use cowfs::pool::FsckOptions;
use support::*;

const KEY: &[u8] = b"pool-key-for-the-sanitize-test-0001";

#[test]
fn pii_profile_scrubs_a_clone_and_leaves_the_parent() {
    let pool = mem_pool(1 << 30);
    let main = pool.branch_id("main").unwrap();
    let ppl = people(150, 7);

    let mut csv = String::from("id,name,email,phone,card\n");
    for (i, p) in ppl.iter().enumerate() {
        csv.push_str(&format!(
            "{i},{},{},{},{}\n",
            p.name, p.email, p.phone, p.card
        ));
    }
    put(&pool, main, "data/users.csv", csv.as_bytes());

    let orders: Vec<serde_json::Value> = (0..400)
        .map(|k| {
            let p = &ppl[(k * 7) % ppl.len()];
            serde_json::json!({"order": k, "customer": p.email, "card": p.card, "contact": {"phone": p.phone}})
        })
        .collect();
    put(
        &pool,
        main,
        "data/orders.json",
        serde_json::to_string_pretty(&orders).unwrap().as_bytes(),
    );

    let mut log = String::new();
    for k in 0..600 {
        let p = &ppl[(k * 13) % ppl.len()];
        log.push_str(&format!(
            "2026-05-01T12:{:02}:{:02}Z INFO login user=<{}> from 10.1.{}.{} phone={}\n",
            k / 60 % 60,
            k % 60,
            p.email,
            k % 250,
            k % 200 + 1,
            p.phone
        ));
        if k % 50 == 0 {
            log.push_str(&format!(
                "2026-05-01T12:00:00Z WARN payment declined card={}\n",
                p.card
            ));
        }
    }
    put(&pool, main, "logs/app.log", log.as_bytes());

    put(
        &pool,
        main,
        ".env",
        format!("ADMIN_EMAIL={}\nSTRIPE_SECRET=sk_live_51Hx\n", ppl[0].email).as_bytes(),
    );
    put(
        &pool,
        main,
        "services/api/.env",
        format!("SUPPORT_PHONE={}\n", ppl[1].phone).as_bytes(),
    );
    put(
        &pool,
        main,
        "README.md",
        b"# shop\nNothing personal here.\n",
    );
    let png: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 256) as u8).collect();
    put(&pool, main, "assets/logo.png", &png);

    // A large log: filler lines with values, and one value starting a few bytes
    // before every chunk boundary, so that it straddles it.
    let mut big = Vec::new();
    let mut k = 0usize;
    for boundary in 1..=6usize {
        let target = boundary * CHUNK - 5;
        loop {
            let p = &ppl[k % ppl.len()];
            let line = format!("{k:08} event for {} card {}\n", p.email, p.card);
            if big.len() + line.len() + 2 > target {
                break;
            }
            big.extend_from_slice(line.as_bytes());
            k += 1;
        }
        big.resize(target, b' ');
        let p = &ppl[boundary * 11];
        let v = match boundary % 3 {
            0 => &p.email,
            1 => &p.card,
            _ => &p.phone,
        };
        big.extend_from_slice(v.as_bytes());
        big.push(b'\n');
    }
    put(&pool, main, "logs/big.log", &big);

    let parent_before = support::files(&pool, main);
    let cfg = example_config();
    let pii = profile(&cfg, "pii");

    pool.branch_create("dev", "main").unwrap();
    let mut events: Vec<Progress> = Vec::new();
    let report = sanitize::run(&pool, "dev", pii, KEY, &mut |p| events.push(p)).unwrap();
    let dev = pool.branch_id("dev").unwrap();
    let clone = support::files(&pool, dev);

    // The parent is byte-for-byte unchanged.
    assert_eq!(support::files(&pool, main), parent_before);

    // .env files are gone from the clone, and only those.
    assert!(!clone.contains_key(".env") && !clone.contains_key("services/api/.env"));
    assert_eq!(report.files_removed, 2);
    let mut expect_paths: Vec<&String> = parent_before
        .keys()
        .filter(|p| !p.ends_with(".env"))
        .collect();
    expect_paths.sort();
    assert_eq!(clone.keys().collect::<Vec<_>>(), expect_paths);

    // Untouched: no personal data, or binary.
    assert_eq!(clone["README.md"], parent_before["README.md"]);
    assert_eq!(clone["assets/logo.png"], png);

    // No original value anywhere in the clone.
    let originals: Vec<String> = ppl
        .iter()
        .flat_map(|p| [p.email.clone(), p.phone.clone(), p.card.clone()])
        .collect();
    let orig_re = any_of(&originals);
    for (path, data) in &clone {
        if let Some(m) = orig_re.find(data) {
            panic!(
                "{path}: original value {:?} survived at byte {}",
                String::from_utf8_lossy(m.as_bytes()),
                m.start()
            );
        }
    }

    // One pseudonym per value, the same in every file: read them off users.csv,
    // then every pseudonym occurs exactly as often in the clone as its original
    // did in the parent's sanitized files.
    let clone_csv = String::from_utf8(clone["data/users.csv"].clone()).unwrap();
    let rows: Vec<Vec<&str>> = clone_csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), ppl.len());
    let mut pseudo_of: BTreeMap<&str, String> = BTreeMap::new();
    for (p, row) in ppl.iter().zip(&rows) {
        let (name, email, phone, card) = (row[1], row[2], row[3], row[4]);
        assert_eq!(name, p.name, "names are not a detector of this profile");
        assert!(valid_email(email), "{email}");
        assert_ne!(email, p.email);
        assert_eq!(shape(phone), shape(&p.phone), "{phone} vs {}", p.phone);
        assert_ne!(phone, p.phone);
        if p.phone.starts_with("+44 ") {
            assert!(phone.starts_with("+44 "), "country code kept: {phone}");
        }
        assert_eq!(shape(card), shape(&p.card), "{card} vs {}", p.card);
        assert!(luhn_ok(card), "{card} fails Luhn");
        assert_ne!(card, p.card);
        pseudo_of.insert(&p.email, email.to_string());
        pseudo_of.insert(&p.phone, phone.to_string());
        pseudo_of.insert(&p.card, card.to_string());
    }
    let sanitized_parent: BTreeMap<String, Vec<u8>> = parent_before
        .iter()
        .filter(|(p, _)| !p.ends_with(".env"))
        .map(|(p, d)| (p.clone(), d.clone()))
        .collect();
    let orig_counts = count_all(&orig_re, &sanitized_parent);
    let pseudos: Vec<String> = pseudo_of.values().cloned().collect();
    let pseudo_counts = count_all(&any_of(&pseudos), &clone);
    let mut total = BTreeMap::<&str, u64>::new();
    for (orig, pseudo) in &pseudo_of {
        let n = orig_counts.get(orig.as_bytes()).copied().unwrap_or(0);
        let m = pseudo_counts.get(pseudo.as_bytes()).copied().unwrap_or(0);
        assert!(n > 0, "{orig} was generated but never written");
        assert_eq!(m, n, "{orig} -> {pseudo}: {n} originals but {m} pseudonyms");
        let kind = if orig.contains('@') {
            "email"
        } else if luhn_ok(orig) && orig.chars().filter(char::is_ascii_digit).count() == 16 {
            "card"
        } else {
            "phone"
        };
        *total.entry(kind).or_insert(0) += n as u64;
    }
    for kind in ["email", "phone", "card"] {
        assert_eq!(
            report.values_replaced.get(kind).copied(),
            total.get(kind).copied(),
            "{kind} count in the report: {:?}",
            report.values_replaced
        );
    }

    // The big file: every straddling value was replaced, and it was read in
    // chunks, never more than one chunk between progress reports.
    let big_clone = &clone["logs/big.log"];
    for boundary in 1..=6usize {
        let p = &ppl[boundary * 11];
        let v = match boundary % 3 {
            0 => &p.email,
            1 => &p.card,
            _ => &p.phone,
        };
        let pseudo = &pseudo_of[v.as_str()];
        assert!(
            big_clone
                .windows(pseudo.len())
                .any(|w| w == pseudo.as_bytes()),
            "value across chunk boundary {boundary} was not replaced"
        );
    }
    let mut last = 0u64;
    let mut big_steps = 0;
    for e in &events {
        assert!(e.bytes_scanned >= last);
        assert!(
            e.bytes_scanned - last <= CHUNK as u64,
            "read {} bytes at once",
            e.bytes_scanned - last
        );
        if e.current == "logs/big.log" && e.bytes_scanned > last {
            big_steps += 1;
        }
        last = e.bytes_scanned;
    }
    assert!(
        big_steps >= big.len() / CHUNK,
        "big.log read in {big_steps} steps"
    );
    assert_eq!(
        events.last().map(|e| e.bytes_scanned),
        Some(report.bytes_scanned)
    );
    let text_bytes: u64 = sanitized_parent
        .iter()
        .filter(|(p, _)| p.as_str() != "assets/logo.png")
        .map(|(_, d)| d.len() as u64)
        .sum();
    // The binary file is sniffed and skipped: not counted as scanned bytes.
    assert_eq!(report.bytes_scanned, text_bytes);
    assert_eq!(report.binary_files_skipped, 1);
    assert_eq!(report.files_changed, 4);

    // Every clone of the pool gets the same pseudonyms; another key, others.
    pool.branch_create("dev2", "main").unwrap();
    sanitize::run(&pool, "dev2", pii, KEY, &mut |_| {}).unwrap();
    assert_eq!(
        support::files(&pool, pool.branch_id("dev2").unwrap()),
        clone
    );
    pool.branch_create("other", "main").unwrap();
    sanitize::run(
        &pool,
        "other",
        pii,
        b"a-different-pool-key-0002",
        &mut |_| {},
    )
    .unwrap();
    let other = support::files(&pool, pool.branch_id("other").unwrap());
    assert_ne!(other["data/users.csv"], clone["data/users.csv"]);
    assert!(orig_re.find(&other["data/users.csv"]).is_none());

    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}
