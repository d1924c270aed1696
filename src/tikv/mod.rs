//! TiKV's prepare-for-snapshot-backup protocol (kvproto `backup.Backup/PrepareSnapshotBackup`), driven
//! as BR drives it: a stream to every store holds a lease under which TiKV refuses splits, merges, conf
//! changes and ingests; every region is waited on until it has applied its log; the lease is renewed
//! every quarter of it and finished right after the CreateSnapshots calls. A lease nobody renews (the
//! operator died) lapses in TiKV by itself.
//!
//! `Tikv` opens one store's stream (`grpc` over tonic; a fake in the testkit); `prepare` runs the
//! protocol over all of a cluster's stores.

pub mod grpc;
pub mod prepare;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use crate::reason::{Reason, Reasoned};

pub mod proto {
    tonic::include_proto!("backup");
}

pub use proto::{PrepareSnapshotBackupRequest as PrepareRequest, PrepareSnapshotBackupResponse as PrepareResponse};

/// One store's open stream: requests go into `requests`, TiKV's answers come out of `responses`.
pub struct StoreStream {
    pub requests: mpsc::Sender<PrepareRequest>,
    pub responses: BoxStream<'static, Result<PrepareResponse, tonic::Status>>,
}

#[async_trait]
pub trait Tikv: Send + Sync {
    /// Opens the prepare stream of the store at `address` (PD's address of the store).
    async fn open(&self, store_id: u64, address: &str) -> Result<StoreStream, TikvError>;
}

#[derive(Debug, thiserror::Error)]
pub enum TikvError {
    #[error("TiKV store {store} at {address} cannot be reached: {message}")]
    Connect { store: u64, address: String, message: String },
    #[error("TiKV store {store} does not serve PrepareSnapshotBackup ({message})")]
    Unsupported { store: u64, message: String },
    #[error("TiKV store {store}: the prepare stream failed: {message}")]
    Stream { store: u64, message: String },
    #[error("TiKV store {store}: the lease lapsed (TiKV left the prepared state)")]
    LeaseLapsed { store: u64 },
    #[error("waiting for the regions to apply took longer than {seconds}s; still waiting on {pending}")]
    WaitApplyTimeout { seconds: u64, pending: String },
    #[error("listing the regions in PD: {0}")]
    Pd(String),
}

impl Reasoned for TikvError {
    fn reason(&self) -> Reason {
        match self {
            TikvError::Unsupported { .. } => Reason::TiKVPrepareUnsupported,
            TikvError::LeaseLapsed { .. } => Reason::TiKVLeaseLapsed,
            TikvError::WaitApplyTimeout { .. } => Reason::WaitApplyTimeout,
            _ => Reason::TiKVPrepareFailed,
        }
    }
}

/// The first TiKV release whose every patch serves the prepare stream (tikv#15946 went into v7.6.0;
/// it was also cherry-picked into some 6.5, 7.1 and 7.5 patches, which are tried and may answer
/// `Unimplemented`).
pub const PREPARE_REQUIRED_FROM: (u64, u64) = (7, 6);

/// Whether a store of this version must serve the prepare stream (older ones may not).
pub fn prepare_required(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= PREPARE_REQUIRED_FROM
}

#[cfg(test)]
mod tests {
    use super::prepare_required;

    #[test]
    fn stores_from_v7_6_must_serve_the_prepare_stream() {
        for (version, required) in [("8.5.5", true), ("v7.6.0", true), ("7.5.3", false), ("6.5.10", false), ("", false), ("9.0.0-beta.1", true)] {
            assert_eq!(prepare_required(version), required, "{version}");
        }
    }
}
