//! Prometheus metrics and the health endpoints (`/metrics`, `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::ConditionType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsLabel {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabels {
    pub namespace: String,
    pub schedule: String,
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleResultLabels {
    namespace: String,
    schedule: String,
    cluster: String,
    result: String,
}

/// Per BackupSchedule: the figures an RPO alert needs.
#[derive(Default)]
struct ScheduleMetrics {
    last_success: Family<ScheduleLabels, Gauge>,
    last_failure: Family<ScheduleLabels, Gauge>,
    next_run: Family<ScheduleLabels, Gauge>,
    interval: Family<ScheduleLabels, Gauge>,
    runs: Family<ScheduleResultLabels, Counter>,
    retention_deletions: Family<ScheduleResultLabels, Counter>,
}

pub struct Metrics {
    registry: Registry,
    schedules: ScheduleMetrics,
    phases: Family<PhaseLabel, Counter>,
    results: Family<ResultLabel, Counter>,
    cleanups: Family<ResultLabel, Counter>,
    backup_duration: Histogram,
    pause_window: Histogram,
    tikv_wait_apply: Histogram,
    snapshots_started: Counter,
    aws_calls: Family<AwsLabel, Counter>,
    reconcile_errors: Family<ReasonLabel, Counter>,
    pause_refreshes: Family<ResultLabel, Counter>,
    keeper_stops: Family<ReasonLabel, Counter>,
    pauses_held: Gauge,
    orphan_snapshots: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tidb_ebs_backup");
        let phases = Family::<PhaseLabel, Counter>::default();
        let results = Family::<ResultLabel, Counter>::default();
        let cleanups = Family::<ResultLabel, Counter>::default();
        let backup_duration = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let pause_window = Histogram::new(exponential_buckets(0.25, 2.0, 12));
        let tikv_wait_apply = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "tikv_wait_apply_seconds",
            "Time TiKV's regions took to apply their log once the stores were prepared (part of the pause window)",
            tikv_wait_apply.clone(),
        );
        let snapshots_started = Counter::default();
        let aws_calls = Family::<AwsLabel, Counter>::default();
        let reconcile_errors = Family::<ReasonLabel, Counter>::default();
        let pause_refreshes = Family::<ResultLabel, Counter>::default();
        let keeper_stops = Family::<ReasonLabel, Counter>::default();
        let pauses_held = Gauge::default();
        let orphan_snapshots = Gauge::default();
        registry.register("pause_refreshes", "Refreshes of a PD pause by its keeper, by result (ok, failed)", pause_refreshes.clone());
        registry.register(
            "pause_keeper_stops",
            "Pause keepers stopped, by why (resumed, deleted, failed, window, not-leader, ...)",
            keeper_stops.clone(),
        );
        registry.register("pd_pauses_held", "PD pauses this replica is keeping alive now", pauses_held.clone());
        registry.register(
            "orphan_snapshots",
            "Snapshots tagged by this operator whose Backup is gone and that no backupmeta lists (last scan)",
            orphan_snapshots.clone(),
        );
        let schedules = ScheduleMetrics::default();
        registry.register(
            "schedule_last_success_timestamp_seconds",
            "Recovery point (commit ts) of the newest Complete backup of each BackupSchedule, in Unix seconds",
            schedules.last_success.clone(),
        );
        registry.register(
            "schedule_last_failure_timestamp_seconds",
            "Creation time of the newest Failed backup of each BackupSchedule still kept, in Unix seconds",
            schedules.last_failure.clone(),
        );
        registry.register(
            "schedule_next_run_timestamp_seconds",
            "Next scheduled run of each BackupSchedule, in Unix seconds",
            schedules.next_run.clone(),
        );
        registry.register("schedule_interval_seconds", "Time between two scheduled runs of each BackupSchedule", schedules.interval.clone());
        registry.register(
            "schedule_runs",
            "Scheduled runs by result (created, skipped: a backup was running, missed: past the starting deadline)",
            schedules.runs.clone(),
        );
        registry.register("schedule_retention_deletions", "Backups retention deleted, by result (ok, failed)", schedules.retention_deletions.clone());
        registry.register("backup_phase_transitions", "Backups entering each phase", phases.clone());
        registry.register("backups_finished", "Backups finished, by result", results.clone());
        registry.register(
            "cleanups",
            "Deleted Backups by what happened to their data (cleaned, retained, nothing, released, failed attempts)",
            cleanups.clone(),
        );
        registry.register("backup_duration_seconds", "Time from start to Complete", backup_duration.clone());
        registry.register("pause_window_seconds", "Time PD scheduling and GC stayed paused", pause_window.clone());
        registry.register("snapshots_started", "EBS snapshots started", snapshots_started.clone());
        registry.register("aws_calls", "AWS API calls by operation and outcome (ok, throttled, error)", aws_calls.clone());
        registry.register("reconcile_errors", "Reconcile errors by reason", reconcile_errors.clone());
        Self {
            registry,
            schedules,
            phases,
            results,
            cleanups,
            backup_duration,
            pause_window,
            tikv_wait_apply,
            snapshots_started,
            aws_calls,
            reconcile_errors,
            pause_refreshes,
            keeper_stops,
            pauses_held,
            orphan_snapshots,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub fn phase_entered(&self, phase: &ConditionType) {
        let phase = match phase {
            ConditionType::Other(_) => "Other".to_string(),
            known => format!("{known:?}"),
        };
        self.phases.get_or_create(&PhaseLabel { phase }).inc();
    }

    pub fn backup_finished(&self, result: &str, seconds: Option<f64>) {
        self.results.get_or_create(&ResultLabel { result: result.into() }).inc();
        if let Some(seconds) = seconds {
            self.backup_duration.observe(seconds);
        }
    }

    /// `result`: cleaned | retained | nothing | released | failed (one per failed attempt).
    pub fn cleanup(&self, result: &str) {
        self.cleanups.get_or_create(&ResultLabel { result: result.into() }).inc();
    }

    pub fn pause_window(&self, seconds: f64) {
        self.pause_window.observe(seconds);
    }

    pub fn tikv_wait_apply(&self, seconds: f64) {
        self.tikv_wait_apply.observe(seconds);
    }

    pub fn snapshots_started(&self, count: usize) {
        self.snapshots_started.inc_by(count as u64);
    }

    pub fn aws_call<T>(&self, operation: &str, result: &Result<T, crate::aws::AwsError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) if e.is_throttle() => "throttled",
            Err(_) => "error",
        };
        self.aws_calls.get_or_create(&AwsLabel { operation: operation.into(), outcome: outcome.into() }).inc();
    }

    pub fn reconcile_error(&self, reason: &'static str) {
        self.reconcile_errors.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    pub fn pause_refreshed(&self, ok: bool) {
        self.pause_refreshes.get_or_create(&ResultLabel { result: if ok { "ok" } else { "failed" }.into() }).inc();
    }

    pub fn keeper_started(&self) {
        self.pauses_held.inc();
    }

    pub fn keeper_stopped(&self, why: &'static str) {
        self.pauses_held.dec();
        self.keeper_stops.get_or_create(&ReasonLabel { reason: why.into() }).inc();
    }

    pub fn set_orphan_snapshots(&self, count: usize) {
        self.orphan_snapshots.set(count as i64);
    }

    /// Unix seconds of the newest Complete and Failed backups and of the next run (`None`: no series).
    pub fn schedule_state(
        &self,
        labels: &ScheduleLabels,
        last_success: Option<i64>,
        last_failure: Option<i64>,
        next_run: Option<i64>,
        interval: Option<i64>,
    ) {
        let m = &self.schedules;
        for (family, value) in [(&m.last_success, last_success), (&m.last_failure, last_failure), (&m.next_run, next_run), (&m.interval, interval)] {
            match value {
                Some(value) => _ = family.get_or_create(labels).set(value),
                None => _ = family.remove(labels),
            }
        }
    }

    /// `result`: created | skipped | missed.
    pub fn schedule_run(&self, labels: &ScheduleLabels, result: &str) {
        self.schedules.runs.get_or_create(&with_result(labels, result)).inc();
    }

    pub fn retention_deletion(&self, labels: &ScheduleLabels, ok: bool) {
        self.schedules.retention_deletions.get_or_create(&with_result(labels, if ok { "ok" } else { "failed" })).inc();
    }

    /// A deleted schedule leaves no gauges behind (its counters stay, as counters do).
    pub fn schedule_gone(&self, labels: &ScheduleLabels) {
        self.schedule_state(labels, None, None, None, None);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("metrics encode");
        text
    }
}

fn with_result(labels: &ScheduleLabels, result: &str) -> ScheduleResultLabels {
    ScheduleResultLabels {
        namespace: labels.namespace.clone(),
        schedule: labels.schedule.clone(),
        cluster: labels.cluster.clone(),
        result: result.to_string(),
    }
}

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|State(m): State<Arc<Metrics>>| async move { m.encode() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.is_ready() { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "watch not synced") }
            }),
        )
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}
