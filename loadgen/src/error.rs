//! Everything that can stop a load run, each with a message that says what to do about it.

use std::net::SocketAddr;
use std::path::PathBuf;

use gameserver::protocol::ProtocolError;

/// Why a run (or one connection of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// Nothing listens at the address, or the network refused.
    #[error("cannot connect to {addr}: {source} (is the server running and listening there?)")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Connecting (TCP and TLS together) took longer than `--connect-timeout`.
    #[error("connecting to {addr} timed out (server overloaded, or not accepting?)")]
    ConnectTimeout {
        /// Where.
        addr: SocketAddr,
    },
    /// The CA file for `--tls` cannot be used.
    #[error("TLS: {source} (pass --ca with the server's CA certificate, e.g. certs/ca.pem, or drop --tls for a plaintext server)")]
    TlsSetup {
        /// What the TLS layer said, naming the file.
        source: gameserver::tls::TlsError,
    },
    /// The TLS handshake failed (wrong CA, wrong name, or a plaintext server).
    #[error(
        "TLS handshake with {addr} failed: {source} (is the server's TLS on, and --ca its CA?)"
    )]
    TlsHandshake {
        /// Where.
        addr: SocketAddr,
        /// What rustls said.
        source: std::io::Error,
    },
    /// The socket failed mid-run.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection when an answer was due.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent `S_DISCONNECT`.
    #[error("the server disconnected us: {reason} ({detail})")]
    Disconnected {
        /// The reason's name.
        reason: String,
        /// The server's detail text.
        detail: String,
    },
    /// The server sent something that is not the protocol.
    #[error("bad frame from the server: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server answered with something the scenario did not expect.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The server refused an account operation for a reason retrying does not fix.
    #[error("account {user}: {what}")]
    Account {
        /// The username.
        user: String,
        /// What went wrong.
        what: String,
    },
    /// An answer did not come in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The command line does not make sense.
    #[error("{0}")]
    Args(String),
    /// A result file could not be written.
    #[error("cannot write {path}: {reason}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server process's counters could not be read (`--server-pid`).
    #[error("cannot read {path}: {reason} (is --server-pid a running process of this user?)")]
    Proc {
        /// The /proc file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another worker failed first; this one stopped with it.
    #[error("stopped because another worker failed")]
    Aborted,
    /// A worker thread could not start or panicked.
    #[error("worker thread: {0}")]
    Worker(String),
}

impl LoadgenError {
    /// A short, stable name for counting errors in a report (`closed`, `io`, `disconnected`, ...).
    pub fn kind(&self) -> String {
        match self {
            Self::Connect { .. } => "connect".into(),
            Self::ConnectTimeout { .. } => "connect_timeout".into(),
            Self::TlsSetup { .. } => "tls_setup".into(),
            Self::TlsHandshake { .. } => "tls_handshake".into(),
            Self::Io(_) => "io".into(),
            Self::Closed => "closed".into(),
            Self::Disconnected { reason, .. } => format!("disconnected_{reason}"),
            Self::Protocol(_) => "protocol".into(),
            Self::Unexpected(_) => "unexpected".into(),
            Self::Account { .. } => "account".into(),
            Self::Timeout(_) => "timeout".into(),
            Self::Args(_) => "args".into(),
            Self::Output { .. } => "output".into(),
            Self::Proc { .. } => "proc".into(),
            Self::Aborted => "aborted".into(),
            Self::Worker(_) => "worker".into(),
        }
    }
}
