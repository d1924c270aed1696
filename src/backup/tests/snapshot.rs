//! The CreateSnapshots calls: one per instance, never a second snapshot of a volume, AWS's throttling
//! waited out and paced, a snapshot quota met while paused failing the backup cleanly.

use std::time::Duration;

use serde_json::json;

use super::{assert_consistent, assert_left_nothing, fails_with};
use crate::api::ConditionType;
use crate::reason::Reason;
use crate::testkit::world::is;
use crate::testkit::{AwsFault, Ec2Method, Times, World};

/// Drives `name` to `Complete`, completing its snapshots as they are found.
async fn completes(world: &World, name: &str) {
    world.ec2.complete_after_describes(Some(1));
    world.run_until(name, is(ConditionType::Complete)).await;
    assert_consistent(world, name);
    super::assert_resumed(world, &world.uid(name));
}

/// Instance id -> how many CreateSnapshots calls named it.
fn calls_per_instance(world: &World) -> std::collections::BTreeMap<String, usize> {
    world.ec2.calls_of(Ec2Method::CreateSnapshots).into_iter().fold(Default::default(), |mut counts, c| {
        *counts.entry(c.detail.split(' ').next().unwrap_or_default().to_string()).or_default() += 1;
        counts
    })
}

#[tokio::test]
async fn a_lost_answer_is_found_by_tag_and_its_volumes_are_not_snapshotted_again() {
    let world = World::builder().stores(3).volumes_per_store(2).build();
    let lost = world.cluster.tikv[0].instance_id.clone();
    world.ec2.fail_where(Ec2Method::CreateSnapshots, &lost, Times::Next(1), AwsFault::Ambiguous);
    world.create_backup("b", json!({}));
    completes(&world, "b").await;
    assert!(calls_per_instance(&world).values().all(|n| *n == 1), "no call is sent twice: {:?}", calls_per_instance(&world));
    assert!(!world.ec2.calls_of(Ec2Method::FindSnapshotsByTag).is_empty(), "the lost call was looked up by tag");
    let adopted: Vec<String> = world.cluster.tikv[0].volume_ids.clone();
    let recorded = world.record("b").snapshots;
    assert!(adopted.iter().all(|v| recorded.contains_key(v)), "both volumes of the lost call are in the record");
}

#[tokio::test]
async fn throttled_calls_are_retried_until_aws_takes_them() {
    let world = World::builder().stores(4).build();
    // AWS's bucket holds 2 calls; the operator's (100) sends all 4 at once.
    world.ec2.meter_create_snapshots(2, 20.0);
    world.create_backup("b", json!({}));
    completes(&world, "b").await;
    let calls = calls_per_instance(&world);
    assert!(calls.values().sum::<usize>() > 4, "some calls were refused and sent again: {calls:?}");
    assert_eq!(world.snapshots_taken().len(), 4, "one snapshot per volume all the same");
}

#[tokio::test]
async fn a_bucket_smaller_than_the_instances_paces_the_calls_and_meets_no_throttling() {
    let world = World::builder()
        .stores(5)
        .settings(|s| {
            s.create_snapshots_burst = 1;
            s.create_snapshots_refill_per_second = 20.0;
        })
        .build();
    // AWS refuses what comes faster than 20 a second (a token of slack for timing).
    world.ec2.meter_create_snapshots(2, 20.0);
    world.create_backup("b", json!({}));
    completes(&world, "b").await;
    let calls = world.ec2.calls_of(Ec2Method::CreateSnapshots);
    assert_eq!(calls.len(), 5, "one call per instance, none refused");
    let mut times: Vec<_> = calls.iter().map(|c| c.at).collect();
    times.sort();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g >= Duration::from_millis(40)), "a token every 50 ms: {gaps:?}");
}

#[tokio::test]
async fn a_snapshot_quota_met_while_paused_fails_the_backup_and_deletes_what_was_taken() {
    let world = World::builder().stores(3).build();
    let refused = world.cluster.tikv[2].instance_id.clone();
    world.ec2.fail_where(Ec2Method::CreateSnapshots, &refused, Times::Always, AwsFault::code("PendingSnapshotLimitExceeded"));
    let failed = fails_with(&world, "b", json!({"cleanPolicy": "Retain"}), Reason::SnapshotQuotaExceeded).await;
    let message = crate::testkit::world::condition(&failed, ConditionType::Failed).unwrap().message.unwrap();
    assert!(message.contains(&refused), "{message}");
    assert_eq!(calls_per_instance(&world).get(&refused), Some(&1), "a quota is not waited out while paused");
    assert!(!world.ec2.calls_of(Ec2Method::DeleteSnapshot).is_empty(), "the two snapshots that were taken are deleted");
    assert_left_nothing(&world, "b");
}

#[tokio::test]
async fn snapshots_known_only_by_their_tag_are_deleted_when_the_backup_fails() {
    let world = World::builder().stores(2).build();
    let (lost, refused) = (world.cluster.tikv[0].instance_id.clone(), world.cluster.tikv[1].instance_id.clone());
    world.ec2.fail_where(Ec2Method::CreateSnapshots, &lost, Times::Next(1), AwsFault::Ambiguous);
    world.ec2.fail_where(Ec2Method::CreateSnapshots, &refused, Times::Always, AwsFault::code("PendingSnapshotLimitExceeded"));
    fails_with(&world, "b", json!({}), Reason::SnapshotQuotaExceeded).await;
    assert_left_nothing(&world, "b");
}
