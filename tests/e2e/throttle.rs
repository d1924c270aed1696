//! AWS's limits on the local stack, with the emulator enforcing them as AWS does: the CreateSnapshots
//! token bucket and the Region's pending-snapshot quota. Neither may be met while PD is paused.

use std::time::Duration;

use crate::support::e2e::{Operator, Scene, assert_completed, pd_state, settings, settled_pd_state};
use crate::support::{Emulator, eventually, exclusive};
use serde_json::json;
use tidb_ebs_backup::api::ConditionType;

/// Limits off (and the bucket a test shrank removed) and snapshots completing at once again.
async fn lift_limits(emulator: &Emulator) {
    emulator.set_limits(json!({"enabled": false, "buckets": {"CreateSnapshots": null}})).await;
    emulator.set_snapshot_pending_seconds(0.0).await;
}

#[tokio::test]
async fn a_bucket_smaller_than_the_instances_paces_the_calls_and_meets_no_throttle() {
    let _stack = exclusive().await;
    let scene = Scene::new("e2e-pace", 4, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    // AWS's bucket, shrunk: one call at once, then two a second. Ours is the same size.
    emulator.set_limits(json!({"enabled": true, "buckets": {"CreateSnapshots": {"burst": 1, "refill_per_second": 2.0}}})).await;
    let before = settled_pd_state(scene.stack).await;
    let started = Emulator::now();
    let mut config = settings(scene.stack);
    (config.create_snapshots_burst, config.create_snapshots_refill_per_second) = (1, 2.0);
    let operator = Operator::start(scene.stack, &scene.namespace, config).await;
    scene.apply(&scene.backup_yaml("paced", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    assert_completed(&scene, "paced", &before).await;
    let calls = emulator.requests_since("CreateSnapshots", started).await;
    lift_limits(&emulator).await;
    let throttled: Vec<_> = calls.iter().filter(|r| r["error_code"].as_str().is_some()).collect();
    assert!(throttled.is_empty(), "no throttling answer while paused: {throttled:#?}");
    let mut times: Vec<f64> = scene.successful_create_snapshots().await.iter().filter_map(|r| r["time"].as_f64()).collect();
    times.sort_by(f64::total_cmp);
    assert_eq!(times.len(), 4, "one call per instance");
    let spread = times[3] - times[0];
    assert!(spread >= 1.3, "4 calls through a bucket of 1 refilled at 2/s take about 1.5 s, took {spread:.2} s");
    operator.stop().await;
}

#[tokio::test]
async fn a_backup_larger_than_the_pending_snapshot_quota_is_refused_before_the_pause() {
    let _stack = exclusive().await;
    let scene = Scene::new("e2e-quota", 2, 2).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let emulator = scene.stack.emulator();
    emulator.clear_faults().await;
    let before = settled_pd_state(scene.stack).await;
    let started = Emulator::now();
    let mut config = settings(scene.stack);
    config.pending_snapshot_limit = 3;
    let operator = Operator::start(scene.stack, &scene.namespace, config).await;
    scene.apply(&scene.backup_yaml("too-big", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let backup = scene.wait_phase("too-big", &[ConditionType::Failed, ConditionType::Complete], Duration::from_secs(60)).await;
    let status = backup.status.clone().unwrap();
    let failed = status.conditions.iter().find(|c| c.type_ == ConditionType::Failed).expect("Failed");
    assert_eq!(failed.reason.as_deref(), Some("SnapshotQuotaExceeded"), "{:#?}", status.conditions);
    assert!(failed.message.as_deref().is_some_and(|m| m.contains("4 snapshots") && m.contains("limit 3")), "{failed:?}");
    assert!(!status.conditions.iter().any(|c| c.type_ == ConditionType::Running), "nothing was paused: {:#?}", status.conditions);
    assert!(emulator.requests_since("CreateSnapshots", started).await.is_empty(), "no snapshot call");
    crate::support::e2e::assert_pd_unchanged(&pd_state(scene.stack).await, &before);
    operator.stop().await;
}

#[tokio::test]
async fn a_backup_waits_before_the_pause_while_other_snapshots_fill_the_quota() {
    let _stack = exclusive().await;
    let first = Scene::new("e2e-quota-a", 2, 1).await;
    let second = Scene::new("e2e-quota-b", 2, 1).await;
    for scene in [&first, &second] {
        scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    }
    let emulator = first.stack.emulator();
    emulator.clear_faults().await;
    // AWS's quota, shrunk to 3: the first backup's 2 snapshots stay pending for a while, and the
    // second's 2 would go beyond it.
    emulator.set_limits(json!({"enabled": true, "max_pending_per_region": 3, "buckets": {"CreateSnapshots": null}})).await;
    emulator.set_snapshot_pending_seconds(6.0).await;
    let before = settled_pd_state(first.stack).await;
    let started = Emulator::now();
    let mut config = settings(first.stack);
    config.pending_snapshot_limit = 3;
    let operator_a = Operator::start(first.stack, &first.namespace, config.clone()).await;
    let operator_b = Operator::start(second.stack, &second.namespace, config).await;
    first.apply(&first.backup_yaml("first", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    first.wait_phase("first", &[ConditionType::VolumeBackupSnapshotsCreated], Duration::from_secs(60)).await;
    second.apply(&second.backup_yaml("second", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let waiting = eventually("the second backup to wait for room in the quota", Duration::from_secs(30), || async {
        let backup = second.api().get("second").await.ok()?;
        let scheduled = backup.status.as_ref()?.conditions.iter().find(|c| c.type_ == ConditionType::Scheduled)?.clone();
        (scheduled.reason.as_deref() == Some("PendingSnapshotQuota")).then_some(scheduled)
    })
    .await;
    assert!(waiting.message.as_deref().is_some_and(|m| m.contains("2 pending + 2")), "{waiting:?}");
    let backup = second.wait_phase("second", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(90)).await;
    lift_limits(&emulator).await;
    assert_eq!(backup.phase(), Some(&ConditionType::Complete), "{:#?}", backup.status);
    let refused: Vec<_> =
        emulator.requests_since("CreateSnapshots", started).await.into_iter().filter(|r| r["error_code"].as_str().is_some()).collect();
    assert!(refused.is_empty(), "PendingSnapshotLimitExceeded never met: {refused:#?}");
    assert_completed(&first, "first", &before).await;
    operator_a.stop().await;
    operator_b.stop().await;
}
