//! Shared pieces of the end-to-end suites: an in-process operator, a TiDB cluster scene with its own
//! namespace and bucket, and PD's state for before/after comparisons.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tidb_ebs_backup::api::{Backup, ConditionType};
use tidb_ebs_backup::aws::AwsSettings;
use tidb_ebs_backup::backup::context::RealConnectors;
use tidb_ebs_backup::backup::meta::TAG_BACKUP_UID;
use tidb_ebs_backup::backup::{self, Settings};
use tidb_ebs_backup::metrics::Metrics;

use super::{Stack, TidbClusterFixture, describe_output, eventually};

pub struct Operator {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub metrics: Arc<Metrics>,
}

impl Operator {
    /// The operator watching one namespace, configured like a deployment would be.
    pub async fn start(stack: &Stack, namespace: &str, settings: Settings) -> Operator {
        Self::start_selected(stack, namespace, settings, None).await
    }

    /// An operator acting only on Backups matching `selector`.
    pub async fn start_selected(stack: &Stack, namespace: &str, settings: Settings, selector: Option<&str>) -> Operator {
        Self::start_as(stack, stack.kube_client().await, namespace, settings, selector).await
    }

    /// An operator whose Kubernetes identity is `client`'s (e.g. a ServiceAccount token).
    pub async fn start_as(stack: &Stack, client: kube::Client, namespace: &str, settings: Settings, selector: Option<&str>) -> Operator {
        let connectors = in_process_connectors(stack).await;
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(backup::run(
            client,
            settings,
            connectors,
            metrics.clone(),
            Arc::new(tidb_ebs_backup::k8s::lease::Fence::unfenced()),
            Some(namespace.to_string()),
            selector.map(String::from),
            async {
                let _ = rx.await;
            },
        ));
        Operator { shutdown: Some(tx), task, metrics }
    }

    /// An operator running the BackupSchedule controller beside the Backup controller, as the binary does.
    pub async fn start_with_schedules(stack: &Stack, namespace: &str, settings: Settings, selector: Option<&str>) -> Operator {
        Self::start_with_schedules_as(stack, stack.kube_client().await, namespace, settings, selector).await
    }

    pub async fn start_with_schedules_as(
        stack: &Stack,
        client: kube::Client,
        namespace: &str,
        settings: Settings,
        selector: Option<&str>,
    ) -> Operator {
        let connectors = in_process_connectors(stack).await;
        let metrics = Arc::new(Metrics::default());
        let fence = Arc::new(tidb_ebs_backup::k8s::lease::Fence::unfenced());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = futures::FutureExt::shared(Box::pin(async {
            let _ = rx.await;
        }));
        let schedules = tidb_ebs_backup::schedule::ScheduleSettings {
            instance: None,
            namespace: Some(namespace.to_string()),
            selector: selector.map(String::from),
            clock: Arc::new(tidb_ebs_backup::schedule::SystemClock),
        };
        let schedule_controller = tidb_ebs_backup::schedule::run(client.clone(), schedules, metrics.clone(), fence.clone(), shutdown.clone());
        let backup_controller =
            backup::run(client, settings, connectors, metrics.clone(), fence, Some(namespace.to_string()), selector.map(String::from), shutdown);
        let task = tokio::spawn(async move {
            futures::future::join(backup_controller, schedule_controller).await;
        });
        Operator { shutdown: Some(tx), task, metrics }
    }

    /// Waits until `/metrics` has `line`. Metrics are counted just after the write that shows a result,
    /// so they may trail what a test has already seen.
    pub async fn wait_for_metric(&self, line: &str) {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while !self.metrics.encode().contains(line) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(found.is_ok(), "`{line}` in {}", self.metrics.encode());
    }

