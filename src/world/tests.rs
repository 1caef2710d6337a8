//! Tests of the world against PROTOCOL.md ("World service" and "Ordering").
//!
//! [`Sim`] stands in for the drivers: several shards, each with its own [`World`], a FIFO channel
//! per (from, to) pair of shards for published events, and an inbox per client connection. It
//! carries out every [`Action`] the way a driver does, after the call returned. [`Sim::check`]
//! then reads every inbox as the client would and enforces the ordering rules.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::BytesMut;

use super::{Action, ConnId, EnterStamp, PlayerInfo, SessionKey, World, WorldEvent};
use crate::model::{AccountId, Position};
use crate::protocol::pb::{self, DisconnectReason};
use crate::protocol::{encode_frame, ServerMessage, MAX_SERVER_FRAME};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A tiny xorshift64 generator: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Spread small seeds over the state; xorshift must not start at zero.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn pos(x: f32, y: f32, z: f32) -> Position {
    Position { x, y, z }
}

fn name_of(account: AccountId) -> String {
    format!("p{account}")
}

/// A one-line, order-stable rendering of a server message, for readable assertions.
fn show(msg: &ServerMessage) -> String {
    fn player(p: &pb::Player) -> String {
        format!("{} {} ({},{},{})", p.player_id, p.name, p.x, p.y, p.z)
    }
    match msg {
        ServerMessage::Enter(m) => {
            let result = pb::Result::try_from(m.result).map_or("?", |r| r.as_str_name());
            let who = m.player.as_ref().map(player).unwrap_or_default();
            format!("ENTER {result} {who}")
        }
        ServerMessage::Spawn(m) => {
            let mut players: Vec<&pb::Player> = m.players.iter().collect();
            players.sort_by_key(|p| p.player_id);
            let players: Vec<String> = players.into_iter().map(player).collect();
            format!("SPAWN [{}]", players.join(", "))
        }
        ServerMessage::Despawn(m) => format!("DESPAWN {:?}", m.player_ids),
        ServerMessage::Chat(m) => format!("CHAT {} {}", m.player_id, m.text),
        ServerMessage::Move(m) => format!("MOVE {} ({},{},{})", m.player_id, m.x, m.y, m.z),
        ServerMessage::Disconnect(m) => {
            let reason = DisconnectReason::try_from(m.reason).map_or("?", |r| r.as_str_name());
            format!("DISCONNECT {reason}")
        }
        other => format!("{other:?}"),
    }
}

fn disconnect(reason: DisconnectReason) -> String {
    show(&ServerMessage::Disconnect(pb::SDisconnect {
        reason: reason as i32,
        detail: String::new(),
    }))
}

/// One client connection as the simulation sees it.
struct Client {
    shard: usize,
    account: AccountId,
    inbox: Vec<ServerMessage>,
    /// False once the client closed it (`leave`) or the server kicked it.
    open: bool,
}

/// Several shards and their clients, driven the way the real drivers drive the world.
struct Sim {
    worlds: Vec<World>,
    /// Published events in flight, FIFO per (from, to).
    channels: BTreeMap<(usize, usize), VecDeque<WorldEvent>>,
    /// Every connection ever made; ids are unique across shards.
    clients: BTreeMap<ConnId, Client>,
    /// Every `Save` carried out, in order.
    saves: Vec<(AccountId, Position)>,
    /// The account store: where `enter` loads a player from, where `Save` writes.
    store: HashMap<AccountId, Position>,
    /// Messages addressed to a connection after it was closed (should stay empty).
    after_close: Vec<(ConnId, String)>,
    /// Microseconds of the shared clock; advances on each `enter`.
    clock: u64,
    next_conn: ConnId,
}

impl Sim {
    fn new(shards: usize) -> Self {
        Self {
            worlds: (0..shards).map(|s| World::new(s as u16)).collect(),
            channels: BTreeMap::new(),
            clients: BTreeMap::new(),
            saves: Vec::new(),
            store: HashMap::new(),
            after_close: Vec::new(),
            clock: 0,
            next_conn: 1,
        }
    }

