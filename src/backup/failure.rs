//! A failure decided by any step: PD resumed, this backup's snapshots deleted (recorded ones and any
//! found by its tag), its own `backupmeta` and prefix lock deleted, then `Failed` with the reason and
//! whatever could not be undone.

use std::collections::BTreeSet;
use std::time::Duration;

use super::ownership::{DataError, delete_own_meta, delete_snapshots, snapshots_created};
use super::record::Failure;
use super::resume::resume_and_record;
use super::step::{BackupRun, Outcome, StepResult};
use crate::api::ConditionType;
use crate::api::condition::{NewCondition, set_condition};

pub async fn run(cx: &mut BackupRun<'_>, failure: Failure) -> StepResult {
    let mut notes = Vec::new();
    cx.ctx.keepers.stop(&cx.journal.uid());
    cx.ctx.prepared.finish(&cx.journal.uid()).await;
    if cx.journal.record.paused()
        && let Err(e) = resume_and_record(cx).await?
    {
        notes.push(e.to_string());
    }
    let record = &cx.journal.record;
    let created_any = !record.snapshots.is_empty() || !record.snapshot_requests.is_empty();
    // The snapshots found for deletion also decide whether a backupmeta is ours: looked up once.
    let mut created = None;
    if !record.snapshots_deleted && created_any {
        match delete_created(cx).await {
            Ok(ids) => {
                crate::crash_point!("failure.after-delete");
                notes.push(format!("deleted the {} snapshots this backup had created", ids.len()));
                created = Some(ids);
                cx.journal.save(|_, record, _| record.snapshots_deleted = true).await?;
            }
            Err(message) => notes.push(format!("could not delete this backup's snapshots: {message}")),
        }
    }
    if cx.journal.record.plan.is_some()
        && let Err(e) = delete_meta(cx, created).await
    {
        // Our backupmeta and prefix lock only; a prefix another Backup holds is left as it is.
        notes.push(format!("could not delete this backup's backupmeta or prefix lock: {e}"));
    }
    let message = if notes.is_empty() { failure.message.clone() } else { format!("{}; {}", failure.message, notes.join("; ")) };
    cx.journal
        .save(|status, _, now| {
            set_condition(status, NewCondition::truthy(ConditionType::Failed).because(failure.reason, message.clone()), now);
        })
        .await?;
    cx.release_claim().await;
    cx.ctx.metrics.backup_finished("failed", None);
    Ok(Outcome::Stop)
}

/// Why something the backup created could not be deleted.
#[derive(Debug, thiserror::Error)]
enum UndoError {
    #[error("{}", .0.message)]
    Credentials(Failure),
    #[error(transparent)]
    Data(#[from] DataError),
}

/// Deletes every snapshot this backup created; returns their ids.
async fn delete_created(cx: &mut BackupRun<'_>) -> Result<BTreeSet<String>, UndoError> {
    let aws = cx.clients.aws(&cx.journal.backup).await.map_err(UndoError::Credentials)?;
    let ids = snapshots_created(&cx.journal.backup, cx.journal.record.snapshots.values(), &aws).await?;
    let settings = &cx.ctx.settings;
    delete_snapshots(&aws, &ids, None, Duration::from_secs(300), settings.throttle_backoff_max, &cx.ctx.metrics).await?;
    Ok(ids)
}

/// `created`: the snapshots this backup created, if already looked up.
async fn delete_meta(cx: &mut BackupRun<'_>, created: Option<BTreeSet<String>>) -> Result<bool, UndoError> {
    let aws = cx.clients.aws(&cx.journal.backup).await.map_err(UndoError::Credentials)?;
    let journal = &cx.journal;
    let ids = match created {
        Some(ids) => ids,
        None => snapshots_created(&journal.backup, journal.record.snapshots.values(), &aws).await?,
    };
    Ok(delete_own_meta(&journal.backup, journal.record.meta_written, &aws, &ids).await?)
}
