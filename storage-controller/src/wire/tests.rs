use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use tidemark_storage_types::{
    CollectionDescription, DataSource, ExportDescription, GlobalId, IngestionDescription,
    LoadGenerator, RelationDesc, ScalarType, ShardId, SinkConnection, SourceConnection,
    StorageInstanceId, StorageParameters,
};
use timely::progress::Antichain;

use super::*;
use crate::protocol::{
    ExportCommand, IngestionCommand, StatisticsUpdate, StorageCommand, StorageResponse,
    TimelyConfig,
};

const MAX: u32 = DEFAULT_MAX_FRAME_BYTES;

fn relation() -> RelationDesc {
    RelationDesc::empty()
        .with_column("id", ScalarType::Int64.nullable(false))
        .with_column("name", ScalarType::String.nullable(true))
}

fn every_command() -> Vec<StorageCommand<u64>> {
    let ingestion = IngestionCommand {
        id: GlobalId::User(2),
        description: CollectionDescription::new(
            relation(),
            DataSource::Ingestion(IngestionDescription {
                instance_id: StorageInstanceId(1),
                connection: SourceConnection::LoadGenerator {
                    generator: LoadGenerator::Counter {
                        max_cardinality: Some(5),
                    },
                    tick: Duration::from_millis(250),
                },
                remap_collection_id: Some(GlobalId::User(3)),
                source_exports: BTreeMap::from([(GlobalId::User(4), "counter".to_owned())]),
            }),
        )
        .with_since(Antichain::from_elem(7)),
        data_shards: vec![(GlobalId::User(2), ShardId::new())],
        resume_upper: Antichain::from_elem(11),
    };
    let export = ExportCommand {
        id: GlobalId::User(9),
        description: ExportDescription {
            from: GlobalId::User(2),
            from_desc: relation(),
            connection: SinkConnection::File {
                path: PathBuf::from("/tmp/sink"),
            },
            as_of: Antichain::from_elem(3),
            with_snapshot: true,
            instance_id: StorageInstanceId(1),
        },
        from_shard: ShardId::new(),
        initial_as_of: Antichain::from_elem(3),
    };
    vec![
        StorageCommand::CreateTimely {
            config: TimelyConfig {
                process: 1,
                addresses: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            },
            epoch: 42,
        },
        StorageCommand::InitializationComplete,
        StorageCommand::UpdateConfiguration(StorageParameters {
            physical_compaction: Some(false),
            compaction_min_updates: None,
            statistics_interval: Some(Duration::from_secs(3)),
        }),
        StorageCommand::CreateSources(vec![ingestion]),
        StorageCommand::CreateSinks(vec![export]),
        StorageCommand::AllowCompaction(vec![
            (GlobalId::User(2), Antichain::from_elem(5)),
            (GlobalId::User(9), Antichain::new()),
        ]),
    ]
}

fn every_response() -> Vec<StorageResponse<u64>> {
    vec![
        StorageResponse::FrontierUppers(vec![
            (GlobalId::User(2), Antichain::from_elem(u64::MAX)),
            (GlobalId::System(1), Antichain::new()),
        ]),
        StorageResponse::DroppedIds(BTreeSet::from([GlobalId::User(2), GlobalId::User(9)])),
        StorageResponse::StatisticsUpdates(vec![(
            GlobalId::User(2),
            StatisticsUpdate {
                messages: 1,
                updates: 2,
                bytes: u64::MAX,
                frontier_lag: 7,
            },
        )]),
        StorageResponse::StatusUpdates(vec![(GlobalId::User(2), "stalled: \u{1F30A}".into())]),
    ]
}

fn response_kind(response: &StorageResponse<u64>) -> &'static str {
    match response {
        StorageResponse::FrontierUppers(_) => "frontier-uppers",
        StorageResponse::DroppedIds(_) => "dropped-ids",
        StorageResponse::StatisticsUpdates(_) => "statistics-updates",
        StorageResponse::StatusUpdates(_) => "status-updates",
    }
}

async fn round_trip<M>(messages: &[M]) -> Vec<M>
where
    M: Serialize + DeserializeOwned,
{
    let mut stream = Vec::new();
    for message in messages {
        write_frame(&mut stream, message, MAX).await.unwrap();
    }
    let mut reader = &stream[..];
    let mut read = Vec::new();
    while let Some(message) = read_frame(&mut reader, MAX).await.unwrap() {
        read.push(message);
    }
    read
}

