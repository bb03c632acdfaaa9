//! Buffers that idle connections give back, kept per thread for the next request (HAProxy's
//! buffer pools): an idle keep-alive connection holds no buffer, and a busy one takes a
//! ready buffer instead of allocating one on every request.

use std::cell::RefCell;

use bytes::BytesMut;

use crate::body::HEAD_BUFFER;

/// Buffers of each kind kept per thread: enough for a burst of requests between two idle
/// periods, at most 64 x 16 KiB.
const KEEP: usize = 64;

/// The largest buffer kept: a body's reads may have grown one far past a head's size.
const LARGEST: usize = 4 * HEAD_BUFFER;

thread_local! {
    static HEADS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Takes `buf` from an idle connection (leaving it empty, with no memory) and keeps it for the
/// next head read on this thread, if it is empty and its allocation is of a head's size. Never
/// allocates; a buffer that holds data is left where it is.
pub fn give_head(buf: &mut BytesMut) {
    if !buf.is_empty() {
        return;
    }
    let mut buf = std::mem::take(buf);
    let full = HEADS.with(|heads| heads.try_borrow().map_or(true, |heads| heads.len() >= KEEP));
    // `capacity` is the room after what was read, not the allocation: a body's reads may have
    // grown it far past a head's size. Reclaiming finds out without allocating (true when the
    // allocation, brought back to its start, holds that much), and the second brings a buffer
    // heads were read into and advanced past back to its start.
    if full || buf.try_reclaim(LARGEST + 1) || !buf.try_reclaim(HEAD_BUFFER) {
        return;
    }
    HEADS.with(|heads| {
        if let Ok(mut heads) = heads.try_borrow_mut() {
            heads.push(buf);
        }
    });
}

/// A kept head buffer for an empty one, if this thread has one: `buf` is left as it is when it
/// holds memory already.
pub fn take_head(buf: &mut BytesMut) {
    if buf.capacity() != 0 {
        return;
    }
    if let Some(kept) = HEADS.with(|heads| heads.try_borrow_mut().ok()?.pop()) {
        *buf = kept;
    }
}

/// The same for the scratch vectors heads are written into.
pub fn give_scratch(buf: &mut Vec<u8>) {
    let mut buf = std::mem::take(buf);
    if !(1024..=LARGEST).contains(&buf.capacity()) {
        return;
    }
    buf.clear();
    SCRATCH.with(|scratch| {
        if let Ok(mut scratch) = scratch.try_borrow_mut() {
            if scratch.len() < KEEP {
                scratch.push(buf);
            }
        }
    });
}

/// A kept scratch vector for an empty one, then room for `additional` bytes.
pub fn take_scratch(buf: &mut Vec<u8>, additional: usize) {
    if buf.capacity() == 0 {
        if let Some(kept) = SCRATCH.with(|scratch| scratch.try_borrow_mut().ok()?.pop()) {
            *buf = kept;
        }
    }
    buf.reserve(additional);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_head_buffer_serves_the_next_empty_one() {
        let mut buf = BytesMut::with_capacity(HEAD_BUFFER);
        let at = buf.as_ptr();
        give_head(&mut buf);
        assert_eq!(buf.capacity(), 0, "the idle connection keeps nothing");
        let mut next = BytesMut::new();
        take_head(&mut next);
        assert_eq!(next.as_ptr(), at);
        assert!(next.is_empty() && next.capacity() >= HEAD_BUFFER);
    }

    #[test]
    fn a_buffer_read_from_comes_back_whole() {
        let mut buf = BytesMut::with_capacity(HEAD_BUFFER);
        let at = buf.as_ptr();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        bytes::Buf::advance(&mut buf, 18);
        give_head(&mut buf);
        let mut next = BytesMut::new();
        take_head(&mut next);
        assert_eq!(next.as_ptr(), at, "the same allocation, from its start");
        assert!(next.capacity() >= HEAD_BUFFER);
    }

    #[test]
    fn a_large_allocation_with_little_room_left_is_not_kept() {
        let mut buf = BytesMut::with_capacity(16 * HEAD_BUFFER);
        buf.resize(14 * HEAD_BUFFER, 0);
        bytes::Buf::advance(&mut buf, 14 * HEAD_BUFFER);
        assert!(buf.is_empty() && buf.capacity() >= HEAD_BUFFER && buf.capacity() <= LARGEST);
        give_head(&mut buf);
        assert_eq!(buf.capacity(), 0, "taken from the connection all the same");
        let mut next = BytesMut::new();
        take_head(&mut next);
        assert_eq!(
            next.capacity(),
            0,
            "a 64 KiB allocation is not a head buffer"
        );
    }

    #[test]
    fn a_buffer_with_data_stays_with_its_connection() {
        let mut buf = BytesMut::with_capacity(HEAD_BUFFER);
        buf.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        give_head(&mut buf);
        assert_eq!(&buf[..], b"GET /next HTTP/1.1\r\n");
    }

    #[test]
    fn only_buffers_of_a_heads_size_are_kept() {
        let mut small = BytesMut::with_capacity(HEAD_BUFFER / 2);
        let mut huge = BytesMut::with_capacity(LARGEST * 2);
        give_head(&mut small);
        give_head(&mut huge);
        let mut next = BytesMut::new();
        take_head(&mut next);
        assert_eq!(next.capacity(), 0, "neither was kept");
    }

    #[test]
    fn scratch_comes_back_cleared() {
        let mut out = Vec::with_capacity(2048);
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let at = out.as_ptr();
        give_scratch(&mut out);
        assert_eq!(out.capacity(), 0);
        let mut next = Vec::new();
        take_scratch(&mut next, 1024);
        assert_eq!(next.as_ptr(), at);
        assert!(next.is_empty());
    }
}
