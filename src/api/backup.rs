use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Finalizer TiDB Operator uses for the same purpose; we take over that role for volume-snapshot Backups.
pub const BACKUP_PROTECTION_FINALIZER: &str = "tidb.pingcap.com/backup-protection";
/// Annotation naming the IAM role to assume for this Backup (kube2iam / kiam convention TiDB Operator follows).
pub const IAM_ROLE_ANNOTATION: &str = "iam.amazonaws.com/role";
pub const DEFAULT_SERVICE_ACCOUNT: &str = "tidb-backup-manager";

/// A TiDB Operator `Backup`. Only `backupMode: volume-snapshot` is acted on by this operator.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "pingcap.com",
    version = "v1alpha1",
    kind = "Backup",
    plural = "backups",
    singular = "backup",
    shortname = "bk",
    namespaced,
    status = "BackupStatus",
    printcolumn = r#"{"name":"Type","type":"string","description":"the type of backup, such as full, db, table. Only used when Mode = snapshot.","jsonPath":".spec.backupType"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","description":"the mode of backup, such as snapshot, log.","jsonPath":".spec.backupMode"}"#,
    printcolumn = r#"{"name":"Status","type":"string","description":"The current status of the backup","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"BackupPath","type":"string","description":"The full path of backup data","jsonPath":".status.backupPath"}"#,
    printcolumn = r#"{"name":"BackupSize","type":"string","description":"The data size of the backup","jsonPath":".status.backupSizeReadable"}"#,
    printcolumn = r#"{"name":"IncrementalBackupSize","type":"string","description":"The real size of volume snapshot backup, only valid to volume snapshot backup","jsonPath":".status.incrementalBackupSizeReadable","priority":10}"#,
    printcolumn = r#"{"name":"CommitTS","type":"string","description":"The commit ts of the backup","jsonPath":".status.commitTs"}"#,
    printcolumn = r#"{"name":"LogTruncateUntil","type":"string","description":"The log backup truncate until ts","jsonPath":".status.logSuccessTruncateUntil"}"#,
    printcolumn = r#"{"name":"Started","type":"date","description":"The time at which the backup was started","jsonPath":".status.timeStarted","priority":1}"#,
    printcolumn = r#"{"name":"Completed","type":"date","description":"The time at which the backup was completed","jsonPath":".status.timeCompleted","priority":1}"#,
    printcolumn = r#"{"name":"TimeTaken","type":"string","description":"The time that the backup takes","jsonPath":".status.timeTaken"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
#[x_kube(validation = Rule::new("self.backupMode != 'volume-snapshot' || has(self.s3)").message("a volume-snapshot backup needs spec.s3: the backupmeta is written to S3"))]
#[x_kube(validation = Rule::new("self.backupMode != 'volume-snapshot' || !has(self.backupType) || self.backupType in ['', 'full']").message("a volume-snapshot backup is always a full backup: spec.backupType must be empty or 'full'"))]
pub struct BackupSpec {
    #[serde(default = "default_backup_mode")]
    pub backup_mode: BackupMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['', 'full', 'db', 'table', 'raw', 'tiflash-replica']").message("spec.backupType must be one of full, db, table"))]
    pub backup_type: Option<String>,
    /// Which TidbCluster to back up.
    pub br: BrConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3StorageProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "opaque_object")]
    pub gcs: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "opaque_object")]
    pub azblob: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "opaque_object")]
    pub local: Option<serde_json::Value>,
    /// ServiceAccount whose `eks.amazonaws.com/role-arn` (IRSA) gives this Backup its AWS identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account: Option<String>,
    #[serde(default)]
    pub clean_policy: CleanPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_option: Option<CleanOption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_image: Option<String>,
    /// How long GC and scheduling may stay paused, in seconds: a backup whose snapshots have not all
    /// started by then fails and resumes PD. PD's own TTL for the pause is the operator's `--pause-ttl-seconds`.
    #[serde(default = "default_pause_seconds")]
    #[schemars(range(min = 30, max = 86400))]
    pub volume_backup_init_job_max_active_seconds: i64,
    #[serde(default)]
    pub calc_size_level: CalcSizeLevel,
    /// Set on TiDB Operator's federated members; those belong to TiDB Operator, not to us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federal_volume_backup_phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_gc_schedule: Option<bool>,
}

fn default_backup_mode() -> BackupMode {
    BackupMode::Snapshot
}

fn default_pause_seconds() -> i64 {
    600
}

