//! The engine's timers: one slot per kind, each armed with a fresh
//! generation so that a token fired after a re-arm is recognised as stale.

use super::io::{TimerKind, Token};
use crate::core::ids::Mono;

/// Armed timers, one slot per [`TimerKind`].
#[derive(Clone, Debug, Default)]
pub(super) struct Timers {
    slots: [Option<(Mono, u64)>; TimerKind::ALL.len()],
    generation: u64,
}

impl Timers {
    /// Arms `kind` at `at`, replacing whatever it was armed with.
    pub(super) fn arm(&mut self, kind: TimerKind, at: Mono) {
        self.generation += 1;
        self.slots[kind.index()] = Some((at, self.generation));
    }

    /// Arms `kind` at `at` unless it is armed already for an earlier time.
    pub(super) fn arm_by(&mut self, kind: TimerKind, at: Mono) {
        match self.slots[kind.index()] {
            Some((t, _)) if t <= at => {}
            _ => self.arm(kind, at),
        }
    }

    /// When `kind` is armed for, if it is.
    pub(super) fn armed_at(&self, kind: TimerKind) -> Option<Mono> {
        self.slots[kind.index()].map(|(at, _)| at)
    }

    /// True when `kind` is armed.
    pub(super) fn is_armed(&self, kind: TimerKind) -> bool {
        self.slots[kind.index()].is_some()
    }

    /// The earliest armed timer and its token.
    pub(super) fn next(&self) -> Option<(Mono, Token)> {
        TimerKind::ALL
            .iter()
            .filter_map(|&kind| {
                self.slots[kind.index()].map(|(at, generation)| (at, Token { kind, generation }))
            })
            .min()
    }

    /// Takes the timer of `token` if it is current and due at `now`: true
    /// when the caller should act on it. A stale or early token changes
    /// nothing.
    pub(super) fn fire(&mut self, token: Token, now: Mono) -> bool {
        let slot = &mut self.slots[token.kind.index()];
        match *slot {
            Some((at, generation)) if generation == token.generation && at <= now => {
                *slot = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_re_armed_timer_drops_its_old_token_and_early_fires_change_nothing() {
        let mut t = Timers::default();
        t.arm(TimerKind::Tick, Mono(100));
        let (_, old) = t.next().unwrap();
        t.arm(TimerKind::Tick, Mono(200));
        let (at, new) = t.next().unwrap();
        assert_eq!(at, Mono(200));
        assert!(!t.fire(old, Mono(300)), "stale token");
        assert!(!t.fire(new, Mono(150)), "not due yet");
        assert!(t.fire(new, Mono(200)));
        assert!(!t.fire(new, Mono(200)), "fires once");
        assert_eq!(t.next(), None);
    }

    #[test]
    fn the_earliest_timer_comes_first_and_arm_by_keeps_an_earlier_one() {
        let mut t = Timers::default();
        t.arm(TimerKind::Redial, Mono(50));
        t.arm(TimerKind::Tick, Mono(70));
        t.arm_by(TimerKind::Redial, Mono(90));
        assert_eq!(t.next().unwrap().0, Mono(50));
        assert_eq!(t.next().unwrap().1.kind, TimerKind::Redial);
        t.arm_by(TimerKind::Tick, Mono(10));
        assert_eq!(t.next().unwrap().1.kind, TimerKind::Tick);
    }
}
