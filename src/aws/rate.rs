//! A client-side token bucket mirroring the one AWS meters mutating EC2 calls with (CreateSnapshots:
//! a burst of 100, refilled at 5 a second, per account and Region). Calls within the bucket go out at
//! once; beyond it they are paced instead of being refused, and a throttling answer empties it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The share of the configured refill rate the bucket uses.
const SAFETY: f64 = 0.98;

pub struct TokenBucket {
    burst: f64,
    refill_per_second: f64,
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket. It refills at 98% of `refill_per_second`: AWS's bucket runs on AWS's clock, and a call
    /// paced to the exact instant would now and then arrive a hair early and be throttled.
    pub fn new(burst: u32, refill_per_second: f64) -> Self {
        let burst = f64::from(burst.max(1));
        let refill_per_second = (refill_per_second * SAFETY).max(0.001);
        Self { burst, refill_per_second, state: Mutex::new(State { tokens: burst, at: Instant::now() }) }
    }

    /// How long `calls` more calls take to get a token each, from a full bucket.
    pub fn time_for(&self, calls: usize) -> Duration {
        Duration::from_secs_f64((calls as f64 - self.burst).max(0.0) / self.refill_per_second)
    }

    /// Waits for a token and takes it.
    pub async fn take(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().expect("token bucket");
                self.refill(&mut state);
                if state.tokens >= 1.0 {
                    state.tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - state.tokens) / self.refill_per_second)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// AWS throttled a call: the bucket it meters by is empty, so ours is too.
    pub fn throttled(&self) {
        let mut state = self.state.lock().expect("token bucket");
        self.refill(&mut state);
        state.tokens = state.tokens.min(0.0);
    }

    fn refill(&self, state: &mut State) {
        let now = Instant::now();
        state.tokens = (state.tokens + now.duration_since(state.at).as_secs_f64() * self.refill_per_second).min(self.burst);
        state.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_and_the_rest_at_the_refill_rate() {
        let bucket = TokenBucket::new(3, 2.0 / SAFETY);
        let start = Instant::now();
        for _ in 0..3 {
            bucket.take().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..4 {
            bucket.take().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(2), "4 more at 2 a second");
        assert_eq!(bucket.time_for(7), Duration::from_secs(2));
        assert_eq!(bucket.time_for(2), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttling_answer_empties_the_bucket() {
        let bucket = TokenBucket::new(10, 5.0 / SAFETY);
        bucket.take().await;
        bucket.throttled();
        let start = Instant::now();
        bucket.take().await;
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }
}
