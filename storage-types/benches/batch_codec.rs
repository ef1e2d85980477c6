//! Decoding speed of the batch codec against the raw work every decode must
//! do (one CRC-32 pass and one copy of the same bytes), measured in the same
//! run. Prints the ratio; absolute times on a shared machine are noise.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tidemark_storage_types::{Batch, Datum, Row, Update, decode_batch, encode_batch};
use timely::progress::Antichain;

const UPDATES: usize = 1_000_000;
const ROUNDS: usize = 5;

fn sample() -> Batch<u64> {
    let updates = (0..UPDATES)
        .map(|i| {
            let row = Row::pack([
                Datum::Int64(i as i64),
                Datum::String("a short string payload"),
            ]);
            Update::new(row, (i / 1_000) as u64, 1)
        })
        .collect();
    Batch {
        lower: Antichain::from_elem(0),
        upper: Antichain::from_elem((UPDATES / 1_000) as u64 + 1),
        since: Antichain::from_elem(0),
        updates,
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let bytes = encode_batch(&sample()).expect("the sample batch encodes");
    let mut raw = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let copy = black_box(bytes.clone());
        black_box(crc32fast::hash(&copy));
        raw.push(start.elapsed());

        let start = Instant::now();
        let batch = decode_batch::<u64>("bench", black_box(&bytes)).expect("decodes");
        decode.push(start.elapsed());
        assert_eq!(batch.updates.len(), UPDATES);
    }
    let (raw, decode) = (median(raw), median(decode));
    println!(
        "batch codec: decode {UPDATES} updates ({:.1} MB): {decode:?}; raw copy + crc32: {raw:?}; ratio decode/raw {:.2}",
        bytes.len() as f64 / 1e6,
        decode.as_secs_f64() / raw.as_secs_f64()
    );
}
