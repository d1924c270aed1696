//! Schedule and preflight: every refusal ends `Failed` (or `Invalid`) with its reason before anything is
//! touched; a backup waits its turn behind another one of the same cluster.

use serde_json::json;

use super::{assert_touched_nothing, fails_with, object, with_secret};
use crate::api::ConditionType;
use crate::backup::meta::META_FILE;
use crate::backup::ownership::LOCK_FILE;
use crate::reason::Reason;
use crate::testkit::world::{Pass, condition, is};
use crate::testkit::{PdMethod, World};

#[tokio::test]
async fn a_missing_tidbcluster_is_refused() {
    let world = World::builder().build();
    let failed = fails_with(&world, "b", json!({"br": {"cluster": "nope"}}), Reason::TidbClusterNotFound).await;
    assert!(condition(&failed, ConditionType::Failed).unwrap().message.unwrap().contains("tidb/nope"));
    assert!(world.pd.calls().is_empty(), "PD is not even asked");
    assert_touched_nothing(&world, "b");
}

#[tokio::test]
async fn a_store_that_is_not_up_is_refused() {
    let world = World::builder().build();
    let offline = world.cluster.tikv[1].clone();
    world.pd.set_store_state(offline.store_id, "Offline");
    let failed = fails_with(&world, "b", json!({}), Reason::StoreNotUp).await;
    let message = condition(&failed, ConditionType::Failed).unwrap().message.unwrap();
    assert!(message.contains(&offline.pod) && message.contains("Offline"), "{message}");
    assert_touched_nothing(&world, "b");
}

#[tokio::test]
async fn a_missing_secret_is_refused() {
    let world = World::builder().build();
    fails_with(&world, "b", json!({"s3": {"secretName": "gone"}}), Reason::SecretNotFound).await;
    assert!(world.connectors.identities().is_empty(), "no AWS connection is made without credentials");
    assert_touched_nothing(&world, "b");
}

#[tokio::test]
async fn a_resolved_ts_that_is_not_real_time_is_refused() {
    let world = World::builder().build();
    world.pd.set_min_resolved_ts(0, false);
    fails_with(&world, "b", json!({}), Reason::MinResolvedTsNotEnabled).await;
    assert_touched_nothing(&world, "b");
}

#[tokio::test]
async fn a_backupmeta_already_at_the_prefix_is_refused_and_kept() {
    let world = World::builder().build();
    let key = format!("b/{META_FILE}");
    world.s3.put_object(crate::testkit::world::BUCKET, &key, b"{\"someone\": \"else\"}".to_vec());
    let spec = with_secret(&world, json!({"cleanPolicy": "Delete"}));
    fails_with(&world, "b", spec, Reason::FileExistedInExternalStorage).await;
    assert_touched_nothing(&world, "b");
    assert_eq!(object(&world, &key).as_deref(), Some(&b"{\"someone\": \"else\"}"[..]), "the existing backupmeta is untouched");
    assert_eq!(world.keys_under("b"), [key], "and nothing was added beside it");
}

#[tokio::test]
async fn another_backups_lock_at_the_prefix_is_refused_and_kept() {
    let world = World::builder().build();
    world.put_foreign_lock("b", "uid-of-another-backup");
    let lock = format!("b/{LOCK_FILE}");
    let before = object(&world, &lock);
    let failed = fails_with(&world, "b", json!({"cleanPolicy": "OnFailure"}), Reason::FileExistedInExternalStorage).await;
    assert!(condition(&failed, ConditionType::Failed).unwrap().message.unwrap().contains("uid-of-another-backup"));
    assert_eq!(object(&world, &lock), before, "the other Backup's lock is untouched");
    // Only the pause is never touched: the refusal comes after the lock write, which found the lock.
    assert!(world.pd.calls_of(PdMethod::PauseScheduler).is_empty());
    assert_touched_nothing(&world, "b");
}

#[tokio::test]
async fn a_backup_without_a_cluster_name_is_invalid_and_reaches_nothing() {
    let world = World::builder().build();
    world.create_backup("b", json!({"br": {"cluster": ""}}));
    let invalid = world.run_until("b", is(ConditionType::Invalid)).await.unwrap();
    let condition = condition(&invalid, ConditionType::Invalid).unwrap();
    assert_eq!(condition.reason.as_deref(), Some(Reason::InvalidSpec.as_str()));
    assert!(condition.message.unwrap().contains("spec.br.cluster"));
    assert!(world.pd.calls().is_empty() && world.ec2.calls().is_empty() && world.s3.calls().is_empty(), "nothing outside is reached");
    assert!(world.record("b").plan.is_none());
}

#[tokio::test]
async fn a_second_backup_of_the_cluster_waits_for_the_first_then_runs() {
    let world = World::builder().build();
    world.create_backup("first", json!({}));
    world.run_until("first", is(ConditionType::VolumeBackupSnapshotsCreated)).await;
    world.create_backup("second", json!({}));
    let pass = world.reconcile("second").await;
    assert!(matches!(pass, Pass::Requeue(_)), "it waits its turn: {pass:?}");
    let scheduled = condition(&world.backup("second").unwrap(), ConditionType::Scheduled).unwrap();
    assert_eq!(scheduled.reason.as_deref(), Some(Reason::WaitingForOtherBackup.as_str()), "{scheduled:?}");
    assert!(world.record("second").plan.is_none(), "no preflight while the first holds the cluster");
    world.ec2.complete_all();
    world.run_until("first", is(ConditionType::Complete)).await;
    world.run_until("second", is(ConditionType::VolumeBackupSnapshotsCreated)).await;
    world.ec2.complete_all();
    world.run_until("second", is(ConditionType::Complete)).await;
    super::assert_consistent(&world, "first");
    super::assert_consistent(&world, "second");
}

#[tokio::test]
async fn a_region_without_room_for_the_snapshots_waits_before_pausing() {
    let world = World::builder().stores(3).settings(|s| s.pending_snapshot_limit = 4).build();
    // Two of someone else's snapshots are pending: room for two more, and this backup needs three.
    for member in &world.cluster.tikv[..2] {
        world.ec2.add_pending_snapshot(&member.foreign_volume_id, &[("owner", "someone else")]);
    }
    world.create_backup("b", json!({}));
    let pass = world.reconcile("b").await;
    assert!(matches!(pass, Pass::Requeue(_)), "it waits for room: {pass:?}");
    let status = world.backup("b").unwrap().status.unwrap_or_default();
    assert!(status.conditions.iter().any(|c| c.reason.as_deref() == Some(Reason::PendingSnapshotQuota.as_str())), "{status:#?}");
    assert!(world.pd.calls().iter().all(|c| !c.pauses()), "PD is not paused while the Region has no room");
    assert!(world.ec2.calls_of(crate::testkit::Ec2Method::CreateSnapshots).is_empty());
}
