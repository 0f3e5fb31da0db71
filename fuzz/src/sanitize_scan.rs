//! Redaction of file contents by sanitize's `redact` rules: the scanner reads
//! whatever the files of a clone hold, in chunks with a carry between them, and
//! replaces what the detectors find (pseudonyms, masks, or nothing). Any bytes
//! must be scanned without a panic or a hang, and where the chunks are cut must
//! not change the output: the engine reads in chunks, so a value found in the
//! whole file but missed at a chunk edge would stay in the clone.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use cowfs::control::sanitize::config::{Redactor, Replacement};
use cowfs::control::sanitize::detect::Detector;
use cowfs::control::sanitize::pseudo::Pseudonymizer;
use cowfs::control::sanitize::scan::Scanner;

/// Every built-in detector, and two custom patterns (Unicode classes, so that
/// custom pseudonyms see non-ASCII values); values are bounded in length, as the
/// scanner's carry requires.
fn redactors(with: usize) -> &'static [Redactor] {
    static ALL: OnceLock<Vec<Vec<Redactor>>> = OnceLock::new();
    &ALL.get_or_init(|| {
        let withs = [
            Replacement::Pseudonym,
            Replacement::Mask('#'),
            Replacement::Drop,
        ];
        withs
            .iter()
            .map(|&with| {
                let mut ds: Vec<Detector> = ["email", "phone", "card", "ip", "iban"]
                    .iter()
                    .flat_map(|n| Detector::builtin(n).expect("built-in detector"))
                    .collect();
                ds.push(Detector::custom("ticket", r"\b[A-Z]{2}-\d{4,8}\b").expect("regex"));
                ds.push(Detector::custom("token", r"(?i)token=\w{6,20}").expect("regex"));
                ds.into_iter()
                    .map(|detector| Redactor { detector, with })
                    .collect()
            })
            .collect()
    })[with]
}

fn scan(redactors: &[&Redactor], input: &[u8], chunk: usize) -> (Vec<u8>, BTreeMap<String, u64>) {
    static PSEUDO: OnceLock<Pseudonymizer> = OnceLock::new();
    let pseudo = PSEUDO.get_or_init(|| Pseudonymizer::new(&[7u8; 32]).expect("key"));
    let mut sc = Scanner::new(redactors, pseudo);
    let mut out = Vec::new();
    if input.is_empty() {
        sc.feed(&[], true, &mut out);
    }
    let mut chunks = input.chunks(chunk).peekable();
    while let Some(c) = chunks.next() {
        sc.feed(c, chunks.peek().is_none(), &mut out);
    }
    (out, sc.counts)
}

/// Input: replacement (1 byte), chunk size (2), how many times the text repeats
/// (1), text. Repeated up to 256 times (at most 64 KiB): below `MAX_VALUE_LEN`
/// (4 KiB) the scanner holds everything back until the end, so only longer
/// files are really cut.
pub fn sanitize_scan(data: &[u8]) {
    let [with, c0, c1, repeat, text @ ..] = data else {
        return;
    };
    let refs: Vec<&Redactor> = redactors(usize::from(*with) % 3).iter().collect();
    // At least 256 bytes a chunk: smaller ones are no different in kind and
    // would make each input slow (every chunk rescans the carry).
    let chunk = 256 + usize::from(u16::from_le_bytes([*c0, *c1])) % 8192;
    let mut input = text.repeat(usize::from(*repeat) + 1);
    input.truncate(64 << 10);
    let whole = scan(&refs, &input, input.len().max(1));
    let chunked = scan(&refs, &input, chunk);
    if whole != chunked {
        let at = whole
            .0
            .iter()
            .zip(&chunked.0)
            .take_while(|(a, b)| a == b)
            .count();
        let around = |o: &[u8]| {
            String::from_utf8_lossy(&o[at.saturating_sub(60)..(at + 60).min(o.len())]).into_owned()
        };
        panic!(
            "chunks of {chunk} bytes change the output at byte {at} (whole {:?} / chunked {:?}; counts {:?} / {:?})",
            around(&whole.0),
            around(&chunked.0),
            whole.1,
            chunked.1
        );
    }
}
