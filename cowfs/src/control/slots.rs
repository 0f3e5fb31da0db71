//! Connection slots: at most `max_clients` connections at once, and at most half
//! of them (rounded up) for any one user other than the daemon's own. Anyone who
//! may connect to the socket (its group), token or not, could otherwise hold
//! every slot with connections that never send a hello, each for the whole
//! hello deadline, opening new ones as the old ones are closed: the daemon then
//! answers everyone else, admins included, `too_many_clients`. Users are told
//! apart by the kernel (`SO_PEERCRED`), not by anything a client sends.

use std::collections::HashMap;

use parking_lot::Mutex;

/// Why a connection got no slot.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Full {
    /// `max_clients` connections are served.
    All(usize),
    /// This user already holds its share (the count given).
    User(usize),
}

pub(super) struct Slots {
    max: usize,
    /// The daemon's own user: it may use every slot (it could stop the daemon
    /// anyway).
    own_uid: u32,
    /// Connections served, in all and per user.
    used: Mutex<(usize, HashMap<Option<u32>, usize>)>,
}

impl Slots {
    pub(super) fn new(max: usize, own_uid: u32) -> Slots {
        Slots {
            max,
            own_uid,
            used: Mutex::new((0, HashMap::new())),
        }
    }

    /// The most connections one user other than the daemon's may hold.
    pub(super) fn per_user(&self) -> usize {
        self.max.div_ceil(2)
    }

    /// Take a slot for a connection of `uid`; give it back with `give_back`.
    pub(super) fn take(&self, uid: Option<u32>) -> Result<(), Full> {
        let mut used = self.used.lock();
        if used.0 >= self.max {
            return Err(Full::All(self.max));
        }
        let mine = used.1.get(&uid).copied().unwrap_or(0);
        if uid != Some(self.own_uid) && mine >= self.per_user() {
            return Err(Full::User(mine));
        }
        used.0 += 1;
        used.1.insert(uid, mine + 1);
        Ok(())
    }

    pub(super) fn give_back(&self, uid: Option<u32>) {
        let mut used = self.used.lock();
        used.0 = used.0.saturating_sub(1);
        if let Some(n) = used.1.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                used.1.remove(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_gets_half_the_slots_and_the_daemons_user_all() {
        let s = Slots::new(5, 0);
        for _ in 0..3 {
            s.take(Some(1000)).expect("within its share");
        }
        assert_eq!(s.take(Some(1000)), Err(Full::User(3)));
        assert_eq!(s.take(None), Ok(()));
        assert_eq!(s.take(Some(0)), Ok(()));
        assert_eq!(s.take(Some(0)), Err(Full::All(5)));
        s.give_back(Some(1000));
        assert_eq!(s.take(Some(1000)), Ok(()));
        assert_eq!(s.take(Some(1000)), Err(Full::All(5)));
        s.give_back(Some(0));
        assert_eq!(s.take(Some(0)), Ok(()));
    }
}
