//! End-to-end volume-snapshot backups on the local stack: the operator runs in-process against the real
//! kube-apiserver, PD (or its emulator) and the AWS emulator.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::e2e::{Operator, PdState, Scene, assert_completed, pd_state, settings, settled_pd_state};
use crate::support::{Emulator, eventually, exclusive};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::json;
use tidb_ebs_backup::api::{Backup, ConditionType};

#[tokio::test]
async fn access_key_backup_completes_and_pauses_pd_only_while_snapshotting() {
    let _stack = exclusive().await;
    let scene = Scene::new("e2e-key", 3, 2).await;
    scene.access_key_secret("s3-secret", json!({"access_key": "AKIDEXAMPLE", "secret_key": "secret"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
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
    for expected in ["Complete", status.backup_path.as_deref().unwrap(), status.commit_ts.as_deref().unwrap(), status.time_taken.as_deref().unwrap()]
    {
        assert!(row.contains(expected), "`{expected}` in {row}");
    }
    assert!(row.split_whitespace().count() >= 13, "all wide columns filled: {row}");
    operator.wait_for_metric("tidb_ebs_backup_backups_finished_total{result=\"complete\"} 1").await;
    operator.stop().await;
    emulator.clear_faults().await;
    emulator.set_snapshot_pending_seconds(0.0).await;
}

#[tokio::test]
async fn iam_role_and_irsa_backups_use_their_own_identity() {
    let _stack = exclusive().await;
    let scene = Scene::new("e2e-iam", 3, 2).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "tidb-backup-manager",
        "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/tidb-backup-irsa"}}}))
    .unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let emulator = scene.stack.emulator();
    let before = settled_pd_state(scene.stack).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;

    scene
        .apply(&scene.backup_yaml("role1", json!({}), json!({"iam.amazonaws.com/role": "arn:aws:iam::123456789012:role/tidb-backup"})))
        .await;
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
    crate::support::e2e::assert_pd_unchanged(&pd_state(scene.stack).await, before);
    backup
}

