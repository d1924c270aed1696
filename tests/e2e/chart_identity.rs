//! The operator binary running as the Helm chart's ServiceAccount (a TokenRequest token, not admin)
//! completes a backup; `/readyz` stays false until it leads and its watch has synced, and `/metrics`
//! shows the backup it ran.

use std::time::Duration;

use crate::support::e2e::{Scene, spawn_operator_binary};
use crate::support::{describe_output, eventually, exclusive, free_port, http};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use serde_json::json;
use tidb_ebs_backup::api::ConditionType;

async fn status_of(url: &str) -> Option<u16> {
    http().get(url).send().await.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn the_chart_identity_is_enough_to_run_a_backup() {
    let _stack = exclusive().await;
    let scene = Scene::new("chart-sa", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let stack = scene.stack;
    let operator_ns = stack.unique_namespace("chart-op").await;
    let release = format!("r{}", &operator_ns[operator_ns.len() - 8..]);
    let fullname = format!("{release}-tidb-ebs-backup");
    let out = stack
        .helm(["install", &release, "manifests/tidb-ebs-backup", "--namespace", &operator_ns, "--set", "image.repository=example.invalid/op"])
        .await;
    assert!(out.status.success(), "helm install: {}", describe_output(&out));

    // A token for the chart's ServiceAccount, as the kubelet would mount it.
    let token = stack.service_account_token(&operator_ns, &fullname).await;
    let (kubeconfig, _) = stack.token_kubeconfig(&release, &token).await;

    // Someone else holds the Lease for a few seconds: until then this replica must not report ready.
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), &operator_ns);
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": fullname}, "spec": {
        "holderIdentity": "someone-else", "leaseDurationSeconds": 15, "renewTime": MicroTime(jiff::Timestamp::now())}}))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();

    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let args = ["--namespace", &scene.namespace, "--lease-namespace", &operator_ns, "--lease-name", &fullname, "--identity", "chart-sa"];
    let more = ["--pd-url-template", &stack.pd_url, "--poll-interval-seconds", "1", "--metrics-addr", &metrics_addr];
    let mut child = spawn_operator_binary(stack, &kubeconfig, &release, &[&args[..], &more[..]].concat());
    let base = format!("http://127.0.0.1:{port}");
    eventually("/healthz", Duration::from_secs(30), || async { (status_of(&format!("{base}/healthz")).await == Some(200)).then_some(()) }).await;
    assert_eq!(status_of(&format!("{base}/readyz")).await, Some(503), "not ready while another replica holds the Lease");
    eventually("/readyz after taking the Lease", Duration::from_secs(60), || async {
        (status_of(&format!("{base}/readyz")).await == Some(200)).then_some(())
    })
    .await;

    scene.apply(&scene.backup_yaml("as-chart", json!({"cleanPolicy": "Delete", "s3": {"secretName": "keys"}}), json!({}))).await;
    let done = scene.wait_phase("as-chart", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(90)).await;
    assert_eq!(done.phase(), Some(&ConditionType::Complete), "{:#?}", done.status);
    // The operator counts a finished backup right after the status patch that shows it, so poll.
    let metrics_url = format!("{base}/metrics");
    let metrics = eventually("/metrics to count the finished backup", Duration::from_secs(10), || async {
        let text = http().get(&metrics_url).send().await.ok()?.text().await.ok()?;
        text.contains("tidb_ebs_backup_backups_finished_total{result=\"complete\"} 1").then_some(text)
    })
    .await;
    assert!(metrics.contains("tidb_ebs_backup_pause_window_seconds_count 1"), "{metrics}");
    assert!(metrics.contains("tidb_ebs_backup_backup_duration_seconds_count 1"), "{metrics}");

    // Deletion under the chart identity too: the finalizer is released and the data removed.
    let out = stack.kubectl(["delete", "bk", "as-chart", "-n", &scene.namespace, "--timeout=60s"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(scene.snapshots_tagged(done.metadata.uid.as_deref().unwrap()).await.is_empty());
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let out = stack.helm(["uninstall", &release, "--namespace", &operator_ns]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
}