fn opaque_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum BackupMode {
    #[default]
    #[serde(rename = "snapshot")]
    Snapshot,
    #[serde(rename = "log")]
    Log,
    #[serde(rename = "volume-snapshot")]
    VolumeSnapshot,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum CleanPolicy {
    #[default]
    Retain,
    OnFailure,
    Delete,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CalcSizeLevel {
    #[default]
    All,
    Full,
    Incremental,
    Disabled,
}

impl CalcSizeLevel {
    pub fn full(self) -> bool {
        matches!(self, Self::All | Self::Full)
    }
    pub fn incremental(self) -> bool {
        matches!(self, Self::All | Self::Incremental)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BrConfig {
    /// Name of the TidbCluster.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub cluster: String,
    /// Namespace of the TidbCluster; defaults to the Backup's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"))]
    pub cluster_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rate_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ago: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_requirements: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_cred_to_tikv: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_line: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
#[x_kube(validation = Rule::new("(has(self.bucket) && self.bucket != '') || (has(self.path) && self.path != '')").message("spec.s3.bucket is required (or the legacy spec.s3.path as <bucket>/<prefix>)"))]
#[x_kube(validation = Rule::new("self.provider != 'aws' || !has(self.bucket) || self.bucket.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$')").message("spec.s3.bucket is not a valid S3 bucket name (3-63 characters: lowercase letters, digits, dots, hyphens)"))]
pub struct S3StorageProvider {
    /// `aws`, `ceph`, ... TiDB Operator's S3-compatible provider name.
    #[schemars(length(min = 1))]
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Legacy `<bucket>/<prefix>` form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("spec.s3.path must not contain '..' segments"))]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<String>,
    /// Secret in the Backup's namespace with `access_key` and `secret_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("spec.s3.prefix must not contain '..' segments"))]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
}

impl S3StorageProvider {
    /// Bucket and prefix, from `bucket`/`prefix` or the legacy `path` (`<bucket>/<prefix>`).
    pub fn bucket_and_prefix(&self) -> Option<(String, String)> {
        let trim = |s: &str| s.trim_matches('/').to_string();
        match (&self.bucket, &self.path) {
            (Some(bucket), _) if !bucket.is_empty() => Some((bucket.clone(), self.prefix.as_deref().map(trim).unwrap_or_default())),
            (_, Some(path)) if !path.is_empty() => {
                let path = trim(path);
                let (bucket, rest) = path.split_once('/').unwrap_or((&path, ""));
                let prefix =
                    [rest, self.prefix.as_deref().unwrap_or("")].iter().map(|p| trim(p)).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("/");
                Some((bucket.to_string(), prefix))
            }
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct CleanOption {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub page_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub retry_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_batch_concurrency: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub batch_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub routine_concurrency: Option<u32>,
    /// Snapshots deleted per second during cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 100.0").message("spec.cleanOption.snapshotsDeleteRatio must be > 0 and <= 100 (snapshots deleted per second)"))]
    pub snapshots_delete_ratio: Option<f64>,
}

/// `BackupStatus` as TiDB Operator defines it. Unknown status fields are preserved by the schema
/// and never written back by us (we send merge patches of the fields we own).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_started: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_completed: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_taken: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_size_readable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_backup_size_readable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_backup_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_ts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_success_truncate_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub phase: Option<ConditionType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<BackupCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progresses: Vec<Progress>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupCondition {
    #[serde(rename = "type")]
    #[schemars(with = "String")]
    pub type_: ConditionType,
    #[schemars(with = "String")]
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub step: String,
    pub progress: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// TiDB Operator's `BackupConditionType`; `phase` always holds one of these.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum ConditionType {
    Scheduled,
    Running,
    Complete,
    Clean,
    Repeatable,
    Failed,
    RetryFailed,
    CleanFailed,
    Invalid,
    Prepare,
    Paused,
    Stopped,
    Restart,
    VolumeBackupInitialized,
    VolumeBackupInitializeFailed,
    VolumeBackupSnapshotsCreated,
    VolumeBackupInitializeComplete,
    VolumeBackupComplete,
    VolumeBackupFailed,
    /// A value written by a newer TiDB Operator; kept as is.
    #[serde(untagged)]
    Other(String),
}

impl ConditionType {
    /// A finished backup: nothing more will happen until it is deleted.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Complete | Self::Failed | Self::Invalid | Self::VolumeBackupFailed)
    }
}

impl Backup {
    pub fn is_volume_snapshot(&self) -> bool {
        self.spec.backup_mode == BackupMode::VolumeSnapshot
    }

    /// Namespace of the TidbCluster (defaults to the Backup's own).
    pub fn cluster_namespace(&self) -> String {
        self.spec.br.cluster_namespace.clone().filter(|ns| !ns.is_empty()).or_else(|| self.metadata.namespace.clone()).unwrap_or_default()
    }

    pub fn annotations(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.metadata.annotations.as_ref().unwrap_or(&EMPTY)
    }

    pub fn phase(&self) -> Option<&ConditionType> {
        self.status.as_ref().and_then(|s| s.phase.as_ref())
    }
}
