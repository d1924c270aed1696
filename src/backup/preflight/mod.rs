//! Accepting a Backup (`Scheduled`), then preflight (`Prepare`): wait for the cluster, read it
//! (`dereference`), check it (`validate`), lock the prefix, and record the plan and the spec.
//! Nothing in the cluster is touched before the plan is recorded.

mod dereference;
pub mod validate;

use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;

use super::claim::Claim;
use super::step::{BackupRun, Outcome, StepError, StepResult};
use super::{cleanup, ownership, queue};
use crate::api::condition::{NewCondition, set_condition};
use crate::api::{Backup, ConditionType};
use crate::backup::record::Failure;
use crate::reason::Reason;
use validate::Room;

pub async fn schedule(cx: &mut BackupRun<'_>) -> StepResult {
    if cleanup::needs_finalizer(&cx.journal.backup) {
        cx.journal.set_finalizer(true).await?;
    }
    cx.journal
        .save(|status, record, now| {
            set_condition(status, NewCondition::truthy(ConditionType::Scheduled), now);
            record.started_at.get_or_insert(now.0.as_second());
        })
        .await?;
    crate::crash_point!("schedule.after-save");
    Ok(Outcome::Continue)
}

pub async fn run(cx: &mut BackupRun<'_>) -> StepResult {
    let spec = &cx.journal.backup.spec;
    if spec.br.cluster.is_empty() {
        return Err(StepError::Invalid("spec.br.cluster is required: name the TidbCluster to back up".into()));
    }
    if spec.s3.as_ref().and_then(|s3| s3.bucket_and_prefix()).is_none() {
        return Err(StepError::Invalid("a volume-snapshot backup needs spec.s3 with a bucket (or the legacy path)".into()));
    }
    if backup_ahead(cx).await? {
        // Woken when the one ahead ends (`queue::next_in_line`); the poll is only a safety net.
        return wait_in_line(cx, Duration::from_secs(30)).await;
    }
    // The cache above orders the queue; the API server decides who holds the cluster.
    match cx.claim().acquire().await {
        Ok(Claim::Held) => {}
        Ok(Claim::HeldBy(holder)) => {
            tracing::info!(%holder, "the cluster is claimed by another Backup");
            return wait_in_line(cx, Duration::from_secs(5)).await;
        }
        Err(e) if !crate::k8s::is_transient(&e) => {
            let message = format!("claiming the TidbCluster (a Lease in {}): {e}", cx.ctx.settings.claim_namespace);
            return Err(Failure::new(Reason::KubernetesAPIFailed, message).into());
        }
        Err(e) => return Err(e.into()),
    }
    // Nothing is touched yet, so a refusal from the Kubernetes API (e.g. a permission the operator's
    // role lacks) fails the backup with the API's own words rather than retrying in silence.
    let (view, aws) = match dereference::dereference(cx).await {
        Ok(read) => read?,
        Err(e) if !crate::k8s::is_transient(&e) => return Err(Failure::new(Reason::KubernetesAPIFailed, format!("preflight: {e}")).into()),
        Err(e) => return Err(e.into()),
    };
    let pending = view.pending_snapshots;
    let plan = validate::plan(view)?;
    match validate::room_for_snapshots(&plan, pending, cx.ctx.settings.pending_snapshot_limit) {
        Room::Fits => {}
        Room::Never(failure) => return Err(failure.into()),
        Room::Wait(message) => {
            cx.journal.condition(NewCondition::truthy(ConditionType::Scheduled).because(Reason::PendingSnapshotQuota, message)).await?;
            // Looked at again as often as snapshots are polled: room appears as they complete.
            return Ok(Outcome::Requeue(cx.ctx.settings.poll_interval));
        }
    }
    // Last, once every check has passed: the prefix is claimed only by a backup that goes ahead.
    ownership::lock_prefix(&cx.journal.backup, &aws).await?;
    crate::crash_point!("preflight.after-lock");
    let location = aws.meta.location();
    let spec = cx.journal.backup.spec.clone();
    cx.journal
        .save(|status, record, now| {
            record.plan = Some(plan.clone());
            record.spec = Some(spec.clone());
            status.backup_path = Some(location.clone());
            status.time_started = Some(now.clone());
            set_condition(status, NewCondition::truthy(ConditionType::Prepare), now);
        })
        .await?;
    crate::crash_point!("preflight.after-save");
    Ok(Outcome::Continue)
}

/// The same words for as long as it waits: naming the Backup ahead would rewrite every waiting
/// Backup's status at each hand-over.
async fn wait_in_line(cx: &mut BackupRun<'_>, poll: Duration) -> StepResult {
    let backup = &cx.journal.backup;
    let message = format!(
        "waiting for the Backup ahead of it on TidbCluster {}/{} to finish (one backup at a time per cluster)",
        backup.cluster_namespace(),
        backup.spec.br.cluster
    );
    cx.journal.condition(NewCondition::truthy(ConditionType::Scheduled).because(Reason::WaitingForOtherBackup, message)).await?;
    Ok(Outcome::Requeue(poll))
}

/// Whether another Backup holds this one's TidbCluster or is before it in line.
async fn backup_ahead(cx: &BackupRun<'_>) -> Result<bool, kube::Error> {
    let known = cx.ctx.backups.state();
    for candidate in queue::ahead_of(&known, &cx.journal.backup) {
        // The wake-up comes from another watch than this cache, which may not have seen the candidate
        // end yet: the API server has the last word.
        let api: Api<Backup> = Api::namespaced(cx.ctx.client.clone(), &candidate.namespace().unwrap_or_default());
        let live = api.get_opt(&candidate.name_any()).await?;
        if live.is_some_and(|b| b.metadata.deletion_timestamp.is_none() && !b.phase().is_some_and(ConditionType::is_terminal)) {
            return Ok(true);
        }
    }
    Ok(false)
}
