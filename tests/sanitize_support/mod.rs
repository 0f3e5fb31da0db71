//! Shared by the sanitize scenario tests: an in-memory pool, writing files by path,
//! reading a whole branch back, generated personal data and value checks.
#![allow(dead_code)] // each scenario uses the part it needs

pub mod pg;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cowfs::control::sanitize::detect::Kind;
use cowfs::control::sanitize::pseudo::Pseudonymizer;
use cowfs::control::sanitize::{Profile, SanitizeConfig};
use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{BranchId, Pool, PoolOptions};
use cowfs::store::device::MemDevice;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub fn mem_pool(capacity: u64) -> Pool {
    let opts = PoolOptions {
        capacity_bytes: Some(capacity),
        ..Default::default()
    };
    Pool::create_on(Arc::new(MemDevice::new()), &opts).expect("create pool")
}

/// Create `path` (and its directories) in branch `b` with `data`.
pub fn put(pool: &Pool, b: BranchId, path: &str, data: &[u8]) -> u64 {
    let mut dir = ROOT_INO;
    let parts: Vec<&str> = path.split('/').collect();
    let (name, dirs) = parts.split_last().expect("path");
    for d in dirs {
        dir = match pool.lookup(b, dir, d.as_bytes()) {
            Ok(a) => a.ino,
            Err(_) => {
                pool.mkdir(b, dir, d.as_bytes(), 0o755, Owner::default())
                    .expect("mkdir")
                    .ino
            }
        };
    }
    let a = pool
        .mknod(
            b,
            dir,
            name.as_bytes(),
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .expect("mknod");
    for (i, c) in data.chunks(1 << 20).enumerate() {
        pool.write_file(b, a.ino, (i << 20) as u64, c)
            .expect("write");
    }
    a.ino
}

/// Every regular file of branch `b`, path -> content.
pub fn files(pool: &Pool, b: BranchId) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut cookie = 2;
        loop {
            let ents = pool.readdir(b, dir, cookie, 128).expect("readdir");
            let Some(last) = ents.last() else { break };
            cookie = last.offset;
            for e in ents {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let path = format!("{prefix}{}", String::from_utf8_lossy(&e.name));
                if e.ftype == libc::S_IFDIR {
                    stack.push((e.ino, format!("{path}/")));
                } else if e.ftype == libc::S_IFREG {
                    let size = pool.getattr(b, e.ino).expect("getattr").size;
                    let mut data = Vec::with_capacity(size as usize);
                    while (data.len() as u64) < size {
                        let c = pool
                            .read_file(b, e.ino, data.len() as u64, 1 << 20)
                            .expect("read");
                        assert!(!c.is_empty(), "short read of {path}");
                        data.extend_from_slice(&c);
                    }
                    out.insert(path, data);
                }
            }
        }
    }
    out
}

/// The example daemon config shipped in examples/.
pub fn example_config() -> SanitizeConfig {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cowfs.toml");
    SanitizeConfig::load(&p).unwrap_or_else(|e| panic!("{e}"))
}

pub fn profile<'a>(cfg: &'a SanitizeConfig, name: &str) -> &'a Profile {
    cfg.profile(name).unwrap_or_else(|e| panic!("{e}"))
}

pub struct Person {
    pub name: String,
    pub email: String,
    pub phone: String,
    pub card: String,
}

pub fn luhn_ok(s: &str) -> bool {
    let mut sum = 0;
    for (i, c) in s.chars().filter(char::is_ascii_digit).rev().enumerate() {
        let mut d = c.to_digit(10).expect("digit");
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

fn card(rng: &mut SmallRng, style: usize) -> String {
    let mut d: Vec<u32> = vec![if rng.gen_bool(0.5) { 4 } else { 5 }];
    while d.len() < 15 {
        d.push(rng.gen_range(0..10));
    }
    for check in 0..10 {
        let s: String = d
            .iter()
            .chain(std::iter::once(&check))
            .map(|x| char::from_digit(*x, 10).expect("digit"))
            .collect();
        if luhn_ok(&s) {
            return match style {
                0 => format!("{} {} {} {}", &s[0..4], &s[4..8], &s[8..12], &s[12..16]),
                1 => format!("{}-{}-{}-{}", &s[0..4], &s[4..8], &s[8..12], &s[12..16]),
                _ => s,
            };
        }
    }
    unreachable!("some check digit satisfies Luhn")
}

/// `n` people with unique emails, phones (three formats) and Luhn-valid cards.
pub fn people(n: usize, seed: u64) -> Vec<Person> {
    const FIRST: [&str; 8] = [
        "ann", "bob", "chloe", "dmitri", "emeka", "fatima", "gus", "hana",
    ];
    const LAST: [&str; 6] = ["lee", "okafor", "schmidt", "garcia", "tanaka", "novak"];
    const DOMAINS: [&str; 4] = ["gmail.com", "corp-mail.de", "uni.example.ac.uk", "yahoo.fr"];
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let (f, l) = (FIRST[i % FIRST.len()], LAST[i % LAST.len()]);
            let phone = match i % 3 {
                0 => format!("+44 20 7946 {:04}", 1000 + i),
                1 => format!("(212) 555-{:04}", 2000 + i),
                _ => format!("312-555-{:04}", 3000 + i),
            };
            Person {
                name: format!("{} {}", f.to_uppercase(), l.to_uppercase()),
                email: format!("{f}.{l}{i}@{}", DOMAINS[i % DOMAINS.len()]),
                phone,
                card: card(&mut rng, i % 3),
            }
        })
        .collect()
}

