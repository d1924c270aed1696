//! What this operator has done for a Backup, persisted on the Backup itself before the next side effect.
//!
//! It lives in an annotation rather than in `.status`: TiDB Operator's own Backup CRD has a closed status
//! schema that would prune fields it does not know, and its controller rewrites status with full updates.
//! Annotations survive both. The human-facing truth (phase, conditions, progress) is in `.status`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::Backup;
use crate::k8s::volumes::{PdVolume, TikvStoreVolumes};
use crate::reason::{Reason, Reasoned};

pub const RECORD_ANNOTATION: &str = "tidb-ebs-backup/record";

/// Records up to this size are plain JSON, for people reading them; larger ones (hundreds of stores)
/// are gzipped and base64-encoded behind `COMPRESSED_PREFIX`, so that even 300 stores × 3 volumes
/// stay well inside the API server's 256 KiB for all of a Backup's annotations.
const PLAIN_LIMIT: usize = 64 * 1024;
const COMPRESSED_PREFIX: &str = "gzip+base64:";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not the record's JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a compressed record: {0}")]
    Encoding(String),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// Unix seconds when this operator started working on the Backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<SnapshotPlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ts: Option<u64>,
    /// TiKV's prepare for the snapshots, taken before the resolved ts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare: Option<PrepareRecord>,
    /// Instances a CreateSnapshots call was (or may have been) sent for; their snapshots are looked
    /// up by tag before any second call, as CreateSnapshots has no idempotency token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot_requests: Vec<String>,
    /// Unix seconds when the last round of CreateSnapshots calls was sent: a process that takes over
    /// waits until calls of that round can no longer be in flight before it looks them up and resends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots_requested_at: Option<i64>,
    /// Unix seconds by which every call of the last round is sent or given up (calls are paced by the
    /// token bucket, so a round's calls do not all leave at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots_sent_by: Option<i64>,
    /// volume id -> snapshot id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<String, String>,
    #[serde(default)]
    pub resumed: bool,
    #[serde(default)]
    pub meta_written: bool,
    /// A failure decided but not yet fully handled (resume, delete snapshots) when the operator stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Snapshots deleted while handling a failure or a deletion.
    #[serde(default)]
    pub snapshots_deleted: bool,
    /// TiDB Operator claimed this Backup and that has been reported.
    #[serde(default)]
    pub interference_reported: bool,
    /// The spec as it was when the backup started: bucket, prefix, region, credentials and mode are used
    /// from here to the end, so an edit mid-flight can never strand a pause or split the data. Only
    /// `cleanPolicy` and `cleanOption` are taken live (TiDB Operator lets them change after a backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<crate::api::BackupSpec>,
    /// A transient problem being ridden out (since when, and what), so that it is bounded across requeues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transient: Option<Transient>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transient {
    pub since: i64,
    pub reason: Reason,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }

    /// An error as a failure, its message led by what was being done.
    pub fn doing(what: impl fmt::Display, error: &impl Reasoned) -> Self {
        Self::new(error.reason(), format!("{what}: {error}"))
    }
}

impl<E: Reasoned> From<E> for Failure {
    fn from(error: E) -> Self {
        Self::new(error.reason(), error.to_string())
    }
}

