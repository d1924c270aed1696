//! Where the Backup CRD has a status subresource (a CRD that is not TiDB Operator's), the operator still
//! works: it notices that the API server dropped the status of a main-resource patch and writes status
//! through `/status` from then on. A CRD is cluster-wide, so this runs on a second, independent cluster: a
//! kube-apiserver of its own on the stack's etcd under another key prefix, sharing PD and the AWS emulator.

use std::time::Duration;

use crate::support::e2e::{Operator, Scene, settings};
use crate::support::rbac::{case_selector, chart_rules, identity, labelled, without};
use crate::support::{Stack, describe_output, eventually, exclusive};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use tidb_ebs_backup::api::{BACKUP_PROTECTION_FINALIZER, Backup, ConditionType};

/// A second cluster; its kube-apiserver stops when this is dropped.
struct SecondCluster {
    stack: &'static Stack,
    name: String,
    pid: u32,
}

impl SecondCluster {
    async fn start(name: &str) -> SecondCluster {
        let stack = Stack::get();
        let etcd = stack.vars.get("ETCD_URL").expect("ETCD_URL in the env file (tests/harness/up writes it)");
        let prefix = format!("/{name}-{}", uuid::Uuid::new_v4().simple());
        let out = tokio::process::Command::new("tests/harness/lib/start-apiserver")
            .args([stack.workdir.to_str().unwrap(), &format!("kube-apiserver-{name}"), etcd, &prefix])
            .env("K8S_BIN", stack.vars.get("K8S_BIN").expect("K8S_BIN in the env file"))
            .output()
            .await
            .expect("start-apiserver");
        assert!(out.status.success(), "start-apiserver: {}", describe_output(&out));
        let pid: u32 = std::fs::read_to_string(stack.workdir.join(format!("kube-apiserver-{name}.pid"))).unwrap().trim().parse().unwrap();
        let mut second = stack.clone();
        second.kube_apiserver = String::from_utf8_lossy(&out.stdout).trim().to_string();
        second.kubeconfig = stack.workdir.join(format!("kube-apiserver-{name}.kubeconfig"));
        second.vars.insert("KUBECONFIG".into(), second.kubeconfig.display().to_string());
        SecondCluster { stack: Box::leak(Box::new(second)), name: format!("kube-apiserver-{name}"), pid }
    }
}

impl Drop for SecondCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg(self.pid.to_string()).status();
        let _ = std::fs::remove_file(self.stack.workdir.join(format!("{}.pid", self.name)));
    }
}

/// This project's Backup CRD with a status subresource added to every version.
fn crd_with_status_subresource() -> String {
    let text = std::fs::read_to_string("crds/backup.yaml").unwrap();
    let mut crd: Value = serde_norway::from_str(&text).unwrap();
    for version in crd["spec"]["versions"].as_array_mut().unwrap() {
        version["subresources"] = json!({"status": {}});
    }
    crd.to_string()
}

#[tokio::test]
async fn a_crd_with_a_status_subresource_gets_status_through_it() {
    let _stack = exclusive().await;
    let cluster = SecondCluster::start("status-subresource").await;
    let stack = cluster.stack;
    let out = stack.kubectl(["apply", "-f", "tests/harness/fixtures/tidbcluster-crd.yaml"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let out = stack.kubectl_with_stdin(["apply", "-f", "-"], Some(&crd_with_status_subresource())).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let out = stack
        .kubectl(["wait", "--for", "condition=established", "--timeout=60s", "crd/backups.pingcap.com", "crd/tidbclusters.pingcap.com"])
        .await;
    assert!(out.status.success(), "{}", describe_output(&out));

    let scene = Scene::new_on(stack, "status-sub", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    // The operator runs as the Helm chart's ClusterRole grants, here where its `backups/status` rule matters.
    let operator_ns = stack.unique_namespace("status-sub-op").await;
    let (rules, lease_rules) = chart_rules(stack).await;
    let (_, client) = identity(&scene, &operator_ns, "chart", rules.clone(), lease_rules).await;
    let chart_settings = tidb_ebs_backup::backup::Settings { claim_namespace: operator_ns.clone(), ..settings(stack) };
    let operator = Operator::start_as(stack, client, &scene.namespace, chart_settings, Some(&case_selector("chart"))).await;
    let backup =
        |name: &str, case: &str| labelled(scene.backup_yaml(name, json!({"cleanPolicy": "Delete", "s3": {"secretName": "keys"}}), json!({})), case);
    scene.apply(&backup("sub1", "chart")).await;
    let done = scene.wait_phase("sub1", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(90)).await;
    assert_eq!(done.phase(), Some(&ConditionType::Complete), "{:#?}", done.status);
    let status = done.status.clone().unwrap();
    assert!(status.backup_path.is_some() && status.commit_ts.is_some() && status.time_taken.is_some(), "{status:#?}");
    assert!(done.metadata.finalizers.iter().flatten().any(|f| f == BACKUP_PROTECTION_FINALIZER), "finalizers still go through the main resource");
    assert!(done.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("tidb-ebs-backup/record")), "the record too");

    // The setup is what it claims: this API server ignores status in a main-resource patch.
    let api: Api<Backup> = scene.api();
    let patched = api.patch("sub1", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Failed"}}))).await.unwrap();
    assert_eq!(patched.phase(), Some(&ConditionType::Complete), "status is owned by /status here");

    // Clean-up (status conditions plus the finalizer) works the same way.
    let uid = done.metadata.uid.clone().unwrap();
    api.delete("sub1", &DeleteParams::default()).await.unwrap();
    eventually("sub1 to be cleaned and gone", Duration::from_secs(60), || async { matches!(api.get_opt("sub1").await, Ok(None)).then_some(()) })
        .await;
    assert!(scene.snapshots_tagged(&uid).await.is_empty(), "its snapshots deleted");
    assert!(scene.object("sub1/backupmeta").await.is_none(), "its backupmeta deleted");
    operator.stop().await;

    // Without the chart's `backups/status` rule nothing can be recorded, so nothing is started.
    let (_, client) = identity(&scene, &operator_ns, "no-status", without(&rules, "backups/status:patch"), vec![]).await;
    let operator = Operator::start_as(stack, client, &scene.namespace, settings(stack), Some(&case_selector("no-status"))).await;
    scene.apply(&backup("sub2", "no-status")).await;
    operator.wait_for_metric("tidb_ebs_backup_reconcile_errors_total{reason=\"StatusWriteFailed\"}").await;
    let untouched = api.get("sub2").await.unwrap();
    assert!(untouched.status.is_none(), "{:#?}", untouched.status);
    assert!(scene.snapshots_tagged(untouched.metadata.uid.as_deref().unwrap()).await.is_empty());
    operator.stop().await;
}
