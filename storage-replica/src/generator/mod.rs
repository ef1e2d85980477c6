//! Load generators: what an ingestion of a
//! [`SourceConnection::LoadGenerator`] writes.
//!
//! # Ticks and times
//!
//! A generator counts in ticks `0, 1, 2, ...`. Tick `k` is written at the
//! time [`tick_time(k)`](tick_time), the `k`-th time after `T::minimum()` in
//! [`Codec64`](tidemark_storage_types::Codec64) order (`T::decode(T::minimum().encode() + k)`), and once it
//! is written the outputs' upper is [`upper_after(k)`](upper_after), the
//! time of tick `k + 1`. So an ingestion resuming at upper `U` starts at
//! tick [`time_tick(U)`](time_tick) and writes exactly what an ingestion
//! that never stopped would have written from there: every output of every
//! tick is a pure function of the description and the tick number (no
//! clock, no global random number generator, no state carried between
//! ticks).
//!
//! Ticks run from 0 to [`MAX_TICK`] at most (and to the last time `T` can
//! represent): past that [`tick_time`] is `None` and a generator writes
//! nothing more.
//!
//! # Outputs
//!
//! A generator has one or more named outputs, each with a relation; the
//! ingestion's own collection receives the [`primary`](Generator::primary)
//! output and each source export the output it names (see
//! [`IngestionDescription::source_exports`]). Alongside them an ingestion
//! writes its progress collection with [`Generator::progress`].
//!
//! | generator | outputs (primary first) |
//! |---|---|
//! | counter | `counter` |
//! | auction | `auction` (always empty), `organizations`, `users`, `accounts`, `auctions`, `bids` |
//! | key-value | `key_value` |

mod auction;
mod counter;
mod key_value;
mod mix;

use std::collections::BTreeMap;
use std::time::Duration;

use differential_dataflow::consolidation::consolidate;
use tidemark_storage_types::{
    Datum, Diff, GlobalId, IngestionDescription, LoadGenerator, RelationDesc, Row, ScalarType,
    SourceConnection, StorageTimestamp,
};
use timely::progress::Antichain;

pub use key_value::{MAX_BATCH_SIZE, MAX_TICK_BYTES, MAX_VALUE_SIZE};

/// The last tick any generator writes. Keeping ticks below 2^60 keeps every
/// number a generator derives from them (counter values, offsets, bid ids)
/// inside `i64`; at a million ticks a second it lasts 36,000 years.
pub const MAX_TICK: u64 = (1 << 60) - 1;

/// The time tick `tick` is written at: `T::decode(T::minimum().encode() +
/// tick)`, or `None` past [`MAX_TICK`] or past the last time `T` encodes.
///
/// ```
/// use tidemark_storage_replica::generator::{tick_time, time_tick, MAX_TICK};
/// assert_eq!(tick_time::<u64>(0), Some(0));
/// assert_eq!(tick_time::<u64>(7), Some(7));
/// assert_eq!(time_tick(&7u64), 7);
/// assert_eq!(tick_time::<u64>(MAX_TICK + 1), None);
/// ```
#[must_use]
pub fn tick_time<T: StorageTimestamp>(tick: u64) -> Option<T> {
    if tick > MAX_TICK {
        return None;
    }
    let encoded = i128::from(T::minimum().encode()) + i128::from(tick);
    let encoded = i64::try_from(encoded).ok()?;
    let time = T::decode(encoded);
    // A timestamp type need not use every encoding: only a time that
    // encodes back to the same number is the tick's time.
    (time.encode() == encoded).then_some(time)
}

/// The tick written at `time` (the inverse of [`tick_time`] on the times it
/// gives): how many times after `T::minimum()` it is. A time past the last
/// tick gives a tick that [`tick_time`] maps to `None`.
#[must_use]
pub fn time_tick<T: StorageTimestamp>(time: &T) -> u64 {
    let distance = i128::from(time.encode()) - i128::from(T::minimum().encode());
    // Codec64 is monotone, so no time encodes below the minimum.
    u64::try_from(distance).unwrap_or(0)
}

/// The outputs' upper once tick `tick` is written: the time of tick
/// `tick + 1`, or the empty frontier when there is no further tick (the
/// generator is done).
///
/// ```
/// use timely::progress::Antichain;
/// use tidemark_storage_replica::generator::{upper_after, MAX_TICK};
/// assert_eq!(upper_after::<u64>(0), Antichain::from_elem(1));
/// assert_eq!(upper_after::<u64>(MAX_TICK), Antichain::new());
/// ```
#[must_use]
pub fn upper_after<T: StorageTimestamp>(tick: u64) -> Antichain<T> {
    tick.checked_add(1)
        .and_then(tick_time)
        .map_or_else(Antichain::new, Antichain::from_elem)
}

