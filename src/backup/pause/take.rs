//! Pausing PD (`Running` → `VolumeBackupInitialized`): the pause is recorded first, then applied; PD
//! must drain its operators; the min resolved ts becomes the backup's point in time, held by a service
//! GC safepoint; a keeper then refreshes the pause until it is no longer wanted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::apply::apply_pause;
use super::guard::PauseGuard;
use super::keeper::KeeperJob;
use crate::api::ConditionType;
use crate::api::condition::{NewCondition, set_condition};
use crate::backup::claim::Claim;
use crate::backup::clock::unix_now;
use crate::backup::prepare::{self, Sessions, prepare_plan_stores};
use crate::backup::record::{Failure, PauseRecord};
use crate::backup::snapshot::RoundPlan;
use crate::backup::step::{BackupRun, Outcome, StepResult};
use crate::pd::{Pd, SCHEDULERS_TO_PAUSE, pause_config_values};
use crate::reason::Reason;

pub async fn run(cx: &mut BackupRun<'_>) -> StepResult {
    let pd = cx.clients.plan_pd(cx.journal.record.plan.as_ref()).await?;
    // The AWS clients (credentials, a web-identity token) are made now, not while PD is paused.
    cx.clients.aws(&cx.journal.backup).await?;
    // Held since preflight; asked again because nothing may pause a cluster another Backup holds.
    if let Claim::HeldBy(holder) = cx.claim().acquire().await? {
        return Err(Failure::new(Reason::ClusterClaimLost, format!("Backup {holder} holds the TidbCluster now; this backup did not pause it")).into());
    }
    let ttl = cx.ctx.settings.pause_ttl.as_secs().max(3);
    let store_count = cx.journal.record.plan.as_ref().map_or(1, |p| p.stores.len());
    let (schedulers, config, stores) = tokio::try_join!(pd.schedulers(), pd.schedule_config(), pd.stores())
        .map_err(|e| Failure::doing("reading PD schedulers, config and stores", &e))?;
    let schedulers: Vec<String> = schedulers.into_iter().filter(|s| SCHEDULERS_TO_PAUSE.contains(&s.as_str())).collect();
    let (paused_config, original_config) = pause_config_values(&config, store_count);
    // The TTLs start when PD takes the first pause call, so that is the time recorded.
    let started = unix_now();
    let pause = PauseRecord {
        service_safepoint_id: format!("tidb-ebs-backup-{}", cx.journal.uid()),
        ttl_seconds: ttl,
        paused_at: started,
        refreshed_at: started,
        schedulers,
        paused_config,
        original_config,
        safepoint: None,
    };
    // Recorded before PD is touched: whatever happens next, a restart knows what to undo.
    let intent = pause.clone();
    let mut stale = false;
    cx.journal
        .save(|status, record, now| {
            // Decided from what the cache showed; the write may land on a newer record (a conflict retry
            // re-runs this on the stored one). A pause already taken is never redone: a second resolved ts
            // would not match the snapshots.
            stale = record.pause.as_ref().is_some_and(|p| p.safepoint.is_some())
                || record.all_snapshots_created()
                || record.resumed
                || record.failure.is_some();
            if stale {
                return;
            }
            record.pause = Some(intent.clone());
            set_condition(
                status,
                NewCondition::truthy(ConditionType::Running).because(Reason::PausingScheduling, "pausing PD scheduling and GC"),
                now,
            );
        })
        .await?;
    if stale {
        tracing::info!("the pause was decided on a stale view of the Backup; going on from the stored record");
        return Ok(Outcome::Continue);
    }
    crate::crash_point!("pause.after-intent");
    let applied_at = Instant::now();
    apply_pause(pd.as_ref(), &pause).await.map_err(|e| Failure::new(Reason::PDPauseFailed, format!("pausing PD scheduling: {e}")))?;
    crate::crash_point!("pause.after-apply");
    // The keeper starts only after the resolved ts is known, so the wait must end well within the TTL.
    let quiet_wait = cx.ctx.settings.quiet_wait.min(Duration::from_secs(ttl / 3));
    let applied_ms = applied_at.elapsed().as_millis() as u64;
    wait_until_quiet(pd.as_ref(), quiet_wait).await?;
    let quiet_ms = applied_at.elapsed().as_millis() as u64;
    // Before the resolved ts, as BR: no region splits, merges or lags behind its log from here on.
    let wait_apply_limit = cx.ctx.settings.wait_apply_limit.min(Duration::from_secs(ttl / 3));
    let (prepared, prepare_record) = match prepare_plan_stores(cx, &pd, &stores, wait_apply_limit).await? {
        prepare::Outcome::Prepared(prepared, record) => (Some(prepared), record),
        prepare::Outcome::Unsupported(record) => {
            let note = format!("{}: going on with PD's pause only, as the BR of this TiKV version does", record.unsupported.as_deref().unwrap_or(""));
            tracing::warn!(%note);
            cx.journal.events.warning(Reason::TiKVPrepareUnsupported, &note, "Prepare").await;
            (None, record)
        }
    };
    let prepared = PreparedUntilHeld { uid: cx.journal.uid(), prepared };
    crate::crash_point!("pause.after-prepare");
    let prepared_ms = applied_at.elapsed().as_millis() as u64;
    let resolved_ts = match pd.min_resolved_ts().await.map_err(|e| Failure::doing("reading min resolved ts", &e))? {
        ts if ts.is_real_time && ts.ts > 0 && ts.ts != u64::MAX => ts.ts,
        ts => return Err(Failure::new(Reason::MinResolvedTsNotEnabled, format!("PD's min resolved ts is not usable ({ts:?})")).into()),
    };
    let safepoint = resolved_ts - 1;
    let update = pd
        .update_service_safepoint(&pause.service_safepoint_id, ttl as i64, safepoint)
        .await
        .map_err(|e| Failure::doing("setting the service GC safepoint", &e))?;
    if update.min_safe_point > safepoint {
        let message =
            format!("PD's GC safepoint {} ({}) is already past the resolved ts {resolved_ts}", update.min_safe_point, update.min_service_id);
        return Err(Failure::new(Reason::GCSafepointAhead, message).into());
    }
    crate::crash_point!("pause.after-safepoint");
    let gc = pd.gc_safepoints().await.map_err(|e| Failure::doing("reading the GC safepoint", &e))?;
    if gc.gc_safe_point >= resolved_ts {
        let message = format!("PD's GC safepoint {} is not below the resolved ts {resolved_ts}", gc.gc_safe_point);
        return Err(Failure::new(Reason::GCSafepointAhead, message).into());
    }
    let tikv = match &prepare_record.unsupported {
        None => format!(
            "{} TiKV stores prepared, {} regions applied in {} ms",
            prepare_record.stores, prepare_record.regions, prepare_record.wait_apply_ms
        ),
        Some(_) => "TiKV not prepared (it does not serve the prepare stream)".to_string(),
    };
    let message = format!("scheduling and GC paused at resolved ts {resolved_ts} (TTL {ttl}s, kept alive); {tikv}");
    // The first round of CreateSnapshots calls is recorded in the same write: one Kubernetes write
    // between the resolved ts and the calls.
    let round = RoundPlan::next(cx);
    cx.journal
        .save_deferring_event(|status, record, now| {
            if let Some(p) = record.pause.as_mut() {
                p.safepoint = Some(safepoint);
            }
            record.resolved_ts = Some(resolved_ts);
            record.prepare = Some(prepare_record.clone());
            if let Some(round) = &round {
                round.record(record);
            }
            set_condition(status, NewCondition::truthy(ConditionType::VolumeBackupInitialized).because(Reason::Paused, message.clone()), now);
        })
        .await?;
    cx.window.recorded_round = round.map(|r| r.instances().to_vec());
    crate::crash_point!("pause.after-save");
    // Where the window's time went so far, counted from the first pause call (the calls and the resume follow).
    tracing::info!(applied_ms, quiet_ms, prepared_ms, saved_ms = applied_at.elapsed().as_millis() as u64, "paused");
    let guard = ensure_keeper(cx, pd, Some(applied_at));
    prepared.hold(&cx.ctx.prepared, guard);
    Ok(Outcome::Continue)
}

