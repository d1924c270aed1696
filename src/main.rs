use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tidb_ebs_backup::aws::AwsSettings;
use tidb_ebs_backup::backup::{self, Settings, context::RealConnectors};
use tidb_ebs_backup::k8s::lease::{Fence, LeaderLease};
use tidb_ebs_backup::metrics::{self, Metrics};
use tidb_ebs_backup::schedule::{self, ScheduleSettings, SystemClock};

/// The two controllers of the active replica, stopped together by `shutdown`.
async fn controllers(
    client: kube::Client,
    settings: Settings,
    connectors: Arc<RealConnectors>,
    metrics: Arc<Metrics>,
    fence: Arc<Fence>,
    args: &Args,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let schedules = ScheduleSettings {
        instance: settings.instance.clone(),
        namespace: args.namespace.clone(),
        selector: args.backup_selector.clone(),
        clock: Arc::new(SystemClock),
    };
    let run_schedules = args.schedules;
    let schedule_controller = schedule::run(client.clone(), schedules, metrics.clone(), fence.clone(), shutdown.clone());
    let backup_controller = backup::run(client, settings, connectors, metrics, fence, args.namespace.clone(), args.backup_selector.clone(), shutdown);
    if run_schedules {
        futures::future::join(backup_controller, schedule_controller).await;
    } else {
        backup_controller.await;
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Backs up TiDB clusters on EKS with EBS snapshots, driven by `Backup` resources (backupMode: volume-snapshot).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Watch Backups in this namespace only (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// PD URL per TidbCluster; {cluster} and {namespace} are replaced.
    #[arg(long, env = "PD_URL_TEMPLATE", default_value = "http://{cluster}-pd.{namespace}:2379")]
    pd_url_template: String,
    /// TTL of the PD pause (schedulers, config, GC safepoint); refreshed every third of it.
    #[arg(long, env = "PAUSE_TTL_SECONDS", default_value_t = 120)]
    pause_ttl_seconds: u64,
    /// At most this many CreateSnapshots calls in flight at once (0: no cap beyond the token bucket).
    /// BR sends 8 at a time; that makes the pause grow with the cluster.
    #[arg(long, env = "SNAPSHOT_CONCURRENCY", default_value_t = 0)]
    snapshot_concurrency: usize,
    /// CreateSnapshots calls sent at once before pacing, as AWS's own bucket for the account and Region.
    #[arg(long, env = "CREATE_SNAPSHOTS_BURST", default_value_t = 100)]
    create_snapshots_burst: u32,
    /// CreateSnapshots calls a second once the burst is spent (AWS refills its bucket at 5 a second).
    #[arg(long, env = "CREATE_SNAPSHOTS_REFILL_PER_SECOND", default_value_t = 5.0)]
    create_snapshots_refill_per_second: f64,
    /// Pending snapshots the Region allows (AWS: 100 by default, raisable); a backup that would go
    /// beyond it waits before pausing anything.
    #[arg(long, env = "PENDING_SNAPSHOT_LIMIT", default_value_t = 100)]
    pending_snapshot_limit: usize,
    /// How long one CreateSnapshots call may take; a replica taking over waits this long for calls of
    /// its predecessor to land before it looks them up by tag.
    #[arg(long, env = "CREATE_SNAPSHOTS_TIMEOUT_SECONDS", default_value_t = 30)]
    create_snapshots_timeout_seconds: u64,
    /// How often the active replica looks for orphan snapshots (tagged by this operator, Backup gone,
    /// listed in no backupmeta) and reports them in /metrics and the log.
    #[arg(long, env = "ORPHAN_SCAN_INTERVAL_SECONDS", default_value_t = 600)]
    orphan_scan_interval_seconds: u64,
    /// How often pending snapshots are polled.
    #[arg(long, env = "POLL_INTERVAL_SECONDS", default_value_t = 5)]
    poll_interval_seconds: u64,
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Act only on Backups with these labels (e.g. `tidb-ebs-backup.io/managed=true`), the other half of
    /// keeping TiDB Operator away through its controllerManager.selector.
    #[arg(long, env = "BACKUP_SELECTOR")]
    backup_selector: Option<String>,
    /// Elect one active replica through a coordination.k8s.io Lease (disable only for a single replica).
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    #[arg(long, env = "LEASE_NAME", default_value = "tidb-ebs-backup")]
    lease_name: String,
    /// Namespace of the leader Lease and of the per-TidbCluster claim Leases; normally the operator's own
    /// (POD_NAMESPACE from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (POD_NAME from the downward API).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Connect to every TiKV store at this address (host:port), keeping the store's own address as the
    /// gRPC authority: for a proxy, or a test stack whose store addresses do not resolve.
    #[arg(long, env = "TIKV_DIAL_ADDRESS", hide = true)]
    tikv_dial_address: Option<String>,
    /// Act on BackupSchedules (`backupTemplate.backupMode: volume-snapshot`) as well as Backups.
    #[arg(long, env = "SCHEDULES", default_value_t = true, action = clap::ArgAction::Set)]
    schedules: bool,
    /// tracing filter, e.g. `info` or `tidb_ebs_backup=debug`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow_free::Result {
    let args = Args::parse();
    #[cfg(feature = "failpoints")]
    let _crash_points = fail::FailScenario::setup();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)?;
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let client = kube::Client::try_default().await?;
    let identity = args.identity.clone().unwrap_or_else(|| format!("tidb-ebs-backup-{}", std::process::id()));
    let settings = Settings {
        instance: Some(identity.clone()),
        pd_url_template: args.pd_url_template.clone(),
        pause_ttl: Duration::from_secs(args.pause_ttl_seconds),
        snapshot_concurrency: args.snapshot_concurrency,
        create_snapshots_burst: args.create_snapshots_burst,
        create_snapshots_refill_per_second: args.create_snapshots_refill_per_second,
        pending_snapshot_limit: args.pending_snapshot_limit,
        poll_interval: Duration::from_secs(args.poll_interval_seconds),
        claim_namespace: args.lease_namespace.clone(),
        create_snapshots_timeout: Duration::from_secs(args.create_snapshots_timeout_seconds.max(1)),
        orphan_scan_interval: Duration::from_secs(args.orphan_scan_interval_seconds.max(10)),
        ..Settings::default()
    };
    let metrics = Arc::new(Metrics::default());
    let server = tokio::spawn(metrics::serve(args.metrics_addr, metrics.clone()));
    let connectors = Arc::new(RealConnectors::new(AwsSettings::from_environment().await).with_tikv_dial_address(args.tikv_dial_address.clone()));
    if !args.leader_election {
        tracing::info!(namespace = ?args.namespace, "starting without leader election");
        controllers(client, settings, connectors, metrics, Arc::new(Fence::unfenced()), &args, shutdown_signal()).await;
        server.abort();
        return Ok(());
    }
    let duration = Duration::from_secs(args.lease_duration_seconds.max(3));
    let lease = LeaderLease::new(client.clone(), &args.lease_namespace, &args.lease_name, &identity, duration);
    // Acting stops a third of the Lease before it could expire, so a standby (which waits a whole
    // duration of silence) never overlaps with this replica.
    let fence = Arc::new(Fence::leased(duration / 3));
    tracing::info!(%identity, lease = %args.lease_name, "waiting to become the active replica");
    let mut shutdown = Box::pin(shutdown_signal());
    tokio::select! {
        _ = &mut shutdown => { server.abort(); return Ok(()); }
        taken = lease.acquire(&fence) => taken?,
    }
    tracing::info!(%identity, namespace = ?args.namespace, "active replica: starting the controller");
    let controller = controllers(client, settings, connectors, metrics, fence.clone(), &args, shutdown);
    tokio::select! {
        _ = controller => {
            server.abort();
            // Stopped on a signal: everything in flight was dropped, so the Lease can go to a standby now.
            lease.release().await;
            Ok(())
        }
        lost = lease.keep(&fence) => {
            // Another replica may act from now on; nothing of this one may. Exiting drops every in-flight
            // call and keeper at once (a Deployment restarts it as a standby).
            tracing::error!(error = %lost, "lost the leader Lease; exiting so only one replica acts");
            std::process::exit(3);
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;
}
