//! A request body as its stream's handler reads it: the DATA the connection task received,
//! handed over through a small shared queue. What the handler takes is reported back, so the
//! client's flow-control windows reopen only as fast as the data is consumed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
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
    /// Stream `id`'s body was dropped: what else comes is thrown away.
    Dropped(u32),
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

#[derive(Debug, Default)]
struct Queue {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    end: bool,
    reset: bool,
    waker: Option<Waker>,
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

    pub fn data(&self, data: Bytes) {
        let mut queue = self.queue();
        queue.chunks.push_back(data);
        Self::wake(queue);
    }

    pub fn end(&self, trailers: Option<HeaderMap>) {
        let mut queue = self.queue();
        queue.end = true;
        queue.trailers = trailers;
        Self::wake(queue);
    }

    pub fn reset(&self) {
        let mut queue = self.queue();
        queue.reset = true;
        Self::wake(queue);
    }
}

/// The body of a request received over HTTP/2.
#[derive(Debug)]
pub struct RequestBody {
    inbox: Option<Arc<Inbox>>,
    /// What is left of the declared `content-length`, for `size_hint`.
    length: Option<u64>,
}

impl RequestBody {
    /// A body that has ended (the request's HEADERS had END_STREAM).
    pub fn empty() -> RequestBody {
        RequestBody {
            inbox: None,
            length: Some(0),
        }
    }

    pub(crate) fn new(inbox: Arc<Inbox>, length: Option<u64>) -> RequestBody {
        RequestBody {
            inbox: Some(inbox),
            length,
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            inbox.notes.push(Note::Dropped(inbox.id));
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
        if let Some(data) = queue.chunks.pop_front() {
            drop(queue);
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
        let mut body = RequestBody::new(inbox.clone(), Some(5));
        inbox.data(Bytes::from_static(b"ab"));
        inbox.data(Bytes::from_static(b"cde"));
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        inbox.end(Some(trailers));
        let collected = (&mut body).collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "1");
        assert_eq!(&collected.to_bytes()[..], b"abcde");
        assert!(body.is_end_stream());
        let mut seen = Vec::new();
        notes.take(&mut seen);
        assert_eq!(seen, [Note::Consumed(3, 2), Note::Consumed(3, 3)]);
        drop(body);
        notes.take(&mut seen);
        assert!(seen.is_empty(), "an ended body is not reported dropped");
    }

    #[tokio::test]
    async fn a_reset_is_an_error_and_dropping_early_is_noted() {
        let notes = Arc::new(Notes::default());
        let inbox = Inbox::new(5, notes.clone());
        let mut body = RequestBody::new(inbox.clone(), None);
        inbox.reset();
        assert_eq!(body.frame().await.unwrap().unwrap_err(), BodyError::Reset);
        drop(body);
        let mut seen = Vec::new();
        notes.take(&mut seen);
        assert_eq!(seen, [Note::Dropped(5)]);
    }
}
