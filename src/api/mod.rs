//! The Kubernetes API types this operator reads and writes.
//!
//! `Backup` is TiDB Operator's `pingcap.com/v1alpha1` kind; we model the fields that matter for
//! `backupMode: volume-snapshot` and let everything else pass through untouched (we only ever merge-patch).

pub mod backup;
pub mod backup_schedule;
pub mod condition;
pub mod format;
pub mod tidbcluster;

pub use backup::*;
pub use backup_schedule::{BackupSchedule, BackupScheduleSpec, BackupScheduleStatus};
