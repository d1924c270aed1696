//! Waiting out AWS throttling. The SDK's own retries are off for CreateSnapshots (a retried call could
//! snapshot a volume twice), and its standard retry gives up after three attempts, well before a
//! snapshot quota frees up; this backs off until a deadline instead.

use std::future::Future;
use std::time::{Duration, Instant};

use super::AwsError;
use crate::metrics::Metrics;

/// Retries `call` while AWS throttles (rate limits and snapshot quotas), with jittered exponential backoff.
pub async fn retry_throttled<T, F, Fut>(
    deadline: Instant,
    backoff_max: Duration,
    metrics: &Metrics,
    operation: &'static str,
    mut call: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        let result = call().await;
        metrics.aws_call(operation, &result);
        match result {
            Err(e) if e.is_throttle() && Instant::now() + delay < deadline => {
                tracing::info!(%operation, error = %e, delay_ms = delay.as_millis() as u64, "AWS throttled; waiting");
                jittered_sleep(delay).await;
                delay = (delay * 2).min(backoff_max);
            }
            other => return other,
        }
    }
}

/// Sleeps between half and all of `delay`, so callers throttled together do not retry together.
pub async fn jittered_sleep(delay: Duration) {
    let jitter = 0.5 + (jiff::Timestamp::now().subsec_nanosecond() as f64 / 1e9) * 0.5;
    tokio::time::sleep(delay.mul_f64(jitter)).await;
}
