//! The seed bug: a server that crashed when sessions disconnected mid-broadcast.
//!
//! Steady players on both shards listen while two talkers chat as fast as they can, and churn
//! clients enter and vanish (reset or graceful close, some before their `S_ENTER` arrives, some
//! right after chatting) in parallel. Afterwards the server still serves, every steady player
//! heard every talker line once and in order, saw every churn player come and go, and every
//! dropped session was cleaned up.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use gameserver::config::Config;
use gameserver::protocol::{pb, ServerMessage};

const PASSWORD: &str = "password123";
const OK: i32 = pb::Result::Ok as i32;

const STEADY: usize = 20;
const TALKERS: usize = 2;
const CHURN_THREADS: usize = 40;
const CHURN_CYCLES: usize = 60;
/// Each talker says at least this many lines, and goes on while the churn lasts...
const MIN_LINES: usize = 300;
/// ...but never more than this.
const MAX_LINES: usize = 3000;
/// A talker waits for its own line to come back every this many lines (keeps it from running
/// far ahead of the readers; no rate limit is involved).
const TALK_WINDOW: usize = 10;
/// Bound of each reading phase.
const PHASE_BOUND: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Local helpers (see tests/world.rs for why shard placement does not use the harness's)
// ---------------------------------------------------------------------------------------------

fn unlimited_rates(config: &mut Config) {
    config.rate.chat_per_sec = 1_000_000.0;
    config.rate.chat_burst = 1_000_000;
    config.rate.move_per_sec = 1_000_000.0;
    config.rate.move_burst = 1_000_000;
}

/// Who a client has been shown, checked as it goes: no spawn of a player already shown, no
/// despawn of one not shown, no chat or move from one not shown.
#[derive(Debug, Default)]
struct View {
    me: u64,
    present: HashSet<u64>,
    /// Every spawn (true) and despawn (false), in arrival order, per player.
    history: HashMap<u64, Vec<bool>>,
}

impl View {
    fn new(me: u64) -> Self {
        Self {
            me,
            ..Self::default()
        }
    }

    fn apply(&mut self, m: &ServerMessage) {
        match m {
            ServerMessage::Spawn(s) => {
                for p in &s.players {
                    assert!(
                        self.present.insert(p.player_id),
                        "{} got S_SPAWN of {} while it was already shown",
                        self.me,
                        p.player_id
                    );
                    self.history.entry(p.player_id).or_default().push(true);
                }
            }
            ServerMessage::Despawn(d) => {
                for id in &d.player_ids {
                    assert!(
                        self.present.remove(id),
                        "{} got S_DESPAWN of {id}, which it was not shown",
                        self.me
                    );
                    self.history.entry(*id).or_default().push(false);
                }
            }
            ServerMessage::Chat(c) => assert!(
                c.player_id == self.me || self.present.contains(&c.player_id),
                "{} got S_CHAT from {}, which it was not shown",
                self.me,
                c.player_id
            ),
            ServerMessage::Move(mv) => assert!(
                self.present.contains(&mv.player_id),
                "{} got S_MOVE from {}, which it was not shown",
                self.me,
                mv.player_id
            ),
            ServerMessage::Disconnect(d) => panic!("{} was disconnected: {d:?}", self.me),
            _ => {}
        }
    }
}

fn talker_line(talker: usize, i: usize) -> String {
    format!("t{talker}-{i}")
}

fn talker_fin(talker: usize) -> String {
    format!("t{talker}-fin")
}

/// What one churn cycle did.
#[derive(Debug, Clone, Copy)]
struct ChurnRecord {
    id: u64,
    /// Whether the client saw its `S_ENTER{OK}` (when it vanished before, it may or may not
    /// have been in the world for a moment).
    entered: bool,
}

/// One churn cycle: register, log in, enter on whichever shard the kernel picks, then vanish in
/// one of four ways.
fn churn_cycle(server: &TestServer, n: usize) -> ChurnRecord {
    let name = format!("churn{n:03}");
    let id = server.register(&name, PASSWORD);
    let token = server.token_for(&name, id);
    let mut conn = server.world_conn();
    conn.send(&pb::CEnter { token }).unwrap();
    if n % 4 == 2 {
        // Gone before its S_ENTER could arrive: the server is still redeeming the token, or
        // admitting it and broadcasting its spawn.
        conn.reset();
        return ChurnRecord { id, entered: false };
    }
    match conn.recv_timeout(WAIT).unwrap() {
        ServerMessage::Enter(e) => assert_eq!(e.result, OK, "{name} enters"),
        other => panic!("{name}: expected S_ENTER, got {other:?}"),
    }
    if n % 4 == 3 {
        // Says something and vanishes while its line is being broadcast.
        conn.send(&pb::CChat {
            text: format!("{name} was here"),
        })
        .unwrap();
        conn.reset();
        return ChurnRecord { id, entered: true };
    }
    // Read a little of the stream (its snapshot, talker lines), bounded, then vanish while the
    // talkers' lines are still being broadcast to it.
    for _ in 0..(n % 5) {
        if conn.recv_timeout(Duration::from_millis(100)).is_err() {
            break;
        }
    }
    if n % 4 == 0 {
        conn.reset();
    } else {
        drop(conn);
    }
    ChurnRecord { id, entered: true }
}

/// A talker: says `t{k}-0`, `t{k}-1`, ... while the churn lasts (at least `MIN_LINES`, at most
/// `MAX_LINES`), reading its own lines back every `TALK_WINDOW`. Returns how many it said.
fn talk(p: &mut Player, k: usize, churn_done: &AtomicBool) -> usize {
    let mut said = 0;
    while said < MAX_LINES && (said < MIN_LINES || !churn_done.load(Ordering::Acquire)) {
        let line = talker_line(k, said);
        p.chat(&line);
        said += 1;
        if said % TALK_WINDOW == 0 {
            read_own_line(p, &line);
        }
    }
    if said % TALK_WINDOW != 0 {
        read_own_line(p, &talker_line(k, said - 1));
    }
    said
}

fn read_own_line(p: &mut Player, line: &str) {
    let id = p.id;
    p.expect(&format!("own line {line}"), |m| match m {
        ServerMessage::Chat(c) if c.player_id == id && c.text == line => Some(()),
        ServerMessage::Disconnect(d) => panic!("talker {id} was disconnected: {d:?}"),
        _ => None,
    });
}

/// What a steady player heard until both talkers' fin markers.
struct Heard {
    lines: Vec<Vec<String>>,
}

/// Reads a steady player's stream into `view` until both talkers' fin markers.
fn listen(p: &mut Player, view: &mut View, talkers: &[u64]) -> Heard {
    let mut heard = Heard {
        lines: vec![Vec::new(); talkers.len()],
    };
    let mut fins = 0;
    let bound = Instant::now() + PHASE_BOUND;
    while fins < talkers.len() {
        assert!(Instant::now() < bound, "{} still listening", p.name);
        let m = match p.conn.recv_timeout(WAIT) {
            Ok(m) => m,
            Err(e) => panic!(
                "{} waiting for the talkers (heard {:?} lines): {e}",
                p.name,
                heard.lines.iter().map(Vec::len).collect::<Vec<_>>()
            ),
        };
        view.apply(&m);
        if let ServerMessage::Chat(c) = &m {
            if let Some(k) = talkers.iter().position(|&t| t == c.player_id) {
                if c.text == talker_fin(k) {
                    fins += 1;
                } else {
                    heard.lines[k].push(c.text.clone());
                }
            }
        }
    }
    heard
}

fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

#[test]
fn sessions_dropping_mid_broadcast_leave_the_server_serving_and_every_steady_player_whole() {
    let server = TestServer::start(true, unlimited_rates);

    // Steady players alternate shards; talker k is on shard k.
    let mut steady: Vec<Player> = (0..STEADY)
        .map(|i| server.enter_on_shard(&format!("steady{i:02}"), i % 2))
        .collect();
    let mut talkers: Vec<Player> = (0..TALKERS)
        .map(|k| server.enter_on_shard(&format!("talker{k}"), k % 2))
        .collect();
    let talker_ids: Vec<u64> = talkers.iter().map(|p| p.id).collect();
    let everyone: Vec<u64> = steady.iter().chain(&talkers).map(|p| p.id).collect();

    // Every steady player and talker is shown everyone before the noise starts (so both
    // shards' replicas hold everyone, and every talker line must reach every steady player).
    let show_everyone = |p: &mut Player| {
        let mut view = View::new(p.id);
        let bound = Instant::now() + PHASE_BOUND;
        while everyone
            .iter()
            .any(|&i| i != p.id && !view.present.contains(&i))
        {
            assert!(Instant::now() < bound, "{} is not shown everyone", p.name);
            view.apply(&p.conn.recv_timeout(WAIT).expect("spawns"));
        }
        view
    };
    let mut views: Vec<View> = steady.iter_mut().map(show_everyone).collect();
    for t in &mut talkers {
        show_everyone(t);
    }
    let steady_conns = [STEADY / 2 + 1, STEADY / 2 + 1];
    server.wait_for_connections(|c| c == steady_conns);

    let churn_done = AtomicBool::new(false);
    let next_cycle = AtomicUsize::new(0);
    let (heard, said, churned) = std::thread::scope(|s| {
        let listeners: Vec<_> = steady
            .iter_mut()
            .zip(views.iter_mut())
            .map(|(p, view)| {
                let talker_ids = &talker_ids;
                s.spawn(move || listen(p, view, talker_ids))
            })
            .collect();
        let talking: Vec<_> = talkers
            .iter_mut()
            .enumerate()
            .map(|(k, p)| {
                let churn_done = &churn_done;
                s.spawn(move || {
                    let said = talk(p, k, churn_done);
                    (p, said)
                })
            })
            .collect();
        let churners: Vec<_> = (0..CHURN_THREADS)
            .map(|_| {
                let (server, next_cycle) = (&server, &next_cycle);
                s.spawn(move || {
                    let mut records = Vec::new();
                    loop {
                        let n = next_cycle.fetch_add(1, Ordering::Relaxed);
                        if n >= CHURN_CYCLES {
                            return records;
                        }
                        records.push(churn_cycle(server, n));
                    }
                })
            })
            .collect();
        let churned: Vec<ChurnRecord> = churners.into_iter().flat_map(join).collect();
        churn_done.store(true, Ordering::Release);
        let mut said = Vec::new();
        let mut talkers_back = Vec::new();
        for h in talking {
            let (p, n) = join(h);
            talkers_back.push(p);
            said.push(n);
        }

        // Every churn session is cleaned up: only the steady players and talkers remain.
        server.wait_for_connections(|c| c == steady_conns);
        // Each talker's shard has now handled every leave of its own sessions (and published
        // it to the other shard before this line): the fin markers come after every despawn.
        for (k, t) in talkers_back.into_iter().enumerate() {
            t.chat(&talker_fin(k));
        }
        let heard: Vec<Heard> = listeners.into_iter().map(join).collect();
        (heard, said, churned)
    });
    assert_eq!(churned.len(), CHURN_CYCLES);

    for ((p, view), h) in steady.iter().zip(&views).zip(&heard) {
        // Every talker line exactly once, in order.
        for (k, lines) in h.lines.iter().enumerate() {
            let want: Vec<String> = (0..said[k]).map(|i| talker_line(k, i)).collect();
            if *lines != want {
                let first_bad = lines.iter().zip(&want).position(|(a, b)| a != b);
                panic!(
                    "{} heard {} lines of talker{k}, {} said; first difference at {first_bad:?}",
                    p.name,
                    lines.len(),
                    want.len()
                );
            }
        }
        // Every churn player that entered came and went; the others at most came and went.
        for r in &churned {
            let history = view.history.get(&r.id).map(Vec::as_slice).unwrap_or(&[]);
            if r.entered {
                assert_eq!(
                    history,
                    [true, false],
                    "{}: spawn then despawn of churn player {}",
                    p.name,
                    r.id
                );
            } else {
                assert!(
                    history.is_empty() || history == [true, false],
                    "{}: churn player {} (gone before S_ENTER): {history:?}",
                    p.name,
                    r.id
                );
            }
        }
        // In the end it shows exactly the steady players and talkers.
        let want: HashSet<u64> = everyone.iter().copied().filter(|&i| i != p.id).collect();
        assert_eq!(view.present, want, "{}'s final view", p.name);
    }

    // The server still serves: a new player enters and is heard by steady players on both
    // shards.
    let mut late = server.enter_on_shard("latecomer", 1);
    late.chat("still standing");
    for p in steady.iter_mut().take(2) {
        let text = p.expect("the latecomer's chat", |m| match m {
            ServerMessage::Chat(c) if c.player_id == late.id => Some(c.text.clone()),
            _ => None,
        });
        assert_eq!(text, "still standing");
    }
    server.wait_for_connections(|c| c.iter().sum::<usize>() == STEADY + TALKERS + 1);
}
