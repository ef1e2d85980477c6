//! The counter: tick `k` inserts the value `k + 1`; with a maximum
//! cardinality `c` it also retracts the value `k + 1 - c` once `k + 1 > c`,
//! so at most `c` values are live.

use tidemark_storage_types::{Datum, Diff, RelationDesc, Row, ScalarType};

use super::{GeneratorError, int};

/// The generator's name in messages.
pub(super) const NAME: &str = "counter";
/// Its only output, the primary one.
pub(super) const OUTPUT: &str = "counter";

/// The counter's relation: one non-null `Int64` column `counter`.
pub(super) fn relation() -> RelationDesc {
    RelationDesc::empty().with_column("counter", ScalarType::Int64.nullable(false))
}

/// A counter with its parameters checked.
#[derive(Clone, Debug)]
pub(super) struct Counter {
    max_cardinality: Option<u64>,
}

impl Counter {
    pub(super) fn new(max_cardinality: Option<u64>) -> Result<Counter, GeneratorError> {
        if max_cardinality == Some(0) {
            return Err(GeneratorError::InvalidParameter {
                generator: NAME,
                parameter: "max_cardinality",
                value: 0,
                expected: "at least 1",
            });
        }
        Ok(Counter { max_cardinality })
    }

    /// The updates of tick `tick` (at most [`MAX_TICK`](super::MAX_TICK)).
    pub(super) fn tick(&self, tick: u64) -> Vec<(Row, Diff)> {
        let value = tick + 1;
        let row = |value: u64| Row::pack([Datum::Int64(int(value))]);
        let mut updates = vec![(row(value), 1)];
        if let Some(max_cardinality) = self.max_cardinality
            && value > max_cardinality
        {
            updates.push((row(value - max_cardinality), -1));
        }
        updates
    }
}
