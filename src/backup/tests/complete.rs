//! Following the snapshots to `completed`, then `Complete` with sizes; a snapshot in `error` or gone
//! fails the backup and takes the rest of the set with it.

use serde_json::json;

use super::{assert_consistent, assert_left_nothing, fails_with};
use crate::api::ConditionType;
use crate::aws::Snapshots;
use crate::reason::Reason;
use crate::testkit::world::{condition, is};
use crate::testkit::{AwsFault, Ec2Method, Times, World};

const GIB: u64 = 1 << 30;

#[tokio::test]
async fn a_snapshot_in_error_fails_the_backup_and_every_snapshot_is_deleted() {
    let world = World::builder().stores(3).build();
    let broken = world.cluster.tikv[1].volume_ids[0].clone();
    world.ec2.break_volume(&broken, "disk on fire");
    world.ec2.complete_after_describes(Some(2));
    let failed = fails_with(&world, "b", json!({"cleanPolicy": "Retain"}), Reason::SnapshotFailed).await;
    let message = condition(&failed, ConditionType::Failed).unwrap().message.unwrap();
    assert!(message.contains(&broken) && message.contains("disk on fire"), "{message}");
    assert!(message.contains("deleted the 3 snapshots"), "the message says what was undone: {message}");
    assert!(world.record("b").snapshots_deleted);
    assert_left_nothing(&world, "b");
}

#[tokio::test]
async fn a_snapshot_deleted_behind_the_backups_back_fails_it() {
    let world = World::builder().stores(2).build();
    world.create_backup("b", json!({}));
    world.run_until("b", is(ConditionType::VolumeBackupSnapshotsCreated)).await;
    let gone = world.record("b").snapshots.values().next().cloned().unwrap();
    world.ec2.delete_snapshot(&gone).await.unwrap();
    let failed = world.run_until("b", is(ConditionType::Failed)).await.unwrap();
    assert_eq!(crate::testkit::world::failure_reason(&failed).as_deref(), Some(Reason::SnapshotMissing.as_str()));
    assert!(condition(&failed, ConditionType::Failed).unwrap().message.unwrap().contains(&gone));
    assert_left_nothing(&world, "b");
}

#[tokio::test]
async fn progress_is_reported_until_every_snapshot_completes() {
    let world = World::builder().stores(2).build();
    world.ec2.complete_after_describes(Some(4));
    world.create_backup("b", json!({}));
    let seen = std::cell::RefCell::new(Vec::new());
    world
        .run_until("b", |b| {
            let status = b.and_then(|b| b.status.as_ref());
            let progress = status.and_then(|s| s.progresses.iter().find(|p| p.step == crate::backup::SNAPSHOT_PROGRESS_STEP)).map(|p| p.progress);
            let mut seen = seen.borrow_mut();
            if let Some(p) = progress.filter(|p| seen.last() != Some(p)) {
                seen.push(p);
            }
            b.and_then(|b| b.phase()) == Some(&ConditionType::Complete)
        })
        .await;
    let seen = seen.into_inner();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "rising: {seen:?}");
    assert!(seen.len() >= 3 && seen[0] < 100.0 && seen.last() == Some(&100.0), "in steps, to 100: {seen:?}");
}

#[tokio::test]
async fn the_sizes_are_the_snapshots_blocks_and_those_changed_since_the_last_snapshot() {
    let world = World::builder().stores(3).build();
    for volume in world.cluster.tikv_volume_ids() {
        world.ec2.add_completed_snapshot(&volume, &[("made-by", "an earlier backup")]);
        world.ec2.set_written_bytes(&volume, 3 * GIB);
    }
    world.ec2.complete_after_describes(Some(1));
    world.create_backup("b", json!({}));
    let done = world.run_until("b", is(ConditionType::Complete)).await.unwrap();
    let status = done.status.unwrap();
    assert_eq!(status.backup_size, Some((9 * GIB) as i64), "3 volumes of 3 GiB");
    assert_eq!(status.incremental_backup_size, Some((6 * GIB) as i64), "2 GiB each written since the earlier snapshot");
    assert_eq!(status.backup_size_readable.as_deref(), Some("9.7 GB"));
    assert!(status.time_completed.is_some() && status.time_taken.is_some() && status.commit_ts.is_some());
    assert_consistent(&world, "b");
}

#[tokio::test]
async fn sizes_that_cannot_be_had_are_left_out_of_a_complete_backup() {
    let world = World::builder().build();
    world.ec2.fail(Ec2Method::SnapshotBlockBytes, Times::Always, AwsFault::code("AccessDeniedException"));
    world.ec2.complete_after_describes(Some(1));
    world.create_backup("b", json!({"calcSizeLevel": "full"}));
    let done = world.run_until("b", is(ConditionType::Complete)).await.unwrap();
    let status = done.status.unwrap();
    assert_eq!((status.backup_size, status.incremental_backup_size), (None, None), "neither figure, and no failure");
    assert!(world.ec2.calls_of(Ec2Method::CompletedSnapshotsOfVolume).is_empty(), "incremental was not asked for");
    assert_consistent(&world, "b");
}
