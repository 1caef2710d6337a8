//! One shard's replica of the world and the rules that change it.

use hashbrown::HashMap;

use crate::model::{AccountId, Position};
use crate::protocol::pb::{self, DisconnectReason};
use crate::protocol::ServerMessage;

use super::{spawn_frames, Action, ConnId, EnterStamp, PlayerInfo, SessionKey, WorldEvent};

#[derive(Debug)]
struct Presence {
    name: String,
    position: Position,
    stamp: EnterStamp,
}

impl Presence {
    fn to_pb(&self, id: AccountId) -> pb::Player {
        pb::Player {
            player_id: id,
            name: self.name.clone(),
            x: self.position.x,
            y: self.position.y,
            z: self.position.z,
        }
    }
}

/// The world as one shard sees it: every player of every shard, and which of them are this
/// shard's own sessions.
#[derive(Debug)]
pub struct World {
    shard: u16,
    players: HashMap<AccountId, Presence>,
    local: HashMap<ConnId, AccountId>,
    /// The newest entry seen of each account, kept after it leaves: events from different shards
    /// are not ordered among themselves, so an older session's `Enter` may arrive after a newer
    /// session has come and gone, and must not bring the player back. Pruned by
    /// [`World::forget_entries_before`].
    newest_entry: HashMap<AccountId, EnterStamp>,
}

impl World {
    /// An empty world for shard `shard`.
    pub fn new(shard: u16) -> Self {
        Self {
            shard,
            players: HashMap::new(),
            local: HashMap::new(),
            newest_entry: HashMap::new(),
        }
    }

    /// Forgets the newest-entry record of accounts not in the world that entered before
    /// `cutoff_micros`. Call it periodically with a cutoff older than any event that can still
    /// be travelling between shards (a minute, say): it keeps memory bounded by recent entries.
    pub fn forget_entries_before(&mut self, cutoff_micros: u64) {
        let players = &self.players;
        self.newest_entry
            .retain(|id, stamp| players.contains_key(id) || stamp.at_micros >= cutoff_micros);
    }

    /// Players in the world, on every shard.
    pub fn player_count(&self) -> usize {
        self.players.len()
    }

