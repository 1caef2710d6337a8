//! The shard's send-buffer chunk: frames are written one after another into one large buffer
//! and handed out as shared, immutable slices.
//!
//! A frame broadcast to a thousand sessions is encoded once; each session's outbox holds a
//! [`Bytes`] pointing into the chunk. When the chunk runs low a fresh one is started; the old one
//! is freed when its last slice has been sent.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// Size of a fresh chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Below this much free room a fresh chunk is started before writing.
const MIN_FREE: usize = 4 * 1024;

thread_local! {
    static CHUNK: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(CHUNK_SIZE));
}

/// Writes one frame into this thread's chunk with `write` and returns it as a shared slice.
/// `write` must only append; if it fails nothing is kept.
pub fn encode<E>(write: impl FnOnce(&mut BytesMut) -> Result<(), E>) -> Result<Bytes, E> {
    CHUNK.with(|cell| {
        let mut chunk = cell.borrow_mut();
        if chunk.capacity() - chunk.len() < MIN_FREE {
            *chunk = BytesMut::with_capacity(CHUNK_SIZE);
        }
        let start = chunk.len();
        match write(&mut chunk) {
            Ok(()) => Ok(chunk.split().freeze()),
            Err(e) => {
                chunk.truncate(start);
                Err(e)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn consecutive_frames_share_one_allocation() {
        let a = encode::<()>(|b| {
            b.put_slice(b"hello");
            Ok(())
        })
        .unwrap();
        let b = encode::<()>(|b| {
            b.put_slice(b"world");
            Ok(())
        })
        .unwrap();
        assert_eq!(&a[..], b"hello");
        assert_eq!(&b[..], b"world");
        // b starts right where a ends: same chunk, no copy
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let r = encode(|b| {
            b.put_slice(b"partial");
            Err("no")
        });
        assert_eq!(r, Err("no"));
        let ok = encode::<()>(|b| {
            b.put_slice(b"x");
            Ok(())
        })
        .unwrap();
        assert_eq!(&ok[..], b"x");
    }

    #[test]
    fn frames_larger_than_a_chunk_still_work() {
        let big = encode::<()>(|b| {
            b.put_bytes(7, CHUNK_SIZE * 2);
            Ok(())
        })
        .unwrap();
        assert_eq!(big.len(), CHUNK_SIZE * 2);
    }
}
