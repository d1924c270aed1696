//! The CreateSnapshots calls, one per instance, all at once, while the pause is known to hold. The
//! instances a call goes out for are recorded first; CreateSnapshots has no idempotency token, so a call
//! whose answer was lost (or a process that died after sending) is looked up by tag before any resend.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::AwsClients;
use super::journal::unix_now;
use super::meta::{self, TAG_BACKUP_UID};
use super::pause::guard::PauseGuard;
use super::pause::{ensure_keeper, pause_margin};
use super::record::{Failure, InstancePlan};
use super::run::{BackupRun, Outcome, StepResult};
use crate::api::ConditionType;
use crate::api::condition::{NewCondition, set_condition};
use crate::aws::retry::retry_throttled;
use crate::aws::{AwsError, SnapshotState};
use crate::k8s::lease::Fence;
use crate::reason::Reason;

/// Rounds of calls when answers are unclear (a timeout, a server error) before the backup fails.
const ROUNDS: u32 = 3;

pub async fn run(cx: &mut BackupRun<'_>) -> StepResult {
    let pause = cx.journal.record.pause.clone().expect("pause recorded before snapshots");
    let max_window = cx.journal.backup.spec.volume_backup_init_job_max_active_seconds;
    if unix_now() - pause.paused_at > max_window {
        let message = format!("snapshots were not all started within {max_window}s (spec.volumeBackupInitJobMaxActiveSeconds)");
        return Err(Failure::new(Reason::PauseWindowExceeded, message).into());
    }
    let pd = cx.clients.plan_pd(cx.journal.record.plan.as_ref()).await?;
    let Some(guard) = ensure_keeper(cx, pd) else {
        return Err(Failure::new(Reason::PauseLapsed, "PD was resumed before all snapshots were started").into());
    };
    // A keeper that has just started (after a restart or a hand-over) refreshes at once: no call goes
    // out before PD has confirmed the pause.
    let margin = pause_margin(cx);
    guard
        .first_refresh(Duration::from_secs((pause.ttl_seconds / 3).max(1)))
        .await
        .and_then(|()| guard.check(margin))
        .map_err(|why| Failure::new(Reason::PauseLapsed, format!("{why}; snapshots taken now would not be consistent")))?;
    let aws = cx.clients.aws(&cx.journal.backup).await?;
    let deadline = Instant::now() + Duration::from_secs((pause.paused_at + max_window - unix_now()).max(1) as u64);
    wait_for_earlier_calls(cx).await;
    let mut round = 0;
    loop {
        round += 1;
        if !cx.journal.record.snapshot_requests.is_empty() {
            adopt_snapshots_by_tag(cx, &aws).await?;
        }
        let errors = send_create_snapshots(cx, &aws, &guard, deadline).await?;
        let Some((instance, e)) = errors.into_iter().next() else { break };
        let unclear = matches!(&e, CallError::Aws(e) if e.is_ambiguous());
        if unclear && round < ROUNDS && guard.check(margin).is_ok() && Instant::now() < deadline {
            // The call may have worked: the next round first looks for its snapshots by tag.
            tracing::warn!(%instance, error = %e, round, "CreateSnapshots answer unclear; looking up by tag, then retrying");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let reason = if matches!(e, CallError::PauseNotHeld(_)) { Reason::PauseLapsed } else { Reason::CreateSnapshotsFailed };
        // A timeout may hide a snapshot AWS did create: the failure step finds those by tag.
        return Err(Failure::new(reason, format!("snapshotting instance {instance}: {e}")).into());
    }
    // Every call has returned: the set is consistent only if the pause held until now.
    guard.check(Duration::ZERO).and_then(|()| leading(&cx.ctx.fence)).map_err(|why| {
        Failure::new(Reason::PauseLapsed, format!("{why} while CreateSnapshots calls were in flight; the snapshots are not consistent"))
    })?;
    Ok(Outcome::Continue)
}

fn leading(fence: &Fence) -> Result<(), String> {
    if fence.held() { Ok(()) } else { Err("this replica lost the leader Lease".into()) }
}

/// Calls sent by an earlier process (crashed, or replaced by another leader) may still be in flight, and
/// their snapshots not yet visible by tag: sending again now could snapshot a volume twice. So a round
/// recorded but unanswered is given the call timeout to land first.
async fn wait_for_earlier_calls(cx: &BackupRun<'_>) {
    let record = &cx.journal.record;
    let unanswered = !record.snapshot_requests.is_empty() && !record.instances_without_snapshots().is_empty();
    let Some(sent) = record.snapshots_requested_at.filter(|_| unanswered) else { return };
    let landed_by = sent + cx.ctx.settings.create_snapshots_timeout.as_secs() as i64 + 1;
    let wait = landed_by - unix_now();
    if wait > 0 {
        tracing::info!(wait_seconds = wait, "CreateSnapshots calls of an earlier process may still be in flight; waiting before looking them up");
        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
    }
}

/// A call that was not made, or failed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0}")]
    Aws(AwsError),
    #[error("not sent: {0}")]
    PauseNotHeld(String),
}