    /// Ends the operator at once, mid-flight, as a crash would.
    pub fn crash(self) {
        self.task.abort();
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

/// Logging for an in-process operator (once per test process), and its connectors: the stack's AWS
/// emulator, and its TiKV stores reached through the PD emulator.
async fn in_process_connectors(stack: &Stack) -> Arc<RealConnectors> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    Arc::new(RealConnectors::new(AwsSettings { base: stack.aws_config().await }).with_tikv_dial_address(Some(stack.tikv_dial_address())))
}

/// The operator binary as a Deployment would run it: `kubeconfig`'s identity, the stack's AWS endpoint and
/// credentials (its "own" identity), output in `WORKDIR/<log_name>.log`; killed when dropped.
pub fn spawn_operator_binary(stack: &Stack, kubeconfig: &Path, log_name: &str, args: &[&str]) -> tokio::process::Child {
    spawn_operator_binary_with_env(stack, kubeconfig, log_name, args, &[])
}

/// As `spawn_operator_binary`, with extra environment variables (e.g. `FAILPOINTS`).
pub fn spawn_operator_binary_with_env(
    stack: &Stack,
    kubeconfig: &Path,
    log_name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> tokio::process::Child {
    let log = std::fs::File::create(stack.workdir.join(format!("{log_name}.log"))).expect("operator log file");
    // Cargo names the binary to integration tests only; benchmarks (examples) name it in OPERATOR_BIN.
    let binary = std::env::var("OPERATOR_BIN")
        .ok()
        .or(option_env!("CARGO_BIN_EXE_tidb-ebs-backup").map(String::from))
        .expect("the operator binary: OPERATOR_BIN, or run from an integration test");
    tokio::process::Command::new(binary)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("AWS_ENDPOINT_URL", &stack.aws_endpoint_url)
        .env("AWS_ACCESS_KEY_ID", &stack.aws_access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &stack.aws_secret_access_key)
        .env("AWS_REGION", &stack.aws_region)
        .env("LOG_LEVEL", "info")
        .env("TIKV_DIAL_ADDRESS", stack.tikv_dial_address())
        .envs(env.iter().copied())
        .stdout(Stdio::from(log.try_clone().expect("log file")))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("start the operator binary")
}

pub fn settings(stack: &Stack) -> Settings {
    Settings {
        pd_url_template: stack.pd_url.clone(),
        pause_ttl: Duration::from_secs(30),
        quiet_wait: Duration::from_secs(30),
        poll_interval: Duration::from_millis(500),
        throttle_backoff_max: Duration::from_secs(2),
        create_snapshots_timeout: Duration::from_secs(10),
        ..Settings::default()
    }
}

pub struct Scene {
    pub stack: &'static Stack,
    pub namespace: String,
    pub cluster: TidbClusterFixture,
    pub bucket: String,
    pub client: kube::Client,
}

impl Scene {
    pub async fn new(prefix: &str, stores: usize, volumes_per_store: usize) -> Scene {
        Self::new_on(Stack::get(), prefix, stores, volumes_per_store).await
    }

    /// A scene on a variant of the stack (e.g. another PD).
    pub async fn new_on(stack: &'static Stack, prefix: &str, stores: usize, volumes_per_store: usize) -> Scene {
        let namespace = stack.unique_namespace(prefix).await;
        let cluster = TidbClusterFixture::create(stack, &namespace, "basic", stores, volumes_per_store).await;
        let bucket = format!("bk-{namespace}");
        let location = aws_sdk_s3::types::CreateBucketConfiguration::builder()
            .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(stack.aws_region.as_str()))
            .build();
        stack.s3_client().await.create_bucket().bucket(&bucket).create_bucket_configuration(location).send().await.expect("create bucket");
        let client = stack.kube_client().await;
        Scene { stack, namespace, cluster, bucket, client }
    }

    pub async fn access_key_secret(&self, name: &str, data: Value) {
        let secret: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
        Api::<Secret>::namespaced(self.client.clone(), &self.namespace).create(&PostParams::default(), &secret).await.unwrap();
    }

    pub fn backup_yaml(&self, name: &str, extra_spec: Value, annotations: Value) -> Value {
        let mut spec = json!({
            "backupMode": "volume-snapshot",
            "backupType": "full",
            "br": {"cluster": "basic", "clusterNamespace": self.namespace},
            "s3": {"provider": "aws", "region": self.stack.aws_region, "bucket": self.bucket, "prefix": name},
        });
        merge(&mut spec, extra_spec);
        json!({
            "apiVersion": "pingcap.com/v1alpha1", "kind": "Backup",
            "metadata": {"name": name, "namespace": self.namespace, "annotations": annotations},
            "spec": spec,
        })
    }

    pub async fn apply(&self, backup: &Value) {
        let output = self.stack.kubectl_with_stdin(["apply", "-f", "-"], Some(&backup.to_string())).await;
        assert!(output.status.success(), "kubectl apply: {}", describe_output(&output));
    }

    pub fn api(&self) -> Api<Backup> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn wait_phase(&self, name: &str, phases: &[ConditionType], timeout: Duration) -> Backup {
        let api = self.api();
        eventually(&format!("Backup {name} to reach {phases:?}"), timeout, || async {
            let backup = api.get(name).await.ok()?;
            backup.phase().filter(|p| phases.contains(p)).map(|_| backup.clone())
        })
        .await
    }

    /// Waits until Backup `name` is gone (its finalizer, if any, released).
    pub async fn wait_gone(&self, name: &str) {
        let api = self.api();
        eventually(&format!("{name} to be gone"), Duration::from_secs(60), || async { matches!(api.get_opt(name).await, Ok(None)).then_some(()) })
            .await;
    }

    /// Waits until `name`'s record shows CreateSnapshots calls sent (or about to be).
    pub async fn wait_for_calls_in_flight(&self, name: &str) {
        let api = self.api();
        eventually(&format!("{name}'s CreateSnapshots to be under way"), Duration::from_secs(60), || async {
            let backup = api.get(name).await.ok()?;
            backup.annotations().get("tidb-ebs-backup/record")?.contains("snapshotRequests").then_some(())
        })
        .await;
    }

    /// The successful CreateSnapshots calls for this scene's TiKV volumes, in the emulator's request log.
    pub async fn successful_create_snapshots(&self) -> Vec<Value> {
        let volumes = self.cluster.tikv_volume_ids();
        self.stack
            .emulator()
            .requests(Some("CreateSnapshots"))
            .await
            .into_iter()
            .filter(|r| r["status"] == 200)
            .filter(|r| r["volume_ids"].as_array().is_some_and(|v| v.iter().any(|id| volumes.iter().any(|t| id == t.as_str()))))
            .collect()
    }

    pub async fn snapshots_tagged(&self, uid: &str) -> Vec<aws_sdk_ec2::types::Snapshot> {
        let ec2 = self.stack.ec2_client().await;
        let reply = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(Filter::builder().name(format!("tag:{TAG_BACKUP_UID}")).values(uid).build())
            .send()
            .await
            .unwrap();
        reply.snapshots().to_vec()
    }

    pub async fn snapshots_of_volumes(&self, volume_ids: &[String]) -> Vec<aws_sdk_ec2::types::Snapshot> {
        let ec2 = self.stack.ec2_client().await;
        let reply = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(Filter::builder().name("volume-id").set_values(Some(volume_ids.to_vec())).build())
            .send()
            .await
            .unwrap();
        reply.snapshots().to_vec()
    }

    pub async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let s3 = self.stack.s3_client().await;
        match s3.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(reply) => Some(reply.body.collect().await.unwrap().to_vec()),
            Err(_) => None,
        }
    }
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (k, v) in extra {
                merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, extra) => *base = extra,
    }
}

