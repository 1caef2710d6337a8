//! World-rule steps of the sans-IO world with N players on this shard: a chat (one broadcast
//! action and one event to publish), a move, a chat replayed from another shard, and an enter
//! (the newcomer's snapshot of everyone, in `S_SPAWN` frames). Run with
//! `cargo bench --bench world`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gameserver::model::Position;
use gameserver::world::{Action, EnterStamp, PlayerInfo, SessionKey, World, WorldEvent};

/// A world of shard 0 with `n` local players on connections `0..n`.
fn world_with(n: u64) -> World {
    let mut world = World::new(0);
    let mut out = Vec::new();
    for id in 0..n {
        world.enter(
            id,
            PlayerInfo {
                id: id + 1,
                name: format!("player{id}"),
                position: Position::default(),
            },
            id,
            &mut out,
        );
        out.clear();
    }
    world
}

fn steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("world");
    for players in [100u64, 1000] {
        let mut world = world_with(players);
        let mut out: Vec<Action> = Vec::with_capacity(8);
        group.bench_with_input(BenchmarkId::new("chat", players), &players, |b, _| {
            b.iter(|| {
                world.chat(7, black_box("hello world".to_string()), &mut out);
                out.clear();
            })
        });
        group.bench_with_input(BenchmarkId::new("move", players), &players, |b, _| {
            let to = Position {
                x: 1.0,
                y: 2.0,
                z: 3.0,
            };
            b.iter(|| {
                world.move_to(7, black_box(to), &mut out);
                out.clear();
            })
        });
        // A chat of a player who entered on shard 1, replayed here.
        let remote = SessionKey { shard: 1, conn: 1 };
        world.apply_remote(
            WorldEvent::Enter {
                player: PlayerInfo {
                    id: 1_000_000,
                    name: "remote".into(),
                    position: Position::default(),
                },
                stamp: EnterStamp {
                    at_micros: u64::MAX / 2,
                    session: remote,
                },
            },
            &mut out,
        );
        out.clear();
        group.bench_with_input(
            BenchmarkId::new("remote_chat", players),
            &players,
            |b, _| {
                b.iter(|| {
                    world.apply_remote(
                        WorldEvent::Chat {
                            player_id: 1_000_000,
                            session: remote,
                            text: black_box("hello from shard 1".to_string()),
                        },
                        &mut out,
                    );
                    out.clear();
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("enter_with_snapshot", players),
            &players,
            |b, _| {
                b.iter_batched(
                    || world_with(players),
                    |mut w| {
                        w.enter(
                            players + 10,
                            PlayerInfo {
                                id: players + 10,
                                name: "newcomer".into(),
                                position: Position::default(),
                            },
                            u64::MAX / 4,
                            &mut out,
                        );
                        out.clear();
                        w
                    },
                    criterion::BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
