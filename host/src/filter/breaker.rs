//! The per-plugin circuit breaker: after `failures` faults in a row a plugin is bypassed for
//! `cooldown` (its `on_error` policy applies without calling it); after the cooldown one call
//! at a time is let through as a trial, which closes the breaker on success or opens it again.
//!
//! Only calls the breaker admitted count, and a call that was admitted before the breaker
//! opened neither closes it nor extends it: a slow call that finally succeeds says nothing about
//! the plugin's health now. A trial that never reports (its session was dropped) gives the trial
//! back, so the breaker cannot stay half-open for good.

use std::sync::Mutex;

use tokio::time::Instant;

use crate::config::BreakerConfig;
use crate::metrics::BreakerGauge;

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    since: Instant,
    until: Instant,
    /// A trial call is in flight.
    trial: bool,
}

/// A change of state worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

/// Permission for one call; report its outcome with [`Breaker::record`].
#[derive(Debug)]
#[must_use]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    admitted: Instant,
    trial: bool,
    reported: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.trial && !self.reported {
            let mut state = self.breaker.lock();
            if let Some(open) = &mut state.open {
                open.trial = false;
            }
        }
    }
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, state: Mutex::new(State::default()) }
    }

    pub fn cooldown(&self) -> std::time::Duration {
        self.config.cooldown
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state for the metrics: open while bypassing, half-open once the cooldown is over
    /// (the next call is a trial, or one is in flight).
    pub fn gauge(&self) -> BreakerGauge {
        let now = Instant::now();
        match &self.lock().open {
            None => BreakerGauge::Closed,
            Some(open) if now < open.until && !open.trial => BreakerGauge::Open,
            Some(_) => BreakerGauge::HalfOpen,
        }
    }

    /// A ticket if the plugin may be called now; `None` while the breaker is open (or its one
    /// trial is already in flight).
    pub fn admit(&self) -> Option<Ticket<'_>> {
        let now = Instant::now();
        let mut state = self.lock();
        let trial = match &mut state.open {
            None => false,
            Some(open) if now < open.until || open.trial => return None,
            Some(open) => {
                open.trial = true;
                true
            }
        };
        Some(Ticket { breaker: self, admitted: now, trial, reported: false })
    }

    /// Records the outcome of an admitted call.
    pub fn record(&self, mut ticket: Ticket<'_>, success: bool) -> Option<Transition> {
        ticket.reported = true;
        let now = Instant::now();
        let mut state = self.lock();
        match &mut state.open {
            Some(open) if ticket.trial => {
                if success {
                    state.open = None;
                    state.failures = 0;
                    return Some(Transition::Closed);
                }
                open.until = now + self.config.cooldown;
                open.trial = false;
                None
            }
            // Admitted before the breaker opened: it says nothing about now.
            Some(open) if ticket.admitted < open.since => None,
            Some(_) => None,
            None if success => {
                state.failures = 0;
                None
            }
            None => {
                state.failures += 1;
                if state.failures < self.config.failures {
                    return None;
                }
                state.failures = 0;
                state.open = Some(Open { since: now, until: now + self.config.cooldown, trial: false });
                Some(Transition::Opened)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig { failures: 2, cooldown: Duration::from_secs(10) })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_repeated_faults_and_closes_after_a_good_trial() {
        let b = breaker();
        assert_eq!(b.record(b.admit().unwrap(), false), None);
        assert_eq!(b.record(b.admit().unwrap(), true), None, "a success resets the count");
        assert_eq!(b.record(b.admit().unwrap(), false), None);
        assert_eq!(b.record(b.admit().unwrap(), false), Some(Transition::Opened));
        assert!(b.admit().is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        let trial = b.admit().expect("half open after the cooldown");
        assert!(b.admit().is_none(), "one trial at a time");
        assert_eq!(b.record(trial, false), None, "a failed trial keeps it open");
        assert!(b.admit().is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.record(b.admit().unwrap(), true), Some(Transition::Closed));
        assert!(b.admit().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_admitted_before_the_breaker_opened_does_not_close_it() {
        let b = breaker();
        let slow = b.admit().unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
        b.record(b.admit().unwrap(), false);
        assert_eq!(b.record(b.admit().unwrap(), false), Some(Transition::Opened));
        assert_eq!(b.record(slow, true), None, "the slow success is ignored");
        assert!(b.admit().is_none(), "still open for the whole cooldown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_that_never_reports_is_given_back() {
        let b = breaker();
        b.record(b.admit().unwrap(), false);
        b.record(b.admit().unwrap(), false);
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(b.admit().expect("the trial"));
        assert!(b.admit().is_some(), "the next call may try again");
    }
}
