//! The world service over real sockets against a running 2-shard server: enter and presence,
//! chat and movement across shards, despawn on close and on reset, per-player ordering, saved
//! positions, duplicate logins, large snapshots, ping/echo before enter, and plaintext mode.
//!
//! "Did not receive" is always proven with a marker: a later message from the same player (its
//! messages are ordered), read up to and including the marker.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use gameserver::client::Connection;
use gameserver::config::Config;
use gameserver::protocol::{pb, ServerMessage};

const PASSWORD: &str = "password123";
const OK: i32 = pb::Result::Ok as i32;

// ---------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------

/// Rates high enough that no test here is ever rate limited.
fn unlimited_rates(config: &mut Config) {
    config.rate.chat_per_sec = 1_000_000.0;
    config.rate.chat_burst = 1_000_000;
    config.rate.move_per_sec = 1_000_000.0;
    config.rate.move_burst = 1_000_000;
}

/// Receives on `conn` until a chat starting with `prefix` has arrived from every player in
/// `ids`; returns every message received.
fn recv_until_chat_from_all(
    conn: &mut Connection,
    what: &str,
    prefix: &str,
    ids: &[u64],
) -> Vec<ServerMessage> {
    let mut heard = HashSet::new();
    recv_until(conn, what, |m| {
        if let ServerMessage::Chat(c) = m {
            if c.text.starts_with(prefix) {
                heard.insert(c.player_id);
            }
        }
        ids.iter().all(|id| heard.contains(id))
    })
}

/// Receives on `conn` until `done` accepts a message; returns every message received, the
/// accepted one last. Panics when nothing arrives for `WAIT`.
fn recv_until(
    conn: &mut Connection,
    what: &str,
    mut done: impl FnMut(&ServerMessage) -> bool,
) -> Vec<ServerMessage> {
    let mut seen = Vec::new();
    loop {
        match conn.recv_timeout(WAIT) {
            Ok(m) => {
                let last = done(&m);
                seen.push(m);
                if last {
                    return seen;
                }
            }
            Err(e) => panic!("waiting for {what}: {e} (received so far: {seen:?})"),
        }
    }
}

fn is_chat(m: &ServerMessage, from: u64, text: &str) -> bool {
    matches!(m, ServerMessage::Chat(c) if c.player_id == from && c.text == text)
}

/// Chats `marker` and reads until it comes back; returns what came before it.
fn chat_and_read_back(p: &mut Player, marker: &str) -> Vec<ServerMessage> {
    p.chat(marker);
    let id = p.id;
    let mut msgs = recv_until(&mut p.conn, &format!("own chat {marker:?}"), |m| {
        is_chat(m, id, marker)
    });
    msgs.pop();
    msgs
}

/// Reads the snapshot that follows `S_ENTER`: chats a marker and reads until it comes back.
/// Every message before it must be `S_SPAWN`; returns the players they list.
fn read_snapshot(p: &mut Player) -> Vec<pb::Player> {
    let marker = format!("snapshot marker of {}", p.name);
    let mut players = Vec::new();
    for m in chat_and_read_back(p, &marker) {
        match m {
            ServerMessage::Spawn(s) => players.extend(s.players),
            other => panic!(
                "{}'s snapshot holds a non-S_SPAWN message: {other:?}",
                p.name
            ),
        }
    }
    players
}

/// Who a client has been shown, built from its `S_SPAWN` and `S_DESPAWN` frames. Checks the
/// contract as it goes: no spawn of a player already shown, no despawn of one not shown, no
/// chat or move from a player not shown (its own chats excepted).
#[derive(Debug, Default)]
struct View {
    me: u64,
    present: HashMap<u64, pb::Player>,
    spawns: HashMap<u64, usize>,
    despawns: HashMap<u64, usize>,
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
                    assert_ne!(p.player_id, self.me, "{} was spawned to itself", self.me);
                    let again = self.present.insert(p.player_id, p.clone());
                    assert!(
                        again.is_none(),
                        "{} got S_SPAWN of {} while it was already shown",
                        self.me,
                        p.player_id
                    );
                    *self.spawns.entry(p.player_id).or_default() += 1;
                }
            }
            ServerMessage::Despawn(d) => {
                for id in &d.player_ids {
                    assert!(
                        self.present.remove(id).is_some(),
                        "{} got S_DESPAWN of {id}, which it was not shown",
                        self.me
                    );
                    *self.despawns.entry(*id).or_default() += 1;
                }
            }
            ServerMessage::Chat(c) => assert!(
                c.player_id == self.me || self.present.contains_key(&c.player_id),
                "{} got S_CHAT from {}, which it was not shown",
                self.me,
                c.player_id
            ),
            ServerMessage::Move(mv) => assert!(
                self.present.contains_key(&mv.player_id),
                "{} got S_MOVE from {}, which it was not shown",
                self.me,
                mv.player_id
            ),
            _ => {}
        }
    }

    fn apply_all(&mut self, msgs: &[ServerMessage]) {
        for m in msgs {
            self.apply(m);
        }
    }

    fn ids(&self) -> HashSet<u64> {
        self.present.keys().copied().collect()
    }
}

