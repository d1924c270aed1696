//! Resuming PD once every snapshot has started: the pause is undone at once and the keeper stops; a
//! PD that cannot be told does not cost the backup its consistent snapshots.

use std::time::Duration;

use serde_json::json;

use super::{assert_consistent, assert_resumed, pause_calls};
use crate::api::ConditionType;
use crate::reason::Reason;
use crate::testkit::world::is;
use crate::testkit::{AwsFault, Ec2Method, PdFault, PdMethod, Times, World};

#[tokio::test]
async fn pd_is_resumed_right_after_the_last_call_and_stays_resumed() {
    let world = World::builder().stores(3).build();
    world.create_backup("b", json!({}));
    world.run_until("b", is(ConditionType::VolumeBackupSnapshotsCreated)).await;
    assert!(world.record("b").resumed);
    assert_resumed(&world, &world.uid("b"));
    let last_call = world.ec2.calls_of(Ec2Method::CreateSnapshots).into_iter().map(|c| c.at).max().unwrap();
    let undone = pause_calls(&world).into_iter().filter(|(at, pauses)| !pauses && *at > last_call).map(|(at, _)| at).min();
    let undone = undone.expect("PD is told to resume after the calls");
    let after = undone.duration_since(last_call);
    assert!(after < Duration::from_millis(500), "at once, not at the TTL: {after:?}");
    world.ec2.complete_all();
    world.run_until("b", is(ConditionType::Complete)).await;
    assert!(pause_calls(&world).iter().all(|(at, pauses)| !pauses || *at < last_call), "nothing pauses PD again");
}

#[tokio::test]
async fn pd_unreachable_at_resume_still_completes_with_a_warning() {
    let world = World::builder().stores(2).build();
    world.ec2.fail(Ec2Method::CreateSnapshots, Times::Always, AwsFault::Delay(Duration::from_millis(300)));
    world.create_backup("b", json!({}));
    let unreachable = async {
        // PD goes away while the calls are in flight: the pause is in place, its undo cannot be sent.
        while world.ec2.calls_of(Ec2Method::CreateSnapshots).len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for method in [PdMethod::PauseScheduler, PdMethod::SetConfigWithTtl, PdMethod::UpdateServiceSafepoint] {
            world.pd.fail(method, Times::Always, PdFault::Unreachable);
        }
    };
    tokio::join!(world.run_until("b", is(ConditionType::VolumeBackupSnapshotsCreated)), unreachable);
    world.ec2.complete_all();
    let done = world.run_until("b", is(ConditionType::Complete)).await.unwrap();
    assert_consistent(&world, "b");
    assert!(world.record("b").resumed, "recorded as done: PD drops the pause by its TTL");
    let (_, _, note) = world
        .events()
        .into_iter()
        .find(|(type_, reason, _)| type_ == "Warning" && reason == Reason::PDResumeFailed.as_str())
        .expect("a PDResumeFailed Warning");
    assert!(note.contains("the snapshots are consistent") && note.contains("30s"), "{note}");
    assert!(world.pd.is_paused(), "left to PD's TTL, as the Warning says");
    assert!(world.ctx().keepers.guard(&world.uid("b")).is_none(), "and no keeper refreshes it");
    assert!(done.status.unwrap().commit_ts.is_some());
}
