//! A connection's timer for a deadline that moves later at nearly every request (a client
//! connection's wait for its next request head, a pooled server connection's wait for a
//! response head): armed once and moved only when it fires early, as HAProxy's tasks keep
//! their expiry, instead of a timer put in and taken out of tokio's wheel per request. A timer
//! left armed between waits wakes whoever waited on it last, once per period: that task finds
//! nothing to do.
//!
//! Why it matters: a new timer that is due before everything else in the wheel makes tokio
//! wake its driver (`unpark`, an `eventfd` write and one more `epoll_wait`). The lb's header
//! wait (10 s) is shorter than its server timeout (30 s) and while a busy connection waits
//! for its server the shorter timers are gone: measured in the whole stack, 0.27 `eventfd`
//! writes per request in the lb (docs/performance.md).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// One lazily moved timer. Boxed once, at the first wait: an idle connection that never waited
/// holds none.
#[derive(Default)]
pub struct LazyTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LazyTimer {
    /// Resolves at `deadline`, not before. A timer already due earlier is left as it is (it
    /// fires, and is set to `deadline` then: one move per timeout period, not per request);
    /// one due later is brought forward.
    pub fn until(&mut self, deadline: Instant) -> Until<'_> {
        Until {
            timer: self,
            deadline,
        }
    }

    fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            // Fired at an earlier wait's deadline: on to this one.
            sleep.as_mut().reset(deadline);
        }
    }
}

/// The future of `LazyTimer::until`.
pub struct Until<'a> {
    timer: &'a mut LazyTimer,
    deadline: Instant,
}

impl Future for Until<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        self.timer.poll_until(cx, deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Now is `when` (the wheel's millisecond rounding allowed), never before.
    fn at(when: Instant) {
        let now = Instant::now();
        assert!(
            now >= when && now < when + Duration::from_millis(2),
            "{:?} from the deadline",
            now.checked_duration_since(when)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn resolves_at_each_deadline_never_before() {
        let mut timer = LazyTimer::default();
        let start = Instant::now();
        timer.until(start + Duration::from_secs(10)).await;
        at(start + Duration::from_secs(10));

        // A later deadline while the timer already fired.
        let next = Instant::now() + Duration::from_secs(10);
        timer.until(next).await;
        at(next);

        // Armed for 10 s, then a wait for a later deadline before it fired: it fires early,
        // moves on, and resolves at the later one.
        let first = Instant::now() + Duration::from_secs(10);
        assert!(
            tokio::time::timeout(Duration::from_secs(3), timer.until(first))
                .await
                .is_err()
        );
        let later = first + Duration::from_secs(5);
        timer.until(later).await;
        at(later);

        // An earlier deadline than the armed one is brought forward.
        let far = Instant::now() + Duration::from_secs(60);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), timer.until(far))
                .await
                .is_err()
        );
        let near = Instant::now() + Duration::from_secs(2);
        timer.until(near).await;
        at(near);
    }
}
