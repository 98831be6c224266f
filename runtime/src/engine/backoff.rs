//! Retry delays: exponential backoff with jitter, so a burst of failures
//! (a database restart, a flaky upstream) does not retry in lockstep.

use rand::Rng;
use std::time::Duration;

/// How long to wait before attempt `attempt + 1`, given that `attempt`
/// (1-based) just failed: `base * 2^(attempt-1)`, capped, then ±20 % jitter.
pub fn retry_delay(attempt: i32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 30) as u32;
    let raw = base.saturating_mul(1u32 << exp.min(20)).min(cap);
    let jitter = rand::rng().random_range(0.8..1.2);
    raw.mul_f64(jitter)
}
