//! The pure core of the reconciler: from what the Backup records, the one thing to do next.

use super::record::{BackupRecord, Failure};
use crate::api::{Backup, ConditionType};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not a Backup this operator acts on.
    Ignore,
    /// Finished; nothing to do until it is deleted.
    Done,
    /// New: accept it (`Scheduled`).
    Schedule,
    /// Check everything before touching the cluster, and record the snapshot plan.
    Preflight,
    /// Pause scheduling and GC, and take the resolved ts.
    Pause,
    /// Create (or finish creating) the EBS snapshots.
    Snapshot,
    /// Resume scheduling and GC.
    Resume,
    WriteMeta,
    /// Follow the snapshots to completion.
    WaitSnapshots,
    /// All snapshots complete: sizes, then `Complete`.
    Finish,
    /// A failure was decided: resume, delete what we created, then `Failed`.
    HandleFailure(Failure),
}

pub fn next_step(backup: &Backup, record: &BackupRecord) -> Step {
    if !backup.is_volume_snapshot() || backup.spec.federal_volume_backup_phase.is_some() {
        return Step::Ignore;
    }
    let phase = backup.phase();
    if let Some(failure) = &record.failure {
        return if phase.is_some_and(ConditionType::is_terminal) { Step::Done } else { Step::HandleFailure(failure.clone()) };
    }
    match phase {
        Some(phase) if phase.is_terminal() => return Step::Done,
        None => return Step::Schedule,
        Some(_) => {}
    }
    if record.plan.is_none() {
        Step::Preflight
    } else if record.pause.as_ref().is_none_or(|p| p.safepoint.is_none()) && !record.all_snapshots_created() {
        Step::Pause
    } else if !record.all_snapshots_created() {
        Step::Snapshot
    } else if !record.resumed {
        Step::Resume
    } else if !record.meta_written {
        Step::WriteMeta
    } else if phase != Some(&ConditionType::VolumeBackupComplete) {
        Step::WaitSnapshots
    } else {
        Step::Finish
    }
}

/// TiDB Operator v1.5+ marks single-cluster volume-snapshot Backups `Invalid` ("only support volume
/// snapshot backup across k8s clusters") and then ignores them; its message names that.
pub fn claimed_by_tidb_operator(backup: &Backup) -> Option<String> {
    let status = backup.status.as_ref()?;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Invalid && c.message.as_deref().is_some_and(|m| m.contains("across k8s")))
        .and_then(|c| c.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupMode, BackupSpec, BackupStatus};
    use crate::backup::record::{InstancePlan, PauseRecord, SnapshotPlan};
    use std::collections::BTreeMap;

    fn backup(phase: Option<ConditionType>) -> Backup {
        let mut backup = Backup::new("b", BackupSpec { backup_mode: BackupMode::VolumeSnapshot, ..Default::default() });
        backup.status = Some(BackupStatus { phase, ..Default::default() });
        backup
    }

    fn plan() -> SnapshotPlan {
        SnapshotPlan {
            cluster_namespace: "ns".into(),
            cluster: "c".into(),
            pd_url: "http://pd".into(),
            cluster_version: "8.5.5".into(),
            stores: vec![],
            pd_volumes: vec![],
            instances: vec![InstancePlan { instance_id: "i-1".into(), volume_ids: vec!["vol-1".into()], exclude_volume_ids: vec![] }],
            volume_az: BTreeMap::new(),
        }
    }

    fn pause(safepoint: Option<u64>) -> PauseRecord {
        PauseRecord {
            service_safepoint_id: "id".into(),
            ttl_seconds: 120,
            paused_at: 0,
            refreshed_at: 0,
            schedulers: vec![],
            paused_config: Default::default(),
            original_config: Default::default(),
            safepoint,
        }
    }

    #[test]
    fn walks_the_happy_path_in_order() {
        let mut record = BackupRecord::default();
        assert_eq!(next_step(&backup(None), &record), Step::Schedule);
        assert_eq!(next_step(&backup(Some(ConditionType::Scheduled)), &record), Step::Preflight);
        record.plan = Some(plan());
        assert_eq!(next_step(&backup(Some(ConditionType::Prepare)), &record), Step::Pause);
        record.pause = Some(pause(None));
        assert_eq!(next_step(&backup(Some(ConditionType::Running)), &record), Step::Pause, "a half-done pause is redone");
        record.pause = Some(pause(Some(9)));
        assert_eq!(next_step(&backup(Some(ConditionType::VolumeBackupInitialized)), &record), Step::Snapshot);
        record.snapshots.insert("vol-1".into(), "snap-1".into());
        assert_eq!(next_step(&backup(Some(ConditionType::VolumeBackupInitialized)), &record), Step::Resume);
        record.resumed = true;
        assert_eq!(next_step(&backup(Some(ConditionType::VolumeBackupInitialized)), &record), Step::WriteMeta);
        record.meta_written = true;
        assert_eq!(next_step(&backup(Some(ConditionType::VolumeBackupSnapshotsCreated)), &record), Step::WaitSnapshots);
        assert_eq!(next_step(&backup(Some(ConditionType::VolumeBackupComplete)), &record), Step::Finish);
        assert_eq!(next_step(&backup(Some(ConditionType::Complete)), &record), Step::Done);
    }

    #[test]
    fn a_recorded_failure_is_handled_until_the_backup_is_failed() {
        let failure = Failure::new(crate::reason::Reason::SnapshotFailed, "x");
        let record = BackupRecord { failure: Some(failure.clone()), plan: Some(plan()), ..Default::default() };
        assert_eq!(next_step(&backup(Some(ConditionType::VolumeBackupSnapshotsCreated)), &record), Step::HandleFailure(failure));
        assert_eq!(next_step(&backup(Some(ConditionType::Failed)), &record), Step::Done);
    }

    #[test]
    fn other_modes_and_federated_members_are_not_ours() {
        let mut snapshot = backup(None);
        snapshot.spec.backup_mode = BackupMode::Snapshot;
        assert_eq!(next_step(&snapshot, &BackupRecord::default()), Step::Ignore);
        let mut member = backup(None);
        member.spec.federal_volume_backup_phase = Some("initialize".into());
        assert_eq!(next_step(&member, &BackupRecord::default()), Step::Ignore);
    }

    #[test]
    fn recognises_tidb_operators_invalid_marking() {
        let mut ours = backup(Some(ConditionType::Invalid));
        ours.status.as_mut().unwrap().conditions.push(crate::api::BackupCondition {
            type_: ConditionType::Invalid,
            status: crate::api::ConditionStatus::True,
            last_transition_time: None,
            reason: Some("InvalidSpec".into()),
            message: Some("spec.br.cluster is required".into()),
        });
        assert_eq!(claimed_by_tidb_operator(&ours), None);
        let mut theirs = ours.clone();
        theirs.status.as_mut().unwrap().conditions[0].message = Some("only support volume snapshot backup across k8s clusters".into());
        assert!(claimed_by_tidb_operator(&theirs).is_some());
    }
}