/// PD's scheduling and GC state that a backup must leave exactly as it found it.
#[derive(Debug, PartialEq)]
pub struct PdState {
    pub paused: BTreeSet<String>,
    pub schedulers: BTreeSet<String>,
    pub schedule_config: Value,
    pub safepoints: BTreeSet<String>,
}

/// PD's state once earlier tests' pauses have expired, to compare against after a backup.
pub async fn settled_pd_state(stack: &Stack) -> PdState {
    eventually("PD to have no paused schedulers left by earlier tests", Duration::from_secs(120), || async {
        let state = pd_state(stack).await;
        if !state.paused.is_empty() || state.safepoints.iter().any(|s| s.starts_with("tidb-ebs-backup-")) {
            return None;
        }
        // A young PD is still creating its default schedulers: wait until the set holds still.
        tokio::time::sleep(Duration::from_secs(1)).await;
        (pd_state(stack).await.schedulers == state.schedulers).then_some(state)
    })
    .await
}

pub async fn pd_state(stack: &Stack) -> PdState {
    let names = |v: Value| v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect();
    let now = jiff::Timestamp::now().as_second();
    PdState {
        paused: names(stack.pd_get("schedulers?status=paused").await),
        schedulers: names(stack.pd_get("schedulers").await),
        schedule_config: stack.pd_get("config/schedule").await,
        safepoints: stack.pd_get("gc/safepoint").await["service_gc_safe_points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|sp| sp["expired_at"].as_i64().unwrap_or(0) > now)
            // PD creates its own gc_worker entry at the first safepoint update ever made.
            .filter(|sp| sp["service_id"] != "gc_worker")
            .filter_map(|sp| sp["service_id"].as_str().map(String::from))
            .collect(),
    }
}

/// What restore (BR and TiDB Operator) reads and checks in `backupmeta`, against the fixture and EC2.
pub async fn check_backupmeta(scene: &Scene, meta: &Value, uid: &str) {
    let cluster = &scene.cluster;
    assert_eq!(meta["cluster_info"]["full_backup_type"], "aws-ebs");
    let version = meta["cluster_info"]["cluster_version"].as_str().unwrap();
    assert_eq!(version.split('.').filter(|p| p.parse::<u64>().is_ok()).count(), 3, "semver cluster version {version}");
    assert!(meta["cluster_info"]["resolved_ts"].as_u64().unwrap() > 0);
    assert_eq!(meta["tikv"]["replicas"], cluster.tikv.len());
    assert!(meta["kubernetes"]["options"].is_null());
    assert_eq!(meta["kubernetes"]["crd_tidb_cluster"]["metadata"]["name"], "basic");
    assert!(meta["kubernetes"]["crd_tidb_cluster"]["spec"]["tikv"]["replicas"].as_u64().unwrap() > 0);
    let stores = meta["tikv"]["stores"].as_array().unwrap();
    assert_eq!(stores.len(), cluster.tikv.len());
    let pvs = meta["kubernetes"]["pvs"].as_array().unwrap();
    let pvcs = meta["kubernetes"]["pvcs"].as_array().unwrap();
    assert!(!pvs.is_empty() && pvs.len() == pvcs.len(), "{} PVs, {} PVCs", pvs.len(), pvcs.len());
    let pvc_names: BTreeSet<&str> = pvcs.iter().filter_map(|p| p["metadata"]["name"].as_str()).collect();
    let snapshots: BTreeMap<String, aws_sdk_ec2::types::Snapshot> =
        scene.snapshots_tagged(uid).await.into_iter().map(|s| (s.snapshot_id().unwrap().to_string(), s)).collect();
    let by_store = cluster.by_store_id();
    let mut seen_volumes = BTreeSet::new();
    for store in stores {
        let member = by_store[&store["store_id"].as_u64().unwrap()];
        let volumes = store["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), member.volumes.len(), "volumes of {}", member.pod);
        assert_eq!(volumes.iter().filter(|v| v["type"] == "storage.data-dir").count(), 1, "one data dir on {}", member.pod);
        for volume in volumes {
            let volume_id = volume["volume_id"].as_str().unwrap();
            assert!(member.volume_ids().contains(&volume_id.to_string()), "{volume_id} belongs to {}", member.pod);
            assert!(seen_volumes.insert(volume_id.to_string()), "{volume_id} listed once");
            assert!(!volume["volume_az"].as_str().unwrap().is_empty());
            let snapshot = &snapshots[volume["snapshot_id"].as_str().unwrap()];
            assert_eq!(snapshot.volume_id(), Some(volume_id), "snapshot matches its volume");
            let pv = pvs
                .iter()
                .find(|pv| pv["metadata"]["annotations"]["temporary/volume-id"] == volume_id)
                .unwrap_or_else(|| panic!("a PV annotated temporary/volume-id={volume_id}"));
            let claim = pv["spec"]["claimRef"]["name"].as_str().expect("PV has a claimRef");
            assert!(pvc_names.contains(claim), "claimRef {claim} names a listed PVC");
        }
    }
    assert_eq!(snapshots.len(), seen_volumes.len(), "every snapshot of this backup is in backupmeta");
    for snapshot in snapshots.values() {
        let tags: BTreeMap<_, _> = snapshot.tags().iter().map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default())).collect();
        assert_eq!(tags.get(TAG_BACKUP_UID), Some(&uid), "tags on {:?}", snapshot.snapshot_id());
        assert_eq!(tags.get("tidb-ebs-backup/cluster").copied(), Some(format!("{}/basic", scene.namespace).as_str()));
    }
}