/// Reads `p`'s stream into `view` until every id of `ids` is shown.
fn await_present(p: &mut Player, view: &mut View, ids: &[u64]) {
    let missing = |v: &View| ids.iter().any(|id| !v.present.contains_key(id));
    if !missing(view) {
        return;
    }
    let what = format!("{} to be shown {ids:?}", p.name);
    let mut v = std::mem::take(view);
    recv_until(&mut p.conn, &what, |m| {
        v.apply(m);
        !missing(&v)
    });
    *view = v;
}

/// Reads every player's stream until each one is shown all the others; returns their views.
fn everyone_sees_everyone(players: &mut [Player]) -> Vec<View> {
    let ids: Vec<u64> = players.iter().map(|p| p.id).collect();
    players
        .iter_mut()
        .map(|p| {
            let mut view = View::new(p.id);
            let others: Vec<u64> = ids.iter().copied().filter(|&i| i != p.id).collect();
            await_present(p, &mut view, &others);
            view
        })
        .collect()
}

fn assert_at(p: &pb::Player, (x, y, z): (f32, f32, f32), what: &str) {
    assert_eq!((p.x, p.y, p.z), (x, y, z), "{what}: position");
}

// ---------------------------------------------------------------------------------------------
// Enter and presence
// ---------------------------------------------------------------------------------------------

#[test]
fn enter_answers_ok_at_origin_and_spawns_newcomers_and_old_players_across_shards() {
    let server = TestServer::start(true, |_| {});

    // The first player: S_ENTER{OK} with its id and name at 0,0,0, and an empty snapshot.
    let mut a = server.enter_on_shard("alice", 0);
    let me = a.entered.player.clone().unwrap();
    assert_eq!(me.name, "alice");
    assert_at(&me, (0.0, 0.0, 0.0), "new account alice");
    assert!(
        read_snapshot(&mut a).is_empty(),
        "alice entered an empty world"
    );

    // b enters on the other shard; a (shard 0) is told, with b's name and position.
    let mut b = server.enter_on_shard("bob", 1);
    assert_at(b.entered.player.as_ref().unwrap(), (0.0, 0.0, 0.0), "bob");
    let spawned = a.expect("alice gets bob's spawn", |m| match m {
        ServerMessage::Spawn(s) => s.players.iter().find(|p| p.player_id == b.id).cloned(),
        _ => None,
    });
    assert_eq!(spawned.name, "bob");
    assert_at(&spawned, (0.0, 0.0, 0.0), "bob in alice's S_SPAWN");
    // (Whether bob's own snapshot has alice depends on whether shard 1 had heard of her yet.)
    b.expect_spawn(a.id);

    // Shard 0 now knows both (alice saw bob). A newcomer there gets both in its snapshot,
    // exactly once each, and both are told of it.
    let mut c = server.enter_on_shard("carol", 0);
    let snap = read_snapshot(&mut c);
    let mut listed: Vec<(u64, String)> =
        snap.iter().map(|p| (p.player_id, p.name.clone())).collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![(a.id, "alice".to_string()), (b.id, "bob".to_string())],
        "carol's snapshot on shard 0"
    );
    for p in &snap {
        assert_at(p, (0.0, 0.0, 0.0), "carol's snapshot");
    }
    for watcher in [&mut a, &mut b] {
        let got = watcher.expect("carol's spawn", |m| match m {
            ServerMessage::Spawn(s) => s.players.iter().find(|p| p.player_id == c.id).cloned(),
            _ => None,
        });
        assert_eq!(got.name, "carol");
        assert_at(&got, (0.0, 0.0, 0.0), "carol in S_SPAWN");
    }

    // Shard 1 now knows all three (bob saw carol). A newcomer there gets all three, and each of
    // them (both shards) is told of it.
    let mut d = server.enter_on_shard("dave", 1);
    let mut ids: Vec<u64> = read_snapshot(&mut d).iter().map(|p| p.player_id).collect();
    ids.sort();
    let mut want = vec![a.id, b.id, c.id];
    want.sort();
    assert_eq!(ids, want, "dave's snapshot on shard 1");
    for watcher in [&mut a, &mut b, &mut c] {
        watcher.expect_spawn(d.id);
    }
}

