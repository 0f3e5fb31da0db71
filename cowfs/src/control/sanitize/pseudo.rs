//! Deterministic pseudonyms: HMAC-SHA256 under the pool's secret key over the
//! detector's domain and the value's normalized form (lower-case email, digits of
//! a phone or card number), expanded into as many bytes as needed. The same value
//! gets the same pseudonym in every file and every clone of the pool; the output
//! keeps the value's shape, and never equals the input.

use std::net::Ipv6Addr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::detect::{iban_mod97, luhn_sum, Kind};

type HmacSha256 = Hmac<Sha256>;

/// Keys shorter than this are refused: the pseudonyms would be guessable.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Clone)]
pub struct Pseudonymizer {
    mac: HmacSha256,
}

/// A keyed byte stream for one (domain, value).
struct Stream {
    base: HmacSha256,
    counter: u32,
    block: [u8; 32],
    pos: usize,
}

impl Stream {
    fn byte(&mut self) -> u8 {
        if self.pos == self.block.len() {
            let mut m = self.base.clone();
            m.update(&self.counter.to_le_bytes());
            self.block.copy_from_slice(&m.finalize().into_bytes());
            self.counter += 1;
            self.pos = 0;
        }
        let b = self.block[self.pos];
        self.pos += 1;
        b
    }

    /// Uniform in 0..n (rejection sampling, no modulo bias).
    fn below(&mut self, n: u8) -> u8 {
        let cap = 256 - (256 % u16::from(n));
        loop {
            let b = self.byte();
            if u16::from(b) < cap {
                return b % n;
            }
        }
    }

    fn digit(&mut self) -> u8 {
        b'0' + self.below(10)
    }

    fn lower(&mut self) -> u8 {
        b'a' + self.below(26)
    }
}

/// Every pseudonym is keyed by HMAC(pool key, this label), not by the pool key
/// itself; hooks get the same sub-key (hex, `$COWFS_HOOK_KEY`), so that SQL can
/// compute the very same email pseudonyms as the file rules (see
/// examples/pg-sanitize.sql) without ever seeing the pool key.
const SUBKEY_LABEL: &[u8] = b"cowfs-pseudonym-key-v1";

