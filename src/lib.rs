//! tidb-ebs-backup: backs up TiDB clusters on EKS by taking EBS snapshots, driven by TiDB Operator's
//! `Backup` custom resource with `backupMode: volume-snapshot`.

pub mod api;
pub mod aws;
pub mod backup;
pub mod k8s;
pub mod metrics;
pub mod pd;
pub mod reason;
pub mod schedule;
#[cfg(test)]
pub(crate) mod testkit;
pub mod tikv;

/// A point where the crash-point tests kill the operator: built with the `failpoints` feature and run
/// with `FAILPOINTS=<name>=return`, the process aborts there. Without the feature it is nothing.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| {
            eprintln!(concat!("crash point ", $name, ": aborting"));
            std::process::abort()
        });
    };
}
