//! Arbitrary bytes into the row decoder: it must never panic, and a row it
//! accepts must unpack, and pack back to a row with the same datums.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_storage_types::Row;

fuzz_target!(|bytes: &[u8]| {
    let Ok(row) = Row::from_bytes(bytes) else {
        return;
    };
    assert_eq!(row.as_bytes(), bytes, "a decoded row keeps its bytes");
    let datums = row.unpack();
    assert_eq!(datums.len(), row.arity());
    let repacked = Row::pack(datums.iter().cloned());
    // Compared as written out: a NaN datum is not equal to itself.
    assert_eq!(
        format!("{:?}", repacked.unpack()),
        format!("{datums:?}"),
        "pack(unpack(row)) has the same datums"
    );
    let reread = Row::from_bytes(repacked.as_bytes()).expect("a packed row decodes");
    assert_eq!(reread, repacked);
});
