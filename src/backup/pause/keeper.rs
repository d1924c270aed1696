//! Keeps a pause alive, and only while it is wanted. PD forgets a scheduler pause on a leader change and
//! drops config overrides and safepoints after their TTL, so a keeper re-applies all three every third
//! of the TTL, starting at once. Before each refresh it checks that the pause is still wanted: the Backup
//! exists with the same uid and is not being deleted, its record holds an unresumed pause without a
//! failure, the pause window limit has not passed, and this replica still leads. If any of these fails
//! it resumes PD at once instead of leaving it to the TTL. If the operator dies, nothing refreshes and
//! PD resumes by itself within one TTL.
//!
//! The keeper's view is shared with the snapshot step through a [`PauseGuard`]: a CreateSnapshots call
//! is sent only while the pause is known to be in force, and a pause that may have lapsed while calls
//! were in flight fails the backup instead of completing it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::task::JoinHandle;

use super::apply::{apply_pause, undo_pause};
use super::guard::PauseGuard;
use crate::api::{Backup, ConditionType};
use crate::backup::claim::ClusterClaim;
use crate::backup::clock::unix_now;
use crate::backup::events::Publisher;
use crate::backup::record::{BackupRecord, PauseRecord, RECORD_ANNOTATION};
use crate::k8s::StatusWriter;
use crate::k8s::lease::Fence;
use crate::metrics::Metrics;
use crate::pd::{Pd, PdError};
use crate::reason::Reason;

/// Everything a keeper needs; built by the pause and snapshot steps.
pub struct KeeperJob {
    pub pd: Arc<dyn Pd>,
    pub api: Api<Backup>,
    pub namespace: String,
    pub uid: String,
    pub name: String,
    pub pause: PauseRecord,
    pub max_window_seconds: i64,
    pub writer: Arc<StatusWriter>,
    pub fence: Arc<Fence>,
    pub claim: ClusterClaim,
    pub metrics: Arc<Metrics>,
    pub cache: Store<Backup>,
    pub events: Publisher,
    /// When this process applied the pause itself, just now: that counts as the first refresh.
    pub applied_at: Option<Instant>,
}

#[derive(Debug)]
enum Wanted {
    Yes,
    /// Stop; resume PD unless someone already did.
    No {
        why: &'static str,
        resume: bool,
    },
    /// The API server could not say; keep the pause (within the window limit) and ask again.
    Unknown(kube::Error),
}

impl KeeperJob {
    fn judge(&self, backup: Option<&Backup>) -> Wanted {
        let Some(backup) = backup.filter(|b| b.meta().uid.as_deref() == Some(self.uid.as_str())) else {
            return Wanted::No { why: "deleted", resume: true };
        };
        if backup.meta().deletion_timestamp.is_some() {
            return Wanted::No { why: "deleting", resume: true };
        }
        let Ok(record) = BackupRecord::of(backup) else { return Wanted::No { why: "record-unreadable", resume: true } };
        match record.pause.as_ref() {
            None => return Wanted::No { why: "record-lost", resume: true },
            Some(p) if p.service_safepoint_id != self.pause.service_safepoint_id => return Wanted::No { why: "record-lost", resume: true },
            Some(_) => {}
        }
        if record.resumed {
            return Wanted::No { why: "resumed", resume: false };
        }
        if record.failure.is_some() {
            return Wanted::No { why: "failed", resume: true };
        }
        if backup.phase().is_some_and(ConditionType::is_terminal) {
            return Wanted::No { why: "ended", resume: true };
        }
        Wanted::Yes
    }

    async fn live(&self) -> Wanted {
        match self.api.get_opt(&self.name).await {
            Ok(backup) => self.judge(backup.as_ref()),
            Err(e) => Wanted::Unknown(e),
        }
    }

    fn cached(&self) -> Wanted {
        let key = ObjectRef::new(&self.name).within(&self.namespace);
        self.judge(self.cache.get(&key).as_deref())
    }

    async fn run(self, guard: Arc<PauseGuard>) {
        let interval = Duration::from_secs((self.pause.ttl_seconds / 3).max(1));
        let retry = Duration::from_secs(2).min(interval);
        let mut next_refresh = self.applied_at.map_or_else(Instant::now, |applied| applied + interval);
        let mut failing = false;
        self.metrics.keeper_started();
        let why = loop {
            if !self.fence.held() {
                // Another replica may hold the Backup now: leave PD to it.
                guard.stop("not-leader");
                break "not-leader";
            }
            if unix_now() - self.pause.paused_at > self.max_window_seconds {
                guard.lapse(format!("the pause window limit ({}s, spec.volumeBackupInitJobMaxActiveSeconds) passed", self.max_window_seconds));
                guard.stop("window");
                self.resume().await;
                break "window";
            }
            let due = Instant::now() >= next_refresh;
            // The cache is looked at every second (a deleted Backup resumes PD within seconds); the API
            // server has the last word, and is asked before every refresh.
            let mut wanted = if due { self.live().await } else { self.cached() };
            if !due && matches!(wanted, Wanted::No { .. }) {
                wanted = self.live().await;
            }
            match wanted {
                Wanted::Yes => {}
                Wanted::No { why, resume } => {
                    guard.stop(why);
                    if resume {
                        self.resume().await;
                    }
                    if why == "deleted" {
                        // Nobody else will give the cluster back for a Backup that is gone.
                        let _ = self.claim.release().await;
                    }
                    break why;
                }
                Wanted::Unknown(e) => tracing::warn!(backup = %self.name, error = %e, "cannot read the Backup; keeping the pause within its window"),
            }
            if due {
                match self.refresh(&guard).await {
                    Ok(started) => {
                        failing = false;
                        next_refresh = started + interval;
                    }
                    Err(e) => {
                        if !failing {
                            // Said once per run of failures, on the Backup itself.
                            self.warn(&format!(
                                "refreshing the PD pause failed ({e}); retrying every {}s, PD keeps the pause for {}s from the last refresh",
                                retry.as_secs(),
                                self.pause.ttl_seconds
                            ))
                            .await;
                        }
                        failing = true;
                        next_refresh = Instant::now() + retry;
                    }
                }
            }
            let pause_for = next_refresh.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
            tokio::time::sleep(pause_for).await;
        };
        tracing::info!(backup = %self.name, %why, "pause keeper stopped");
        self.metrics.keeper_stopped(why);
    }

