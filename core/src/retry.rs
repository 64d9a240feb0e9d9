//! When and how often a failed event is tried again.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Exponential backoff with jitter, capped, for a bounded number of attempts.
///
/// The delay before attempt `n + 1` is `initial_backoff * multiplier^(n-1)`,
/// capped at `max_backoff`, then spread by ±`jitter` (a fraction) so that a
/// burst of failures does not come back as a burst.
///
/// ```
/// use std::time::Duration;
/// use busline_core::{RetryDecision, RetryPolicy};
/// let policy = RetryPolicy::default().with_max_attempts(3).with_jitter(0.0);
/// assert_eq!(policy.decide(1), RetryDecision::RetryAfter(Duration::from_millis(200)));
/// assert_eq!(policy.decide(2), RetryDecision::RetryAfter(Duration::from_millis(400)));
/// assert_eq!(policy.decide(3), RetryDecision::GiveUp);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Deliveries in all, the first included; after the last failed one the
    /// event is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Upper bound of any delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Growth factor per attempt.
    pub multiplier: f64,
    /// Random spread, as a fraction of the delay (0.0 to 1.0).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// What to do after a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Deliver again after this delay.
    RetryAfter(Duration),
    /// The attempts are used up: dead-letter.
    GiveUp,
}

impl RetryPolicy {
    /// Sets `max_attempts` (at least 1).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the initial and maximum backoff.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets the jitter fraction (clamped to 0.0..=1.0).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Sets the growth factor (at least 1.0).
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier.max(1.0);
        self
    }

    /// The decision after attempt `attempt` (1-based) failed.
    pub fn decide(&self, attempt: u32) -> RetryDecision {
        if attempt >= self.max_attempts {
            RetryDecision::GiveUp
        } else {
            RetryDecision::RetryAfter(self.backoff(attempt))
        }
    }

    /// The delay after attempt `attempt` failed, jitter included.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.base_backoff(attempt).as_secs_f64();
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = if jitter > 0.0 {
            1.0 + jitter * (fastrand::f64() * 2.0 - 1.0)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * spread).min(self.max_backoff.as_secs_f64()))
    }

    /// The delay after attempt `attempt` failed, before jitter.
    pub fn base_backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        if secs.is_finite() {
            Duration::from_secs_f64(secs.min(self.max_backoff.as_secs_f64()))
        } else {
            self.max_backoff
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default()
            .with_backoff(Duration::from_millis(100), Duration::from_secs(1))
            .with_jitter(0.0)
            .with_max_attempts(100);
        let delays: Vec<_> = (1..=6).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_bounds_and_cap() {
        let p = RetryPolicy::default()
            .with_backoff(Duration::from_millis(100), Duration::from_millis(110))
            .with_jitter(0.5);
        for _ in 0..1000 {
            let d = p.backoff(1);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(110),
                "{d:?}"
            );
        }
    }

    #[test]
    fn deserializes_humane_durations() {
        let p: RetryPolicy = toml::from_str("max_attempts = 3\ninitial_backoff = \"50ms\"").unwrap();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.initial_backoff, Duration::from_millis(50));
        assert_eq!(p.max_backoff, Duration::from_secs(30));
    }
}