    /// A new connection on `shard` enters as `account`, at the next tick of the clock.
    fn enter(&mut self, shard: usize, account: AccountId) -> ConnId {
        self.clock += 1;
        self.enter_at(shard, account, self.clock)
    }

    /// A new connection on `shard` enters as `account` at exactly `micros`.
    fn enter_at(&mut self, shard: usize, account: AccountId, micros: u64) -> ConnId {
        self.clock = self.clock.max(micros);
        let conn = self.next_conn;
        self.next_conn += 1;
        self.clients.insert(
            conn,
            Client {
                shard,
                account,
                inbox: Vec::new(),
                open: true,
            },
        );
        let player = PlayerInfo {
            id: account,
            name: name_of(account),
            position: self.store.get(&account).copied().unwrap_or_default(),
        };
        self.call(shard, |w, out| w.enter(conn, player, micros, out));
        conn
    }

    fn chat(&mut self, conn: ConnId, text: &str) {
        let text = text.to_owned();
        self.call(self.shard_of(conn), |w, out| w.chat(conn, text, out));
    }

    fn move_to(&mut self, conn: ConnId, to: Position) {
        self.call(self.shard_of(conn), |w, out| w.move_to(conn, to, out));
    }

    /// The client closes its connection.
    fn leave(&mut self, conn: ConnId) {
        self.client_mut(conn).open = false;
        self.call(self.shard_of(conn), |w, out| w.leave(conn, out));
    }

    fn shard_of(&self, conn: ConnId) -> usize {
        self.clients[&conn].shard
    }

    fn client_mut(&mut self, conn: ConnId) -> &mut Client {
        self.clients.get_mut(&conn).expect("known conn")
    }

    fn is_open(&self, conn: ConnId) -> bool {
        self.clients[&conn].open
    }

    fn open_conns(&self) -> Vec<ConnId> {
        self.clients
            .iter()
            .filter(|(_, c)| c.open)
            .map(|(conn, _)| *conn)
            .collect()
    }

    fn counts(&self) -> Vec<usize> {
        self.worlds.iter().map(World::player_count).collect()
    }

    /// What `conn` received, rendered by [`show`].
    fn log(&self, conn: ConnId) -> Vec<String> {
        self.clients[&conn].inbox.iter().map(show).collect()
    }

    /// How many times `conn` received exactly `line`.
    fn received(&self, conn: ConnId, line: &str) -> usize {
        self.log(conn).iter().filter(|l| *l == line).count()
    }

    /// Calls into one shard's world and carries out what it asked for.
    fn call(&mut self, shard: usize, f: impl FnOnce(&mut World, &mut Vec<Action>)) {
        let mut out = Vec::new();
        f(&mut self.worlds[shard], &mut out);
        self.carry_out(shard, out);
    }

    /// Does what a driver does with `out`, in order, after the call returned.
    fn carry_out(&mut self, shard: usize, out: Vec<Action>) {
        let mut kicked = Vec::new();
        for action in out {
            match action {
                Action::Send { to, msg } => self.deliver_to_client(shard, to, msg),
                Action::Broadcast { except, msg } => {
                    let mut to: Vec<ConnId> = self.worlds[shard]
                        .local_conns()
                        .filter(|c| Some(*c) != except)
                        .collect();
                    to.sort_unstable();
                    for conn in to {
                        self.deliver_to_client(shard, conn, msg.clone());
                    }
                }
                Action::Kick { conn, reason } => {
                    let msg = ServerMessage::Disconnect(pb::SDisconnect {
                        reason: reason as i32,
                        detail: String::new(),
                    });
                    self.deliver_to_client(shard, conn, msg);
                    self.client_mut(conn).open = false;
                    kicked.push(conn);
                }
                Action::Publish(event) => {
                    for to in (0..self.worlds.len()).filter(|to| *to != shard) {
                        let channel = self.channels.entry((shard, to)).or_default();
                        channel.push_back(event.clone());
                    }
                }
                Action::Save { player, position } => {
                    self.saves.push((player, position));
                    self.store.insert(player, position);
                }
            }
        }
        // The driver closes a kicked connection and later reports it gone: a no-op for the world.
        for conn in kicked {
            let mut out = Vec::new();
            self.worlds[shard].leave(conn, &mut out);
            assert!(
                out.is_empty(),
                "leave of kicked conn {conn} emitted {out:?}"
            );
        }
    }

