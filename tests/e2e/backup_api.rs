//! The Backup API ("The Backup API" issue): the CRD generated from `src/api` accepts the shipped samples,
//! prints TiDB Operator's columns, rejects invalid Backups with a specific message each, and keeps fields
//! it does not know when the operator writes status. Needs HARNESS_ENV (see `support`).

use std::path::PathBuf;

use crate::support::{Stack, describe_output};
use futures::{StreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use tidb_ebs_backup::api::condition::{NewCondition, set_condition};
use tidb_ebs_backup::api::{Backup, ConditionStatus, ConditionType};
use tidb_ebs_backup::k8s::StatusWriter;

const SAMPLES_NAMESPACE: &str = "tidb-cluster";

fn backup_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("pingcap.com", "v1alpha1", "Backup"), "backups")
}

/// Now, at the precision the apiserver stores (RFC 3339 seconds).
fn now() -> Time {
    Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap())
}

/// A valid volume-snapshot Backup in `ns`.
fn valid_backup(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "pingcap.com/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "backupMode": "volume-snapshot",
            "backupType": "full",
            "cleanPolicy": "Delete",
            "calcSizeLevel": "all",
            "volumeBackupInitJobMaxActiveSeconds": 600,
            "br": {"cluster": "basic", "clusterNamespace": ns},
            "s3": {"provider": "aws", "region": "us-west-2", "bucket": "my-bucket", "prefix": "backups/one"},
            "cleanOption": {"snapshotsDeleteRatio": 1.0},
        },
    })
}

async fn apply_stdin(stack: &Stack, object: &Value) -> std::process::Output {
    stack.kubectl_with_stdin(["apply", "-f", "-"], Some(&object.to_string())).await
}

async fn get_json(stack: &Stack, ns: &str, name: &str) -> Value {
    let out = stack.kubectl(["get", "backup", name, "-n", ns, "-o", "json"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    serde_json::from_slice(&out.stdout).expect("kubectl get -o json")
}

// ---- samples and printer columns -----------------------------------------------------------------

#[tokio::test]
async fn every_sample_manifest_applies() {
    let stack = Stack::get();
    stack.ensure_namespace(SAMPLES_NAMESPACE).await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/backup");
    let mut samples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    samples.sort();
    assert!(samples.len() >= 3, "samples in {}: {samples:?}", dir.display());

    let mut backups = vec![];
    for sample in &samples {
        let out = stack.kubectl([std::ffi::OsStr::new("apply"), std::ffi::OsStr::new("-f"), sample.as_os_str()]).await;
        assert!(out.status.success(), "kubectl apply -f {}: {}", sample.display(), describe_output(&out));
        let text = std::fs::read_to_string(sample).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc).expect("sample YAML");
            if value["kind"] == "Backup" {
                backups.push(value);
            }
        }
    }
    assert!(backups.len() >= 3, "Backup samples: {}", backups.len());

    // What was applied is what is stored, and reads back as our typed Backup.
    let api: Api<Backup> = Api::namespaced(stack.kube_client().await, SAMPLES_NAMESPACE);
    for sample in &backups {
        let name = sample["metadata"]["name"].as_str().unwrap();
        let stored = get_json(stack, SAMPLES_NAMESPACE, name).await;
        assert_eq!(stored["spec"]["backupMode"], "volume-snapshot", "{name}");
        assert_eq!(stored["spec"]["s3"], sample["spec"]["s3"], "{name}");
        assert_eq!(stored["spec"]["br"], sample["spec"]["br"], "{name}");
        let typed = api.get(name).await.unwrap_or_else(|e| panic!("typed get {name}: {e}"));
        assert!(typed.is_volume_snapshot());
        assert_eq!(typed.cluster_namespace(), "tidb-cluster");
        assert_eq!(typed.spec.s3.as_ref().and_then(|s| s.bucket_and_prefix()).map(|(b, _)| b).as_deref(), Some("my-bucket"));
        assert_eq!(typed.spec.volume_backup_init_job_max_active_seconds, 600, "schema default");
    }
}

fn header(output: &std::process::Output) -> Vec<String> {
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().next().unwrap_or_default().split_whitespace().map(str::to_string).collect()
}

