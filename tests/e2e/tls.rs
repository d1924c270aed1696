//! A TidbCluster with `spec.tlsCluster.enabled`: the operator reaches PD over TLS with the
//! `<cluster>-cluster-client-secret` certificates, and says clearly when that Secret is missing.

use std::path::Path;
use std::time::Duration;

use crate::support::e2e::{Operator, Scene, settings};
use crate::support::{Stack, free_port, shared};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use tidb_ebs_backup::api::ConditionType;
use tidb_ebs_backup::api::tidbcluster::tidbcluster_resource;

/// Starts a PD (and its fake TiKV) serving TLS only; returns the stack pointing at it and its cert dir.
async fn stack_with_tls_pd(dir: &Path) -> &'static Stack {
    let base = Stack::get();
    let certs = dir.join("certs");
    let status = tokio::process::Command::new("tests/harness/pd/gen-certs").arg(&certs).status().await.unwrap();
    assert!(status.success(), "gen-certs");
    let output = tokio::process::Command::new("tests/harness/pd/start")
        .arg(dir)
        .args([free_port(), free_port(), free_port()].map(|p| p.to_string()))
        .arg("--tls")
        .arg(&certs)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "starting a TLS PD: {}{}", stdout, String::from_utf8_lossy(&output.stderr));
    let value = |key: &str| stdout.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap().to_string();
    let mut stack = base.clone();
    stack.pd_url = value("PD_URL");
    stack.fake_tikv_control = value("FAKE_TIKV_URL");
    assert!(stack.pd_url.starts_with("https://"), "{}", stack.pd_url);
    Box::leak(Box::new(stack))
}

async fn client_secret(scene: &Scene, certs: &Path) {
    let read = |f: &str| String::from_utf8(std::fs::read(certs.join(f)).unwrap()).unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "basic-cluster-client-secret"},
        "stringData": {"ca.crt": read("ca.pem"), "tls.crt": read("client.pem"), "tls.key": read("client-key.pem")},
    }))
    .unwrap();
    Api::<Secret>::namespaced(scene.client.clone(), &scene.namespace).create(&PostParams::default(), &secret).await.unwrap();
}

#[tokio::test]
async fn a_tls_cluster_is_backed_up_through_its_client_certificate() {
    // Its own PD, but its CreateSnapshots calls would take faults other tests inject for theirs.
    let _stack = shared().await;
    let dir = tempdir("tls-pd");
    let stack = stack_with_tls_pd(&dir).await;
    let scene = Scene::new_on(stack, "tls", 2, 1).await;
    let clusters: Api<DynamicObject> = Api::namespaced_with(scene.client.clone(), &scene.namespace, &tidbcluster_resource());
    clusters.patch("basic", &PatchParams::default(), &Patch::Merge(json!({"spec": {"tlsCluster": {"enabled": true}}}))).await.unwrap();
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let operator = Operator::start(stack, &scene.namespace, settings(stack)).await;

    scene.apply(&scene.backup_yaml("no-cert", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let failed = scene.wait_phase("no-cert", &[ConditionType::Failed, ConditionType::Complete], Duration::from_secs(60)).await;
    let condition = failed.status.unwrap().conditions.into_iter().find(|c| c.type_ == ConditionType::Failed).expect("Failed");
    assert_eq!(condition.reason.as_deref(), Some("PDTLSSecretNotFound"));
    assert!(condition.message.unwrap().contains("basic-cluster-client-secret"));

    client_secret(&scene, &dir.join("certs")).await;
    scene.apply(&scene.backup_yaml("with-cert", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let done = scene.wait_phase("with-cert", &[ConditionType::Failed, ConditionType::Complete], Duration::from_secs(90)).await;
    assert_eq!(done.phase(), Some(&ConditionType::Complete), "{:#?}", done.status);
    operator.stop().await;
    let _ = tokio::process::Command::new("tests/harness/pd/stop").arg(&dir).status().await;
}

fn tempdir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
