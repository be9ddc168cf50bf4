//! Retry policies and step errors.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `n` milliseconds.
pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` seconds.
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// How a step is retried: delays between attempts and when to give up.
///
/// ```
/// use orch_runtime::prelude::*;
/// let policy = Retry::exponential(ms(100)).max_delay(secs(5)).jitter(0.2).max_attempts(5);
/// assert_eq!(policy.attempts(), 5);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    initial: Duration,
    factor: f64,
    max_delay: Duration,
    jitter: f64,
    max_attempts: u32,
}

impl Default for Retry {
    /// Three attempts, 100 ms then 200 ms apart, ±10 % jitter.
    fn default() -> Self {
        Retry::exponential(ms(100)).jitter(0.1)
    }
}

impl Retry {
    /// One attempt, no retry.
    pub fn none() -> Retry {
        Retry::fixed(Duration::ZERO).max_attempts(1)
    }

    /// The same `delay` between attempts; three attempts unless changed.
    pub fn fixed(delay: Duration) -> Retry {
        Retry {
            initial: delay,
            factor: 1.0,
            max_delay: delay,
            jitter: 0.0,
            max_attempts: 3,
        }
    }

    /// `initial`, then doubling up to `max_delay` (default one minute); three attempts unless
    /// changed.
    pub fn exponential(initial: Duration) -> Retry {
        Retry {
            initial,
            factor: 2.0,
            max_delay: secs(60),
            jitter: 0.0,
            max_attempts: 3,
        }
    }

    /// Gives up after `n` attempts in all (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Retry {
        self.max_attempts = n.max(1);
        self
    }

    /// Caps the delay between attempts.
    pub fn max_delay(mut self, d: Duration) -> Retry {
        self.max_delay = d;
        self
    }

    /// Multiplies the delay by this factor after each attempt (exponential default: 2).
    pub fn factor(mut self, f: f64) -> Retry {
        self.factor = if f.is_finite() && f >= 1.0 { f } else { 1.0 };
        self
    }

    /// Spreads each delay randomly by ±`fraction` (0.0 to 1.0) so retries do not stampede.
    pub fn jitter(mut self, fraction: f64) -> Retry {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The number of attempts before giving up.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay after failed attempt number `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, fastrand::f64())
    }

    /// [`delay_after`](Self::delay_after) with the jitter drawn from `unit` (0.0 to 1.0), so a
    /// test runtime can make it reproducible.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.factor.powi(exp);
        let capped = base.min(self.max_delay.as_secs_f64().max(self.initial.as_secs_f64()));
        let spread = if self.jitter > 0.0 {
            1.0 + self.jitter * (unit.clamp(0.0, 1.0) * 2.0 - 1.0)
        } else {
            1.0
        };
        Duration::from_secs_f64((capped * spread).max(0.0))
    }
}

/// A ready-made step error: a message and whether retrying can help.
///
/// Steps may return any serde error type; this one also receives panics and timeouts, so a
/// workflow can handle them (any error type with `From<StepError>` does).
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, thiserror::Error,
)]
#[error("{message}")]
pub struct StepError {
    /// What went wrong.
    pub message: String,
    /// True when retrying cannot help (a declined card, a bad request).
    pub permanent: bool,
    /// True when the workflow was cancelled (see `Runtime::cancel`): the step did not run (or
    /// stopped retrying), and the workflow should compensate and return.
    #[serde(default)]
    pub cancelled: bool,
}

impl StepError {
    /// An error worth retrying (a timeout, a 503).
    pub fn retryable(message: impl std::fmt::Display) -> StepError {
        StepError {
            message: message.to_string(),
            permanent: false,
            cancelled: false,
        }
    }

    /// An error that retrying cannot fix: the step gives up at once.
    pub fn permanent(message: impl std::fmt::Display) -> StepError {
        StepError {
            message: message.to_string(),
            permanent: true,
            cancelled: false,
        }
    }

    /// The cancellation of the workflow, as received by a step call.
    pub fn cancelled(message: impl std::fmt::Display) -> StepError {
        StepError {
            message: message.to_string(),
            permanent: true,
            cancelled: true,
        }
    }

    /// Whether this is a cancellation (see [`StepError::cancelled`]).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }
}

/// Lets a step's error type say which errors are not worth retrying.
///
/// Error types without this impl are always retried (up to the policy's attempts).
pub trait Retryable {
    /// False for errors that retrying cannot fix.
    fn is_retryable(&self) -> bool;
}

impl Retryable for StepError {
    fn is_retryable(&self) -> bool {
        !self.permanent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_is_capped() {
        let r = Retry::exponential(ms(100)).max_delay(ms(350));
        assert_eq!(r.delay_after(1), ms(100));
        assert_eq!(r.delay_after(2), ms(200));
        assert_eq!(r.delay_after(3), ms(350));
        assert_eq!(r.delay_after(40), ms(350));
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let r = Retry::fixed(ms(100)).jitter(0.5);
        for _ in 0..100 {
            let d = r.delay_after(1);
            assert!(d >= ms(50) && d <= ms(150), "{d:?}");
        }
    }

    #[test]
    fn none_means_one_attempt() {
        assert_eq!(Retry::none().attempts(), 1);
        assert_eq!(Retry::fixed(ms(1)).max_attempts(0).attempts(), 1);
    }
}