/// Every value of `people` (emails, names, phones, cards): what a sanitized
/// database must hold none of.
pub fn originals(people: &[Person]) -> Vec<String> {
    people
        .iter()
        .flat_map(|p| {
            [
                p.email.clone(),
                p.name.clone(),
                p.phone.clone(),
                p.card.clone(),
            ]
        })
        .collect()
}

/// The example schema's rows for `people`, as SQL INSERT statements (the same in
/// PostgreSQL and MariaDB): users (id, email, name, phone, card); three orders
/// per person, each for the person 7 places on; a ticket for every other person.
pub fn example_inserts(people: &[Person]) -> String {
    let users: Vec<String> = people
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "({i}, '{}', '{}', '{}', '{}')",
                p.email, p.name, p.phone, p.card
            )
        })
        .collect();
    let orders: Vec<String> = (0..people.len() * 3)
        .map(|k| format!("('{}', {k})", people[(k * 7) % people.len()].email))
        .collect();
    let tickets: Vec<String> = (0..people.len())
        .filter(|k| k % 2 == 0)
        .map(|k| format!("('{}', 'printer on fire')", people[k].email))
        .collect();
    format!(
        "INSERT INTO users VALUES {};\nINSERT INTO orders (user_email, amount) VALUES {};\nINSERT INTO tickets (user_email, body) VALUES {};\n",
        users.join(",\n"),
        orders.join(",\n"),
        tickets.join(",\n")
    )
}

/// `rows` (email, name, phone, card of each user by id, one line each, columns
/// separated by `sep`) are the example SQL's pseudonyms of `people` under
/// `pool_key`: each email exactly the one the file rules give it, names
/// "Person ...", phones and cards in their original shape, cards Luhn-valid.
pub fn assert_example_pseudonyms(rows: &str, sep: char, people: &[Person], pool_key: &[u8]) {
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split(sep).collect()).collect();
    let pseudo = Pseudonymizer::new(pool_key).expect("pseudonymizer");
    assert_eq!(rows.len(), people.len());
    for (r, p) in rows.iter().zip(people) {
        assert!(valid_email(r[0]) && r[0].ends_with(".example"), "{}", r[0]);
        let file_pseudonym = pseudo.pseudonym(Kind::Email, "email", p.email.as_bytes());
        assert_eq!(r[0].as_bytes(), file_pseudonym, "{}", p.email);
        assert!(r[1].starts_with("Person "), "{}", r[1]);
        assert_eq!(shape(r[2]), shape(&p.phone), "{} vs {}", r[2], p.phone);
        assert_eq!(shape(r[3]), shape(&p.card), "{} vs {}", r[3], p.card);
        assert!(luhn_ok(r[3]), "{} fails Luhn", r[3]);
    }
}

/// One regex matching any of `values` literally.
pub fn any_of(values: &[String]) -> regex::bytes::Regex {
    let alt: Vec<String> = values.iter().map(|v| regex::escape(v)).collect();
    regex::bytes::Regex::new(&alt.join("|")).expect("literal alternation")
}

/// value -> number of occurrences over every file.
pub fn count_all(
    re: &regex::bytes::Regex,
    files: &BTreeMap<String, Vec<u8>>,
) -> BTreeMap<Vec<u8>, usize> {
    let mut out = BTreeMap::new();
    for data in files.values() {
        for m in re.find_iter(data) {
            *out.entry(m.as_bytes().to_vec()).or_insert(0) += 1;
        }
    }
    out
}

/// Digits become '9', everything else stays: the format of a phone or card.
pub fn shape(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect()
}

pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._%+-".contains(c))
        && domain.contains('.')
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}