#[tokio::test]
async fn every_command_variant_round_trips() {
    let commands = every_command();
    let kinds: BTreeSet<_> = commands.iter().map(command_kind).collect();
    assert_eq!(kinds.len(), 6, "one of each variant: {kinds:?}");
    assert_eq!(round_trip(&commands).await, commands);
}

#[tokio::test]
async fn every_response_variant_round_trips() {
    let responses = every_response();
    let kinds: BTreeSet<_> = responses.iter().map(response_kind).collect();
    assert_eq!(kinds.len(), 4, "one of each variant: {kinds:?}");
    assert_eq!(round_trip(&responses).await, responses);
}

#[tokio::test]
async fn a_matching_handshake_is_accepted() {
    let mut stream = Vec::new();
    write_handshake(&mut stream).await.unwrap();
    assert_eq!(stream, b"TDMK\0\0\0\x02");
    read_handshake(&mut &stream[..]).await.unwrap();
}

#[tokio::test]
async fn another_protocol_version_is_refused() {
    let err = read_handshake(&mut &b"TDMK\0\0\0\x07"[..])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WireError::VersionMismatch {
                expected: 2,
                got: 7
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "protocol version mismatch: expected=2 got=7"
    );
}

#[tokio::test]
async fn garbage_instead_of_a_handshake_is_refused() {
    let err = read_handshake(&mut &b"GET / HTTP/1.1\r\n"[..])
        .await
        .unwrap_err();
    assert!(
        matches!(err, WireError::BadMagic { got } if &got == b"GET "),
        "{err:?}"
    );
    assert_eq!(err.to_string(), r#"bad magic: expected="TDMK" got="GET ""#);
    let err = read_handshake(&mut &[0xff, 0, 1, 2, 3, 4, 5, 6][..])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"bad magic: expected="TDMK" got="\xff\x00\x01\x02""#
    );
}

#[tokio::test]
async fn a_handshake_cut_short_is_refused() {
    let err = read_handshake(&mut &b"TDM"[..]).await.unwrap_err();
    assert!(
        matches!(
            err,
            WireError::Truncated {
                part: "handshake",
                expected: 8,
                got: 3
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "connection closed mid-handshake: expected=8 bytes got=3"
    );
}

#[tokio::test]
async fn an_oversized_frame_is_refused_before_its_payload_is_read() {
    let mut stream = u32::MAX.to_be_bytes().to_vec();
    stream.extend_from_slice(b"0123456789");
    let mut reader = &stream[..];
    let err = read_frame::<_, StorageResponse<u64>>(&mut reader, 1024)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WireError::FrameTooLarge {
                max: 1024,
                got: 4_294_967_295
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "frame too large: max=1024 got=4294967295");
    assert_eq!(reader, b"0123456789", "nothing of the payload was read");
}

#[tokio::test]
async fn a_message_above_the_maximum_is_not_written() {
    let message = StorageResponse::<u64>::StatusUpdates(vec![(GlobalId::User(1), "x".repeat(64))]);
    let mut stream = Vec::new();
    let err = write_frame(&mut stream, &message, 16).await.unwrap_err();
    assert!(
        matches!(err, WireError::FrameTooLarge { max: 16, .. }),
        "{err:?}"
    );
    assert!(stream.is_empty(), "nothing was written");
}

#[tokio::test]
async fn a_frame_cut_mid_header_is_refused() {
    let err = read_frame::<_, StorageResponse<u64>>(&mut &[0u8, 0][..], MAX)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "connection closed mid-frame header: expected=4 bytes got=2"
    );
}

#[tokio::test]
async fn a_frame_cut_mid_payload_is_refused() {
    let frame = encode_frame(&every_response()[0], MAX).unwrap();
    let cut = &frame[..frame.len() - 1];
    let err = read_frame::<_, StorageResponse<u64>>(&mut &cut[..], MAX)
        .await
        .unwrap_err();
    let expected = (frame.len() - 4) as u64;
    assert!(
        matches!(err, WireError::Truncated { part: "frame payload", expected: e, got } if e == expected && got == expected - 1),
        "{err:?}"
    );
    // A large announcement followed by a few bytes: refused once they end.
    let mut stream = (60u32 << 20).to_be_bytes().to_vec();
    stream.extend_from_slice(b"abc");
    let err = read_frame::<_, StorageResponse<u64>>(&mut &stream[..], MAX)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "connection closed mid-frame payload: expected=62914560 bytes got=3"
    );
}

