//! The pause: scheduling and GC are paused before any snapshot and for as long as the calls run, at
//! the resolved ts the backup records; a pause that cannot be completed is undone and fails the backup.

use std::time::Duration;

use serde_json::json;

use super::{assert_left_nothing, fails_with, pause_calls, safepoint_id};
use crate::api::ConditionType;
use crate::reason::Reason;
use crate::testkit::world::is;
use crate::testkit::{AwsFault, Ec2Method, PdFault, PdMethod, Times, World};

#[tokio::test]
async fn the_snapshots_are_taken_inside_the_pause_at_the_recorded_resolved_ts() {
    let world = World::builder().stores(3).build();
    // Slow calls, so the pause can be looked at while they run.
    world.ec2.fail(Ec2Method::CreateSnapshots, Times::Always, AwsFault::Delay(Duration::from_millis(300)));
    world.create_backup("b", json!({}));
    let (_, seen) = tokio::join!(world.run_until("b", is(ConditionType::VolumeBackupSnapshotsCreated)), async {
        while world.ec2.calls_of(Ec2Method::CreateSnapshots).len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (world.pd.paused_scheduler_names(), world.pd.config_override("schedule.merge-schedule-limit"))
    });
    let (schedulers, merge_limit) = seen;
    let expected = ["balance-hot-region-scheduler", "balance-leader-scheduler", "balance-region-scheduler", "evict-slow-store-scheduler"];
    assert_eq!(schedulers, expected, "the balancing schedulers PD runs, not evict-stopping-store");
    assert_eq!(merge_limit, Some(json!(0)), "region merges are held off by a config override");

    let record = world.record("b");
    let resolved_ts = record.resolved_ts.expect("the resolved ts is recorded");
    assert_eq!(record.pause.as_ref().and_then(|p| p.safepoint), Some(resolved_ts - 1), "GC is held just below it");
    let uid = world.uid("b");
    let safepoints: Vec<String> = world.pd.calls_of(PdMethod::UpdateServiceSafepoint).into_iter().map(|c| c.detail).collect();
    assert!(safepoints.contains(&format!("{} 30 {}", safepoint_id(&uid), resolved_ts - 1)), "{safepoints:?}");
    let status = world.backup("b").unwrap().status.unwrap();
    assert_eq!(status.commit_ts, Some(resolved_ts.to_string()), "the commit ts is the resolved ts");

    // Every call went out after the last pause call before it and before the first undo.
    let calls = world.ec2.calls_of(Ec2Method::CreateSnapshots);
    let pauses = pause_calls(&world);
    let first_undo = pauses.iter().find(|(_, pauses)| !pauses).expect("the pause is undone").0;
    let last_pause = pauses.iter().rfind(|(at, pauses)| *pauses && *at < first_undo).expect("paused").0;
    assert!(calls.iter().all(|c| last_pause < c.at && c.at < first_undo), "CreateSnapshots inside the pause");
    assert!(pauses.iter().all(|(at, pauses)| !pauses || *at < first_undo), "nothing pauses again after the undo");
    assert!(!world.pd.is_paused() && world.pd.safepoint(&safepoint_id(&uid)).is_none());
}

#[tokio::test]
async fn a_pause_that_fails_half_way_is_undone() {
    let world = World::builder().build();
    // The schedulers are paused; the config override that follows is refused.
    world.pd.fail(PdMethod::SetConfigWithTtl, Times::Next(1), PdFault::Status(500));
    let failed = fails_with(&world, "b", json!({"cleanPolicy": "Delete"}), Reason::PDPauseFailed).await;
    assert!(failed.status.unwrap().conditions.iter().any(|c| c.message.as_deref().is_some_and(|m| m.contains("pausing PD scheduling"))));
    let schedulers_paused = world.pd.calls_of(PdMethod::PauseScheduler).iter().filter(|c| c.pauses()).count();
    assert!(schedulers_paused > 0, "the schedulers had been paused");
    let resumed = world.pd.calls_of(PdMethod::PauseScheduler).iter().filter(|c| c.undoes()).count();
    assert_eq!(resumed, schedulers_paused, "each one is resumed");
    assert!(world.pd.calls_of(PdMethod::UpdateServiceSafepoint).iter().all(|c| !c.pauses()), "GC was never held");
    assert!(world.ec2.calls_of(Ec2Method::CreateSnapshots).is_empty());
    assert_left_nothing(&world, "b");
}

#[tokio::test]
async fn operators_that_never_drain_fail_the_backup_and_the_pause_is_undone() {
    let world = World::builder().settings(|s| s.quiet_wait = Duration::from_millis(100)).build();
    world.pd.set_operators(&["transfer leader of region 7", "add peer of region 9"]);
    let failed = fails_with(&world, "b", json!({}), Reason::ScheduleNotQuiet).await;
    let message = crate::testkit::world::condition(&failed, ConditionType::Failed).unwrap().message.unwrap();
    assert!(message.contains("2 operators"), "{message}");
    assert!(world.pd.calls_of(PdMethod::PauseScheduler).iter().any(|c| c.pauses()), "it had paused");
    assert!(world.pd.calls_of(PdMethod::MinResolvedTs).len() == 1, "no resolved ts is taken after the pause (only preflight's)");
    assert!(world.ec2.calls_of(Ec2Method::CreateSnapshots).is_empty());
    assert_left_nothing(&world, "b");
}

#[tokio::test]
async fn a_gc_safepoint_ahead_of_the_resolved_ts_fails_the_backup() {
    let world = World::builder().build();
    world.pd.set_gc_safe_point(u64::MAX - 1);
    let failed = fails_with(&world, "b", json!({"cleanPolicy": "OnFailure"}), Reason::GCSafepointAhead).await;
    let message = crate::testkit::world::condition(&failed, ConditionType::Failed).unwrap().message.unwrap();
    assert!(message.contains("gc_worker"), "{message}");
    assert!(world.ec2.calls_of(Ec2Method::CreateSnapshots).is_empty(), "no snapshot of an inconsistent point");
    assert!(world.record("b").resolved_ts.is_none(), "no resolved ts is recorded");
    assert_left_nothing(&world, "b");
}
