//! The crash-point matrix on the fakes (review B.8, item 1): a backup's process dies at each crash point
//! (`fail` makes the point panic inside the reconcile's task; the World then drops that process's
//! Context, so its keepers stop as a dead process's would, and starts a new one), and is driven to the
//! end by its successor. Then, for every point and every cleanPolicy:
//! - PD is not paused and holds no safepoint of ours; it was resumed right after the last
//!   CreateSnapshots call (not left to its TTL) and never paused again after that;
//! - no volume has two snapshots tagged with the backup's uid;
//! - `Complete` with a `backupmeta` listing exactly the recorded snapshots, one per TiKV volume (or,
//!   with a broken volume, `Failed` with no snapshot, `backupmeta` or lock left);
//! - deleting the Backup afterwards leaves nothing (`Delete`), everything (`Retain`), or what
//!   `OnFailure` keeps.
//!
//! The points are read from `src/` (every `crash_point!`), so none can be left out; each case checks that
//! its backup really crashed there.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{assert_claim_released, assert_consistent, assert_left_nothing, assert_resumed, pause_calls};
use crate::api::ConditionType;
use crate::reason::Reason;
use crate::testkit::failpoints::CrashScenario;
use crate::testkit::world::{ended, failure_reason};
use crate::testkit::{Ec2Method, World};

/// The crash points only a failing backup passes (its clean-up); a broken volume makes it fail.
const FAILURE_POINT: &str = "failure.after-delete";

const POLICIES: &[&str] = &["Delete", "Retain", "OnFailure"];

/// Two crashes in a row, the second after the restart that followed the first.
const PAIRS: &[[&str; 2]] = &[
    ["preflight.after-lock", "pause.after-intent"],
    ["pause.after-apply", "snapshot.after-call"],
    ["snapshot.after-requests", "snapshot.after-call"],
    ["pause.after-safepoint", "resume.after-undo"],
    ["snapshot.after-save", "meta.after-put"],
    ["meta.after-put", "finish.before-save"],
    ["snapshot.after-call", FAILURE_POINT],
];

/// The names of the crash points (`crash_point!` with a string literal) under `dir`, comments aside.
fn crash_points_in(dir: &Path) -> BTreeSet<String> {
    let pattern = concat!("crash_point", "!(\"");
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    entries
        .map(|entry| entry.expect("a directory entry").path())
        .flat_map(|path| match path.extension() {
            _ if path.is_dir() => crash_points_in(&path),
            Some(ext) if ext == "rs" => {
                let text = std::fs::read_to_string(&path).expect("a source file");
                let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
                code.flat_map(|l| l.split(pattern).skip(1).map(|rest| rest.split('"').next().unwrap_or_default().to_string()).collect::<Vec<_>>())
                    .collect()
            }
            _ => BTreeSet::new(),
        })
        .collect()
}

