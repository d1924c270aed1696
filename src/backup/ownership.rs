//! What data a Backup owns. Snapshots: only those tagged with its uid (the tag is set by CreateSnapshots
//! itself, so no snapshot of ours is ever untagged). The prefix: a small lock object written with
//! If-None-Match before anything is paused, naming the Backup, as BR claims a prefix with its lock file.
//! A `backupmeta` is deleted only under a lock that names this Backup, so a failed or deleted Backup
//! never deletes another's data, whatever prefix they share.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use kube::ResourceExt;

use super::context::AwsClients;
use super::meta::{self, TAG_BACKUP_UID};
use super::record::Failure;
use crate::api::Backup;
use crate::aws::AwsError;
use crate::aws::retry::retry_throttled;
use crate::metrics::Metrics;
use crate::reason::Reason;

pub const LOCK_FILE: &str = "tidb-ebs-backup.lock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PrefixLock {
    backup_uid: String,
    backup: String,
    cluster: String,
}

/// Who holds a prefix.
#[derive(Debug, PartialEq, Eq)]
pub enum PrefixOwner {
    Us,
    Other(String),
    Nobody,
}

fn uid(backup: &Backup) -> String {
    backup.metadata.uid.clone().unwrap_or_default()
}

fn lock_body(backup: &Backup) -> Vec<u8> {
    let lock = PrefixLock {
        backup_uid: uid(backup),
        backup: format!("{}/{}", backup.metadata.namespace.as_deref().unwrap_or_default(), backup.name_any()),
        cluster: format!("{}/{}", backup.cluster_namespace(), backup.spec.br.cluster),
    };
    serde_json::to_vec(&lock).expect("lock serialises")
}

/// Claims the backup's prefix (preflight, before the pause). Re-running after a restart finds its own lock.
pub async fn lock_prefix(backup: &Backup, aws: &AwsClients) -> Result<(), Failure> {
    let location = aws.meta.location();
    let written = aws
        .meta
        .put_if_absent(LOCK_FILE, lock_body(backup))
        .await
        .map_err(|e| Failure::doing(format!("writing {location}/{LOCK_FILE}"), &e))?;
    if written {
        return Ok(());
    }
    match prefix_owner(backup, aws).await.map_err(|e| Failure::doing(format!("reading {location}/{LOCK_FILE}"), &e))? {
        PrefixOwner::Us => Ok(()),
        PrefixOwner::Other(who) => Err(Failure::new(
            Reason::FileExistedInExternalStorage,
            format!("{location} is in use by Backup {who} ({LOCK_FILE}): use a new prefix for every backup"),
        )),
        // Deleted between our write and our read: whoever deleted it owned it; try again next time.
        PrefixOwner::Nobody => Err(Failure::new(Reason::PrefixLockRace, format!("{location}/{LOCK_FILE} changed while it was being claimed"))),
    }
}

pub async fn prefix_owner(backup: &Backup, aws: &AwsClients) -> Result<PrefixOwner, AwsError> {
    let Some(body) = aws.meta.get(LOCK_FILE).await? else { return Ok(PrefixOwner::Nobody) };
    match serde_json::from_slice::<PrefixLock>(&body) {
        Ok(lock) if lock.backup_uid == uid(backup) => Ok(PrefixOwner::Us),
        Ok(lock) => Ok(PrefixOwner::Other(format!("{} (uid {})", lock.backup, lock.backup_uid))),
        Err(_) => Ok(PrefixOwner::Other("unknown (unreadable lock)".into())),
    }
}

/// Deletes this Backup's `backupmeta` and lock, and nothing of anyone else's; returns whether a
/// `backupmeta` was deleted. A `backupmeta` is ours only if it lists snapshots, all of them ours: something
/// that knows nothing of our lock (BR) may have written one at the prefix meanwhile. On a prefix from
/// before locks existed it must also be one this backup wrote (`meta_written`).
pub async fn delete_own_meta(backup: &Backup, meta_written: bool, aws: &AwsClients, own_snapshots: &BTreeSet<String>) -> Result<bool, DataError> {
    let location = aws.meta.location();
    let meta_error = |what: String| move |source| DataError::Meta { what, source };
    let owner = prefix_owner(backup, aws).await.map_err(meta_error(format!("reading {location}/{LOCK_FILE}")))?;
    if let PrefixOwner::Other(who) = &owner {
        tracing::info!(%who, "the prefix belongs to another Backup; its backupmeta is left alone");
        return Ok(false);
    }
    let listed_ours = match aws.meta.get(meta::META_FILE).await.map_err(meta_error("reading backupmeta".into()))? {
        Some(body) => serde_json::from_slice(&body).is_ok_and(|m| {
            let listed = meta::snapshot_ids_in_meta(&m);
            !listed.is_empty() && listed.iter().all(|id| own_snapshots.contains(id))
        }),
        None => false,
    };
    let ours = listed_ours && (owner == PrefixOwner::Us || meta_written);
    if ours {
        aws.meta.delete(meta::META_FILE).await.map_err(meta_error("deleting backupmeta".into()))?;
    } else {
        tracing::info!("the backupmeta at the prefix is not this backup's; it is left alone");
    }
    if owner == PrefixOwner::Us {
        aws.meta.delete(LOCK_FILE).await.map_err(meta_error(format!("deleting {LOCK_FILE}")))?;
    }
    Ok(ours)
}

/// Deleting a backup's data failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("finding snapshots by tag: {0}")]
    Find(AwsError),
    #[error("deleting snapshot {id}: {source}")]
    Delete { id: String, source: AwsError },
    #[error("{what}: {source}")]
    Meta { what: String, source: AwsError },
}

/// Every snapshot this backup created: the recorded ones and any found by its uid tag (e.g. from a call
/// whose answer was lost).
pub async fn snapshots_created(backup: &Backup, recorded: impl Iterator<Item = &String>, aws: &AwsClients) -> Result<BTreeSet<String>, DataError> {
    let mut ids: BTreeSet<String> = recorded.cloned().collect();
    let tagged = aws.snapshots.find_snapshots_by_tag(TAG_BACKUP_UID, &uid(backup)).await.map_err(DataError::Find)?;
    ids.extend(tagged.into_iter().map(|s| s.snapshot_id));
    Ok(ids)
}

/// Deletes these snapshots, at most `per_second` a second when given (spaced from the end of each
/// delete, so retries never bunch deletions above the rate), waiting out throttling until `within`.
pub async fn delete_snapshots(
    aws: &AwsClients,
    ids: &BTreeSet<String>,
    per_second: Option<f64>,
    within: Duration,
    backoff_max: Duration,
    metrics: &Metrics,
) -> Result<(), DataError> {
    let deadline = Instant::now() + within;
    let spacing = per_second.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next = Instant::now();
    for id in ids {
        tokio::time::sleep_until(next.into()).await;
        retry_throttled(deadline, backoff_max, metrics, "DeleteSnapshot", || aws.snapshots.delete_snapshot(id))
            .await
            .map_err(|source| DataError::Delete { id: id.clone(), source })?;
        next = Instant::now() + spacing.unwrap_or_default();
    }
    Ok(())
}
