//! The CreateSnapshots calls, one per instance, all at once, while the pause is known to hold. The
//! instances a call goes out for are recorded first; CreateSnapshots has no idempotency token, so a call
//! whose answer was lost (or a process that died after sending) is looked up by tag before any resend.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clock::unix_now;
use super::context::AwsClients;
use super::meta::{self, TAG_BACKUP_UID};
use super::pause::guard::PauseGuard;
use super::pause::take::{ensure_keeper, pause_margin};
use super::record::{BackupRecord, Failure, InstancePlan};
use super::step::{BackupRun, Outcome, StepResult};
use crate::api::ConditionType;
use crate::api::condition::{NewCondition, set_condition};
use crate::aws::rate::TokenBucket;
use crate::aws::retry::jittered_sleep;
use crate::aws::{AwsError, CreatedSnapshot, SnapshotState};
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
    let Some(guard) = ensure_keeper(cx, pd.clone(), None) else {
        return Err(Failure::new(Reason::PauseLapsed, "PD was resumed before all snapshots were started").into());
    };
    // A keeper started after a restart or a hand-over refreshes at once: no call goes out before PD has
    // confirmed the pause (the pause step's own apply counts as that confirmation).
    let margin = pause_margin(cx);
    guard
        .first_refresh(Duration::from_secs((pause.ttl_seconds / 3).max(1)))
        .await
        .and_then(|()| guard.check(margin))
        .map_err(|why| Failure::new(Reason::PauseLapsed, format!("{why}; snapshots taken now would not be consistent")))?;
    ensure_prepared(cx, &pd, &pause).await?;
    let aws = cx.clients.aws(&cx.journal.backup).await?;
    let deadline = Instant::now() + Duration::from_secs((pause.paused_at + max_window - unix_now()).max(1) as u64);
    // A round this pass recorded with the resolved ts has no calls in flight and no snapshots to find yet.
    let mut recorded_round = cx.window.recorded_round.take();
    if recorded_round.is_none() {
        wait_for_earlier_calls(cx).await;
    }
    let mut round = 0;
    let created = loop {
        round += 1;
        if recorded_round.is_none() && !cx.journal.record.snapshot_requests.is_empty() {
            adopt_snapshots_by_tag(cx, &aws).await?;
        }
        let (created, errors) = send_create_snapshots(cx, &aws, &guard, deadline, recorded_round.take()).await?;
        let Some((instance, e)) = errors.into_iter().next() else { break created };
        record_created(&mut cx.journal, created).await?;
        let unclear = matches!(&e, CallError::Aws(e) if e.is_ambiguous());
        if unclear && round < ROUNDS && guard.check(margin).is_ok() && Instant::now() < deadline {
            // The call may have worked: the next round first looks for its snapshots by tag.
            tracing::warn!(%instance, error = %e, round, "CreateSnapshots answer unclear; looking up by tag, then retrying");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let reason = match e {
            CallError::PauseNotHeld(_) => Reason::PauseLapsed,
            CallError::Quota(_) => Reason::SnapshotQuotaExceeded,
            CallError::Aws(_) | CallError::TooLate(_) => Reason::CreateSnapshotsFailed,
        };
        // A timeout may hide a snapshot AWS did create: the failure step finds those by tag.
        return Err(Failure::new(reason, format!("snapshotting instance {instance}: {e}")).into());
    };
    // Every call has returned: the set is consistent only if the pause (and TiKV's lease) held until now.
    let held = guard.check(Duration::ZERO).and_then(|()| leading(&cx.ctx.fence)).map_err(|why| (Reason::PauseLapsed, why)).and_then(|()| {
        match cx.ctx.prepared.check(&cx.journal.uid()) {
            Some(Err(why)) => Err((Reason::TiKVLeaseLapsed, why)),
            _ => Ok(()),
        }
    });
    if let Err((reason, why)) = held {
        record_created(&mut cx.journal, created).await?;
        return Err(Failure::new(reason, format!("{why} while CreateSnapshots calls were in flight; the snapshots are not consistent")).into());
    }
    tracing::info!("every CreateSnapshots call returned");
    // The set is complete and consistent: PD is resumed while its ids are recorded. Should this process
    // die before the record lands, the next one finds the snapshots by tag (under a short re-pause).
    let uid = cx.journal.uid();
    let ctx = cx.ctx;
    let (saved, resumed) = tokio::join!(record_created(&mut cx.journal, created), super::resume::resume_with(ctx, pd.as_ref(), &uid, &pause));
    cx.window.resumed = Some(resumed);
    saved?;
    Ok(Outcome::Continue)
}

