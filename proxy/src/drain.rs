//! Drain: tell long-running tasks to wind down, then wait for them, with a deadline.
//!
//! Modelled on ztunnel's `drain.rs`, kept deliberately small. [`channel`] returns a
//! [`Signal`] (held by whoever decides to shut down, usually the agent's `main`) and a
//! [`Watch`] (cloned into every task that must finish before shutdown completes).
//!
//! - A task learns that draining started from [`Watch::signaled`] (or polls
//!   [`Watch::is_signaled`]), stops taking new work and finishes what it has.
//! - Every live [`Watch`] (and every [`Guard`] taken from one) holds the drain open:
//!   [`Signal::drain`] returns once all of them are dropped, or when its deadline passes.
//!
//! The mechanism is a `tokio::sync::watch` channel: watchers are receivers, and
//! `Sender::closed` tells the signaller when the last receiver is gone, so there is
//! no separate counter to keep in sync.

use std::time::Duration;

use tokio::sync::watch;

/// Creates a connected drain [`Signal`] and [`Watch`].
pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    (Signal { tx }, Watch { rx })
}

/// The sending half: starts the drain and waits for every watcher to finish.
#[derive(Debug)]
pub struct Signal {
    tx: watch::Sender<bool>,
}

/// How a [`Signal::drain`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every [`Watch`] and [`Guard`] was dropped before the deadline.
    Complete,
    /// The deadline passed while some watchers were still alive; the caller should
    /// now close whatever is left by force (usually by exiting).
    DeadlineExceeded,
}

impl Signal {
    /// Signals every [`Watch`] to drain, then waits until all of them (and their
    /// [`Guard`]s) are dropped, or until `deadline` has passed.
    pub async fn drain(self, deadline: Duration) -> Drained {
        // `send_replace` stores the value even when no receiver is alive, unlike `send`.
        self.tx.send_replace(true);
        match tokio::time::timeout(deadline, self.tx.closed()).await {
            Ok(()) => Drained::Complete,
            Err(_elapsed) => Drained::DeadlineExceeded,
        }
    }

    /// Returns a new [`Watch`] connected to this signal, for tasks started after `channel()`.
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
        }
    }
}

/// The receiving half: learns when to drain, and holds the drain open while alive.
///
/// Clone it into each task that must be waited for.
#[derive(Debug, Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

impl Watch {
    /// Resolves once draining has started. Also resolves if the [`Signal`] was dropped
    /// without draining: nobody can wait for us any more, so we may as well wind down.
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // `wait_for` checks the current value first, so a drain signalled before this
        // call is not missed. An error means the sender is gone.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Whether draining has started (non-blocking).
    pub fn is_signaled(&self) -> bool {
        *self.rx.borrow()
    }

    /// A guard that holds the drain open until dropped, without the ability to wait for
    /// the signal. Cheaper to reason about than a full [`Watch`] for tasks that only need
    /// to be waited for.
    pub fn guard(&self) -> Guard {
        Guard {
            _rx: self.rx.clone(),
        }
    }
}

/// Holds the drain open while alive. See [`Watch::guard`].
#[derive(Debug)]
pub struct Guard {
    _rx: watch::Receiver<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_completes_when_watchers_drop() {
        let (signal, watch) = channel();
        let w2 = watch.clone();
        let guard = watch.guard();
        assert!(!watch.is_signaled());

        let task = tokio::spawn(async move {
            w2.signaled().await;
            assert!(w2.is_signaled());
            // finishing the task drops `w2`
        });

        let drain = tokio::spawn(signal.drain(Duration::from_secs(10)));
        watch.signaled().await;
        drop(watch);
        task.await.unwrap();
        // The guard still holds it open.
        tokio::task::yield_now().await;
        assert!(!drain.is_finished());
        drop(guard);
        assert_eq!(drain.await.unwrap(), Drained::Complete);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_times_out_with_live_watcher() {
        let (signal, watch) = channel();
        let start = tokio::time::Instant::now();
        assert_eq!(
            signal.drain(Duration::from_secs(3)).await,
            Drained::DeadlineExceeded
        );
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert!(watch.is_signaled());
        // A signal that already fired still resolves new waiters immediately.
        watch.signaled().await;
    }

    #[tokio::test]
    async fn drain_with_no_watchers_is_immediate() {
        let (signal, watch) = channel();
        drop(watch);
        assert_eq!(
            signal.drain(Duration::from_secs(3)).await,
            Drained::Complete
        );
    }

    #[tokio::test]
    async fn dropped_signal_releases_watchers() {
        let (signal, watch) = channel();
        let late = signal.watch();
        drop(signal);
        watch.signaled().await;
        late.signaled().await;
        assert!(!watch.is_signaled());
    }
}