#[tokio::test]
async fn kubectl_get_prints_tidb_operator_columns() {
    let stack = Stack::get();
    let ns = stack.unique_namespace("bk-columns").await;
    let api: Api<Backup> = Api::namespaced(stack.kube_client().await, &ns);
    let mut object = valid_backup(&ns, "columns");
    // Every column filled, so each row splits into as many words as the header.
    object["status"] = json!({
        "phase": "Complete",
        "backupPath": "s3://my-bucket/backups/one/",
        "backupSizeReadable": "20GiB",
        "backupSize": 21474836480_i64,
        "incrementalBackupSizeReadable": "2GiB",
        "incrementalBackupSize": 2147483648_i64,
        "commitTs": "455000000000000000",
        "logSuccessTruncateUntil": "455000000000000001",
        "timeStarted": "2025-01-01T00:00:00Z",
        "timeCompleted": "2025-01-01T00:05:00Z",
        "timeTaken": "5m0s",
    });
    let backup: Backup = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &backup).await.expect("create Backup");

    let wide = stack.kubectl(["get", "bk", "-n", &ns, "-o", "wide"]).await;
    assert!(wide.status.success(), "{}", describe_output(&wide));
    let expected_wide = [
        "NAME",
        "TYPE",
        "MODE",
        "STATUS",
        "BACKUPPATH",
        "BACKUPSIZE",
        "INCREMENTALBACKUPSIZE",
        "COMMITTS",
        "LOGTRUNCATEUNTIL",
        "STARTED",
        "COMPLETED",
        "TIMETAKEN",
        "AGE",
    ];
    assert_eq!(header(&wide), expected_wide, "{}", describe_output(&wide));
    let row: Vec<String> = String::from_utf8_lossy(&wide.stdout).lines().nth(1).unwrap().split_whitespace().map(str::to_string).collect();
    assert_eq!(row.len(), expected_wide.len(), "{row:?}");
    assert_eq!(
        &row[..9],
        [
            "columns",
            "full",
            "volume-snapshot",
            "Complete",
            "s3://my-bucket/backups/one/",
            "20GiB",
            "2GiB",
            "455000000000000000",
            "455000000000000001"
        ]
    );
    assert_eq!(row[11], "5m0s");

    let narrow = stack.kubectl(["get", "bk", "-n", &ns]).await;
    assert!(narrow.status.success(), "{}", describe_output(&narrow));
    assert_eq!(
        header(&narrow),
        ["NAME", "TYPE", "MODE", "STATUS", "BACKUPPATH", "BACKUPSIZE", "COMMITTS", "LOGTRUNCATEUNTIL", "TIMETAKEN", "AGE"],
        "{}",
        describe_output(&narrow)
    );

    // The full resource name and the short name both work.
    let out = stack.kubectl(["get", "backups.pingcap.com", "columns", "-n", &ns, "-o", "name"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "backup.pingcap.com/columns");
}

// ---- validation ------------------------------------------------------------------------------------

/// Sets (Some) or removes (None) the value at a JSON pointer like `/spec/s3/bucket`.
fn mutate(mut object: Value, pointer: &str, value: Option<Value>) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let target = object.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent} in the base object"));
    let map = target.as_object_mut().expect("object parent");
    match value {
        Some(v) => {
            map.insert(key.to_string(), v);
        }
        None => {
            map.remove(key).unwrap_or_else(|| panic!("nothing to remove at {pointer}"));
        }
    }
    object
}

struct Invalid {
    what: &'static str,
    changes: Vec<(&'static str, Option<Value>)>,
    /// A fragment of what the apiserver says.
    message: &'static str,
}

fn invalid(what: &'static str, changes: Vec<(&'static str, Option<Value>)>, message: &'static str) -> Invalid {
    Invalid { what, changes, message }
}

