//! The interactive terminal client: `gameserver client`.
//!
//! Lines typed on stdin are commands (`/login alice password1`, `/enter`, ...) or chat. One
//! thread reads stdin and passes the lines over a channel; the calling thread owns both
//! connections and alternates between the typed lines and the world service's messages, which
//! it prints in words as they arrive.

use std::collections::HashMap;
use std::fmt::Display;
use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::{ClientError, Connection, Tls};
use crate::protocol::pb::{self, DisconnectReason};
use crate::protocol::{unix_micros, Body, ServerMessage};

/// How long connecting (TCP and TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the answer to a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one poll of the world connection waits.
const POLL: Duration = Duration::from_millis(50);
/// How long to wait for typed lines while not in the world.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// After `S_ENTER`, how long to wait for each further `S_SPAWN` of the snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_millis(150);
/// Send `C_PING` after this long without sending anything (the server's idle timeout is 60 s).
const KEEPALIVE: Duration = Duration::from_secs(15);
/// A login connection unused for this long is replaced rather than reused.
const LOGIN_REUSE: Duration = Duration::from_secs(30);
/// At the end of input, how long to keep printing what the world sends (answers to the last
/// lines of a piped script).
const LINGER: Duration = Duration::from_millis(500);

/// What `/help` prints.
const HELP: &str = "\
commands:
  /register NAME PASSWORD   create an account
  /login NAME PASSWORD      log in and keep a one-time token for /enter
  /enter                    enter the world with the last token
  /move X Y Z               move to a position
  /who                      list the players in view
  /ping                     measure the round trip (world if entered, else login)
  /help                     this list
  /quit                     leave (end of input does the same, after 0.5 s)
anything else is chat once you have entered (start with // to chat a line beginning with /)";

/// Arguments of `gameserver client`.
#[derive(clap::Args)]
pub struct ClientArgs {
    /// Address of the login service.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7000")]
    pub login: String,
    /// Address of the world service.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7001")]
    pub world: String,
    /// The CA certificate to trust (the server writes its development CA there on first start).
    #[arg(long, value_name = "PATH", default_value = "certs/ca.pem")]
    pub ca: PathBuf,
    /// The name the server's certificate must carry.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub server_name: String,
    /// Connect without TLS (for a server whose config says `[tls] enabled = false`).
    #[arg(long)]
    pub plaintext: bool,
    /// Log in as this user (registering it if unknown) and enter the world at start.
    #[arg(long, value_name = "NAME", requires = "password")]
    pub user: Option<String>,
    /// The password for `--user` (or `GAMESERVER_PASSWORD`, which `ps` does not show).
    #[arg(
        long,
        value_name = "PASSWORD",
        requires = "user",
        env = "GAMESERVER_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
}

impl std::fmt::Debug for ClientArgs {
    /// Like a derived `Debug`, with the password left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("login", &self.login)
            .field("world", &self.world)
            .field("ca", &self.ca)
            .field("server_name", &self.server_name)
            .field("plaintext", &self.plaintext)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One typed line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `/register NAME PASSWORD`.
    Register {
        /// The account name.
        name: String,
        /// The password (the rest of the line).
        password: String,
    },
    /// `/login NAME PASSWORD`.
    Login {
        /// The account name.
        name: String,
        /// The password (the rest of the line).
        password: String,
    },
    /// `/enter`.
    Enter,
    /// `/move X Y Z`.
    Move {
        /// East-west.
        x: f32,
        /// Up-down.
        y: f32,
        /// North-south.
        z: f32,
    },
    /// `/who`.
    Who,
    /// `/ping`.
    Ping,
    /// `/help`.
    Help,
    /// `/quit`.
    Quit,
    /// A line not starting with `/` (or starting with `//`, one `/` removed).
    Chat(String),
}

/// Parses one typed line (not blank). The error is a message for the user.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(escaped) = line.strip_prefix("//") {
        return Ok(Command::Chat(format!("/{escaped}")));
    }
    let Some(command) = line.strip_prefix('/') else {
        return Ok(Command::Chat(line.to_string()));
    };
    let (word, rest) = match command.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (command, ""),
    };
    let no_args = |cmd: Command| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(format!("/{word} takes no arguments"))
        }
    };
    match word {
        "register" => credentials(rest, "register")
            .map(|(name, password)| Command::Register { name, password }),
        "login" => {
            credentials(rest, "login").map(|(name, password)| Command::Login { name, password })
        }
        "move" => coordinates(rest).map(|(x, y, z)| Command::Move { x, y, z }),
        "enter" => no_args(Command::Enter),
        "who" => no_args(Command::Who),
        "ping" => no_args(Command::Ping),
        "help" => no_args(Command::Help),
        "quit" | "exit" => no_args(Command::Quit),
        _ => Err(format!("unknown command /{word}; /help lists the commands")),
    }
}

