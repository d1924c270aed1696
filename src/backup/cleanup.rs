//! Deleting a Backup: stop it safely, then keep or delete its snapshots and `backupmeta` as
//! `spec.cleanPolicy` says, guarded by the `tidb.pingcap.com/backup-protection` finalizer.

use std::time::{Duration, Instant};

use super::context::AwsClients;
use super::meta::TAG_BACKUP_UID;
use super::steps::{Outcome, Reconcile, retry_throttled};
use super::Result;
use crate::api::condition::NewCondition;
use crate::api::{BACKUP_PROTECTION_FINALIZER, Backup, CleanPolicy, ConditionStatus, ConditionType};
use crate::aws::CredentialSource;

/// Set by a user to let a Backup go although its clean-up cannot finish (e.g. its namespace and Secret
/// are gone and the operator's own identity may not delete the snapshots). Leftovers are reported.
pub const FORCE_RELEASE_ANNOTATION: &str = "tidb-ebs-backup/release-without-cleanup";

/// Whether this Backup's data may have to be deleted when the Backup is.
pub fn needs_finalizer(backup: &Backup) -> bool {
    match backup.spec.clean_policy {
        CleanPolicy::Retain => false,
        CleanPolicy::Delete => true,
        CleanPolicy::OnFailure => backup.phase() != Some(&ConditionType::Complete),
    }
}

/// Data to delete on deletion: always under `Delete`; under `OnFailure` unless the backup completed.
pub fn must_clean(backup: &Backup) -> bool {
    needs_finalizer(backup)
}

