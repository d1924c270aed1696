//! The `backupmeta` object BR's and TiDB Operator's EBS restore read, and the tags on our snapshots.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use serde_json::{Value, json};

use super::record::{BackupRecord, SnapshotPlan};
use crate::api::Backup;

pub const META_FILE: &str = "backupmeta";
pub const TAG_BACKUP_UID: &str = "tidb-ebs-backup/backup-uid";
pub const TAG_BACKUP: &str = "tidb-ebs-backup/backup";
pub const TAG_CLUSTER: &str = "tidb-ebs-backup/cluster";
pub const TAG_INSTANCE: &str = "tidb-ebs-backup/instance";
/// `bucket/prefix` of the backup's `backupmeta`, so snapshots whose Backup is gone can still be checked
/// against it (left out when longer than EC2's 256-character tag values).
pub const TAG_LOCATION: &str = "tidb-ebs-backup/location";
/// The tag BR puts on its snapshots; kept so tooling that looks for BR snapshots finds ours too.
pub const TAG_BR: &str = "TiDBCluster-BR-Snapshot";

/// Tags for the snapshots of one instance, set by CreateSnapshots itself (so no snapshot of ours is ever
/// untagged). They identify the backup for clean-up and de-duplication; the store ids of the instance
/// are one comma-joined tag, and the per-volume details (store id, volume type) are in the backupmeta.
pub fn snapshot_tags(backup: &Backup, plan: &SnapshotPlan, instance_id: &str) -> Vec<(String, String)> {
    let namespace = backup.metadata.namespace.clone().unwrap_or_default();
    let name = backup.metadata.name.clone().unwrap_or_default();
    let uid = backup.metadata.uid.clone().unwrap_or_default();
    let stores: Vec<String> = plan
        .stores
        .iter()
        .filter(|s| plan.instances.iter().any(|i| i.instance_id == instance_id && s.volumes.iter().any(|v| i.volume_ids.contains(&v.volume_id))))
        .map(|s| s.store_id.to_string())
        .collect();
    let location = backup.spec.s3.as_ref().and_then(|s3| s3.bucket_and_prefix()).map(|(bucket, prefix)| format!("{bucket}/{prefix}"));
    let mut tags = vec![
        (TAG_BACKUP_UID.into(), uid),
        (TAG_BACKUP.into(), format!("{namespace}/{name}")),
        (TAG_CLUSTER.into(), format!("{}/{}", plan.cluster_namespace, plan.cluster)),
        (TAG_INSTANCE.into(), instance_id.into()),
        ("tidb-ebs-backup/store-id".into(), stores.join(",")),
        (TAG_BR.into(), "new".into()),
    ];
    if let Some(location) = location.filter(|l| l.len() <= 256) {
        tags.push((TAG_LOCATION.into(), location));
    }
    tags
}

/// Kubernetes objects as `backupmeta` records them: no status, no managedFields, no resourceVersion.
fn scrub<T: serde::Serialize>(object: &T) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
        metadata.remove("resourceVersion");
        metadata.remove("uid");
        metadata.remove("creationTimestamp");
        metadata.remove("generation");
    }
    value
}

pub struct MetaInputs<'a> {
    pub pvs: &'a [PersistentVolume],
    pub pvcs: &'a [PersistentVolumeClaim],
    pub tidbcluster: &'a Value,
    pub tikv_replicas: usize,
    pub pd_replicas: i64,
    pub tidb_replicas: i64,
}

/// `EBSBasedBRMeta` as JSON, keys in the order Go writes them.
pub fn build_backupmeta(record: &BackupRecord, inputs: &MetaInputs<'_>) -> Result<Value, String> {
    let plan = record.plan.as_ref().ok_or("no snapshot plan recorded")?;
    let resolved_ts = record.resolved_ts.filter(|ts| *ts > 0).ok_or("no resolved ts recorded")?;
    let stores: Vec<Value> = plan
        .stores
        .iter()
        .map(|store| {
            let volumes: Result<Vec<Value>, String> = store
                .volumes
                .iter()
                .map(|v| {
                    let snapshot_id = record.snapshots.get(&v.volume_id).ok_or(format!("no snapshot for volume {}", v.volume_id))?;
                    Ok(json!({
                        "volume_id": v.volume_id,
                        "type": v.type_,
                        "snapshot_id": snapshot_id,
                        "restore_volume_id": "",
                        "volume_az": plan.volume_az.get(&v.volume_id).cloned().unwrap_or_default(),
                        "status": "",
                    }))
                })
                .collect();
            Ok(json!({"store_id": store.store_id, "volumes": volumes?}))
        })
        .collect::<Result<_, String>>()?;
    let mut tidbcluster = scrub(inputs.tidbcluster);
    if let Some(object) = tidbcluster.as_object_mut() {
        object.remove("status");
    }
    Ok(json!({
        "cluster_info": {
            "cluster_version": plan.cluster_version,
            "full_backup_type": "aws-ebs",
            "resolved_ts": resolved_ts,
            "replicas": null,
        },
        "tikv": {"replicas": inputs.tikv_replicas, "stores": stores},
        "tidb": {"replicas": inputs.tidb_replicas},
        "pd": {"replicas": inputs.pd_replicas},
        "kubernetes": {
            "pvs": inputs.pvs.iter().map(scrub).collect::<Vec<_>>(),
            "pvcs": inputs.pvcs.iter().map(scrub).collect::<Vec<_>>(),
            "crd_tidb_cluster": tidbcluster,
            "options": null,
        },
        "options": null,
        "region": "",
    }))
}

