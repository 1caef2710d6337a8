//! A fault-injecting TCP proxy for the outage tests: put it between the server and MySQL or
//! Redis, then cut the link (open connections are reset, new ones closed at once), stall it
//! (connections stay open but no byte passes in either direction) and heal it (bytes flow
//! again; what a stall held is delivered then, as a healed network would).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Cut,
    Stall,
}

struct Shared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    changed: Condvar,
    /// Both ends of every proxied connection, to reset them on a cut.
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    /// Blocks while stalled; returns the mode that ended the wait.
    fn wait_unstalled(&self) -> Mode {
        let guard = self.mode.lock().unwrap();
        let guard = self
            .changed
            .wait_while(guard, |m| {
                *m == Mode::Stall && !self.stop.load(Ordering::SeqCst)
            })
            .unwrap();
        *guard
    }
}

/// A running proxy; stops (and resets its connections) on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port, passing everything to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new(Mode::Pass),
            changed: Condvar::new(),
            open: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(&listener, &s))
            .unwrap();
        Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every open connection; new ones are closed at once until [`heal`](Self::heal).
    pub fn cut(&self) {
        self.set(Mode::Cut);
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Holds every byte in both directions until [`heal`](Self::heal).
    pub fn stall(&self) {
        self.set(Mode::Stall);
    }

    /// Lets bytes pass again.
    pub fn heal(&self) {
        self.set(Mode::Pass);
    }

    fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        self.shared.changed.notify_all();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wake the acceptor.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        if shared.mode() == Mode::Cut {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(shared.upstream) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        {
            let mut open = shared.open.lock().unwrap();
            open.retain(|s| s.peer_addr().is_ok());
            open.push(client.try_clone().unwrap());
            open.push(server.try_clone().unwrap());
        }
        for (from, to) in [
            (client.try_clone().unwrap(), server.try_clone().unwrap()),
            (server, client),
        ] {
            let s = Arc::clone(shared);
            std::thread::spawn(move || pump(from, to, &s));
        }
    }
}

/// Copies `from` to `to` while passing; holds while stalled; stops on a cut or a close.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if shared.wait_unstalled() == Mode::Cut || shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        // A stall that began while reading holds what was read.
        if shared.wait_unstalled() == Mode::Cut || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