/// `NAME PASSWORD`: the password is the rest of the line, so it may hold spaces.
fn credentials(rest: &str, command: &str) -> Result<(String, String), String> {
    match rest.split_once(char::is_whitespace) {
        Some((name, password)) if !password.trim().is_empty() => {
            Ok((name.to_string(), password.trim().to_string()))
        }
        _ => Err(format!("usage: /{command} NAME PASSWORD")),
    }
}

/// `X Y Z`: three finite numbers.
fn coordinates(rest: &str) -> Result<(f32, f32, f32), String> {
    const USAGE: &str = "usage: /move X Y Z (three numbers)";
    let numbers: Vec<f32> = rest
        .split_whitespace()
        .map(|n| {
            n.parse::<f32>()
                .map_err(|_| format!("{n:?} is not a number; {USAGE}"))
        })
        .collect::<Result<_, _>>()?;
    match numbers[..] {
        [x, y, z] if [x, y, z].iter().all(|c| c.is_finite()) => Ok((x, y, z)),
        [_, _, _] => Err("coordinates must be finite numbers".to_string()),
        _ => Err(USAGE.to_string()),
    }
}

/// The line to print for a world message, or `None` for messages the client handles
/// otherwise (`S_PONG`, answers to requests). `names` maps the player ids in view to names.
pub fn describe(msg: &ServerMessage, names: &HashMap<u64, String>) -> Option<String> {
    let name = |id: u64| match names.get(&id) {
        Some(name) => clean(name),
        None => format!("player {id}"),
    };
    match msg {
        ServerMessage::Chat(chat) => {
            Some(format!("[{}] {}", name(chat.player_id), clean(&chat.text)))
        }
        ServerMessage::Spawn(spawn) if !spawn.players.is_empty() => Some(lines(
            spawn
                .players
                .iter()
                .map(|p| format!("* {} entered", clean(&p.name))),
        )),
        ServerMessage::Despawn(despawn) if !despawn.player_ids.is_empty() => Some(lines(
            despawn
                .player_ids
                .iter()
                .map(|id| format!("* {} left", name(*id))),
        )),
        ServerMessage::Move(m) => Some(format!(
            "* {} moved to {}",
            name(m.player_id),
            position(m.x, m.y, m.z)
        )),
        ServerMessage::Error(e) => Some(format!(
            "! {}{}",
            result_words(e.result),
            request_words(e.request_id)
        )),
        ServerMessage::Disconnect(d) => Some(disconnect_words(d)),
        _ => None,
    }
}

/// The line printed after a successful `/enter`.
pub fn describe_entry(me: &pb::Player, others: &[String]) -> String {
    let at = position(me.x, me.y, me.z);
    match others.len() {
        0 => format!("entered the world at {at}; no other players here"),
        1 => format!(
            "entered the world at {at}; 1 other player here: {}",
            others[0]
        ),
        n => format!(
            "entered the world at {at}; {n} other players here: {}",
            others.join(", ")
        ),
    }
}

/// The lines joined with newlines.
fn lines(lines: impl Iterator<Item = String>) -> String {
    lines.collect::<Vec<_>>().join("\n")
}

/// `(x, y, z)`, without needless decimals.
fn position(x: f32, y: f32, z: f32) -> String {
    format!("({x}, {y}, {z})")
}