fn invalid_cases() -> Vec<Invalid> {
    let s = |v: &str| Some(json!(v));
    vec![
        invalid("missing br.cluster", vec![("/spec/br/cluster", None)], "spec.br.cluster: Required value"),
        invalid("missing br", vec![("/spec/br", None)], "spec.br: Required value"),
        invalid(
            "br.cluster is not a DNS label",
            vec![("/spec/br/cluster", s("Basic_Cluster"))],
            "spec.br.cluster in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        ),
        invalid(
            "br.clusterNamespace is not a DNS label",
            vec![("/spec/br/clusterNamespace", s("TiDB.Cluster"))],
            "spec.br.clusterNamespace in body should match",
        ),
        invalid(
            "br.concurrency zero",
            vec![("/spec/br/concurrency", Some(json!(0)))],
            "spec.br.concurrency in body should be greater than or equal to 1",
        ),
        invalid("unknown backupMode", vec![("/spec/backupMode", s("ebs"))], r#"spec.backupMode: Unsupported value: "ebs""#),
        invalid("bad cleanPolicy", vec![("/spec/cleanPolicy", s("Sometimes"))], r#"spec.cleanPolicy: Unsupported value: "Sometimes""#),
        invalid("bad calcSizeLevel", vec![("/spec/calcSizeLevel", s("everything"))], r#"spec.calcSizeLevel: Unsupported value: "everything""#),
        invalid("volume-snapshot without s3", vec![("/spec/s3", None)], "a volume-snapshot backup needs spec.s3: the backupmeta is written to S3"),
        invalid(
            "backupType db with volume-snapshot",
            vec![("/spec/backupType", s("db"))],
            "a volume-snapshot backup is always a full backup: spec.backupType must be empty or 'full'",
        ),
        invalid(
            "unknown backupType",
            vec![("/spec/backupType", s("everything")), ("/spec/backupMode", s("snapshot"))],
            "spec.backupType must be one of full, db, table",
        ),
        invalid(
            "s3 with neither bucket nor path",
            vec![("/spec/s3/bucket", None)],
            "spec.s3.bucket is required (or the legacy spec.s3.path as <bucket>/<prefix>)",
        ),
        invalid(
            "s3 with an empty bucket and no path",
            vec![("/spec/s3/bucket", s(""))],
            "spec.s3.bucket is required (or the legacy spec.s3.path as <bucket>/<prefix>)",
        ),
        invalid("missing s3.provider", vec![("/spec/s3/provider", None)], "spec.s3.provider: Required value"),
        invalid(
            "invalid bucket name for provider aws",
            vec![("/spec/s3/bucket", s("My_Bucket"))],
            "spec.s3.bucket is not a valid S3 bucket name (3-63 characters: lowercase letters, digits, dots, hyphens)",
        ),
        invalid("'..' segment in prefix", vec![("/spec/s3/prefix", s("backups/../other-tenant"))], "spec.s3.prefix must not contain '..' segments"),
        invalid("prefix that is only '..'", vec![("/spec/s3/prefix", s(".."))], "spec.s3.prefix must not contain '..' segments"),
        invalid(
            "'..' in the legacy path",
            vec![("/spec/s3/bucket", None), ("/spec/s3/path", s("my-bucket/../other"))],
            "spec.s3.path must not contain '..' segments",
        ),
        invalid("empty secretName", vec![("/spec/s3/secretName", s(""))], "spec.s3.secretName in body should be at least 1 chars long"),
        invalid("empty serviceAccount", vec![("/spec/serviceAccount", s(""))], "spec.serviceAccount in body should be at least 1 chars long"),
        invalid(
            "negative volumeBackupInitJobMaxActiveSeconds",
            vec![("/spec/volumeBackupInitJobMaxActiveSeconds", Some(json!(-5)))],
            "spec.volumeBackupInitJobMaxActiveSeconds in body should be greater than or equal to 30",
        ),
        invalid(
            "volumeBackupInitJobMaxActiveSeconds above a day",
            vec![("/spec/volumeBackupInitJobMaxActiveSeconds", Some(json!(86401)))],
            "spec.volumeBackupInitJobMaxActiveSeconds in body should be less than or equal to 86400",
        ),
        invalid(
            "string volumeBackupInitJobMaxActiveSeconds",
            vec![("/spec/volumeBackupInitJobMaxActiveSeconds", s("600s"))],
            "spec.volumeBackupInitJobMaxActiveSeconds in body must be of type integer",
        ),
        invalid(
            "snapshotsDeleteRatio zero",
            vec![("/spec/cleanOption/snapshotsDeleteRatio", Some(json!(0)))],
            "spec.cleanOption.snapshotsDeleteRatio must be > 0 and <= 100 (snapshots deleted per second)",
        ),
        invalid(
            "snapshotsDeleteRatio above 100",
            vec![("/spec/cleanOption/snapshotsDeleteRatio", Some(json!(250.5)))],
            "spec.cleanOption.snapshotsDeleteRatio must be > 0 and <= 100 (snapshots deleted per second)",
        ),
    ]
}

#[tokio::test]
async fn invalid_backups_are_rejected_with_a_specific_message() {
    let stack = Stack::get();
    let ns = stack.unique_namespace("bk-invalid").await;

    // The base object is valid, so each rejection below is due to its one change.
    let out = apply_stdin(stack, &valid_backup(&ns, "valid")).await;
    assert!(out.status.success(), "the valid base object: {}", describe_output(&out));
    let legacy_path = mutate(mutate(valid_backup(&ns, "valid-path"), "/spec/s3/bucket", None), "/spec/s3/path", Some(json!("my-bucket/backups/two")));
    let out = apply_stdin(stack, &legacy_path).await;
    assert!(out.status.success(), "legacy s3.path: {}", describe_output(&out));

    let cases = invalid_cases();
    assert!(cases.len() >= 14);
    let failures: Vec<String> = stream::iter(cases.into_iter().enumerate())
        .map(|(i, case)| {
            let ns = ns.clone();
            async move {
                let mut object = valid_backup(&ns, &format!("invalid-{i}"));
                for (pointer, value) in &case.changes {
                    object = mutate(object, pointer, value.clone());
                }
                let out = apply_stdin(stack, &object).await;
                let stderr = String::from_utf8_lossy(&out.stderr);
                if out.status.success() {
                    Some(format!("[{}] was accepted: {}", case.what, describe_output(&out)))
                } else if !stderr.contains(case.message) {
                    Some(format!("[{}] rejected, but stderr lacks {:?}:\n{stderr}", case.what, case.message))
                } else {
                    None
                }
            }
        })
        .buffer_unordered(4)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n\n"));

    // None of them was stored.
    let out = stack.kubectl(["get", "bk", "-n", &ns, "-o", "name"]).await;
    let mut names: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    names.sort();
    assert_eq!(names, ["backup.pingcap.com/valid", "backup.pingcap.com/valid-path"]);
}

// ---- unknown fields and status writes --------------------------------------------------------------

#[tokio::test]
async fn status_writer_keeps_fields_it_does_not_know() {
    let stack = Stack::get();
    let ns = stack.unique_namespace("bk-unknown").await;
    let client = stack.kube_client().await;
    let mut object = valid_backup(&ns, "future");
    object["metadata"]["annotations"] = json!({"example.com/owner": "team-a"});
    object["metadata"]["labels"] = json!({"example.com/tier": "gold"});
    object["spec"]["someFutureField"] = json!({"nested": [1, 2, 3], "enabled": true});
    object["spec"]["br"]["someOther"] = json!("br-extra");
    object["spec"]["s3"]["someS3Option"] = json!("s3-extra");
    let out = apply_stdin(stack, &object).await;
    assert!(out.status.success(), "{}", describe_output(&out));

    // Another writer (TiDB Operator, a newer us) puts status fields we do not model.
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &backup_resource());
    dynamic
        .patch(
            "future",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"someStatusField": {"kept": true}, "backupPath": "s3://my-bucket/backups/one/"}})),
        )
        .await
        .expect("merge patch of status");

    let api: Api<Backup> = Api::namespaced(client.clone(), &ns);
    let backup = api.get("future").await.expect("typed get");
    assert_eq!(backup.status.as_ref().and_then(|s| s.backup_path.as_deref()), Some("s3://my-bucket/backups/one/"));
    let writer = StatusWriter::new();
    let stored = writer
        .update(&api, &backup, |owned| {
            set_condition(&mut owned.status, NewCondition::truthy(ConditionType::Running).because("Snapshotting", "creating EBS snapshots"), &now());
            owned.annotations.insert("tidb-ebs-backup.pingcap.com/test".into(), "written".into());
        })
        .await
        .expect("StatusWriter::update");
    assert_eq!(stored.phase(), Some(&ConditionType::Running));

    let after = get_json(stack, &ns, "future").await;
    assert_eq!(after["spec"]["someFutureField"], json!({"nested": [1, 2, 3], "enabled": true}), "{after}");
    assert_eq!(after["spec"]["br"]["someOther"], "br-extra");
    assert_eq!(after["spec"]["s3"]["someS3Option"], "s3-extra");
    assert_eq!(after["status"]["someStatusField"], json!({"kept": true}));
    assert_eq!(after["status"]["backupPath"], "s3://my-bucket/backups/one/");
    assert_eq!(after["status"]["phase"], "Running");
    let conditions = after["status"]["conditions"].as_array().expect("conditions");
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0]["type"], "Running");
    assert_eq!(conditions[0]["status"], "True");
    assert_eq!(conditions[0]["reason"], "Snapshotting");
    assert!(conditions[0]["lastTransitionTime"].is_string());
    assert_eq!(after["metadata"]["annotations"]["example.com/owner"], "team-a");
    assert_eq!(after["metadata"]["annotations"]["tidb-ebs-backup.pingcap.com/test"], "written");
    assert_eq!(after["metadata"]["labels"]["example.com/tier"], "gold");

    // A second write (phase moves on, condition flips) still keeps them.
    writer
        .update(&api, &stored, |owned| {
            set_condition(&mut owned.status, NewCondition::truthy(ConditionType::Running).with_status(ConditionStatus::False), &now());
            set_condition(&mut owned.status, NewCondition::truthy(ConditionType::Complete), &now());
        })
        .await
        .expect("second update");
    let after = get_json(stack, &ns, "future").await;
    assert_eq!(after["status"]["phase"], "Complete");
    assert_eq!(after["status"]["conditions"].as_array().unwrap().len(), 2);
    assert_eq!(after["status"]["someStatusField"], json!({"kept": true}));
    assert_eq!(after["spec"]["someFutureField"]["enabled"], true);
}

