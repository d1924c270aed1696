//! The BackupSchedule controller: creates a volume-snapshot Backup at each scheduled time, one at a
//! time per schedule and per TidbCluster, and removes backups by retention. `plan` and `retention`
//! decide (pure functions of the schedule, its Backups and the time); `reconcile` acts on what they
//! decide; `build` makes the Backup as TiDB Operator makes scheduled ones.

pub mod build;
pub mod cron;
pub mod facts;
pub mod options;
pub mod plan;
pub mod reconcile;
pub mod retention;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::api::{Backup, BackupSchedule};
use crate::k8s::lease::Fence;
use crate::metrics::{Metrics, ScheduleLabels};

/// The time, injectable so tests need not wait for real minutes.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

pub struct ScheduleContext {
    pub client: kube::Client,
    /// Every Backup in the watched namespaces (not only the selected ones): a run must not start while
    /// any backup of the same TidbCluster runs.
    pub backups: Store<Backup>,
    pub metrics: Arc<Metrics>,
    pub fence: Arc<Fence>,
    pub clock: Arc<dyn Clock>,
    pub recorder: Recorder,
    /// Per schedule uid, the last thing reported (a scheduled time acted on, an invalid spec), so a
    /// pass that reads a not yet updated cache does not count or announce it twice.
    reported: Mutex<HashMap<String, String>>,
    /// Schedules with metric series, to drop them when the schedule goes.
    known: Mutex<HashMap<String, ScheduleLabels>>,
}

impl ScheduleContext {
    /// True the first time `what` is reported for this schedule (in a row).
    fn remember(&self, schedule: &BackupSchedule, what: &str) -> bool {
        let uid = schedule.uid().unwrap_or_default();
        let mut reported = self.reported.lock().expect("reported");
        if reported.get(&uid).is_some_and(|last| last == what) {
            return false;
        }
        reported.insert(uid, what.to_string());
        true
    }
}

pub struct ScheduleSettings {
    pub instance: Option<String>,
    pub namespace: Option<String>,
    pub selector: Option<String>,
    pub clock: Arc<dyn Clock>,
}

/// Runs the schedule controller until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    settings: ScheduleSettings,
    metrics: Arc<Metrics>,
    fence: Arc<Fence>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (schedules, backups): (Api<BackupSchedule>, Api<Backup>) = match &settings.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = settings.selector.as_deref().filter(|s| !s.is_empty()) {
        config = config.labels(selector);
    }
    let (backup_store, writer) = reflector::store();
    let backup_watch = watcher(backups.clone(), watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .for_each(|_| futures::future::ready(()));
    let backup_watch = tokio::spawn(backup_watch);
    let reporter = Reporter { controller: "tidb-ebs-backup".into(), instance: settings.instance.clone() };
    let ctx = Arc::new(ScheduleContext {
        client: client.clone(),
        backups: backup_store.clone(),
        metrics,
        fence,
        clock: settings.clock,
        recorder: Recorder::new(client.clone(), reporter),
        reported: Mutex::default(),
        known: Mutex::default(),
    });
    // Nothing is decided on a partial view of the Backups.
    if backup_store.wait_until_ready().await.is_err() {
        tracing::warn!("the Backup watch of the schedule controller ended before it synced");
        return;
    }
    let controller = Controller::new(schedules, config.clone()).owns(backups, watcher::Config::default().any_semantic());
    let forget = tokio::spawn(forget_gone_schedules(controller.store(), ctx.clone()));
    let controller = controller.run(reconcile::reconcile, reconcile::error_policy, ctx).for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "schedule controller event");
        }
    });
    tokio::select! {
        _ = controller => {}
        _ = shutdown => {}
    }
    forget.abort();
    backup_watch.abort();
}

/// A schedule deleted without a finalizer is never reconciled again: drop its gauges here, or an RPO
/// alert would go on firing for a schedule nobody has.
async fn forget_gone_schedules(schedules: Store<BackupSchedule>, ctx: Arc<ScheduleContext>) {
    loop {
        tokio::time::sleep(Duration::from_secs(15)).await;
        let present: std::collections::HashSet<String> = schedules.state().iter().filter_map(|s| s.uid()).collect();
        let mut known = ctx.known.lock().expect("known schedules");
        known.retain(|uid, labels| {
            let keep = present.contains(uid);
            if !keep {
                ctx.metrics.schedule_gone(labels);
            }
            keep
        });
    }
}
