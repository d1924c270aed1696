//! What every reconcile shares: clients, settings, the Backup cache, and how outside systems are reached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use crate::api::Backup;
use crate::aws::{AwsIdentity, AwsSettings, CredentialSource, Ec2Snapshots, MetaStore, S3MetaStore, Snapshots};
use crate::k8s::StatusWriter;
use crate::pd::{Pd, PdClient, PdEndpoint};

#[derive(Clone, Debug)]
pub struct Settings {
    /// PD URL for a TidbCluster; `{cluster}` and `{namespace}` are substituted.
    pub pd_url_template: String,
    /// TTL given to PD for the scheduler pause, config overrides and the GC safepoint; refreshed every third.
    pub pause_ttl: Duration,
    /// How long to wait for PD's running operators to drain after pausing.
    pub quiet_wait: Duration,
    /// How long TiKV's regions may take to apply their log once prepared (at most a third of the TTL).
    pub wait_apply_limit: Duration,
    /// CreateSnapshots calls in flight at most (0: as many as the token bucket lets through).
    pub snapshot_concurrency: usize,
    /// The client-side token bucket for CreateSnapshots (AWS's: a burst of 100, refilled at 5 a second).
    pub create_snapshots_burst: u32,
    pub create_snapshots_refill_per_second: f64,
    /// Pending snapshots the Region allows; checked in preflight, before anything is paused.
    pub pending_snapshot_limit: usize,
    pub size_concurrency: usize,
    pub poll_interval: Duration,
    /// Upper bound on waiting out AWS throttling for one CreateSnapshots.
    pub throttle_backoff_max: Duration,
    /// This replica's name, shown as the reporting instance of its Events.
    pub instance: Option<String>,
    /// How long a transient problem after the pause (credentials, STS, Kubernetes reads) is ridden out
    /// before the backup fails with it.
    pub transient_limit: Duration,
    /// Where the per-TidbCluster claim Leases live: the operator's own namespace.
    pub claim_namespace: String,
    /// How long one CreateSnapshots call may take before it is given up (and looked up by tag).
    pub create_snapshots_timeout: Duration,
    /// How often the leader looks for orphan snapshots (see `orphans`).
    pub orphan_scan_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            pd_url_template: "http://{cluster}-pd.{namespace}:2379".into(),
            pause_ttl: Duration::from_secs(120),
            quiet_wait: Duration::from_secs(60),
            wait_apply_limit: Duration::from_secs(60),
            snapshot_concurrency: 0,
            create_snapshots_burst: 100,
            create_snapshots_refill_per_second: 5.0,
            pending_snapshot_limit: 100,
            size_concurrency: 8,
            poll_interval: Duration::from_secs(5),
            throttle_backoff_max: Duration::from_secs(30),
            instance: None,
            transient_limit: Duration::from_secs(600),
            claim_namespace: "default".into(),
            create_snapshots_timeout: Duration::from_secs(30),
            orphan_scan_interval: Duration::from_secs(600),
        }
    }
}

impl Settings {
    pub fn pd_url(&self, cluster: &str, namespace: &str) -> String {
        self.pd_url_template.replace("{cluster}", cluster).replace("{namespace}", namespace)
    }
}

/// AWS clients acting with one Backup's identity.
#[derive(Clone)]
pub struct AwsClients {
    pub snapshots: Arc<dyn Snapshots>,
    pub meta: Arc<dyn MetaStore>,
}

/// How a reconcile reaches PD and AWS; tests of pure logic can supply their own.
#[async_trait]
pub trait Connectors: Send + Sync {
    fn pd(&self, endpoint: PdEndpoint) -> Result<Arc<dyn Pd>, crate::pd::PdError>;
    /// TiKV's stores, with the cluster's TLS material when it uses TLS.
    fn tikv(&self, tls: Option<crate::pd::PdTls>) -> Arc<dyn crate::tikv::Tikv>;
    async fn aws(&self, backup: &Backup, source: &CredentialSource) -> Result<AwsClients, crate::aws::AwsError>;
}

pub struct RealConnectors {
    pub settings: AwsSettings,
    identities: Mutex<HashMap<(String, String), AwsIdentity>>,
    /// Every TiKV store is dialled here, its own address kept as the authority (`--tikv-dial-address`).
    tikv_dial: Option<String>,
}

impl RealConnectors {
    pub fn new(settings: AwsSettings) -> Self {
        Self { settings, identities: Mutex::new(HashMap::new()), tikv_dial: None }
    }