#[tokio::test]
async fn status_writer_does_not_write_when_nothing_changed() {
    let stack = Stack::get();
    let ns = stack.unique_namespace("bk-noop").await;
    let api: Api<Backup> = Api::namespaced(stack.kube_client().await, &ns);
    let backup: Backup = serde_json::from_value(valid_backup(&ns, "noop")).unwrap();
    let backup = api.create(&PostParams::default(), &backup).await.expect("create");
    let writer = StatusWriter::new();
    let backup = writer
        .update(&api, &backup, |owned| {
            set_condition(&mut owned.status, NewCondition::truthy(ConditionType::Scheduled), &now());
        })
        .await
        .expect("first update");
    let rv = backup.metadata.resource_version.clone().expect("resourceVersion");

    // Nothing at all, then the same condition again (set_condition leaves its time alone).
    let same = writer.update(&api, &backup, |_| {}).await.expect("no-op update");
    assert_eq!(same.metadata.resource_version.as_deref(), Some(rv.as_str()));
    let same = writer
        .update(&api, &backup, |owned| {
            set_condition(&mut owned.status, NewCondition::truthy(ConditionType::Scheduled), &now());
        })
        .await
        .expect("same-condition update");
    assert_eq!(same.metadata.resource_version.as_deref(), Some(rv.as_str()));
    let stored = api.get("noop").await.unwrap();
    assert_eq!(stored.metadata.resource_version.as_deref(), Some(rv.as_str()), "nothing was written");
}