/// Why a [`Generator`] cannot be made from a description.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GeneratorError {
    /// A source export names an output the generator does not have.
    #[error(
        "source export {export} names output {output:?}, which the {generator} generator does not have (its outputs: {known})"
    )]
    UnknownOutput {
        /// The export.
        export: GlobalId,
        /// The output it names.
        output: String,
        /// The generator's name.
        generator: &'static str,
        /// The generator's outputs, comma-separated.
        known: String,
    },
    /// A parameter of the generator is out of range.
    #[error("invalid {generator} generator: {parameter} is {value} but must be {expected}")]
    InvalidParameter {
        /// The generator's name.
        generator: &'static str,
        /// The parameter.
        parameter: &'static str,
        /// Its value.
        value: u64,
        /// What it must be.
        expected: &'static str,
    },
}

/// One kind of generator, with its parameters checked.
#[derive(Clone, Debug)]
enum Kind {
    Counter(counter::Counter),
    Auction,
    KeyValue(key_value::KeyValue),
}

impl Kind {
    fn new(generator: &LoadGenerator) -> Result<Kind, GeneratorError> {
        Ok(match generator {
            LoadGenerator::Counter { max_cardinality } => {
                Kind::Counter(counter::Counter::new(*max_cardinality)?)
            }
            LoadGenerator::Auction => Kind::Auction,
            LoadGenerator::KeyValue {
                keys,
                value_size,
                batch_size,
                seed,
            } => Kind::KeyValue(key_value::KeyValue::new(
                *keys,
                *value_size,
                *batch_size,
                *seed,
            )?),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Kind::Counter(_) => counter::NAME,
            Kind::Auction => auction::NAME,
            Kind::KeyValue(_) => key_value::NAME,
        }
    }

    fn outputs(&self) -> &'static [&'static str] {
        match self {
            Kind::Counter(_) => &[counter::OUTPUT],
            Kind::Auction => &auction::OUTPUTS,
            Kind::KeyValue(_) => &[key_value::OUTPUT],
        }
    }
}

/// What an ingestion generates, decided only by its description: the same
/// tick always gives the same updates.
///
/// ```
/// use std::collections::BTreeMap;
/// use std::time::Duration;
/// use tidemark_storage_replica::generator::Generator;
/// use tidemark_storage_types::{
///     Datum, IngestionDescription, LoadGenerator, Row, SourceConnection, StorageInstanceId,
/// };
/// let description = IngestionDescription {
///     instance_id: StorageInstanceId(1),
///     connection: SourceConnection::LoadGenerator {
///         generator: LoadGenerator::Counter { max_cardinality: Some(2) },
///         tick: Duration::from_millis(100),
///     },
///     remap_collection_id: None,
///     source_exports: BTreeMap::new(),
/// };
/// let generator = Generator::new(&description).unwrap();
/// assert_eq!(generator.primary(), "counter");
/// let value = |v| Row::pack([Datum::Int64(v)]);
/// assert_eq!(generator.tick(0), vec![("counter", vec![(value(1), 1)])]);
/// // At tick 2 the third value goes in and the first comes out.
/// assert_eq!(generator.tick(2), vec![("counter", vec![(value(1), -1), (value(3), 1)])]);
/// assert_eq!(Generator::progress(2), vec![(Row::pack([Datum::Int64(2)]), -1), (Row::pack([Datum::Int64(3)]), 1)]);
/// ```
#[derive(Clone, Debug)]
pub struct Generator {
    kind: Kind,
    tick_interval: Duration,
    exports: BTreeMap<GlobalId, &'static str>,
}

impl Generator {
    /// The generator of `description`, with each source export matched to
    /// the output it names.
    ///
    /// # Errors
    ///
    /// [`GeneratorError::UnknownOutput`] when a source export names an
    /// output the generator lacks; [`GeneratorError::InvalidParameter`]
    /// for zero keys or batch size, a batch size above [`MAX_BATCH_SIZE`], a
    /// value size above [`MAX_VALUE_SIZE`], a tick of more than
    /// [`MAX_TICK_BYTES`] value bytes, more keys than `i64` counts, or a
    /// `max_cardinality` of zero.
    pub fn new(description: &IngestionDescription) -> Result<Generator, GeneratorError> {
        let SourceConnection::LoadGenerator { generator, tick } = &description.connection;
        let kind = Kind::new(generator)?;
        let mut exports = BTreeMap::new();
        for (export, output) in &description.source_exports {
            let Some(name) = kind.outputs().iter().find(|name| **name == output.as_str()) else {
                return Err(GeneratorError::UnknownOutput {
                    export: *export,
                    output: output.clone(),
                    generator: kind.name(),
                    known: kind.outputs().join(", "),
                });
            };
            exports.insert(*export, *name);
        }
        Ok(Generator {
            kind,
            tick_interval: *tick,
            exports,
        })
    }