    pub fn with_tikv_dial_address(mut self, address: Option<String>) -> Self {
        self.tikv_dial = address.filter(|a| !a.is_empty());
        self
    }
}

#[async_trait]
impl Connectors for RealConnectors {
    fn pd(&self, endpoint: PdEndpoint) -> Result<Arc<dyn Pd>, crate::pd::PdError> {
        Ok(Arc::new(PdClient::new(endpoint)?))
    }

    fn tikv(&self, tls: Option<crate::pd::PdTls>) -> Arc<dyn crate::tikv::Tikv> {
        Arc::new(crate::tikv::grpc::TikvClient::new(tls, self.tikv_dial.clone()))
    }

    async fn aws(&self, backup: &Backup, source: &CredentialSource) -> Result<AwsClients, crate::aws::AwsError> {
        let s3 = backup.spec.s3.clone().unwrap_or_default();
        let (bucket, prefix) = s3.bucket_and_prefix().unwrap_or_default();
        let uid = backup.metadata.uid.clone().unwrap_or_default();
        let key = (uid, format!("{:?}", source.describe()));
        let cached = self.identities.lock().expect("identity cache").get(&key).cloned();
        let identity = match cached {
            Some(identity) if identity.fresh_for(Duration::from_secs(300)) => identity,
            _ => {
                let session = crate::aws::credentials::session_name(
                    backup.metadata.namespace.as_deref().unwrap_or_default(),
                    backup.metadata.name.as_deref().unwrap_or_default(),
                );
                let identity = AwsIdentity::resolve(&self.settings, source, s3.region.as_deref(), &session).await?;
                self.identities.lock().expect("identity cache").insert(key, identity.clone());
                identity
            }
        };
        let mut s3_config = aws_sdk_s3::config::Builder::from(&identity.config);
        if let Some(endpoint) = s3.endpoint.as_deref().filter(|e| !e.is_empty()) {
            s3_config = s3_config.endpoint_url(endpoint).force_path_style(s3.force_path_style.unwrap_or(true));
        } else if let Some(force) = s3.force_path_style {
            s3_config = s3_config.force_path_style(force);
        } else if identity.config.endpoint_url().is_some() {
            // An endpoint override (an S3-compatible store or an emulator) rarely serves virtual-host buckets.
            s3_config = s3_config.force_path_style(true);
        }
        let s3_client = aws_sdk_s3::Client::from_conf(s3_config.build());
        Ok(AwsClients { snapshots: Arc::new(Ec2Snapshots::new(&identity.config)), meta: Arc::new(S3MetaStore::new(s3_client, bucket, prefix)) })
    }
}

pub struct Context {
    pub client: kube::Client,
    pub settings: Settings,
    pub connectors: Arc<dyn Connectors>,
    pub writer: Arc<StatusWriter>,
    pub recorder: Recorder,
    pub backups: Store<Backup>,
    pub keepers: super::pause::keeper::Keepers,
    /// The TiKV stores each running backup holds prepared.
    pub prepared: super::prepare::Sessions,
    pub error_backoff: super::backoff::ErrorBackoff,
    /// Paces CreateSnapshots across every backup of this operator (AWS meters the account and Region).
    pub create_snapshots_bucket: Arc<crate::aws::rate::TokenBucket>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Whether this replica may act (holds the leader Lease with margin).
    pub fence: Arc<crate::k8s::lease::Fence>,
}

impl Context {
    /// What every reconcile of one operator process shares; the Events name `settings.instance` as
    /// the reporting instance.
    pub fn new(
        client: kube::Client,
        settings: Settings,
        connectors: Arc<dyn Connectors>,
        backups: Store<Backup>,
        metrics: Arc<crate::metrics::Metrics>,
        fence: Arc<crate::k8s::lease::Fence>,
    ) -> Self {
        let reporter = kube::runtime::events::Reporter { controller: "tidb-ebs-backup".into(), instance: settings.instance.clone() };
        let bucket = crate::aws::rate::TokenBucket::new(settings.create_snapshots_burst, settings.create_snapshots_refill_per_second);
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            connectors,
            writer: Arc::new(StatusWriter::new()),
            backups,
            keepers: Default::default(),
            prepared: Default::default(),
            error_backoff: Default::default(),
            create_snapshots_bucket: Arc::new(bucket),
            metrics,
            fence,
        }
    }
}