    fn deliver_to_client(&mut self, shard: usize, conn: ConnId, msg: ServerMessage) {
        let client = self
            .clients
            .get_mut(&conn)
            .expect("message for an unknown conn");
        assert_eq!(
            client.shard, shard,
            "shard {shard} wrote to conn {conn} of another shard"
        );
        if !client.open {
            self.after_close.push((conn, show(&msg)));
        }
        client.inbox.push(msg);
    }

    /// Delivers the oldest event of channel (from, to); false when it is empty.
    fn deliver_one(&mut self, from: usize, to: usize) -> bool {
        let Some(event) = self
            .channels
            .get_mut(&(from, to))
            .and_then(VecDeque::pop_front)
        else {
            return false;
        };
        self.call(to, |w, out| w.apply_remote(event, out));
        true
    }

    /// Drains channel (from, to) only.
    fn deliver_channel(&mut self, from: usize, to: usize) {
        while self.deliver_one(from, to) {}
    }

    fn busy_channels(&self) -> Vec<(usize, usize)> {
        self.channels
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect()
    }

    /// Drains every channel, channel by channel.
    fn deliver_all(&mut self) {
        while let Some((from, to)) = self.busy_channels().first().copied() {
            self.deliver_channel(from, to);
        }
    }

    /// Delivers up to `n` events, each from a channel picked at random: FIFO within a channel,
    /// any interleaving across channels.
    fn deliver_some(&mut self, rng: &mut Rng, n: usize) {
        for _ in 0..n {
            let busy = self.busy_channels();
            if busy.is_empty() {
                return;
            }
            let (from, to) = busy[rng.below(busy.len())];
            self.deliver_one(from, to);
        }
    }

    /// Drains every channel in a seeded random interleaving.
    fn deliver_random(&mut self, seed: u64) {
        let mut rng = Rng::new(seed);
        while !self.busy_channels().is_empty() {
            self.deliver_some(&mut rng, 1);
        }
    }

    /// Reads every inbox as its client would and panics on the first broken rule. Chat texts of
    /// the form `"<session conn>#<seq>"` must arrive with increasing `seq` per (receiver,
    /// session), and per (receiver, sender account) too when `per_account_order`. Returns each
    /// client's final view: the players it believes are in the world.
    fn check(&self, per_account_order: bool) -> BTreeMap<ConnId, BTreeSet<AccountId>> {
        assert!(
            self.after_close.is_empty(),
            "messages sent to closed connections: {:?}",
            self.after_close
        );
        self.clients
            .iter()
            .map(|(conn, client)| (*conn, check_client(*conn, client, per_account_order)))
            .collect()
    }

    /// After everything was delivered: every shard agrees with the clients that are still
    /// connected, and every connected client sees exactly those players.
    fn assert_settled(&self, per_account_order: bool) {
        assert!(self.busy_channels().is_empty(), "events still in flight");
        let views = self.check(per_account_order);
        let live = self.open_conns();
        let accounts: BTreeSet<AccountId> = live.iter().map(|c| self.clients[c].account).collect();
        assert_eq!(
            accounts.len(),
            live.len(),
            "an account has two live sessions"
        );
        for (shard, world) in self.worlds.iter().enumerate() {
            assert_eq!(
                world.player_count(),
                live.len(),
                "shard {shard} counts {} players, {} sessions are live (counts {:?})",
                world.player_count(),
                live.len(),
                self.counts()
            );
            let mut local: Vec<ConnId> = world.local_conns().collect();
            local.sort_unstable();
            let expected: Vec<ConnId> = live
                .iter()
                .copied()
                .filter(|c| self.clients[c].shard == shard)
                .collect();
            assert_eq!(local, expected, "shard {shard} local conns");
        }
        for conn in &live {
            assert_eq!(views[conn], accounts, "final view of conn {conn}");
        }
    }
}