#[tokio::test]
async fn status_writer_rereads_after_a_concurrent_change() {
    let stack = Stack::get();
    let ns = stack.unique_namespace("bk-conflict").await;
    let client = stack.kube_client().await;
    let api: Api<Backup> = Api::namespaced(client.clone(), &ns);
    let backup: Backup = serde_json::from_value(valid_backup(&ns, "conflict")).unwrap();
    let stale = api.create(&PostParams::default(), &backup).await.expect("create");

    // Someone else writes in between: our copy is now stale.
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client, &ns, &backup_resource());
    dynamic
        .patch(
            "conflict",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"other/writer": "was-here"}},
                                 "status": {"commitTs": "123"}})),
        )
        .await
        .expect("concurrent write");

    let stored = StatusWriter::new()
        .update(&api, &stale, |owned| {
            set_condition(&mut owned.status, NewCondition::truthy(ConditionType::Running), &now());
        })
        .await
        .expect("update from a stale copy");
    assert_eq!(stored.phase(), Some(&ConditionType::Running));
    let after = get_json(stack, &ns, "conflict").await;
    assert_eq!(after["metadata"]["annotations"]["other/writer"], "was-here");
    assert_eq!(after["status"]["commitTs"], "123", "the other writer's status survives");
    assert_eq!(after["status"]["phase"], "Running");
}

/// The operator stamps conditions with `Time(Timestamp::now())`, which has sub-second digits the
/// apiserver drops when it stores the object. Such a write must still succeed on TiDB Operator's CRD,
/// which has no status subresource, and land in the stored object.
#[tokio::test]
async fn status_writer_accepts_sub_second_condition_times() {
    let stack = Stack::get();
    let ns = stack.unique_namespace("bk-subsecond").await;
    let api: Api<Backup> = Api::namespaced(stack.kube_client().await, &ns);
    let backup: Backup = serde_json::from_value(valid_backup(&ns, "subsecond")).unwrap();
    let backup = api.create(&PostParams::default(), &backup).await.expect("create");
    let precise = Time(jiff::Timestamp::now());
    let stored = StatusWriter::new()
        .update(&api, &backup, |owned| {
            set_condition(&mut owned.status, NewCondition::truthy(ConditionType::Running), &precise);
        })
        .await
        .expect("StatusWriter::update with a sub-second condition time");
    assert_eq!(stored.phase(), Some(&ConditionType::Running));
    let after = get_json(stack, &ns, "subsecond").await;
    assert_eq!(after["status"]["phase"], "Running", "{after}");
    assert_eq!(after["status"]["conditions"][0]["type"], "Running");
}
