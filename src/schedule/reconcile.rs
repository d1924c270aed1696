//! One pass over a BackupSchedule: retention first (it runs even while paused, as in TiDB Operator),
//! then the run the planner asks for. A Backup's name is fixed by its scheduled time, so creating it
//! again after a crash finds it instead of making a second one.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::plan::{Decision, PlanInput, decide};
use super::retention::{State, Why, expired};
use super::{ScheduleContext, build, facts, options};
use crate::api::backup_schedule::SKIPPED_RUN_ANNOTATION;
use crate::api::{Backup, BackupSchedule};
use crate::metrics::ScheduleLabels;
use crate::reason::Reason;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Looked at again at least this often: failed backups age out of their grace on the clock alone.
const LONGEST_WAIT: Duration = Duration::from_secs(300);

pub async fn reconcile(schedule: Arc<BackupSchedule>, ctx: Arc<ScheduleContext>) -> Result<Action, Error> {
    if !schedule.is_volume_snapshot() || schedule.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if !ctx.fence.held() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let labels = labels(&schedule);
    ctx.known.lock().expect("known schedules").insert(schedule.uid().unwrap_or_default(), labels.clone());
    let options = match options::read(&schedule) {
        Ok(options) => options,
        Err(message) => {
            ctx.metrics.schedule_state(&labels, None, None, None, None);
            if ctx.remember(&schedule, &format!("invalid:{message}")) {
                tracing::warn!(%message, "schedule cannot be used");
                ctx.event(&schedule, true, Reason::ScheduleInvalid, &message).await;
            }
            return Ok(Action::await_change());
        }
    };
    let now = ctx.clock.now();
    let all_backups = ctx.backups.state();
    let own = facts::owned_by(&schedule, all_backups.iter().map(|b| b.as_ref()));
    let own_facts: Vec<_> = own.iter().map(|b| facts::of(b)).collect();
    let last_success = own_facts.iter().filter(|b| b.state == State::Complete).map(|b| b.point.as_second()).max();
    let last_failure = own_facts.iter().filter(|b| b.state == State::Failed).map(|b| b.created.as_second()).max();

    // Retention: one deletion at a time (each Backup's clean-up paces its own snapshot deletions).
    let deleting = own.iter().any(|b| b.metadata.deletion_timestamp.is_some());
    if !deleting && let Some((victim, why)) = expired(&own_facts, &options.policy, now).into_iter().next() {
        delete_backup(&ctx, &schedule, &labels, &victim.name, &victim.uid, why).await;
        if own_facts.len() == 1 {
            // Everything is gone: the next run counts from now (TiDB Operator's allBackupCleanTime).
            patch_status(&ctx, &schedule, json!({"lastBackup": null, "lastBackupTime": null, "allBackupCleanTime": now.to_string()})).await?;
        }
    }

    let interval = options.cron.interval(now).map(|d| d.as_secs());
    if schedule.spec.pause {
        ctx.metrics.schedule_state(&labels, last_success, last_failure, None, interval);
        return Ok(Action::requeue(LONGEST_WAIT));
    }
    let status = schedule.status.clone().unwrap_or_default();
    let anchor = status
        .last_backup_time
        .or(status.all_backup_clean_time)
        .map(|t| t.0)
        .or(schedule.meta().creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let skipped_through = schedule.annotation(SKIPPED_RUN_ANNOTATION).and_then(|t| t.parse::<Timestamp>().ok());
    let running = facts::running_for_cluster(&schedule, all_backups.iter().map(|b| b.as_ref()));
    let decision = decide(&PlanInput {
        cron: &options.cron,
        anchor,
        skipped_through,
        running: running.as_deref(),
        starting_deadline: options.starting_deadline,
        now,
    });
    tracing::debug!(?decision, "schedule decision");
    let next = match decision {
        Decision::Wait { next } => next,
        Decision::Create { at, next } => {
            create_backup(&ctx, &schedule, &labels, at).await?;
            next
        }
        Decision::Skip { at, running, next } => {
            let note = format!("the run for {at} is skipped: backup {running} is still running");
            skip(&ctx, &schedule, &labels, at, "skipped", Reason::ScheduledRunSkipped, &note).await?;
            next
        }
        Decision::Miss { at, next } => {
            let deadline = options.starting_deadline.map_or(0, |d| d.as_secs());
            let note = format!("the run for {at} is missed: it is more than {deadline}s late (the operator was not running)");
            skip(&ctx, &schedule, &labels, at, "missed", Reason::ScheduledRunMissed, &note).await?;
            next
        }
    };
    ctx.metrics.schedule_state(&labels, last_success, last_failure, next.map(|t| t.as_second()), interval);
    let wait = next.map_or(LONGEST_WAIT, |t| {
        let until = t.duration_since(now).max(SignedDuration::from_millis(200));
        Duration::try_from(until).unwrap_or(LONGEST_WAIT).min(LONGEST_WAIT)
    });
    Ok(Action::requeue(wait))
}

pub fn error_policy(schedule: Arc<BackupSchedule>, error: &Error, ctx: Arc<ScheduleContext>) -> Action {
    tracing::warn!(namespace = %schedule.namespace().unwrap_or_default(), name = %schedule.name_any(), %error, "schedule reconcile failed; retrying");
    ctx.metrics.reconcile_error("ScheduleReconcileFailed");
    Action::requeue(Duration::from_secs(5))
}

pub fn labels(schedule: &BackupSchedule) -> ScheduleLabels {
    ScheduleLabels {
        namespace: schedule.namespace().unwrap_or_default(),
        schedule: schedule.name_any(),
        cluster: schedule.spec.backup_template.br.cluster.clone(),
    }
}

async fn create_backup(ctx: &ScheduleContext, schedule: &BackupSchedule, labels: &ScheduleLabels, at: Timestamp) -> Result<(), Error> {
    let backup = build::backup_for(schedule, at);
    let name = backup.name_any();
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &labels.namespace);
    let created = match api.create(&PostParams::default(), &backup).await {
        Ok(_) => true,
        // Created by an earlier pass whose status write did not land: the same run, not a second one.
        Err(kube::Error::Api(status)) if status.code == 409 => false,
        Err(e) => return Err(e.into()),
    };
    patch_status(ctx, schedule, json!({"lastBackup": name, "lastBackupTime": at.to_string(), "allBackupCleanTime": null})).await?;
    if created && ctx.remember(schedule, &format!("run:{at}")) {
        tracing::info!(backup = %name, %at, "created the scheduled backup");
        ctx.metrics.schedule_run(labels, "created");
        ctx.event(schedule, false, Reason::ScheduledBackupCreated, &format!("created Backup {name} for {at}")).await;
    }
    Ok(())
}

