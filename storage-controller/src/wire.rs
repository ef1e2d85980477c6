//! The wire format of the replica protocol: a handshake, then
//! length-delimited frames.
//!
//! # Format
//!
//! Each side of a connection first sends 8 bytes, without waiting for the
//! other: the magic [`MAGIC`] (`TDMK`) and the protocol version
//! [`PROTOCOL_VERSION`] as a 4-byte big-endian integer. Each side checks
//! the other's and closes the connection on a mismatch.
//!
//! Then each message is one frame: its payload's length as a 4-byte
//! big-endian integer, then the payload, the message in bincode's default
//! options (variable-length integers, little-endian, trailing bytes
//! refused). The controller sends [`StorageCommand`]s, the replica
//! [`StorageResponse`]s; the controller's first frame is always
//! [`StorageCommand::CreateTimely`].
//!
//! A frame whose announced length exceeds the reader's maximum is refused
//! before anything of that length is allocated; the payload buffer grows
//! only as bytes actually arrive, so a peer that announces a large frame
//! and sends little costs little. Nothing in a frame is trusted: every
//! failure is a [`WireError`] value, never a panic.
//!
//! [`StorageCommand`]: crate::protocol::StorageCommand
//! [`StorageResponse`]: crate::protocol::StorageResponse
//! [`StorageCommand::CreateTimely`]: crate::protocol::StorageCommand::CreateTimely
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tidemark_storage_controller::protocol::StorageCommand;
//! use tidemark_storage_controller::wire::{read_frame, write_frame, DEFAULT_MAX_FRAME_BYTES};
//!
//! let mut buffer = Vec::new();
//! let command = StorageCommand::<u64>::InitializationComplete;
//! write_frame(&mut buffer, &command, DEFAULT_MAX_FRAME_BYTES).await.unwrap();
//! let mut reader = &buffer[..];
//! let read: Option<StorageCommand<u64>> =
//!     read_frame(&mut reader, DEFAULT_MAX_FRAME_BYTES).await.unwrap();
//! assert_eq!(read, Some(command));
//! // A clean end of the stream between frames is `None`, not an error.
//! let end: Option<StorageCommand<u64>> =
//!     read_frame(&mut reader, DEFAULT_MAX_FRAME_BYTES).await.unwrap();
//! assert_eq!(end, None);
//! # });
//! ```

use std::io;
use std::time::Duration;

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::StorageCommand;

/// The first four bytes each side sends.
pub const MAGIC: [u8; 4] = *b"TDMK";

/// The version of the protocol this crate speaks. Peers must speak the
/// same one. Any change to how a protocol type encodes (a field added,
/// removed or reordered, a variant added) bumps it: bincode carries no
/// field names, so peers of different layouts would misread each other.
///
/// - 1: the first version.
/// - 2: [`StatisticsUpdate`](crate::protocol::StatisticsUpdate) gained
///   `frontier_lag`.
pub const PROTOCOL_VERSION: u32 = 2;

/// The length of the handshake each side sends: magic and version.
pub const HANDSHAKE_LEN: usize = 8;

/// The largest frame payload read or written unless configured otherwise
/// (64 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 64 << 20;

/// Why a connection was refused or ended. Each closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// The peer's first bytes are not the magic: it does not speak this
    /// protocol at all.
    #[error("bad magic: expected=\"TDMK\" got=\"{}\"", .got.escape_ascii())]
    BadMagic {
        /// The four bytes received.
        got: [u8; 4],
    },
    /// The peer speaks another version of the protocol.
    #[error("protocol version mismatch: expected={expected} got={got}")]
    VersionMismatch {
        /// The version this side speaks.
        expected: u32,
        /// The version the peer announced.
        got: u32,
    },
    /// A frame longer than the maximum was announced (when reading) or
    /// would be needed (when writing).
    #[error("frame too large: max={max} got={got}")]
    FrameTooLarge {
        /// The maximum payload length.
        max: u32,
        /// The length announced or needed.
        got: u64,
    },
    /// The connection ended in the middle of the handshake or a frame.
    #[error("connection closed mid-{part}: expected={expected} bytes got={got}")]
    Truncated {
        /// `handshake`, `frame header` or `frame payload`.
        part: &'static str,
        /// Bytes that part needs.
        expected: u64,
        /// Bytes that arrived before the end.
        got: u64,
    },
    /// A complete frame whose payload is not a message of the expected
    /// type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A message could not be encoded.
    #[error("message cannot be encoded: {0}")]
    Unencodable(String),
    /// The controller's first command was not `CreateTimely`.
    #[error("first command is not create-timely: got={0}")]
    UnexpectedFirstCommand(String),
    /// The connection ended after the handshake, before the first command.
    #[error("connection closed before the first command (create-timely)")]
    NoFirstCommand,
    /// The peer did not complete a step in time.
    #[error("timed out: during={during} after={after:?}")]
    Timeout {
        /// `connect` or `handshake`.
        during: &'static str,
        /// The time allowed.
        after: Duration,
    },
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
}

/// The handshake this side sends.
#[must_use]
pub fn handshake() -> [u8; HANDSHAKE_LEN] {
    let mut bytes = [0; HANDSHAKE_LEN];
    bytes[..4].copy_from_slice(&MAGIC);
    bytes[4..].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    bytes
}

