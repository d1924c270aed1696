//! What data a Backup owns. Snapshots: only those tagged with its uid (the tag is set by CreateSnapshots
//! itself, so no snapshot of ours is ever untagged). The prefix: a small lock object written with
//! If-None-Match before anything is paused, naming the Backup, as BR claims a prefix with its lock file.
//! A `backupmeta` is deleted only under a lock that names this Backup, so a failed or deleted Backup
//! never deletes another's data, whatever prefix they share.

use serde::{Deserialize, Serialize};

use super::context::AwsClients;
use super::meta;
use super::record::Failure;
use super::steps::{Reconcile, failure};
use crate::aws::AwsError;

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

impl Reconcile<'_> {
    fn lock_body(&self) -> Vec<u8> {
        let lock = PrefixLock {
            backup_uid: self.uid(),
            backup: format!("{}/{}", self.backup.metadata.namespace.as_deref().unwrap_or_default(), self.name()),
            cluster: format!("{}/{}", self.backup.cluster_namespace(), self.backup.spec.br.cluster),
        };
        serde_json::to_vec(&lock).expect("lock serialises")
    }

    /// Claims the backup's prefix (preflight, before the pause). Re-running after a restart finds its own lock.
    pub(super) async fn lock_prefix(&self, aws: &AwsClients) -> Result<(), Failure> {
        let written = aws.meta.put_if_absent(LOCK_FILE, self.lock_body()).await.map_err(|e| failure(e.reason(), format!("writing {}/{LOCK_FILE}: {e}", aws.meta.location())))?;
        if written {
            return Ok(());
        }
        match self.prefix_owner(aws).await.map_err(|e| failure(e.reason(), format!("reading {}/{LOCK_FILE}: {e}", aws.meta.location())))? {
            PrefixOwner::Us => Ok(()),
            PrefixOwner::Other(who) => Err(failure(
                "FileExistedInExternalStorage",
                format!("{} is in use by Backup {who} ({LOCK_FILE}): use a new prefix for every backup", aws.meta.location()),
            )),
            // Deleted between our write and our read: whoever deleted it owned it; try again next time.
            PrefixOwner::Nobody => Err(failure("PrefixLockRace", format!("{}/{LOCK_FILE} changed while it was being claimed", aws.meta.location()))),
        }
    }

    pub(super) async fn prefix_owner(&self, aws: &AwsClients) -> Result<PrefixOwner, AwsError> {
        let Some(body) = aws.meta.get(LOCK_FILE).await? else { return Ok(PrefixOwner::Nobody) };
        match serde_json::from_slice::<PrefixLock>(&body) {
            Ok(lock) if lock.backup_uid == self.uid() => Ok(PrefixOwner::Us),
            Ok(lock) => Ok(PrefixOwner::Other(format!("{} (uid {})", lock.backup, lock.backup_uid))),
            Err(_) => Ok(PrefixOwner::Other("unknown (unreadable lock)".into())),
        }
    }

    /// Deletes this Backup's `backupmeta` and lock, and nothing of anyone else's. Returns whether a
    /// `backupmeta` was deleted.
    pub(super) async fn delete_own_meta(&self, aws: &AwsClients, own_snapshots: &std::collections::BTreeSet<String>) -> Result<bool, String> {
        let location = aws.meta.location();
        let owner = self.prefix_owner(aws).await.map_err(|e| format!("reading {location}/{LOCK_FILE}: {e}"))?;
        let ours = match &owner {
            PrefixOwner::Us => true,
            PrefixOwner::Other(who) => {
                tracing::info!(%who, "the prefix belongs to another Backup; its backupmeta is left alone");
                false
            }
            // A prefix written before locks existed: ours only if we wrote a backupmeta there and every
            // snapshot it lists is ours.
            PrefixOwner::Nobody => {
                self.record.meta_written
                    && match aws.meta.get(meta::META_FILE).await.map_err(|e| format!("reading backupmeta: {e}"))? {
                        Some(body) => serde_json::from_slice(&body).is_ok_and(|m| meta::snapshot_ids_in_meta(&m).iter().all(|id| own_snapshots.contains(id))),
                        None => false,
                    }
            }
        };
        if !ours {
            return Ok(false);
        }
        let had_meta = aws.meta.exists(meta::META_FILE).await.map_err(|e| format!("reading backupmeta: {e}"))?;
        if had_meta {
            aws.meta.delete(meta::META_FILE).await.map_err(|e| format!("deleting backupmeta: {e}"))?;
        }
        if owner == PrefixOwner::Us {
            aws.meta.delete(LOCK_FILE).await.map_err(|e| format!("deleting {LOCK_FILE}: {e}"))?;
        }
        Ok(had_meta)
    }
}