async fn skip(
    ctx: &ScheduleContext,
    schedule: &BackupSchedule,
    labels: &ScheduleLabels,
    at: Timestamp,
    result: &str,
    reason: Reason,
    note: &str,
) -> Result<(), Error> {
    let api: Api<BackupSchedule> = Api::namespaced(ctx.client.clone(), &labels.namespace);
    let patch = json!({"metadata": {"annotations": {SKIPPED_RUN_ANNOTATION: at.to_string()}}});
    api.patch(&schedule.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    if ctx.remember(schedule, &format!("run:{at}")) {
        tracing::warn!(%note, "scheduled run not made");
        ctx.metrics.schedule_run(labels, result);
        ctx.event(schedule, true, reason, note).await;
    }
    Ok(())
}

/// Deletes through the API, so the Backup's finalizer applies its cleanPolicy; the uid precondition
/// makes sure it is the very backup retention chose, not a new one that took its name.
async fn delete_backup(ctx: &ScheduleContext, schedule: &BackupSchedule, labels: &ScheduleLabels, name: &str, uid: &str, why: Why) {
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &labels.namespace);
    let params =
        DeleteParams { preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }), ..DeleteParams::default() };
    match api.delete(name, &params).await {
        Ok(_) => deleted(ctx, schedule, labels, name, why).await,
        Err(kube::Error::Api(status)) if status.code == 404 => deleted(ctx, schedule, labels, name, why).await,
        Err(e) => {
            tracing::warn!(backup = %name, error = %e, "retention could not delete a backup");
            ctx.metrics.retention_deletion(labels, false);
            ctx.event(schedule, true, Reason::RetentionFailed, &format!("could not delete Backup {name}: {e}")).await;
        }
    }
}

async fn deleted(ctx: &ScheduleContext, schedule: &BackupSchedule, labels: &ScheduleLabels, name: &str, why: Why) {
    {
        {
            tracing::info!(backup = %name, why = why.as_str(), "retention deleted a backup");
            ctx.metrics.retention_deletion(labels, true);
            ctx.event(schedule, false, Reason::RetentionDeleted, &format!("deleted Backup {name} ({})", why.as_str())).await;
        }
    }
}

/// TiDB Operator's BackupSchedule CRD has no status subresource: status is written on the resource.
async fn patch_status(ctx: &ScheduleContext, schedule: &BackupSchedule, status: serde_json::Value) -> Result<(), Error> {
    let api: Api<BackupSchedule> = Api::namespaced(ctx.client.clone(), &schedule.namespace().unwrap_or_default());
    api.patch(&schedule.name_any(), &PatchParams::default(), &Patch::Merge(&json!({ "status": status }))).await?;
    Ok(())
}

impl ScheduleContext {
    pub(super) async fn event(&self, schedule: &BackupSchedule, warning: bool, reason: Reason, note: &str) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.as_str().into(),
            note: Some(crate::backup::events::truncate(note, 1024)),
            action: "Schedule".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &schedule.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an Event failed");
        }
    }
}