/// The snapshot ids a round returned, written to the record.
async fn record_created(journal: &mut super::journal::Journal, created: Vec<CreatedSnapshot>) -> super::error::Result<()> {
    if created.is_empty() {
        return Ok(());
    }
    let total = journal.record.plan.iter().flat_map(|p| &p.instances).map(|i| i.volume_ids.len()).sum::<usize>().max(1);
    journal
        .save(|status, record, now| {
            for c in &created {
                record.snapshots.insert(c.volume_id.clone(), c.snapshot_id.clone());
            }
            let message = format!("{} of {total} snapshots started", record.snapshots.len());
            set_condition(status, NewCondition::truthy(ConditionType::VolumeBackupInitialized).because(Reason::Snapshotting, message), now);
        })
        .await?;
    crate::crash_point!("snapshot.after-save");
    Ok(())
}

/// A round of CreateSnapshots calls, as recorded before any of its calls goes out.
pub struct RoundPlan {
    instances: Vec<String>,
    sent_at: i64,
    sent_by: i64,
}

impl RoundPlan {
    /// The next round: every instance still without snapshots, and by when its calls (paced by the token
    /// bucket) are all sent, never after the pause window's end (spec.volumeBackupInitJobMaxActiveSeconds
    /// from the pause).
    pub fn next(cx: &BackupRun<'_>) -> Option<RoundPlan> {
        let record = &cx.journal.record;
        let instances: Vec<String> = record.instances_without_snapshots().iter().map(|i| i.instance_id.clone()).collect();
        let paused_at = record.pause.as_ref()?.paused_at;
        if instances.is_empty() {
            return None;
        }
        let window_end = paused_at + cx.journal.backup.spec.volume_backup_init_job_max_active_seconds;
        let sent_at = unix_now();
        let pacing = cx.ctx.create_snapshots_bucket.time_for(instances.len()) + cx.ctx.settings.throttle_backoff_max;
        let sent_by = (sent_at + pacing.as_secs() as i64 + 1).min(window_end);
        Some(RoundPlan { instances, sent_at, sent_by })
    }

    pub fn instances(&self) -> &[String] {
        &self.instances
    }

    pub fn record(&self, record: &mut BackupRecord) {
        for instance in &self.instances {
            if !record.snapshot_requests.contains(instance) {
                record.snapshot_requests.push(instance.clone());
            }
        }
        record.snapshots_requested_at = Some(self.sent_at);
        record.snapshots_sent_by = Some(self.sent_by);
    }
}

