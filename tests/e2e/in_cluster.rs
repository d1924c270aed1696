//! The operator as its users run it: the project's image, installed with the Helm chart into the node
//! cluster (`tests/harness/up --node`), running as a Pod under a real kubelet, talking to PD and the AWS
//! emulator from inside the pod. One story, in the order a user lives it: install → the seed's
//! `backup-aws-s3.yaml` → IRSA → two replicas and the leader deleted mid-backup → uninstall.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::e2e::{Scene, assert_pd_unchanged, pd_state, settled_pd_state};
use crate::support::node::NodeCluster;
use crate::support::{Stack, TidbClusterFixture, describe_output, eventually, exclusive, jwt_claims, shared};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use tidb_ebs_backup::api::{Backup, ConditionType};

const IMAGE_REPOSITORY: &str = "localhost/tidb-ebs-backup";
const IMAGE_TAG: &str = "e2e";
/// The seed manifest's namespace, cluster, bucket and Secret.
const SEED_NAMESPACE: &str = "tidb-cluster";
const SEED_BACKUP: &str = "demo1-backup-s3";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/tidb-ebs-backup-operator";

/// Builds the image from the binary cargo built for these tests and puts it into the node's containerd.
async fn build_and_import_image(node: &NodeCluster) {
    let archive = node.stack.workdir.join("operator-image.oci.tar");
    let started = Instant::now();
    let out = tokio::process::Command::new("scripts/image")
        .args(["--binary", env!("CARGO_BIN_EXE_tidb-ebs-backup"), "--tag", &format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}"), "--out"])
        .arg(&archive)
        .output()
        .await
        .expect("running scripts/image");
    assert!(out.status.success(), "scripts/image: {}", describe_output(&out));
    println!("in-cluster: image built in {:.1}s; {}", started.elapsed().as_secs_f64(), String::from_utf8_lossy(&out.stderr).trim());
    node.import_image(&archive).await;
}

/// The seed manifest's world in the node cluster: namespace `tidb-cluster` with TidbCluster `basic`
/// (its TiKV stores in the stack's PD, its volumes in the AWS emulator), Secret `s3-secret`, bucket `my-bucket`.
async fn seed_world(node: &NodeCluster) -> Scene {
    let stack = node.stack;
    let out = stack.kubectl(["apply", "-f", "tests/harness/fixtures/tidbcluster-crd.yaml"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let client = stack.kube_client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // A rerun on the same stack starts from a fresh namespace.
    if namespaces.get_opt(SEED_NAMESPACE).await.unwrap().is_some() {
        let _ = namespaces.delete(SEED_NAMESPACE, &DeleteParams::default()).await;
        eventually("the previous run's namespace to be gone", Duration::from_secs(120), || async {
            namespaces.get_opt(SEED_NAMESPACE).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    stack.ensure_namespace(SEED_NAMESPACE).await;
    // With ServiceAccount admission on, a pod is refused until the namespace's `default` account exists.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), SEED_NAMESPACE);
    eventually("the namespace's default ServiceAccount", Duration::from_secs(60), || async {
        accounts.get_opt("default").await.ok().flatten().map(|_| ())
    })
    .await;
    let cluster = TidbClusterFixture::create(stack, SEED_NAMESPACE, "basic", 3, 1).await;
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s3-secret"}, "stringData": {"access_key": "a", "secret_key": "b"}})).unwrap();
    Api::<Secret>::namespaced(client.clone(), SEED_NAMESPACE).create(&PostParams::default(), &secret).await.unwrap();
    stack.create_bucket("my-bucket").await;
    Scene { stack, namespace: SEED_NAMESPACE.into(), cluster, bucket: "my-bucket".into(), client }
}

/// `helm install` (or `upgrade`) of the chart with the image, pointed at the node's view of PD and AWS.
async fn helm(node: &NodeCluster, verb: &str, release: &str, namespace: &str, set: &[&str]) {
    let base = [
        format!("image.repository={IMAGE_REPOSITORY}"),
        format!("image.tag={IMAGE_TAG}"),
        "image.pullPolicy=Never".into(),
        format!("aws.endpointUrl={}", node.aws_endpoint_url),
        format!("aws.region={}", node.stack.aws_region),
        format!("pdUrlTemplate={}", node.pd_url),
        "pollIntervalSeconds=1".into(),
        "pauseTtlSeconds=30".into(),
        "leaderElection.leaseDurationSeconds=8".into(),
        "extraEnv[0].name=TIKV_DIAL_ADDRESS".into(),
        format!("extraEnv[0].value={}", node.tikv_dial_address),
        // The fixture's Nodes have no kubelet: the operator goes where one runs.
        format!("nodeSelector.kubernetes\\.io/hostname={}", node.node_name),
    ];
    let mut args: Vec<String> = vec![verb.into(), release.into(), "manifests/tidb-ebs-backup".into(), "--namespace".into(), namespace.into()];
    for value in base.iter().map(String::as_str).chain(set.iter().copied()) {
        args.extend(["--set".into(), value.to_string()]);
    }
    let out = node.stack.helm(&args).await;
    assert!(out.status.success(), "helm {verb}: {}", describe_output(&out));
}

/// The operator's pods that are not being deleted, by name.
async fn operator_pods(pods: &Api<Pod>, release: &str) -> BTreeMap<String, Pod> {
    let selector = format!("app.kubernetes.io/instance={release}");
    let list = pods.list(&ListParams::default().labels(&selector)).await.unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.metadata.name.clone().unwrap(), p))
        .collect()
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until `count` pods run and exactly one of them is Ready (the Lease holder); returns its name.
async fn one_ready_of(pods: &Api<Pod>, release: &str, count: usize, timeout: Duration) -> String {
    eventually(&format!("{count} operator pods, one Ready"), timeout, || async {
        let now = operator_pods(pods, release).await;
        let running = now.values().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count();
        let ready: Vec<&String> = now.iter().filter(|(_, p)| ready(p)).map(|(n, _)| n).collect();
        (now.len() == count && running == count && ready.len() == 1).then(|| ready[0].clone())
    })
    .await
}

async fn lease_holder(client: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    leases.get_opt(name).await.ok().flatten()?.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// The operator's process as the kernel sees it (found by its cgroup under the kubelet's pods): user,
/// capabilities and whether its root filesystem is read-only.
fn container_process_facts() -> Vec<(u32, String, bool)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
        if !read("cmdline").starts_with("/usr/local/bin/tidb-ebs-backup") || !read("cgroup").contains("kubepods") {
            continue;
        }
        let status = read("status");
        let field =
            |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_default().split_whitespace().next().unwrap_or_default().to_string();
        let uid: u32 = field("Uid:").parse().unwrap_or(u32::MAX);
        let root_read_only = read("mountinfo").lines().any(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(4) == Some(&"/") && fields.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
        });
        found.push((uid, field("CapEff:"), root_read_only));
    }
    found
}

/// The seed manifest with another name, prefix and (optionally) no Secret.
fn seed_variant(name: &str, secret: bool) -> Value {
    let text = std::fs::read_to_string("manifests/backup/backup-aws-s3.yaml").unwrap();
    let mut backup: Value = serde_norway::from_str(&text).unwrap();
    backup["metadata"]["name"] = json!(name);
    backup["spec"]["s3"]["prefix"] = json!(name);
    if !secret {
        backup["spec"]["s3"].as_object_mut().unwrap().remove("secretName");
    }
    backup
}

#[tokio::test]
async fn the_chart_runs_the_operator_as_a_pod_that_backs_up_uses_irsa_hands_over_and_uninstalls() {
    let node = NodeCluster::get();
    let stack: &'static Stack = node.stack;
    build_and_import_image(node).await;
    let scene = {
        let _registering_stores = shared().await;
        seed_world(node).await
    };
    let client = scene.client.clone();
    let operator_ns = stack.unique_namespace("in-cluster-op").await;
    let release = "ebs";
    let fullname = format!("{release}-tidb-ebs-backup");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &operator_ns);

    // helm install → the pod is Ready (it leads and its watch has synced).
    let installed = Instant::now();
    helm(node, "install", release, &operator_ns, &[]).await;
    let leader = one_ready_of(&pods, release, 1, Duration::from_secs(120)).await;
    println!("in-cluster: helm install → pod Ready in {:.1}s", installed.elapsed().as_secs_f64());
    assert_eq!(lease_holder(&client, &operator_ns, &fullname).await.as_deref(), Some(leader.as_str()), "POD_NAME is the Lease identity");
    let pod = pods.get(&leader).await.unwrap();
    assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(node.node_name.as_str()), "scheduled onto the kubelet's node");
    let facts = container_process_facts();
    assert!(!facts.is_empty(), "the operator's process runs under the kubelet's cgroups");
    for (uid, caps, root_ro) in &facts {
        assert_eq!(*uid, 65532, "non-root: {facts:?}");
        assert_eq!(caps.trim_start_matches('0'), "", "no capabilities: {facts:?}");
        assert!(*root_ro, "read-only root filesystem: {facts:?}");
    }

    // The seed's backup-aws-s3.yaml, as the README has users apply it.
    {
        let _pd = exclusive().await;
        let before = settled_pd_state(stack).await;
        let applied = Instant::now();
        let out = stack.kubectl(["apply", "-f", "manifests/backup/backup-aws-s3.yaml"]).await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let done = scene.wait_phase(SEED_BACKUP, &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(120)).await;
        assert_eq!(done.phase(), Some(&ConditionType::Complete), "{:#?}", done.status);
        println!("in-cluster: apply → Complete in {:.1}s, from the pod", applied.elapsed().as_secs_f64());
        assert_eq!(scene.snapshots_tagged(done.metadata.uid.as_deref().unwrap()).await.len(), 3, "one snapshot per TiKV volume");
        assert!(scene.object("my-folder/backupmeta").await.is_some(), "backupmeta written from the pod");
        assert_pd_unchanged(&pd_state(stack).await, &before);
    }

    // IRSA: the chart's ServiceAccount with a role and its projected web-identity token, as EKS's webhook sets them.
    helm(node, "upgrade", release, &operator_ns, &[&format!("serviceAccount.roleArn={ROLE_ARN}"), "serviceAccount.projectWebIdentityToken=true"])
        .await;
    eventually("the upgraded pod to be the only one, and Ready", Duration::from_secs(120), || async {
        let now = operator_pods(&pods, release).await;
        let upgraded = now.values().all(|p| p.spec.as_ref().is_some_and(|s| s.volumes.iter().flatten().any(|v| v.name == "aws-iam-token")));
        (now.len() == 1 && upgraded && now.values().all(ready)).then_some(())
    })
    .await;
    {
        let _pd = exclusive().await;
        let before = settled_pd_state(stack).await;
        let since = crate::support::Emulator::now();
        scene.apply(&seed_variant("irsa", false)).await;
        let done = scene.wait_phase("irsa", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(120)).await;
        assert_eq!(done.phase(), Some(&ConditionType::Complete), "{:#?}", done.status);
        let exchanges = stack.emulator().requests_since("AssumeRoleWithWebIdentity", since).await;
        let exchange = exchanges.iter().find(|r| r["role_arn"] == ROLE_ARN).unwrap_or_else(|| panic!("an exchange for {ROLE_ARN}: {exchanges:#?}"));
        let claims = jwt_claims(exchange["web_identity_token"].as_str().expect("the token in the request log"));
        assert_eq!(claims["sub"], format!("system:serviceaccount:{operator_ns}:{fullname}"), "the pod's own ServiceAccount token");
        assert!(claims["aud"].to_string().contains("sts.amazonaws.com"), "{claims}");
        let calls = stack.emulator().requests_since("CreateSnapshots", since).await;
        assert!(
            !calls.is_empty() && calls.iter().all(|c| c["access_key"].as_str().is_some_and(|k| k.starts_with("ASIA"))),
            "with the role's temporary credentials: {calls:#?}"
        );
        assert_pd_unchanged(&pd_state(stack).await, &before);
    }

    // Two replicas: one leads; the leader deleted while CreateSnapshots calls are in flight → the other finishes.
    helm(node, "upgrade", release, &operator_ns, &["replicaCount=2", "serviceAccount.projectWebIdentityToken=false", "serviceAccount.roleArn="])
        .await;
    let leader = one_ready_of(&pods, release, 2, Duration::from_secs(120)).await;
    {
        let _pd = exclusive().await;
        let before = settled_pd_state(stack).await;
        let emulator = stack.emulator();
        emulator.add_fault(json!({"action": "CreateSnapshots", "delay_ms": 3000})).await;
        scene.apply(&seed_variant("handover", true)).await;
        scene.wait_for_calls_in_flight("handover").await;
        pods.delete(&leader, &DeleteParams::default()).await.unwrap();
        let successor = eventually("the standby to take the Lease", Duration::from_secs(60), || async {
            lease_holder(&client, &operator_ns, &fullname).await.filter(|h| *h != leader)
        })
        .await;
        let done = scene.wait_phase("handover", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(180)).await;
        emulator.clear_faults().await;
        assert_eq!(done.phase(), Some(&ConditionType::Complete), "{:#?}", done.status);
        let snapshots = scene.snapshots_tagged(done.metadata.uid.as_deref().unwrap()).await;
        let mut per_volume: BTreeMap<String, usize> = BTreeMap::new();
        for s in &snapshots {
            *per_volume.entry(s.volume_id().unwrap_or_default().to_string()).or_default() += 1;
        }
        assert_eq!(per_volume.len(), 3, "every volume snapshotted: {per_volume:?}");
        assert!(per_volume.values().all(|n| *n == 1), "one snapshot set per instance: {per_volume:?}");
        assert!(operator_pods(&pods, release).await.contains_key(&successor), "{successor} finished it");
        assert_pd_unchanged(&pd_state(stack).await, &before);
    }

    // helm uninstall: the pods go; the CRD and the Backups stay (Helm never deletes crds/).
    let out = stack.helm(["uninstall", release, "--namespace", &operator_ns]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    eventually("the operator's pods to be gone", Duration::from_secs(90), || async {
        pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
            .await
            .unwrap()
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let backups: Api<Backup> = scene.api();
    let names: Vec<String> = backups.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|b| b.metadata.name).collect();
    assert_eq!(names.len(), 3, "the Backups stay after uninstall: {names:?}");
    let out = stack.kubectl(["get", "crd", "backups.pingcap.com"]).await;
    assert!(out.status.success(), "the CRD stays: {}", describe_output(&out));
}
