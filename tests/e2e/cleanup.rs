//! Deleting Backups: what `spec.cleanPolicy` keeps and removes, deletion of a running backup, clean-up
//! without `backupmeta`, DeleteSnapshot throttling and rate, a namespace whose Secret is gone, deleting the
//! whole namespace (the stack's namespace controller cascades), and a clean-up released by the user.

use std::time::Duration;

use crate::support::e2e::{Operator, Scene, pd_state, settings, settled_pd_state};
use crate::support::{describe_output, eventually, exclusive};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use tidb_ebs_backup::api::{BACKUP_PROTECTION_FINALIZER, Backup, ConditionType};

async fn delete_and_wait_gone(scene: &Scene, name: &str) {
    let api: Api<Backup> = scene.api();
    api.delete(name, &DeleteParams::default()).await.expect("delete Backup");
    eventually(&format!("Backup {name} to be gone"), Duration::from_secs(90), || async { matches!(api.get_opt(name).await, Ok(None)).then_some(()) })
        .await;
}

/// (snapshots left, backupmeta left) after deleting `name`.
async fn leftovers(scene: &Scene, name: &str, uid: &str) -> (usize, bool) {
    (scene.snapshots_tagged(uid).await.len(), scene.object(&format!("{name}/backupmeta")).await.is_some())
}

async fn run_to_end(scene: &Scene, name: &str, policy: &str, fail: bool) -> Backup {
    if fail {
        // One volume's snapshot ends in error: the backup fails after snapshots exist.
        let volume = scene.cluster.tikv[0].volumes[0].volume_id.clone();
        scene.stack.emulator().set_volume_snapshot_behaviour(&volume, 0.5, "error").await;
    }
    scene.apply(&scene.backup_yaml(name, json!({"cleanPolicy": policy, "s3": {"secretName": "keys"}}), json!({}))).await;
    let backup = scene.wait_phase(name, &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(120)).await;
    let want = if fail { ConditionType::Failed } else { ConditionType::Complete };
    assert_eq!(backup.phase(), Some(&want), "{name}: {:#?}", backup.status);
    if fail {
        let volume = scene.cluster.tikv[0].volumes[0].volume_id.clone();
        scene.stack.emulator().set_volume_snapshot_behaviour(&volume, 0.0, "completed").await;
    }
    backup
}

#[tokio::test]
async fn clean_policy_decides_what_deleting_a_backup_leaves() {
    let _stack = exclusive().await;
    let scene = Scene::new("clean-policy", 2, 2).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let before = settled_pd_state(scene.stack).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let volumes = scene.cluster.tikv_volume_ids().len();
    // (policy, backup fails, snapshots left, backupmeta left). A failed backup removes its own
    // snapshots and backupmeta when it fails, so nothing of it is left under any policy.
    let table = [
        ("Retain", false, volumes, true),
        ("OnFailure", false, volumes, true),
        ("Delete", false, 0, false),
        ("Retain", true, 0, false),
        ("OnFailure", true, 0, false),
        ("Delete", true, 0, false),
    ];
    for (policy, fail, snapshots_left, meta_left) in table {
        let name = format!("{}-{}", policy.to_lowercase(), if fail { "failed" } else { "ok" });
        let backup = run_to_end(&scene, &name, policy, fail).await;
        let uid = backup.metadata.uid.clone().unwrap();
        let finalizer = backup.metadata.finalizers.iter().flatten().any(|f| f == BACKUP_PROTECTION_FINALIZER);
        let want_finalizer = policy == "Delete" || (policy == "OnFailure" && fail);
        assert_eq!(finalizer, want_finalizer, "{name}: finalizer only while clean-up may be needed");
        delete_and_wait_gone(&scene, &name).await;
        assert_eq!(leftovers(&scene, &name, &uid).await, (snapshots_left, meta_left), "{name}: (snapshots, backupmeta) left");
    }
    crate::support::e2e::assert_pd_unchanged(&pd_state(scene.stack).await, &before);
    operator.stop().await;
}

