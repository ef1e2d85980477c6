//! The load generators: determinism, what each output holds once
//! consolidated, the progress collection, the tick/time mapping and the
//! refused descriptions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use differential_dataflow::consolidation::consolidate;
use proptest::prelude::*;
use tidemark_storage_replica::generator::{
    Generator, GeneratorError, MAX_BATCH_SIZE, MAX_TICK, MAX_TICK_BYTES, MAX_VALUE_SIZE, tick_time,
    time_tick, upper_after,
};
use tidemark_storage_types::{
    Datum, Diff, GlobalId, IngestionDescription, LoadGenerator, Row, SourceConnection,
    StorageInstanceId,
};
use timely::progress::Antichain;

fn description(generator: LoadGenerator, exports: &[(GlobalId, &str)]) -> IngestionDescription {
    IngestionDescription {
        instance_id: StorageInstanceId(1),
        connection: SourceConnection::LoadGenerator {
            generator,
            tick: Duration::from_millis(10),
        },
        remap_collection_id: Some(GlobalId::User(100)),
        source_exports: exports
            .iter()
            .map(|(id, output)| (*id, (*output).to_owned()))
            .collect(),
    }
}

fn generator(load: LoadGenerator) -> Generator {
    Generator::new(&description(load, &[])).expect("a valid description")
}

fn int(row: &Row, position: usize) -> i64 {
    match row.unpack()[position] {
        Datum::Int64(value) => value,
        other => panic!("column {position} of {row} is {other:?}, not int64"),
    }
}

/// Adds the updates of every output of `tick` to `state` and consolidates
/// it; checks that every output is listed, in order, with rows its relation
/// accepts.
fn apply(generator: &Generator, tick: u64, state: &mut BTreeMap<&'static str, Vec<(Row, Diff)>>) {
    let outputs = generator.tick(tick);
    let names: Vec<&str> = outputs.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        generator.outputs(),
        "tick {tick} lists every output in order"
    );
    for (name, updates) in outputs {
        let relation = generator
            .relation(name)
            .expect("a listed output has a relation");
        for (row, _) in &updates {
            relation
                .validate(row)
                .unwrap_or_else(|err| panic!("output {name} at tick {tick}: {err}"));
        }
        let accumulated = state.entry(name).or_default();
        accumulated.extend(updates);
        consolidate(accumulated);
    }
}