    /// The generator's name: `"counter"`, `"auction"` or `"key-value"`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The generator's outputs by name, the primary one first.
    #[must_use]
    pub fn outputs(&self) -> &[&'static str] {
        self.kind.outputs()
    }

    /// The output the ingestion's own collection receives. The auction's
    /// primary output, `"auction"`, has no columns and never any updates:
    /// its data is in the outputs its source exports name.
    #[must_use]
    pub fn primary(&self) -> &'static str {
        self.kind.outputs()[0]
    }

    /// How often the ingestion writes a tick, as its description says. The
    /// generator itself does not look at it: what a tick writes does not
    /// depend on when it is written.
    #[must_use]
    pub fn tick_interval(&self) -> Duration {
        self.tick_interval
    }

    /// Each source export with the output it receives.
    #[must_use]
    pub fn exports(&self) -> &BTreeMap<GlobalId, &'static str> {
        &self.exports
    }

    /// The relation of `output`, or `None` if the generator has no such
    /// output.
    #[must_use]
    pub fn relation(&self, output: &str) -> Option<RelationDesc> {
        self.outputs()
            .iter()
            .position(|name| *name == output)
            .map(|index| self.output_relations()[index].1.clone())
    }

    fn output_relations(&self) -> Vec<(&'static str, RelationDesc)> {
        match &self.kind {
            Kind::Counter(_) => vec![(counter::OUTPUT, counter::relation())],
            Kind::Auction => auction::relations(),
            Kind::KeyValue(_) => vec![(key_value::OUTPUT, key_value::relation())],
        }
    }

    /// Each output of `generator` with its relation, the primary one first
    /// (for creating the collections before the ingestion runs).
    #[must_use]
    pub fn relations(generator: &LoadGenerator) -> Vec<(&'static str, RelationDesc)> {
        match generator {
            LoadGenerator::Counter { .. } => vec![(counter::OUTPUT, counter::relation())],
            LoadGenerator::Auction => auction::relations(),
            LoadGenerator::KeyValue { .. } => vec![(key_value::OUTPUT, key_value::relation())],
        }
    }

    /// The updates tick `tick` writes, per output name (every output is
    /// listed, in [`outputs`](Generator::outputs) order, possibly with no
    /// updates), each to be written at [`tick_time(tick)`](tick_time). Each
    /// output's updates are consolidated. A tick past [`MAX_TICK`] writes
    /// nothing.
    #[must_use]
    pub fn tick(&self, tick: u64) -> Vec<(&'static str, Vec<(Row, Diff)>)> {
        let mut outputs: Vec<(&'static str, Vec<(Row, Diff)>)> = match &self.kind {
            Kind::Counter(counter) if tick <= MAX_TICK => {
                vec![(counter::OUTPUT, counter.tick(tick))]
            }
            Kind::Auction if tick <= MAX_TICK => auction::tick(tick),
            Kind::KeyValue(key_value) if tick <= MAX_TICK => {
                vec![(key_value::OUTPUT, key_value.tick(tick))]
            }
            _ => self
                .outputs()
                .iter()
                .map(|output| (*output, Vec::new()))
                .collect(),
        };
        for (_, updates) in &mut outputs {
            consolidate(updates);
        }
        outputs
    }

    /// The relation of an ingestion's progress collection: one column
    /// `offset`, the number of ticks applied.
    #[must_use]
    pub fn progress_relation() -> RelationDesc {
        RelationDesc::empty().with_column("offset", ScalarType::Int64.nullable(false))
    }

    /// The progress collection's updates at tick `tick`: the collection
    /// holds one row `[offset]` at each time, offset = ticks applied so far
    /// (`k + 1` after tick `k`): `+[k+1]` and, for `k > 0`, `-[k]`
    /// (consolidated, so the retraction comes first). A tick past
    /// [`MAX_TICK`] writes nothing.
    #[must_use]
    pub fn progress(tick: u64) -> Vec<(Row, Diff)> {
        if tick > MAX_TICK {
            return Vec::new();
        }
        let offset = |ticks: u64| {
            Row::pack([Datum::Int64(
                i64::try_from(ticks).expect("ticks up to MAX_TICK fit i64"),
            )])
        };
        let mut updates = vec![(offset(tick + 1), 1)];
        if tick > 0 {
            updates.push((offset(tick), -1));
        }
        consolidate(&mut updates);
        updates
    }
}

/// An `i64` datum of a number a generator derived from a tick (all below
/// 2^63 by [`MAX_TICK`]).
fn int(value: u64) -> i64 {
    i64::try_from(value).expect("generator numbers derive from ticks up to MAX_TICK")
}
