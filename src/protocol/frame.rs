//! Length-prefixed frames: `u16 size` (whole frame, header included) + `u16 id`, little-endian,
//! then the protobuf body. The decoder reassembles any split of the stream, byte by byte if need be.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Body, EncodeError, ProtocolError};

/// Bytes of the frame header: `size` then `id`.
pub const HEADER_LEN: usize = 4;
/// The largest frame the server sends (the `u16` limit).
pub const MAX_SERVER_FRAME: usize = u16::MAX as usize;
/// `max_client_frame` when config does not say otherwise.
pub const DEFAULT_MAX_CLIENT_FRAME: usize = 4096;

/// One frame as it came off the wire: its id (not yet checked against the table) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The header's id field.
    pub id: u16,
    /// The body, shared with the read buffer (no copy).
    pub body: Bytes,
}

/// Reassembles frames from a byte stream split anywhere.
///
/// Memory is bounded: it never holds more than one incomplete frame (at most `max_frame` bytes)
/// plus whatever the last `extend` brought, since a header over the limit is an error at once.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder that accepts frames of `4..=max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame: max_frame.clamp(HEADER_LEN, MAX_SERVER_FRAME),
            failed: false,
        }
    }

    /// Appends bytes read from the stream.
    pub fn extend(&mut self, data: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or the protocol error
    /// that ends this stream (after an error it yields nothing more).
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, ProtocolError> {
        if self.failed || self.buf.len() < 2 {
            return Ok(None);
        }
        let size = u16::from_le_bytes([self.buf[0], self.buf[1]]);
        if usize::from(size) < HEADER_LEN {
            self.fail();
            return Err(ProtocolError::FrameTooShort { size });
        }
        if usize::from(size) > self.max_frame {
            self.fail();
            return Err(ProtocolError::FrameTooLong {
                size,
                max: self.max_frame,
            });
        }
        if self.buf.len() < usize::from(size) {
            self.buf.reserve(usize::from(size) - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(usize::from(size));
        frame.advance(2);
        let id = frame.get_u16_le();
        Ok(Some(RawFrame {
            id,
            body: frame.freeze(),
        }))
    }

    fn fail(&mut self) {
        self.failed = true;
        self.buf = BytesMut::new();
    }
}

/// Appends one frame holding `msg` to `out`. Fails, writing nothing, when it would exceed 65535 bytes.
pub fn encode_frame<M: Body>(msg: &M, out: &mut BytesMut) -> Result<(), EncodeError> {
    let len = HEADER_LEN + msg.encoded_len();
    let size = u16::try_from(len).map_err(|_| EncodeError::TooLarge { len })?;
    out.reserve(len);
    out.put_u16_le(size);
    out.put_u16_le(M::ID as u16);
    // Cannot fail: the reserve above made room for the whole body.
    msg.encode_raw(out);
    Ok(())
}

/// Appends one frame with an arbitrary id and body: for tests and tools that send what a
/// well-behaved client would not. Fails when it would exceed 65535 bytes.
pub fn encode_raw_frame(id: u16, body: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
    let len = HEADER_LEN + body.len();
    let size = u16::try_from(len).map_err(|_| EncodeError::TooLarge { len })?;
    out.put_u16_le(size);
    out.put_u16_le(id);
    out.put_slice(body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pb;

    fn stream() -> (Vec<u8>, Vec<RawFrame>) {
        let mut out = BytesMut::new();
        encode_frame(&pb::CPing { client_time: 7 }, &mut out).unwrap();
        encode_frame(
            &pb::CChat {
                text: "héllo".into(),
            },
            &mut out,
        )
        .unwrap();
        encode_raw_frame(50, &[], &mut out).unwrap(); // empty body
        encode_frame(
            &pb::CMove {
                x: 1.0,
                y: -2.5,
                z: 3.25,
            },
            &mut out,
        )
        .unwrap();
        let bytes = out.to_vec();
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_CLIENT_FRAME);
        decoder.extend(&bytes);
        let mut frames = Vec::new();
        while let Some(f) = decoder.next_frame().unwrap() {
            frames.push(f);
        }
        (bytes, frames)
    }

    #[test]
    fn header_is_little_endian_and_size_counts_the_header() {
        let mut out = BytesMut::new();
        encode_frame(&pb::CPing { client_time: 1 }, &mut out).unwrap();
        assert_eq!(&out[..4], &[out.len() as u8, 0, 40, 0]);
    }

    #[test]
    fn whole_stream_gives_every_frame() {
        let (_, frames) = stream();
        let ids: Vec<u16> = frames.iter().map(|f| f.id).collect();
        assert_eq!(ids, vec![40, 20, 50, 30]);
        assert!(frames[2].body.is_empty());
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let (bytes, expected) = stream();
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut decoder = FrameDecoder::new(DEFAULT_MAX_CLIENT_FRAME);
                let mut got = Vec::new();
                for part in [&bytes[..a], &bytes[a..b], &bytes[b..]] {
                    decoder.extend(part);
                    while let Some(f) = decoder.next_frame().unwrap() {
                        got.push(f);
                    }
                }
                assert_eq!(got, expected, "split at {a} and {b}");
                assert_eq!(decoder.buffered(), 0);
            }
        }
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_frames() {
        let (bytes, expected) = stream();
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_CLIENT_FRAME);
        let mut got = Vec::new();
        for byte in &bytes {
            decoder.extend(std::slice::from_ref(byte));
            while let Some(f) = decoder.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn size_below_header_is_an_error_and_ends_the_stream() {
        for size in 0u16..4 {
            let mut decoder = FrameDecoder::new(DEFAULT_MAX_CLIENT_FRAME);
            decoder.extend(&size.to_le_bytes());
            assert_eq!(
                decoder.next_frame(),
                Err(ProtocolError::FrameTooShort { size })
            );
            decoder.extend(&[8, 0, 40, 0, 0, 0, 0, 0]);
            assert_eq!(decoder.next_frame(), Ok(None));
        }
    }

    #[test]
    fn size_over_the_limit_is_an_error_before_the_body_arrives() {
        let mut decoder = FrameDecoder::new(100);
        decoder.extend(&101u16.to_le_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(ProtocolError::FrameTooLong {
                size: 101,
                max: 100
            })
        );
        let mut decoder = FrameDecoder::new(100);
        decoder.extend(&100u16.to_le_bytes());
        assert_eq!(decoder.next_frame(), Ok(None));
    }

    #[test]
    fn a_frame_over_65535_bytes_is_refused() {
        let mut out = BytesMut::new();
        let big = pb::SEcho {
            data: Bytes::from(vec![0u8; 70_000]),
        };
        assert!(matches!(
            encode_frame(&big, &mut out),
            Err(EncodeError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }
}