// ---------------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------------

/// a on shard 0, b on shard 1, c on shard 0; each says one line then an end marker. Every
/// player, the sender included, gets every line exactly once, from the right player.
fn chat_reaches_everyone_once(tls: bool) {
    let server = TestServer::start(tls, |_| {});
    let mut players = vec![
        server.enter_on_shard("alice", 0),
        server.enter_on_shard("bob", 1),
        server.enter_on_shard("carol", 0),
    ];
    let mut views = everyone_sees_everyone(&mut players);
    let ids: Vec<u64> = players.iter().map(|p| p.id).collect();
    for p in players.iter_mut() {
        let line = format!("hello from {}", p.name);
        p.chat(&line);
        p.chat(&format!("end {}", p.name));
    }
    let names: Vec<String> = players.iter().map(|p| p.name.clone()).collect();
    for (p, view) in players.iter_mut().zip(views.iter_mut()) {
        let msgs = recv_until_chat_from_all(&mut p.conn, "every end marker", "end ", &ids);
        view.apply_all(&msgs);
        for (id, name) in ids.iter().zip(&names) {
            let line = format!("hello from {name}");
            let got: Vec<u64> = msgs
                .iter()
                .filter_map(|m| match m {
                    ServerMessage::Chat(c) if c.text == line => Some(c.player_id),
                    _ => None,
                })
                .collect();
            assert_eq!(
                got,
                vec![*id],
                "{} receives {line:?} once, from {id}",
                p.name
            );
        }
    }
}

#[test]
fn chat_across_shards_reaches_every_player_once_including_the_sender_over_tls() {
    chat_reaches_everyone_once(true);
}

#[test]
fn chat_across_shards_reaches_every_player_once_including_the_sender_in_plaintext() {
    chat_reaches_everyone_once(false);
}

#[test]
fn chat_carries_the_speakers_id_and_text_to_the_other_shard() {
    let server = TestServer::start(true, |_| {});
    let mut a = server.enter_on_shard("alice", 0);
    let mut b = server.enter_on_shard("bob", 1);
    b.expect_spawn(a.id);
    a.expect_spawn(b.id);
    a.chat("ünïcode ✓ text");
    let (from, text) = b.expect("alice's chat", |m| match m {
        ServerMessage::Chat(c) => Some((c.player_id, c.text.clone())),
        _ => None,
    });
    assert_eq!((from, text.as_str()), (a.id, "ünïcode ✓ text"));
    b.chat("back at you");
    let a_id = a.id;
    let (from, text) = a.expect("bob's chat", |m| match m {
        ServerMessage::Chat(c) if c.player_id != a_id => Some((c.player_id, c.text.clone())),
        _ => None,
    });
    assert_eq!((from, text.as_str()), (b.id, "back at you"));
}

// ---------------------------------------------------------------------------------------------
// Movement
// ---------------------------------------------------------------------------------------------