#[tokio::test]
async fn deleting_a_running_backup_leaves_nothing_and_resumes_pd() {
    let _stack = exclusive().await;
    let scene = Scene::new("clean-running", 2, 2).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    for volume in scene.cluster.tikv_volume_ids() {
        emulator.set_volume_snapshot_behaviour(&volume, 60.0, "completed").await;
    }
    let before = settled_pd_state(scene.stack).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    scene.apply(&scene.backup_yaml("running", json!({"cleanPolicy": "Delete", "s3": {"secretName": "keys"}}), json!({}))).await;
    let backup = scene.wait_phase("running", &[ConditionType::VolumeBackupSnapshotsCreated], Duration::from_secs(60)).await;
    let uid = backup.metadata.uid.clone().unwrap();
    assert_eq!(scene.snapshots_tagged(&uid).await.len(), scene.cluster.tikv_volume_ids().len(), "snapshots pending");
    delete_and_wait_gone(&scene, "running").await;
    assert_eq!(leftovers(&scene, "running", &uid).await, (0, false));
    crate::support::e2e::assert_pd_unchanged(&pd_state(scene.stack).await, &before);
    for volume in scene.cluster.tikv_volume_ids() {
        emulator.set_volume_snapshot_behaviour(&volume, 0.0, "completed").await;
    }
    operator.stop().await;
}

