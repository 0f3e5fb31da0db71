//! Tree keys: (object id, item kind, offset), compared in that order, btrfs style.

use crate::store::le::*;

pub const KEY_SIZE: usize = 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key {
    pub id: u64,
    pub kind: u8,
    pub off: u64,
}

impl Key {
    pub const MIN: Key = Key {
        id: 0,
        kind: 0,
        off: 0,
    };
    pub const MAX: Key = Key {
        id: u64::MAX,
        kind: u8::MAX,
        off: u64::MAX,
    };

    pub fn new(id: u64, kind: u8, off: u64) -> Key {
        Key { id, kind, off }
    }

    pub fn encode(&self, b: &mut [u8], at: usize) {
        put_u64(b, at, self.id);
        b[at + 8] = self.kind;
        put_u64(b, at + 9, self.off);
    }

    pub fn decode(b: &[u8], at: usize) -> Key {
        Key {
            id: u64_at(b, at),
            kind: b[at + 8],
            off: u64_at(b, at + 9),
        }
    }
}
