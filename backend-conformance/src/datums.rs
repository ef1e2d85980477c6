//! Rows of every datum type survive an append and come back byte for byte,
//! through both `snapshot` and `fetch`.

use tidemark_storage_types::{Datum, PersistBackend, Row};

use crate::BackendFactory;
use crate::support::{
    append_ok, assert_consolidated_rows, at, fetch_of, model_fetch, model_snapshot, open_new_shard,
    snapshot_of, update,
};

/// Appends one update per row (at varied times and diffs) and checks the
/// snapshot and fetch return exactly those rows, with the datums intact.
async fn assert_rows_round_trip<F: BackendFactory>(factory: &F, rows: Vec<Row>) {
    let backend = factory.open_handle().await;
    let shard = open_new_shard(&backend).await;
    let updates: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let index = index as u64;
            update(row.clone(), index % 3, 1 + (index % 4) as i64)
        })
        .collect();
    append_ok(&backend, shard, updates.clone(), at(0), at(3)).await;

    let snapshot = snapshot_of(&backend, shard, 2).await;
    assert_consolidated_rows(&snapshot, "snapshot");
    assert_eq!(snapshot, model_snapshot(&updates, 2));
    // Rows compare by their encoding, so equality above is byte for byte
    // (floats bitwise, NaN included); the encoding must also still be valid.
    for (row, _) in &snapshot {
        assert!(
            Row::from_bytes(row.as_bytes()).is_ok(),
            "storage returned a malformed row: {row:?}"
        );
    }

    let fetched = fetch_of(&backend, shard, &at(0), &at(3)).await;
    assert_eq!(fetched, model_fetch(&updates, &at(0), &at(0), &at(3)));
    assert_readable_through_another_handle(factory, shard, &snapshot).await;
}

/// A second handle reads the same bytes (so nothing was only cached).
async fn assert_readable_through_another_handle<F: BackendFactory>(
    factory: &F,
    shard: tidemark_storage_types::ShardId,
    expected: &[(Row, i64)],
) {
    let other = factory.open_handle().await;
    let snapshot = other
        .snapshot(shard, &2)
        .await
        .expect("snapshot through another handle");
    assert_eq!(snapshot, expected);
}

/// Nulls, alone and next to other datums, round trip.
pub async fn null_datums_round_trip<F: BackendFactory>(factory: &F) {
    let rows = vec![
        Row::pack([Datum::Null]),
        Row::pack([Datum::Null, Datum::Null]),
        Row::pack([Datum::Null, Datum::Int64(0)]),
        Row::pack([Datum::Int64(0), Datum::Null]),
    ];
    assert_rows_round_trip(factory, rows).await;
}

/// Both booleans round trip.
pub async fn bool_datums_round_trip<F: BackendFactory>(factory: &F) {
    let rows = vec![
        Row::pack([Datum::Bool(false)]),
        Row::pack([Datum::Bool(true)]),
        Row::pack([Datum::Bool(true), Datum::Bool(false)]),
    ];
    assert_rows_round_trip(factory, rows).await;
}

/// 64-bit integers, including the extremes, round trip.
pub async fn int64_datums_round_trip<F: BackendFactory>(factory: &F) {
    let rows = [i64::MIN, -1, 0, 1, 42, i64::MAX]
        .into_iter()
        .map(|value| Row::pack([Datum::Int64(value)]))
        .collect();
    assert_rows_round_trip(factory, rows).await;
}

/// 64-bit floats round trip bitwise, including signed zeros, infinities,
/// NaN and subnormals.
pub async fn float64_datums_round_trip<F: BackendFactory>(factory: &F) {
    let rows = [
        0.0,
        -0.0,
        1.5,
        -2.25,
        f64::MIN,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::from_bits(1),
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ]
    .into_iter()
    .map(|value| Row::pack([Datum::Float64(value)]))
    .collect();
    assert_rows_round_trip(factory, rows).await;
}

/// Strings round trip: empty, ASCII, multi-byte Unicode, emoji, control
/// characters and an interior NUL, and a long string.
pub async fn string_datums_round_trip<F: BackendFactory>(factory: &F) {
    let long = "tidemark ".repeat(500);
    let rows = [
        "",
        "plain ascii",
        "héllo wörld",
        "日本語のテキスト",
        "🦀🌊 emoji",
        "tab\tnewline\nquote'\"backslash\\",
        "nul\0inside",
        long.as_str(),
    ]
    .into_iter()
    .map(|value| Row::pack([Datum::String(value)]))
    .collect();
    assert_rows_round_trip(factory, rows).await;
}

/// Byte strings round trip: empty, every byte value, invalid UTF-8, and a
/// long one.
pub async fn bytes_datums_round_trip<F: BackendFactory>(factory: &F) {
    let every_byte: Vec<u8> = (0..=255).collect();
    let long = vec![0xAB; 4096];
    let payloads: Vec<&[u8]> = vec![&[], &[0], &[0xFF, 0xFE, 0xC3], &every_byte, &long];
    let rows = payloads
        .into_iter()
        .map(|value| Row::pack([Datum::Bytes(value)]))
        .collect();
    assert_rows_round_trip(factory, rows).await;
}

/// Timestamps, including the extremes and times before the epoch, round
/// trip.
pub async fn timestamp_datums_round_trip<F: BackendFactory>(factory: &F) {
    let rows = [i64::MIN, -1_000_000, 0, 1_700_000_000_000_000, i64::MAX]
        .into_iter()
        .map(|micros| Row::pack([Datum::Timestamp(micros)]))
        .collect();
    assert_rows_round_trip(factory, rows).await;
}

/// Rows of any arity round trip: the empty row, and a wide row mixing every
/// datum type.
pub async fn rows_of_any_arity_round_trip<F: BackendFactory>(factory: &F) {
    let wide = Row::pack([
        Datum::Null,
        Datum::Bool(true),
        Datum::Int64(-7),
        Datum::Float64(2.5),
        Datum::String("wide ✓"),
        Datum::Bytes(&[]),
        Datum::Timestamp(123),
        Datum::Bytes(&[1, 2, 3]),
        Datum::String(""),
    ]);
    let rows = vec![
        Row::pack([]),
        wide,
        Row::pack([Datum::String(""), Datum::Bytes(&[])]),
    ];
    assert_rows_round_trip(factory, rows).await;
}
