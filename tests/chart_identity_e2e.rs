//! The operator binary running as the Helm chart's ServiceAccount (a TokenRequest token, not admin)
//! completes a backup; `/readyz` stays false until it leads and its watch has synced, and `/metrics`
//! shows the backup it ran.

mod support;

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::e2e::{Scene, pd_exclusive};
use support::{describe_output, eventually, free_port, http};
use tidb_ebs_backup::api::ConditionType;

async fn status_of(url: &str) -> Option<u16> {
    http().get(url).send().await.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn the_chart_identity_is_enough_to_run_a_backup() {
    let _pd = pd_exclusive().await;
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
    let accounts: Api<ServiceAccount> = Api::namespaced(scene.client.clone(), &operator_ns);
    let request = TokenRequest { spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(3600), ..Default::default() }, ..Default::default() };
    let token = accounts.create_token_request(&fullname, &PostParams::default(), &request).await.unwrap().status.unwrap().token;
    let kubeconfig = stack.workdir.join(format!("{release}.kubeconfig"));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: sa}}\ncurrent-context: c\n",
            stack.kube_apiserver,
            stack.kube_pki.join("ca.crt").display()
        ),
    )
    .unwrap();

    // Someone else holds the Lease for a few seconds: until then this replica must not report ready.
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), &operator_ns);
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": fullname}, "spec": {
        "holderIdentity": "someone-else", "leaseDurationSeconds": 15, "renewTime": MicroTime(jiff::Timestamp::now())}}))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();

    let port = free_port();
    let log = std::fs::File::create(stack.workdir.join(format!("{release}.log"))).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidb-ebs-backup"))
        .args(["--namespace", &scene.namespace, "--lease-namespace", &operator_ns, "--lease-name", &fullname, "--identity", "chart-sa"])
        .args(["--pd-url-template", &stack.pd_url, "--poll-interval-seconds", "1", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", &kubeconfig)
        .env("AWS_ENDPOINT_URL", &stack.aws_endpoint_url)
        .env("AWS_ACCESS_KEY_ID", &stack.aws_access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &stack.aws_secret_access_key)
        .env("AWS_REGION", &stack.aws_region)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
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
