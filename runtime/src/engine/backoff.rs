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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_stays_under_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        let first = retry_delay(1, base, cap);
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        let third = retry_delay(3, base, cap);
        assert!(third >= Duration::from_millis(320) && third <= Duration::from_millis(480));
        let tenth = retry_delay(10, base, cap);
        assert!(tenth <= Duration::from_millis(1200));
    }
}
