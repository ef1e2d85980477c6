//! Memory of recently applied appends, so that a retried
//! `compare_and_append` is recognised and applied at most once.

use std::collections::VecDeque;

use tidemark_storage_types::IdempotencyToken;
use timely::progress::Antichain;

/// How many applied appends each shard remembers. The contract asks for at
/// least 128; remembering twice that costs a few kilobytes per shard.
pub const REMEMBERED_APPENDS: usize = 256;

const _: () = assert!(
    REMEMBERED_APPENDS >= 128,
    "the contract asks for at least 128"
);

/// An append that was applied: its token and the bounds it applied with.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AppliedAppend<T> {
    token: IdempotencyToken,
    expected_upper: Antichain<T>,
    new_upper: Antichain<T>,
}

/// The most recent applied appends of one shard, oldest first, bounded.
#[derive(Debug)]
pub struct AppliedTokens<T> {
    recent: VecDeque<AppliedAppend<T>>,
    capacity: usize,
    /// Whether an applied append was ever forgotten.
    forgot_any: bool,
    /// The empty frontier, the bound of forgotten appends when none is
    /// remembered.
    no_bound: Antichain<T>,
}

impl<T: PartialEq> AppliedTokens<T> {
    /// Remembers the most recent `capacity` appends.
    pub fn with_capacity(capacity: usize) -> Self {
        AppliedTokens {
            recent: VecDeque::with_capacity(capacity),
            capacity,
            forgot_any: false,
            no_bound: Antichain::new(),
        }
    }

    /// Records that the append named `token` applied with these bounds,
    /// forgetting the oldest one when full.
    pub fn record(
        &mut self,
        token: IdempotencyToken,
        expected_upper: Antichain<T>,
        new_upper: Antichain<T>,
    ) {
        if self.capacity == 0 {
            self.forgot_any = true;
            return;
        }
        if self.recent.len() == self.capacity {
            self.recent.pop_front();
            self.forgot_any = true;
        }
        self.recent.push_back(AppliedAppend {
            token,
            expected_upper,
            new_upper,
        });
    }

    /// Whether the append named `token` applied with exactly these bounds.
    /// A token reused with other bounds is a different write and does not
    /// match.
    pub fn applied(
        &self,
        token: &IdempotencyToken,
        expected_upper: &Antichain<T>,
        new_upper: &Antichain<T>,
    ) -> bool {
        self.recent.iter().rev().any(|applied| {
            applied.token == *token
                && applied.expected_upper == *expected_upper
                && applied.new_upper == *new_upper
        })
    }

    /// The `expected_upper` of the oldest remembered append once some
    /// applied append was forgotten (every forgotten one applied before
    /// it), or `None` while every applied append is remembered. With no
    /// capacity, every append is forgotten and nothing bounds them: the
    /// minimal frontier is not known here, so the empty frontier (which
    /// every `new_upper` is `<=`) stands for "anything".
    pub fn oldest_remembered_lower(&self) -> Option<&Antichain<T>> {
        if !self.forgot_any {
            return None;
        }
        Some(
            self.recent
                .front()
                .map_or(&self.no_bound, |oldest| &oldest.expected_upper),
        )
    }

    /// How many appends are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(lower: u64, upper: u64) -> (Antichain<u64>, Antichain<u64>) {
        (Antichain::from_elem(lower), Antichain::from_elem(upper))
    }

    #[test]
    fn recognises_a_token_only_with_its_bounds() {
        let mut tokens = AppliedTokens::with_capacity(4);
        let token = IdempotencyToken::new();
        let (expected, new) = bounds(0, 5);
        assert!(!tokens.applied(&token, &expected, &new));
        tokens.record(token, expected.clone(), new.clone());
        assert!(tokens.applied(&token, &expected, &new));
        let (other_expected, other_new) = bounds(5, 9);
        assert!(!tokens.applied(&token, &other_expected, &other_new));
        assert!(!tokens.applied(&IdempotencyToken::new(), &expected, &new));
    }

    #[test]
    fn remembers_exactly_the_most_recent_capacity() {
        let mut tokens = AppliedTokens::with_capacity(REMEMBERED_APPENDS);
        let recorded: Vec<_> = (0..REMEMBERED_APPENDS as u64 + 10)
            .map(|step| {
                let token = IdempotencyToken::new();
                let (expected, new) = bounds(step, step + 1);
                tokens.record(token, expected, new);
                (token, step)
            })
            .collect();
        assert_eq!(tokens.len(), REMEMBERED_APPENDS);
        for (index, (token, step)) in recorded.iter().enumerate() {
            let (expected, new) = bounds(*step, step + 1);
            let remembered = tokens.applied(token, &expected, &new);
            assert_eq!(remembered, index >= 10, "token of step {step}");
        }
    }

    #[test]
    fn forgotten_appends_are_bounded_by_the_oldest_remembered() {
        let mut tokens = AppliedTokens::with_capacity(2);
        for step in 0..2 {
            let (expected, new) = bounds(step, step + 1);
            tokens.record(IdempotencyToken::new(), expected, new);
        }
        assert_eq!(tokens.oldest_remembered_lower(), None);
        let (expected, new) = bounds(2, 3);
        tokens.record(IdempotencyToken::new(), expected, new);
        assert_eq!(
            tokens.oldest_remembered_lower(),
            Some(&Antichain::from_elem(1))
        );
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut tokens = AppliedTokens::with_capacity(0);
        let (expected, new) = bounds(0, 1);
        let token = IdempotencyToken::new();
        tokens.record(token, expected.clone(), new.clone());
        assert!(!tokens.applied(&token, &expected, &new));
    }
}
