//! BackupSchedules on the stack: Backups created at their times, one at a time per TidbCluster, a run
//! skipped while another backup of the cluster runs, pause, retention with failures in the mix (only
//! `Complete` backups count, the newest is always kept, data goes by each Backup's cleanPolicy), the
//! metrics, and deleting the schedule (the garbage collector deletes its Backups, as under TiDB Operator).

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tidb_ebs_backup::api::backup_schedule::BACKUP_SCHEDULE_LABEL;
use tidb_ebs_backup::api::{Backup, BackupSchedule, ConditionType};

use crate::support::e2e::{Operator, Scene, settings};
use crate::support::{eventually, exclusive};

const SELECTOR: &str = "tidb-ebs-backup.io/managed=true";

/// The chart's rules only the BackupSchedule controller needs (each taken away below).
pub const SCHEDULE_RULES: [&str; 2] = ["backupschedules:list,watch,patch", "backups:create,delete"];

fn schedule_yaml(scene: &Scene, name: &str, spec: Value, annotations: Value) -> Value {
    let template = scene.backup_yaml(name, json!({"cleanPolicy": "Delete", "s3": {"secretName": "keys"}}), json!({}))["spec"].clone();
    let mut full = json!({"schedule": "@every 3s", "backupTemplate": template});
    for (key, value) in spec.as_object().unwrap() {
        full[key] = value.clone();
    }
    json!({
        "apiVersion": "pingcap.com/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": name, "namespace": scene.namespace, "labels": {"tidb-ebs-backup.io/managed": "true"}, "annotations": annotations},
        "spec": full,
    })
}

fn schedules(scene: &Scene) -> Api<BackupSchedule> {
    Api::namespaced(scene.client.clone(), &scene.namespace)
}

async fn backups_of(scene: &Scene, schedule: &str) -> Vec<Backup> {
    let list = scene.api().list(&ListParams::default().labels(&format!("{BACKUP_SCHEDULE_LABEL}={schedule}"))).await.unwrap();
    let mut items = list.items;
    items.sort_by_key(|b| b.name_any());
    items
}

