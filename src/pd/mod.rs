//! PD, the TiDB cluster's placement driver: stores, scheduling pause, config with TTL, min resolved ts
//! and service GC safepoints. HTTP for most calls, gRPC for the service safepoint (PD has no HTTP setter).

mod client;
mod pause;
pub mod version;

pub use client::{PdClient, PdEndpoint, PdTls};
pub use pause::{PAUSED_CONFIG, SCHEDULERS_TO_PAUSE, pause_config_values};

use crate::reason::{Reason, Reasoned};
use async_trait::async_trait;

pub mod proto {
    tonic::include_proto!("pdpb");
}

#[derive(Debug, thiserror::Error)]
pub enum PdError {
    #[error("PD at {url} is unreachable: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("PD answered {status} to {what}: {body}")]
    Status { what: String, status: u16, body: String },
    #[error("PD gave an unexpected answer to {what}: {detail}")]
    Decode { what: String, detail: String },
    #[error("PD gRPC {what}: {source}")]
    Grpc { what: String, source: tonic::Status },
    #[error("PD gRPC connection to {url}: {source}")]
    Connect { url: String, source: tonic::transport::Error },
    #[error("PD gRPC {what} returned error {kind}: {message}")]
    Header { what: String, kind: String, message: String },
    #[error("PD TLS set-up: {0}")]
    Tls(String),
}

impl PdError {
    /// PD's answer when a scheduler to pause or resume does not exist: 500 with its error code
    /// `[PD:scheduler:ErrSchedulerNotFound]` (see `tests/harness/pd/OBSERVED.md`).
    pub fn is_scheduler_not_found(&self) -> bool {
        matches!(self, Self::Status { status: 500, body, .. } if body.contains("ErrSchedulerNotFound"))
    }
}

impl Reasoned for PdError {
    fn reason(&self) -> Reason {
        match self {
            Self::Unreachable { .. } | Self::Connect { .. } => Reason::PDUnreachable,
            Self::Grpc { .. } | Self::Header { .. } => Reason::PDGrpcFailed,
            Self::Status { .. } | Self::Decode { .. } => Reason::PDRequestFailed,
            Self::Tls(_) => Reason::PDTLSConfigInvalid,
        }
    }
}

pub type Result<T, E = PdError> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    pub id: u64,
    pub address: String,
    pub state_name: String,
    pub version: String,
    pub labels: Vec<(String, String)>,
}

impl Store {
    pub fn is_tiflash(&self) -> bool {
        self.labels.iter().any(|(k, v)| k == "engine" && v.starts_with("tiflash"))
    }
}

/// A region as PD lists it: key range, epoch, peers (peer id, store id) and the leader's store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Region {
    pub id: u64,
    pub start_key: Vec<u8>,
    pub end_key: Vec<u8>,
    pub conf_ver: u64,
    pub version: u64,
    pub peers: Vec<(u64, u64)>,
    pub leader_store: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinResolvedTs {
    pub ts: u64,
    pub is_real_time: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSafepoint {
    pub service_id: String,
    pub expired_at: i64,
    pub safe_point: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcSafepoints {
    pub gc_safe_point: u64,
    pub service_safe_points: Vec<ServiceSafepoint>,
}

/// Outcome of `UpdateServiceGCSafePoint`: PD replies with the minimum entry after the update, and
/// silently ignores a requested safepoint below that minimum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafepointUpdate {
    pub min_service_id: String,
    pub min_safe_point: u64,
}

#[async_trait]
pub trait Pd: Send + Sync {
    /// PD's cluster version (`8.5.5`, no `v`).
    async fn cluster_version(&self) -> Result<String>;
    async fn stores(&self) -> Result<Vec<Store>>;
    async fn schedulers(&self) -> Result<Vec<String>>;
    async fn paused_schedulers(&self) -> Result<Vec<String>>;
    /// Pauses for `delay_seconds`; 0 resumes.
    async fn pause_scheduler(&self, name: &str, delay_seconds: u64) -> Result<()>;
    async fn schedule_config(&self) -> Result<serde_json::Map<String, serde_json::Value>>;
    /// Sets dotted config keys with a TTL; `ttl_seconds = 0` removes the overrides of those keys.
    async fn set_config_with_ttl(&self, values: &serde_json::Map<String, serde_json::Value>, ttl_seconds: u64) -> Result<()>;
    /// Running operators (PD's descriptions); empty when scheduling is quiet.
    async fn operators(&self) -> Result<Vec<String>>;
    async fn min_resolved_ts(&self) -> Result<MinResolvedTs>;
    /// `ttl_seconds = 0` removes `service_id`'s safepoint.
    async fn update_service_safepoint(&self, service_id: &str, ttl_seconds: i64, safe_point: u64) -> Result<SafepointUpdate>;
    async fn gc_safepoints(&self) -> Result<GcSafepoints>;
    /// Every region with its leader (`GET /pd/api/v1/regions`).
    async fn regions(&self) -> Result<Vec<Region>>;
}

#[cfg(test)]
mod tests {
    use super::PdError;

    #[test]
    fn a_missing_scheduler_is_told_by_pds_error_code() {
        let answer = |status, body: &str| PdError::Status { what: "pause".into(), status, body: body.into() };
        assert!(answer(500, "[PD:scheduler:ErrSchedulerNotFound]scheduler not found").is_scheduler_not_found());
        assert!(!answer(500, "[PD:server:ErrServerNotStarted]server not started").is_scheduler_not_found());
        assert!(!answer(404, "ErrSchedulerNotFound").is_scheduler_not_found());
    }
}