    /// This shard's connections that are in the world.
    pub fn local_conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.local.keys().copied()
    }

    /// The player a local connection plays, if it is in the world.
    pub fn player_of(&self, conn: ConnId) -> Option<AccountId> {
        self.local.get(&conn).copied()
    }

    /// The positions of this shard's players, for periodic saves and shutdown.
    pub fn local_positions(&self) -> Vec<(AccountId, Position)> {
        self.local
            .values()
            .filter_map(|id| self.players.get(id).map(|p| (*id, p.position)))
            .collect()
    }

    fn key(&self, conn: ConnId) -> SessionKey {
        SessionKey {
            shard: self.shard,
            conn,
        }
    }

    /// Admits local connection `conn` as `player` (whose token was already checked) at time
    /// `now_micros`. It gets `S_ENTER` and the players already here; everyone else gets its
    /// `S_SPAWN`. An older session of the same account, here or on another shard, is replaced.
    ///
    /// A session that replaces an older one of the same account starts where the older one
    /// stood (the replica is fresher than the store, which saves only now and then).
    pub fn enter(
        &mut self,
        conn: ConnId,
        mut player: PlayerInfo,
        now_micros: u64,
        out: &mut Vec<Action>,
    ) {
        if let Some(existing) = self.players.get(&player.id) {
            player.position = existing.position;
        }
        let stamp = EnterStamp {
            at_micros: now_micros,
            session: self.key(conn),
        };
        if self.admit(player.clone(), stamp, Some(conn), out) {
            out.push(Action::Publish(WorldEvent::Enter { player, stamp }));
        }
    }

    /// A local connection has closed (or was dropped): if it was in the world, everyone else
    /// gets `S_DESPAWN` and its position is saved.
    pub fn leave(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        let Some(id) = self.local.remove(&conn) else {
            return;
        };
        let session = self.key(conn);
        if let Some(p) = self.players.get(&id) {
            out.push(Action::Save {
                player: id,
                position: p.position,
            });
        }
        if self.remove_if_current(id, session, out) {
            out.push(Action::Publish(WorldEvent::Leave {
                player_id: id,
                session,
            }));
        }
    }

    /// Local connection `conn` says `text` (already validated): everyone in the world, the
    /// sender included, gets `S_CHAT`.
    pub fn chat(&mut self, conn: ConnId, text: String, out: &mut Vec<Action>) {
        let Some(id) = self.player_of(conn) else {
            return;
        };
        let session = self.key(conn);
        out.push(chat_broadcast(id, text.clone()));
        out.push(Action::Publish(WorldEvent::Chat {
            player_id: id,
            session,
            text,
        }));
    }

    /// Local connection `conn` moves to `position` (already validated): every other player gets
    /// `S_MOVE`.
    pub fn move_to(&mut self, conn: ConnId, position: Position, out: &mut Vec<Action>) {
        let Some(id) = self.player_of(conn) else {
            return;
        };
        if let Some(p) = self.players.get_mut(&id) {
            p.position = position;
        }
        out.push(move_broadcast(id, position, Some(conn)));
        out.push(Action::Publish(WorldEvent::Move {
            player_id: id,
            session: self.key(conn),
            position,
        }));
    }

    /// Replays an event made on another shard.
    pub fn apply_remote(&mut self, event: WorldEvent, out: &mut Vec<Action>) {
        match event {
            WorldEvent::Enter { player, stamp } => {
                self.admit(player, stamp, None, out);
            }
            WorldEvent::Leave { player_id, session } => {
                self.remove_if_current(player_id, session, out);
            }
            WorldEvent::Chat {
                player_id,
                session,
                text,
            } => {
                if self.is_current(player_id, session) {
                    out.push(chat_broadcast(player_id, text));
                }
            }
            WorldEvent::Move {
                player_id,
                session,
                position,
            } => {
                if self.is_current(player_id, session) {
                    if let Some(p) = self.players.get_mut(&player_id) {
                        p.position = position;
                    }
                    out.push(move_broadcast(player_id, position, None));
                }
            }
        }
    }

    fn is_current(&self, id: AccountId, session: SessionKey) -> bool {
        self.players
            .get(&id)
            .is_some_and(|p| p.stamp.session == session)
    }

    /// Puts a player in the replica unless a newer session of the account is already there.
    /// Returns whether it was admitted.
    fn admit(
        &mut self,
        player: PlayerInfo,
        stamp: EnterStamp,
        local_conn: Option<ConnId>,
        out: &mut Vec<Action>,
    ) -> bool {
        if self
            .newest_entry
            .get(&player.id)
            .is_some_and(|newest| *newest > stamp)
        {
            // A newer session of this account has entered (and may have left): this entry lost.
            if let Some(conn) = local_conn {
                out.push(Action::Kick {
                    conn,
                    reason: DisconnectReason::DuplicateLogin,
                });
            }
            return false;
        }
        self.newest_entry.insert(player.id, stamp);
        if let Some(existing) = self.players.get(&player.id) {
            if existing.stamp > stamp {
                // A newer session of this account is already in: this entry lost the race.
                if let Some(conn) = local_conn {
                    out.push(Action::Kick {
                        conn,
                        reason: DisconnectReason::DuplicateLogin,
                    });
                }
                return false;
            }
            let old = existing.stamp.session;
            if old.shard == self.shard {
                if let Some(old_id) = self.local.remove(&old.conn) {
                    out.push(Action::Save {
                        player: old_id,
                        position: existing.position,
                    });
                }
                out.push(Action::Kick {
                    conn: old.conn,
                    reason: DisconnectReason::DuplicateLogin,
                });
            }
            self.players.remove(&player.id);
            out.push(Action::Broadcast {
                // The new session has not seen the old one: it starts from its own S_ENTER.
                except: local_conn,
                msg: ServerMessage::Despawn(pb::SDespawn {
                    player_ids: vec![player.id],
                }),
            });
        }
        let presence = Presence {
            name: player.name,
            position: player.position,
            stamp,
        };
        let entered = presence.to_pb(player.id);
        if let Some(conn) = local_conn {
            out.push(Action::Send {
                to: conn,
                msg: ServerMessage::Enter(pb::SEnter {
                    result: pb::Result::Ok as i32,
                    player: Some(entered.clone()),
                }),
            });
            let others = self.players.iter().map(|(id, p)| p.to_pb(*id));
            for frame in spawn_frames(others) {
                out.push(Action::Send {
                    to: conn,
                    msg: ServerMessage::Spawn(frame),
                });
            }
            self.local.insert(conn, player.id);
        }
        out.push(Action::Broadcast {
            except: local_conn,
            msg: ServerMessage::Spawn(pb::SSpawn {
                players: vec![entered],
            }),
        });
        self.players.insert(player.id, presence);
        true
    }

    /// Removes a player if `session` is still the one in the world; its watchers get `S_DESPAWN`.
    fn remove_if_current(
        &mut self,
        id: AccountId,
        session: SessionKey,
        out: &mut Vec<Action>,
    ) -> bool {
        if !self.is_current(id, session) {
            return false;
        }
        self.players.remove(&id);
        out.push(Action::Broadcast {
            except: None,
            msg: ServerMessage::Despawn(pb::SDespawn {
                player_ids: vec![id],
            }),
        });
        true
    }
}

fn chat_broadcast(player_id: AccountId, text: String) -> Action {
    Action::Broadcast {
        except: None,
        msg: ServerMessage::Chat(pb::SChat { player_id, text }),
    }
}

fn move_broadcast(player_id: AccountId, p: Position, except: Option<ConnId>) -> Action {
    Action::Broadcast {
        except,
        msg: ServerMessage::Move(pb::SMove {
            player_id,
            x: p.x,
            y: p.y,
            z: p.z,
        }),
    }
}