/// One round of CreateSnapshots for every instance still without snapshots, all at once (bounded by
/// `snapshot_concurrency`). Each call is sent only while the pause and the Lease are known to hold.
/// Results are recorded as they come; the errors are returned.
async fn send_create_snapshots(cx: &mut BackupRun<'_>, aws: &AwsClients, guard: &Arc<PauseGuard>, deadline: Instant) -> super::Result<Vec<(String, CallError)>> {
    let pending: Vec<InstancePlan> = cx.journal.record.instances_without_snapshots().into_iter().cloned().collect();
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let requested: Vec<String> = pending.iter().map(|i| i.instance_id.clone()).collect();
    let sent_at = unix_now();
    cx.journal
        .save(|_, record, _| {
            for instance in &requested {
                if !record.snapshot_requests.contains(instance) {
                    record.snapshot_requests.push(instance.clone());
                }
            }
            record.snapshots_requested_at = Some(sent_at);
        })
        .await?;
    crate::crash_point!("snapshot.after-requests");
    let plan = cx.journal.record.plan.clone().expect("plan recorded");
    let already: BTreeSet<String> = cx.journal.record.snapshots.keys().cloned().collect();
    let settings = &cx.ctx.settings;
    let (backoff_max, margin, call_timeout) = (settings.throttle_backoff_max, pause_margin(cx), settings.create_snapshots_timeout);
    // Calls run as tasks so that recording one result never holds up the others.
    let limit = Arc::new(tokio::sync::Semaphore::new(settings.snapshot_concurrency.max(1)));
    let mut calls = tokio::task::JoinSet::new();
    for instance in pending {
        let tags = meta::snapshot_tags(&cx.journal.backup, &plan, &instance.instance_id);
        let mut exclude = instance.exclude_volume_ids.clone();
        exclude.extend(instance.volume_ids.iter().filter(|v| already.contains(*v)).cloned());
        let snapshots = aws.snapshots.clone();
        let metrics = cx.ctx.metrics.clone();
        let (limit, guard, fence) = (limit.clone(), guard.clone(), cx.ctx.fence.clone());
        calls.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore is never closed");
            let mut not_sent = None;
            let result = retry_throttled(deadline, backoff_max, &metrics, "CreateSnapshots", || {
                let fenced = guard.check(margin).and_then(|()| leading(&fence));
                if let Err(why) = &fenced {
                    not_sent = Some(why.clone());
                }
                let call = snapshots.create_snapshots(&instance.instance_id, &exclude, &tags);
                async move {
                    match fenced {
                        Err(why) => Err(AwsError::Unexpected(why)),
                        Ok(()) => tokio::time::timeout(call_timeout, call).await.unwrap_or_else(|_| {
                            Err(AwsError::Transport { operation: "CreateSnapshots", message: format!("no answer within {}s", call_timeout.as_secs()) })
                        }),
                    }
                }
            })
            .await;
            crate::crash_point!("snapshot.after-call");
            let result = result.map_err(|e| match not_sent {
                Some(why) => CallError::PauseNotHeld(why),
                None => CallError::Aws(e),
            });
            (instance, result)
        });
    }
    let total = plan.instances.iter().map(|i| i.volume_ids.len()).sum::<usize>().max(1);
    let mut errors = Vec::new();
    while let Some(joined) = calls.join_next().await {
        // Results that arrived meanwhile are recorded in the same write.
        let mut ready = vec![joined];
        while let Some(more) = calls.try_join_next() {
            ready.push(more);
        }
        let mut batch = Vec::new();
        for joined in ready {
            let (instance, result) = joined.expect("CreateSnapshots task panicked");
            match result {
                Ok(created) => {
                    if created.iter().any(|c| !instance.volume_ids.contains(&c.volume_id)) {
                        tracing::error!(instance = %instance.instance_id, ?created, "CreateSnapshots snapshotted volumes it was told to exclude");
                    }
                    batch.extend(created);
                }
                Err(e) => {
                    tracing::warn!(instance = %instance.instance_id, error = %e, "CreateSnapshots failed");
                    errors.push((instance.instance_id.clone(), e));
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        cx.journal
            .save(|status, record, now| {
                for c in &batch {
                    record.snapshots.insert(c.volume_id.clone(), c.snapshot_id.clone());
                }
                let message = format!("{} of {total} snapshots started", record.snapshots.len());
                set_condition(status, NewCondition::truthy(ConditionType::VolumeBackupInitialized).because(Reason::Snapshotting, message), now);
            })
            .await?;
        crate::crash_point!("snapshot.after-save");
        cx.ctx.metrics.snapshots_started(batch.len());
    }
    Ok(errors)
}

/// Snapshots of this backup found by tag, recorded for the volumes that have none yet.
async fn adopt_snapshots_by_tag(cx: &mut BackupRun<'_>, aws: &AwsClients) -> StepResult {
    let found = aws.snapshots.find_snapshots_by_tag(TAG_BACKUP_UID, &cx.journal.uid()).await.map_err(|e| Failure::doing("looking up this backup's snapshots", &e))?;
    let record = &cx.journal.record;
    let planned: BTreeSet<String> = record.plan.iter().flat_map(|p| p.instances.iter().flat_map(|i| i.volume_ids.clone())).collect();
    let adopt: Vec<_> = found
        .into_iter()
        .filter(|s| planned.contains(&s.volume_id) && s.state != SnapshotState::Error && !record.snapshots.contains_key(&s.volume_id))
        .collect();
    if !adopt.is_empty() {
        tracing::info!(count = adopt.len(), "adopting snapshots created before a restart or timeout");
        cx.journal
            .save(|_, record, _| {
                for s in &adopt {
                    record.snapshots.entry(s.volume_id.clone()).or_insert_with(|| s.snapshot_id.clone());
                }
            })
            .await?;
    }
    Ok(Outcome::Continue)
}
