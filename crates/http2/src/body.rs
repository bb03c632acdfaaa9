//! A request body as its stream's handler reads it: the DATA the connection task received,
//! handed over through a small shared queue. What the handler takes is reported back, so the
//! client's flow-control windows reopen only as fast as the data is consumed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// What the handlers of one connection tell its task.
#[derive(Debug, Default)]
pub(crate) struct Notes {
    pub waker: AtomicWaker,
    any: AtomicBool,
    list: Mutex<Vec<Note>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Note {
    /// Stream `id`'s handler took this many bytes of its body.
    Consumed(u32, usize),
    /// Stream `id`'s body was dropped with this many bytes unread (thrown away): what else
    /// comes is thrown away too.
    Dropped(u32, usize),
    /// Stream `id`'s handler waits for a body its client holds back for a `100 (Continue)`.
    Continue(u32),
}

impl Notes {
    fn push(&self, note: Note) {
        self.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(note);
        self.any.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Everything noted since the last call (into `into`, which is cleared first).
    pub fn take(&self, into: &mut Vec<Note>) {
        into.clear();
        if self.any.swap(false, Ordering::AcqRel) {
            std::mem::swap(
                &mut *self.list.lock().unwrap_or_else(|e| e.into_inner()),
                into,
            );
        }
    }
}

/// Why a body ended before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The client reset the stream, or the connection ended.
    Reset,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the HTTP/2 stream was reset before the request body ended")
    }
}

impl std::error::Error for BodyError {}

/// DATA under this size is gathered into one buffer, so a flood of tiny frames costs its
/// bytes, not a queue entry each.
const SMALL: usize = 1024;
/// How large that buffer grows before it is queued.
const GATHER: usize = 16 * 1024;

#[derive(Debug, Default)]
struct Queue {
    chunks: VecDeque<Bytes>,
    /// Small DATA gathered, after `chunks`.
    tail: BytesMut,
    /// Bytes in `chunks` and `tail`.
    queued: usize,
    trailers: Option<HeaderMap>,
    end: bool,
    /// The stream is gone, or the reader is: nothing more is kept.
    reset: bool,
    waker: Option<Waker>,
}

impl Queue {
    fn pop(&mut self) -> Option<Bytes> {
        let data = match self.chunks.pop_front() {
            Some(data) => data,
            None if !self.tail.is_empty() => self.tail.split().freeze(),
            None => return None,
        };
        self.queued -= data.len();
        Some(data)
    }
}

/// The connection's end of one stream's body.
#[derive(Debug)]
pub(crate) struct Inbox {
    id: u32,
    queue: Mutex<Queue>,
    notes: Arc<Notes>,
}