#[tokio::test]
async fn a_complete_frame_of_garbage_is_malformed() {
    let mut stream = 5u32.to_be_bytes().to_vec();
    stream.extend_from_slice(&[0xff; 5]);
    let err = read_frame::<_, StorageCommand<u64>>(&mut &stream[..], MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, WireError::Malformed(_)), "{err:?}");
    assert!(err.to_string().starts_with("malformed frame: "), "{err}");
}

#[test]
fn trailing_bytes_in_a_payload_are_malformed() {
    let frame = encode_frame(&StorageCommand::<u64>::InitializationComplete, MAX).unwrap();
    let mut payload = frame[4..].to_vec();
    payload.push(0);
    let err = decode_payload::<StorageCommand<u64>>(&payload).unwrap_err();
    assert!(matches!(err, WireError::Malformed(_)), "{err:?}");
}

/// Serialization that serde refuses.
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refused by design"))
    }
}

#[test]
fn a_message_serde_refuses_is_unencodable() {
    let err = encode_frame(&Unserializable, MAX).unwrap_err();
    assert_eq!(
        err.to_string(),
        "message cannot be encoded: refused by design"
    );
}

proptest! {
    /// Whatever bytes arrive, reading yields messages, a clean end or an
    /// error: never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut reader = &bytes[..];
            let _ = read_handshake(&mut reader).await;
            for _ in 0..bytes.len() + 1 {
                match read_frame::<_, StorageCommand<u64>>(&mut reader, 128).await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        });
    }

    /// The proptest version of the `replica_wire` fuzz target: bytes after
    /// a handshake (or without one), read as commands and as responses,
    /// never panic, and every message read re-encodes to itself. Inputs
    /// start from valid frames with bytes changed, so that reads get past
    /// the header more often than from random bytes alone.
    #[test]
    fn mutated_frames_never_panic_and_what_is_read_round_trips(
        command in 0usize..64,
        response in 0usize..64,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        with_handshake in any::<bool>(),
    ) {
        let commands = every_command();
        let responses = every_response();
        let mut bytes = Vec::new();
        if with_handshake {
            bytes.extend_from_slice(&handshake());
        }
        bytes.extend(encode_frame(&commands[command % commands.len()], MAX).unwrap());
        bytes.extend(encode_frame(&responses[response % responses.len()], MAX).unwrap());
        for (position, value) in flips {
            let position = position % bytes.len();
            bytes[position] = value;
        }
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            read_and_round_trip::<StorageCommand<u64>>(&bytes, with_handshake).await;
            read_and_round_trip::<StorageResponse<u64>>(&bytes, with_handshake).await;
        });
    }

    /// Statistics of any values round trip.
    #[test]
    fn statistics_round_trip(values in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()), 0..20)) {
        let response = StorageResponse::<u64>::StatisticsUpdates(
            values
                .iter()
                .map(|&(id, messages, updates, bytes, frontier_lag)| {
                    (GlobalId::User(id), StatisticsUpdate { messages, updates, bytes, frontier_lag })
                })
                .collect(),
        );
        let frame = encode_frame(&response, MAX).unwrap();
        let decoded: StorageResponse<u64> = decode_payload(&frame[4..]).unwrap();
        prop_assert_eq!(decoded, response);
    }
}

/// Reads `bytes` as a connection would (handshake first if asked) until the
/// end or an error, checking that every message read re-encodes to itself.
async fn read_and_round_trip<M>(bytes: &[u8], with_handshake: bool)
where
    M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut reader = bytes;
    if with_handshake && read_handshake(&mut reader).await.is_err() {
        return;
    }
    for _ in 0..=bytes.len() {
        match read_frame::<_, M>(&mut reader, MAX).await {
            Ok(Some(message)) => {
                let frame = encode_frame(&message, u32::MAX).unwrap();
                let again: M = decode_payload(&frame[4..]).unwrap();
                assert_eq!(again, message);
            }
            Ok(None) | Err(_) => return,
        }
    }
}
