//! End-to-end volume-snapshot backups on the local stack: the operator runs in-process against the real
//! kube-apiserver, PD (or its emulator) and the AWS emulator.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::{Stack, TidbClusterFixture, describe_output, eventually};
use tidb_ebs_backup::api::{Backup, ConditionType};
use tidb_ebs_backup::aws::AwsSettings;
use tidb_ebs_backup::backup::context::RealConnectors;
use tidb_ebs_backup::backup::meta::TAG_BACKUP_UID;
use tidb_ebs_backup::backup::{self, Settings};
use tidb_ebs_backup::metrics::Metrics;
use tokio::sync::{Mutex, MutexGuard};

/// PD's schedulers and safepoints are cluster-wide: backups that pause it run one at a time so each
/// test can assert PD is exactly as it was.
async fn pd_exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

pub struct Operator {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub metrics: Arc<Metrics>,
}

impl Operator {
    /// The operator watching one namespace, configured like a deployment would be.
    pub async fn start(stack: &Stack, namespace: &str, settings: Settings) -> Operator {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let client = stack.kube_client().await;
        let connectors = Arc::new(RealConnectors::new(AwsSettings { base: stack.aws_config().await }));
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(backup::run(client, settings, connectors, metrics.clone(), Some(namespace.to_string()), async {
            let _ = rx.await;
        }));
        Operator { shutdown: Some(tx), task, metrics }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

fn settings(stack: &Stack) -> Settings {
    Settings {
        pd_url_template: stack.pd_url.clone(),
        pause_ttl: Duration::from_secs(30),
        quiet_wait: Duration::from_secs(30),
        poll_interval: Duration::from_millis(500),
        throttle_backoff_max: Duration::from_secs(2),
        ..Settings::default()
    }
}

struct Scene {
    stack: &'static Stack,
    namespace: String,
    cluster: TidbClusterFixture,
    bucket: String,
    client: kube::Client,
}

impl Scene {
    async fn new(prefix: &str, stores: usize, volumes_per_store: usize) -> Scene {
        let stack = Stack::get();
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

    async fn access_key_secret(&self, name: &str, data: Value) {
        let secret: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
        Api::<Secret>::namespaced(self.client.clone(), &self.namespace).create(&PostParams::default(), &secret).await.unwrap();
    }

    fn backup_yaml(&self, name: &str, extra_spec: Value, annotations: Value) -> Value {
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

    async fn apply(&self, backup: &Value) {
        let output = self.stack.kubectl_with_stdin(["apply", "-f", "-"], Some(&backup.to_string())).await;
        assert!(output.status.success(), "kubectl apply: {}", describe_output(&output));
    }

    fn api(&self) -> Api<Backup> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn wait_phase(&self, name: &str, phases: &[ConditionType], timeout: Duration) -> Backup {
        let api = self.api();
        eventually(&format!("Backup {name} to reach {phases:?}"), timeout, || async {
            let backup = api.get(name).await.ok()?;
            backup.phase().filter(|p| phases.contains(p)).map(|_| backup.clone())
        })
        .await
    }

    async fn snapshots_tagged(&self, uid: &str) -> Vec<aws_sdk_ec2::types::Snapshot> {
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

    async fn snapshots_of_volumes(&self, volume_ids: &[String]) -> Vec<aws_sdk_ec2::types::Snapshot> {
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

    async fn object(&self, key: &str) -> Option<Vec<u8>> {
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
struct PdState {
    paused: BTreeSet<String>,
    schedulers: BTreeSet<String>,
    schedule_config: Value,
    safepoints: BTreeSet<String>,
}

/// PD's state once earlier tests' pauses have expired, to compare against after a backup.
async fn settled_pd_state(stack: &Stack) -> PdState {
    eventually("PD to have no paused schedulers left by earlier tests", Duration::from_secs(120), || async {
        let state = pd_state(stack).await;
        (state.paused.is_empty() && !state.safepoints.iter().any(|s| s.starts_with("tidb-ebs-backup-"))).then_some(state)
    })
    .await
}

async fn pd_state(stack: &Stack) -> PdState {
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
            .filter_map(|sp| sp["service_id"].as_str().map(String::from))
            .collect(),
    }
}

/// What restore (BR and TiDB Operator) reads and checks in `backupmeta`, against the fixture and EC2.
async fn check_backupmeta(scene: &Scene, meta: &Value, uid: &str) {
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
    let snapshots: BTreeMap<String, aws_sdk_ec2::types::Snapshot> = scene
        .snapshots_tagged(uid)
        .await
        .into_iter()
        .map(|s| (s.snapshot_id().unwrap().to_string(), s))
        .collect();
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

async fn assert_completed(scene: &Scene, name: &str, before: &PdState) -> Backup {
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
    assert_eq!(&pd_state(scene.stack).await, before, "PD is left exactly as before");
    backup
}

#[tokio::test]
async fn access_key_backup_completes_and_pauses_pd_only_while_snapshotting() {
    let _pd = pd_exclusive().await;
    let scene = Scene::new("e2e-key", 3, 2).await;
    scene.access_key_secret("s3-secret", json!({"access_key": "AKIDEXAMPLE", "secret_key": "secret"})).await;
    let emulator = scene.stack.emulator();
    emulator.set_snapshot_pending_seconds(2.0).await;
    // Slow CreateSnapshots down so the pause can be observed from PD's side.
    emulator.add_fault(json!({"action": "CreateSnapshots", "delay_ms": 1500, "times": 3})).await;
    let before = settled_pd_state(scene.stack).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    scene.apply(&scene.backup_yaml("full1", json!({"s3": {"secretName": "s3-secret"}}), json!({}))).await;

    let paused = eventually("PD to show the pause", Duration::from_secs(60), || async {
        let state = pd_state(scene.stack).await;
        (!state.paused.is_empty() && state.safepoints.iter().any(|s| s.starts_with("tidb-ebs-backup-"))).then_some(state)
    })
    .await;
    assert!(paused.paused.contains("balance-leader-scheduler") && paused.paused.contains("balance-region-scheduler"), "{paused:?}");

    let backup = assert_completed(&scene, "full1", &before).await;
    let wide = scene.stack.kubectl(["get", "bk", "-n", &scene.namespace, "-o", "wide"]).await;
    let table = String::from_utf8_lossy(&wide.stdout).to_string();
    let row = table.lines().find(|l| l.starts_with("full1")).unwrap_or_else(|| panic!("{table}"));
    let status = backup.status.unwrap();
    for expected in ["Complete", status.backup_path.as_deref().unwrap(), status.commit_ts.as_deref().unwrap(), status.time_taken.as_deref().unwrap()] {
        assert!(row.contains(expected), "`{expected}` in {row}");
    }
    assert!(row.split_whitespace().count() >= 13, "all wide columns filled: {row}");
    let metrics = operator.metrics.encode();
    assert!(metrics.contains("tidb_ebs_backup_backups_finished_total{result=\"complete\"} 1"), "{metrics}");
    operator.stop().await;
    emulator.clear_faults().await;
    emulator.set_snapshot_pending_seconds(0.0).await;
}

#[tokio::test]
async fn iam_role_and_irsa_backups_use_their_own_identity() {
    let _pd = pd_exclusive().await;
    let scene = Scene::new("e2e-iam", 3, 2).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "tidb-backup-manager",
        "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/tidb-backup-irsa"}}}))
    .unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let emulator = scene.stack.emulator();
    let before = settled_pd_state(scene.stack).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;

    scene.apply(&scene.backup_yaml("role1", json!({}), json!({"iam.amazonaws.com/role": "arn:aws:iam::123456789012:role/tidb-backup"}))).await;
    assert_completed(&scene, "role1", &before).await;
    scene.apply(&scene.backup_yaml("irsa1", json!({"serviceAccount": "tidb-backup-manager"}), json!({}))).await;
    assert_completed(&scene, "irsa1", &before).await;

    let sts = emulator.requests_where(&[("service", "sts".to_string())]).await;
    let actions: BTreeSet<&str> = sts.iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.contains("AssumeRole") && actions.contains("AssumeRoleWithWebIdentity"), "STS calls: {actions:?}");
    operator.stop().await;
}

async fn expect_failure(scene: &Scene, name: &str, reason: &str, before: &PdState) -> Backup {
    let backup = scene.wait_phase(name, &[ConditionType::Failed, ConditionType::Complete], Duration::from_secs(120)).await;
    let status = backup.status.clone().unwrap();
    let failed = status.conditions.iter().find(|c| c.type_ == ConditionType::Failed);
    assert_eq!(failed.and_then(|c| c.reason.as_deref()), Some(reason), "conditions: {:#?}", status.conditions);
    let uid = backup.metadata.uid.clone().unwrap();
    assert!(scene.snapshots_tagged(&uid).await.is_empty(), "no stray snapshots after {reason}");
    assert_eq!(&pd_state(scene.stack).await, before, "nothing left paused after {reason}");
    backup
}

#[tokio::test]
async fn failures_leave_nothing_paused_and_no_stray_snapshots() {
    let _pd = pd_exclusive().await;
    let scene = Scene::new("e2e-fail", 2, 1).await;
    let emulator = scene.stack.emulator();
    let before = settled_pd_state(scene.stack).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    scene.access_key_secret("no-keys", json!({"something": "else"})).await;
    scene.access_key_secret("good", json!({"access_key": "a", "secret_key": "b"})).await;

    scene.apply(&scene.backup_yaml("no-secret", json!({"s3": {"secretName": "missing"}}), json!({}))).await;
    let failed = expect_failure(&scene, "no-secret", "SecretNotFound", &before).await;
    assert!(failed.status.unwrap().conditions.iter().any(|c| c.message.as_deref().is_some_and(|m| m.contains("missing"))));
    scene.apply(&scene.backup_yaml("no-keys", json!({"s3": {"secretName": "no-keys"}}), json!({}))).await;
    expect_failure(&scene, "no-keys", "SecretKeyMissing", &before).await;
    scene.apply(&scene.backup_yaml("no-bucket", json!({"s3": {"secretName": "good", "bucket": "does-not-exist-bucket"}}), json!({}))).await;
    expect_failure(&scene, "no-bucket", "BucketNotAccessible", &before).await;

    let s3 = scene.stack.s3_client().await;
    s3.put_object().bucket(&scene.bucket).key("taken/backupmeta").body(b"{}".to_vec().into()).send().await.unwrap();
    scene.apply(&scene.backup_yaml("taken", json!({"s3": {"secretName": "good"}}), json!({}))).await;
    expect_failure(&scene, "taken", "FileExistedInExternalStorage", &before).await;

    let broken_volume = scene.cluster.tikv[1].volumes[0].volume_id.clone();
    emulator.set_volume_snapshot_behaviour(&broken_volume, 1.0, "error").await;
    scene.apply(&scene.backup_yaml("snap-error", json!({"s3": {"secretName": "good"}}), json!({}))).await;
    let failed = expect_failure(&scene, "snap-error", "SnapshotFailed", &before).await;
    assert!(scene.object("snap-error/backupmeta").await.is_none(), "a failed backup's backupmeta is removed");
    let message = failed.status.unwrap().conditions.iter().find(|c| c.type_ == ConditionType::Failed).unwrap().message.clone().unwrap();
    assert!(message.contains(&broken_volume) && message.contains("deleted"), "{message}");
    operator.stop().await;
}

#[tokio::test]
async fn throttled_create_snapshots_are_retried_until_they_pass() {
    let _pd = pd_exclusive().await;
    let scene = Scene::new("e2e-throttle", 2, 2).await;
    scene.access_key_secret("good", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_requests().await;
    emulator
        .add_faults(vec![
            json!({"action": "CreateSnapshots", "status": 400, "code": "PendingSnapshotLimitExceeded", "times": 2}),
            json!({"action": "CreateSnapshots", "status": 503, "code": "RequestLimitExceeded", "times": 2}),
        ])
        .await;
    let before = settled_pd_state(scene.stack).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    scene.apply(&scene.backup_yaml("throttled", json!({"s3": {"secretName": "good"}}), json!({}))).await;
    assert_completed(&scene, "throttled", &before).await;
    let calls = emulator.requests(Some("CreateSnapshots")).await;
    let throttled = calls.iter().filter(|r| r["error_code"].as_str().is_some()).count();
    let succeeded = calls.iter().filter(|r| r["status"] == 200).count();
    assert_eq!(throttled, 4, "every injected throttle was met: {calls:#?}");
    assert_eq!(succeeded, scene.cluster.tikv.len(), "one successful CreateSnapshots per instance");
    let metrics = operator.metrics.encode();
    assert!(metrics.contains("operation=\"CreateSnapshots\",outcome=\"throttled\""), "{metrics}");
    operator.stop().await;
    emulator.clear_faults().await;
}
