//! Whether a schedule creates a Backup now: a pure function of its cron, what its status and
//! annotations record, the backups still running and the time.

use jiff::{SignedDuration, Timestamp};

use super::cron::Cron;

pub struct PlanInput<'a> {
    pub cron: &'a Cron,
    /// `status.lastBackupTime`, else `status.allBackupCleanTime`, else the schedule's creation time.
    pub anchor: Timestamp,
    /// The last scheduled time already skipped or missed (the `skipped-run` annotation).
    pub skipped_through: Option<Timestamp>,
    /// A backup of this schedule or of its TidbCluster that has not finished.
    pub running: Option<&'a str>,
    /// A run later than this after its scheduled time is missed, not started (`None`: no limit).
    pub starting_deadline: Option<SignedDuration>,
    pub now: Timestamp,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due; look again at `next`.
    Wait { next: Option<Timestamp> },
    /// Create the Backup for the scheduled time `at`.
    Create { at: Timestamp, next: Option<Timestamp> },
    /// `at` came while `running` ran: no Backup for it.
    Skip { at: Timestamp, running: String, next: Option<Timestamp> },
    /// `at` is past the starting deadline (the operator was down, or the schedule paused).
    Miss { at: Timestamp, next: Option<Timestamp> },
}

pub fn decide(input: &PlanInput) -> Decision {
    let anchor = input.skipped_through.map_or(input.anchor, |skipped| skipped.max(input.anchor));
    if anchor > input.now {
        // The clock went back: wait for the first time after what was recorded.
        return Decision::Wait { next: input.cron.next_after(anchor) };
    }
    // At most one run for everything missed: the newest due time (as TiDB Operator).
    let Some(at) = input.cron.latest_due(anchor, input.now) else {
        return Decision::Wait { next: input.cron.next_after(anchor) };
    };
    let next = input.cron.next_after(at.max(input.now));
    if let Some(running) = input.running {
        return Decision::Skip { at, running: running.to_string(), next };
    }
    if input.starting_deadline.is_some_and(|deadline| input.now.duration_since(at) > deadline) {
        return Decision::Miss { at, next };
    }
    Decision::Create { at, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn plan(cron: &Cron, anchor: &str, now: &str) -> PlanInput<'static> {
        PlanInput {
            cron: Box::leak(Box::new(cron.clone())),
            anchor: at(anchor),
            skipped_through: None,
            running: None,
            starting_deadline: None,
            now: at(now),
        }
    }

    #[test]
    fn runs_at_each_time_and_waits_in_between() {
        let hourly = Cron::parse("0 * * * *", None).unwrap();
        assert_eq!(decide(&plan(&hourly, "2026-12-02T10:00:00Z", "2026-12-02T10:30:00Z")), Decision::Wait { next: Some(at("2026-12-02T11:00:00Z")) });
        assert_eq!(
            decide(&plan(&hourly, "2026-12-02T10:00:00Z", "2026-12-02T11:00:01Z")),
            Decision::Create { at: at("2026-12-02T11:00:00Z"), next: Some(at("2026-12-02T12:00:00Z")) }
        );
    }

    #[test]
    fn after_downtime_there_is_one_catch_up_run_for_the_newest_time_only() {
        let hourly = Cron::parse("0 * * * *", None).unwrap();
        let decision = decide(&plan(&hourly, "2026-12-02T10:00:00Z", "2026-12-02T15:20:00Z"));
        assert_eq!(decision, Decision::Create { at: at("2026-12-02T15:00:00Z"), next: Some(at("2026-12-02T16:00:00Z")) });
        // Once created, lastBackupTime is 15:00: nothing more until 16:00.
        assert!(matches!(decide(&plan(&hourly, "2026-12-02T15:00:00Z", "2026-12-02T15:21:00Z")), Decision::Wait { .. }));
    }

    #[test]
    fn a_run_past_its_starting_deadline_is_missed() {
        let hourly = Cron::parse("0 * * * *", None).unwrap();
        let mut input = plan(&hourly, "2026-12-02T10:00:00Z", "2026-12-02T15:20:00Z");
        input.starting_deadline = Some(SignedDuration::from_mins(10));
        assert_eq!(decide(&input), Decision::Miss { at: at("2026-12-02T15:00:00Z"), next: Some(at("2026-12-02T16:00:00Z")) });
        input.now = at("2026-12-02T15:09:00Z");
        assert!(matches!(decide(&input), Decision::Create { .. }));
    }

    #[test]
    fn a_run_that_comes_while_a_backup_runs_is_skipped_and_not_made_up_later() {
        let every = Cron::parse("*/15 * * * *", None).unwrap();
        let mut input = plan(&every, "2026-12-02T10:00:00Z", "2026-12-02T10:15:02Z");
        input.running = Some("hourly-2026-12-02t10-00-00");
        assert_eq!(
            decide(&input),
            Decision::Skip { at: at("2026-12-02T10:15:00Z"), running: "hourly-2026-12-02t10-00-00".into(), next: Some(at("2026-12-02T10:30:00Z")) }
        );
        // The skip is recorded; the backup finishes at 10:20: nothing until 10:30.
        input.running = None;
        input.skipped_through = Some(at("2026-12-02T10:15:00Z"));
        input.now = at("2026-12-02T10:20:00Z");
        assert_eq!(decide(&input), Decision::Wait { next: Some(at("2026-12-02T10:30:00Z")) });
        input.now = at("2026-12-02T10:30:00Z");
        assert!(matches!(decide(&input), Decision::Create { at: t, .. } if t == at("2026-12-02T10:30:00Z")));
    }

    #[test]
    fn a_clock_that_went_back_waits() {
        let hourly = Cron::parse("0 * * * *", None).unwrap();
        assert_eq!(decide(&plan(&hourly, "2026-12-02T12:00:00Z", "2026-12-02T11:00:00Z")), Decision::Wait { next: Some(at("2026-12-02T13:00:00Z")) });
    }
}
