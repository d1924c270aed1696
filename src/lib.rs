//! tidb-ebs-backup: backs up TiDB clusters on EKS by taking EBS snapshots, driven by TiDB Operator's
//! `Backup` custom resource with `backupMode: volume-snapshot`.

pub mod api;
pub mod aws;
pub mod backup;
pub mod k8s;
pub mod metrics;
pub mod pd;
pub mod reason;
#[cfg(test)]
pub(crate) mod testkit;

/// Picks rustls's process-wide crypto provider. Both `ring` (kube, reqwest) and `aws-lc-rs` (the AWS
/// SDK) are linked, so rustls cannot choose by itself; call this before creating any client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

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
