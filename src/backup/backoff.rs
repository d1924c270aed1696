//! Retrying a reconcile that failed.

use std::time::Duration;

/// Consecutive reconcile errors per Backup: the retry waits 5 s, doubling up to a minute, so a lasting
/// refusal (a missing permission) is not retried and logged every 5 s for ever, while a pass that works
/// starts over. A minute at most, because a backup in flight must not wait long once Kubernetes is back.
#[derive(Default)]
pub struct ErrorBackoff(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl ErrorBackoff {
    pub fn failed(&self, uid: &str) -> Duration {
        let mut errors = self.0.lock().expect("error backoff");
        let count = errors.entry(uid.to_string()).or_default();
        *count = count.saturating_add(1);
        (Duration::from_secs(5) * 2u32.saturating_pow(*count - 1).min(12)).min(Duration::from_secs(60))
    }

    pub fn succeeded(&self, uid: &str) {
        self.0.lock().expect("error backoff").remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_errors_back_off_per_backup_and_reset_on_success() {
        let backoff = ErrorBackoff::default();
        let delays: Vec<u64> = (0..6).map(|_| backoff.failed("a").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 60, 60]);
        assert_eq!(backoff.failed("b").as_secs(), 5, "per Backup");
        backoff.succeeded("a");
        assert_eq!(backoff.failed("a").as_secs(), 5);
    }
}
