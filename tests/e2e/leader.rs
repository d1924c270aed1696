//! Two operator processes against one apiserver: only the Lease holder acts; killing it hands over,
//! and the standby finishes the in-flight backup from its record without snapshotting twice.

use std::time::Duration;

use crate::support::e2e::{Scene, assert_pd_unchanged, pd_state, settled_pd_state, spawn_operator_binary};
use crate::support::{Stack, eventually, exclusive};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;
use tidb_ebs_backup::api::ConditionType;
use tokio::process::Child;

fn spawn_operator(stack: &Stack, namespace: &str, identity: &str) -> Child {
    let args = ["--namespace", namespace, "--lease-namespace", namespace, "--identity", identity, "--pd-url-template", &stack.pd_url];
    let timing = [
        "--lease-duration-seconds",
        "6",
        "--poll-interval-seconds",
        "1",
        "--pause-ttl-seconds",
        "30",
        "--metrics-addr",
        "127.0.0.1:0",
        "--create-snapshots-timeout-seconds",
        "12",
    ];
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
    let _stack = exclusive().await;
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
    let new_leader =
        eventually("the standby to take the Lease", Duration::from_secs(30), || async { holder(&leases).await.filter(|h| h == survivor) }).await;
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

/// The Lease taken by the standby while the leader's CreateSnapshots calls are in flight (8 s each):
/// the old leader stops at once (it exits, so none of its keepers refreshes the pause again), the new one
/// waits for the old calls to land and adopts their snapshots by tag, so the emulator saw one successful
/// CreateSnapshots per instance; `backupmeta` and the record agree and PD ends as it was. Then the Lease
/// is deleted: the leader stops acting until a replica holds a Lease again.
#[tokio::test]
async fn a_lease_stolen_mid_create_snapshots_yields_one_snapshot_set_and_no_second_actor() {
    let _stack = exclusive().await;
    let scene = Scene::new("steal", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let before = settled_pd_state(scene.stack).await;
    let mut a = spawn_operator(scene.stack, &scene.namespace, "op-a");
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), &scene.namespace);
    eventually("op-a to lead", Duration::from_secs(60), || async { holder(&leases).await.filter(|h| h == "op-a") }).await;
    let mut b = spawn_operator(scene.stack, &scene.namespace, "op-b");
    emulator.add_fault(json!({"action": "CreateSnapshots", "delay_ms": 8000, "times": 2})).await;
    scene.apply(&scene.backup_yaml("stolen", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    scene.wait_for_calls_in_flight("stolen").await;
    let steal = json!({"spec": {"holderIdentity": "op-b"}});
    let output = scene
        .stack
        .kubectl(["patch", "lease", "tidb-ebs-backup", "-n", &scene.namespace, "--type", "merge", "-p", &steal.to_string()])
        .await;
    assert!(output.status.success(), "{}", crate::support::describe_output(&output));
    // The old leader notices at its next renewal (a third of the 6 s Lease) and exits.
    let exit = tokio::time::timeout(Duration::from_secs(10), a.wait()).await.expect("the old leader exits").unwrap();
    assert!(!exit.success(), "{exit}");
    let done = scene.wait_phase("stolen", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(120)).await;
    assert_eq!(done.phase(), Some(&ConditionType::Complete), "{:#?}", done.status);
    let ours = scene.successful_create_snapshots().await;
    assert_eq!(ours.len(), scene.cluster.tikv.len(), "one successful CreateSnapshots per instance across both leaders: {ours:#?}");
    let uid = done.metadata.uid.clone().unwrap();
    let tagged: std::collections::BTreeSet<String> =
        scene.snapshots_tagged(&uid).await.iter().filter_map(|s| s.snapshot_id().map(String::from)).collect();
    let meta: serde_json::Value = serde_json::from_slice(&scene.object("stolen/backupmeta").await.expect("backupmeta")).unwrap();
    let listed: std::collections::BTreeSet<String> = tidb_ebs_backup::backup::meta::snapshot_ids_in_meta(&meta).into_iter().collect();
    assert_eq!(listed, tagged, "backupmeta lists exactly the backup's snapshots");
    assert_eq!(tagged.len(), scene.cluster.tikv_volume_ids().len());
    // No keeper of either replica refreshes the pause afterwards: PD stays as it was for a whole TTL/3+.
    emulator.clear_faults().await;
    assert_pd_unchanged(&pd_state(scene.stack).await, &before);
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_pd_unchanged(&pd_state(scene.stack).await, &before);

    // The Lease deleted: the leader stops; the only replica left takes a new Lease and goes on.
    let mut c = spawn_operator(scene.stack, &scene.namespace, "op-c");
    leases.delete("tidb-ebs-backup", &Default::default()).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), b.wait()).await.expect("the leader without a Lease exits").unwrap();
    assert!(!exit.success(), "{exit}");
    eventually("op-c to take a new Lease", Duration::from_secs(30), || async { holder(&leases).await.filter(|h| h == "op-c") }).await;
    scene.apply(&scene.backup_yaml("after", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let after = scene.wait_phase("after", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(90)).await;
    assert_eq!(after.phase(), Some(&ConditionType::Complete), "{:#?}", after.status);
    let _ = c.start_kill();
}
