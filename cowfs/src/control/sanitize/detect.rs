//! Value detectors: a candidate regex over bytes plus a check (Luhn for cards,
//! mod-97 for IBANs, octet ranges for IPv4, a real parse for IPv6, digit counts
//! and boundaries for phone numbers). All built-in patterns are ASCII and bounded
//! in length, so a scanner that keeps `MAX_VALUE_LEN` bytes of overlap between
//! chunks finds every value, wherever the chunks are cut.

use std::net::Ipv6Addr;
use std::sync::LazyLock;

use regex::bytes::{Regex, RegexBuilder};

/// Longest value a detector reports; the scanner's chunk overlap. Custom patterns
/// whose values are longer are found only when they do not straddle a chunk edge.
pub const MAX_VALUE_LEN: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Email,
    Phone,
    Card,
    Ipv4,
    Ipv6,
    Iban,
    Custom,
}

#[derive(Clone, Debug)]
pub struct Detector {
    pub kind: Kind,
    /// "email", "phone", ... or the custom pattern's name: the report's key.
    pub name: String,
    re: Regex,
}

fn builtin_re(src: &str) -> Regex {
    // Constant patterns, covered by the unit tests below.
    RegexBuilder::new(src)
        .unicode(false)
        .build()
        .expect("built-in detector pattern compiles")
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    builtin_re(
        r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?){0,8}\.[A-Za-z]{2,24}",
    )
});
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    builtin_re(
        r"(?:\+\d{1,3}(?:[ .\-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}|\(\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}|\b\d{3}[.\-]\d{3}[.\-]\d{4})\b",
    )
});
static CARD: LazyLock<Regex> = LazyLock::new(|| builtin_re(r"\b(?:\d[ \-]?){12,18}\d\b"));
static IPV4: LazyLock<Regex> = LazyLock::new(|| builtin_re(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"));
static IPV6: LazyLock<Regex> =
    LazyLock::new(|| builtin_re(r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}"));
static IBAN: LazyLock<Regex> =
    LazyLock::new(|| builtin_re(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"));

impl Detector {
    /// Built-in detectors by config name ("ip" is both IPv4 and IPv6).
    pub fn builtin(name: &str) -> Option<Vec<Detector>> {
        let one = |kind, name: &str, re: &Regex| Detector {
            kind,
            name: name.to_string(),
            re: re.clone(),
        };
        Some(match name {
            "email" => vec![one(Kind::Email, "email", &EMAIL)],
            "phone" => vec![one(Kind::Phone, "phone", &PHONE)],
            "card" => vec![one(Kind::Card, "card", &CARD)],
            "ipv4" => vec![one(Kind::Ipv4, "ipv4", &IPV4)],
            "ipv6" => vec![one(Kind::Ipv6, "ipv6", &IPV6)],
            "ip" => vec![
                one(Kind::Ipv4, "ipv4", &IPV4),
                one(Kind::Ipv6, "ipv6", &IPV6),
            ],
            "iban" => vec![one(Kind::Iban, "iban", &IBAN)],
            _ => return None,
        })
    }

    /// A custom pattern (Rust `regex` syntax, matched over bytes).
    pub fn custom(name: &str, pattern: &str) -> Result<Detector, String> {
        if name.is_empty() {
            return Err("pattern name is empty".into());
        }
        let re = RegexBuilder::new(pattern)
            .size_limit(16 << 20)
            .build()
            .map_err(|e| format!("bad regex: {e}"))?;
        if re.is_match(b"") {
            return Err("regex matches the empty string".into());
        }
        Ok(Detector {
            kind: Kind::Custom,
            name: name.to_string(),
            re,
        })
    }

    /// Push every value starting in `from..limit` of `buf` as (start, end). Bytes
    /// before `from` and after `limit` are context only.
    pub fn find(&self, buf: &[u8], from: usize, limit: usize, out: &mut Vec<(usize, usize)>) {
        let mut pos = from;
        while let Some((s, e)) = self.next(buf, pos, limit) {
            out.push((s, e));
            pos = e;
        }
    }

    /// The first value starting in `from..limit` of `buf`, as (start, end).
    pub fn next(&self, buf: &[u8], from: usize, limit: usize) -> Option<(usize, usize)> {
        let mut pos = from;
        while pos < limit {
            let m = self.re.find_at(buf, pos)?;
            if m.start() >= limit {
                return None;
            }
            if m.end() > m.start() && self.accept(buf, m.start(), m.end()) {
                return Some((m.start(), m.end()));
            }
            pos = m.start() + 1;
        }
        None
    }

    fn accept(&self, buf: &[u8], s: usize, e: usize) -> bool {
        let v = &buf[s..e];
        let before = s.checked_sub(1).map(|i| buf[i]);
        let after = buf.get(e).copied();
        match self.kind {
            Kind::Email | Kind::Custom => true,
            Kind::Phone => {
                let n = digits(v);
                (7..=15).contains(&n)
                    && !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'+')
            }
            Kind::Card => {
                let n = digits(v);
                (13..=19).contains(&n) && luhn_ok(v)
            }
            Kind::Ipv4 => {
                ipv4_ok(v)
                    && before != Some(b'.')
                    && (after != Some(b'.') || !buf.get(e + 1).is_some_and(u8::is_ascii_digit))
            }
            Kind::Ipv6 => {
                let edge =
                    |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b':');
                !edge(before) && !edge(after) && ipv6_ok(v)
            }
            Kind::Iban => iban_ok(v),
        }
    }
}

fn digits(v: &[u8]) -> usize {
    v.iter().filter(|b| b.is_ascii_digit()).count()
}

/// Luhn check over the digits of `v` (separators ignored).
pub fn luhn_ok(v: &[u8]) -> bool {
    luhn_sum(
        v.iter()
            .filter(|b| b.is_ascii_digit())
            .map(|b| b - b'0')
            .rev(),
        false,
    ) % 10
        == 0
}

/// Luhn sum of digits given from the rightmost; `double_first` says whether the
/// first digit given sits at a doubled position.
pub fn luhn_sum(rev_digits: impl Iterator<Item = u8>, double_first: bool) -> u32 {
    rev_digits
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d);
            if (i % 2 == 1) != double_first {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum()
}

fn ipv4_ok(v: &[u8]) -> bool {
    v.split(|&b| b == b'.').all(|o| {
        !o.is_empty()
            && o.len() <= 3
            && (o.len() == 1 || o[0] != b'0')
            && o.iter().fold(0u32, |a, &b| a * 10 + u32::from(b - b'0')) <= 255
    })
}

fn ipv6_ok(v: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(v) else {
        return false;
    };
    match s.parse::<Ipv6Addr>() {
        Ok(a) => !a.is_loopback() && !a.is_unspecified(),
        Err(_) => false,
    }
}

/// IBAN check: 15..=34 characters (spaces ignored), mod 97 of the rearranged
/// number is 1.
pub fn iban_ok(v: &[u8]) -> bool {
    let c: Vec<u8> = v.iter().copied().filter(|&b| b != b' ').collect();
    (15..=34).contains(&c.len()) && iban_mod97(&c) == Some(1)
}

/// mod 97 of an IBAN's numeric form (first four characters moved to the end,
/// letters as 10..35); None if a character is not A-Z or 0-9.
pub fn iban_mod97(compact: &[u8]) -> Option<u32> {
    if compact.len() < 4 {
        return None;
    }
    let mut r = 0u32;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        r = match b {
            b'0'..=b'9' => (r * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (r * 100 + u32::from(b - b'A' + 10)) % 97,
            _ => return None,
        };
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for d in Detector::builtin(name).unwrap() {
            d.find(text.as_bytes(), 0, text.len(), &mut out);
        }
        out.iter().map(|&(s, e)| text[s..e].to_string()).collect()
    }

    #[test]
    fn emails() {
        assert_eq!(
            found("email", "mailto:Ann.Lee+x@mail.example.co.uk, bob@x.io."),
            ["Ann.Lee+x@mail.example.co.uk", "bob@x.io"]
        );
        assert!(found("email", "user@localhost a@b").is_empty());
    }

    #[test]
    fn phones() {
        assert_eq!(
            found(
                "phone",
                "call +44 20 7946 0958 or (555) 123-4567, 555.123.4567; date 2024-01-15"
            ),
            ["+44 20 7946 0958", "(555) 123-4567", "555.123.4567"]
        );
        assert!(found("phone", "id 1555-123-45678 x+1").is_empty());
    }

    #[test]
    fn cards() {
        assert_eq!(
            found(
                "card",
                "4111 1111 1111 1111;5500-0000-0000-0004,4111111111111112"
            ),
            ["4111 1111 1111 1111", "5500-0000-0000-0004"]
        );
        assert!(luhn_ok(b"79927398713"));
        assert!(!luhn_ok(b"79927398710"));
    }

    #[test]
    fn ips() {
        assert_eq!(
            found(
                "ip",
                "from 192.168.1.20 and 2001:db8::8a2e:370:7334 at 10:30:00"
            ),
            ["192.168.1.20", "2001:db8::8a2e:370:7334"]
        );
        assert!(found(
            "ip",
            "v1.2.3.4.5 256.1.1.1 01.2.3.4 std::vec ::1 aa:bb:cc:dd:ee:ff"
        )
        .is_empty());
    }

    #[test]
    fn ibans() {
        assert_eq!(
            found("iban", "IBAN GB82 WEST 1234 5698 7654 32 and DE89370400440532013000 GB82WEST12345698765433"),
            ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"]
        );
    }

    #[test]
    fn custom_patterns() {
        let d = Detector::custom("emp", "EMP-[0-9]{6}").unwrap();
        let mut out = Vec::new();
        d.find(b"a EMP-123456 b EMP-12", 0, 21, &mut out);
        assert_eq!(out, [(2, 12)]);
        assert!(Detector::custom("e", "x*").is_err());
        assert!(Detector::custom("e", "(").is_err());
    }

    #[test]
    fn limit_and_context() {
        let d = &Detector::builtin("email").unwrap()[0];
        let text = b"a@b.cc x@y.zz";
        let mut out = Vec::new();
        d.find(text, 0, 7, &mut out);
        assert_eq!(out, [(0, 6)]);
        out.clear();
        d.find(text, 1, 7, &mut out);
        assert!(out.is_empty());
    }
}