fn subkey(key: &[u8]) -> Option<[u8; 32]> {
    if key.len() < MIN_KEY_LEN {
        return None;
    }
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    m.update(SUBKEY_LABEL);
    Some(m.finalize().into_bytes().into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sub-key handed to hooks as `$COWFS_HOOK_KEY` (64 hex digits); None if the
/// key is shorter than `MIN_KEY_LEN`.
pub fn hook_key_hex(key: &[u8]) -> Option<String> {
    subkey(key).map(|k| hex(&k))
}

impl Pseudonymizer {
    /// None if the key is shorter than `MIN_KEY_LEN`.
    pub fn new(key: &[u8]) -> Option<Pseudonymizer> {
        Some(Pseudonymizer {
            mac: HmacSha256::new_from_slice(&subkey(key)?).ok()?,
        })
    }

    fn stream(&self, domain: &str, value: &[u8]) -> Stream {
        let mut base = self.mac.clone();
        base.update(domain.as_bytes());
        base.update(&[0]);
        base.update(value);
        Stream {
            base,
            counter: 0,
            block: [0; 32],
            pos: 32,
        }
    }

    /// The pseudonym of `v`, a value found by a detector of `kind` called `name`.
    pub fn pseudonym(&self, kind: Kind, name: &str, v: &[u8]) -> Vec<u8> {
        match kind {
            Kind::Email => self.email(v),
            Kind::Phone => self.phone(v),
            Kind::Card => self.card(v),
            Kind::Ipv4 => self.ipv4(v),
            Kind::Ipv6 => self.ipv6(v),
            Kind::Iban => self.iban(v),
            Kind::Custom => self.shaped(name, v),
        }
    }

    /// `u` + 11 hex digits `@` 8 letters `.example` (a reserved TLD, so a staging
    /// system can never mail a real person). The hex digits are the start of
    /// HMAC(sub-key, "email-local" 0x00 lower-case email 0x00000000), the letters
    /// the start of the same over "email-domain" and the domain, digits mapped to
    /// g..p: plain enough to recompute in SQL (examples/pg-sanitize.sql), so a
    /// database and the files of one clone agree.
    fn email(&self, v: &[u8]) -> Vec<u8> {
        let lower = v.to_ascii_lowercase();
        let at = lower
            .iter()
            .rposition(|&b| b == b'@')
            .unwrap_or(lower.len());
        let domain = lower.get(at + 1..).unwrap_or_default();
        let mut s = self.stream("email-local", &lower);
        let local: Vec<u8> = (0..6).map(|_| s.byte()).collect();
        let mut out = b"u".to_vec();
        out.extend_from_slice(&hex(&local).as_bytes()[..11]);
        out.push(b'@');
        let mut d = self.stream("email-domain", domain);
        let dom: Vec<u8> = (0..4).map(|_| d.byte()).collect();
        out.extend(hex(&dom).bytes().map(|c| {
            if c.is_ascii_digit() {
                c - b'0' + b'g'
            } else {
                c
            }
        }));
        out.extend_from_slice(b".example");
        out
    }

    /// Same separators and digit count; a `+` country code is kept.
    fn phone(&self, v: &[u8]) -> Vec<u8> {
        let digits: Vec<u8> = v.iter().copied().filter(u8::is_ascii_digit).collect();
        let keep = if v.first() == Some(&b'+') {
            let run = v[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if run <= 3 && run + 1 < v.len() {
                run
            } else {
                1
            }
        } else {
            0
        };
        let mut s = self.stream("phone", &digits);
        loop {
            let mut seen = 0;
            let out: Vec<u8> = v
                .iter()
                .map(|&b| {
                    if !b.is_ascii_digit() {
                        return b;
                    }
                    seen += 1;
                    if seen <= keep {
                        b
                    } else if seen == keep + 1 {
                        b'2' + s.below(8)
                    } else {
                        s.digit()
                    }
                })
                .collect();
            if out != v {
                return out;
            }
        }
    }

    /// Same length and separators, same first digit, Luhn-valid.
    fn card(&self, v: &[u8]) -> Vec<u8> {
        let digits: Vec<u8> = v.iter().copied().filter(u8::is_ascii_digit).collect();
        let n = digits.len();
        let mut s = self.stream("card", &digits);
        loop {
            let mut new = Vec::with_capacity(n);
            new.push(digits.first().copied().unwrap_or(b'4') - b'0');
            while new.len() + 1 < n {
                new.push(s.below(10));
            }
            let sum = luhn_sum(new.iter().rev().copied(), true);
            new.push(((10 - sum % 10) % 10) as u8);
            let mut it = new.iter();
            let out: Vec<u8> = v
                .iter()
                .map(|&b| {
                    if b.is_ascii_digit() {
                        it.next().map_or(b'0', |d| b'0' + d)
                    } else {
                        b
                    }
                })
                .collect();
            if out != v {
                return out;
            }
        }
    }

    /// A valid unicast IPv4 address (first octet 1..=223, not 127).
    fn ipv4(&self, v: &[u8]) -> Vec<u8> {
        let mut s = self.stream("ipv4", v);
        loop {
            let a = 1 + s.below(223);
            if a == 127 {
                continue;
            }
            let out = format!("{a}.{}.{}.{}", s.byte(), s.byte(), 1 + s.below(254)).into_bytes();
            if out != v {
                return out;
            }
        }
    }

    /// An address in the documentation prefix 2001:db8::/32.
    fn ipv6(&self, v: &[u8]) -> Vec<u8> {
        let canon = std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.parse::<Ipv6Addr>().ok())
            .map_or_else(|| v.to_vec(), |a| a.octets().to_vec());
        let mut s = self.stream("ipv6", &canon);
        let mut o = [0u8; 16];
        o[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        for b in &mut o[4..] {
            *b = s.byte();
        }
        Ipv6Addr::from(o).to_string().into_bytes()
    }

    /// Same country code, length, letter/digit positions and spaces; valid check
    /// digits.
    fn iban(&self, v: &[u8]) -> Vec<u8> {
        let compact: Vec<u8> = v.iter().copied().filter(|&b| b != b' ').collect();
        let mut s = self.stream("iban", &compact);
        loop {
            let mut new = compact.clone();
            if new.len() >= 4 {
                new[2] = b'0';
                new[3] = b'0';
            }
            for b in new.iter_mut().skip(4) {
                *b = if b.is_ascii_digit() {
                    s.digit()
                } else {
                    b'A' + s.below(26)
                };
            }
            if let (Some(m), true) = (iban_mod97(&new), new.len() >= 4) {
                let check = 98 - m;
                new[2] = b'0' + (check / 10) as u8;
                new[3] = b'0' + (check % 10) as u8;
            }
            let mut it = new.iter();
            let out: Vec<u8> = v
                .iter()
                .map(|&b| {
                    if b == b' ' {
                        b
                    } else {
                        it.next().copied().unwrap_or(b)
                    }
                })
                .collect();
            if out != v {
                return out;
            }
        }
    }

    /// Custom patterns: digits stay digits, letters stay letters of the same case
    /// (other letters become lower-case ASCII), everything else is kept. Every
    /// numeric character counts as a digit, not only ASCII ones: a custom regex is
    /// Unicode (`\d` matches "١٢٣" and "１２３"), and a digit kept as it was would
    /// survive in the clone (for a value of such digits alone, `out == v` forever).
    fn shaped(&self, name: &str, v: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(v);
        let mut s = self.stream(&format!("custom:{name}"), v);
        loop {
            let mut out = Vec::with_capacity(v.len());
            for c in text.chars() {
                if c.is_numeric() {
                    out.push(s.digit());
                } else if c.is_ascii_uppercase() {
                    out.push(s.lower().to_ascii_uppercase());
                } else if c.is_alphabetic() {
                    out.push(s.lower());
                } else {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
            if out != v || !text.chars().any(char::is_alphanumeric) {
                return out;
            }
        }
    }
}

/// `c` once per character of `v`.
pub fn mask(v: &[u8], c: char) -> Vec<u8> {
    let n = String::from_utf8_lossy(v).chars().count();
    let mut buf = [0u8; 4];
    c.encode_utf8(&mut buf).as_bytes().repeat(n)
}

#[cfg(test)]
mod tests {
    use super::super::detect::{iban_ok, luhn_ok, Detector};
    use super::*;

    fn p() -> Pseudonymizer {
        Pseudonymizer::new(b"0123456789abcdef-test-key").unwrap()
    }

    fn detects(name: &str, v: &[u8]) -> bool {
        let mut out = Vec::new();
        for d in Detector::builtin(name).unwrap() {
            d.find(v, 0, v.len(), &mut out);
        }
        out == [(0, v.len())]
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(Pseudonymizer::new(b"short").is_none());
        assert!(hook_key_hex(b"short").is_none());
        assert_eq!(hook_key_hex(b"0123456789abcdef").map(|h| h.len()), Some(64));
    }

    #[test]
    fn email_format_is_the_sql_one() {
        let e = p().pseudonym(Kind::Email, "email", b"Ann@Example.com");
        let e = String::from_utf8(e).unwrap();
        let (local, domain) = e.split_once('@').unwrap();
        assert!(local.len() == 12 && local.starts_with('u'));
        assert!(local[1..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let name = domain.strip_suffix(".example").unwrap();
        assert!(
            name.len() == 8 && name.chars().all(|c| ('a'..='p').contains(&c)),
            "{e}"
        );
    }

    #[test]
    fn deterministic_and_keyed() {
        let a = p().pseudonym(Kind::Email, "email", b"Ann@Example.com");
        assert_eq!(a, p().pseudonym(Kind::Email, "email", b"ann@example.com"));
        let other = Pseudonymizer::new(b"another-key-of-16+bytes").unwrap();
        assert_ne!(a, other.pseudonym(Kind::Email, "email", b"ann@example.com"));
        assert_ne!(a, p().pseudonym(Kind::Email, "email", b"bob@example.com"));
    }

    #[test]
    fn shapes_are_kept() {
        let p = p();
        let e = p.pseudonym(Kind::Email, "email", b"john.smith@corp.example.org");
        assert!(detects("email", &e), "{}", String::from_utf8_lossy(&e));
        // Same domain -> same pseudonymous domain.
        let e2 = p.pseudonym(Kind::Email, "email", b"jane@corp.example.org");
        assert_eq!(
            e.split(|&b| b == b'@').nth(1),
            e2.split(|&b| b == b'@').nth(1)
        );

        for card in [
            &b"4111 1111 1111 1111"[..],
            b"5500-0000-0000-0004",
            b"378282246310005",
        ] {
            let c = p.pseudonym(Kind::Card, "card", card);
            assert_eq!(c.len(), card.len());
            assert!(luhn_ok(&c) && c != card && c[0] == card[0]);
            for (a, b) in c.iter().zip(card) {
                assert_eq!(a.is_ascii_digit(), b.is_ascii_digit());
            }
        }

        let ph = p.pseudonym(Kind::Phone, "phone", b"+44 20 7946 0958");
        assert!(ph.starts_with(b"+44 ") && ph.len() == 16 && ph != b"+44 20 7946 0958");
        assert!(detects("phone", &ph));
        let ph = p.pseudonym(Kind::Phone, "phone", b"(555) 123-4567");
        assert!(detects("phone", &ph), "{}", String::from_utf8_lossy(&ph));

        let ip = p.pseudonym(Kind::Ipv4, "ipv4", b"10.1.2.3");
        assert!(String::from_utf8(ip)
            .unwrap()
            .parse::<std::net::Ipv4Addr>()
            .is_ok());
        let ip6 = p.pseudonym(Kind::Ipv6, "ipv6", b"fe80::1:2");
        assert!(String::from_utf8(ip6).unwrap().parse::<Ipv6Addr>().is_ok());

        let iban = b"GB82 WEST 1234 5698 7654 32";
        let i = p.pseudonym(Kind::Iban, "iban", iban);
        assert!(iban_ok(&i) && i.starts_with(b"GB") && i.len() == iban.len() && i != iban);

        let c = p.pseudonym(Kind::Custom, "emp", b"EMP-123456");
        assert!(c.len() == 10 && c[3] == b'-' && c != b"EMP-123456");
        assert!(c[..3].iter().all(u8::is_ascii_uppercase));
    }

    /// A custom `\d` is Unicode: values of non-ASCII digits must not survive,
    /// and their pseudonym must not loop forever.
    #[test]
    fn custom_values_of_non_ascii_digits() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let p = p();
            let all = p.pseudonym(Kind::Custom, "id", "١٢٣٤٥٦".as_bytes());
            let mixed = p.pseudonym(Kind::Custom, "emp", "EMP-１２３４５６".as_bytes());
            let _ = tx.send((all, mixed));
        });
        let (all, mixed) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the pseudonym of \"١٢٣٤٥٦\" never returns");
        assert!(
            all.len() == 6 && all.iter().all(u8::is_ascii_digit),
            "{}",
            String::from_utf8_lossy(&all)
        );
        let mixed = String::from_utf8(mixed).unwrap();
        assert!(!mixed.contains("１２３４５６"), "{mixed}");
        assert!(
            mixed.len() == 10 && mixed[4..].bytes().all(|b| b.is_ascii_digit()),
            "{mixed}"
        );
    }

    #[test]
    fn masks() {
        assert_eq!(mask(b"abc", '*'), b"***");
        assert_eq!(mask("é1".as_bytes(), '#'), b"##");
        assert_eq!(mask(b"ab", '•'), "••".as_bytes());
    }
}
