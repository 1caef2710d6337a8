//! Typed messages: which protobuf type each id carries, and which service takes it.

use std::fmt;

use super::pb;
use super::{encode_frame, EncodeError, MessageId, ProtocolError, RawFrame};

/// A protobuf message with its frame id.
pub trait Body: prost::Message + Default {
    /// The id written in the frame header for this message.
    const ID: MessageId;
}

macro_rules! bodies {
    ($($ty:ident => $id:ident),* $(,)?) => {
        $(impl Body for pb::$ty { const ID: MessageId = MessageId::$id; })*
    };
}

bodies! {
    CRegister => CRegister, SRegister => SRegister, CLogin => CLogin, SLogin => SLogin,
    CEnter => CEnter, SEnter => SEnter, SSpawn => SSpawn, SDespawn => SDespawn,
    CChat => CChat, SChat => SChat, CMove => CMove, SMove => SMove,
    CPing => CPing, SPong => SPong, CEcho => CEcho, SEcho => SEcho,
    SError => SError, SDisconnect => SDisconnect,
}

/// The two listeners of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Accounts and tokens (default port 7000).
    Login,
    /// The shared world (default port 7001).
    World,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Login => "login",
            Self::World => "world",
        })
    }
}

/// A message a client sent, decoded and checked against the service that received it.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `C_REGISTER`.
    Register(pb::CRegister),
    /// `C_LOGIN`.
    Login(pb::CLogin),
    /// `C_ENTER`.
    Enter(pb::CEnter),
    /// `C_CHAT`.
    Chat(pb::CChat),
    /// `C_MOVE`.
    Move(pb::CMove),
    /// `C_PING`.
    Ping(pb::CPing),
    /// `C_ECHO`.
    Echo(pb::CEcho),
}

fn decode_body<M: Body>(frame: &RawFrame) -> Result<M, ProtocolError> {
    M::decode(frame.body.clone()).map_err(|e| ProtocolError::MalformedBody {
        id: frame.id,
        reason: e.to_string(),
    })
}

impl ClientMessage {
    /// Decodes a client frame received by `service`: an unknown id, a server-to-client id, an id
    /// the service does not take, or a body protobuf rejects is the matching protocol error.
    pub fn decode(frame: &RawFrame, service: Service) -> Result<Self, ProtocolError> {
        let id = MessageId::from_u16(frame.id).ok_or(ProtocolError::UnknownId { id: frame.id })?;
        if !id.is_client_to_server() {
            return Err(ProtocolError::ServerOnlyId { id: frame.id });
        }
        let wrong_service = ProtocolError::WrongService {
            id: frame.id,
            service,
        };
        Ok(match (id, service) {
            (MessageId::CPing, _) => Self::Ping(decode_body(frame)?),
            (MessageId::CEcho, _) => Self::Echo(decode_body(frame)?),
            (MessageId::CRegister, Service::Login) => Self::Register(decode_body(frame)?),
            (MessageId::CLogin, Service::Login) => Self::Login(decode_body(frame)?),
            (MessageId::CEnter, Service::World) => Self::Enter(decode_body(frame)?),
            (MessageId::CChat, Service::World) => Self::Chat(decode_body(frame)?),
            (MessageId::CMove, Service::World) => Self::Move(decode_body(frame)?),
            _ => return Err(wrong_service),
        })
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        match self {
            Self::Register(_) => MessageId::CRegister,
            Self::Login(_) => MessageId::CLogin,
            Self::Enter(_) => MessageId::CEnter,
            Self::Chat(_) => MessageId::CChat,
            Self::Move(_) => MessageId::CMove,
            Self::Ping(_) => MessageId::CPing,
            Self::Echo(_) => MessageId::CEcho,
        }
    }
}

/// A message the server sent, as a client decodes it.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `S_REGISTER`.
    Register(pb::SRegister),
    /// `S_LOGIN`.
    Login(pb::SLogin),
    /// `S_ENTER`.
    Enter(pb::SEnter),
    /// `S_SPAWN`.
    Spawn(pb::SSpawn),
    /// `S_DESPAWN`.
    Despawn(pb::SDespawn),
    /// `S_CHAT`.
    Chat(pb::SChat),
    /// `S_MOVE`.
    Move(pb::SMove),
    /// `S_PONG`.
    Pong(pb::SPong),
    /// `S_ECHO`.
    Echo(pb::SEcho),
    /// `S_ERROR`.
    Error(pb::SError),
    /// `S_DISCONNECT`.
    Disconnect(pb::SDisconnect),
}