impl Inbox {
    pub fn new(id: u32, notes: Arc<Notes>) -> Arc<Inbox> {
        Arc::new(Inbox {
            id,
            queue: Mutex::new(Queue::default()),
            notes,
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(mut queue: MutexGuard<'_, Queue>) {
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Queues DATA for the reader; false when there is none any more (the caller gives the
    /// flow-control room back itself).
    pub fn data(&self, data: &[u8]) -> bool {
        let mut queue = self.queue();
        if queue.reset {
            return false;
        }
        if data.len() < SMALL {
            queue.tail.extend_from_slice(data);
            if queue.tail.len() >= GATHER {
                let gathered = queue.tail.split().freeze();
                queue.chunks.push_back(gathered);
            }
        } else {
            if !queue.tail.is_empty() {
                let gathered = queue.tail.split().freeze();
                queue.chunks.push_back(gathered);
            }
            queue.chunks.push_back(Bytes::copy_from_slice(data));
        }
        queue.queued += data.len();
        Self::wake(queue);
        true
    }

    pub fn end(&self, trailers: Option<HeaderMap>) {
        let mut queue = self.queue();
        queue.end = true;
        queue.trailers = trailers;
        Self::wake(queue);
    }

    /// The stream is gone: the reader gets an error, what it had not read is thrown away.
    /// Returns how many bytes that was (their flow-control room goes back to the client).
    pub fn discard(&self) -> usize {
        let mut queue = self.queue();
        queue.reset = true;
        queue.chunks.clear();
        queue.tail.clear();
        let thrown = std::mem::take(&mut queue.queued);
        Self::wake(queue);
        thrown
    }
}

/// The body of a request received over HTTP/2.
#[derive(Debug)]
pub struct RequestBody {
    inbox: Option<Arc<Inbox>>,
    /// What is left of the declared `content-length`, for `size_hint`.
    length: Option<u64>,
    /// The request said `expect: 100-continue` and no byte of its body has come: the first
    /// read that finds nothing asks the connection for a `100` (RFC 9110 §10.1.1). A handler
    /// that answers without reading (a refusal) never invites the body.
    continue_wanted: bool,
}

impl RequestBody {
    /// A body that has ended (the request's HEADERS had END_STREAM).
    pub fn empty() -> RequestBody {
        RequestBody {
            inbox: None,
            length: Some(0),
            continue_wanted: false,
        }
    }

    pub(crate) fn new(
        inbox: Arc<Inbox>,
        length: Option<u64>,
        expect_continue: bool,
    ) -> RequestBody {
        RequestBody {
            inbox: Some(inbox),
            length,
            continue_wanted: expect_continue,
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            let thrown = inbox.discard();
            inbox.notes.push(Note::Dropped(inbox.id, thrown));
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(inbox) = &this.inbox else {
            return Poll::Ready(None);
        };
        let mut queue = inbox.queue();
        if let Some(data) = queue.pop() {
            drop(queue);
            // It came without waiting for a 100.
            this.continue_wanted = false;
            inbox.notes.push(Note::Consumed(inbox.id, data.len()));
            if let Some(left) = &mut this.length {
                *left = left.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if queue.reset {
            return Poll::Ready(Some(Err(BodyError::Reset)));
        }
        if queue.end {
            let trailers = queue.trailers.take();
            drop(queue);
            // Ended: nothing more to report, and no Dropped note needed.
            this.inbox = None;
            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
        }
        match &queue.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => queue.waker = Some(cx.waker().clone()),
        }
        drop(queue);
        if std::mem::take(&mut this.continue_wanted) {
            inbox.notes.push(Note::Continue(inbox.id));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inbox.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // What is left of the declared length: the connection resets a stream whose DATA
        // does not add up to it.
        match (&self.inbox, self.length) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Some(n)) => SizeHint::with_exact(n),
            (Some(_), None) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn data_then_trailers_then_the_end_and_every_take_is_noted() {
        let notes = Arc::new(Notes::default());
        let inbox = Inbox::new(3, notes.clone());
        let mut body = RequestBody::new(inbox.clone(), Some(2002), false);
        inbox.data(b"ab");
        inbox.data(&[b'c'; 2000]);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        inbox.end(Some(trailers));
        let collected = (&mut body).collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "1");
        let all = collected.to_bytes();
        assert_eq!(&all[..2], b"ab");
        assert_eq!(all.len(), 2002);
        assert!(body.is_end_stream());
        let mut seen = Vec::new();
        notes.take(&mut seen);
        // The small frame waited in the gathering buffer, and went into the queue before the
        // large one: the order is kept.
        assert_eq!(seen, [Note::Consumed(3, 2), Note::Consumed(3, 2000)]);
        drop(body);
        notes.take(&mut seen);
        assert!(seen.is_empty(), "an ended body is not reported dropped");
    }

    #[tokio::test]
    async fn a_body_held_back_for_a_continue_asks_for_it_once_when_first_read() {
        let notes = Arc::new(Notes::default());
        let mut seen = Vec::new();
        let inbox = Inbox::new(9, notes.clone());
        let mut body = RequestBody::new(inbox.clone(), Some(3), true);
        notes.take(&mut seen);
        assert!(seen.is_empty(), "not before the handler reads");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        notes.take(&mut seen);
        assert_eq!(seen, [Note::Continue(9)], "asked once");
        inbox.data(b"abc");
        inbox.end(None);
        assert_eq!(body.collect().await.unwrap().to_bytes(), &b"abc"[..]);
        notes.take(&mut seen);
        assert_eq!(seen, [Note::Consumed(9, 3)], "no second request for a 100");

        // A client that sent its body at once is not sent a 100 either.
        let inbox = Inbox::new(11, notes.clone());
        let mut body = RequestBody::new(inbox.clone(), None, true);
        inbox.data(b"early");
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_ready());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        notes.take(&mut seen);
        assert_eq!(seen, [Note::Consumed(11, 5)]);
    }

    #[tokio::test]
    async fn a_reset_is_an_error_and_what_was_not_read_is_counted() {
        let notes = Arc::new(Notes::default());
        let inbox = Inbox::new(5, notes.clone());
        let mut body = RequestBody::new(inbox.clone(), None, false);
        assert!(inbox.data(b"xyz"));
        assert_eq!(inbox.discard(), 3);
        assert!(!inbox.data(b"late"), "nothing is kept after a reset");
        assert_eq!(body.frame().await.unwrap().unwrap_err(), BodyError::Reset);
        drop(body);
        let mut seen = Vec::new();
        notes.take(&mut seen);
        assert_eq!(seen, [Note::Dropped(5, 0)]);
        // A body dropped with data unread reports it.
        let inbox = Inbox::new(7, notes.clone());
        let body = RequestBody::new(inbox.clone(), None, false);
        for _ in 0..1000 {
            assert!(inbox.data(b"a"));
        }
        assert!(inbox.data(&[0; 5000]));
        drop(body);
        notes.take(&mut seen);
        assert_eq!(seen, [Note::Dropped(7, 6000)]);
    }
}
