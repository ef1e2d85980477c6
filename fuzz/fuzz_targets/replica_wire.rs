//! Arbitrary bytes as what a replica connection's peer sends: a handshake,
//! then frames of commands (what a replica reads) or responses (what the
//! controller reads). Reading must never panic, only yield messages, a
//! clean end or an error; every message read must encode back to a frame
//! that decodes to the same message.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tidemark_storage_controller::protocol::{StorageCommand, StorageResponse};
use tidemark_storage_controller::wire::{
    HANDSHAKE_LEN, check_handshake, decode_payload, encode_frame, read_frame, read_handshake,
};

/// Frames larger than this are refused, as a reader configured so would.
const MAX_FRAME_BYTES: u32 = 1 << 16;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

async fn read_all<M>(mut reader: &[u8])
where
    M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    // At most one frame per byte: each frame takes at least its header.
    for _ in 0..=reader.len() {
        match read_frame::<_, M>(&mut reader, MAX_FRAME_BYTES).await {
            Ok(Some(message)) => {
                let frame = encode_frame(&message, u32::MAX)
                    .expect("a message that was read encodes again");
                let again: M = decode_payload(&frame[4..])
                    .expect("a re-encoded message decodes");
                assert_eq!(again, message, "decode(encode(message)) must be the message");
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&selector, rest)) = bytes.split_first() else {
        return;
    };
    if let Some(handshake) = rest.get(..HANDSHAKE_LEN) {
        let handshake: [u8; HANDSHAKE_LEN] = handshake.try_into().expect("HANDSHAKE_LEN bytes");
        let _ = check_handshake(&handshake);
    }
    runtime().block_on(async {
        // With the selector's low bit set, the frames follow a handshake
        // that must be read first (as a connection does); otherwise they
        // start at once, so that the fuzzer need not find the magic.
        let mut reader = rest;
        if selector & 1 == 1 && read_handshake(&mut reader).await.is_err() {
            return;
        }
        if selector & 2 == 0 {
            read_all::<StorageCommand<u64>>(reader).await;
        } else {
            read_all::<StorageResponse<u64>>(reader).await;
        }
    });
});
