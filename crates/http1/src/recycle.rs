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
/// next head read on this thread, if it is empty and of a head's size.
pub fn give_head(buf: &mut BytesMut) {
    let mut buf = std::mem::take(buf);
    if !buf.is_empty() {
        return;
    }
    // Heads read into it were advanced past: its room starts after them. Reserving takes the
    // whole allocation back when nothing else holds a part of it (no allocation then).
    buf.reserve(HEAD_BUFFER);
    if !(HEAD_BUFFER..=LARGEST).contains(&buf.capacity()) {
        return;
    }
    HEADS.with(|heads| {
        if let Ok(mut heads) = heads.try_borrow_mut() {
            if heads.len() < KEEP {
                heads.push(buf);
            }
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
    fn only_empty_buffers_of_a_heads_size_are_kept() {
        let mut partial = BytesMut::with_capacity(HEAD_BUFFER);
        partial.extend_from_slice(b"GET / HT");
        let mut huge = BytesMut::with_capacity(LARGEST * 2);
        give_head(&mut partial);
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