/// Text from the network with control characters (terminal escapes) replaced.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// A `Result` number in words.
fn result_words(result: i32) -> String {
    let words = match pb::Result::try_from(result) {
        Ok(pb::Result::Ok) => "ok",
        Ok(pb::Result::InvalidCredentials) => "invalid credentials",
        Ok(pb::Result::AccountExists) => "account exists",
        Ok(pb::Result::InvalidToken) => "invalid token",
        Ok(pb::Result::ServerBusy) => "server busy",
        Ok(pb::Result::InternalError) => "internal error",
        Ok(pb::Result::RateLimited) => "rate limited",
        Ok(pb::Result::InvalidInput) => "invalid input",
        Err(_) => return format!("result {result}"),
    };
    words.to_string()
}

/// ` (chat)` for the request an `S_ERROR` answers, if known.
fn request_words(request_id: u32) -> &'static str {
    match request_id {
        1 => " (register)",
        3 => " (login)",
        10 => " (enter)",
        20 => " (chat)",
        30 => " (move)",
        _ => "",
    }
}

/// `! disconnected: duplicate login (detail)`.
fn disconnect_words(d: &pb::SDisconnect) -> String {
    let reason = match DisconnectReason::try_from(d.reason) {
        Ok(DisconnectReason::Unspecified) => "no reason given".to_string(),
        Ok(DisconnectReason::ProtocolError) => "protocol error".to_string(),
        Ok(DisconnectReason::NotAuthenticated) => "not authenticated".to_string(),
        Ok(DisconnectReason::DuplicateLogin) => "duplicate login".to_string(),
        Ok(DisconnectReason::SlowConsumer) => "slow consumer".to_string(),
        Ok(DisconnectReason::IdleTimeout) => "idle timeout".to_string(),
        Ok(DisconnectReason::ServerShutdown) => "server shutdown".to_string(),
        Ok(DisconnectReason::RateLimited) => "rate limited".to_string(),
        Ok(DisconnectReason::ServerFull) => "server full".to_string(),
        Err(_) => format!("reason {}", d.reason),
    };
    if d.detail.is_empty() {
        format!("! disconnected: {reason}")
    } else {
        format!("! disconnected: {reason} ({})", clean(&d.detail))
    }
}

/// Why connecting to `service` at `addr` failed, with a hint for the usual causes.
fn unreachable(service: &str, addr: &str, err: &ClientError) -> String {
    let (what, hint) = match err {
        ClientError::Io(e) => match e.kind() {
            io::ErrorKind::ConnectionRefused => {
                ("connection refused".to_string(), "is the server running?")
            }
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => (
                "timed out".to_string(),
                "is the address right and the server running?",
            ),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => (
                "closed during the TLS handshake".to_string(),
                "does the server use TLS? If not, pass --plaintext",
            ),
            _ => (e.to_string(), "is the server running?"),
        },
        ClientError::Tls(e) => (
            format!("TLS handshake failed: {e}"),
            "trust the certs/ca.pem of this server (--ca) and name it as its certificate \
             does (--server-name localhost or 127.0.0.1); if the server runs without TLS, \
             pass --plaintext",
        ),
        other => (other.to_string(), "is the server running?"),
    };
    format!("cannot reach the {service} service at {addr}: {what} — {hint}")
}

/// Prints one line (or several); a closed stdout is not worth a panic.
fn say(text: impl Display) {
    let _ = writeln!(io::stdout().lock(), "{text}");
}

/// The last token from `/login`: good for one `/enter`.
struct Token {
    /// The token itself; never printed.
    value: String,
}

/// The state while in the world.
struct World {
    conn: Connection,
    /// This player's id.
    me: u64,
    /// Every player in view, this one included.
    names: HashMap<u64, String>,
    /// When something was last sent, for the keep-alive ping.
    last_sent: Instant,
}

/// The client: settings, both connections and what it knows.
struct Client {
    args: ClientArgs,
    /// The TLS settings, once the CA was read.
    tls: Option<Tls>,
    /// The login connection and when it was last used.
    login: Option<(Connection, Instant)>,
    token: Option<Token>,
    world: Option<World>,
    /// The `client_time` of the last `/ping` on the world connection and when it was sent.
    ping: Option<(u64, Instant)>,
}

/// Runs the client until `/quit` or the end of input.
pub fn run(args: ClientArgs) -> Result<(), ClientError> {
    let lines = spawn_stdin_reader()?;
    let mut client = Client {
        args,
        tls: None,
        login: None,
        token: None,
        world: None,
        ping: None,
    };
    say("gameserver client; /help lists the commands");
    if !client.args.plaintext {
        if let Err(message) = client.tls() {
            say(message);
        }
    }
    if let (Some(user), Some(password)) = (client.args.user.clone(), client.args.password.clone()) {
        client.auto_login(&user, &password);
    }
    client.run(&lines);
    Ok(())
}