/// Snapshot ids named in a `backupmeta`, for clean-up when our record is gone.
pub fn snapshot_ids_in_meta(meta: &Value) -> Vec<String> {
    meta["tikv"]["stores"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["volumes"].as_array().into_iter().flatten())
        .filter_map(|v| v["snapshot_id"].as_str().filter(|s| !s.is_empty()).map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::record::InstancePlan;
    use crate::k8s::volumes::{StoreVolume, TikvStoreVolumes};
    use std::collections::BTreeMap;

    fn record() -> BackupRecord {
        let volume = |id: &str, type_: &str| StoreVolume {
            volume_id: id.into(),
            type_: type_.into(),
            mount_path: "/var/lib/tikv".into(),
            pvc: format!("tikv-{id}"),
            pv: format!("pv-{id}"),
        };
        BackupRecord {
            plan: Some(SnapshotPlan {
                cluster_namespace: "ns".into(),
                cluster: "basic".into(),
                pd_url: "http://pd".into(),
                cluster_version: "8.5.5".into(),
                stores: vec![TikvStoreVolumes {
                    store_id: 4,
                    pod: "basic-tikv-0".into(),
                    volumes: vec![volume("vol-a", "storage.data-dir"), volume("vol-b", "raft-engine.dir")],
                }],
                pd_volumes: vec![],
                instances: vec![InstancePlan {
                    instance_id: "i-1".into(),
                    volume_ids: vec!["vol-a".into(), "vol-b".into()],
                    exclude_volume_ids: vec!["vol-x".into()],
                }],
                volume_az: BTreeMap::from([("vol-a".into(), "us-west-2a".into()), ("vol-b".into(), "us-west-2a".into())]),
            }),
            resolved_ts: Some(449_000_000_000_000_000),
            snapshots: BTreeMap::from([("vol-a".into(), "snap-a".into()), ("vol-b".into(), "snap-b".into())]),
            ..Default::default()
        }
    }

    #[test]
    fn backupmeta_has_what_br_restore_checks() {
        let tc = json!({"apiVersion": "pingcap.com/v1alpha1", "kind": "TidbCluster", "metadata": {"name": "basic", "managedFields": []}, "spec": {"tikv": {"replicas": 1}}, "status": {"x": 1}});
        let inputs = MetaInputs { pvs: &[], pvcs: &[], tidbcluster: &tc, tikv_replicas: 1, pd_replicas: 3, tidb_replicas: 2 };
        let meta = build_backupmeta(&record(), &inputs).unwrap();
        assert_eq!(meta["cluster_info"]["full_backup_type"], "aws-ebs");
        assert_eq!(meta["cluster_info"]["resolved_ts"], 449_000_000_000_000_000u64);
        assert_eq!(meta["tikv"]["stores"][0]["store_id"], 4);
        assert_eq!(meta["tikv"]["stores"][0]["volumes"][1]["snapshot_id"], "snap-b");
        assert_eq!(meta["tikv"]["stores"][0]["volumes"][0]["volume_az"], "us-west-2a");
        assert_eq!(meta["kubernetes"]["options"], Value::Null);
        assert!(meta["kubernetes"]["crd_tidb_cluster"].get("status").is_none());
        assert!(meta["kubernetes"]["crd_tidb_cluster"]["metadata"].get("managedFields").is_none());
        assert_eq!(snapshot_ids_in_meta(&meta), vec!["snap-a", "snap-b"]);
    }

    #[test]
    fn backupmeta_refuses_missing_snapshots_or_ts() {
        let tc = json!({});
        let inputs = MetaInputs { pvs: &[], pvcs: &[], tidbcluster: &tc, tikv_replicas: 1, pd_replicas: 1, tidb_replicas: 1 };
        let mut missing = record();
        missing.snapshots.remove("vol-b");
        assert!(build_backupmeta(&missing, &inputs).unwrap_err().contains("vol-b"));
        let mut no_ts = record();
        no_ts.resolved_ts = None;
        assert!(build_backupmeta(&no_ts, &inputs).is_err());
    }
}
