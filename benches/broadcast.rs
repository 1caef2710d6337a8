//! One broadcast to R receivers, two ways: encoded once into the shard's send-buffer chunk and
//! shared as `Bytes` slices (what the shards do), against one allocation and encoding per
//! receiver (the naive way). Each receiver's outbox is a `Vec<Bytes>` here, cleared between
//! iterations. Run with `cargo bench --bench broadcast`; throughput is in deliveries.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gameserver::protocol::{pb, ServerMessage};

fn chat() -> ServerMessage {
    ServerMessage::Chat(pb::SChat {
        player_id: 4242,
        text: "hello everyone, this is one chat line".into(),
    })
}

fn broadcast(c: &mut Criterion) {
    let msg = chat();
    let mut group = c.benchmark_group("broadcast");
    for receivers in [10usize, 100, 1000] {
        let mut outboxes: Vec<Vec<Bytes>> = (0..receivers).map(|_| Vec::with_capacity(1)).collect();
        group.throughput(Throughput::Elements(receivers as u64));
        group.bench_with_input(
            BenchmarkId::new("encode_once_into_chunk", receivers),
            &receivers,
            |b, _| {
                b.iter(|| {
                    let frame =
                        shards::chunk::encode(|buf| black_box(&msg).encode(buf)).expect("fits");
                    for outbox in outboxes.iter_mut() {
                        outbox.clear();
                        outbox.push(frame.clone());
                    }
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("allocate_per_receiver", receivers),
            &receivers,
            |b, _| {
                b.iter(|| {
                    for outbox in outboxes.iter_mut() {
                        let mut buf = BytesMut::new();
                        black_box(&msg).encode(&mut buf).expect("fits");
                        outbox.clear();
                        outbox.push(buf.freeze());
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, broadcast);
criterion_main!(benches);
