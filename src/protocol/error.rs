//! The protocol errors of PROTOCOL.md, each named, and what the server answers to each.

use super::pb::DisconnectReason;
use super::Service;

/// A protocol error: the connection that caused it gets `S_DISCONNECT` and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The header's `size` is below the 4-byte header itself.
    #[error("frame size {size} is smaller than the 4-byte header")]
    FrameTooShort {
        /// The size the header claimed.
        size: u16,
    },
    /// The header's `size` is above the configured `max_client_frame`.
    #[error("frame size {size} exceeds the limit of {max}")]
    FrameTooLong {
        /// The size the header claimed.
        size: u16,
        /// The configured limit.
        max: usize,
    },
    /// The id is not in the protocol's table.
    #[error("unknown message id {id}")]
    UnknownId {
        /// The id from the header.
        id: u16,
    },
    /// A server-to-client id (`S_...`) sent by a client.
    #[error("message id {id} goes from server to client only")]
    ServerOnlyId {
        /// The id from the header.
        id: u16,
    },
    /// An id the service does not take (a world message on the login service, or the reverse).
    #[error("message id {id} is not taken by the {service} service")]
    WrongService {
        /// The id from the header.
        id: u16,
        /// The service that received it.
        service: Service,
    },
    /// A world message before a successful `C_ENTER`.
    #[error("message id {id} before C_ENTER")]
    NotEntered {
        /// The id from the header.
        id: u16,
    },
    /// A second `C_ENTER` on a session that is already in the world, or one sent while the
    /// first is still being checked.
    #[error("C_ENTER on a session that has already entered")]
    AlreadyEntered,
    /// A body protobuf could not decode (including a `string` that is not UTF-8).
    #[error("message id {id} has a malformed body: {reason}")]
    MalformedBody {
        /// The id from the header.
        id: u16,
        /// What prost said.
        reason: String,
    },
}

impl ProtocolError {
    /// The reason the server puts in `S_DISCONNECT` for this error.
    pub fn disconnect_reason(&self) -> DisconnectReason {
        match self {
            Self::NotEntered { .. } => DisconnectReason::NotAuthenticated,
            _ => DisconnectReason::ProtocolError,
        }
    }
}

/// A message that cannot be put in one frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded frame would exceed 65535 bytes.
    #[error("frame of {len} bytes exceeds the 65535-byte limit")]
    TooLarge {
        /// The frame length it would have had.
        len: usize,
    },
}