/// Every crash point in `src/`: the matrix runs them all, so a new one is covered as soon as it is
/// written (and fails the matrix until it is reached, or named as a failure-path point above).
fn crash_points() -> BTreeSet<String> {
    crash_points_in(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")))
}

#[test]
fn the_matrix_covers_every_crash_point() {
    let points = crash_points();
    assert!(points.len() >= 17, "the scan finds the crash points: {points:?}");
    let named: BTreeSet<&str> = PAIRS.iter().flatten().chain([&FAILURE_POINT]).copied().collect();
    assert!(named.iter().all(|p| points.contains(*p)), "the points named here exist in src/: {named:?}");
}

fn matrix_world(scenario: &CrashScenario) -> World {
    World::builder()
        .stores(2)
        .volumes_per_store(2)
        .settings(|s| {
            s.poll_interval = Duration::from_millis(20);
            s.quiet_wait = Duration::from_millis(100);
            s.create_snapshots_timeout = Duration::from_millis(300);
            s.throttle_backoff_max = Duration::from_millis(200);
        })
        .crash_scenario(scenario)
        .build()
}

/// One backup crashed at `points` (in turn), driven to its end and deleted; its line of the matrix.
async fn run_case(scenario: &CrashScenario, points: &[&str], policy: &str) -> String {
    let started = Instant::now();
    let failing = points.contains(&FAILURE_POINT);
    let case = format!("{points:?} {policy}");
    let world = matrix_world(scenario);
    points.iter().for_each(|p| scenario.crash_once_at(p));
    world.ec2.complete_after_describes(Some(1));
    if failing {
        world.ec2.break_volume(&world.cluster.tikv[0].volume_ids[0], "I/O error");
    }
    world.create_backup("b", json!({"cleanPolicy": policy, "cleanOption": {"snapshotsDeleteRatio": 100.0}}));
    let end = world.run_until("b", ended).await.expect("the Backup stays");
    scenario.clear();
    let crashes = world.crashes();
    assert_eq!(crashes.len(), points.len(), "{case}: crashed {crashes:?}");
    for (point, crash) in points.iter().zip(&crashes) {
        assert!(crash.contains(point), "{case}: crashed at {point}: {crash}");
    }

    let uid = world.uid("b");
    assert_resumed(&world, &uid);
    assert_claim_released(&world);
    assert_resumed_after_the_calls(&world, points, &case);
    let per_volume = world.snapshots_per_volume(&uid);
    assert!(per_volume.values().all(|n| *n <= 1), "{case}: a volume snapshotted twice: {per_volume:?}");
    let outcome = if failing {
        assert_eq!(failure_reason(&end).as_deref(), Some(Reason::SnapshotFailed.as_str()), "{case}: {:#?}", end.status);
        assert_left_nothing(&world, "b");
        "Failed/SnapshotFailed"
    } else {
        assert_eq!(end.phase(), Some(&ConditionType::Complete), "{case}: a crash alone must not fail a backup: {:#?}", end.status);
        assert_consistent(&world, "b");
        let tagged: BTreeSet<String> = world.ec2.snapshots().into_iter().map(|s| s.snapshot_id).collect();
        let listed: BTreeSet<String> = world.snapshots_in_meta("b").into_values().collect();
        assert_eq!(listed, tagged, "{case}: backupmeta lists exactly the snapshots that exist");
        "Complete"
    };

    let kept = (world.ec2.snapshots().len(), world.keys_under("b").len());
    world.delete_backup("b").await;
    world.run_until("b", |b| b.is_none()).await;
    let left = (world.snapshots_per_volume(&uid).values().sum::<usize>(), world.keys_under("b").len());
    let keeps = policy == "Retain" || (policy == "OnFailure" && !failing);
    assert_eq!(left, if keeps { kept } else { (0, 0) }, "{case}: (snapshots, objects) left after deletion, kept before {kept:?}");
    assert_resumed(&world, &uid);
    format!("{:<52} -> {outcome:<20} {:>5} ms", case, started.elapsed().as_millis())
}

/// PD was told to resume right after the last CreateSnapshots call (not left to its TTL), and nothing
/// paused it again afterwards. Right after: within a second, or, when the process died with calls in
/// flight, once its successor has waited for them to land (the round's send-by time, plus the call
/// timeout, plus a second: at most 3 s with the matrix's settings) and found them by tag.
fn assert_resumed_after_the_calls(world: &World, points: &[&str], case: &str) {
    let in_flight = points.iter().any(|p| ["snapshot.after-requests", "snapshot.after-call"].contains(p));
    let allowed = Duration::from_secs(if in_flight { 4 } else { 1 });
    let last_call = world.ec2.calls_of(Ec2Method::CreateSnapshots).into_iter().map(|c| c.at).max().expect("snapshots were taken");
    let pauses = pause_calls(world);
    let undo = pauses.iter().filter(|(at, pauses)| !pauses && *at > last_call).map(|(at, _)| *at).min();
    let undo = undo.unwrap_or_else(|| panic!("{case}: PD is never told to resume after the last call"));
    assert!(undo.duration_since(last_call) < allowed, "{case}: resumed {:?} after the last call", undo.duration_since(last_call));
    assert!(pauses.iter().all(|(at, pauses)| !pauses || *at < undo), "{case}: PD is paused again after it was resumed");
}

fn report(title: &str, started: Instant, lines: &[String]) {
    println!("{title} ({} cases, {:.1} s):\n{}", lines.len(), started.elapsed().as_secs_f64(), lines.join("\n"));
}

#[tokio::test]
async fn a_crash_at_any_point_under_any_clean_policy_neither_strands_pd_nor_splits_the_set() {
    let scenario = CrashScenario::setup();
    let started = Instant::now();
    let mut lines = Vec::new();
    for point in crash_points() {
        for policy in POLICIES {
            lines.push(run_case(&scenario, &[&point], policy).await);
        }
    }
    report("crash-point matrix", started, &lines);
}

#[tokio::test]
async fn two_crashes_in_a_row_neither_strand_pd_nor_split_the_set() {
    let scenario = CrashScenario::setup();
    let started = Instant::now();
    let mut lines = Vec::new();
    for (i, pair) in PAIRS.iter().enumerate() {
        lines.push(run_case(&scenario, pair, POLICIES[i % POLICIES.len()]).await);
    }
    report("crash pairs", started, &lines);
}