/// TiKV's stores are prepared before any call goes out: the pause step's prepare if it still holds, or
/// (after a restart or a hand-over, which dropped it) a new one.
async fn ensure_prepared(
    cx: &mut BackupRun<'_>,
    pd: &std::sync::Arc<dyn crate::pd::Pd>,
    pause: &crate::backup::record::PauseRecord,
) -> Result<(), Failure> {
    let uid = cx.journal.uid();
    match cx.ctx.prepared.check(&uid) {
        Some(Ok(())) => return Ok(()),
        Some(Err(why)) => return Err(Failure::new(Reason::TiKVLeaseLapsed, format!("{why}; snapshots taken now would not be consistent"))),
        None => {}
    }
    if cx.journal.record.prepare.as_ref().is_none_or(|p| p.unsupported.is_some()) {
        return Ok(());
    }
    let stores = pd.stores().await.map_err(|e| Failure::doing("reading PD stores", &e))?;
    let limit = cx.ctx.settings.wait_apply_limit.min(Duration::from_secs((pause.ttl_seconds / 3).max(1)));
    match crate::backup::prepare::prepare_plan_stores(cx, pd, &stores, limit).await? {
        crate::backup::prepare::Outcome::Prepared(prepared, record) => {
            tracing::info!(
                wait_apply_ms = record.wait_apply_ms,
                "prepared TiKV's stores again (the earlier prepare was this process's predecessor's)"
            );
            if let Some(guard) = cx.ctx.keepers.guard(&uid) {
                prepared.renew_while(move || guard.check(Duration::ZERO).is_ok());
            }
            cx.ctx.prepared.hold(&uid, prepared);
            Ok(())
        }
        crate::backup::prepare::Outcome::Unsupported(record) => {
            Err(Failure::new(Reason::TiKVPrepareFailed, record.unsupported.unwrap_or_else(|| "the stores no longer serve the prepare stream".into())))
        }
    }
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
    let landed_by = record.snapshots_sent_by.unwrap_or(sent) + cx.ctx.settings.create_snapshots_timeout.as_secs() as i64 + 1;
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
    /// AWS refused for a snapshot quota, which clears only as snapshots complete: not waited out.
    #[error("{0}")]
    Quota(AwsError),
    #[error("not sent: {0}")]
    PauseNotHeld(String),
    #[error("not sent: the round's calls had to be sent by {0} (unix seconds)")]
    TooLate(i64),
}

/// What every call of a round shares.
struct Round {
    snapshots: Arc<dyn crate::aws::Snapshots>,
    bucket: Arc<TokenBucket>,
    guard: Arc<PauseGuard>,
    fence: Arc<Fence>,
    metrics: Arc<crate::metrics::Metrics>,
    margin: Duration,
    call_timeout: Duration,
    backoff_max: Duration,
    deadline: Instant,
    sent_by: i64,
}

impl Round {
    /// One instance's CreateSnapshots: a token first, then sent only while the pause and the Lease are
    /// known to hold; a throttling answer empties the bucket and is waited out.
    async fn create(&self, instance: &InstancePlan, exclude: &[String], tags: &[(String, String)]) -> Result<Vec<CreatedSnapshot>, CallError> {
        let mut delay = Duration::from_millis(500);
        loop {
            self.bucket.take().await;
            if unix_now() > self.sent_by {
                return Err(CallError::TooLate(self.sent_by));
            }
            self.guard.check(self.margin).and_then(|()| leading(&self.fence)).map_err(CallError::PauseNotHeld)?;
            let call = self.snapshots.create_snapshots(&instance.instance_id, exclude, tags);
            let result = tokio::time::timeout(self.call_timeout, call).await.unwrap_or_else(|_| {
                Err(AwsError::Transport { operation: "CreateSnapshots", message: format!("no answer within {}s", self.call_timeout.as_secs()) })
            });
            self.metrics.aws_call("CreateSnapshots", &result);
            match result {
                Err(e) if e.is_snapshot_quota() => return Err(CallError::Quota(e)),
                Err(e) if e.is_throttle() && Instant::now() + delay < self.deadline => {
                    tracing::info!(instance = %instance.instance_id, error = %e, "CreateSnapshots throttled; pacing down");
                    self.bucket.throttled();
                    jittered_sleep(delay).await;
                    delay = (delay * 2).min(self.backoff_max);
                }
                other => return other.map_err(CallError::Aws),
            }
        }
    }
}