/// The rules of PROTOCOL.md "Ordering", from one client's point of view.
fn check_client(conn: ConnId, client: &Client, per_account_order: bool) -> BTreeSet<AccountId> {
    let log: Vec<String> = client.inbox.iter().map(show).collect();
    let fail = |i: usize, why: &str| -> ! {
        panic!(
            "conn {conn} (account {}, shard {}) message #{i} `{}`: {why}\nfull log:\n  {}",
            client.account,
            client.shard,
            log[i],
            log.join("\n  ")
        )
    };
    let mut view = BTreeSet::new();
    let Some(first) = client.inbox.first() else {
        panic!("conn {conn} received nothing, not even S_ENTER");
    };
    let me = match first {
        ServerMessage::Enter(m) if m.result == pb::Result::Ok as i32 => match &m.player {
            Some(p) => p.player_id,
            None => fail(0, "S_ENTER without the player"),
        },
        _ => fail(0, "the first message must be S_ENTER OK"),
    };
    if me != client.account {
        fail(0, "S_ENTER for another account");
    }
    view.insert(me);
    let mut disconnected = false;
    let mut last_by_session: HashMap<String, u64> = HashMap::new();
    let mut last_by_account: HashMap<AccountId, u64> = HashMap::new();
    for (i, msg) in client.inbox.iter().enumerate().skip(1) {
        if disconnected {
            fail(i, "a message after S_DISCONNECT");
        }
        match msg {
            ServerMessage::Enter(_) => fail(i, "a second S_ENTER"),
            ServerMessage::Spawn(m) => {
                for p in &m.players {
                    if !view.insert(p.player_id) {
                        fail(i, "S_SPAWN of a player already spawned (or of itself)");
                    }
                }
            }
            ServerMessage::Despawn(m) => {
                for id in &m.player_ids {
                    if *id == me {
                        fail(i, "S_DESPAWN of the client itself");
                    }
                    if !view.remove(id) {
                        fail(i, "S_DESPAWN of a player not spawned");
                    }
                }
            }
            ServerMessage::Chat(m) => {
                if !view.contains(&m.player_id) {
                    fail(i, "S_CHAT from a player not spawned");
                }
                if let Some((session, seq)) = m.text.split_once('#') {
                    let seq: u64 = seq.parse().expect("tagged chat");
                    let last = last_by_session.entry(session.to_owned()).or_default();
                    if seq <= *last {
                        fail(i, "chat of one session out of order");
                    }
                    *last = seq;
                    if per_account_order {
                        let last = last_by_account.entry(m.player_id).or_default();
                        if seq <= *last {
                            fail(i, "chat of one player out of order");
                        }
                        *last = seq;
                    }
                }
            }
            ServerMessage::Move(m) => {
                if m.player_id == me {
                    fail(i, "S_MOVE of the client's own move");
                }
                if !view.contains(&m.player_id) {
                    fail(i, "S_MOVE from a player not spawned");
                }
            }
            ServerMessage::Disconnect(_) => disconnected = true,
            _ => fail(i, "a message the world never sends"),
        }
    }
    view
}

fn enter_line(account: AccountId, at: Position) -> String {
    format!(
        "ENTER RESULT_OK {account} p{account} ({},{},{})",
        at.x, at.y, at.z
    )
}

fn spawn_line(players: &[(AccountId, Position)]) -> String {
    let players: Vec<String> = players
        .iter()
        .map(|(id, p)| format!("{id} p{id} ({},{},{})", p.x, p.y, p.z))
        .collect();
    format!("SPAWN [{}]", players.join(", "))
}

fn remote_enter(id: AccountId, name: String, position: Position, shard: u16) -> WorldEvent {
    WorldEvent::Enter {
        player: PlayerInfo { id, name, position },
        stamp: EnterStamp {
            at_micros: id,
            session: SessionKey { shard, conn: id },
        },
    }
}

const ORIGIN: Position = Position {
    x: 0.0,
    y: 0.0,
    z: 0.0,
};

// ---------------------------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------------------------