/// What is to be snapshotted: one CreateSnapshots per instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPlan {
    pub cluster_namespace: String,
    pub cluster: String,
    pub pd_url: String,
    pub cluster_version: String,
    pub stores: Vec<TikvStoreVolumes>,
    pub pd_volumes: Vec<PdVolume>,
    pub instances: Vec<InstancePlan>,
    /// volume id -> availability zone.
    pub volume_az: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareRecord {
    pub stores: usize,
    pub regions: usize,
    pub wait_apply_ms: u64,
    /// Set when the stores do not serve the prepare stream (TiKV older than the feature): the backup
    /// goes on with PD's pause only, as the BR of that version does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstancePlan {
    pub instance_id: String,
    pub volume_ids: Vec<String>,
    /// Other data volumes attached to the instance, which must not be snapshotted.
    pub exclude_volume_ids: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseRecord {
    pub service_safepoint_id: String,
    pub ttl_seconds: u64,
    /// Unix seconds when the pause began.
    pub paused_at: i64,
    /// Unix seconds of the last successful (re)pause.
    pub refreshed_at: i64,
    pub schedulers: Vec<String>,
    pub paused_config: Map<String, Value>,
    pub original_config: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safepoint: Option<u64>,
}

impl BackupRecord {
    pub fn of(backup: &Backup) -> Result<Self, RecordError> {
        match backup.annotations().get(RECORD_ANNOTATION) {
            Some(value) => Self::from_annotation(value),
            None => Ok(Self::default()),
        }
    }

    pub fn from_annotation(value: &str) -> Result<Self, RecordError> {
        let Some(encoded) = value.strip_prefix(COMPRESSED_PREFIX) else { return Ok(serde_json::from_str(value)?) };
        use base64::Engine;
        let gzipped = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| RecordError::Encoding(e.to_string()))?;
        Ok(serde_json::from_reader(flate2::read::GzDecoder::new(gzipped.as_slice()))?)
    }

    pub fn to_annotation(&self) -> String {
        let json = serde_json::to_string(self).expect("record serialises");
        if json.len() <= PLAIN_LIMIT {
            return json;
        }
        use base64::Engine;
        use std::io::Write;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(json.as_bytes()).expect("writing to memory");
        let gzipped = gzip.finish().expect("writing to memory");
        format!("{COMPRESSED_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(gzipped))
    }

    pub fn paused(&self) -> bool {
        self.pause.is_some() && !self.resumed
    }

    pub fn all_snapshots_created(&self) -> bool {
        self.plan.as_ref().is_some_and(|plan| plan.instances.iter().flat_map(|i| &i.volume_ids).all(|v| self.snapshots.contains_key(v)))
    }

    pub fn instances_without_snapshots(&self) -> Vec<&InstancePlan> {
        self.plan
            .as_ref()
            .map(|plan| plan.instances.iter().filter(|i| i.volume_ids.iter().any(|v| !self.snapshots.contains_key(v))).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> SnapshotPlan {
        SnapshotPlan {
            cluster_namespace: "ns".into(),
            cluster: "basic".into(),
            pd_url: "http://pd".into(),
            cluster_version: "8.5.5".into(),
            stores: vec![],
            pd_volumes: vec![],
            instances: vec![
                InstancePlan { instance_id: "i-1".into(), volume_ids: vec!["vol-a".into(), "vol-b".into()], exclude_volume_ids: vec![] },
                InstancePlan { instance_id: "i-2".into(), volume_ids: vec!["vol-c".into()], exclude_volume_ids: vec![] },
            ],
            volume_az: BTreeMap::new(),
        }
    }

    #[test]
    fn tracks_which_instances_still_need_snapshots() {
        let mut record = BackupRecord { plan: Some(plan()), ..Default::default() };
        assert_eq!(record.instances_without_snapshots().len(), 2);
        record.snapshots.insert("vol-a".into(), "snap-a".into());
        assert_eq!(record.instances_without_snapshots().len(), 2, "i-1 is only half done");
        record.snapshots.insert("vol-b".into(), "snap-b".into());
        record.snapshots.insert("vol-c".into(), "snap-c".into());
        assert!(record.instances_without_snapshots().is_empty());
        assert!(record.all_snapshots_created());
    }

    /// 300 stores × 3 volumes with names of real lengths, every snapshot taken.
    fn large_record() -> BackupRecord {
        use crate::k8s::volumes::{StoreVolume, TikvStoreVolumes};
        let id = |prefix: &str, n: usize| format!("{prefix}-{n:017x}");
        let mut record = BackupRecord { resolved_ts: Some(470858230731374593), ..Default::default() };
        let mut plan = plan();
        plan.instances.clear();
        for store in 0..300 {
            let volume_ids: Vec<String> = (0..3).map(|v| id("vol", store * 3 + v)).collect();
            let volumes = volume_ids
                .iter()
                .enumerate()
                .map(|(v, volume_id)| StoreVolume {
                    volume_id: volume_id.clone(),
                    type_: ["tikv", "raft-engine", "logs"][v].into(),
                    mount_path: ["/var/lib/tikv", "/var/lib/raft", "/var/log/tikv"][v].into(),
                    pvc: format!("tikv-basic-tikv-{store}"),
                    pv: format!("pvc-{}", uuid_like(store * 3 + v)),
                })
                .collect();
            plan.stores.push(TikvStoreVolumes { store_id: 1000 + store as u64, pod: format!("basic-tikv-{store}"), volumes });
            for volume_id in &volume_ids {
                plan.volume_az.insert(volume_id.clone(), "us-east-1a".into());
                record.snapshots.insert(volume_id.clone(), id("snap", store));
            }
            record.snapshot_requests.push(id("i", store));
            plan.instances.push(InstancePlan { instance_id: id("i", store), volume_ids, exclude_volume_ids: vec![id("vol-root", store)] });
        }
        record.plan = Some(plan);
        record
    }

    fn uuid_like(n: usize) -> String {
        format!("{n:08x}-0000-4000-8000-{n:012x}")
    }

    #[test]
    fn the_record_of_a_300_store_cluster_fits_the_annotation_limit() {
        // The API server allows 256 KiB for all annotations together; kubectl's last-applied copy of the
        // spec and others need some of it.
        let record = large_record();
        let annotation = record.to_annotation();
        assert!(annotation.len() < 64 * 1024, "{} bytes", annotation.len());
        assert_eq!(BackupRecord::from_annotation(&annotation).unwrap(), record);
        let small = BackupRecord { plan: Some(plan()), ..Default::default() };
        assert!(small.to_annotation().starts_with('{'), "small records stay readable");
    }

    #[test]
    fn round_trips_through_the_annotation() {
        let record = BackupRecord { plan: Some(plan()), resolved_ts: Some(42), ..Default::default() };
        let back: BackupRecord = serde_json::from_str(&record.to_annotation()).unwrap();
        assert_eq!(back, record);
    }
}
