//! Arbitrary bytes into the batch decoder: it must never panic, and a batch
//! it accepts must encode and decode back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_storage_types::{decode_batch, encode_batch};

fuzz_target!(|bytes: &[u8]| {
    let Ok(batch) = decode_batch::<u64>("fuzz-input", bytes) else {
        return;
    };
    let encoded = encode_batch(&batch)
        .expect("a batch the decoder accepted has lengths that fit the codec's fields");
    let decoded = decode_batch::<u64>("fuzz-reencoded", &encoded)
        .expect("a batch the decoder accepted must re-encode to valid bytes");
    assert_eq!(decoded, batch, "decode(encode(batch)) must be the batch");
});