#[test]
fn presence_on_one_shard_spawns_both_ways_and_despawns_with_a_save_on_leave() {
    let mut sim = Sim::new(1);
    sim.store.insert(1, pos(1.0, 2.0, 3.0));

    let a = sim.enter(0, 1);
    assert_eq!(
        sim.log(a),
        [enter_line(1, pos(1.0, 2.0, 3.0))],
        "alone: no S_SPAWN"
    );

    let b = sim.enter(0, 2);
    assert_eq!(
        sim.log(b),
        [
            enter_line(2, ORIGIN),
            spawn_line(&[(1, pos(1.0, 2.0, 3.0))])
        ]
    );
    assert_eq!(sim.log(a)[1..], [spawn_line(&[(2, ORIGIN)])]);

    sim.move_to(b, pos(4.0, 5.0, 6.0));
    sim.saves.clear();
    sim.leave(b);
    assert_eq!(sim.log(a).last().unwrap(), "DESPAWN [2]");
    assert_eq!(sim.saves, [(2, pos(4.0, 5.0, 6.0))]);
    assert_eq!(sim.counts(), [1]);
    sim.assert_settled(true);
}

#[test]
fn presence_across_shards_spawns_both_ways_and_despawns_on_leave() {
    let mut sim = Sim::new(2);
    let a = sim.enter(0, 1);
    sim.deliver_all();
    let b = sim.enter(1, 2);
    assert_eq!(
        sim.log(b),
        [enter_line(2, ORIGIN), spawn_line(&[(1, ORIGIN)])]
    );
    assert_eq!(sim.log(a), [enter_line(1, ORIGIN)], "not before delivery");
    sim.deliver_all();
    assert_eq!(
        sim.log(a),
        [enter_line(1, ORIGIN), spawn_line(&[(2, ORIGIN)])]
    );
    assert_eq!(sim.counts(), [2, 2]);

    sim.leave(b);
    sim.deliver_all();
    assert_eq!(sim.log(a).last().unwrap(), "DESPAWN [2]");
    assert_eq!(sim.counts(), [1, 1]);
    sim.assert_settled(true);
}

// ---------------------------------------------------------------------------------------------
// Chat and movement
// ---------------------------------------------------------------------------------------------

#[test]
fn chat_reaches_every_player_on_every_shard_including_the_sender() {
    let mut sim = Sim::new(3);
    let conns = [
        sim.enter(0, 1),
        sim.enter(1, 2),
        sim.enter(2, 3),
        sim.enter(0, 4),
    ];
    sim.deliver_all();
    sim.chat(conns[0], "hello");
    sim.deliver_all();
    for conn in conns {
        assert_eq!(sim.received(conn, "CHAT 1 hello"), 1, "conn {conn}");
    }
    sim.assert_settled(true);
}

#[test]
fn move_reaches_every_other_player_updates_replicas_and_is_saved_on_leave() {
    let mut sim = Sim::new(2);
    let a = sim.enter(0, 1);
    let b = sim.enter(0, 2);
    let c = sim.enter(1, 3);
    sim.deliver_all();

    sim.move_to(a, pos(7.0, 8.0, 9.0));
    sim.deliver_all();
    for conn in [b, c] {
        assert_eq!(sim.received(conn, "MOVE 1 (7,8,9)"), 1, "conn {conn}");
    }
    assert!(
        !sim.log(a).iter().any(|l| l.starts_with("MOVE")),
        "the mover gets no S_MOVE"
    );

    // Newcomers on both shards see the new position in their snapshot.
    let moved = (1, pos(7.0, 8.0, 9.0));
    let d = sim.enter(1, 4);
    assert_eq!(
        sim.log(d)[1],
        spawn_line(&[moved, (2, ORIGIN), (3, ORIGIN)])
    );
    sim.deliver_all();
    let e = sim.enter(0, 5);
    assert_eq!(
        sim.log(e)[1],
        spawn_line(&[moved, (2, ORIGIN), (3, ORIGIN), (4, ORIGIN)])
    );

    sim.saves.clear();
    sim.leave(a);
    sim.deliver_all();
    assert_eq!(sim.saves, [moved]);
    sim.assert_settled(true);
}

