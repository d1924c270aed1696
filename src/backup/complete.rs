//! Following the snapshots to `completed` (`VolumeBackupComplete`, with progress), then `Complete` with
//! sizes and times. From here on the snapshots are consistent and PD is resumed: a credential, Secret
//! or STS blip is ridden out, never a reason to delete a good set.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::clock::unix_now;
use super::record::Failure;
use super::step::{BackupRun, Outcome, StepResult, transient};
use super::{cleanup, sizes};
use crate::api::condition::{NewCondition, set_condition, set_progress};
use crate::api::format::{go_duration, human_bytes};
use crate::api::{CleanPolicy, ConditionType};
use crate::aws::SnapshotState;
use crate::aws::retry::retry_throttled;
use crate::reason::Reason;

/// The name of the snapshot step in `.status.progresses`.
pub const SNAPSHOT_PROGRESS_STEP: &str = "Snapshot";

pub async fn wait_snapshots(cx: &mut BackupRun<'_>) -> StepResult {
    let aws = cx.clients.aws(&cx.journal.backup).await.map_err(transient)?;
    let ids: Vec<String> = cx.journal.record.snapshots.values().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let described = retry_throttled(deadline, cx.ctx.settings.throttle_backoff_max, &cx.ctx.metrics, "DescribeSnapshots", || {
        aws.snapshots.describe_snapshots(&ids)
    })
    .await;
    let snapshots = match described {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "DescribeSnapshots failed; retrying");
            return Ok(Outcome::Requeue(cx.ctx.settings.poll_interval));
        }
    };
    if let Some(broken) = snapshots.iter().find(|s| s.state == SnapshotState::Error) {
        let detail = broken.state_message.clone().unwrap_or_default();
        let message = format!("snapshot {} of volume {} ended in error {detail}", broken.snapshot_id, broken.volume_id);
        return Err(Failure::new(Reason::SnapshotFailed, message).into());
    }
    let found: BTreeSet<&str> = snapshots.iter().map(|s| s.snapshot_id.as_str()).collect();
    if let Some(missing) = ids.iter().find(|id| !found.contains(id.as_str())) {
        return Err(Failure::new(Reason::SnapshotMissing, format!("snapshot {missing} no longer exists")).into());
    }
    let done = |s: &&crate::aws::SnapshotInfo| s.state == SnapshotState::Completed;
    let progress = snapshots.iter().map(|s| if done(&s) { 100.0 } else { s.progress }).sum::<f64>() / snapshots.len().max(1) as f64;
    let complete = snapshots.iter().all(|s| done(&s));
    let message = format!("{} of {} snapshots completed", snapshots.iter().filter(done).count(), snapshots.len());
    cx.journal
        .save(|status, record, now| {
            record.transient = None;
            set_progress(status, SNAPSHOT_PROGRESS_STEP, if complete { 100.0 } else { progress.min(99.9) }, now);
            if complete {
                set_condition(
                    status,
                    NewCondition::truthy(ConditionType::VolumeBackupComplete).because(Reason::SnapshotsCompleted, message.clone()),
                    now,
                );
            }
        })
        .await?;
    if !complete {
        return Ok(Outcome::Requeue(cx.ctx.settings.poll_interval));
    }
    crate::crash_point!("wait.after-complete");
    Ok(Outcome::Continue)
}

pub async fn finish(cx: &mut BackupRun<'_>) -> StepResult {
    let wanted = cx.journal.backup.spec.calc_size_level;
    let sizes = match cx.clients.aws(&cx.journal.backup).await {
        Ok(aws) => sizes::measure(cx.ctx, &aws, &cx.journal.record, wanted).await,
        Err(f) => sizes::Sizes::unavailable(&f.message),
    };
    // A size that cannot be had is left out; it never fails a backup whose snapshots are complete.
    let full = sizes.full.inspect_err(|message| tracing::warn!(%message, "full size unavailable; the backup itself is complete")).ok().flatten();
    let incremental = sizes
        .incremental
        .inspect_err(|message| tracing::warn!(%message, "incremental size unavailable; the backup itself is complete"))
        .ok()
        .flatten();
    let started = cx.journal.backup.status.as_ref().and_then(|s| s.time_started.clone());
    // A successful OnFailure backup keeps its data: the finalizer goes before `Complete` is shown, so
    // whoever sees `Complete` also sees the finalizer as it will stay.
    if cleanup::needs_finalizer(&cx.journal.backup) && cx.journal.backup.spec.clean_policy == CleanPolicy::OnFailure {
        cx.journal.set_finalizer(false).await?;
    }
    crate::crash_point!("finish.before-save");
    cx.journal
        .save(|status, record, now| {
            if let Some(full) = full {
                status.backup_size = Some(full as i64);
                status.backup_size_readable = Some(human_bytes(full));
            }
            if let Some(incremental) = incremental {
                status.incremental_backup_size = Some(incremental as i64);
                status.incremental_backup_size_readable = Some(human_bytes(incremental));
            }
            status.commit_ts = record.resolved_ts.map(|ts| ts.to_string());
            status.time_completed = Some(now.clone());
            if let Some(started) = &started {
                status.time_taken = Some(go_duration(now.0.duration_since(started.0).unsigned_abs()));
            }
            set_condition(status, NewCondition::truthy(ConditionType::Complete), now);
        })
        .await?;
    cx.release_claim().await;
    cx.ctx.metrics.backup_finished("complete", cx.journal.record.started_at.map(|s| (unix_now() - s) as f64));
    Ok(Outcome::Stop)
}