async fn schedule_events(scene: &Scene, name: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some("BackupSchedule") && r.name.as_deref() == Some(name)))
        .map(|e| format!("{} {}", e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

fn running(backup: &Backup) -> bool {
    backup.metadata.deletion_timestamp.is_none() && !backup.phase().is_some_and(ConditionType::is_terminal)
}

#[tokio::test]
async fn a_schedule_creates_backups_one_at_a_time_skips_while_one_runs_and_pauses() {
    let _stack = exclusive().await;
    let scene = Scene::new("schedule-runs", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let operator = Operator::start_with_schedules(scene.stack, &scene.namespace, settings(scene.stack), Some(SELECTOR)).await;

    // A Backup of the same TidbCluster that this operator does not run (no selector label): as long as
    // it is unfinished, every scheduled time is skipped.
    scene.apply(&scene.backup_yaml("blocker", json!({}), json!({}))).await;
    scene.apply(&schedule_yaml(&scene, "fast", json!({"maxBackups": 2}), json!({}))).await;
    let skipped = eventually("a skipped run", Duration::from_secs(20), || async {
        schedule_events(&scene, "fast").await.into_iter().find(|e| e.starts_with("ScheduledRunSkipped"))
    })
    .await;
    assert!(skipped.contains("blocker is still running"), "{skipped}");
    operator
        .wait_for_metric(&format!(
            "tidb_ebs_backup_schedule_runs_total{{namespace=\"{}\",schedule=\"fast\",cluster=\"basic\",result=\"skipped\"}}",
            scene.namespace
        ))
        .await;
    assert!(backups_of(&scene, "fast").await.is_empty(), "no Backup while another backup of the cluster runs");
    scene.api().delete("blocker", &DeleteParams::default()).await.unwrap();

    // Runs: never two unfinished at once; the oldest Complete backup goes once there are more than two.
    let mut most_running = 0;
    let mut seen = BTreeSet::new();
    let mut first_uid = None;
    let started = std::time::Instant::now();
    loop {
        let backups = backups_of(&scene, "fast").await;
        most_running = most_running.max(backups.iter().filter(|b| running(b)).count());
        for backup in &backups {
            if seen.insert(backup.name_any()) && first_uid.is_none() {
                first_uid = backup.uid();
            }
        }
        let first_gone = seen.len() >= 3 && !backups.iter().any(|b| b.uid() == first_uid);
        if first_gone {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "three runs and a retention deletion: {seen:?}, now {:?}",
            backups.iter().map(|b| (b.name_any(), b.phase().cloned())).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(most_running, 1, "one backup at a time");
    let first_name = seen.iter().next().unwrap().clone();
    assert!(
        first_name.len() == "fast-2026-12-02t10-00-00".len() && first_name.starts_with("fast-") && first_name.as_bytes()[15] == b't',
        "named <schedule>-<2006-01-02t15-04-05>: {first_name}"
    );
    // The deleted first backup went through its cleanPolicy (Delete): no snapshot of it is left.
    let first_uid = first_uid.unwrap();
    eventually("the first backup's snapshots deleted", Duration::from_secs(30), || async {
        scene.snapshots_tagged(&first_uid).await.is_empty().then_some(())
    })
    .await;

    let backup = backups_of(&scene, "fast").await.into_iter().find(|b| b.phase() == Some(&ConditionType::Complete)).expect("a Complete backup");
    let owner = &backup.owner_references()[0];
    let schedule = schedules(&scene).get("fast").await.unwrap();
    assert_eq!((owner.kind.as_str(), Some(owner.uid.clone())), ("BackupSchedule", schedule.uid()));
    assert_eq!(backup.labels().get("tidb-ebs-backup.io/managed").map(String::as_str), Some("true"), "the selector label is copied");
    let prefix = backup.spec.s3.as_ref().unwrap().prefix.clone().unwrap();
    assert!(prefix.starts_with(&format!("fast/basic-pd.{}-2379-", scene.namespace)), "{prefix}");
    let status = schedule.status.clone().unwrap();
    assert!(status.last_backup.is_some() && status.last_backup_time.is_some(), "{status:?}");
    let labels = format!("namespace=\"{}\",schedule=\"fast\",cluster=\"basic\"", scene.namespace);
    operator.wait_for_metric(&format!("tidb_ebs_backup_schedule_last_success_timestamp_seconds{{{labels}}}")).await;
    operator.wait_for_metric(&format!("tidb_ebs_backup_schedule_retention_deletions_total{{{labels},result=\"ok\"}}")).await;
    operator.wait_for_metric(&format!("tidb_ebs_backup_schedule_interval_seconds{{{labels}}} 3")).await;

    // Paused: no new Backup, whatever the cron says.
    schedules(&scene).patch("fast", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"pause": true}}))).await.unwrap();
    eventually("the last run to finish", Duration::from_secs(60), || async {
        let backups = backups_of(&scene, "fast").await;
        backups.iter().all(|b| !running(b)).then_some(())
    })
    .await;
    let names_when_paused: BTreeSet<String> = backups_of(&scene, "fast").await.iter().map(|b| b.name_any()).collect();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        let now: BTreeSet<String> = backups_of(&scene, "fast").await.iter().map(|b| b.name_any()).collect();
        assert!(now.is_subset(&names_when_paused), "a paused schedule created {:?}", now.difference(&names_when_paused));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        !operator.metrics.encode().contains(&format!("tidb_ebs_backup_schedule_next_run_timestamp_seconds{{{labels}}}")),
        "no next run while paused"
    );

    // Deleting the schedule deletes its Backups (owner references, as TiDB Operator sets them), each by
    // its cleanPolicy.
    let uids: Vec<String> = backups_of(&scene, "fast").await.iter().filter_map(|b| b.uid()).collect();
    schedules(&scene).delete("fast", &DeleteParams::default()).await.unwrap();
    eventually("the schedule's Backups gone", Duration::from_secs(60), || async { backups_of(&scene, "fast").await.is_empty().then_some(()) }).await;
    for uid in uids {
        eventually("their snapshots deleted", Duration::from_secs(30), || async { scene.snapshots_tagged(&uid).await.is_empty().then_some(()) })
            .await;
    }
    operator.stop().await;
}

/// A Backup owned by `schedule`, as the schedule would create it, run to its end by the operator.
async fn owned_backup(scene: &Scene, schedule: &BackupSchedule, name: &str, policy: &str, fails: bool) -> Backup {
    let secret = if fails { "missing" } else { "keys" };
    let mut backup = scene.backup_yaml(name, json!({"cleanPolicy": policy, "s3": {"secretName": secret}}), json!({}));
    backup["metadata"]["labels"] = json!({"tidb-ebs-backup.io/managed": "true", BACKUP_SCHEDULE_LABEL: schedule.name_any()});
    backup["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "pingcap.com/v1alpha1", "kind": "BackupSchedule", "name": schedule.name_any(),
        "uid": schedule.uid().unwrap(), "controller": true, "blockOwnerDeletion": true,
    }]);
    scene.apply(&backup).await;
    let want = if fails { ConditionType::Failed } else { ConditionType::Complete };
    let backup = scene.wait_phase(name, &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(90)).await;
    assert_eq!(backup.phase(), Some(&want), "{name}: {:#?}", backup.status);
    backup
}

