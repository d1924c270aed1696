//! What is known about whether a pause is in force, shared by the keeper (which refreshes it) and the
//! snapshot step (which sends a CreateSnapshots call only while the pause is known to hold).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backup::clock::unix_now;
use crate::backup::record::PauseRecord;

/// What is known about whether a pause is in force.
pub struct PauseGuard {
    ttl: Duration,
    state: Mutex<GuardState>,
}

#[derive(Default)]
struct GuardState {
    confirmed_until: Option<Instant>,
    refreshes: u64,
    lapsed: Option<String>,
    stopped: Option<&'static str>,
}

impl PauseGuard {
    /// A guard for a pause last applied at `pause.refreshed_at` (whole seconds, rounded down, so the
    /// estimate errs on the early side).
    pub fn from_record(pause: &PauseRecord) -> Self {
        let ttl = Duration::from_secs(pause.ttl_seconds);
        let left = pause.refreshed_at + pause.ttl_seconds as i64 - unix_now();
        let mut state = GuardState::default();
        if left > 0 {
            state.confirmed_until = Some(Instant::now() + Duration::from_secs(left as u64));
        } else {
            state.lapsed = Some(format!("the pause's TTL ({}s) passed before it was refreshed again (was the operator down?)", pause.ttl_seconds));
        }
        Self { ttl, state: Mutex::new(state) }
    }

    /// `Ok` when the pause is known to hold for at least `margin` from now; else why not.
    pub fn check(&self, margin: Duration) -> Result<(), String> {
        let state = self.state.lock().expect("guard");
        if let Some(why) = &state.lapsed {
            return Err(why.clone());
        }
        if let Some(why) = state.stopped {
            return Err(format!("the pause keeper stopped ({why})"));
        }
        match state.confirmed_until {
            Some(until) if until > Instant::now() + margin => Ok(()),
            _ => Err(format!("PD has not confirmed the pause within its TTL ({}s): refreshes are failing", self.ttl.as_secs())),
        }
    }

    pub fn refreshes(&self) -> u64 {
        self.state.lock().expect("guard").refreshes
    }

    /// Waits (up to `limit`) until this keeper has refreshed the pause at least once.
    pub async fn first_refresh(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while self.refreshes() == 0 && Instant::now() < deadline && self.state.lock().expect("guard").stopped.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.refreshes() == 0 {
            return Err(format!("PD did not confirm the pause within {}s", limit.as_secs()));
        }
        Ok(())
    }

    pub(super) fn confirmed(&self, started: Instant) {
        let mut state = self.state.lock().expect("guard");
        if state.confirmed_until.is_some_and(|until| until <= started) && state.lapsed.is_none() {
            state.lapsed = Some("the PD pause expired between two refreshes".into());
        }
        state.confirmed_until = Some(started + self.ttl);
        state.refreshes += 1;
    }

    pub(super) fn lapse(&self, why: String) {
        self.state.lock().expect("guard").lapsed.get_or_insert(why);
    }

    pub(super) fn stop(&self, why: &'static str) {
        self.state.lock().expect("guard").stopped.get_or_insert(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(refreshed_ago: i64, ttl: u64) -> PauseRecord {
        PauseRecord {
            service_safepoint_id: "id".into(),
            ttl_seconds: ttl,
            paused_at: unix_now() - refreshed_ago,
            refreshed_at: unix_now() - refreshed_ago,
            schedulers: vec![],
            paused_config: Default::default(),
            original_config: Default::default(),
            safepoint: Some(1),
        }
    }

    #[test]
    fn a_pause_recorded_longer_ago_than_its_ttl_counts_as_lapsed() {
        assert!(PauseGuard::from_record(&pause(31, 30)).check(Duration::ZERO).is_err());
        let fresh = PauseGuard::from_record(&pause(1, 30));
        assert!(fresh.check(Duration::from_secs(5)).is_ok());
        assert!(fresh.check(Duration::from_secs(29)).is_err(), "not for longer than the TTL left");
    }

    #[test]
    fn a_refresh_after_the_previous_one_expired_marks_the_pause_lapsed() {
        let guard = PauseGuard::from_record(&pause(1, 30));
        guard.confirmed(Instant::now());
        assert!(guard.check(Duration::from_secs(5)).is_ok());
        let late = Instant::now() + Duration::from_secs(31);
        guard.confirmed(late);
        assert!(guard.check(Duration::ZERO).unwrap_err().contains("expired between two refreshes"));
    }

    #[test]
    fn a_stopped_keeper_vouches_for_nothing() {
        let guard = PauseGuard::from_record(&pause(1, 30));
        guard.stop("deleted");
        assert!(guard.check(Duration::ZERO).unwrap_err().contains("deleted"));
    }
}