/// The keeper of this backup's pause (started if none runs); `None` once resumed. A keeper refreshes at
/// once unless this process has just applied the pause itself (`applied_at`).
pub fn ensure_keeper(cx: &BackupRun<'_>, pd: Arc<dyn Pd>, applied_at: Option<Instant>) -> Option<Arc<PauseGuard>> {
    let journal = &cx.journal;
    let pause = journal.record.pause.clone().filter(|_| !journal.record.resumed)?;
    Some(cx.ctx.keepers.start(KeeperJob {
        pd,
        api: journal.api().clone(),
        namespace: journal.backup.metadata.namespace.clone().unwrap_or_default(),
        uid: journal.uid(),
        name: journal.name(),
        pause,
        max_window_seconds: journal.backup.spec.volume_backup_init_job_max_active_seconds,
        writer: cx.ctx.writer.clone(),
        fence: cx.ctx.fence.clone(),
        claim: cx.claim(),
        metrics: cx.ctx.metrics.clone(),
        cache: cx.ctx.backups.clone(),
        events: journal.events.clone(),
        applied_at,
    }))
}

/// How long a pause must still hold for a CreateSnapshots call to be sent.
pub fn pause_margin(cx: &BackupRun<'_>) -> Duration {
    (cx.ctx.settings.pause_ttl / 6).max(Duration::from_secs(2))
}

/// Waits until PD runs no operators (scheduling has drained after the pause).
async fn wait_until_quiet(pd: &dyn Pd, limit: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + limit;
    loop {
        let ops = pd.operators().await.map_err(|e| Failure::doing("listing PD operators", &e))?;
        if ops.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(Reason::ScheduleNotQuiet, format!("PD still runs {} operators {}s after pausing", ops.len(), limit.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A prepare not yet handed to [`Sessions`]: a step that ends early (a failure, an error) finishes it at
/// once instead of leaving TiKV's lease to lapse.
struct PreparedUntilHeld {
    uid: String,
    prepared: Option<crate::tikv::prepare::Prepared>,
}

impl PreparedUntilHeld {
    /// Held while the pause is: when its keeper stops, for whatever reason, TiKV is told Finish.
    fn hold(mut self, sessions: &Sessions, guard: Option<Arc<PauseGuard>>) {
        if let Some(prepared) = self.prepared.take() {
            if let Some(guard) = guard {
                prepared.renew_while(move || guard.check(Duration::ZERO).is_ok());
            }
            sessions.hold(&self.uid, prepared);
        }
    }
}

impl Drop for PreparedUntilHeld {
    fn drop(&mut self) {
        if let Some(prepared) = self.prepared.take() {
            tokio::spawn(prepared.finish());
        }
    }
}
