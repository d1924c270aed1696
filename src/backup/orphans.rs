//! Orphans are reported, never silently kept or silently deleted: snapshots tagged by this operator
//! whose Backup is gone and that no `backupmeta` lists (for example those of a `Retain` Backup deleted
//! while its CreateSnapshots calls were in flight). A scan by the leading replica, with the operator's
//! own AWS identity, counts them in `tidb_ebs_backup_orphan_snapshots` and logs each Backup's with the
//! tag to find them by; README "Orphan snapshots" gives the command that deletes them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::reflector::Store;

use super::context::Connectors;
use super::meta::{self, TAG_BACKUP, TAG_BACKUP_UID, TAG_LOCATION};
use crate::api::{Backup, BackupSpec, S3StorageProvider};
use crate::aws::CredentialSource;
use crate::metrics::Metrics;

/// The snapshots of one Backup that is gone, found by their tags.
struct GoneBackup {
    backup: String,
    location: Option<(String, String)>,
    snapshots: BTreeSet<String>,
}

pub async fn scan_forever(client: kube::Client, connectors: Arc<dyn Connectors>, cache: Store<Backup>, metrics: Arc<Metrics>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match scan(&client, connectors.as_ref(), &cache).await {
            Ok(orphans) => metrics.set_orphan_snapshots(orphans.iter().map(|o| o.snapshots.len()).sum()),
            Err(e) => tracing::warn!(error = %e, "scanning for orphan snapshots failed; trying again later"),
        }
    }
}

/// The orphan snapshots of one Backup that is gone.
#[derive(Debug, PartialEq, Eq)]
pub struct Orphans {
    pub uid: String,
    /// `namespace/name` of the Backup, from the snapshots' tag.
    pub backup: String,
    pub snapshots: Vec<String>,
}

/// One scan. `cache` only saves API calls: a Backup it does not know is looked up by name.
pub async fn scan(client: &kube::Client, connectors: &dyn Connectors, cache: &Store<Backup>) -> Result<Vec<Orphans>, String> {
    let own = Backup::new("orphan-scan", BackupSpec::default());
    let aws = connectors.aws(&own, &CredentialSource::OperatorDefault).await.map_err(|e| e.to_string())?;
    let tagged = aws.snapshots.find_snapshots_with_tag_key(TAG_BACKUP_UID).await.map_err(|e| e.to_string())?;
    let live: BTreeSet<String> = cache.state().iter().filter_map(|b| b.metadata.uid.clone()).collect();
    let mut gone: BTreeMap<String, GoneBackup> = BTreeMap::new();
    for snapshot in &tagged {
        let tag = |key: &str| snapshot.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let Some(uid) = tag(TAG_BACKUP_UID).filter(|uid| !live.contains(uid)) else { continue };
        let entry = gone.entry(uid).or_insert_with(|| GoneBackup {
            backup: tag(TAG_BACKUP).unwrap_or_default(),
            location: tag(TAG_LOCATION).and_then(|l| l.split_once('/').map(|(b, p)| (b.to_string(), p.to_string()))),
            snapshots: BTreeSet::new(),
        });
        entry.snapshots.insert(snapshot.snapshot_id.clone());
    }
    let mut orphans = Vec::new();
    for (uid, backup) in gone {
        // The cache may not know a Backup outside the watched namespaces or selector: ask the API server.
        if still_exists(client, &backup.backup, &uid).await? {
            continue;
        }
        let listed = listed_in_backupmeta(connectors, &backup).await;
        let unlisted: Vec<String> = backup.snapshots.iter().filter(|id| !listed.contains(*id)).cloned().collect();
        if unlisted.is_empty() {
            continue;
        }
        tracing::warn!(
            backup = %backup.backup, %uid, count = unlisted.len(), snapshots = ?unlisted,
            "orphan snapshots: their Backup is gone and no backupmeta lists them; find them by tag {TAG_BACKUP_UID}={uid}"
        );
        orphans.push(Orphans { uid, backup: backup.backup, snapshots: unlisted });
    }
    Ok(orphans)
}

async fn still_exists(client: &kube::Client, backup: &str, uid: &str) -> Result<bool, String> {
    let Some((namespace, name)) = backup.split_once('/') else { return Ok(false) };
    let api: Api<Backup> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(found) => Ok(found.is_some_and(|b| b.metadata.uid.as_deref() == Some(uid))),
        Err(e) => Err(format!("reading Backup {backup}: {e}")),
    }
}

/// The snapshot ids the `backupmeta` at the snapshots' recorded location lists (none if unreadable).
async fn listed_in_backupmeta(connectors: &dyn Connectors, backup: &GoneBackup) -> BTreeSet<String> {
    let Some((bucket, prefix)) = &backup.location else { return BTreeSet::new() };
    let s3 = S3StorageProvider { bucket: Some(bucket.clone()), prefix: Some(prefix.clone()), ..Default::default() };
    let at = Backup::new("orphan-scan", BackupSpec { s3: Some(s3), ..Default::default() });
    let Ok(aws) = connectors.aws(&at, &CredentialSource::OperatorDefault).await else { return BTreeSet::new() };
    match aws.meta.get(meta::META_FILE).await {
        Ok(Some(body)) => serde_json::from_slice(&body).map(|m| meta::snapshot_ids_in_meta(&m).into_iter().collect()).unwrap_or_default(),
        _ => BTreeSet::new(),
    }
}
