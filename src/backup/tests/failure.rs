//! The failure step: PD resumed, this backup's snapshots, `backupmeta` and prefix lock deleted, and
//! nothing of anyone else's, whatever prefix they share.

use std::time::Duration;

use serde_json::json;

use super::{assert_consistent_at, assert_left_nothing, assert_resumed, fails_with, object};
use crate::api::ConditionType;
use crate::backup::meta::META_FILE;
use crate::backup::ownership::LOCK_FILE;
use crate::reason::Reason;
use crate::testkit::world::{condition, is};
use crate::testkit::{AwsFault, Ec2Method, Times, World};

const FOREIGN_META: &[u8] = br#"{"written_by": "a BR run that knows nothing of locks"}"#;

/// Runs `name` until its CreateSnapshots calls are in flight, then does `meanwhile`, then on to the end.
async fn meanwhile_during_the_calls(world: &World, name: &str, meanwhile: impl FnOnce()) {
    world.ec2.fail(Ec2Method::CreateSnapshots, Times::Always, AwsFault::Delay(Duration::from_millis(300)));
    let during = async {
        while world.ec2.calls_of(Ec2Method::CreateSnapshots).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        meanwhile();
    };
    tokio::join!(world.run_until(name, is(ConditionType::Failed)), during);
}

#[tokio::test]
async fn a_second_backup_at_a_completed_ones_prefix_fails_and_deletes_none_of_its_data() {
    let world = World::builder().build();
    world.create_backup("first", json!({"s3": {"prefix": "shared"}}));
    world.ec2.complete_after_describes(Some(1));
    world.run_until("first", is(ConditionType::Complete)).await;
    let (meta, lock) = (object(&world, &format!("shared/{META_FILE}")), object(&world, &format!("shared/{LOCK_FILE}")));
    let snapshots = world.snapshots_taken();

    fails_with(&world, "second", json!({"cleanPolicy": "Delete", "s3": {"prefix": "shared"}}), Reason::FileExistedInExternalStorage).await;
    world.delete_backup("second").await;
    world.run_until("second", |b| b.is_none()).await;
    assert_eq!(object(&world, &format!("shared/{META_FILE}")), meta, "the first backup's backupmeta is untouched");
    assert_eq!(object(&world, &format!("shared/{LOCK_FILE}")), lock, "and its lock");
    assert_eq!(world.snapshots_taken(), snapshots, "and its snapshots");
    assert!(world.ec2.calls_of(Ec2Method::DeleteSnapshot).is_empty());
    assert_consistent_at(&world, "first", "shared");
}

#[tokio::test]
async fn a_prefix_taken_over_mid_backup_fails_it_and_the_new_owners_lock_stays() {
    let world = World::builder().stores(2).build();
    world.create_backup("b", json!({"cleanPolicy": "Delete"}));
    meanwhile_during_the_calls(&world, "b", || world.put_foreign_lock("b", "uid-of-the-new-owner")).await;
    let failed = world.backup("b").unwrap();
    assert_eq!(crate::testkit::world::failure_reason(&failed).as_deref(), Some(Reason::FileExistedInExternalStorage.as_str()));
    assert!(condition(&failed, ConditionType::Failed).unwrap().message.unwrap().contains("uid-of-the-new-owner"));
    assert_eq!(world.keys_under("b"), [format!("b/{LOCK_FILE}")], "only the new owner's lock, no backupmeta of ours");
    assert!(world.snapshots_per_volume(&world.uid("b")).is_empty(), "our snapshots are deleted");
    assert_resumed(&world, &world.uid("b"));
}

#[tokio::test]
async fn a_backupmeta_written_by_someone_else_mid_backup_is_not_deleted_by_the_failure() {
    let world = World::builder().stores(2).build();
    world.create_backup("b", json!({"cleanPolicy": "OnFailure"}));
    let key = format!("b/{META_FILE}");
    meanwhile_during_the_calls(&world, "b", || world.s3.put_object(crate::testkit::world::BUCKET, &key, FOREIGN_META.to_vec())).await;
    let failed = world.backup("b").unwrap();
    assert_eq!(crate::testkit::world::failure_reason(&failed).as_deref(), Some(Reason::FileExistedInExternalStorage.as_str()));
    assert!(!world.record("b").meta_written, "this backup never wrote one");
    assert_eq!(object(&world, &key).as_deref(), Some(FOREIGN_META), "someone else's backupmeta must survive our failure");
}

#[tokio::test]
async fn snapshots_that_cannot_be_deleted_are_reported_and_deleting_the_backup_finishes_the_job() {
    let world = World::builder().stores(2).build();
    let broken = world.cluster.tikv[0].volume_ids[0].clone();
    world.ec2.break_volume(&broken, "I/O error");
    world.ec2.complete_after_describes(Some(1));
    world.ec2.fail(Ec2Method::DeleteSnapshot, Times::Next(1), AwsFault::code("UnauthorizedOperation"));
    let failed =
        fails_with(&world, "b", json!({"cleanPolicy": "Delete", "cleanOption": {"snapshotsDeleteRatio": 100.0}}), Reason::SnapshotFailed).await;
    let message = condition(&failed, ConditionType::Failed).unwrap().message.unwrap();
    assert!(message.contains("could not delete this backup's snapshots") && message.contains("UnauthorizedOperation"), "{message}");
    assert!(!world.record("b").snapshots_deleted);
    assert!(!world.snapshots_per_volume(&world.uid("b")).is_empty(), "left for the clean-up");
    let uid = world.uid("b");
    world.delete_backup("b").await;
    world.run_until("b", |b| b.is_none()).await;
    assert!(world.snapshots_per_volume(&uid).is_empty() && world.keys_under("b").is_empty(), "cleanPolicy Delete finishes it");
}

#[tokio::test]
async fn a_failure_after_the_backupmeta_deletes_it_with_the_snapshots() {
    let world = World::builder().stores(2).build();
    let broken = world.cluster.tikv[1].volume_ids[0].clone();
    world.ec2.break_volume(&broken, "I/O error");
    world.create_backup("b", json!({"cleanPolicy": "Retain"}));
    world.run_until("b", is(ConditionType::VolumeBackupSnapshotsCreated)).await;
    assert!(object(&world, &format!("b/{META_FILE}")).is_some() && world.record("b").meta_written);
    world.ec2.complete_all();
    world.run_until("b", is(ConditionType::Failed)).await;
    assert_left_nothing(&world, "b");
}
