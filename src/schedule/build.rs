//! The Backup a schedule creates for one scheduled time, named, labelled, owned and prefixed as TiDB
//! Operator makes it (`pkg/backup/backupschedule`), so tools written for TiDB Operator find it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::api::backup_schedule::BACKUP_SCHEDULE_LABEL;
use crate::api::{Backup, BackupSchedule};

/// TiDB Operator's `BackupNameTimeFormat` (Go's `2006-01-02t15-04-05`), in UTC.
pub fn name_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dt%H-%M-%S").to_string()
}

pub fn backup_name(schedule: &BackupSchedule, at: Timestamp) -> String {
    format!("{}-{}", schedule.name_any(), name_time(at))
}

/// The labels that select a schedule's Backups.
pub fn schedule_labels(schedule_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "backup-schedule".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "backup-schedule-operator".to_string()),
        ("app.kubernetes.io/instance".to_string(), schedule_name.to_string()),
        (BACKUP_SCHEDULE_LABEL.to_string(), schedule_name.to_string()),
    ])
}

pub fn backup_for(schedule: &BackupSchedule, at: Timestamp) -> Backup {
    let name = schedule.name_any();
    let namespace = schedule.namespace().unwrap_or_default();
    let mut spec = schedule.spec.backup_template.clone();
    let cluster_namespace = spec.br.cluster_namespace.clone().filter(|ns| !ns.is_empty()).unwrap_or_else(|| namespace.clone());
    // TiDB Operator: <template prefix>/<cluster>-pd.<namespace>-2379-<time>, one prefix per run.
    let run_prefix = format!("{}-pd.{}-2379-{}", spec.br.cluster, cluster_namespace, name_time(at));
    if let Some(s3) = spec.s3.as_mut() {
        let base = s3.prefix.as_deref().unwrap_or("").trim_matches('/');
        s3.prefix = Some(if base.is_empty() { run_prefix } else { format!("{base}/{run_prefix}") });
    }
    let mut labels = schedule.labels().clone();
    labels.extend(schedule_labels(&name));
    let annotations: BTreeMap<String, String> = schedule
        .annotations()
        .iter()
        .filter(|(key, _)| !key.starts_with("tidb-ebs-backup.io/") && key.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let owner = OwnerReference {
        api_version: BackupSchedule::api_version(&()).into_owned(),
        kind: BackupSchedule::kind(&()).into_owned(),
        name: name.clone(),
        uid: schedule.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    Backup {
        metadata: ObjectMeta {
            name: Some(backup_name(schedule, at)),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupMode, BackupScheduleSpec, BackupSpec, BrConfig, S3StorageProvider};

    #[test]
    fn a_scheduled_backup_is_named_labelled_owned_and_prefixed_as_tidb_operator_does() {
        let mut schedule = BackupSchedule::new(
            "nightly",
            BackupScheduleSpec {
                schedule: "0 2 * * *".into(),
                backup_template: BackupSpec {
                    backup_mode: BackupMode::VolumeSnapshot,
                    br: BrConfig { cluster: "basic".into(), ..BrConfig::default() },
                    s3: Some(S3StorageProvider {
                        provider: "aws".into(),
                        bucket: Some("b".into()),
                        prefix: Some("/tidb/".into()),
                        ..Default::default()
                    }),
                    ..BackupSpec::default()
                },
                ..BackupScheduleSpec::default()
            },
        );
        schedule.metadata.namespace = Some("db".into());
        schedule.metadata.uid = Some("u-1".into());
        schedule.metadata.labels = Some(BTreeMap::from([("tidb-ebs-backup.io/managed".to_string(), "true".to_string())]));
        schedule.metadata.annotations = Some(BTreeMap::from([
            ("team".to_string(), "data".to_string()),
            ("tidb-ebs-backup.io/retention-tiers".to_string(), "daily=7".to_string()),
        ]));
        let backup = backup_for(&schedule, "2026-12-02T02:00:00Z".parse().unwrap());
        assert_eq!(backup.name_any(), "nightly-2026-12-02t02-00-00");
        assert_eq!(backup.labels()["tidb-ebs-backup.io/managed"], "true", "the selector label is copied");
        assert_eq!(backup.labels()[BACKUP_SCHEDULE_LABEL], "nightly");
        assert_eq!(backup.labels()["app.kubernetes.io/instance"], "nightly");
        assert_eq!(backup.annotations().get("team").map(String::as_str), Some("data"));
        assert!(!backup.annotations().contains_key("tidb-ebs-backup.io/retention-tiers"));
        let owner = &backup.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("BackupSchedule", "u-1", Some(true)));
        assert_eq!(backup.spec.s3.unwrap().prefix.as_deref(), Some("tidb/basic-pd.db-2379-2026-12-02t02-00-00"));
    }
}