// ---------------------------------------------------------------------------------------------
// Duplicate logins
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicate_login_on_one_shard_kicks_the_older_session_and_respawns_the_player() {
    let mut sim = Sim::new(2);
    let old = sim.enter(0, 1);
    let watcher = sim.enter(0, 2);
    let remote = sim.enter(1, 3);
    sim.deliver_all();
    sim.move_to(old, pos(1.0, 1.0, 1.0));
    sim.deliver_all();
    sim.saves.clear();

    let new = sim.enter(0, 1);
    assert!(!sim.is_open(old));
    assert_eq!(
        sim.log(old).last().unwrap(),
        &disconnect(DisconnectReason::DuplicateLogin)
    );
    assert_eq!(sim.saves, [(1, pos(1.0, 1.0, 1.0))], "old position saved");
    // The new session starts where the old one stood (the replica is fresher than the store,
    // which still held the origin when it entered) and never hears of the old session.
    let moved = pos(1.0, 1.0, 1.0);
    assert_eq!(
        sim.log(new),
        [
            enter_line(1, moved),
            spawn_line(&[(2, ORIGIN), (3, ORIGIN)])
        ]
    );
    let respawn = ["DESPAWN [1]".to_owned(), spawn_line(&[(1, moved)])];
    assert_eq!(sim.log(watcher)[sim.log(watcher).len() - 2..], respawn);
    sim.deliver_all();
    assert_eq!(sim.log(remote)[sim.log(remote).len() - 2..], respawn);

    assert_eq!(sim.counts(), [3, 3]);
    sim.assert_settled(true);
}

#[test]
fn duplicate_login_across_shards_kicks_the_older_session_everywhere() {
    for seed in 0..30 {
        let mut sim = Sim::new(3);
        let watchers = [sim.enter(0, 10), sim.enter(1, 11), sim.enter(2, 12)];
        let old = sim.enter(0, 1);
        sim.deliver_all();

        // The old session speaks and moves just before the new one enters elsewhere; the
        // events cross the new session's in any order.
        sim.chat(old, "old");
        sim.move_to(old, pos(5.0, 5.0, 5.0));
        sim.saves.clear();
        let new = sim.enter(1, 1);
        sim.deliver_random(seed);

        assert!(!sim.is_open(old));
        assert_eq!(
            sim.log(old).last().unwrap(),
            &disconnect(DisconnectReason::DuplicateLogin),
            "seed {seed}"
        );
        assert_eq!(sim.saves, [(1, pos(5.0, 5.0, 5.0))], "seed {seed}");
        assert_eq!(sim.counts(), [4, 4, 4], "seed {seed}");
        assert_eq!(sim.received(new, "CHAT 1 old"), 0, "seed {seed}");

        sim.chat(new, "new");
        sim.deliver_all();
        for conn in watchers.into_iter().chain([new]) {
            assert_eq!(
                sim.received(conn, "CHAT 1 new"),
                1,
                "seed {seed} conn {conn}"
            );
        }
        assert_eq!(sim.received(old, "CHAT 1 new"), 0, "seed {seed}");
        sim.assert_settled(true);
    }
}

