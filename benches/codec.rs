//! The sans-IO codec under criterion: decoding a client stream read in 4 KiB pieces (as a shard
//! reads it) and one byte at a time (the worst split), and encoding `S_CHAT` into the shard's
//! send-buffer chunk. Run with `cargo bench --bench codec`; throughput is in frames.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gameserver::protocol::{encode_frame, pb, ClientMessage, FrameDecoder, ServerMessage, Service};

/// Frames in the decoded stream.
const FRAMES: usize = 3_000;

/// A client stream of `n` frames: chats, moves and pings, as a busy world session sends them.
fn client_stream(n: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    for i in 0..n {
        let encoded = match i % 3 {
            0 => encode_frame(
                &pb::CChat {
                    text: format!("hello world {i}"),
                },
                &mut out,
            ),
            1 => encode_frame(
                &pb::CMove {
                    x: i as f32,
                    y: 1.0,
                    z: -2.0,
                },
                &mut out,
            ),
            _ => encode_frame(
                &pb::CPing {
                    client_time: i as u64,
                },
                &mut out,
            ),
        };
        encoded.expect("small frames encode");
    }
    out.to_vec()
}

/// Decodes and parses the whole stream fed in `piece`-byte reads; the number of frames.
fn decode_all(stream: &[u8], piece: usize) -> usize {
    let mut decoder = FrameDecoder::new(4096);
    let mut frames = 0;
    for chunk in stream.chunks(piece) {
        decoder.extend(chunk);
        while let Ok(Some(frame)) = decoder.next_frame() {
            let msg = ClientMessage::decode(&frame, Service::World).expect("valid frame");
            black_box(&msg);
            frames += 1;
        }
    }
    frames
}

fn decoder(c: &mut Criterion) {
    let stream = client_stream(FRAMES);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("4KiB_reads", |b| {
        b.iter(|| assert_eq!(decode_all(black_box(&stream), 4096), FRAMES))
    });
    group.bench_function("1_byte_reads", |b| {
        b.iter(|| assert_eq!(decode_all(black_box(&stream), 1), FRAMES))
    });
    group.finish();
}

fn encoder(c: &mut Criterion) {
    let chat = ServerMessage::Chat(pb::SChat {
        player_id: 42,
        text: "hello world, this is a chat line".into(),
    });
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("s_chat_into_chunk", |b| {
        b.iter(|| {
            let frame = shards::chunk::encode(|buf| black_box(&chat).encode(buf)).expect("fits");
            black_box(frame)
        })
    });
    group.finish();
}

criterion_group!(benches, decoder, encoder);
criterion_main!(benches);