#[test]
fn move_reaches_every_other_player_across_shards_but_not_the_mover() {
    let server = TestServer::start(true, |_| {});
    let mut players = vec![
        server.enter_on_shard("alice", 0),
        server.enter_on_shard("bob", 1),
        server.enter_on_shard("carol", 0),
    ];
    let mut views = everyone_sees_everyone(&mut players);
    // alice (shard 0) moves, then bob (shard 1): each move reaches a player on the mover's shard
    // and one on the other.
    for (mover, to) in [(0usize, (1.0f32, 2.0f32, 3.0f32)), (1, (-4.5, 0.25, 1e6))] {
        let mover_id = players[mover].id;
        let marker = format!("{} has moved", players[mover].name);
        players[mover].move_to(to.0, to.1, to.2);
        players[mover].chat(&marker);
        for (i, (p, view)) in players.iter_mut().zip(views.iter_mut()).enumerate() {
            let mut msgs = recv_until(&mut p.conn, &marker, |m| is_chat(m, mover_id, &marker));
            msgs.pop();
            view.apply_all(&msgs);
            let moves: Vec<(u64, f32, f32, f32)> = msgs
                .iter()
                .filter_map(|m| match m {
                    ServerMessage::Move(mv) => Some((mv.player_id, mv.x, mv.y, mv.z)),
                    _ => None,
                })
                .collect();
            if i == mover {
                assert!(
                    moves.is_empty(),
                    "{} got its own move back: {moves:?}",
                    p.name
                );
            } else {
                assert_eq!(
                    moves,
                    vec![(mover_id, to.0, to.1, to.2)],
                    "{} gets the move of {mover_id} once",
                    p.name
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Leaving
// ---------------------------------------------------------------------------------------------

/// Watchers w0 (shard 0) and w1 (shard 1); x0 (shard 0) leaves, then x1 (shard 1). Both watchers
/// get `S_DESPAWN` of each, and chats between the watchers still flow afterwards.
fn despawn_on_leave(reset: bool) {
    let server = TestServer::start(true, |_| {});
    let mut players = vec![
        server.enter_on_shard("watcher0", 0),
        server.enter_on_shard("watcher1", 1),
        server.enter_on_shard("leaver0", 0),
        server.enter_on_shard("leaver1", 1),
    ];
    let mut views = everyone_sees_everyone(&mut players);
    let x1 = players.pop().unwrap();
    let x0 = players.pop().unwrap();
    views.truncate(2);
    for x in [x0, x1] {
        let (id, name) = (x.id, x.name.clone());
        if reset {
            x.conn.reset();
        } else {
            drop(x);
        }
        for (w, view) in players.iter_mut().zip(views.iter_mut()) {
            let msgs = recv_until(
                &mut w.conn,
                &format!("despawn of {name}"),
                |m| matches!(m, ServerMessage::Despawn(d) if d.player_ids.contains(&id)),
            );
            view.apply_all(&msgs);
            assert!(!view.present.contains_key(&id));
        }
    }
    // Chats after the departures still flow, both ways across the shards.
    let ids: Vec<u64> = players.iter().map(|p| p.id).collect();
    for p in players.iter_mut() {
        p.chat(&format!("still here: {}", p.name));
    }
    for (w, view) in players.iter_mut().zip(views.iter_mut()) {
        let msgs = recv_until_chat_from_all(
            &mut w.conn,
            "both chats after the departures",
            "still here: ",
            &ids,
        );
        view.apply_all(&msgs);
        assert_eq!(
            view.ids(),
            ids.iter().copied().filter(|&i| i != w.id).collect()
        );
    }
}

#[test]
fn graceful_close_despawns_the_player_on_both_shards_and_chat_still_flows() {
    despawn_on_leave(false);
}

#[test]
fn reset_despawns_the_player_on_both_shards_and_chat_still_flows() {
    despawn_on_leave(true);
}

// ---------------------------------------------------------------------------------------------
// Ordering
// ---------------------------------------------------------------------------------------------

#[test]
fn two_hundred_chats_from_one_player_arrive_in_send_order_on_both_shards() {
    let server = TestServer::start(true, unlimited_rates);
    let mut players = vec![
        server.enter_on_shard("alice", 0),
        server.enter_on_shard("bob", 1),
        server.enter_on_shard("carol", 0),
    ];
    let mut views = everyone_sees_everyone(&mut players);
    let a = players[0].id;
    let sent: Vec<String> = (0..200).map(|i| format!("a-{i}")).collect();
    for text in &sent {
        players[0].chat(text);
    }
    for (p, view) in players.iter_mut().zip(views.iter_mut()) {
        let msgs = recv_until(&mut p.conn, "a-199", |m| is_chat(m, a, "a-199"));
        view.apply_all(&msgs);
        let got: Vec<&str> = msgs
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Chat(c) if c.player_id == a => Some(c.text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(got, sent, "{} receives alice's chats in send order", p.name);
        // Nothing was refused on the way.
        assert!(
            !msgs.iter().any(|m| matches!(m, ServerMessage::Error(_))),
            "{}: {msgs:?}",
            p.name
        );
    }
}

#[derive(Debug, PartialEq)]
enum Ev {
    Move(f32, f32, f32),
    Chat(String),
}

#[test]
fn interleaved_moves_and_chats_from_one_player_arrive_in_send_order() {
    let server = TestServer::start(true, unlimited_rates);
    let mut players = vec![
        server.enter_on_shard("alice", 0),
        server.enter_on_shard("bob", 1),
        server.enter_on_shard("carol", 0),
    ];
    let mut views = everyone_sees_everyone(&mut players);
    let a = players[0].id;
    let mut sent = Vec::new();
    for i in 0..100u16 {
        let f = f32::from(i);
        // Runs of moves and chats of varying length, not a fixed alternation.
        for k in 0..(i % 3) {
            let pos = (f, -f, f32::from(k) + 0.5);
            players[0].move_to(pos.0, pos.1, pos.2);
            sent.push(Ev::Move(pos.0, pos.1, pos.2));
        }
        let text = format!("m-{i}");
        players[0].chat(&text);
        sent.push(Ev::Chat(text));
    }
    for (p, view) in players.iter_mut().zip(views.iter_mut()).skip(1) {
        let msgs = recv_until(&mut p.conn, "m-99", |m| is_chat(m, a, "m-99"));
        view.apply_all(&msgs);
        let got: Vec<Ev> = msgs
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Move(mv) if mv.player_id == a => Some(Ev::Move(mv.x, mv.y, mv.z)),
                ServerMessage::Chat(c) if c.player_id == a => Some(Ev::Chat(c.text.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            got, sent,
            "{} receives alice's moves and chats in send order",
            p.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Saved positions
// ---------------------------------------------------------------------------------------------

#[test]
fn position_is_saved_when_the_player_leaves_and_restored_on_the_next_enter() {
    let server = TestServer::start(true, |_| {});
    let mut watcher = server.enter_on_shard("watcher", 1);
    let a = server.enter_on_shard("alice", 0);
    let a_id = a.id;
    assert_at(
        a.entered.player.as_ref().unwrap(),
        (0.0, 0.0, 0.0),
        "alice at first",
    );
    let mut a = a;
    watcher.expect_spawn(a_id);
    a.move_to(1.5, 2.5, -3.0);
    let seen = watcher.expect("alice's move", |m| match m {
        ServerMessage::Move(mv) if mv.player_id == a_id => Some((mv.x, mv.y, mv.z)),
        _ => None,
    });
    assert_eq!(seen, (1.5, 2.5, -3.0));
    drop(a);
    // The save is queued before the despawn is broadcast.
    watcher.expect("alice's despawn", |m| match m {
        ServerMessage::Despawn(d) if d.player_ids.contains(&a_id) => Some(()),
        _ => None,
    });
    let again = server.reenter_on_shard("alice", a_id, 0);
    assert_at(
        again.entered.player.as_ref().unwrap(),
        (1.5, 2.5, -3.0),
        "alice entering again",
    );
}

/// Reads the saved position of account `id` from the SQLite file.
fn stored_position(path: &std::path::Path, id: u64) -> (f64, f64, f64) {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the account database");
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.query_row(
        "SELECT pos_x, pos_y, pos_z FROM accounts WHERE id = ?1",
        [i64::try_from(id).unwrap()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .expect("the account's row")
}

#[test]
fn position_is_saved_periodically_while_the_player_stays_in_the_world() {
    let server = TestServer::start(true, |c| c.server.save_interval_ms = 200);
    let path = server.config.store.sqlite_path.clone();
    let mut a = server.enter_on_shard("alice", 0);
    assert_eq!(stored_position(&path, a.id), (0.0, 0.0, 0.0));
    a.move_to(7.25, -1.5, 3.0);
    ping(&mut a.conn); // the move has been taken
                       // Nothing to await here but the store itself: poll the file, bounded.
    let deadline = Instant::now() + WAIT;
    loop {
        let pos = stored_position(&path, a.id);
        if pos == (7.25, -1.5, 3.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the position was not saved while in the world (row still at {pos:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Saved while the player is still in the world (not on leave): the session is still alive.
    ping(&mut a.conn);
}

// ---------------------------------------------------------------------------------------------
// Duplicate login
// ---------------------------------------------------------------------------------------------

/// x enters on shard 0 with watchers on both shards, then enters again on `new_shard`: the old
/// session gets `S_DISCONNECT{DUPLICATE_LOGIN}` and is closed, the new one `S_ENTER{OK}`, and
/// each watcher ends up showing x exactly once and hears the new session.
fn duplicate_login_replaces_the_old_session(new_shard: usize) {
    let server = TestServer::start(true, |_| {});
    let mut players = vec![
        server.enter_on_shard("watcher0", 0),
        server.enter_on_shard("watcher1", 1),
        server.enter_on_shard("xavier", 0),
    ];
    let mut views = everyone_sees_everyone(&mut players);
    let mut old = players.pop().unwrap();
    views.pop();
    let x = old.id;

    let mut new = server.reenter_on_shard("xavier", x, new_shard);
    let closing = expect_closed(&mut old.conn);
    assert_eq!(
        disconnect_reason(&closing),
        Some(pb::DisconnectReason::DuplicateLogin),
        "the old session is told why: {closing:?}"
    );
    // The new session's snapshot has both watchers, not xavier itself (read_snapshot's marker
    // is the new session's chat the watchers wait for below).
    let mut snap: Vec<u64> = read_snapshot(&mut new)
        .iter()
        .map(|p| p.player_id)
        .collect();
    snap.sort();
    let mut want: Vec<u64> = players.iter().map(|p| p.id).collect();
    want.sort();
    assert_eq!(snap, want, "the new session's snapshot");

    let marker = "snapshot marker of xavier";
    for (w, view) in players.iter_mut().zip(views.iter_mut()) {
        let msgs = recv_until(&mut w.conn, "the new session's chat", |m| {
            is_chat(m, x, marker)
        });
        view.apply_all(&msgs);
        assert!(view.present.contains_key(&x), "{} shows xavier", w.name);
        let (spawns, despawns) = (view.spawns[&x], view.despawns.get(&x).copied().unwrap_or(0));
        assert_eq!(
            (spawns, despawns),
            (2, 1),
            "{} sees xavier's old session leave and the new one come",
            w.name
        );
        assert_eq!(
            msgs.iter()
                .filter(|m| matches!(m, ServerMessage::Chat(c) if c.player_id == x))
                .count(),
            1,
            "{} hears the new session once",
            w.name
        );
    }
    // The old connection is gone from the server: the two watchers and the new session remain.
    server.wait_for_connections(|c| c.iter().sum::<usize>() == 3);
}

#[test]
fn duplicate_login_on_the_other_shard_disconnects_the_old_session_and_keeps_one_player() {
    duplicate_login_replaces_the_old_session(1);
}

#[test]
fn duplicate_login_on_the_same_shard_disconnects_the_old_session_and_keeps_one_player() {
    duplicate_login_replaces_the_old_session(0);
}

// ---------------------------------------------------------------------------------------------
// Many players
// ---------------------------------------------------------------------------------------------

#[test]
fn newcomer_snapshot_lists_all_fifty_players_exactly_once() {
    let server = TestServer::start(true, |_| {});
    let mut players: Vec<Player> = (0..50)
        .map(|i| server.enter_on_shard(&format!("player{i:02}"), i % 2))
        .collect();
    let all: Vec<u64> = players.iter().map(|p| p.id).collect();
    // Each shard's replica has all fifty once its first player (player00 on shard 0, player01
    // on shard 1) has been shown all the others.
    let mut first_views = Vec::new();
    for p in players.iter_mut().take(2) {
        let mut view = View::new(p.id);
        let others: Vec<u64> = all.iter().copied().filter(|&i| i != p.id).collect();
        await_present(p, &mut view, &others);
        first_views.push(view);
    }

    let check = |snap: Vec<pb::Player>, want: &[u64], who: &str| {
        let mut ids: Vec<u64> = snap.iter().map(|p| p.player_id).collect();
        ids.sort();
        let mut want = want.to_vec();
        want.sort();
        assert_eq!(
            ids, want,
            "{who}'s snapshot lists every player exactly once"
        );
        for p in &snap {
            let i = all.iter().position(|&id| id == p.player_id);
            if let Some(i) = i {
                assert_eq!(p.name, format!("player{i:02}"));
            }
        }
    };

    let mut n0 = server.enter_on_shard("newcomer0", 0);
    check(read_snapshot(&mut n0), &all, "newcomer0 (shard 0)");

    // Shard 1 has newcomer0 once player01 has been shown it.
    await_present(&mut players[1], &mut first_views[1], &[n0.id]);
    let mut n1 = server.enter_on_shard("newcomer1", 1);
    let mut want = all.clone();
    want.push(n0.id);
    check(read_snapshot(&mut n1), &want, "newcomer1 (shard 1)");
}

// ---------------------------------------------------------------------------------------------
// Before C_ENTER; plaintext
// ---------------------------------------------------------------------------------------------

#[test]
fn ping_and_echo_are_answered_before_enter_and_enter_still_works() {
    let server = TestServer::start(true, |_| {});
    let id = server.register("alice", PASSWORD);
    for shard in 0..2 {
        let mut conn = server.connect_on_shard(server.world_addr(), shard);
        conn.send(&pb::CPing {
            client_time: 0xfeed_beef,
        })
        .unwrap();
        match conn.recv_timeout(WAIT).unwrap() {
            ServerMessage::Pong(p) => {
                assert_eq!(p.client_time, 0xfeed_beef);
                // Microseconds since the Unix epoch: after 2020-01-01.
                assert!(p.server_time > 1_577_836_800_000_000, "{p:?}");
            }
            other => panic!("expected S_PONG, got {other:?}"),
        }
        let data = vec![0u8, 1, 2, 0xff, b'h', b'i'];
        conn.send(&pb::CEcho {
            data: bytes::Bytes::from(data.clone()),
        })
        .unwrap();
        match conn.recv_timeout(WAIT).unwrap() {
            ServerMessage::Echo(e) => assert_eq!(e.data, data),
            other => panic!("expected S_ECHO, got {other:?}"),
        }
        // The connection is still waiting for C_ENTER, and takes it.
        let entered = send_enter(&mut conn, server.token_for("alice", id));
        assert_eq!(
            entered.result, OK,
            "enter on shard {shard} after ping and echo"
        );
        // (The second round replaces this session; close it first so that is not in play.)
        drop(conn);
        server.wait_for_connections(|c| c.iter().sum::<usize>() == 0);
    }
}

#[test]
fn plaintext_register_login_enter_and_chat_across_shards() {
    let server = TestServer::start(false, |_| {});
    assert!(server.tls.is_none() && !server.config.tls.enabled);

    let mut login = server.login_conn();
    login
        .send(&pb::CRegister {
            username: "alice".into(),
            password: PASSWORD.into(),
        })
        .unwrap();
    let a_id = match login.recv_timeout(WAIT).unwrap() {
        ServerMessage::Register(r) => {
            assert_eq!(r.result, OK);
            r.account_id
        }
        other => panic!("expected S_REGISTER, got {other:?}"),
    };
    login
        .send(&pb::CLogin {
            username: "alice".into(),
            password: PASSWORD.into(),
        })
        .unwrap();
    let token = match login.recv_timeout(WAIT).unwrap() {
        ServerMessage::Login(l) => {
            assert_eq!((l.result, l.account_id), (OK, a_id));
            assert!(!l.token.is_empty() && l.expires_in_secs > 0, "{l:?}");
            l.token
        }
        other => panic!("expected S_LOGIN, got {other:?}"),
    };
    drop(login);
    let mut conn = server.connect_on_shard(server.world_addr(), 0);
    let entered = send_enter(&mut conn, token);
    assert_eq!(entered.result, OK);
    assert_eq!(entered.player.as_ref().unwrap().player_id, a_id);
    let mut a = Player {
        id: a_id,
        name: "alice".into(),
        conn,
        entered,
    };
    let mut b = server.enter_on_shard("bob", 1);
    let b_id = b.id;
    a.expect_spawn(b_id);
    b.expect_spawn(a_id);
    a.chat("plain hello");
    b.chat("plain reply");
    for p in [&mut a, &mut b] {
        let mut heard = HashSet::new();
        recv_until(&mut p.conn, "both chats", |m| {
            if let ServerMessage::Chat(c) = m {
                heard.insert((c.player_id, c.text.clone()));
            }
            heard.len() == 2
        });
        assert_eq!(
            heard,
            HashSet::from([
                (a_id, "plain hello".to_string()),
                (b_id, "plain reply".to_string())
            ])
        );
    }
}
