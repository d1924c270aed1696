//! AWS: EC2 snapshots, EBS direct APIs (sizes), S3 (backupmeta) and STS (per-Backup credentials).
//! The reconciler sees only the `Snapshots` and `MetaStore` traits.

pub mod credentials;
pub mod ec2;
pub mod rate;
pub mod retry;
pub mod s3;
pub mod sdk;

use crate::reason::{Reason, Reasoned};
use std::time::SystemTime;

use async_trait::async_trait;

pub use credentials::{AwsIdentity, AwsSettings, CredentialSource};
pub use ec2::Ec2Snapshots;
pub use s3::S3MetaStore;
pub use sdk::config_loader;

#[derive(Clone, Debug, thiserror::Error)]
pub enum AwsError {
    /// AWS refused for now (rate or quota); worth waiting and retrying.
    #[error("AWS {operation} throttled ({code}): {message}")]
    Throttled { operation: &'static str, code: String, message: String },
    #[error("AWS {operation} failed ({code}): {message}")]
    Service { operation: &'static str, code: String, message: String },
    #[error("AWS {operation} could not be sent: {message}")]
    Transport { operation: &'static str, message: String },
    #[error("{0}")]
    Unexpected(String),
    #[error("AWS credentials: {0}")]
    Credentials(String),
}

/// Error codes that mean "not now": AWS request throttling and the snapshot quotas that clear by themselves.
pub const THROTTLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "SlowDown",
    "PendingSnapshotLimitExceeded",
    "ConcurrentSnapshotLimitExceeded",
    "SnapshotCreationPerVolumeRateExceeded",
];

/// Codes of AWS's own failures (HTTP 5xx): the request may or may not have been carried out.
pub const SNAPSHOT_QUOTA_CODES: &[&str] =
    &["PendingSnapshotLimitExceeded", "ConcurrentSnapshotLimitExceeded", "SnapshotCreationPerVolumeRateExceeded"];
pub const SERVER_ERROR_CODES: &[&str] = &["InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "Unknown"];

impl AwsError {
    pub fn from_sdk<E, R>(operation: &'static str, err: aws_sdk_ec2::error::SdkError<E, R>) -> Self
    where
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        use aws_sdk_ec2::error::SdkError;
        match &err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                let code = e.code().unwrap_or("Unknown").to_string();
                let message = e.message().unwrap_or_default().to_string();
                if THROTTLE_CODES.contains(&code.as_str()) {
                    Self::Throttled { operation, code, message }
                } else {
                    Self::Service { operation, code, message }
                }
            }
            _ => Self::Transport { operation, message: aws_smithy_types::error::display::DisplayErrorContext(&err).to_string() },
        }
    }

    pub fn is_throttle(&self) -> bool {
        matches!(self, Self::Throttled { .. })
    }

    /// A snapshot quota (pending snapshots per Region or per volume, snapshots per volume and time): it
    /// clears only as snapshots complete, which can take far longer than a pause may last.
    pub fn is_snapshot_quota(&self) -> bool {
        matches!(self.code(), Some(code) if SNAPSHOT_QUOTA_CODES.contains(&code))
    }

    /// Whether the request may have taken effect although no answer says so (a lost reply, a timeout, a
    /// server error): before sending a non-idempotent call again, look for what it may have done.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Service { code, .. } => SERVER_ERROR_CODES.contains(&code.as_str()),
            _ => false,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Throttled { code, .. } | Self::Service { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl Reasoned for AwsError {
    fn reason(&self) -> Reason {
        match self {
            Self::Throttled { .. } => Reason::AWSThrottled,
            Self::Service { .. } => Reason::AWSRequestFailed,
            Self::Transport { .. } => Reason::AWSUnreachable,
            Self::Unexpected(_) => Reason::AWSUnexpectedAnswer,
            Self::Credentials(_) => Reason::AWSCredentialsFailed,
        }
    }
}

pub type Result<T, E = AwsError> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub volume_id: String,
    pub availability_zone: String,
    pub size_gib: i64,
    /// Instance the volume is attached to, if any.
    pub instance_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
    Other,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInfo {
    pub snapshot_id: String,
    pub volume_id: String,
    pub state: SnapshotState,
    /// 0..=100.
    pub progress: f64,
    pub full_size_bytes: Option<u64>,
    pub volume_size_gib: i64,
    pub start_time: Option<SystemTime>,
    pub state_message: Option<String>,
    pub tags: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSnapshot {
    pub snapshot_id: String,
    pub volume_id: String,
}

/// EC2 snapshot operations and the EBS direct APIs used for sizes.
#[async_trait]
pub trait Snapshots: Send + Sync {
    async fn describe_volumes(&self, volume_ids: &[String]) -> Result<Vec<VolumeInfo>>;
    /// EBS data volume ids attached to the instance (its root volume left out).
    async fn instance_volumes(&self, instance_id: &str) -> Result<Vec<String>>;
    /// One crash-consistent multi-volume snapshot of the instance, skipping its boot volume and `exclude`.
    async fn create_snapshots(&self, instance_id: &str, exclude_volume_ids: &[String], tags: &[(String, String)]) -> Result<Vec<CreatedSnapshot>>;
    async fn describe_snapshots(&self, snapshot_ids: &[String]) -> Result<Vec<SnapshotInfo>>;
    /// Snapshots owned by this account carrying tag `key=value`.
    async fn find_snapshots_by_tag(&self, key: &str, value: &str) -> Result<Vec<SnapshotInfo>>;
    /// Snapshots owned by this account carrying tag `key`, whatever its value.
    async fn find_snapshots_with_tag_key(&self, key: &str) -> Result<Vec<SnapshotInfo>>;
    /// Completed snapshots of a volume, oldest first.
    async fn completed_snapshots_of_volume(&self, volume_id: &str) -> Result<Vec<SnapshotInfo>>;
    /// This account's snapshots still pending in the Region (they count against its pending quota).
    async fn pending_snapshots(&self) -> Result<Vec<SnapshotInfo>>;
    /// Deletes a snapshot; one that no longer exists counts as deleted.
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()>;
    /// Bytes held by a snapshot (EBS ListSnapshotBlocks).
    async fn snapshot_block_bytes(&self, snapshot_id: &str) -> Result<u64>;
    /// Bytes changed from `first` to `second` (EBS ListChangedBlocks).
    async fn changed_block_bytes(&self, first_snapshot_id: &str, second_snapshot_id: &str) -> Result<u64>;
}

/// The object store under the Backup's bucket/prefix.
#[async_trait]
pub trait MetaStore: Send + Sync {
    /// Fails with `Service { code: "NoSuchBucket" | "AccessDenied" ... }` when the bucket cannot be used.
    async fn check_bucket(&self) -> Result<()>;
    async fn exists(&self, key: &str) -> Result<bool>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Writes `key` unless it exists; returns false when it already existed.
    async fn put_if_absent(&self, key: &str, body: Vec<u8>) -> Result<bool>;
    async fn delete(&self, key: &str) -> Result<()>;
    fn location(&self) -> String;
}
