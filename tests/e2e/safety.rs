//! Do no harm: every way out of a backup ends with PD resumed and the data complete or removed, never
//! another Backup's data touched. Each test holds PD exclusively and starts from no injected faults.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::e2e::{Operator, Scene, assert_pd_unchanged, pd_state, settings, settled_pd_state};
use crate::support::{Stack, eventually, exclusive};
use serde_json::json;
use tidb_ebs_backup::api::ConditionType;

/// PD as sampled every 100 ms: how many schedulers were paused and which of our safepoints were alive.
struct Sample {
    at: Instant,
    paused: usize,
    ours: BTreeSet<String>,
}

struct PdSampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PdSampler {
    fn start(stack: &'static Stack) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                let state = pd_state(stack).await;
                let ours = state.safepoints.iter().filter(|s| s.starts_with("tidb-ebs-backup-")).cloned().collect();
                sink.lock().unwrap().push(Sample { at: Instant::now(), paused: state.paused.len(), ours });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        PdSampler { samples, task }
    }

    fn stop(self) -> Vec<Sample> {
        self.task.abort();
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// Polls PD until nothing of ours is paused; returns how long that took.
async fn time_until_pd_resumed(stack: &'static Stack) -> Duration {
    let started = Instant::now();
    eventually("PD to be resumed", Duration::from_secs(120), || async {
        let state = pd_state(stack).await;
        (state.paused.is_empty() && !state.safepoints.iter().any(|s| s.starts_with("tidb-ebs-backup-"))).then_some(())
    })
    .await;
    started.elapsed()
}

/// Deleting a paused Backup resumes PD within seconds under every clean policy, although the pause TTL
/// is a minute: the keeper sees the Backup go and undoes the pause (before, a Retain Backup's keeper kept
/// PD paused for as long as the process lived).
#[tokio::test]
async fn deleting_a_paused_backup_resumes_pd_within_seconds_under_every_clean_policy() {
    let _stack = exclusive().await;
    let scene = Scene::new("safe-delete", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let before = settled_pd_state(scene.stack).await;
    let config = tidb_ebs_backup::backup::Settings { pause_ttl: Duration::from_secs(60), ..settings(scene.stack) };
    let operator = Operator::start(scene.stack, &scene.namespace, config).await;
    for policy in ["Retain", "Delete", "OnFailure"] {
        let name = format!("delete-{}", policy.to_lowercase());
        emulator.add_fault(json!({"action": "CreateSnapshots", "delay_ms": 8000, "times": 2})).await;
        scene.apply(&scene.backup_yaml(&name, json!({"cleanPolicy": policy, "s3": {"secretName": "keys"}}), json!({}))).await;
        scene.wait_for_calls_in_flight(&name).await;
        assert!(!pd_state(scene.stack).await.paused.is_empty(), "{policy}: PD is paused while the calls are in flight");
        let output = scene.stack.kubectl(["delete", "bk", &name, "-n", &scene.namespace, "--wait=false"]).await;
        assert!(output.status.success(), "{}", crate::support::describe_output(&output));
        let took = time_until_pd_resumed(scene.stack).await;
        assert!(took < Duration::from_secs(5), "{policy}: PD resumed {took:?} after the delete (TTL 60 s)");
        scene.wait_gone(&name).await;
        emulator.clear_faults().await;
        // Nothing refreshes the pause afterwards.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = pd_state(scene.stack).await;
        assert_pd_unchanged(&after, &before);
    }
    operator.stop().await;
}

/// The spec a backup started with is used to the end: changing `backupMode` and the prefix mid-pause
/// neither strands the pause nor the finalizer, and the data lands where the backup said it would.
#[tokio::test]
async fn editing_the_mode_or_prefix_mid_pause_strands_nothing() {
    let _stack = exclusive().await;
    let scene = Scene::new("safe-edit", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let before = settled_pd_state(scene.stack).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    emulator.add_fault(json!({"action": "CreateSnapshots", "delay_ms": 3000, "times": 2})).await;
    scene.apply(&scene.backup_yaml("edited", json!({"cleanPolicy": "Delete", "s3": {"secretName": "keys"}}), json!({}))).await;
    scene.wait_for_calls_in_flight("edited").await;
    let edit = json!({"spec": {"backupMode": "snapshot", "s3": {"prefix": "elsewhere"}}});
    let output = scene.stack.kubectl(["patch", "bk", "edited", "-n", &scene.namespace, "--type", "merge", "-p", &edit.to_string()]).await;
    assert!(output.status.success(), "{}", crate::support::describe_output(&output));
    let backup = scene.wait_phase("edited", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(90)).await;
    assert_eq!(backup.phase(), Some(&ConditionType::Complete), "{:#?}", backup.status);
    assert!(scene.object("edited/backupmeta").await.is_some(), "backupmeta where the backup started");
    assert!(scene.object("elsewhere/backupmeta").await.is_none(), "nothing at the edited prefix");
    emulator.clear_faults().await;
    time_until_pd_resumed(scene.stack).await;
    assert_pd_unchanged(&pd_state(scene.stack).await, &before);
    // The Delete policy still holds: the finalizer cleans the backup's data and lets it go.
    let uid = backup.metadata.uid.clone().unwrap();
    scene.api().delete("edited", &Default::default()).await.unwrap();
    scene.wait_gone("edited").await;
    assert!(scene.snapshots_tagged(&uid).await.is_empty());
    assert!(scene.object("edited/backupmeta").await.is_none());
    operator.stop().await;
}

/// Backups sharing a bucket and prefix: a failed one's deletion, and a later one refused for the used
/// prefix, leave the completed Backup's `backupmeta` and snapshots alone (before, deleting the failed
/// one deleted everything the prefix's `backupmeta` listed).
#[tokio::test]
async fn backups_sharing_a_prefix_never_delete_each_others_data() {
    let _stack = exclusive().await;
    let scene = Scene::new("safe-prefix", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let shared = |policy: &str| json!({"cleanPolicy": policy, "s3": {"secretName": "keys", "prefix": "shared"}});
    let broken = scene.cluster.tikv[0].volumes[0].volume_id.clone();
    emulator.set_volume_snapshot_behaviour(&broken, 0.5, "error").await;
    scene.apply(&scene.backup_yaml("failed", shared("Delete"), json!({}))).await;
    scene.wait_phase("failed", &[ConditionType::Failed], Duration::from_secs(60)).await;
    emulator.set_volume_snapshot_behaviour(&broken, 0.0, "completed").await;

    scene.apply(&scene.backup_yaml("good", shared("Retain"), json!({}))).await;
    let good = scene.wait_phase("good", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(60)).await;
    assert_eq!(good.phase(), Some(&ConditionType::Complete), "{:#?}", good.status);
    let good_uid = good.metadata.uid.clone().unwrap();
    let good_meta = scene.object("shared/backupmeta").await.expect("the good backup's backupmeta");
    let good_snapshots = scene.snapshots_tagged(&good_uid).await.len();
    assert_eq!(good_snapshots, 2);

    // A third one at the same prefix is refused before anything is paused.
    scene.apply(&scene.backup_yaml("late", shared("Delete"), json!({}))).await;
    let late = scene.wait_phase("late", &[ConditionType::Failed, ConditionType::Complete], Duration::from_secs(60)).await;
    let failed = late.status.clone().unwrap().conditions.into_iter().find(|c| c.type_ == ConditionType::Failed).expect("late fails");
    assert_eq!(failed.reason.as_deref(), Some("FileExistedInExternalStorage"), "{failed:#?}");

    for name in ["failed", "late"] {
        scene.api().delete(name, &Default::default()).await.unwrap();
        scene.wait_gone(name).await;
    }
    assert_eq!(scene.object("shared/backupmeta").await.as_deref(), Some(&good_meta[..]), "the good backup's backupmeta is untouched");
    assert_eq!(scene.snapshots_tagged(&good_uid).await.len(), good_snapshots, "the good backup's snapshots are untouched");
    let still = scene.api().get("good").await.unwrap();
    assert_eq!(still.phase(), Some(&ConditionType::Complete));
    operator.stop().await;
}

/// Two Backups of one TidbCluster in one `kubectl apply`: the API server's claim lets one pause PD at a
/// time (PD's view, sampled every 100 ms: never two of our safepoints at once), and both complete.
#[tokio::test]
async fn two_backups_of_one_cluster_applied_together_pause_pd_one_at_a_time() {
    let _stack = exclusive().await;
    let scene = Scene::new("safe-pair", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let before = settled_pd_state(scene.stack).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    for round in 0..3 {
        emulator.add_fault(json!({"action": "CreateSnapshots", "delay_ms": 1500, "times": 4})).await;
        let (a, b) = (format!("pair-{round}-a"), format!("pair-{round}-b"));
        let spec = json!({"s3": {"secretName": "keys"}});
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [scene.backup_yaml(&b, spec.clone(), json!({})), scene.backup_yaml(&a, spec, json!({}))]});
        let sampler = PdSampler::start(scene.stack);
        scene.apply(&list).await;
        for name in [&a, &b] {
            let backup = scene.wait_phase(name, &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(120)).await;
            assert_eq!(backup.phase(), Some(&ConditionType::Complete), "{name}: {:#?}", backup.status);
        }
        let samples = sampler.stop();
        let overlapping: Vec<_> = samples.iter().filter(|s| s.ours.len() > 1).map(|s| (s.at, s.ours.clone())).collect();
        assert!(overlapping.is_empty(), "round {round}: two backups paused PD at once: {overlapping:?}");
        let distinct: BTreeSet<String> = samples.iter().flat_map(|s| s.ours.iter().cloned()).collect();
        assert_eq!(distinct.len(), 2, "round {round}: both backups paused PD, one after the other: {distinct:?}");
        assert!(samples.iter().any(|s| s.paused > 0), "round {round}: the sampler saw the pauses");
        emulator.clear_faults().await;
    }
    time_until_pd_resumed(scene.stack).await;
    assert_pd_unchanged(&pd_state(scene.stack).await, &before);
    operator.stop().await;
}

/// Transient is not fatal: after a restart during the snapshot wait, STS failing its first calls and
/// DescribeSnapshots 500s (an IAM-role backup), then a Secret read blip (an access-key backup whose
/// Secret is deleted and re-created): both Backups still end `Complete` with their snapshots (before,
/// the STS failure deleted the good set).
#[tokio::test]
async fn transient_failures_after_the_pause_never_delete_a_good_backup() {
    let _stack = exclusive().await;
    let scene = Scene::new("safe-transient", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    for volume in scene.cluster.tikv_volume_ids() {
        emulator.set_volume_snapshot_behaviour(&volume, 12.0, "completed").await;
    }
    let first = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    scene
        .apply(&scene.backup_yaml("role", json!({}), json!({"iam.amazonaws.com/role": "arn:aws:iam::123456789012:role/tidb-backup"})))
        .await;
    scene.wait_phase("role", &[ConditionType::VolumeBackupSnapshotsCreated], Duration::from_secs(60)).await;
    first.crash();
    emulator
        .add_faults(vec![
            json!({"action": "AssumeRole", "status": 500, "code": "InternalFailure", "times": 6}),
            json!({"action": "DescribeSnapshots", "status": 500, "code": "InternalError", "times": 9}),
        ])
        .await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let role = scene.wait_phase("role", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(120)).await;
    assert_eq!(role.phase(), Some(&ConditionType::Complete), "{:#?}", role.status);
    assert_eq!(scene.snapshots_tagged(role.metadata.uid.as_deref().unwrap()).await.len(), 2);
    let sts_failures = emulator.requests(Some("AssumeRole")).await.iter().filter(|r| r["status"] == 500).count();
    assert!(sts_failures >= 3, "STS failed {sts_failures} times and was ridden out");
    emulator.clear_faults().await;

    scene.apply(&scene.backup_yaml("keyed", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    scene.wait_phase("keyed", &[ConditionType::VolumeBackupSnapshotsCreated], Duration::from_secs(60)).await;
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(scene.client.clone(), &scene.namespace);
    secrets.delete("keys", &Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let keyed = scene.wait_phase("keyed", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(120)).await;
    assert_eq!(keyed.phase(), Some(&ConditionType::Complete), "{:#?}", keyed.status);
    assert_eq!(scene.snapshots_tagged(keyed.metadata.uid.as_deref().unwrap()).await.len(), 2);
    for volume in scene.cluster.tikv_volume_ids() {
        emulator.set_volume_snapshot_behaviour(&volume, 0.0, "completed").await;
    }
    operator.stop().await;
}

/// Orphans are reported, never silently kept: a `Retain` Backup deleted while its CreateSnapshots calls
/// were in flight leaves snapshots that no Backup and no `backupmeta` owns; the scan names them (and the
/// running operator counts them in /metrics), while a completed Retain Backup deleted afterwards keeps
/// its snapshots without being reported (its `backupmeta` lists them).
#[tokio::test]
async fn orphan_snapshots_are_reported_and_retained_backups_are_not() {
    let _stack = exclusive().await;
    let scene = Scene::new("safe-orphan", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let config = tidb_ebs_backup::backup::Settings { orphan_scan_interval: Duration::from_secs(2), ..settings(scene.stack) };
    let operator = Operator::start(scene.stack, &scene.namespace, config).await;
    scene.apply(&scene.backup_yaml("kept", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let kept = scene.wait_phase("kept", &[ConditionType::Complete], Duration::from_secs(60)).await;
    emulator.add_fault(json!({"action": "CreateSnapshots", "delay_ms": 4000, "times": 2})).await;
    scene.apply(&scene.backup_yaml("dropped", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    scene.wait_for_calls_in_flight("dropped").await;
    let dropped = scene.api().get("dropped").await.unwrap();
    for name in ["dropped", "kept"] {
        scene.api().delete(name, &Default::default()).await.unwrap();
    }
    let dropped_uid = dropped.metadata.uid.clone().unwrap();
    let left = eventually("the in-flight calls to land", Duration::from_secs(30), || async {
        Some(scene.snapshots_tagged(&dropped_uid).await).filter(|s| s.len() == 2)
    })
    .await;
    let connectors =
        tidb_ebs_backup::backup::context::RealConnectors::new(tidb_ebs_backup::aws::AwsSettings { base: scene.stack.aws_config().await });
    let (empty, _) = kube::runtime::reflector::store::<tidb_ebs_backup::api::Backup>();
    let orphans = tidb_ebs_backup::backup::orphans::scan(&scene.client, &connectors, &empty).await.unwrap();
    let ours = orphans
        .iter()
        .find(|o| o.uid == dropped_uid)
        .unwrap_or_else(|| panic!("the dropped backup's snapshots are reported: {orphans:?}"));
    let mut expected: Vec<String> = left.iter().filter_map(|s| s.snapshot_id().map(String::from)).collect();
    expected.sort();
    assert_eq!(ours.snapshots, expected);
    assert_eq!(ours.backup, format!("{}/dropped", scene.namespace));
    let kept_uid = kept.metadata.uid.clone().unwrap();
    assert!(!orphans.iter().any(|o| o.uid == kept_uid), "a retained complete backup is not an orphan: {orphans:?}");
    assert_eq!(scene.snapshots_tagged(&kept_uid).await.len(), 2, "and its snapshots are kept");
    eventually("the operator to count orphans", Duration::from_secs(20), || async {
        let text = operator.metrics.encode();
        text.lines().any(|l| l.starts_with("tidb_ebs_backup_orphan_snapshots ") && !l.ends_with(" 0")).then_some(())
    })
    .await;
    emulator.clear_faults().await;
    operator.stop().await;
}

/// The operator killed while its CreateSnapshots calls are in flight (8 s each, TTL 12 s) and restarted
/// 5 s later: the new keeper refreshes at once, so PD is never seen unpaused between the first pause and
/// the resume (sampled every 100 ms: one unbroken pause), the new process waits for the old calls to land
/// and adopts them, and one snapshot set per instance is kept (before, the new keeper waited a third of
/// the TTL and the pause lapsed while calls were in flight).
#[tokio::test]
async fn an_operator_restarted_mid_calls_keeps_pd_paused_without_a_gap_and_snapshots_once() {
    let _stack = exclusive().await;
    let scene = Scene::new("safe-restart", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let before = settled_pd_state(scene.stack).await;
    let config = || tidb_ebs_backup::backup::Settings { pause_ttl: Duration::from_secs(12), ..settings(scene.stack) };
    emulator.add_fault(json!({"action": "CreateSnapshots", "delay_ms": 8000, "times": 2})).await;
    let sampler = PdSampler::start(scene.stack);
    let first = Operator::start(scene.stack, &scene.namespace, config()).await;
    scene.apply(&scene.backup_yaml("restarted", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    scene.wait_for_calls_in_flight("restarted").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.crash();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = Operator::start(scene.stack, &scene.namespace, config()).await;
    let backup = scene.wait_phase("restarted", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(90)).await;
    assert_eq!(backup.phase(), Some(&ConditionType::Complete), "{:#?}", backup.status);
    let samples = sampler.stop();
    let paused: Vec<bool> = samples.iter().map(|s| s.paused > 0).collect();
    let first_paused = paused.iter().position(|p| *p).expect("PD was seen paused");
    let resumed = paused[first_paused..].iter().position(|p| !*p).map(|i| first_paused + i).expect("PD was seen resumed");
    assert!(!paused[resumed..].iter().any(|p| *p), "one unbroken pause, not two: {paused:?}");
    let pause_seconds = samples[resumed].at.duration_since(samples[first_paused].at).as_secs_f64();
    assert!(pause_seconds > 8.0, "the pause covered the 8 s calls: {pause_seconds:.1}s");
    let ours = scene.successful_create_snapshots().await;
    assert_eq!(ours.len(), scene.cluster.tikv.len(), "one successful CreateSnapshots per instance: {ours:#?}");
    assert_eq!(scene.snapshots_tagged(backup.metadata.uid.as_deref().unwrap()).await.len(), 2);
    emulator.clear_faults().await;
    assert_pd_unchanged(&pd_state(scene.stack).await, &before);
    second.stop().await;
}
