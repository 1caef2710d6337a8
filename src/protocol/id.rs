//! Message ids: the `id` field of the frame header.

/// Every message id of the protocol. The numbers are the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageId {
    /// `C_REGISTER`, login.
    CRegister = 1,
    /// `S_REGISTER`, login.
    SRegister = 2,
    /// `C_LOGIN`, login.
    CLogin = 3,
    /// `S_LOGIN`, login.
    SLogin = 4,
    /// `C_ENTER`, world.
    CEnter = 10,
    /// `S_ENTER`, world.
    SEnter = 11,
    /// `S_SPAWN`, world.
    SSpawn = 12,
    /// `S_DESPAWN`, world.
    SDespawn = 13,
    /// `C_CHAT`, world.
    CChat = 20,
    /// `S_CHAT`, world.
    SChat = 21,
    /// `C_MOVE`, world.
    CMove = 30,
    /// `S_MOVE`, world.
    SMove = 31,
    /// `C_PING`, both services.
    CPing = 40,
    /// `S_PONG`, both services.
    SPong = 41,
    /// `C_ECHO`, both services.
    CEcho = 50,
    /// `S_ECHO`, both services.
    SEcho = 51,
    /// `S_ERROR`, both services.
    SError = 90,
    /// `S_DISCONNECT`, both services.
    SDisconnect = 99,
}

impl MessageId {
    /// Every id, in table order.
    pub const ALL: [MessageId; 18] = [
        Self::CRegister,
        Self::SRegister,
        Self::CLogin,
        Self::SLogin,
        Self::CEnter,
        Self::SEnter,
        Self::SSpawn,
        Self::SDespawn,
        Self::CChat,
        Self::SChat,
        Self::CMove,
        Self::SMove,
        Self::CPing,
        Self::SPong,
        Self::CEcho,
        Self::SEcho,
        Self::SError,
        Self::SDisconnect,
    ];

    /// The id for a header value, or `None` when the number is not in the table.
    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|id| *id as u16 == value)
    }

    /// True for the ids a client sends (`C_` messages).
    pub fn is_client_to_server(self) -> bool {
        matches!(
            self,
            Self::CRegister
                | Self::CLogin
                | Self::CEnter
                | Self::CChat
                | Self::CMove
                | Self::CPing
                | Self::CEcho
        )
    }
}