#[test]
fn concurrent_duplicate_login_keeps_the_greater_enter_stamp_on_every_shard() {
    // (micros on shard 0, micros on shard 1): shard 1 later, shard 0 later, and a tie.
    for (t0, t1) in [(100, 200), (200, 100), (150, 150)] {
        for seed in 0..10 {
            let mut sim = Sim::new(3);
            let watchers = [
                sim.enter_at(0, 10, 1),
                sim.enter_at(1, 11, 2),
                sim.enter_at(2, 12, 3),
            ];
            sim.deliver_all();

            // Both enter before either shard hears of the other.
            let on0 = sim.enter_at(0, 1, t0);
            let on1 = sim.enter_at(1, 1, t1);
            let stamp = |shard: u16, conn: ConnId, at_micros: u64| EnterStamp {
                at_micros,
                session: SessionKey { shard, conn },
            };
            let (winner, loser) = if stamp(0, on0, t0) > stamp(1, on1, t1) {
                (on0, on1)
            } else {
                (on1, on0)
            };
            if t0 == t1 {
                assert_eq!(winner, on1, "a tie goes to the greater session key");
            }
            sim.deliver_random(seed);

            let case = format!("t0 {t0} t1 {t1} seed {seed}");
            assert!(sim.is_open(winner), "{case}");
            assert!(!sim.is_open(loser), "{case}");
            assert_eq!(
                sim.log(loser).last().unwrap(),
                &disconnect(DisconnectReason::DuplicateLogin),
                "{case}"
            );
            assert_eq!(sim.counts(), [4, 4, 4], "{case}");

            // Every shard holds the winner's session: its chat is heard on all of them.
            sim.chat(winner, "won");
            sim.deliver_all();
            for conn in watchers.into_iter().chain([winner]) {
                assert_eq!(sim.received(conn, "CHAT 1 won"), 1, "{case} conn {conn}");
            }
            sim.assert_settled(true);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ordering under random interleavings
// ---------------------------------------------------------------------------------------------

/// ~10 accounts on 3 shards enter, chat, move and leave at random while events cross at
/// random; then everything is delivered and checked. With `home_shards` an account always
/// enters on the same shard; otherwise it may enter (and log in twice) on any shard.
fn random_play(seed: u64, home_shards: bool) {
    const SHARDS: usize = 3;
    const ACCOUNTS: usize = 10;
    let mut rng = Rng::new(seed);
    let mut sim = Sim::new(SHARDS);
    let mut seq: HashMap<AccountId, u64> = HashMap::new();
    for _ in 0..300 {
        let open = sim.open_conns();
        let pick = |rng: &mut Rng| open.get(rng.below(open.len().max(1))).copied();
        match rng.below(100) {
            0..=19 => {
                let account = 1 + rng.below(ACCOUNTS) as AccountId;
                let shard = if home_shards {
                    account as usize % SHARDS
                } else {
                    rng.below(SHARDS)
                };
                sim.enter(shard, account);
            }
            20..=44 => {
                if let Some(conn) = pick(&mut rng) {
                    let n = seq.entry(sim.clients[&conn].account).or_default();
                    *n += 1;
                    let text = format!("{conn}#{n}");
                    sim.chat(conn, &text);
                }
            }
            45..=59 => {
                if let Some(conn) = pick(&mut rng) {
                    let x = rng.below(1000) as f32;
                    sim.move_to(conn, pos(x, 0.0, -x));
                }
            }
            60..=69 => {
                if let Some(conn) = pick(&mut rng) {
                    sim.leave(conn);
                }
            }
            _ => {
                let n = 1 + rng.below(4);
                sim.deliver_some(&mut rng, n);
            }
        }
    }
    sim.deliver_random(seed);
    sim.assert_settled(home_shards);
}

#[test]
fn random_play_on_home_shards_keeps_every_view_consistent_and_in_order() {
    for seed in 0..50 {
        random_play(seed, true);
    }
}

#[test]
fn random_play_with_logins_on_any_shard_keeps_every_view_consistent() {
    for seed in 0..50 {
        random_play(seed, false);
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshot and leave
// ---------------------------------------------------------------------------------------------

#[test]
fn snapshot_of_3000_players_is_split_into_frames_under_the_limit() {
    let mut world = World::new(0);
    let mut out = Vec::new();
    for id in 1..=3000u64 {
        let name = format!("{:_<32}", format!("player{id}"));
        assert_eq!(name.len(), 32);
        let at = pos(id as f32 + 0.5, -(id as f32), 1e6 + id as f32);
        world.apply_remote(remote_enter(id, name, at, 1), &mut out);
    }
    assert_eq!(world.player_count(), 3000);
    out.clear();

    let newcomer = PlayerInfo {
        id: 5000,
        name: name_of(5000),
        position: ORIGIN,
    };
    world.enter(77, newcomer, 1_000_000, &mut out);

    let mut to_newcomer = out.iter().filter_map(|a| match a {
        Action::Send { to: 77, msg } => Some(msg),
        _ => None,
    });
    assert!(matches!(to_newcomer.next(), Some(ServerMessage::Enter(_))));
    let mut seen = Vec::new();
    let mut frames = 0;
    for msg in to_newcomer {
        let ServerMessage::Spawn(spawn) = msg else {
            panic!("expected S_SPAWN, got {}", show(msg));
        };
        let mut buf = BytesMut::new();
        encode_frame(spawn, &mut buf).expect("frame within 65535 bytes");
        assert!(buf.len() <= MAX_SERVER_FRAME);
        assert_eq!(buf.len(), 4 + prost::Message::encoded_len(spawn));
        seen.extend(spawn.players.iter().map(|p| p.player_id));
        frames += 1;
    }
    assert!(frames > 1, "3000 players need more than one frame");
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=3000).collect::<Vec<_>>(),
        "each player exactly once"
    );
}

#[test]
fn leave_of_an_unknown_kicked_or_departed_conn_emits_nothing() {
    let player = |id| PlayerInfo {
        id,
        name: name_of(id),
        position: ORIGIN,
    };
    let mut world = World::new(0);
    let mut out = Vec::new();

    world.leave(42, &mut out);
    assert_eq!(out, [], "unknown conn");

    // Kicked by a newer session on this shard.
    world.enter(1, player(1), 10, &mut out);
    world.enter(2, player(1), 20, &mut out);
    assert!(out.contains(&Action::Kick {
        conn: 1,
        reason: DisconnectReason::DuplicateLogin
    }));
    out.clear();
    world.leave(1, &mut out);
    assert_eq!(out, [], "conn kicked by a local duplicate");

    // Kicked by a newer session on another shard.
    world.enter(3, player(3), 30, &mut out);
    out.clear();
    world.apply_remote(
        WorldEvent::Enter {
            player: player(3),
            stamp: EnterStamp {
                at_micros: 40,
                session: SessionKey { shard: 1, conn: 3 },
            },
        },
        &mut out,
    );
    assert!(out.contains(&Action::Kick {
        conn: 3,
        reason: DisconnectReason::DuplicateLogin
    }));
    out.clear();
    world.leave(3, &mut out);
    assert_eq!(out, [], "conn kicked by a remote duplicate");

    // A real leave, then the same leave again.
    world.leave(2, &mut out);
    assert!(out.iter().any(|a| matches!(a, Action::Publish(_))));
    out.clear();
    world.leave(2, &mut out);
    assert_eq!(out, [], "second leave of the same conn");
}

// ---------------------------------------------------------------------------------------------
// Cross-shard re-entry races (found by the random tests; fixed by `newest_entry`)
// ---------------------------------------------------------------------------------------------

#[test]
fn a_stale_enter_arriving_after_the_newer_session_left_does_not_resurrect_the_player() {
    let mut sim = Sim::new(3);
    let watcher = sim.enter(2, 9);
    sim.deliver_all();

    let old = sim.enter(0, 1);
    sim.deliver_channel(0, 1); // shard 1 knows the old session; shard 2 not yet
    let new = sim.enter(1, 1); // replaces it on shard 1
    sim.leave(new); // and quits at once
    sim.deliver_channel(1, 2); // shard 2 hears Enter(new), Leave(new) first...
    sim.deliver_all(); // ...then Enter(old), which it admits: nothing newer is on record

    assert!(!sim.is_open(old), "shard 0 kicked the old session");
    assert_eq!(
        sim.counts(),
        [1, 1, 1],
        "only the watcher is left in the world"
    );
    assert!(
        !sim.check(true)[&watcher].contains(&1),
        "no ghost of player 1"
    );
    sim.assert_settled(true);
}

#[test]
fn a_player_reconnecting_on_another_shard_is_heard_in_the_order_it_spoke() {
    let mut sim = Sim::new(3);
    let watcher = sim.enter(2, 9);
    sim.deliver_all();

    let first = sim.enter(0, 1);
    sim.chat(first, &format!("{first}#1"));
    sim.leave(first);
    let second = sim.enter(1, 1);
    sim.chat(second, &format!("{second}#2"));
    sim.leave(second);
    sim.deliver_channel(1, 2); // the second session's events overtake the first's
    sim.deliver_all();

    let heard: Vec<String> = sim
        .log(watcher)
        .into_iter()
        .filter(|l| l.starts_with("CHAT 1 "))
        .collect();
    let seqs: Vec<u64> = heard
        .iter()
        .map(|l| l.rsplit('#').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "player 1 heard out of order: {heard:?}"
    );
    sim.assert_settled(true);
}
