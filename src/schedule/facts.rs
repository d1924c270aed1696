//! What a schedule's Backups say, in the terms retention and the planner use.

use jiff::Timestamp;
use kube::ResourceExt;

use super::retention::{BackupFacts, State};
use crate::api::{Backup, BackupSchedule, ConditionType};

pub fn of(backup: &Backup) -> BackupFacts {
    let created = backup.metadata.creation_timestamp.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    let state = match backup.phase() {
        _ if backup.metadata.deletion_timestamp.is_some() => State::Busy,
        Some(ConditionType::Complete) => State::Complete,
        Some(ConditionType::Failed | ConditionType::Invalid | ConditionType::VolumeBackupFailed) => State::Failed,
        _ => State::Busy,
    };
    let status = backup.status.as_ref();
    let commit = status.and_then(|s| s.commit_ts.as_deref()).and_then(|ts| ts.parse::<u64>().ok()).filter(|ts| *ts > 0);
    // A TSO's physical part (milliseconds) is above its 18 logical bits.
    let point = commit
        .and_then(|ts| Timestamp::from_millisecond((ts >> 18) as i64).ok())
        .or_else(|| status.and_then(|s| s.time_completed.as_ref()).map(|t| t.0))
        .unwrap_or(created);
    BackupFacts { name: backup.name_any(), uid: backup.uid().unwrap_or_default(), created, point, state }
}

/// The schedule's own Backups: created by it (its uid in the controller owner reference), so a
/// re-created schedule of the same name never touches its predecessor's backups.
pub fn owned_by<'a>(schedule: &BackupSchedule, backups: impl IntoIterator<Item = &'a Backup>) -> Vec<&'a Backup> {
    let uid = schedule.uid().unwrap_or_default();
    let namespace = schedule.namespace();
    backups
        .into_iter()
        .filter(|b| b.namespace() == namespace)
        .filter(|b| b.owner_references().iter().any(|o| o.controller == Some(true) && o.kind == "BackupSchedule" && o.uid == uid))
        .collect()
}

/// A volume-snapshot Backup of the same TidbCluster that has not finished (one of the schedule's, a
/// manual one, or another schedule's): a run now would only wait behind it.
pub fn running_for_cluster<'a>(schedule: &BackupSchedule, backups: impl IntoIterator<Item = &'a Backup>) -> Option<String> {
    let template = &schedule.spec.backup_template;
    let namespace = template.br.cluster_namespace.clone().filter(|ns| !ns.is_empty()).or_else(|| schedule.namespace()).unwrap_or_default();
    backups
        .into_iter()
        .filter(|b| b.is_volume_snapshot() && b.spec.federal_volume_backup_phase.is_none())
        .filter(|b| b.spec.br.cluster == template.br.cluster && b.cluster_namespace() == namespace)
        .filter(|b| b.metadata.deletion_timestamp.is_none() && !b.phase().is_some_and(ConditionType::is_terminal))
        .map(|b| b.name_any())
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BackupStatus;

    #[test]
    fn the_recovery_point_is_the_commit_ts() {
        let mut backup = Backup::new("b", Default::default());
        backup.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-12-01T00:00:00Z".parse().unwrap()));
        // 2026-12-02T00:00:00Z in ms, shifted into a TSO.
        let ms: u64 = 1_796_169_600_000;
        backup.status = Some(BackupStatus { commit_ts: Some((ms << 18).to_string()), phase: Some(ConditionType::Complete), ..Default::default() });
        let facts = of(&backup);
        assert_eq!(facts.state, State::Complete);
        assert_eq!(facts.point, "2026-12-02T00:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(facts.created, "2026-12-01T00:00:00Z".parse::<Timestamp>().unwrap());
    }
}