#[tokio::test]
async fn snapshots_are_found_by_tag_when_backupmeta_and_record_are_lost() {
    let _stack = exclusive().await;
    let scene = Scene::new("clean-lost", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let backup = run_to_end(&scene, "lost", "Delete", false).await;
    let uid = backup.metadata.uid.clone().unwrap();
    let s3 = scene.stack.s3_client().await;
    s3.delete_object().bucket(&scene.bucket).key("lost/backupmeta").send().await.unwrap();
    let output = scene.stack.kubectl(["annotate", "bk", "lost", "-n", &scene.namespace, "tidb-ebs-backup/record-"]).await;
    assert!(output.status.success(), "{}", describe_output(&output));
    assert_eq!(leftovers(&scene, "lost", &uid).await, (scene.cluster.tikv_volume_ids().len(), false));
    delete_and_wait_gone(&scene, "lost").await;
    assert_eq!(leftovers(&scene, "lost", &uid).await, (0, false));
    operator.stop().await;
}

#[tokio::test]
async fn delete_snapshot_throttling_is_retried_within_the_delete_rate() {
    let _stack = exclusive().await;
    let scene = Scene::new("clean-rate", 3, 2).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    scene
        .apply(&scene.backup_yaml(
            "rate",
            json!({"cleanPolicy": "Delete", "cleanOption": {"snapshotsDeleteRatio": 2.0}, "s3": {"secretName": "keys"}}),
            json!({}),
        ))
        .await;
    let backup = scene.wait_phase("rate", &[ConditionType::Complete], Duration::from_secs(120)).await;
    let uid = backup.metadata.uid.clone().unwrap();
    let snapshots: Vec<String> = scene.snapshots_tagged(&uid).await.iter().filter_map(|s| s.snapshot_id().map(String::from)).collect();
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let fault = emulator.add_fault(json!({"action": "DeleteSnapshot", "status": 503, "code": "RequestLimitExceeded", "times": 3})).await;
    delete_and_wait_gone(&scene, "rate").await;
    if let Some(id) = fault["id"].as_u64() {
        emulator.remove_fault(id).await;
    }
    let deletes: Vec<Value> = emulator
        .requests(Some("DeleteSnapshot"))
        .await
        .into_iter()
        .filter(|r| r["snapshot_ids"].as_array().is_some_and(|ids| ids.iter().any(|id| snapshots.iter().any(|s| id == s.as_str()))))
        .collect();
    let throttled = deletes.iter().filter(|r| r["error_code"] == "RequestLimitExceeded").count();
    let done: Vec<f64> = deletes.iter().filter(|r| r["status"] == 200).filter_map(|r| r["time"].as_f64()).collect();
    assert_eq!(throttled, 3, "the injected throttles were met and retried: {deletes:#?}");
    assert_eq!(done.len(), snapshots.len(), "every snapshot deleted once");
    let span = done.iter().cloned().fold(f64::MIN, f64::max) - done.iter().cloned().fold(f64::MAX, f64::min);
    let rate = (done.len() - 1) as f64 / span;
    assert!(rate <= 2.0 * 1.1, "deletes ran at {rate:.2}/s, above snapshotsDeleteRatio 2/s");
    assert_eq!(leftovers(&scene, "rate", &uid).await, (0, false));
    operator.stop().await;
}

#[tokio::test]
async fn a_backup_whose_secret_is_gone_is_cleaned_with_the_operators_identity() {
    let _stack = exclusive().await;
    let scene = Scene::new("clean-nosecret", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let backup = run_to_end(&scene, "orphan", "Delete", false).await;
    let uid = backup.metadata.uid.clone().unwrap();
    // As when the namespace is being deleted: the Secret goes first.
    Api::<Secret>::namespaced(scene.client.clone(), &scene.namespace).delete("keys", &DeleteParams::default()).await.unwrap();
    delete_and_wait_gone(&scene, "orphan").await;
    assert_eq!(leftovers(&scene, "orphan", &uid).await, (0, false));
    operator.stop().await;
}

#[tokio::test]
async fn deleting_the_namespace_cleans_its_delete_policy_backup_and_finishes() {
    let _stack = exclusive().await;
    let scene = Scene::new("clean-ns", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let backup = run_to_end(&scene, "in-ns", "Delete", false).await;
    let uid = backup.metadata.uid.clone().unwrap();
    assert!(!scene.snapshots_tagged(&uid).await.is_empty());

    let namespaces: Api<Namespace> = Api::all(scene.client.clone());
    namespaces.delete(&scene.namespace, &DeleteParams::default()).await.expect("delete namespace");
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let force = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    eventually("the namespace to be gone", Duration::from_secs(240), || async {
        // There is no kubelet: finish the pods' graceful deletion as it would.
        for pod in pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = pods.delete(pod.metadata.name.as_deref().unwrap(), &force).await;
            }
        }
        matches!(namespaces.get_opt(&scene.namespace).await, Ok(None)).then_some(())
    })
    .await;
    assert_eq!(leftovers(&scene, "in-ns", &uid).await, (0, false), "the Delete policy held through namespace deletion");
    operator.wait_for_metric("tidb_ebs_backup_cleanups_total{result=\"cleaned\"} 1").await;
    operator.stop().await;
}

#[tokio::test]
async fn a_clean_up_that_cannot_succeed_waits_for_the_user_and_releases_on_the_annotation() {
    let _stack = exclusive().await;
    let scene = Scene::new("clean-stuck", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let backup = run_to_end(&scene, "stuck", "Delete", false).await;
    let uid = backup.metadata.uid.clone().unwrap();
    let snapshots = scene.snapshots_tagged(&uid).await.len();

    // Every identity is refused DeleteSnapshot: the clean-up cannot finish on its own.
    let fault = emulator
        .add_fault(json!({"action": "DeleteSnapshot", "status": 403, "code": "UnauthorizedOperation",
            "message": "You are not authorized to perform this operation.", "times": -1}))
        .await;
    let api: Api<Backup> = scene.api();
    api.delete("stuck", &DeleteParams::default()).await.expect("delete Backup");
    let waiting = eventually("CleanFailed naming the way out", Duration::from_secs(60), || async {
        let backup = api.get_opt("stuck").await.ok()??;
        let condition = backup.status.as_ref()?.conditions.iter().find(|c| c.type_ == ConditionType::CleanFailed)?.clone();
        condition.message.as_deref()?.contains("tidb-ebs-backup/release-without-cleanup=true").then_some(condition)
    })
    .await;
    assert!(waiting.message.as_deref().unwrap().contains("UnauthorizedOperation"), "{waiting:#?}");
    // Still there some seconds later: it waits for the cause to clear or for the user, never a silent leak.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = api.get_opt("stuck").await.unwrap().expect("the finalizer holds the Backup while clean-up fails");
    assert!(held.metadata.finalizers.iter().flatten().any(|f| f == BACKUP_PROTECTION_FINALIZER));

    let out = scene.stack.kubectl(["annotate", "bk", "stuck", "-n", &scene.namespace, "tidb-ebs-backup/release-without-cleanup=true"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    eventually("Backup released", Duration::from_secs(30), || async { matches!(api.get_opt("stuck").await, Ok(None)).then_some(()) }).await;
    if let Some(id) = fault["id"].as_u64() {
        emulator.remove_fault(id).await;
    }
    assert_eq!(leftovers(&scene, "stuck", &uid).await, (snapshots, true), "released on request, data kept");
    operator.wait_for_metric("tidb_ebs_backup_cleanups_total{result=\"released\"} 1").await;
    operator.wait_for_metric("tidb_ebs_backup_cleanups_total{result=\"failed\"}").await;
    let events = scene
        .stack
        .kubectl(["get", "events", "-n", &scene.namespace, "--field-selector", "involvedObject.name=stuck", "-o", "json"])
        .await;
    let events: Value = serde_json::from_slice(&events.stdout).unwrap();
    let notes: Vec<&str> = events["items"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(
        notes.iter().any(|m| m.contains("released without clean-up") && m.contains(&uid)),
        "an Event tells where the leftover snapshots are: {notes:#?}"
    );
    operator.stop().await;
}
