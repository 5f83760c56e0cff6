//! The per-plugin circuit breaker: after `failures` faults in a row a plugin is bypassed for
//! `cooldown` (its `on_error` policy applies without calling it); after the cooldown the next
//! call is a trial that closes the breaker on success or opens it again on failure.

use std::sync::Mutex;

use tokio::time::Instant;

use crate::config::BreakerConfig;

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
}

/// A change of state worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, state: Mutex::new(State::default()) }
    }

    /// Whether the plugin may be called now.
    pub fn allows_call(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.open_until.is_none_or(|until| Instant::now() >= until)
    }

    pub fn cooldown(&self) -> std::time::Duration {
        self.config.cooldown
    }

    /// Records the outcome of a call.
    pub fn record(&self, success: bool) -> Option<Transition> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if success {
            state.failures = 0;
            return state.open_until.take().map(|_| Transition::Closed);
        }
        if state.open_until.is_some() {
            // A failed trial (or a call that started before the breaker opened): stay open.
            state.open_until = Some(Instant::now() + self.config.cooldown);
            return None;
        }
        state.failures += 1;
        if state.failures >= self.config.failures {
            state.failures = 0;
            state.open_until = Some(Instant::now() + self.config.cooldown);
            return Some(Transition::Opened);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_repeated_faults_and_closes_after_a_good_trial() {
        let b = Breaker::new(BreakerConfig { failures: 2, cooldown: Duration::from_secs(10) });
        assert_eq!(b.record(false), None);
        assert_eq!(b.record(true), None, "a success resets the count");
        assert_eq!(b.record(false), None);
        assert_eq!(b.record(false), Some(Transition::Opened));
        assert!(!b.allows_call());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.allows_call(), "half open after the cooldown");
        assert_eq!(b.record(false), None, "a failed trial keeps it open");
        assert!(!b.allows_call());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.record(true), Some(Transition::Closed));
        assert!(b.allows_call());
    }
}
