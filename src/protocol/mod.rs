//! The wire protocol of `../shared/PROTOCOL.md`, sans-IO: frames in and out of byte buffers,
//! typed messages, and every protocol error named. No runtime and no socket in here.

mod error;
mod frame;
mod id;
mod message;

/// The protobuf messages generated from `proto/gameserver.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/gameserver.v1.rs"));
}

/// The compiled `.proto` (a `FileDescriptorSet`), for tools and the contract test.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/gameserver.descriptor.bin"));

pub use error::{EncodeError, ProtocolError};
pub use frame::{
    encode_frame, encode_raw_frame, FrameDecoder, RawFrame, DEFAULT_MAX_CLIENT_FRAME, HEADER_LEN,
    MAX_SERVER_FRAME,
};
pub use id::MessageId;
pub use message::{Body, ClientMessage, ServerMessage, Service};

/// Microseconds since the Unix epoch, as `S_PONG.server_time` carries it.
pub fn unix_micros(now: std::time::SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
