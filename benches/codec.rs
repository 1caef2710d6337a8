//! Frames per second through the sans-IO codec: decoding a stream read in 4 KiB pieces (as a
//! shard reads it), decoding it one byte at a time (the worst split), and encoding into the
//! shard's send-buffer chunk. Prints one line per case; run with `cargo bench --bench codec`.
//!
//! A plain timing loop rather than criterion: the numbers are throughputs of whole passes over
//! a fixed stream, and the project compares ratios measured in one run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gameserver::protocol::{encode_frame, pb, ClientMessage, FrameDecoder, ServerMessage, Service};

/// A client stream of `n` frames: chats, moves and pings, as a busy world session sends them.
fn client_stream(n: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    for i in 0..n {
        match i % 3 {
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
        }
        .expect("small frames encode");
    }
    out.to_vec()
}

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

fn measure(name: &str, frames_per_pass: usize, mut pass: impl FnMut() -> usize) {
    // Warm up, then run passes for about a second.
    for _ in 0..3 {
        black_box(pass());
    }
    let start = Instant::now();
    let mut frames = 0usize;
    while start.elapsed() < Duration::from_secs(1) {
        frames += pass();
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(frames % frames_per_pass == 0);
    println!(
        "{name:<44} {:>12.0} frames/s  ({frames} frames in {secs:.2} s)",
        frames as f64 / secs
    );
}

fn main() {
    const N: usize = 30_000;
    let stream = client_stream(N);
    println!(
        "stream: {N} client frames, {} bytes ({:.1} bytes/frame)",
        stream.len(),
        stream.len() as f64 / N as f64
    );
    measure("decode + parse, 4 KiB reads", N, || {
        decode_all(&stream, 4096)
    });
    measure("decode + parse, 1-byte reads (worst split)", N, || {
        decode_all(&stream, 1)
    });
    let chat = ServerMessage::Chat(pb::SChat {
        player_id: 42,
        text: "hello world, this is a chat line".into(),
    });
    measure("encode S_CHAT into the send-buffer chunk", N, || {
        for _ in 0..N {
            let frame = shards::chunk::encode(|buf| chat.encode(buf)).expect("fits");
            black_box(frame);
        }
        N
    });
}
