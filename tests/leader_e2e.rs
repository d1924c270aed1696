//! Two operator processes against one apiserver: only the Lease holder acts; killing it hands over,
//! and the standby finishes the in-flight backup from its record without snapshotting twice.

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;
use support::e2e::{Scene, assert_pd_unchanged, pd_exclusive, pd_state, settled_pd_state, spawn_operator_binary};
use support::{Stack, eventually};
use tidb_ebs_backup::api::ConditionType;
use tokio::process::Child;

fn spawn_operator(stack: &Stack, namespace: &str, identity: &str) -> Child {
    let args = ["--namespace", namespace, "--lease-namespace", namespace, "--identity", identity, "--pd-url-template", &stack.pd_url];
    let timing = ["--lease-duration-seconds", "6", "--poll-interval-seconds", "1", "--pause-ttl-seconds", "30", "--metrics-addr", "127.0.0.1:0"];
    spawn_operator_binary(stack, &stack.kubeconfig, &format!("{namespace}-{identity}"), &[&args[..], &timing[..]].concat())
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt("tidb-ebs-backup").await.ok().flatten()?.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Reporting instances of the Events about one Backup.
async fn reporters(scene: &Scene, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reporting_instance)
        .collect()
}

#[tokio::test]
async fn only_the_lease_holder_acts_and_a_standby_takes_over() {
    let _pd = pd_exclusive().await;
    let scene = Scene::new("leader", 2, 2).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let before = settled_pd_state(scene.stack).await;
    let mut a = spawn_operator(scene.stack, &scene.namespace, "op-a");
    let mut b = spawn_operator(scene.stack, &scene.namespace, "op-b");
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let leader = eventually("a Lease holder", Duration::from_secs(60), || holder(&leases)).await;

    scene.apply(&scene.backup_yaml("first", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    scene.wait_phase("first", &[ConditionType::Complete], Duration::from_secs(90)).await;
    let acted: std::collections::BTreeSet<String> = reporters(&scene, "first").await.into_iter().collect();
    assert_eq!(acted, [leader.clone()].into(), "only the leader {leader} reported on the first backup");

    // A backup in flight when the leader dies: snapshots stay pending long enough to kill it.
    let emulator = scene.stack.emulator();
    for volume in scene.cluster.tikv_volume_ids() {
        emulator.set_volume_snapshot_behaviour(&volume, 15.0, "completed").await;
    }
    scene.apply(&scene.backup_yaml("second", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let in_flight = scene.wait_phase("second", &[ConditionType::VolumeBackupSnapshotsCreated], Duration::from_secs(60)).await;
    let (dead, survivor) = if leader == "op-a" { (&mut a, "op-b") } else { (&mut b, "op-a") };
    dead.start_kill().unwrap();
    dead.wait().await.unwrap();
    let new_leader = eventually("the standby to take the Lease", Duration::from_secs(30), || async {
        holder(&leases).await.filter(|h| h == survivor)
    })
    .await;
    let done = scene.wait_phase("second", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(90)).await;
    assert_eq!(done.phase(), Some(&ConditionType::Complete), "{:#?}", done.status);
    assert!(reporters(&scene, "second").await.contains(&new_leader), "the new leader finished the backup");
    let uid = in_flight.metadata.uid.unwrap();
    assert_eq!(scene.snapshots_tagged(&uid).await.len(), scene.cluster.tikv_volume_ids().len(), "no volume snapshotted twice");
    assert_pd_unchanged(&pd_state(scene.stack).await, &before);
    for volume in scene.cluster.tikv_volume_ids() {
        emulator.set_volume_snapshot_behaviour(&volume, 0.0, "completed").await;
    }
    let _ = a.start_kill();
    let _ = b.start_kill();
}