/// Checks a peer's handshake.
///
/// # Errors
///
/// [`WireError::BadMagic`] or [`WireError::VersionMismatch`].
pub fn check_handshake(bytes: &[u8; HANDSHAKE_LEN]) -> Result<(), WireError> {
    let (magic, version) = bytes.split_at(4);
    let magic: [u8; 4] = magic.try_into().expect("split at 4 of 8");
    if magic != MAGIC {
        return Err(WireError::BadMagic { got: magic });
    }
    let got = u32::from_be_bytes(version.try_into().expect("split at 4 of 8"));
    if got != PROTOCOL_VERSION {
        return Err(WireError::VersionMismatch {
            expected: PROTOCOL_VERSION,
            got,
        });
    }
    Ok(())
}

/// Sends this side's handshake.
///
/// # Errors
///
/// [`WireError::Io`].
pub async fn write_handshake<W: AsyncWrite + Unpin>(writer: &mut W) -> Result<(), WireError> {
    writer.write_all(&handshake()).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads and checks the peer's handshake.
///
/// # Errors
///
/// [`WireError::Truncated`] if the stream ends first, otherwise as
/// [`check_handshake`] and [`WireError::Io`].
pub async fn read_handshake<R: AsyncRead + Unpin>(reader: &mut R) -> Result<(), WireError> {
    let mut bytes = [0; HANDSHAKE_LEN];
    let got = read_full(reader, &mut bytes).await?;
    if got < HANDSHAKE_LEN {
        return Err(WireError::Truncated {
            part: "handshake",
            expected: HANDSHAKE_LEN as u64,
            got: got as u64,
        });
    }
    check_handshake(&bytes)
}

/// `message` as one frame: length, then payload.
///
/// # Errors
///
/// [`WireError::FrameTooLarge`] if its payload exceeds `max_frame_bytes`;
/// [`WireError::Unencodable`] if serde refuses it.
pub fn encode_frame<M: Serialize>(message: &M, max_frame_bytes: u32) -> Result<Vec<u8>, WireError> {
    let payload_len = options()
        .serialized_size(message)
        .map_err(|err| WireError::Unencodable(err.to_string()))?;
    if payload_len > u64::from(max_frame_bytes) {
        return Err(WireError::FrameTooLarge {
            max: max_frame_bytes,
            got: payload_len,
        });
    }
    let header = u32::try_from(payload_len).expect("bounded by max_frame_bytes");
    let mut frame = Vec::with_capacity(4 + header as usize);
    frame.extend_from_slice(&header.to_be_bytes());
    options()
        .serialize_into(&mut frame, message)
        .map_err(|err| WireError::Unencodable(err.to_string()))?;
    Ok(frame)
}

/// Decodes one frame's payload.
///
/// # Errors
///
/// [`WireError::Malformed`] if it is not exactly one `M`.
pub fn decode_payload<M: DeserializeOwned>(payload: &[u8]) -> Result<M, WireError> {
    options()
        .with_limit(payload.len() as u64)
        .deserialize(payload)
        .map_err(|err| WireError::Malformed(err.to_string()))
}

/// Writes `message` as one frame.
///
/// # Errors
///
/// As [`encode_frame`], and [`WireError::Io`].
pub async fn write_frame<W: AsyncWrite + Unpin, M: Serialize>(
    writer: &mut W,
    message: &M,
    max_frame_bytes: u32,
) -> Result<(), WireError> {
    let frame = encode_frame(message, max_frame_bytes)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame. `None` if the stream ended cleanly before it (the
/// peer closed the connection between frames).
///
/// # Errors
///
/// [`WireError::FrameTooLarge`] (read no further), [`WireError::Truncated`]
/// if the stream ends inside the frame, [`WireError::Malformed`],
/// [`WireError::Io`].
pub async fn read_frame<R: AsyncRead + Unpin, M: DeserializeOwned>(
    reader: &mut R,
    max_frame_bytes: u32,
) -> Result<Option<M>, WireError> {
    let mut header = [0; 4];
    let got = read_full(reader, &mut header).await?;
    if got == 0 {
        return Ok(None);
    }
    if got < header.len() {
        return Err(WireError::Truncated {
            part: "frame header",
            expected: 4,
            got: got as u64,
        });
    }
    let len = u32::from_be_bytes(header);
    if len > max_frame_bytes {
        return Err(WireError::FrameTooLarge {
            max: max_frame_bytes,
            got: u64::from(len),
        });
    }
    // SUBTLE: `take` + `read_to_end` grows the buffer as bytes arrive; the
    // announced length (already bounded) is never allocated up front.
    let mut payload = Vec::new();
    reader
        .take(u64::from(len))
        .read_to_end(&mut payload)
        .await?;
    if payload.len() < len as usize {
        return Err(WireError::Truncated {
            part: "frame payload",
            expected: u64::from(len),
            got: payload.len() as u64,
        });
    }
    decode_payload(&payload).map(Some)
}

/// The name of a command's variant, for errors and logs.
pub(crate) fn command_kind<T>(command: &StorageCommand<T>) -> &'static str {
    match command {
        StorageCommand::CreateTimely { .. } => "create-timely",
        StorageCommand::InitializationComplete => "initialization-complete",
        StorageCommand::UpdateConfiguration(_) => "update-configuration",
        StorageCommand::CreateSources(_) => "create-sources",
        StorageCommand::CreateSinks(_) => "create-sinks",
        StorageCommand::AllowCompaction(_) => "allow-compaction",
    }
}

/// Reads until `buffer` is full or the stream ends; the bytes read.
async fn read_full<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut [u8],
) -> Result<usize, WireError> {
    let mut filled = 0;
    while filled < buffer.len() {
        let read = reader.read(&mut buffer[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests;
