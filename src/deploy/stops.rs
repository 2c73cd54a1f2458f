//! Stopping running deployments: a cancel, the deployment-wide timeout, or the end of the
//! shutdown grace. Each running deployment has a token; stopping it records why and cancels it,
//! and the jobs of its running steps, which hold child tokens, are killed on their servers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Why a deployment was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Someone cancelled it (their name).
    Cancelled(String),
    /// It ran past its deployment-wide timeout.
    TimedOut(Duration),
    /// Dropship is shutting down and the grace period ended.
    Shutdown,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Cancelled(by) => write!(f, "cancelled by {by}"),
            StopReason::TimedOut(limit) => write!(
                f,
                "timed out: the deployment ran longer than {}",
                humantime::format_duration(*limit)
            ),
            StopReason::Shutdown => f.write_str("interrupted: shutdown"),
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    token: CancellationToken,
    reason: Option<StopReason>,
    /// Its first step has begun: from here on a stop ends it rather than re-queueing it.
    steps_begun: bool,
}

/// The stop tokens of running deployments. Cheap to clone; every clone sees the same. One
/// entry per running deployment (at most `max_running_deployments`).
#[derive(Debug, Clone, Default)]
pub struct Stops(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<i64, Entry>,
    /// Set on shutdown: a deployment registered from then on is stopped for it at once (its
    /// task may have been started just before).
    closed: Option<StopReason>,
}

impl Stops {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops deployment `id` for `reason`, unless it was stopped already (the first reason
    /// stays). False when it is not running here: the runner registers a deployment before it
    /// moves it to `running`, so one the store shows running and this does not know has ended.
    pub fn stop(&self, id: i64, reason: StopReason) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(&id) else {
            return false;
        };
        if entry.reason.is_none() {
            entry.reason = Some(reason);
            entry.token.cancel();
        }
        true
    }

    /// Stops every running deployment for `reason` (on shutdown, also those registered
    /// later).
    pub fn stop_all(&self, reason: StopReason) {
        let mut inner = self.lock();
        if reason == StopReason::Shutdown {
            inner.closed.get_or_insert(StopReason::Shutdown);
        }
        for entry in inner.entries.values_mut() {
            if entry.reason.is_none() {
                entry.reason = Some(reason.clone());
                entry.token.cancel();
            }
        }
    }

    /// Stops, for `reason`, every running deployment that has not begun a step: on shutdown
    /// they go back to the queue (their runner sees [`Running::begin_steps`] refused) instead
    /// of starting work the grace may not let finish.
    pub fn stop_unbegun(&self, reason: StopReason) {
        let mut inner = self.lock();
        if reason == StopReason::Shutdown {
            inner.closed.get_or_insert(StopReason::Shutdown);
        }
        for entry in inner.entries.values_mut() {
            if entry.reason.is_none() && !entry.steps_begun {
                entry.reason = Some(reason.clone());
                entry.token.cancel();
            }
        }
    }

    /// How many deployments are registered as running.
    pub fn running(&self) -> usize {
        self.lock().entries.len()
    }

    /// Registers deployment `id` as running, until the returned guard drops.
    pub fn register(&self, id: i64) -> Running {
        let mut inner = self.lock();
        let closed = inner.closed.clone();
        let entry = inner.entries.entry(id).or_default();
        if let (Some(reason), None) = (closed, &entry.reason) {
            entry.reason = Some(reason);
            entry.token.cancel();
        }
        let token = entry.token.clone();
        drop(inner);
        Running {
            stops: self.clone(),
            id,
            token,
        }
    }
}

/// A running deployment's registration: its token and why it was stopped.
#[derive(Debug)]
pub struct Running {
    stops: Stops,
    id: i64,
    token: CancellationToken,
}

impl Running {
    /// Cancelled when the deployment is stopped: a step's job holds a child of it.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Marks its first step begun, unless it was stopped already: then the reason.
    pub fn begin_steps(&self) -> Result<(), StopReason> {
        let mut inner = self.stops.lock();
        let Some(entry) = inner.entries.get_mut(&self.id) else {
            return Ok(());
        };
        match &entry.reason {
            Some(reason) => Err(reason.clone()),
            None => {
                entry.steps_begun = true;
                Ok(())
            }
        }
    }

    /// Why the deployment was stopped, once it was.
    pub fn reason(&self) -> Option<StopReason> {
        self.stops
            .lock()
            .entries
            .get(&self.id)
            .and_then(|entry| entry.reason.clone())
    }

    /// Stops the deployment for `reason` once `after` has passed, unless it ended first.
    pub fn stop_after(&self, after: Duration, reason: StopReason) -> tokio::task::JoinHandle<()> {
        let (stops, id, token) = (self.stops.clone(), self.id, self.token.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(after) => {
                    stops.stop(id, reason);
                }
                () = token.cancelled() => {}
            }
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Ends the timer of `stop_after` too.
        self.token.cancel();
        self.stops.lock().entries.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_stays_and_an_ended_deployment_is_not_kept() {
        let stops = Stops::default();
        assert!(!stops.stop(7, StopReason::Shutdown), "not running");
        assert_eq!(stops.running(), 0);
        let running = stops.register(7);
        assert!(stops.stop(7, StopReason::Cancelled("ann".into())));
        stops.stop(7, StopReason::Shutdown);
        assert!(running.token().is_cancelled());
        assert_eq!(running.reason(), Some(StopReason::Cancelled("ann".into())));
        drop(running);
        assert_eq!(stops.running(), 0);
        let again = stops.register(7);
        assert!(!again.token().is_cancelled() && again.reason().is_none());
        stops.stop_all(StopReason::Shutdown);
        assert_eq!(again.reason(), Some(StopReason::Shutdown));
    }

    #[test]
    fn on_shutdown_only_deployments_that_began_no_step_are_stopped_at_once() {
        let stops = Stops::default();
        let (working, waiting) = (stops.register(1), stops.register(2));
        assert_eq!(working.begin_steps(), Ok(()));
        stops.stop_unbegun(StopReason::Shutdown);
        assert!(!working.token().is_cancelled() && working.reason().is_none());
        assert!(waiting.token().is_cancelled());
        assert_eq!(waiting.begin_steps(), Err(StopReason::Shutdown));
        stops.stop_all(StopReason::Shutdown);
        assert_eq!(working.reason(), Some(StopReason::Shutdown));
        // One whose task started just before the shutdown registers after it: stopped at once.
        let late = stops.register(3);
        assert!(late.token().is_cancelled());
        assert_eq!(late.begin_steps(), Err(StopReason::Shutdown));
    }
}