/// Moves a Complete backup's recovery point (its commit ts) `hours` into the past: retention judges
/// age by it, and a real backup cannot be days old in a test.
async fn age(scene: &Scene, name: &str, hours: i64) {
    let at = Timestamp::now().checked_sub(jiff::SignedDuration::from_hours(hours)).unwrap();
    let tso = (at.as_millisecond() as u64) << 18;
    let patch = json!({"status": {"commitTs": tso.to_string()}});
    scene.api().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

async fn set_policy(scene: &Scene, spec: Value, annotations: Value) {
    let patch = json!({"spec": spec, "metadata": {"annotations": annotations}});
    schedules(scene).patch("keep", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

async fn wait_remaining(scene: &Scene, what: &str, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    eventually(what, Duration::from_secs(60), || async {
        let names: BTreeSet<String> =
            backups_of(scene, "keep").await.iter().filter(|b| b.metadata.deletion_timestamp.is_none()).map(|b| b.name_any()).collect();
        (names == expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn retention_keeps_exactly_the_expected_set_and_never_the_newest_complete_backup() {
    let _stack = exclusive().await;
    let scene = Scene::new("schedule-keep", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let operator = Operator::start_with_schedules(scene.stack, &scene.namespace, settings(scene.stack), Some(SELECTOR)).await;
    // Paused and without a policy: it creates nothing and keeps everything while the backups are made.
    scene.apply(&schedule_yaml(&scene, "keep", json!({"pause": true, "schedule": "@daily"}), json!({}))).await;
    let schedule = schedules(&scene).get("keep").await.unwrap();

    // (name, cleanPolicy, fails, recovery point hours ago)
    let made = [
        ("c1", "Delete", false, 240),
        ("c2", "Retain", false, 120),
        ("f1", "Delete", true, 0),
        ("c3", "Delete", false, 48),
        ("f2", "Delete", true, 0),
        ("c4", "Delete", false, 1),
    ];
    let mut uids = std::collections::BTreeMap::new();
    for (name, policy, fails, hours) in made {
        let backup = owned_backup(&scene, &schedule, name, policy, fails).await;
        if !fails {
            age(&scene, name, hours).await;
        }
        uids.insert(name, backup.uid().unwrap());
    }
    let volumes = scene.cluster.tikv_volume_ids().len();
    let data_left = |name: &'static str| {
        let uid = uids[name].clone();
        let scene = &scene;
        async move { (scene.snapshots_tagged(&uid).await.len(), scene.object(&format!("{name}/backupmeta")).await.is_some()) }
    };
    assert_eq!(data_left("c1").await, (volumes, true));

    // maxBackups counts Complete backups only: the two failures push out nothing; they go once their
    // grace has passed. Under TiDB Operator the three oldest by creation (c1, c2, f1) would go.
    set_policy(&scene, json!({"maxBackups": 3}), json!({"tidb-ebs-backup.io/failed-backup-retention": "1s"})).await;
    wait_remaining(&scene, "maxBackups 3", &["c2", "c3", "c4"]).await;
    eventually("c1's data deleted (cleanPolicy Delete)", Duration::from_secs(30), || async { (data_left("c1").await == (0, false)).then_some(()) })
        .await;

    // maxReservedTime is preferred over maxBackups: c2 (five days old) goes, and keeps its data (Retain).
    set_policy(&scene, json!({"maxReservedTime": "72h"}), json!({})).await;
    wait_remaining(&scene, "maxReservedTime 72h", &["c3", "c4"]).await;
    assert_eq!(data_left("c2").await, (volumes, true), "a Retain backup's data stays");

    // Tiers keep more than the age limit: the newest backup of each of the last two days.
    set_policy(&scene, json!({"maxReservedTime": "1m"}), json!({"tidb-ebs-backup.io/retention-tiers": "daily=2"})).await;
    let labels = format!("namespace=\"{}\",schedule=\"keep\",cluster=\"basic\"", scene.namespace);
    let deletions = |n: usize| format!("tidb_ebs_backup_schedule_retention_deletions_total{{{labels},result=\"ok\"}} {n}");
    operator.wait_for_metric(&deletions(4)).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let kept: Vec<String> =
            backups_of(&scene, "keep").await.iter().filter(|b| b.meta().deletion_timestamp.is_none()).map(|b| b.name_any()).collect();
        assert_eq!(kept, vec!["c3".to_string(), "c4".to_string()], "daily=2 keeps the newest of each of two days");
    }
    set_policy(&scene, json!({}), json!({"tidb-ebs-backup.io/retention-tiers": "daily=1"})).await;
    wait_remaining(&scene, "daily=1", &["c4"]).await;
    eventually("c3's data deleted", Duration::from_secs(30), || async { (data_left("c3").await == (0, false)).then_some(()) }).await;

    // Everything is past the age limit and no tier keeps it: the newest Complete backup stays all the same.
    set_policy(&scene, json!({"maxReservedTime": "1s"}), json!({"tidb-ebs-backup.io/retention-tiers": null})).await;
    operator.wait_for_metric(&format!("tidb_ebs_backup_schedule_last_success_timestamp_seconds{{{labels}}}")).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(backups_of(&scene, "keep").await.iter().map(|b| b.name_any()).collect::<Vec<_>>(), vec!["c4".to_string()]);
    }
    assert_eq!(data_left("c4").await, (volumes, true));
    operator.wait_for_metric(&deletions(5)).await;

    // A schedule whose tiers cannot be read deletes nothing and says why.
    set_policy(&scene, json!({}), json!({"tidb-ebs-backup.io/retention-tiers": "fortnightly=2"})).await;
    let invalid = eventually("a ScheduleInvalid Event", Duration::from_secs(20), || async {
        schedule_events(&scene, "keep").await.into_iter().find(|e| e.starts_with("ScheduleInvalid"))
    })
    .await;
    assert!(invalid.contains("fortnightly"), "{invalid}");
    schedules(&scene).delete("keep", &DeleteParams::default()).await.unwrap();
    eventually("the schedule's Backups gone", Duration::from_secs(60), || async { backups_of(&scene, "keep").await.is_empty().then_some(()) }).await;
    operator.stop().await;
}

#[tokio::test]
async fn each_schedule_rule_is_needed() {
    let _stack = exclusive().await;
    let scene = Scene::new("schedule-rbac", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let operator_ns = scene.stack.unique_namespace("schedule-rbac-op").await;
    let (cluster_rules, lease_rules) = crate::support::rbac::chart_rules(scene.stack).await;
    // (case, rule removed); `None` is the control, which must create a Backup.
    let cases: Vec<(&str, Option<&str>)> =
        vec![("all", None), ("minus-schedules", Some(SCHEDULE_RULES[0])), ("minus-create", Some(SCHEDULE_RULES[1]))];
    for (case, removed) in cases {
        let rules = removed.map(|key| crate::support::rbac::without(&cluster_rules, key)).unwrap_or_else(|| cluster_rules.clone());
        let (_, client) = crate::support::rbac::identity(&scene, &operator_ns, case, rules, lease_rules.clone()).await;
        let selector = format!("tidb-ebs-backup.io/case={case}");
        let operator = Operator::start_with_schedules_as(scene.stack, client, &scene.namespace, settings(scene.stack), Some(&selector)).await;
        let mut schedule = schedule_yaml(&scene, case, json!({"schedule": "@every 2s"}), json!({}));
        schedule["metadata"]["labels"] = json!({"tidb-ebs-backup.io/case": case});
        scene.apply(&schedule).await;
        if removed.is_none() {
            eventually("the control creates a Backup", Duration::from_secs(20), || async {
                (!backups_of(&scene, case).await.is_empty()).then_some(())
            })
            .await;
        } else {
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert!(backups_of(&scene, case).await.is_empty(), "{case}: no Backup without the rule");
            }
        }
        schedules(&scene).delete(case, &DeleteParams::default()).await.unwrap();
        eventually("the case's Backups gone", Duration::from_secs(60), || async { backups_of(&scene, case).await.is_empty().then_some(()) }).await;
        operator.stop().await;
    }
}

#[tokio::test]
async fn the_crd_refuses_a_bad_cron_or_duration_at_apply_time() {
    let _stack = crate::support::shared().await;
    let scene = Scene::new("schedule-crd", 1, 1).await;
    let cases = [
        (json!({"schedule": "every hour"}), "spec.schedule must be a cron expression"),
        (json!({"schedule": "0 0 * *"}), "spec.schedule must be a cron expression"),
        (json!({"maxReservedTime": "3d"}), "spec.maxReservedTime must be a duration"),
        (json!({"maxBackups": -1}), "maxBackups"),
    ];
    for (spec, message) in cases {
        let schedule = schedule_yaml(&scene, "bad", spec.clone(), json!({}));
        let output = scene.stack.kubectl_with_stdin(["apply", "-f", "-"], Some(&schedule.to_string())).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(message), "{spec}: {stderr}");
    }
    for good in ["*/15 * * * *", "@daily", "@every 1h30m", "0 2 * * MON-FRI"] {
        let schedule = schedule_yaml(&scene, "good", json!({"schedule": good, "pause": true}), json!({}));
        scene.apply(&schedule).await;
    }
}
