//! TiDB Operator's condition and progress semantics, as pure functions over `BackupStatus`.
//!
//! Each condition type appears at most once; setting a condition makes its type the phase (except
//! `Restart`) and replaces the old entry in place; `lastTransitionTime` moves only when the status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{BackupCondition, BackupStatus, ConditionStatus, ConditionType, Progress};

pub struct NewCondition {
    pub type_: ConditionType,
    pub status: ConditionStatus,
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl NewCondition {
    pub fn truthy(type_: ConditionType) -> Self {
        Self { type_, status: ConditionStatus::True, reason: None, message: None }
    }
    pub fn with_status(mut self, status: ConditionStatus) -> Self {
        self.status = status;
        self
    }
    pub fn because(mut self, reason: impl Into<String>, message: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self.message = Some(message.into());
        self
    }
}

/// Applies `condition` to `status`; returns whether anything changed.
pub fn set_condition(status: &mut BackupStatus, condition: NewCondition, now: &Time) -> bool {
    let mut changed = false;
    if status.phase.as_ref() != Some(&condition.type_) && condition.type_ != ConditionType::Restart {
        status.phase = Some(condition.type_.clone());
        changed = true;
    }
    let existing = status.conditions.iter_mut().find(|c| c.type_ == condition.type_);
    match existing {
        None => {
            status.conditions.push(BackupCondition {
                type_: condition.type_,
                status: condition.status,
                last_transition_time: Some(now.clone()),
                reason: condition.reason,
                message: condition.message,
            });
            true
        }
        Some(old) => {
            if old.status != condition.status {
                old.last_transition_time = Some(now.clone());
                changed = true;
            }
            if old.reason != condition.reason || old.message != condition.message {
                changed = true;
            }
            old.status = condition.status;
            old.reason = condition.reason;
            old.message = condition.message;
            changed
        }
    }
}

pub fn condition<'a>(status: &'a BackupStatus, type_: &ConditionType) -> Option<&'a BackupCondition> {
    status.conditions.iter().find(|c| &c.type_ == type_)
}

pub fn is_true(status: &BackupStatus, type_: &ConditionType) -> bool {
    condition(status, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

/// One entry per step; a value never goes down; starting a new step finishes the previous last one.
pub fn set_progress(status: &mut BackupStatus, step: &str, value: f64, now: &Time) -> bool {
    let value = value.clamp(0.0, 100.0);
    if let Some(entry) = status.progresses.iter_mut().find(|p| p.step == step) {
        if value > entry.progress {
            entry.progress = value;
            entry.last_transition_time = Some(now.clone());
            return true;
        }
        return false;
    }
    if let Some(last) = status.progresses.last_mut()
        && last.progress < 100.0
    {
        last.progress = 100.0;
        last.last_transition_time = Some(now.clone());
    }
    status.progresses.push(Progress { step: step.to_string(), progress: value, last_transition_time: Some(now.clone()) });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(1_700_000_000 + seconds).unwrap())
    }

    #[test]
    fn setting_a_condition_moves_the_phase_and_appends_once() {
        let mut status = BackupStatus::default();
        assert!(set_condition(&mut status, NewCondition::truthy(ConditionType::Scheduled), &at(0)));
        assert!(set_condition(&mut status, NewCondition::truthy(ConditionType::Running), &at(1)));
        assert_eq!(status.phase, Some(ConditionType::Running));
        assert_eq!(status.conditions.len(), 2);
        assert!(set_condition(&mut status, NewCondition::truthy(ConditionType::Scheduled), &at(2)));
        assert_eq!(status.phase, Some(ConditionType::Scheduled));
        assert_eq!(status.conditions.len(), 2, "a type appears once");
        assert_eq!(status.conditions[0].type_, ConditionType::Scheduled, "replaced in place");
    }

    #[test]
    fn same_condition_again_is_no_change_and_keeps_its_time() {
        let mut status = BackupStatus::default();
        set_condition(&mut status, NewCondition::truthy(ConditionType::Running), &at(0));
        assert!(!set_condition(&mut status, NewCondition::truthy(ConditionType::Running), &at(5)));
        assert_eq!(status.conditions[0].last_transition_time, Some(at(0)));
    }

    #[test]
    fn a_status_flip_moves_the_transition_time_a_message_change_does_not() {
        let mut status = BackupStatus::default();
        set_condition(&mut status, NewCondition::truthy(ConditionType::Clean).with_status(ConditionStatus::False), &at(0));
        assert!(set_condition(
            &mut status,
            NewCondition::truthy(ConditionType::Clean).with_status(ConditionStatus::False).because("Deleting", "3 left"),
            &at(1)
        ));
        assert_eq!(status.conditions[0].last_transition_time, Some(at(0)));
        assert!(set_condition(&mut status, NewCondition::truthy(ConditionType::Clean), &at(2)));
        assert_eq!(status.conditions[0].last_transition_time, Some(at(2)));
        assert_eq!(status.conditions[0].reason, None);
    }

    #[test]
    fn restart_does_not_become_the_phase() {
        let mut status = BackupStatus::default();
        set_condition(&mut status, NewCondition::truthy(ConditionType::Running), &at(0));
        set_condition(&mut status, NewCondition::truthy(ConditionType::Restart), &at(1));
        assert_eq!(status.phase, Some(ConditionType::Running));
        assert!(is_true(&status, &ConditionType::Restart));
    }

    #[test]
    fn progress_only_rises_and_a_new_step_finishes_the_previous() {
        let mut status = BackupStatus::default();
        assert!(set_progress(&mut status, "Snapshot", 40.0, &at(0)));
        assert!(!set_progress(&mut status, "Snapshot", 30.0, &at(1)));
        assert_eq!(status.progresses[0].progress, 40.0);
        assert!(set_progress(&mut status, "Size", 0.0, &at(2)));
        assert_eq!(status.progresses[0].progress, 100.0);
        assert_eq!(status.progresses.len(), 2);
        assert!(set_progress(&mut status, "Size", 250.0, &at(3)));
        assert_eq!(status.progresses[1].progress, 100.0, "clamped");
    }

    #[test]
    fn unknown_condition_types_round_trip() {
        let json = serde_json::json!({"phase": "SomethingNew", "conditions": [{"type": "SomethingNew", "status": "True"}]});
        let status: BackupStatus = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(status.phase, Some(ConditionType::Other("SomethingNew".into())));
        assert_eq!(serde_json::to_value(&status).unwrap()["phase"], "SomethingNew");
    }
}