/// Starts the thread that reads stdin and sends each line; the channel closes at end of input.
fn spawn_stdin_reader() -> io::Result<Receiver<String>> {
    let (tx, rx) = crossbeam_channel::bounded(16);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stdin.read_until(b'\n', &mut buf) {
                    Ok(0) => return,
                    Ok(_) => {
                        if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        say(format!("cannot read input: {e}"));
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

impl Client {
    /// The main loop: typed lines first, then the world's messages (or a wait for lines).
    fn run(&mut self, lines: &Receiver<String>) {
        loop {
            loop {
                match lines.try_recv() {
                    Ok(line) => {
                        if !self.on_line(&line) {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.linger(),
                }
            }
            if self.world.is_some() {
                self.poll_world();
            } else {
                match lines.recv_timeout(IDLE_WAIT) {
                    Ok(line) => {
                        if !self.on_line(&line) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return self.linger(),
                }
            }
        }
    }

    /// At the end of input: prints the world's messages for a moment, then returns.
    fn linger(&mut self) {
        let until = Instant::now() + LINGER;
        while self.world.is_some() && Instant::now() < until {
            self.poll_world();
        }
    }

    /// Handles one typed line; false on `/quit`.
    fn on_line(&mut self, line: &str) -> bool {
        if line.trim().is_empty() {
            return true;
        }
        match parse_command(line) {
            Ok(Command::Quit) => return false,
            Ok(command) => self.execute(command),
            Err(message) => say(message),
        }
        true
    }

    fn execute(&mut self, command: Command) {
        match command {
            Command::Register { name, password } => {
                self.register(&name, &password);
            }
            Command::Login { name, password } => {
                self.login(&name, &password);
            }
            Command::Enter => self.enter(),
            Command::Move { x, y, z } => {
                if self.send_world(&pb::CMove { x, y, z }) {
                    say(format!("you moved to {}", position(x, y, z)));
                }
            }
            Command::Who => self.who(),
            Command::Ping => self.ping(),
            Command::Help => say(HELP),
            Command::Quit => {}
            Command::Chat(text) => {
                self.send_world(&pb::CChat { text });
            }
        }
    }

    /// `--user/--password`: log in (registering first if the name is unknown), then enter.
    fn auto_login(&mut self, user: &str, password: &str) {
        let logged_in = match self.login(user, password) {
            Some(pb::Result::Ok) => true,
            Some(pb::Result::InvalidCredentials) => {
                say(format!("trying to register {user}"));
                self.register(user, password) && self.login(user, password) == Some(pb::Result::Ok)
            }
            _ => false,
        };
        if logged_in {
            self.enter();
        }
    }

    /// `/register`; true when the account was created.
    fn register(&mut self, name: &str, password: &str) -> bool {
        let request = pb::CRegister {
            username: name.to_string(),
            password: password.to_string(),
        };
        match self.login_request(&request) {
            Some(ServerMessage::Register(r)) if r.result == pb::Result::Ok as i32 => {
                say(format!("registered as {name} (account {})", r.account_id));
                true
            }
            Some(ServerMessage::Register(r)) => {
                say(format!(
                    "cannot register {name}: {}",
                    result_words(r.result)
                ));
                if r.result == pb::Result::InvalidInput as i32 {
                    say("a name has 3 to 32 letters, digits or _; a password 8 to 128 bytes");
                }
                false
            }
            other => {
                self.unexpected(other);
                false
            }
        }
    }

    /// `/login`; keeps the token. Returns the result if the service answered.
    fn login(&mut self, name: &str, password: &str) -> Option<pb::Result> {
        let request = pb::CLogin {
            username: name.to_string(),
            password: password.to_string(),
        };
        match self.login_request(&request) {
            Some(ServerMessage::Login(r)) => {
                let result = pb::Result::try_from(r.result).ok();
                if result == Some(pb::Result::Ok) {
                    say(format!("logged in; token valid {} s", r.expires_in_secs));
                    self.token = Some(Token { value: r.token });
                } else {
                    say(format!(
                        "cannot log in as {name}: {}",
                        result_words(r.result)
                    ));
                }
                result
            }
            other => {
                self.unexpected(other);
                None
            }
        }
    }

    /// Prints an answer that was not the one expected (`None`: the failure was printed).
    fn unexpected(&self, answer: Option<ServerMessage>) {
        if let Some(msg) = answer {
            match describe(&msg, &HashMap::new()) {
                Some(text) => say(text),
                None => say("unexpected answer from the login service"),
            }
        }
    }

    /// Sends one request on the login connection (opened on demand) and returns its answer;
    /// `None` after printing what failed.
    fn login_request<M: Body>(&mut self, request: &M) -> Option<ServerMessage> {
        let mut conn = match self.login.take() {
            Some((conn, used)) if used.elapsed() < LOGIN_REUSE => conn,
            _ => self.connect("login", &self.args.login.clone())?,
        };
        if let Err(e) = conn.send(request) {
            say(self.lost("login", &e));
            return None;
        }
        match conn.recv_timeout(ANSWER_TIMEOUT) {
            Ok(ServerMessage::Disconnect(d)) => {
                say(disconnect_words(&d));
                None
            }
            Ok(answer) => {
                self.login = Some((conn, Instant::now()));
                Some(answer)
            }
            Err(ClientError::Timeout) => {
                say("the login service did not answer in time");
                None
            }
            Err(e) => {
                say(self.lost("login", &e));
                None
            }
        }
    }

    /// `/enter`: connects to the world, sends the token and prints who is there.
    fn enter(&mut self) {
        if self.world.is_some() {
            say("already in the world; /quit to leave");
            return;
        }
        let Some(token) = self.token.take() else {
            say("no token: /login NAME PASSWORD first");
            return;
        };
        let Some(mut conn) = self.connect("world", &self.args.world.clone()) else {
            self.token = Some(token);
            return;
        };
        if let Err(e) = conn.send(&pb::CEnter { token: token.value }) {
            say(self.lost("world", &e));
            return;
        }
        let me = match conn.recv_timeout(ANSWER_TIMEOUT) {
            Ok(ServerMessage::Enter(e)) if e.result == pb::Result::Ok as i32 => {
                e.player.unwrap_or_default()
            }
            Ok(ServerMessage::Enter(e)) => {
                say(format!("cannot enter: {}", result_words(e.result)));
                if e.result == pb::Result::InvalidToken as i32 {
                    say("a token is good for one /enter within its lifetime: /login again");
                }
                return;
            }
            Ok(other) => return self.unexpected(Some(other)),
            Err(ClientError::Timeout) => return say("the world service did not answer in time"),
            Err(e) => return say(self.lost("world", &e)),
        };
        let mut world = World {
            conn,
            me: me.player_id,
            names: HashMap::from([(me.player_id, me.name.clone())]),
            last_sent: Instant::now(),
        };
        let (others, next) = collect_snapshot(&mut world);
        say(describe_entry(&me, &others));
        self.world = Some(world);
        match next {
            Ok(Some(msg)) => self.on_world_message(msg),
            Ok(None) => {}
            Err(e) => self.lost_world(&e),
        }
    }

    /// A connection failed before its first answer; a plaintext client talking to a TLS server
    /// sees just that, so say so.
    fn lost(&self, service: &str, err: &ClientError) -> String {
        let hint = match err {
            ClientError::Closed | ClientError::Protocol(_) if self.args.plaintext => {
                " — if the server uses TLS (the default), drop --plaintext"
            }
            _ => "",
        };
        format!("lost the {service} connection: {err}{hint}")
    }

    /// Connects to a service, printing why not on failure.
    fn connect(&mut self, service: &str, addr: &str) -> Option<Connection> {
        let tls = if self.args.plaintext {
            None
        } else {
            match self.tls() {
                Ok(tls) => Some(tls),
                Err(message) => {
                    say(message);
                    return None;
                }
            }
        };
        let socket = match resolve(addr) {
            Ok(socket) => socket,
            Err(message) => {
                say(format!(
                    "cannot reach the {service} service at {addr}: {message}"
                ));
                return None;
            }
        };
        match Connection::connect(socket, tls.as_ref(), CONNECT_TIMEOUT) {
            Ok(conn) => Some(conn),
            Err(e) => {
                say(unreachable(service, addr, &e));
                None
            }
        }
    }

    /// The TLS settings, reading the CA file the first time.
    fn tls(&mut self) -> Result<Tls, String> {
        if let Some(tls) = &self.tls {
            return Ok(tls.clone());
        }
        let config = crate::tls::client_config_trusting(&self.args.ca).map_err(|e| {
            format!(
                "cannot use the CA certificate {}: {e}\nthe server writes its development CA \
                 to certs/ca.pem (under the directory it runs in) on first start: start the \
                 server, then run the client from the same directory or pass --ca PATH \
                 (or --plaintext if the server runs without TLS)",
                self.args.ca.display()
            )
        })?;
        let server_name = crate::tls::server_name(&self.args.server_name)
            .map_err(|e| format!("bad --server-name: {e}"))?;
        let tls = Tls {
            config,
            server_name,
        };
        self.tls = Some(tls.clone());
        Ok(tls)
    }

    /// Sends a message to the world service if entered; true when sent.
    fn send_world<M: Body>(&mut self, msg: &M) -> bool {
        let Some(world) = self.world.as_mut() else {
            say("not in the world yet: /login NAME PASSWORD, then /enter");
            return false;
        };
        match world.conn.send(msg) {
            Ok(()) => {
                world.last_sent = Instant::now();
                true
            }
            Err(e) => {
                self.lost_world(&e);
                false
            }
        }
    }

    /// Waits a little for one world message and handles it; pings when quiet for long.
    fn poll_world(&mut self) {
        let Some(world) = self.world.as_mut() else {
            return;
        };
        if world.last_sent.elapsed() >= KEEPALIVE {
            self.send_world(&pb::CPing { client_time: 0 });
            return;
        }
        match world.conn.recv_timeout(POLL) {
            Ok(msg) => self.on_world_message(msg),
            Err(ClientError::Timeout) => {}
            Err(e) => self.lost_world(&e),
        }
    }

    /// Prints a world message and updates what the client knows.
    fn on_world_message(&mut self, msg: ServerMessage) {
        let Some(world) = self.world.as_mut() else {
            return;
        };
        if let Some(text) = describe(&msg, &world.names) {
            say(text);
        }
        match msg {
            ServerMessage::Spawn(spawn) => {
                for p in spawn.players {
                    world.names.insert(p.player_id, p.name);
                }
            }
            ServerMessage::Despawn(despawn) => {
                for id in despawn.player_ids {
                    if id != world.me {
                        world.names.remove(&id);
                    }
                }
            }
            ServerMessage::Pong(pong) => match self.ping {
                Some((sent, at)) if sent == pong.client_time => {
                    say(format!("pong from the world service: {}", millis(at)));
                    self.ping = None;
                }
                _ => {}
            },
            ServerMessage::Disconnect(_) => self.leave_world(),
            _ => {}
        }
    }

    /// The world connection failed: say so and go back to the not-entered state.
    fn lost_world(&mut self, err: &ClientError) {
        match err {
            ClientError::Closed => say("! the world service closed the connection"),
            other => say(format!("! lost the world connection: {other}")),
        }
        self.leave_world();
    }

    fn leave_world(&mut self) {
        self.world = None;
        self.ping = None;
        say("you are not in the world: /login and /enter to come back");
    }

    /// `/who`: the other players in view, by name.
    fn who(&self) {
        let Some(world) = &self.world else {
            say("not in the world yet: /login NAME PASSWORD, then /enter");
            return;
        };
        let mut others: Vec<String> = world
            .names
            .iter()
            .filter(|(id, _)| **id != world.me)
            .map(|(_, name)| clean(name))
            .collect();
        others.sort();
        if others.is_empty() {
            say("nobody else is here");
        } else {
            let players = if others.len() == 1 {
                "player"
            } else {
                "players"
            };
            say(format!(
                "{} other {players} here: {}",
                others.len(),
                others.join(", ")
            ));
        }
    }

    /// `/ping`: on the world connection if entered (answered in the loop), else the login one.
    fn ping(&mut self) {
        let client_time = unix_micros(SystemTime::now()).max(1);
        if self.world.is_some() {
            let sent = Instant::now();
            if self.send_world(&pb::CPing { client_time }) {
                self.ping = Some((client_time, sent));
            }
            return;
        }
        let sent = Instant::now();
        match self.login_request(&pb::CPing { client_time }) {
            Some(ServerMessage::Pong(_)) => {
                say(format!("pong from the login service: {}", millis(sent)));
            }
            other => self.unexpected(other),
        }
    }
}

/// Reads the `S_SPAWN` frames that follow `S_ENTER` into the world's names; returns the other
/// players' names and the first message that was not part of the snapshot, if any.
fn collect_snapshot(
    world: &mut World,
) -> (Vec<String>, Result<Option<ServerMessage>, ClientError>) {
    let mut others = Vec::new();
    loop {
        match world.conn.recv_timeout(SNAPSHOT_WAIT) {
            Ok(ServerMessage::Spawn(spawn)) => {
                for p in spawn.players {
                    others.push(clean(&p.name));
                    world.names.insert(p.player_id, p.name);
                }
            }
            Ok(other) => return (others, Ok(Some(other))),
            Err(ClientError::Timeout) => return (others, Ok(None)),
            Err(e) => return (others, Err(e)),
        }
    }
}

/// The first address `addr` resolves to.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    match addr.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| "the name resolves to no address".to_string()),
        Err(e) => Err(format!("bad address (HOST:PORT expected): {e}")),
    }
}

/// The time since `since`, in milliseconds.
fn millis(since: Instant) -> String {
    format!("{:.2} ms", since.elapsed().as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn player(id: u64, name: &str) -> pb::Player {
        pb::Player {
            player_id: id,
            name: name.into(),
            x: 1.0,
            y: 2.5,
            z: -3.0,
        }
    }

    fn names() -> HashMap<u64, String> {
        HashMap::from([(1, "alice".to_string()), (2, "bob".to_string())])
    }

    #[test]
    fn parses_register_and_login() {
        assert_eq!(
            parse_command("/register alice password1"),
            Ok(Command::Register {
                name: "alice".into(),
                password: "password1".into()
            })
        );
        assert_eq!(
            parse_command("/login  bob   pass word 2  \n"),
            Ok(Command::Login {
                name: "bob".into(),
                password: "pass word 2".into()
            })
        );
        assert!(parse_command("/login bob").is_err());
        assert!(parse_command("/register").is_err());
    }

    #[test]
    fn parses_move() {
        assert_eq!(
            parse_command("/move 1 2.5 -3"),
            Ok(Command::Move {
                x: 1.0,
                y: 2.5,
                z: -3.0
            })
        );
        assert!(parse_command("/move 1 2").is_err());
        assert!(parse_command("/move 1 2 3 4").is_err());
        assert!(parse_command("/move 1 two 3").is_err());
        assert!(parse_command("/move 1 NaN 3").is_err());
        assert!(parse_command("/move inf 0 0").is_err());
    }

    #[test]
    fn parses_commands_without_arguments() {
        assert_eq!(parse_command("/enter"), Ok(Command::Enter));
        assert_eq!(parse_command("/who\r\n"), Ok(Command::Who));
        assert_eq!(parse_command("/ping"), Ok(Command::Ping));
        assert_eq!(parse_command("/help"), Ok(Command::Help));
        assert_eq!(parse_command("/quit"), Ok(Command::Quit));
        assert!(parse_command("/enter now").is_err());
    }

    #[test]
    fn parses_chat_and_unknown_commands() {
        assert_eq!(
            parse_command("hello there\n"),
            Ok(Command::Chat("hello there".into()))
        );
        assert_eq!(parse_command("//shrug"), Ok(Command::Chat("/shrug".into())));
        let err = parse_command("/dance").unwrap_err();
        assert!(err.contains("/dance") && err.contains("/help"), "{err}");
    }

    #[test]
    fn describes_chat_with_names() {
        let chat = |id| {
            ServerMessage::Chat(pb::SChat {
                player_id: id,
                text: "hello".into(),
            })
        };
        assert_eq!(
            describe(&chat(1), &names()).as_deref(),
            Some("[alice] hello")
        );
        assert_eq!(
            describe(&chat(9), &names()).as_deref(),
            Some("[player 9] hello")
        );
    }

    #[test]
    fn chat_text_cannot_carry_terminal_escapes() {
        let msg = ServerMessage::Chat(pb::SChat {
            player_id: 2,
            text: "\u{1b}[2Jhi".into(),
        });
        assert_eq!(
            describe(&msg, &names()).as_deref(),
            Some("[bob] \u{fffd}[2Jhi")
        );
    }

    #[test]
    fn describes_presence_and_moves() {
        let spawn = ServerMessage::Spawn(pb::SSpawn {
            players: vec![player(2, "bob"), player(3, "carol")],
        });
        assert_eq!(
            describe(&spawn, &names()).as_deref(),
            Some("* bob entered\n* carol entered")
        );
        let despawn = ServerMessage::Despawn(pb::SDespawn {
            player_ids: vec![2],
        });
        assert_eq!(describe(&despawn, &names()).as_deref(), Some("* bob left"));
        let moved = ServerMessage::Move(pb::SMove {
            player_id: 2,
            x: 1.0,
            y: 2.0,
            z: 3.5,
        });
        assert_eq!(
            describe(&moved, &names()).as_deref(),
            Some("* bob moved to (1, 2, 3.5)")
        );
    }

    #[test]
    fn describes_errors_and_disconnects() {
        let error = |result: pb::Result, request_id| {
            ServerMessage::Error(pb::SError {
                result: result as i32,
                request_id,
            })
        };
        assert_eq!(
            describe(&error(pb::Result::RateLimited, 20), &names()).as_deref(),
            Some("! rate limited (chat)")
        );
        assert_eq!(
            describe(&error(pb::Result::InvalidInput, 30), &names()).as_deref(),
            Some("! invalid input (move)")
        );
        let disconnect = |reason: DisconnectReason, detail: &str| {
            ServerMessage::Disconnect(pb::SDisconnect {
                reason: reason as i32,
                detail: detail.into(),
            })
        };
        assert_eq!(
            describe(
                &disconnect(DisconnectReason::DuplicateLogin, "entered elsewhere"),
                &names()
            )
            .as_deref(),
            Some("! disconnected: duplicate login (entered elsewhere)")
        );
        assert_eq!(
            describe(&disconnect(DisconnectReason::ServerShutdown, ""), &names()).as_deref(),
            Some("! disconnected: server shutdown")
        );
        let unknown = ServerMessage::Disconnect(pb::SDisconnect {
            reason: 42,
            detail: String::new(),
        });
        assert_eq!(
            describe(&unknown, &names()).as_deref(),
            Some("! disconnected: reason 42")
        );
    }

    #[test]
    fn pongs_and_answers_are_not_described() {
        let pong = ServerMessage::Pong(pb::SPong {
            client_time: 1,
            server_time: 2,
        });
        assert_eq!(describe(&pong, &names()), None);
        let login = ServerMessage::Login(pb::SLogin {
            token: "secret".into(),
            ..Default::default()
        });
        assert_eq!(describe(&login, &names()), None);
    }

    #[test]
    fn describes_the_entry() {
        let me = player(1, "alice");
        assert_eq!(
            describe_entry(&me, &[]),
            "entered the world at (1, 2.5, -3); no other players here"
        );
        assert_eq!(
            describe_entry(&me, &["bob".into()]),
            "entered the world at (1, 2.5, -3); 1 other player here: bob"
        );
        assert_eq!(
            describe_entry(&me, &["bob".into(), "carol".into()]),
            "entered the world at (1, 2.5, -3); 2 other players here: bob, carol"
        );
    }

    #[test]
    fn refused_connection_suggests_starting_the_server() {
        let err = ClientError::Io(io::ErrorKind::ConnectionRefused.into());
        assert_eq!(
            unreachable("login", "127.0.0.1:7000", &err),
            "cannot reach the login service at 127.0.0.1:7000: connection refused — is the \
             server running?"
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let args = ClientArgs {
            login: String::new(),
            world: String::new(),
            ca: PathBuf::new(),
            server_name: String::new(),
            plaintext: false,
            user: Some("alice".into()),
            password: Some("password1".into()),
        };
        assert!(!format!("{args:?}").contains("password1"));
    }
}