/// One round of CreateSnapshots for every instance still without snapshots, all at once as far as the
/// token bucket (and `snapshot_concurrency`, if set) allows. The round is recorded before any call (unless
/// `recorded`, this pass's own record of it, says it already is); the snapshots created and the errors
/// are returned once every call has returned, for the caller to record: the calls run while PD is paused,
/// and a result lost to a crash is found by tag.
async fn send_create_snapshots(
    cx: &mut BackupRun<'_>,
    aws: &AwsClients,
    guard: &Arc<PauseGuard>,
    deadline: Instant,
    recorded: Option<Vec<String>>,
) -> super::error::Result<(Vec<CreatedSnapshot>, Vec<(String, CallError)>)> {
    let pending: Vec<InstancePlan> = cx.journal.record.instances_without_snapshots().into_iter().cloned().collect();
    if pending.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let settings = &cx.ctx.settings;
    let requested: Vec<String> = pending.iter().map(|i| i.instance_id.clone()).collect();
    if recorded.as_ref() != Some(&requested) || cx.journal.record.snapshots_sent_by.is_none() {
        let plan = RoundPlan::next(cx).expect("instances without snapshots, and a pause");
        cx.journal.save(|_, record, _| plan.record(record)).await?;
    }
    let sent_by = cx.journal.record.snapshots_sent_by.expect("the round is recorded");
    let bucket = cx.ctx.create_snapshots_bucket.clone();
    crate::crash_point!("snapshot.after-requests");
    let plan = cx.journal.record.plan.clone().expect("plan recorded");
    let already: BTreeSet<String> = cx.journal.record.snapshots.keys().cloned().collect();
    let round = Arc::new(Round {
        snapshots: aws.snapshots.clone(),
        bucket,
        guard: guard.clone(),
        fence: cx.ctx.fence.clone(),
        metrics: cx.ctx.metrics.clone(),
        margin: pause_margin(cx),
        call_timeout: settings.create_snapshots_timeout,
        backoff_max: settings.throttle_backoff_max,
        deadline,
        sent_by,
    });
    let limit = (settings.snapshot_concurrency > 0).then(|| Arc::new(tokio::sync::Semaphore::new(settings.snapshot_concurrency)));
    let mut calls = tokio::task::JoinSet::new();
    for instance in pending {
        let tags = meta::snapshot_tags(&cx.journal.backup, &plan, &instance.instance_id);
        let mut exclude = instance.exclude_volume_ids.clone();
        exclude.extend(instance.volume_ids.iter().filter(|v| already.contains(*v)).cloned());
        let (round, limit) = (round.clone(), limit.clone());
        calls.spawn(async move {
            let _permit = match limit {
                Some(limit) => Some(limit.acquire_owned().await.expect("semaphore is never closed")),
                None => None,
            };
            let result = round.create(&instance, &exclude, &tags).await;
            crate::crash_point!("snapshot.after-call");
            (instance, result)
        });
    }
    let mut created = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let (instance, result) = joined.expect("CreateSnapshots task panicked");
        match result {
            Ok(snapshots) => {
                if snapshots.iter().any(|c| !instance.volume_ids.contains(&c.volume_id)) {
                    tracing::error!(instance = %instance.instance_id, ?snapshots, "CreateSnapshots snapshotted volumes it was told to exclude");
                }
                created.extend(snapshots);
            }
            Err(e) => {
                tracing::warn!(instance = %instance.instance_id, error = %e, "CreateSnapshots failed");
                errors.push((instance.instance_id.clone(), e));
            }
        }
    }
    cx.ctx.metrics.snapshots_started(created.len());
    Ok((created, errors))
}

/// Snapshots of this backup found by tag, recorded for the volumes that have none yet.
async fn adopt_snapshots_by_tag(cx: &mut BackupRun<'_>, aws: &AwsClients) -> StepResult {
    let found = aws
        .snapshots
        .find_snapshots_by_tag(TAG_BACKUP_UID, &cx.journal.uid())
        .await
        .map_err(|e| Failure::doing("looking up this backup's snapshots", &e))?;
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