#[tokio::test]
async fn failures_leave_nothing_paused_and_no_stray_snapshots() {
    let _stack = exclusive().await;
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
    scene
        .apply(&scene.backup_yaml("no-bucket", json!({"s3": {"secretName": "good", "bucket": "does-not-exist-bucket"}}), json!({})))
        .await;
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
    let _stack = exclusive().await;
    let scene = Scene::new("e2e-throttle", 2, 2).await;
    scene.access_key_secret("good", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    emulator.add_faults(vec![json!({"action": "CreateSnapshots", "status": 503, "code": "RequestLimitExceeded", "times": 2})]).await;
    let before = settled_pd_state(scene.stack).await;
    let started = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0 - 1.0;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    scene.apply(&scene.backup_yaml("throttled", json!({"s3": {"secretName": "good"}}), json!({}))).await;
    assert_completed(&scene, "throttled", &before).await;
    let ours = scene.cluster.tikv_volume_ids();
    let calls: Vec<_> = emulator
        .requests(Some("CreateSnapshots"))
        .await
        .into_iter()
        .filter(|r| r["path"].as_str().is_some() && r["time"].as_f64() >= Some(started))
        .filter(|r| {
            r["error_code"].as_str().is_some() || r["volume_ids"].as_array().is_some_and(|v| v.iter().any(|id| ours.iter().any(|o| id == o.as_str())))
        })
        .collect();
    let throttled = calls.iter().filter(|r| r["error_code"].as_str().is_some()).count();
    let succeeded = calls.iter().filter(|r| r["status"] == 200).count();
    assert_eq!(throttled, 2, "every injected throttle was met: {calls:#?}");
    assert_eq!(succeeded, scene.cluster.tikv.len(), "one successful CreateSnapshots per instance");
    let metrics = operator.metrics.encode();
    assert!(metrics.contains("operation=\"CreateSnapshots\",outcome=\"throttled\""), "{metrics}");
    operator.stop().await;
    emulator.clear_faults().await;
}

#[tokio::test]
async fn a_restarted_operator_continues_without_snapshotting_twice() {
    let _stack = exclusive().await;
    let scene = Scene::new("e2e-restart", 3, 1).await;
    scene.access_key_secret("keys", serde_json::json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let slow = emulator.add_fault(json!({"action": "CreateSnapshots", "delay_ms": 2500, "times": 3})).await;
    let before = settled_pd_state(scene.stack).await;
    let first = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    scene.apply(&scene.backup_yaml("restart", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    scene.wait_for_calls_in_flight("restart").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.crash();
    // AWS finishes the calls the crashed operator made; the next operator must find those snapshots.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(id) = slow["id"].as_u64() {
        emulator.remove_fault(id).await;
    }
    let second = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let backup = assert_completed(&scene, "restart", &before).await;
    let uid = backup.metadata.uid.clone().unwrap();
    let ours = scene.successful_create_snapshots().await;
    assert_eq!(ours.len(), scene.cluster.tikv.len(), "one CreateSnapshots per instance across both operators: {ours:#?}");
    assert_eq!(scene.snapshots_tagged(&uid).await.len(), scene.cluster.tikv_volume_ids().len(), "no volume snapshotted twice");
    second.stop().await;
}

#[tokio::test]
async fn a_backup_tidb_operator_claimed_is_explained_and_unlabelled_ones_are_left_alone() {
    // The second operator here runs the unlabelled Backup for real, which pauses PD.
    let _stack = exclusive().await;
    let scene = Scene::new("e2e-coexist", 1, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    // What TiDB Operator v1.5+ writes on its first sync of a single-cluster volume-snapshot Backup.
    scene.apply(&scene.backup_yaml("claimed", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let invalid = json!({"status": {"phase": "Invalid", "conditions": [{"type": "Invalid", "status": "True", "reason": "InvalidSpec",
        "message": "only support volume snapshot backup across k8s clusters"}]}});
    let output = scene.stack.kubectl(["patch", "bk", "claimed", "-n", &scene.namespace, "--type", "merge", "-p", &invalid.to_string()]).await;
    assert!(output.status.success(), "{}", crate::support::describe_output(&output));
    let mut unlabelled = scene.backup_yaml("unlabelled", json!({"s3": {"secretName": "keys"}}), json!({}));
    unlabelled["metadata"]["labels"] = json!({"team": "x"});
    scene.apply(&unlabelled).await;

    let selector = "tidb-ebs-backup.io/managed=true";
    let labelled_operator = Operator::start_selected(scene.stack, &scene.namespace, settings(scene.stack), Some(selector)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(scene.api().get("unlabelled").await.unwrap().phase(), None, "a Backup outside --backup-selector is not touched");
    labelled_operator.stop().await;

    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let note = eventually("a TiDBOperatorInterference Event", Duration::from_secs(30), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("TiDBOperatorInterference")).and_then(|e| e.note)
    })
    .await;
    assert!(note.contains("controllerManager.selector") && note.contains(selector), "{note}");
    let claimed = scene.api().get("claimed").await.unwrap();
    assert_eq!(claimed.phase(), Some(&ConditionType::Invalid), "TiDB Operator's verdict stays; we do not fight it");
    assert!(claimed.annotations().get("tidb-ebs-backup/record").is_some_and(|r| !r.contains("plan")), "nothing was started");
    operator.stop().await;
}

/// A TCP relay to PD that can be cut, to make PD unreachable in the middle of a backup.
struct PdRelay {
    url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl PdRelay {
    async fn start(pd_url: &str) -> PdRelay {
        let target = pd_url.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, open) = (cut.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                open.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        PdRelay { url, cut, connections }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

/// PD cut while the CreateSnapshots calls (`delay_ms` each) are in flight, with a 6 s pause TTL; returns
/// the ended Backup and PD's state before.
async fn backup_losing_pd_mid_calls(scene: &Scene, name: &str, delay_ms: u64) -> (Backup, PdState) {
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    emulator.add_fault(json!({"action": "CreateSnapshots", "delay_ms": delay_ms, "times": 2})).await;
    let before = settled_pd_state(scene.stack).await;
    let relay = PdRelay::start(&scene.stack.pd_url).await;
    let mut config = settings(scene.stack);
    config.pd_url_template = relay.url.clone();
    config.pause_ttl = Duration::from_secs(6);
    let operator = Operator::start(scene.stack, &scene.namespace, config).await;
    scene.apply(&scene.backup_yaml(name, json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    scene.wait_for_calls_in_flight(name).await;
    relay.cut();
    let backup = scene.wait_phase(name, &[ConditionType::Failed, ConditionType::Complete], Duration::from_secs(90)).await;
    // Nobody refreshes the pause any more: PD lets it go within the TTL.
    eventually("the pause to expire in PD", Duration::from_secs(30), || async { (pd_state(scene.stack).await == before).then_some(()) }).await;
    emulator.clear_faults().await;
    operator.stop().await;
    (backup, before)
}

/// The calls return while the pause still holds (3 s < TTL 6 s), then PD cannot be told to resume: the
/// snapshots are consistent, so the backup completes (as BR does), says so in a Warning, and PD drops
/// the pause by its TTL.
#[tokio::test]
async fn pd_lost_after_the_calls_returned_still_completes_and_the_pause_expires() {
    let _stack = exclusive().await;
    let scene = Scene::new("e2e-pdlost", 2, 1).await;
    let (backup, _) = backup_losing_pd_mid_calls(&scene, "pd-lost", 3000).await;
    assert_eq!(backup.phase(), Some(&ConditionType::Complete), "{:#?}", backup.status);
    let uid = backup.metadata.uid.clone().unwrap();
    assert_eq!(scene.snapshots_tagged(&uid).await.len(), 2, "the consistent set is kept");
    let events = events_of(&scene, "pd-lost").await;
    assert!(events.iter().any(|(reason, note)| reason == "PDResumeFailed" && note.contains("drops the pause by itself")), "{events:?}");
}

/// The calls outlast the TTL while PD is unreachable (9 s > 6 s): the pause may have lapsed while they
/// ran, so the set is not consistent: `Failed`/`PauseLapsed` and no snapshot left.
#[tokio::test]
async fn a_pause_that_lapses_while_calls_are_in_flight_fails_the_backup_and_removes_its_snapshots() {
    let _stack = exclusive().await;
    let scene = Scene::new("e2e-lapse", 2, 1).await;
    let (backup, _) = backup_losing_pd_mid_calls(&scene, "lapsed", 9000).await;
    let failed = backup.status.clone().unwrap().conditions.into_iter().find(|c| c.type_ == ConditionType::Failed).expect("Failed");
    assert_eq!(failed.reason.as_deref(), Some("PauseLapsed"), "{failed:#?}");
    let message = failed.message.unwrap();
    assert!(message.contains("not consistent") && message.contains("deleted"), "{message}");
    assert!(scene.snapshots_tagged(backup.metadata.uid.as_deref().unwrap()).await.is_empty(), "no snapshot of an inconsistent set is left");
}

async fn events_of(scene: &Scene, name: &str) -> Vec<(String, String)> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let list = events.list(&Default::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn sizes_count_written_blocks_and_blocks_changed_since_the_previous_backup() {
    const BLOCK: i64 = 524_288;
    let _stack = exclusive().await;
    let scene = Scene::new("e2e-size", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let (a, b) = (scene.cluster.tikv[0].volumes[0].volume_id.clone(), scene.cluster.tikv[1].volumes[0].volume_id.clone());
    emulator.set_volume_blocks(&a, json!({"count": 100})).await;
    emulator.set_volume_blocks(&b, json!({"count": 40})).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let before = settled_pd_state(scene.stack).await;

    scene.apply(&scene.backup_yaml("size1", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let first = assert_completed(&scene, "size1", &before).await.status.unwrap();
    // The first backup of a volume has no previous snapshot: all its blocks are new.
    assert_eq!((first.backup_size, first.incremental_backup_size), (Some(140 * BLOCK), Some(140 * BLOCK)), "{first:#?}");
    assert_eq!(first.backup_size_readable.as_deref(), Some("73 MB"));

    // Volume a: 10 blocks rewritten, 20 added; volume b: 3 blocks trimmed. As BR counts it, only blocks with
    // data in the new snapshot (a SecondBlockToken) add to the incremental size: 30, not 33.
    emulator.set_volume_blocks(&a, json!({"write": (0..10).collect::<Vec<_>>(), "write_range": [100, 120]})).await;
    emulator.set_volume_blocks(&b, json!({"trim": [0, 1, 2]})).await;
    let size2_started = Emulator::now();
    scene.apply(&scene.backup_yaml("size2", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let second = assert_completed(&scene, "size2", &before).await.status.unwrap();
    assert_eq!((second.backup_size, second.incremental_backup_size), (Some(157 * BLOCK), Some(30 * BLOCK)), "{second:#?}");
    assert_eq!(second.incremental_backup_size_readable.as_deref(), Some("16 MB"));
    let changed = emulator.requests_since("ListChangedBlocks", size2_started).await;
    let compared: BTreeSet<&str> = changed.iter().filter(|r| r["status"] == 200).filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(compared.len(), 2, "one comparison per volume against its previous snapshot: {changed:#?}");

    // calcSizeLevel full: no incremental figure, and no EBS direct API calls for it.
    let size3_started = Emulator::now();
    scene.apply(&scene.backup_yaml("size3", json!({"calcSizeLevel": "full", "s3": {"secretName": "keys"}}), json!({}))).await;
    let third = scene.wait_phase("size3", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(60)).await.status.unwrap();
    assert_eq!((third.backup_size, third.incremental_backup_size), (Some(157 * BLOCK), None), "{third:#?}");
    assert!(emulator.requests_since("ListChangedBlocks", size3_started).await.is_empty());

    // The incremental figure cannot be had: the backup still completes, with its full size.
    let fault = emulator.add_fault(json!({"action": "ListChangedBlocks", "status": 500, "code": "InternalServerException", "times": -1})).await;
    scene.apply(&scene.backup_yaml("size4", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let fourth = scene.wait_phase("size4", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(90)).await;
    if let Some(id) = fault["id"].as_u64() {
        emulator.remove_fault(id).await;
    }
    assert_eq!(fourth.phase(), Some(&ConditionType::Complete), "a size failure never fails a finished backup");
    let fourth = fourth.status.unwrap();
    assert_eq!((fourth.backup_size, fourth.incremental_backup_size), (Some(157 * BLOCK), None), "{fourth:#?}");
    operator.stop().await;
}

#[tokio::test]
async fn backups_of_one_cluster_run_one_at_a_time_and_the_next_starts_when_one_ends() {
    let _stack = exclusive().await;
    let scene = Scene::new("e2e-queue", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    for volume in scene.cluster.tikv_volume_ids() {
        emulator.set_volume_snapshot_behaviour(&volume, 3.0, "completed").await;
    }
    let before = settled_pd_state(scene.stack).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let api: Api<Backup> = scene.api();
    scene.apply(&scene.backup_yaml("first", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    scene.wait_phase("first", &[ConditionType::VolumeBackupSnapshotsCreated], Duration::from_secs(60)).await;
    scene.apply(&scene.backup_yaml("second", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let waiting = eventually("second to wait for first", Duration::from_secs(30), || async {
        let second = api.get("second").await.ok()?;
        let scheduled = second.status?.conditions.into_iter().find(|c| c.type_ == ConditionType::Scheduled)?;
        (scheduled.reason.as_deref() == Some("WaitingForOtherBackup")).then_some(scheduled)
    })
    .await;
    assert!(waiting.message.as_deref().unwrap_or_default().contains(&format!("TidbCluster {}/basic", scene.namespace)), "{waiting:#?}");

    // The second may pause PD the moment the first ends, so PD is compared with `before` only at the end.
    let first = scene.wait_phase("first", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(60)).await.status.unwrap();
    assert_eq!(first.phase, Some(ConditionType::Complete), "{first:#?}");
    let second = assert_completed(&scene, "second", &before).await.status.unwrap();
    let (first_done, second_started) = (first.time_completed.unwrap().0, second.time_started.unwrap().0);
    assert!(second_started >= first_done, "never both at once: second started {second_started}, first completed {first_done}");
    // Woken when the first ends, not at its next poll (30 s later).
    let gap = second_started.duration_since(first_done).as_secs_f64();
    assert!(gap < 15.0, "second started {gap:.0}s after first ended");
    for volume in scene.cluster.tikv_volume_ids() {
        emulator.set_volume_snapshot_behaviour(&volume, 0.0, "completed").await;
    }
    operator.stop().await;
}