impl ServerMessage {
    /// Decodes a server frame (the client's side of the protocol).
    pub fn decode(frame: &RawFrame) -> Result<Self, ProtocolError> {
        let id = MessageId::from_u16(frame.id).ok_or(ProtocolError::UnknownId { id: frame.id })?;
        Ok(match id {
            MessageId::SRegister => Self::Register(decode_body(frame)?),
            MessageId::SLogin => Self::Login(decode_body(frame)?),
            MessageId::SEnter => Self::Enter(decode_body(frame)?),
            MessageId::SSpawn => Self::Spawn(decode_body(frame)?),
            MessageId::SDespawn => Self::Despawn(decode_body(frame)?),
            MessageId::SChat => Self::Chat(decode_body(frame)?),
            MessageId::SMove => Self::Move(decode_body(frame)?),
            MessageId::SPong => Self::Pong(decode_body(frame)?),
            MessageId::SEcho => Self::Echo(decode_body(frame)?),
            MessageId::SError => Self::Error(decode_body(frame)?),
            MessageId::SDisconnect => Self::Disconnect(decode_body(frame)?),
            _ => return Err(ProtocolError::UnknownId { id: frame.id }),
        })
    }

    /// Appends this message as one frame to `out`; fails, writing nothing, over 65535 bytes.
    pub fn encode(&self, out: &mut bytes::BytesMut) -> Result<(), EncodeError> {
        match self {
            Self::Register(m) => encode_frame(m, out),
            Self::Login(m) => encode_frame(m, out),
            Self::Enter(m) => encode_frame(m, out),
            Self::Spawn(m) => encode_frame(m, out),
            Self::Despawn(m) => encode_frame(m, out),
            Self::Chat(m) => encode_frame(m, out),
            Self::Move(m) => encode_frame(m, out),
            Self::Pong(m) => encode_frame(m, out),
            Self::Echo(m) => encode_frame(m, out),
            Self::Error(m) => encode_frame(m, out),
            Self::Disconnect(m) => encode_frame(m, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(id: u16, body: &[u8]) -> RawFrame {
        RawFrame {
            id,
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn unknown_id_is_named() {
        assert_eq!(
            ClientMessage::decode(&frame(7, &[]), Service::World),
            Err(ProtocolError::UnknownId { id: 7 })
        );
    }

    #[test]
    fn server_to_client_id_from_a_client_is_an_error() {
        for id in [2u16, 4, 11, 12, 13, 21, 31, 41, 51, 90, 99] {
            assert_eq!(
                ClientMessage::decode(&frame(id, &[]), Service::World),
                Err(ProtocolError::ServerOnlyId { id })
            );
        }
    }

    #[test]
    fn each_service_refuses_the_others_messages() {
        for id in [10u16, 20, 30] {
            assert_eq!(
                ClientMessage::decode(&frame(id, &[]), Service::Login),
                Err(ProtocolError::WrongService {
                    id,
                    service: Service::Login
                })
            );
        }
        for id in [1u16, 3] {
            assert_eq!(
                ClientMessage::decode(&frame(id, &[]), Service::World),
                Err(ProtocolError::WrongService {
                    id,
                    service: Service::World
                })
            );
        }
    }

    #[test]
    fn ping_and_echo_are_taken_by_both_services() {
        for service in [Service::Login, Service::World] {
            assert!(matches!(
                ClientMessage::decode(&frame(40, &[]), service),
                Ok(ClientMessage::Ping(_))
            ));
            assert!(matches!(
                ClientMessage::decode(&frame(50, &[]), service),
                Ok(ClientMessage::Echo(_))
            ));
        }
    }

    #[test]
    fn non_utf8_string_is_a_malformed_body() {
        // field 1, wire type 2 (length-delimited), 2 bytes, invalid UTF-8
        let body = [0x0a, 0x02, 0xff, 0xfe];
        assert!(matches!(
            ClientMessage::decode(&frame(20, &body), Service::World),
            Err(ProtocolError::MalformedBody { id: 20, .. })
        ));
    }

    #[test]
    fn truncated_body_is_a_malformed_body() {
        let body = [0x0a, 0x05, b'a'];
        assert!(matches!(
            ClientMessage::decode(&frame(3, &body), Service::Login),
            Err(ProtocolError::MalformedBody { id: 3, .. })
        ));
    }

    #[test]
    fn not_entered_maps_to_not_authenticated() {
        assert_eq!(
            ProtocolError::NotEntered { id: 20 }.disconnect_reason(),
            pb::DisconnectReason::NotAuthenticated
        );
        assert_eq!(
            ProtocolError::UnknownId { id: 7 }.disconnect_reason(),
            pb::DisconnectReason::ProtocolError
        );
    }
}
