//! Deleting a Backup: stop it safely, then keep or delete its snapshots and `backupmeta` as
//! `spec.cleanPolicy` says, guarded by the `tidb.pingcap.com/backup-protection` finalizer.

use std::time::Duration;

use super::context::AwsClients;
use super::error::Result;
use super::meta::TAG_BACKUP_UID;
use super::ownership::{DataError, delete_own_meta, delete_snapshots, snapshots_created};
use super::resume::resume_and_record;
use super::step::BackupRun;
use crate::api::condition::NewCondition;
use crate::api::{Backup, CleanPolicy, ConditionStatus, ConditionType};
use crate::reason::Reason;

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

/// The Backup is being deleted: stop it (nothing may stay paused), then keep or delete its data.
/// The time to look again, if the clean-up is not finished.
pub async fn on_delete(mut cx: BackupRun<'_>) -> Result<Option<Duration>> {
    if !cx.journal.has_finalizer() {
        return Ok(None);
    }
    if cx.journal.record.paused()
        && let Err(e) = resume_and_record(&mut cx).await?
    {
        tracing::warn!(error = %e, "resuming PD for a deleted Backup failed");
    }
    cx.ctx.keepers.stop(&cx.journal.uid());
    cx.ctx.prepared.finish(&cx.journal.uid()).await;
    cx.release_claim().await;
    if !must_clean(&cx.journal.backup) {
        cx.journal.set_finalizer(false).await?;
        cx.ctx.metrics.cleanup("retained");
        return Ok(None);
    }
    clean(&mut cx).await
}

async fn clean(cx: &mut BackupRun<'_>) -> Result<Option<Duration>> {
    let journal = &mut cx.journal;
    if journal.backup.status.as_ref().and_then(|s| s.backup_path.as_ref()).is_none() && journal.record.snapshot_requests.is_empty() {
        journal
            .condition(NewCondition::truthy(ConditionType::Clean).because(Reason::NothingToClean, "the backup created no data"))
            .await?;
        journal.set_finalizer(false).await?;
        cx.ctx.metrics.cleanup("nothing");
        return Ok(None);
    }
    let cleaning = NewCondition::truthy(ConditionType::Clean).with_status(ConditionStatus::False);
    journal.condition(cleaning.because(Reason::Cleaning, "deleting this backup's snapshots and backupmeta")).await?;
    let aws = match cleanup_clients(cx).await {
        Ok(aws) => aws,
        Err(message) => return clean_failed(cx, Reason::CleanCredentialsFailed, message).await,
    };
    match delete_data(cx, &aws).await {
        Ok(count) => {
            let message = format!("deleted this backup's {count} snapshots and its data under {}", aws.meta.location());
            // Logged too: in a namespace being deleted the Event cannot be created.
            tracing::info!(%message, "clean-up done");
            // The phase stays `Clean`, so no phase Event says it is done: this one does.
            cx.journal.events.normal(Reason::Cleaned, &message, "Clean").await;
            cx.journal.condition(NewCondition::truthy(ConditionType::Clean).because(Reason::Cleaned, message)).await?;
            cx.journal.set_finalizer(false).await?;
            cx.ctx.metrics.cleanup("cleaned");
            Ok(None)
        }
        Err(e) => clean_failed(cx, Reason::CleanBackupDataFailed, e.to_string()).await,
    }
}

/// The Backup's own credentials, else (its Secret or ServiceAccount gone, e.g. namespace deletion)
/// the operator's identity.
async fn cleanup_clients(cx: &mut BackupRun<'_>) -> std::result::Result<AwsClients, String> {
    match cx.clients.aws(&cx.journal.backup).await {
        Ok(aws) => Ok(aws),
        Err(own) => {
            tracing::warn!(reason = %own.reason, "the Backup's credentials are unusable; cleaning up with the operator's identity");
            cx.clients
                .operator_aws(&cx.journal.backup)
                .await
                .map_err(|e| format!("{}; the operator's own identity failed too: {e}", own.message))
        }
    }
}

/// Deletes this Backup's snapshots (tagged with its uid, or recorded from its own calls) at the rate
/// `cleanOption.snapshotsDeleteRatio` allows (default 1 a second), and, if the prefix is its own, its
/// `backupmeta`. Snapshot ids listed in a `backupmeta` are never trusted on their own: the object may
/// be another Backup's.
async fn delete_data(cx: &BackupRun<'_>, aws: &AwsClients) -> std::result::Result<usize, DataError> {
    let journal = &cx.journal;
    let ids = snapshots_created(&journal.backup, journal.record.snapshots.values(), aws).await?;
    let per_second = journal.backup.spec.clean_option.as_ref().and_then(|o| o.snapshots_delete_ratio).filter(|r| *r > 0.0).unwrap_or(1.0);
    delete_snapshots(aws, &ids, Some(per_second), Duration::from_secs(600), cx.ctx.settings.throttle_backoff_max, &cx.ctx.metrics).await?;
    delete_own_meta(&journal.backup, journal.record.meta_written, aws, &ids).await?;
    Ok(ids.len())
}

async fn clean_failed(cx: &mut BackupRun<'_>, reason: Reason, message: String) -> Result<Option<Duration>> {
    let journal = &mut cx.journal;
    if journal.backup.annotations().get(FORCE_RELEASE_ANNOTATION).is_some_and(|v| v == "true") {
        let note = format!(
            "released without clean-up as {FORCE_RELEASE_ANNOTATION} asks; check for leftover snapshots tagged {TAG_BACKUP_UID}={}: {message}",
            journal.uid()
        );
        journal.condition(NewCondition::truthy(ConditionType::CleanFailed).because(reason, note.clone())).await?;
        // The phase may already be CleanFailed, so the phase Event would not fire: say it explicitly.
        journal.events.warning(Reason::ReleasedWithoutCleanup, &note, "Clean").await;
        tracing::warn!(%note, "released without clean-up");
        journal.set_finalizer(false).await?;
        cx.ctx.metrics.cleanup("released");
        return Ok(None);
    }
    cx.ctx.metrics.cleanup("failed");
    let message = format!("{message}; retrying (set annotation {FORCE_RELEASE_ANNOTATION}=true to give up and keep the data)");
    journal.condition(NewCondition::truthy(ConditionType::CleanFailed).because(reason, message)).await?;
    Ok(Some(Duration::from_secs(15)))
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
