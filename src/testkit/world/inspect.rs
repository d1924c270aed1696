//! What a test looks at after a backup: the Backup's conditions and record, the snapshots and the
//! `backupmeta` it left, the Events, and the user's own actions (delete, annotate).

use std::collections::BTreeMap;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::{BUCKET, World};
use crate::api::{Backup, BackupCondition, ConditionType};
use crate::backup::meta::{META_FILE, TAG_BACKUP_UID};
use crate::backup::ownership::LOCK_FILE;
use crate::backup::record::BackupRecord;

/// The phase of a Backup that may be gone.
pub fn phase(backup: Option<&Backup>) -> Option<&ConditionType> {
    backup.and_then(Backup::phase)
}

/// `done` for `run_until`: the Backup is in `wanted`.
pub fn is(wanted: ConditionType) -> impl Fn(Option<&Backup>) -> bool {
    move |b| phase(b) == Some(&wanted)
}

/// `done` for `run_until`: the Backup has ended, `Complete` or `Failed`.
#[cfg(feature = "failpoints")]
pub fn ended(backup: Option<&Backup>) -> bool {
    matches!(phase(backup), Some(ConditionType::Complete | ConditionType::Failed))
}

/// The condition of type `type_`, if the Backup has it.
pub fn condition(backup: &Backup, type_: ConditionType) -> Option<BackupCondition> {
    backup.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).cloned()
}

/// The reason of the Backup's `Failed` condition.
pub fn failure_reason(backup: &Backup) -> Option<String> {
    condition(backup, ConditionType::Failed).and_then(|c| c.reason)
}

impl World {
    pub fn uid(&self, name: &str) -> String {
        self.backup(name).and_then(|b| b.metadata.uid).expect("the Backup exists")
    }

    pub fn record(&self, name: &str) -> BackupRecord {
        BackupRecord::of(&self.backup(name).expect("the Backup exists")).expect("a readable record")
    }

    /// volume id -> snapshot id, as the `backupmeta` at `prefix` lists them.
    pub fn snapshots_in_meta(&self, prefix: &str) -> BTreeMap<String, String> {
        let body = self.s3.object(BUCKET, &format!("{prefix}/{META_FILE}")).expect("backupmeta written");
        let meta: Value = serde_json::from_slice(&body).expect("backupmeta is JSON");
        let volumes = meta["tikv"]["stores"].as_array().into_iter().flatten().flat_map(|s| s["volumes"].as_array().into_iter().flatten());
        volumes.map(|v| (v["volume_id"].as_str().unwrap().to_string(), v["snapshot_id"].as_str().unwrap().to_string())).collect()
    }

    /// volume id -> snapshot id of every snapshot that exists; asserts no volume has two.
    pub fn snapshots_taken(&self) -> BTreeMap<String, String> {
        let snapshots = self.ec2.snapshots();
        let by_volume: BTreeMap<String, String> = snapshots.iter().map(|s| (s.volume_id.clone(), s.snapshot_id.clone())).collect();
        assert_eq!(by_volume.len(), snapshots.len(), "no volume is snapshotted twice: {snapshots:#?}");
        by_volume
    }

    /// volume id -> how many snapshots tagged with the Backup `uid` it has.
    pub fn snapshots_per_volume(&self, uid: &str) -> BTreeMap<String, usize> {
        let tagged = self.ec2.snapshots().into_iter().filter(|s| s.tags.iter().any(|(k, v)| k == TAG_BACKUP_UID && v == uid));
        tagged.fold(BTreeMap::new(), |mut counts, s| {
            *counts.entry(s.volume_id).or_default() += 1;
            counts
        })
    }

    /// The objects under `prefix/` in the bucket.
    pub fn keys_under(&self, prefix: &str) -> Vec<String> {
        self.s3.keys(BUCKET).into_iter().filter(|k| k.starts_with(&format!("{prefix}/"))).collect()
    }

    /// Puts another Backup's prefix lock at `prefix`, as that Backup's preflight would.
    pub fn put_foreign_lock(&self, prefix: &str, uid: &str) {
        let lock = json!({"backupUid": uid, "backup": "tidb/someone-else", "cluster": "tidb/other"});
        self.s3.put_object(BUCKET, &format!("{prefix}/{LOCK_FILE}"), serde_json::to_vec(&lock).unwrap());
    }

    /// Every Event: (type, reason, note).
    pub fn events(&self) -> Vec<(String, String, String)> {
        let events = self.api.all::<Event>().into_iter();
        events.map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.note.unwrap_or_default())).collect()
    }

    /// The reasons of the Warning Events.
    pub fn warnings(&self) -> Vec<String> {
        self.events().into_iter().filter(|(type_, _, _)| type_ == "Warning").map(|(_, reason, _)| reason).collect()
    }

    fn backups(&self) -> Api<Backup> {
        Api::namespaced(self.ctx().client.clone(), &self.cluster.namespace)
    }

    /// Deletes the Backup as a user does (its finalizer holds it until clean-up is done).
    pub async fn delete_backup(&self, name: &str) {
        self.backups().delete(name, &DeleteParams::default()).await.expect("delete the Backup");
    }

    pub async fn annotate(&self, name: &str, key: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.backups().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotate the Backup");
    }
}
