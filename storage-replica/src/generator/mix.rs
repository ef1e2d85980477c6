//! Deterministic pseudo-random numbers: a hash of the inputs, so a value
//! depends only on what it is the value of, never on what came before.

/// The SplitMix64 finalizer: a bijection on `u64` that scatters its input.
#[must_use]
pub(super) fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash of `parts`, in order.
#[must_use]
pub(super) fn hash(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x243f_6a88_85a3_08d3, |state, part| mix(state ^ mix(*part)))
}

/// A number in `0..bound` derived from `parts` (`bound` at least 1).
#[must_use]
pub(super) fn below(bound: u64, parts: &[u64]) -> u64 {
    hash(parts) % bound
}
