//! TiDB Operator's `BackupSchedule` (`pingcap.com/v1alpha1`, short name `bks`), acted on when its
//! `backupTemplate.backupMode` is `volume-snapshot`.
//!
//! The fields are TiDB Operator's. What this operator adds (time zone, starting deadline, tiered
//! retention, the grace period of failed backups) lives in annotations ([`ScheduleOptions`]): TiDB
//! Operator's own BackupSchedule CRD prunes unknown spec fields, so an addition under `spec` would be
//! dropped silently wherever that CRD is installed, and a dropped retention tier means deleting
//! backups the user asked to keep. Annotations survive under either CRD.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::BackupSpec;

/// Label TiDB Operator puts on the Backups a schedule creates (value: the schedule's name).
pub const BACKUP_SCHEDULE_LABEL: &str = "tidb.pingcap.com/backup-schedule";
pub const TIME_ZONE_ANNOTATION: &str = "tidb-ebs-backup.io/time-zone";
pub const STARTING_DEADLINE_ANNOTATION: &str = "tidb-ebs-backup.io/starting-deadline-seconds";
pub const RETENTION_TIERS_ANNOTATION: &str = "tidb-ebs-backup.io/retention-tiers";
pub const FAILED_RETENTION_ANNOTATION: &str = "tidb-ebs-backup.io/failed-backup-retention";
/// The last scheduled time skipped because a backup was still running (written by the operator).
pub const SKIPPED_RUN_ANNOTATION: &str = "tidb-ebs-backup.io/skipped-run";

/// The cron syntax TiDB Operator accepts (robfig/cron `ParseStandard`): five fields or a descriptor.
const CRON_RULE: &str = r"self.matches('^\\s*(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|@every\\s+([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+|(\\S+\\s+){4}\\S+)\\s*$')";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "pingcap.com",
    version = "v1alpha1",
    kind = "BackupSchedule",
    plural = "backupschedules",
    singular = "backupschedule",
    shortname = "bks",
    namespaced,
    status = "BackupScheduleStatus",
    printcolumn = r#"{"name":"Schedule","type":"string","description":"The cron format string used for backup scheduling","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"MaxBackups","type":"integer","description":"The max number of backups we want to keep","jsonPath":".spec.maxBackups"}"#,
    printcolumn = r#"{"name":"MaxReservedTime","type":"string","description":"How long backups we want to keep","jsonPath":".spec.maxReservedTime"}"#,
    printcolumn = r#"{"name":"LastBackup","type":"string","description":"The last backup CR name","jsonPath":".status.lastBackup","priority":1}"#,
    printcolumn = r#"{"name":"LastBackupTime","type":"date","description":"The last time the backup was successfully created","jsonPath":".status.lastBackupTime","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BackupScheduleSpec {
    /// When to create a Backup: five cron fields, a descriptor such as `@daily`, or `@every 1h`.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new(CRON_RULE).message("spec.schedule must be a cron expression of five fields, a descriptor (@hourly, @daily, @weekly, @monthly, @yearly) or @every <duration>"))]
    pub schedule: String,
    /// Stop creating Backups (retention still runs).
    #[serde(default)]
    pub pause: bool,
    /// Keep at most this many backups (0: no limit). Only `Complete` backups count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_backups: Option<i32>,
    /// Keep backups for this long (a Go duration such as `72h`); preferred over `maxBackups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$')").message("spec.maxReservedTime must be a duration such as 24h, 72h or 90m"))]
    pub max_reserved_time: Option<String>,
    pub backup_template: BackupSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_size: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BackupScheduleStatus {
    /// Name of the last Backup created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// The scheduled time of the last Backup created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<Time>,
    /// When retention removed every backup of the schedule (TiDB Operator's anchor for the next run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_backup_clean_time: Option<Time>,
}

impl BackupSchedule {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.annotations.as_ref()?.get(key).map(String::as_str)
    }

    pub fn is_volume_snapshot(&self) -> bool {
        self.spec.backup_template.backup_mode == super::BackupMode::VolumeSnapshot
    }
}
