//! tidb-ebs-backup: backs up TiDB clusters on EKS by taking EBS snapshots, driven by TiDB Operator's
//! `Backup` custom resource with `backupMode: volume-snapshot`.

pub mod api;
pub mod aws;
pub mod backup;
pub mod k8s;
pub mod metrics;
pub mod pd;