pub async fn assert_completed(scene: &Scene, name: &str, before: &PdState) -> Backup {
    let backup = scene.wait_phase(name, &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(120)).await;
    let status = backup.status.clone().unwrap();
    assert_eq!(backup.phase(), Some(&ConditionType::Complete), "conditions: {:#?}", status.conditions);
    assert_eq!(status.backup_path.as_deref(), Some(format!("s3://{}/{name}", scene.bucket).as_str()));
    assert!(status.commit_ts.as_deref().is_some_and(|ts| ts.parse::<u64>().is_ok()));
    assert!(status.backup_size.unwrap_or(0) > 0 && status.backup_size_readable.is_some());
    assert!(status.incremental_backup_size_readable.is_some());
    assert!(status.time_started.is_some() && status.time_completed.is_some() && status.time_taken.is_some());
    let meta: Value = serde_json::from_slice(&scene.object(&format!("{name}/backupmeta")).await.expect("backupmeta in S3")).unwrap();
    assert_eq!(meta["cluster_info"]["resolved_ts"].as_u64().map(|t| t.to_string()), status.commit_ts);
    check_backupmeta(scene, &meta, backup.metadata.uid.as_deref().unwrap()).await;
    let foreign = scene.snapshots_of_volumes(&scene.cluster.foreign_volume_ids).await;
    assert!(foreign.is_empty(), "foreign volumes were snapshotted: {foreign:?}");
    let roots: Vec<String> = scene.cluster.tikv.iter().map(|m| m.root_volume_id.clone()).collect();
    assert!(scene.snapshots_of_volumes(&roots).await.is_empty(), "boot volumes were snapshotted");
    assert_pd_unchanged(&pd_state(scene.stack).await, before);
    backup
}

/// Compares PD's state field by field, so a failure names what was left behind.
pub fn assert_pd_unchanged(after: &PdState, before: &PdState) {
    assert_eq!(after.paused, before.paused, "paused schedulers left behind");
    assert_eq!(after.schedulers, before.schedulers, "scheduler set changed");
    assert_eq!(after.safepoints, before.safepoints, "service GC safepoints left behind");
    if after.schedule_config != before.schedule_config {
        let (a, b) = (after.schedule_config.as_object().unwrap(), before.schedule_config.as_object().unwrap());
        let changed: Vec<_> = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).map(|(k, v)| format!("{k}: {:?} -> {v}", b.get(k))).collect();
        panic!("schedule config changed: {changed:?}");
    }
}