impl Reconcile<'_> {
    pub(super) fn has_finalizer(&self) -> bool {
        self.backup.metadata.finalizers.iter().flatten().any(|f| f == BACKUP_PROTECTION_FINALIZER)
    }

    pub(super) async fn set_finalizer(&mut self, present: bool) -> Result<()> {
        let stored = self
            .ctx
            .writer
            .update(&self.api, &self.backup, |owned| {
                owned.finalizers.retain(|f| f != BACKUP_PROTECTION_FINALIZER);
                if present {
                    owned.finalizers.push(BACKUP_PROTECTION_FINALIZER.to_string());
                }
            })
            .await?;
        let record = self.record.clone();
        self.adopt_stored(stored, &record);
        Ok(())
    }

    /// The Backup is being deleted.
    pub async fn on_delete(mut self) -> Result<Option<Duration>> {
        if !self.has_finalizer() {
            return Ok(None);
        }
        // A backup still in flight is stopped first: nothing may stay paused.
        if self.record.paused() {
            match self.resume_pd().await {
                Ok(()) => self.save(|_, record, _| record.resumed = true).await?,
                Err(message) => tracing::warn!(%message, "resuming PD for a deleted Backup failed; the pause expires by its TTL"),
            }
        }
        self.ctx.keepers.stop(&self.uid());
        self.release_claim().await;
        if !must_clean(&self.backup) {
            self.set_finalizer(false).await?;
            self.ctx.metrics.cleanup("retained");
            return Ok(None);
        }
        match self.clean().await? {
            Outcome::Requeue(after) => Ok(Some(after)),
            _ => Ok(None),
        }
    }

    async fn clean(&mut self) -> Result<Outcome> {
        if self.backup.status.as_ref().and_then(|s| s.backup_path.as_ref()).is_none() && self.record.snapshot_requests.is_empty() {
            // Nothing was ever written or created.
            self.condition(NewCondition::truthy(ConditionType::Clean).because("NothingToClean", "the backup created no data")).await?;
            self.set_finalizer(false).await?;
            self.ctx.metrics.cleanup("nothing");
            return Ok(Outcome::Stop);
        }
        self.condition(
            NewCondition::truthy(ConditionType::Clean)
                .with_status(ConditionStatus::False)
                .because("Cleaning", "deleting this backup's snapshots and backupmeta"),
        )
        .await?;
        let aws = match self.cleanup_clients().await {
            Ok(aws) => aws,
            Err(message) => return self.clean_failed("CleanCredentialsFailed", message).await,
        };
        match self.delete_data(&aws).await {
            Ok(count) => {
                let message = format!("deleted this backup's {count} snapshots and its data under {}", aws.meta.location());
                // Logged too: in a namespace being deleted the Event cannot be created.
                tracing::info!(%message, "clean-up done");
                self.condition(NewCondition::truthy(ConditionType::Clean).because("Cleaned", message)).await?;
                self.set_finalizer(false).await?;
                self.ctx.metrics.cleanup("cleaned");
                Ok(Outcome::Stop)
            }
            Err(message) => self.clean_failed("CleanBackupDataFailed", message).await,
        }
    }

    /// The Backup's own credentials, else (its Secret or ServiceAccount gone, e.g. namespace deletion)
    /// the operator's identity.
    async fn cleanup_clients(&self) -> std::result::Result<AwsClients, String> {
        match self.aws_clients().await {
            Ok(aws) => Ok(aws),
            Err(own) => {
                tracing::warn!(reason = %own.reason, "the Backup's credentials are unusable; cleaning up with the operator's identity");
                self.ctx
                    .connectors
                    .aws(&self.backup, &CredentialSource::OperatorDefault)
                    .await
                    .map_err(|e| format!("{}; the operator's own identity failed too: {e}", own.message))
            }
        }
    }

    /// Deletes this Backup's snapshots (tagged with its uid, or recorded from its own calls) and, if the
    /// prefix is its own, its `backupmeta`. Snapshot ids listed in a `backupmeta` are never trusted on
    /// their own: the object may be another Backup's.
    async fn delete_data(&mut self, aws: &AwsClients) -> std::result::Result<usize, String> {
        let ids = self.snapshots_created(aws).await?;
        let per_second = self.backup.spec.clean_option.as_ref().and_then(|o| o.snapshots_delete_ratio).filter(|r| *r > 0.0).unwrap_or(1.0);
        let spacing = Duration::from_secs_f64(1.0 / per_second);
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut next = Instant::now();
        for id in &ids {
            tokio::time::sleep_until(next.into()).await;
            retry_throttled(deadline, self.ctx.settings.throttle_backoff_max, &self.ctx.metrics, "DeleteSnapshot", || {
                aws.snapshots.delete_snapshot(id)
            })
            .await
            .map_err(|e| format!("deleting snapshot {id}: {e}"))?;
            // Spaced from the end of each delete, so retries never bunch deletions above the rate.
            next = Instant::now() + spacing;
        }
        self.delete_own_meta(aws, &ids).await?;
        Ok(ids.len())
    }

    async fn clean_failed(&mut self, reason: &str, message: String) -> Result<Outcome> {
        if self.backup.annotations().get(FORCE_RELEASE_ANNOTATION).is_some_and(|v| v == "true") {
            let note = format!("released without clean-up as {FORCE_RELEASE_ANNOTATION} asks; check for leftover snapshots tagged {TAG_BACKUP_UID}={}: {message}", self.uid());
            self.condition(NewCondition::truthy(ConditionType::CleanFailed).because(reason, note.clone())).await?;
            // The phase may already be CleanFailed, so the phase Event would not fire: say it explicitly.
            self.publish(true, "ReleasedWithoutCleanup", &note, "Clean").await;
            tracing::warn!(%note, "released without clean-up");
            self.set_finalizer(false).await?;
            self.ctx.metrics.cleanup("released");
            return Ok(Outcome::Stop);
        }
        self.ctx.metrics.cleanup("failed");
        let message = format!("{message}; retrying (set annotation {FORCE_RELEASE_ANNOTATION}=true to give up and keep the data)");
        self.condition(NewCondition::truthy(ConditionType::CleanFailed).because(reason, message)).await?;
        Ok(Outcome::Requeue(Duration::from_secs(15)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupSpec, BackupStatus};

    fn backup(policy: CleanPolicy, phase: Option<ConditionType>) -> Backup {
        let mut backup = Backup::new("b", BackupSpec { clean_policy: policy, ..Default::default() });
        backup.status = Some(BackupStatus { phase, ..Default::default() });
        backup
    }

    #[test]
    fn clean_policy_decides_what_is_deleted() {
        use ConditionType::*;
        let cases = [
            (CleanPolicy::Retain, Some(Complete), false),
            (CleanPolicy::Retain, Some(Failed), false),
            (CleanPolicy::Delete, Some(Complete), true),
            (CleanPolicy::Delete, Some(Failed), true),
            (CleanPolicy::Delete, Some(Running), true),
            (CleanPolicy::OnFailure, Some(Complete), false),
            (CleanPolicy::OnFailure, Some(Failed), true),
            (CleanPolicy::OnFailure, Some(VolumeBackupInitialized), true),
            (CleanPolicy::OnFailure, None, true),
        ];
        for (policy, phase, want) in cases {
            assert_eq!(must_clean(&backup(policy, phase.clone())), want, "{policy:?} {phase:?}");
        }
    }
}
