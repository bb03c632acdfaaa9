//! When a request may go to another server, and what the client gets when none can take it:
//! the one rule both of the lb's request paths (HTTP/1 and HTTP/2 clients) follow.
//!
//! - A failed connect sent nothing: any request may go to another server.
//! - A connection that failed or closed before a response head (HAProxy's `empty-response`),
//!   or a 502/503/504 answer (`retry-on 502 503 504`): only a replayable request (idempotent
//!   method, no body) goes elsewhere; the 5xx answer is kept and sent if no other server can
//!   take the request.
//! - A timeout or an invalid response: never retried (the server may be working on it).
//! - At most `retries` other servers, each tried once.

use http::StatusCode;

/// Why an attempt on a server failed before a usable response head.
#[derive(Debug)]
pub enum Failure {
    /// No response head came back: the connection could not be made (`connect`), or it closed
    /// or reset before any response.
    Unreachable {
        connect: bool,
        error: std::io::Error,
    },
    /// The server took longer than the server timeout.
    Timeout,
    /// The server answered something that is not HTTP/1.
    Invalid(&'static str),
}

impl Failure {
    /// The status the client gets, and the error kind for the metrics.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Self::Unreachable { connect: true, .. } => (StatusCode::BAD_GATEWAY, "connect"),
            Self::Unreachable { connect: false, .. } => (StatusCode::BAD_GATEWAY, "no_response"),
            Self::Invalid(_) => (StatusCode::BAD_GATEWAY, "bad_response"),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable {
                connect: true,
                error,
            } => write!(f, "connect: {error}"),
            Self::Unreachable { error, .. } => write!(f, "no response: {error}"),
            Self::Timeout => f.write_str("response timed out"),
            Self::Invalid(what) => write!(f, "invalid response: {what}"),
        }
    }
}

/// 502, 503 and 504: the server (its app, for a web server) could not serve this request.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// The servers a request already tried: a bitset, so the common path allocates nothing (the
/// first 128 servers; beyond that a list).
#[derive(Default)]
pub struct Tried {
    bits: u128,
    more: Vec<usize>,
    count: u32,
}

impl Tried {
    pub fn insert(&mut self, index: usize) {
        self.count += 1;
        match u32::try_from(index).ok().filter(|&i| i < 128) {
            Some(i) => self.bits |= 1 << i,
            None => self.more.push(index),
        }
    }

    pub fn contains(&self, index: usize) -> bool {
        match u32::try_from(index).ok().filter(|&i| i < 128) {
            Some(i) => self.bits & (1 << i) != 0,
            None => self.more.contains(&index),
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }
}

/// One request's attempts: which servers it tried, the answer held back, the last failure.
/// `T` is how a path holds a response it may still send.
pub struct Attempts<T> {
    tried: Tried,
    retries: u32,
    replayable: bool,
    fallback: Option<T>,
    last_failure: Option<Failure>,
}

/// When no server is left to try.
pub enum GiveUp<T> {
    /// A 5xx answer held back: send it.
    Fallback(T),
    /// The last failure, or None when no server could be tried at all (503).
    Failed(Option<Failure>),
}

impl<T> Attempts<T> {
    /// `replayable`: an idempotent request without a body (see `head::is_idempotent`).
    pub fn new(retries: u32, replayable: bool) -> Self {
        Self {
            tried: Tried::default(),
            retries,
            replayable,
            fallback: None,
            last_failure: None,
        }
    }

    pub fn tried(&self) -> &Tried {
        &self.tried
    }

    /// False once the request went to `retries` other servers after the first.
    pub fn may_try_another(&self) -> bool {
        self.tried.count <= self.retries
    }

    /// Records the server about to be tried; true when this is a retry.
    pub fn begin(&mut self, index: usize) -> bool {
        self.tried.insert(index);
        self.tried.count > 1
    }

    /// After a failure before any response head: `Ok` when another server may be tried (the
    /// failure is kept for the answer if none can), `Err` with the failure to answer.
    pub fn failed(&mut self, failure: Failure) -> Result<(), Failure> {
        let retry = match &failure {
            Failure::Unreachable { connect: true, .. } => true,
            Failure::Unreachable { connect: false, .. } => self.replayable,
            Failure::Timeout | Failure::Invalid(_) => false,
        };
        if retry {
            self.last_failure = Some(failure);
            Ok(())
        } else {
            Err(failure)
        }
    }

    /// A 5xx answer is held back (see `answered`): it holds its server's connection.
    pub fn holds_fallback(&self) -> bool {
        self.fallback.is_some()
    }

    /// Whether a response with `status` would be held back (see `answered`).
    pub fn holds(&self, status: u16) -> bool {
        self.replayable && is_retryable_status(status)
    }

    /// After a response head with `status`: a 502/503/504 to a replayable request is held back
    /// (`None`: try another server); anything else is the answer.
    pub fn answered(&mut self, status: u16, answer: T) -> Option<T> {
        if self.holds(status) {
            self.fallback = Some(answer);
            None
        } else {
            Some(answer)
        }
    }

    /// No server is left to try: the answer held back, or the last failure.
    pub fn give_up(&mut self) -> GiveUp<T> {
        match self.fallback.take() {
            Some(answer) => GiveUp::Fallback(answer),
            None => GiveUp::Failed(self.last_failure.take()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable(connect: bool) -> Failure {
        Failure::Unreachable {
            connect,
            error: std::io::ErrorKind::ConnectionRefused.into(),
        }
    }

    #[test]
    fn tried_servers_are_remembered_beyond_the_bitset() {
        let mut tried = Tried::default();
        for i in [0, 5, 127, 128, 1000] {
            assert!(!tried.contains(i));
            tried.insert(i);
            assert!(tried.contains(i));
        }
        assert_eq!(tried.count(), 5);
        assert!(!tried.contains(6) && !tried.contains(129));
    }

    #[test]
    fn a_failed_connect_is_retried_for_any_request_the_rest_only_when_replayable() {
        let mut post = Attempts::<()>::new(2, false);
        assert!(post.failed(unreachable(true)).is_ok());
        assert!(post.failed(unreachable(false)).is_err());
        assert_eq!(post.answered(503, ()), Some(()));
        let mut get = Attempts::<&str>::new(2, true);
        assert!(get.failed(unreachable(false)).is_ok());
        assert!(get.failed(Failure::Timeout).is_err());
        assert!(get.failed(Failure::Invalid("x")).is_err());
        assert!(get.holds(502) && !get.holds(500));
        assert_eq!(get.answered(502, "held"), None);
        assert_eq!(get.answered(404, "ok"), Some("ok"));
        assert!(matches!(get.give_up(), GiveUp::Fallback("held")));
    }

    #[test]
    fn attempts_stop_after_the_retries() {
        let mut a = Attempts::<()>::new(1, true);
        assert!(a.may_try_another());
        assert!(!a.begin(0));
        assert!(a.may_try_another());
        assert!(a.begin(1));
        assert!(!a.may_try_another());
        assert!(matches!(
            Attempts::<()>::new(0, true).give_up(),
            GiveUp::Failed(None)
        ));
    }

    #[test]
    fn failures_map_to_statuses() {
        assert_eq!(unreachable(true).status().0, StatusCode::BAD_GATEWAY);
        assert_eq!(Failure::Timeout.status().0, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(Failure::Invalid("x").status().1, "bad_response");
    }
}