    async fn warn(&self, note: &str) {
        self.events.warning(Reason::PauseRefreshFailed, note, "KeepPaused").await;
    }

    /// One refresh; the instant it started when PD took it.
    async fn refresh(&self, guard: &PauseGuard) -> Result<Instant, PdError> {
        let started = Instant::now();
        let started_wall = unix_now();
        match apply_pause(self.pd.as_ref(), &self.pause).await {
            Ok(update) => {
                if let (Some(update), Some(safepoint)) = (update, self.pause.safepoint)
                    && update.min_safe_point > safepoint
                {
                    guard.lapse(format!("PD's GC safepoint {} ({}) moved past ours ({safepoint})", update.min_safe_point, update.min_service_id));
                }
                guard.confirmed(started);
                self.metrics.pause_refreshed(true);
                self.record_refresh(started_wall).await;
                if let Err(e) = self.claim.renew().await {
                    tracing::warn!(backup = %self.name, error = %e, "renewing the cluster claim failed");
                }
                Ok(started)
            }
            Err(e) => {
                self.metrics.pause_refreshed(false);
                tracing::warn!(backup = %self.name, error = %e, "refreshing the PD pause failed; retrying shortly");
                Err(e)
            }
        }
    }

    /// The time the refresh started is recorded, so a restarted operator never over-estimates the pause.
    async fn record_refresh(&self, started_wall: i64) {
        let Ok(Some(backup)) = self.api.get_opt(&self.name).await else { return };
        let id = self.pause.service_safepoint_id.clone();
        let _ = self
            .writer
            .update(&self.api, &backup, |owned| {
                let Some(json) = owned.annotations.get(RECORD_ANNOTATION) else { return };
                let Ok(mut record) = BackupRecord::from_annotation(json) else { return };
                if record.resumed || record.failure.is_some() {
                    return;
                }
                if let Some(p) = record.pause.as_mut().filter(|p| p.service_safepoint_id == id && p.refreshed_at < started_wall) {
                    p.refreshed_at = started_wall;
                    owned.annotations.insert(RECORD_ANNOTATION.into(), record.to_annotation());
                }
            })
            .await;
    }

    async fn resume(&self) {
        match undo_pause(self.pd.as_ref(), &self.pause).await {
            Ok(()) => tracing::info!(backup = %self.name, "PD resumed by the pause keeper"),
            Err(e) => tracing::warn!(backup = %self.name, error = %e, "resuming PD failed; PD drops the pause by itself within its TTL"),
        }
    }
}

/// A running keeper and what it knows of its pause.
type Running = (JoinHandle<()>, Arc<PauseGuard>);

#[derive(Default)]
pub struct Keepers {
    running: Mutex<HashMap<String, Running>>,
}

impl Drop for Keepers {
    /// An operator that goes away stops refreshing: PD then resumes by itself within one TTL.
    fn drop(&mut self) {
        for (_, (handle, _)) in self.running.lock().expect("keepers").drain() {
            handle.abort();
        }
    }
}

impl Keepers {
    /// The running keeper's guard for `uid`, if one runs.
    pub fn guard(&self, uid: &str) -> Option<Arc<PauseGuard>> {
        self.running.lock().expect("keepers").get(uid).filter(|(h, _)| !h.is_finished()).map(|(_, g)| g.clone())
    }

    /// Starts a keeper for the job's Backup unless one runs; returns its guard.
    pub fn start(&self, job: KeeperJob) -> Arc<PauseGuard> {
        let mut running = self.running.lock().expect("keepers");
        if let Some((_, guard)) = running.get(&job.uid).filter(|(h, _)| !h.is_finished()) {
            return guard.clone();
        }
        let guard = Arc::new(PauseGuard::from_record(&job.pause));
        if let Some(applied) = job.applied_at {
            guard.confirmed(applied);
        }
        let uid = job.uid.clone();
        let handle = tokio::spawn(job.run(guard.clone()));
        running.insert(uid, (handle, guard.clone()));
        guard
    }

    pub fn stop(&self, uid: &str) {
        if let Some((handle, guard)) = self.running.lock().expect("keepers").remove(uid) {
            guard.stop("resumed");
            if !handle.is_finished() {
                handle.abort();
            }
        }
    }
}