fn any_generator() -> impl Strategy<Value = LoadGenerator> {
    prop_oneof![
        proptest::option::of(1u64..20)
            .prop_map(|max_cardinality| LoadGenerator::Counter { max_cardinality }),
        Just(LoadGenerator::Auction),
        (1u64..40, 0u32..48, 1u32..64, any::<u64>()).prop_map(
            |(keys, value_size, batch_size, seed)| LoadGenerator::KeyValue {
                keys,
                value_size,
                batch_size,
                seed,
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A tick's updates depend on the description and the tick only: two
    /// generators made separately, one run forwards from 0 and one jumping
    /// straight to each tick in reverse, agree.
    #[test]
    fn a_tick_is_deterministic(load in any_generator(), ticks in proptest::collection::vec(0u64..1_500, 1..12)) {
        let forwards = generator(load.clone());
        let mut seen = Vec::new();
        for tick in 0..=*ticks.iter().max().unwrap() {
            let updates = forwards.tick(tick);
            if ticks.contains(&tick) {
                seen.push((tick, updates));
            }
        }
        let fresh = generator(load);
        for (tick, updates) in seen.iter().rev() {
            prop_assert_eq!(&fresh.tick(*tick), updates, "tick {}", tick);
        }
    }

    /// Up to tick k the counter holds exactly the values k+2-c ..= k+1
    /// (from 1), once each.
    #[test]
    fn counter_holds_the_last_values(max_cardinality in proptest::option::of(1u64..30), last in 0u64..200) {
        let generator = generator(LoadGenerator::Counter { max_cardinality });
        let mut state = BTreeMap::new();
        for tick in 0..=last {
            apply(&generator, tick, &mut state);
            let first = match max_cardinality {
                Some(c) if tick + 1 > c => tick + 2 - c,
                _ => 1,
            };
            let expected: Vec<(Row, Diff)> = (first..=tick + 1)
                .map(|value| (Row::pack([Datum::Int64(value as i64)]), 1))
                .collect();
            let mut expected = expected;
            consolidate(&mut expected);
            prop_assert_eq!(&state["counter"], &expected, "after tick {}", tick);
        }
    }

    /// Key-value: consolidated, every key has at most one live value, of
    /// `value_size` characters, with diff 1 (never negative), the one its
    /// last write inserted; as many keys are live as have been written.
    #[test]
    fn key_value_keeps_one_live_value_per_key(
        keys in 1u64..40,
        value_size in 0u32..40,
        batch_size in 1u32..60,
        seed in any::<u64>(),
        last in 0u64..25,
    ) {
        let generator = generator(LoadGenerator::KeyValue { keys, value_size, batch_size, seed });
        let mut state = BTreeMap::new();
        for tick in 0..=last {
            apply(&generator, tick, &mut state);
        }
        let live = &state["key_value"];
        let writes = (last + 1) * u64::from(batch_size);
        prop_assert_eq!(live.len() as u64, writes.min(keys));
        let mut live_keys = BTreeSet::new();
        for (row, diff) in live {
            prop_assert_eq!(*diff, 1, "row {}", row);
            let key = int(row, 0) as u64;
            prop_assert!(key < keys);
            prop_assert!(live_keys.insert(key), "key {} is live twice", key);
            let Datum::String(value) = row.unpack()[1] else { panic!("value is a string") };
            prop_assert_eq!(value.len(), value_size as usize);
            if value_size < 8 {
                // Short values may repeat, and a repeated value cancels
                // out of the tick that rewrites it.
                continue;
            }
            // The write that set it last, and the tick that made it.
            let last_write = (writes - 1) - ((writes - 1 + keys - key) % keys);
            let tick = last_write / u64::from(batch_size);
            let inserted = &generator.tick(tick)[0].1;
            prop_assert!(inserted.contains(&(row.clone(), 1)), "key {} not inserted at tick {}", key, tick);
        }
    }

    /// Auction: every output consolidates to rows with multiplicity 1, and
    /// every id a row refers to names a live row, after every tick.
    #[test]
    fn auction_references_exist(last in 0u64..260) {
        let generator = generator(LoadGenerator::Auction);
        let mut state = BTreeMap::new();
        for tick in 0..=last {
            apply(&generator, tick, &mut state);
            check_auction_state(&state, tick);
        }
    }

    /// The progress collection holds exactly one row, `[k + 1]`, after tick k.
    #[test]
    fn progress_holds_one_row_per_time(last in 0u64..300, start in 0u64..(1 << 40)) {
        // Resuming at `start` is the same as having applied the ticks
        // before it: the collection then holds `[start]` alone.
        let mut state: Vec<(Row, Diff)> = Vec::new();
        if start > 0 {
            state.push((Row::pack([Datum::Int64(start as i64)]), 1));
        }
        for tick in start..=start + last {
            state.extend(Generator::progress(tick));
            consolidate(&mut state);
            prop_assert_eq!(&state, &vec![(Row::pack([Datum::Int64(tick as i64 + 1)]), 1)]);
        }
    }

    /// `time_tick` inverts `tick_time`, and `upper_after(k)` is the time of
    /// tick k + 1.
    #[test]
    fn tick_and_time_invert(tick in 0..=MAX_TICK) {
        let time: u64 = tick_time(tick).expect("a u64 time");
        prop_assert_eq!(time_tick(&time), tick);
        let upper: Antichain<u64> = upper_after(tick);
        let next: Option<u64> = tick_time(tick + 1);
        prop_assert_eq!(upper, next.map_or_else(Antichain::new, Antichain::from_elem));
    }
}

fn check_auction_state(state: &BTreeMap<&'static str, Vec<(Row, Diff)>>, tick: u64) {
    for (output, rows) in state {
        for (row, diff) in rows {
            assert_eq!(
                *diff, 1,
                "{output} after tick {tick}: {row} has diff {diff}"
            );
        }
    }
    assert!(
        state["auction"].is_empty(),
        "the primary output stays empty"
    );
    let ids = |output: &str| -> BTreeSet<i64> {
        state[output].iter().map(|(row, _)| int(row, 0)).collect()
    };
    let organizations = ids("organizations");
    let users = ids("users");
    let auctions = ids("auctions");
    assert_eq!(organizations.len(), 10, "one row per organization");
    assert_eq!(state["organizations"].len(), 10);
    assert_eq!(users.len(), 100, "one row per user");
    assert_eq!(state["users"].len(), 100);
    assert_eq!(state["accounts"].len(), 10, "one account per organization");
    assert_eq!(
        auctions.len() as u64,
        (tick + 1).min(10),
        "the open auctions"
    );
    for (row, _) in &state["users"] {
        assert!(organizations.contains(&int(row, 1)), "user {row}");
    }
    for (row, _) in &state["accounts"] {
        assert!(organizations.contains(&int(row, 1)), "account {row}");
    }
    for (row, _) in &state["auctions"] {
        assert!(users.contains(&int(row, 1)), "auction {row}: seller");
        assert!(int(row, 3) > tick as i64, "auction {row} is still open");
    }
    let mut bid_ids = BTreeSet::new();
    for (row, _) in &state["bids"] {
        assert!(bid_ids.insert(int(row, 0)), "bid id {row} twice");
        assert!(users.contains(&int(row, 1)), "bid {row}: buyer");
        assert!(auctions.contains(&int(row, 2)), "bid {row}: auction");
        assert!(int(row, 3) > 0, "bid {row}: amount");
    }
}

/// A long run crosses the rare updates of every entity (accounts every 20
/// ticks, users every 50, organizations every 1000) and they change rows in
/// place.
#[test]
fn auction_updates_entities_in_place() {
    let generator = generator(LoadGenerator::Auction);
    let mut state = BTreeMap::new();
    let mut changed = BTreeSet::new();
    for tick in 0..=2_100 {
        let before = state.clone();
        apply(&generator, tick, &mut state);
        check_auction_state(&state, tick);
        for output in ["organizations", "users", "accounts"] {
            if tick > 0 && before.get(output) != state.get(output) {
                changed.insert((output, tick));
            }
        }
    }
    let ticks_of = |output: &str| -> Vec<u64> {
        changed
            .iter()
            .filter(|(name, _)| *name == output)
            .map(|(_, tick)| *tick)
            .collect()
    };
    assert_eq!(ticks_of("organizations"), vec![1000, 2000]);
    assert_eq!(
        ticks_of("users"),
        (1..=42).map(|j| j * 50).collect::<Vec<_>>()
    );
    assert_eq!(
        ticks_of("accounts"),
        (1..=105).map(|j| j * 20).collect::<Vec<_>>()
    );
    // Every tick opens an auction and places one to four bids; bids leave
    // with their auctions, so few are live at the end.
    let mut bids_placed = 0;
    for tick in 0..=2_100 {
        let outputs = generator.tick(tick);
        let placed = |output: usize| {
            outputs[output]
                .1
                .iter()
                .filter(|(_, diff)| *diff > 0)
                .count()
        };
        assert_eq!(placed(4), 1, "tick {tick} opens one auction");
        assert!(
            (1..=4).contains(&placed(5)),
            "tick {tick} places {} bids",
            placed(5)
        );
        bids_placed += placed(5);
    }
    assert!(state["bids"].len() < bids_placed / 10);
}

#[test]
fn outputs_relations_and_exports() {
    let auction = Generator::new(&description(
        LoadGenerator::Auction,
        &[(GlobalId::User(2), "bids"), (GlobalId::User(3), "users")],
    ))
    .unwrap();
    assert_eq!(auction.name(), "auction");
    assert_eq!(auction.primary(), "auction");
    assert_eq!(
        auction.outputs(),
        [
            "auction",
            "organizations",
            "users",
            "accounts",
            "auctions",
            "bids"
        ]
    );
    assert_eq!(auction.relation("auction").unwrap().arity(), 0);
    assert_eq!(auction.relation("bids").unwrap().arity(), 4);
    assert_eq!(auction.relation("nope"), None);
    assert_eq!(
        auction.exports(),
        &BTreeMap::from([(GlobalId::User(2), "bids"), (GlobalId::User(3), "users")])
    );
    assert_eq!(auction.tick_interval(), Duration::from_millis(10));
    for load in [
        LoadGenerator::Counter {
            max_cardinality: None,
        },
        LoadGenerator::Auction,
        LoadGenerator::KeyValue {
            keys: 3,
            value_size: 4,
            batch_size: 5,
            seed: 6,
        },
    ] {
        let generator = generator(load.clone());
        let relations = Generator::relations(&load);
        let names: Vec<&str> = relations.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, generator.outputs());
        assert_eq!(names[0], generator.primary());
        for (name, relation) in relations {
            assert_eq!(generator.relation(name), Some(relation));
        }
    }
    assert_eq!(
        generator(LoadGenerator::KeyValue {
            keys: 3,
            value_size: 4,
            batch_size: 5,
            seed: 6
        })
        .primary(),
        "key_value"
    );
    assert_eq!(Generator::progress_relation().arity(), 1);
}

/// Past the last tick nothing is written, and there is no time for it.
#[test]
fn past_the_last_tick_nothing_is_written() {
    for load in [
        LoadGenerator::Counter {
            max_cardinality: Some(3),
        },
        LoadGenerator::Auction,
        LoadGenerator::KeyValue {
            keys: 3,
            value_size: 4,
            batch_size: 1_000,
            seed: 6,
        },
    ] {
        let generator = generator(load);
        assert!(
            generator
                .tick(MAX_TICK + 1)
                .iter()
                .all(|(_, updates)| updates.is_empty())
        );
        assert!(
            generator
                .tick(u64::MAX)
                .iter()
                .all(|(_, updates)| updates.is_empty())
        );
        assert!(
            !generator
                .tick(MAX_TICK)
                .iter()
                .all(|(_, updates)| updates.is_empty())
        );
    }
    assert!(Generator::progress(MAX_TICK + 1).is_empty());
    assert_eq!(Generator::progress(MAX_TICK).len(), 2);
    assert_eq!(tick_time::<u64>(MAX_TICK), Some(MAX_TICK));
    assert_eq!(tick_time::<u64>(MAX_TICK + 1), None);
    assert_eq!(upper_after::<u64>(MAX_TICK), Antichain::new());
    assert_eq!(time_tick(&u64::MAX), u64::MAX);
    assert_eq!(tick_time::<u64>(time_tick(&u64::MAX)), None);
}

#[test]
fn bad_descriptions_are_refused_with_what_is_wrong() {
    let err = Generator::new(&description(
        LoadGenerator::Counter {
            max_cardinality: None,
        },
        &[(GlobalId::User(7), "bids")],
    ))
    .unwrap_err();
    assert_eq!(
        err,
        GeneratorError::UnknownOutput {
            export: GlobalId::User(7),
            output: "bids".to_owned(),
            generator: "counter",
            known: "counter".to_owned(),
        }
    );
    assert_eq!(
        err.to_string(),
        "source export u7 names output \"bids\", which the counter generator does not have (its outputs: counter)"
    );
    let err = Generator::new(&description(
        LoadGenerator::Auction,
        &[(GlobalId::User(7), "auctionz")],
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("auction, organizations, users, accounts, auctions, bids"),
        "{err}"
    );

    let invalid = |load: LoadGenerator| Generator::new(&description(load, &[])).unwrap_err();
    let err = invalid(LoadGenerator::Counter {
        max_cardinality: Some(0),
    });
    assert_eq!(
        err.to_string(),
        "invalid counter generator: max_cardinality is 0 but must be at least 1"
    );
    let key_value = |keys, value_size, batch_size| LoadGenerator::KeyValue {
        keys,
        value_size,
        batch_size,
        seed: 1,
    };
    for (load, parameter, value) in [
        (key_value(0, 8, 8), "keys", 0),
        (key_value(1 << 63, 8, 8), "keys", 1 << 63),
        (key_value(8, 8, 0), "batch_size", 0),
        (
            key_value(8, MAX_VALUE_SIZE + 1, 8),
            "value_size",
            u64::from(MAX_VALUE_SIZE) + 1,
        ),
        (
            key_value(8, 0, MAX_BATCH_SIZE + 1),
            "batch_size",
            u64::from(MAX_BATCH_SIZE) + 1,
        ),
        (
            key_value(8, MAX_VALUE_SIZE, 257),
            "batch_size * value_size",
            u64::from(MAX_VALUE_SIZE) * 257,
        ),
    ] {
        match invalid(load) {
            GeneratorError::InvalidParameter {
                generator: "key-value",
                parameter: found,
                value: found_value,
                ..
            } => {
                assert_eq!((found, found_value), (parameter, value));
            }
            other => panic!("expected an invalid {parameter}, got {other}"),
        }
    }
    // The bounds themselves are accepted.
    generator(key_value(i64::MAX as u64, MAX_VALUE_SIZE, 1));
    generator(key_value(1, 0, MAX_BATCH_SIZE));
    assert_eq!(u64::from(MAX_VALUE_SIZE) * 256, MAX_TICK_BYTES);
    generator(key_value(1, MAX_VALUE_SIZE, 256));
    generator(LoadGenerator::Counter {
        max_cardinality: Some(1),
    });
}

/// The largest value size writes values of that size.
#[test]
fn key_value_writes_values_of_the_largest_size() {
    let generator = generator(LoadGenerator::KeyValue {
        keys: 2,
        value_size: MAX_VALUE_SIZE,
        batch_size: 3,
        seed: 9,
    });
    let updates = &generator.tick(1)[0].1;
    // Writes 3, 4, 5 over keys 1, 0, 1: three inserts and three retractions
    // (write 3's value is retracted again by write 5 within the tick).
    assert_eq!(updates.len(), 4, "{} updates", updates.len());
    for (row, _) in updates {
        let Datum::String(value) = row.unpack()[1] else {
            panic!("a string value")
        };
        assert_eq!(value.len(), MAX_VALUE_SIZE as usize);
    }
}
