//! The Helm chart (`manifests/tidb-ebs-backup`): it lints, installs into a namespace next to an existing
//! Backup CRD without touching it, uninstalls cleanly, and its RBAC grants exactly the Kubernetes
//! calls the operator makes, leader election included (checked with `kubectl auth can-i` impersonating the
//! chart's ServiceAccount).
//! No kubelet runs, so the operator pod never starts; only the objects are checked. Needs HARNESS_ENV
//! (see `support`).

use std::path::PathBuf;
use std::time::Duration;

use crate::support::{Stack, describe_output, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/tidb-ebs-backup-test";

fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/tidb-ebs-backup")
}

fn chart() -> String {
    chart_dir().display().to_string()
}

/// A release name unique to this test's namespace (`<prefix>-<8 hex>` → `r<8 hex>`), so the
/// cluster-scoped ClusterRole and ClusterRoleBinding of parallel installs never clash.
fn release_for(namespace: &str) -> String {
    format!("r{}", namespace.rsplit('-').next().unwrap())
}

/// Objects of a release are named `<release>-tidb-ebs-backup`.
fn fullname(release: &str) -> String {
    format!("{release}-tidb-ebs-backup")
}

async fn install(stack: &Stack, namespace: &str, release: &str, extra: &[&str]) {
    let chart = chart();
    let mut args = vec![
        "install",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
        "--set",
        "image.repository=example.invalid/tidb-ebs-backup",
        "--set",
        "image.tag=test",
        "--set",
        "aws.region=us-west-2",
        "--set",
        "aws.endpointUrlEc2=http://ec2.example.invalid",
    ];
    let role = format!("serviceAccount.roleArn={ROLE_ARN}");
    args.extend(["--set", role.as_str()]);
    args.extend_from_slice(extra);
    let out = stack.helm(&args).await;
    assert!(out.status.success(), "helm install: {}", describe_output(&out));
}

async fn uninstall(stack: &Stack, namespace: &str, release: &str) {
    let out = stack.helm(["uninstall", release, "--namespace", namespace]).await;
    assert!(out.status.success(), "helm uninstall: {}", describe_output(&out));
}

async fn backup_crd_version(stack: &Stack) -> String {
    let crds: Api<CustomResourceDefinition> = Api::all(stack.kube_client().await);
    let crd = crds.get("backups.pingcap.com").await.expect("the harness installs the Backup CRD");
    crd.metadata.resource_version.expect("resourceVersion")
}

// ---- chart files ---------------------------------------------------------------------------------

#[tokio::test]
async fn chart_lints_with_default_and_optional_values() {
    let stack = Stack::get();
    let chart = chart();
    for extra in [
        &[][..],
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "irsaPerBackup.enabled=false",
            "--set",
            "watchNamespace=x",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict"];
        args.extend_from_slice(extra);
        args.push(&chart);
        let out = stack.helm(&args).await;
        assert!(out.status.success(), "helm lint {extra:?}: {}", describe_output(&out));
    }
}

#[tokio::test]
async fn chart_crds_are_the_repository_crds() {
    for file in ["crds/backup.yaml", "crds/backupschedule.yaml"] {
        let chart_copy = std::fs::read_to_string(chart_dir().join(file)).unwrap_or_else(|e| panic!("chart {file}: {e}"));
        let source = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(chart_copy == source, "manifests/tidb-ebs-backup/{file} differs from {file}; run scripts/gen-crds");
    }
}

#[tokio::test]
async fn chart_allows_standby_replicas_only_with_leader_election_and_renders_the_monitoring_objects() {
    let stack = Stack::get();
    let chart = chart();
    let out = stack.helm(["template", "r", chart.as_str(), "--set", "replicaCount=2"]).await;
    assert!(out.status.success(), "two replicas with leader election: {}", describe_output(&out));
    let out = stack.helm(["template", "r", chart.as_str(), "--set", "replicaCount=2", "--set", "leaderElection.enabled=false"]).await;
    assert!(!out.status.success(), "two replicas without leader election must be refused: {}", describe_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("leaderElection.enabled is false"), "{}", describe_output(&out));

    let out = stack.helm(["template", "r", chart.as_str(), "--set", "serviceMonitor.enabled=true"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(rendered.contains("kind: ServiceMonitor"), "{rendered}");
    // The per-schedule series carry the BackupSchedule's `namespace`, which the scrape must keep.
    assert!(rendered.contains("honorLabels: true"), "{rendered}");
    let out = stack.helm(["template", "r", chart.as_str()]).await;
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(!rendered.contains("kind: ServiceMonitor"), "ServiceMonitor is off by default");
    assert!(!rendered.contains("kind: PrometheusRule"), "PrometheusRule is off by default");

    // The alerts' own {{ $labels }} templates come through Helm unrendered: the spec is the manifest's.
    let out = stack.helm(["template", "r", chart.as_str(), "--set", "prometheusRule.enabled=true", "-s", "templates/prometheusrule.yaml"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let rendered: serde_json::Value = serde_norway::from_slice(&out.stdout).expect("rendered PrometheusRule");
    let manifest: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/monitoring/prometheus-rule.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rendered["kind"], "PrometheusRule");
    assert!(rendered["spec"] == manifest["spec"], "the chart's PrometheusRule spec differs from manifests/monitoring/prometheus-rule.yaml");
}

#[tokio::test]
async fn chart_projects_a_web_identity_token_only_when_asked_and_only_with_a_role() {
    let stack = Stack::get();
    let chart = chart();
    let deployment = ["-s", "templates/deployment.yaml"];
    let out = stack
        .helm([&["template", "r", chart.as_str(), "--set", "serviceAccount.projectWebIdentityToken=true"][..], &deployment].concat())
        .await;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("needs serviceAccount.roleArn"), "{}", describe_output(&out));
    let role = "serviceAccount.roleArn=arn:aws:iam::1:role/r";
    let out = stack
        .helm([&["template", "r", chart.as_str(), "--set", role, "--set", "serviceAccount.projectWebIdentityToken=true"][..], &deployment].concat())
        .await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let rendered: serde_json::Value = serde_norway::from_slice(&out.stdout).expect("rendered Deployment");
    let pod = &rendered["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let value = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(value("AWS_ROLE_ARN"), Some(serde_json::json!("arn:aws:iam::1:role/r")));
    assert_eq!(value("AWS_WEB_IDENTITY_TOKEN_FILE"), Some(serde_json::json!("/var/run/secrets/eks.amazonaws.com/serviceaccount/token")));
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "aws-iam-token").expect("the token volume");
    assert_eq!(volume["projected"]["sources"][0]["serviceAccountToken"]["audience"], "sts.amazonaws.com");
    let out = stack.helm([&["template", "r", chart.as_str(), "--set", role][..], &deployment].concat()).await;
    assert!(!String::from_utf8_lossy(&out.stdout).contains("AWS_WEB_IDENTITY_TOKEN_FILE"), "off by default: EKS's webhook does it");
}

// ---- install / uninstall -------------------------------------------------------------------------

#[tokio::test]
async fn install_creates_the_operator_objects_keeps_the_crd_and_uninstall_removes_them() {
    let stack = Stack::get();
    let namespace = stack.unique_namespace("helm-install").await;
    let release = release_for(&namespace);
    let name = fullname(&release);
    let client = stack.kube_client().await;
    let crd_before = backup_crd_version(stack).await;

    install(stack, &namespace, &release, &[]).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let lease_roles: Api<Role> = Api::namespaced(client.clone(), &namespace);
    let lease_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &namespace);
    let lease_role = format!("{name}-leases");

    let deployment = deployments.get(&name).await.expect("Deployment");
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.strategy.as_ref().and_then(|s| s.type_.as_deref()), Some("Recreate"));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(name.as_str()));
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("example.invalid/tidb-ebs-backup:test"));
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
    assert_eq!(security.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"));
    let probe_path =
        |probe: &Option<k8s_openapi::api::core::v1::Probe>| probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone());
    assert_eq!(probe_path(&container.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&container.readiness_probe).as_deref(), Some("/readyz"));
    let env: std::collections::BTreeMap<String, String> = container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let from_field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| format!("fieldRef:{}", f.field_path));
            (e.name.clone(), e.value.clone().or(from_field).unwrap_or_default())
        })
        .collect();
    assert_eq!(env.get("POD_NAME").map(String::as_str), Some("fieldRef:metadata.name"));
    assert_eq!(env.get("POD_NAMESPACE").map(String::as_str), Some("fieldRef:metadata.namespace"));
    assert_eq!(env.get("LEADER_ELECTION").map(String::as_str), Some("true"));
    assert_eq!(env.get("LEASE_NAME"), Some(&name), "the Lease is named after the release");
    assert_eq!(env.get("AWS_REGION").map(String::as_str), Some("us-west-2"));
    assert_eq!(env.get("AWS_ENDPOINT_URL_EC2").map(String::as_str), Some("http://ec2.example.invalid"));
    assert_eq!(env.get("METRICS_ADDR").map(String::as_str), Some("0.0.0.0:8080"));
    assert_eq!(env.get("PD_URL_TEMPLATE").map(String::as_str), Some("http://{cluster}-pd.{namespace}:2379"));
    for unset in ["WATCH_NAMESPACE", "BACKUP_SELECTOR", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_EBS", "AWS_ENDPOINT_URL_STS"] {
        assert!(!env.contains_key(unset), "{unset} is set although its value is empty: {env:?}");
    }

    let account = accounts.get(&name).await.expect("ServiceAccount");
    assert_eq!(account.metadata.annotations.as_ref().and_then(|a| a.get("eks.amazonaws.com/role-arn")).map(String::as_str), Some(ROLE_ARN));
    let service = services.get(&name).await.expect("Service");
    let port = &service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("metrics"), 8080));
    roles.get(&name).await.expect("ClusterRole named after the release");
    let binding = bindings.get(&name).await.expect("ClusterRoleBinding named after the release");
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!((subject.name.as_str(), subject.namespace.as_deref()), (name.as_str(), Some(namespace.as_str())));
    lease_roles.get(&lease_role).await.expect("the release-namespace Lease Role");
    lease_bindings.get(&lease_role).await.expect("the release-namespace Lease RoleBinding");

    assert_eq!(backup_crd_version(stack).await, crd_before, "helm install must skip the existing Backup CRD");

    uninstall(stack, &namespace, &release).await;
    eventually("the release's objects to be gone", Duration::from_secs(30), || async {
        let gone = deployments.get_opt(&name).await.unwrap().is_none()
            && accounts.get_opt(&name).await.unwrap().is_none()
            && services.get_opt(&name).await.unwrap().is_none()
            && roles.get_opt(&name).await.unwrap().is_none()
            && bindings.get_opt(&name).await.unwrap().is_none()
            && lease_roles.get_opt(&lease_role).await.unwrap().is_none()
            && lease_bindings.get_opt(&lease_role).await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    assert_eq!(backup_crd_version(stack).await, crd_before, "helm uninstall must leave the Backup CRD alone");
}

// ---- RBAC ----------------------------------------------------------------------------------------

/// One `kubectl auth can-i` question: verb, resource (optionally `resource/name`), optional
/// subresource, namespace (None: cluster scope or all namespaces).
struct Ask {
    verb: &'static str,
    resource: String,
    subresource: Option<&'static str>,
    namespace: Option<String>,
}

fn ask(verb: &'static str, resource: &str, namespace: Option<&str>) -> Ask {
    Ask { verb, resource: resource.to_string(), subresource: None, namespace: namespace.map(str::to_string) }
}

fn ask_sub(verb: &'static str, resource: &str, subresource: &'static str, namespace: Option<&str>) -> Ask {
    Ask { subresource: Some(subresource), ..ask(verb, resource, namespace) }
}

/// Any namespace a Backup or its TidbCluster may live in (not the operator's own).
const TIDB_NS: Option<&str> = Some("tidb-somewhere");
const ALL: Option<&str> = None;

/// Every call the operator makes, with its code site.
fn needed() -> Vec<Ask> {
    vec![
        // src/backup/mod.rs run(): Controller::new(Api::all::<Backup>) lists and watches Backups.
        ask("list", "backups.pingcap.com", ALL),
        ask("watch", "backups.pingcap.com", ALL),
        ask("list", "backups.pingcap.com", TIDB_NS),
        ask("watch", "backups.pingcap.com", TIDB_NS),
        // src/k8s/status_writer.rs update() (re-read on conflict), src/backup/keeper.rs (pause refresh).
        ask("get", "backups.pingcap.com", TIDB_NS),
        // src/k8s/status_writer.rs write(): Patch::Merge of status, annotations and finalizers.
        ask("patch", "backups.pingcap.com", TIDB_NS),
        // src/k8s/status_writer.rs: patch_status where the CRD has a status subresource.
        ask_sub("patch", "backups.pingcap.com", "status", TIDB_NS),
        // src/backup/steps.rs: the TidbCluster, get_opt.
        ask("get", "tidbclusters.pingcap.com", TIDB_NS),
        // src/k8s/volumes.rs resolve_volumes(): label-selected lists.
        ask("list", "pods", TIDB_NS),
        ask("list", "persistentvolumeclaims", TIDB_NS),
        ask("list", "persistentvolumes", ALL),
        // src/k8s/identity.rs (spec.s3.secretName) and src/backup/steps.rs pd_client (<cluster>-cluster-client-secret).
        ask("get", "secrets", TIDB_NS),
        // src/k8s/identity.rs: spec.serviceAccount and its TokenRequest.
        ask("get", "serviceaccounts", TIDB_NS),
        ask_sub("create", "serviceaccounts", "token", TIDB_NS),
        // src/backup/steps.rs -> kube-runtime Recorder::publish (events.k8s.io/v1 create, or patch of a series).
        ask("create", "events.events.k8s.io", TIDB_NS),
        ask("patch", "events.events.k8s.io", TIDB_NS),
        // src/schedule/mod.rs run(): the BackupSchedule controller's watch; reconcile.rs: status and the
        // skipped-run annotation as merge patches.
        ask("list", "backupschedules.pingcap.com", ALL),
        ask("watch", "backupschedules.pingcap.com", ALL),
        ask("patch", "backupschedules.pingcap.com", TIDB_NS),
        // src/schedule/reconcile.rs: a run's Backup, and retention's deletion of one.
        ask("create", "backups.pingcap.com", TIDB_NS),
        ask("delete", "backups.pingcap.com", TIDB_NS),
    ]
}

/// src/k8s/lease.rs leader election (the release's Lease) and src/backup/claim.rs cluster claims (a Lease
/// per TidbCluster), both in the operator's namespace.
fn needed_for_the_lease(operator_ns: &str, lease: &str) -> Vec<Ask> {
    let named = format!("leases.coordination.k8s.io/{lease}");
    let claim = "leases.coordination.k8s.io/tidb-ebs-backup.tidb-somewhere.basic";
    vec![
        ask("create", "leases.coordination.k8s.io", Some(operator_ns)),
        ask("get", &named, Some(operator_ns)),
        ask("patch", &named, Some(operator_ns)),
        ask("get", claim, Some(operator_ns)),
        ask("patch", claim, Some(operator_ns)),
        ask("delete", claim, Some(operator_ns)),
    ]
}

/// Calls the operator never makes.
fn not_needed(operator_ns: &str, lease: &str) -> Vec<Ask> {
    let named = format!("leases.coordination.k8s.io/{lease}");
    vec![
        ask("update", "backups.pingcap.com", TIDB_NS),
        ask("deletecollection", "backups.pingcap.com", TIDB_NS),
        ask("get", "backupschedules.pingcap.com", TIDB_NS),
        ask("update", "backupschedules.pingcap.com", TIDB_NS),
        ask("create", "backupschedules.pingcap.com", TIDB_NS),
        ask("delete", "backupschedules.pingcap.com", TIDB_NS),
        ask_sub("update", "backups.pingcap.com", "finalizers", TIDB_NS),
        ask("get", "restores.pingcap.com", TIDB_NS),
        ask("list", "tidbclusters.pingcap.com", TIDB_NS),
        ask("update", "tidbclusters.pingcap.com", TIDB_NS),
        ask("patch", "tidbclusters.pingcap.com", TIDB_NS),
        ask("get", "pods", TIDB_NS),
        ask("watch", "pods", TIDB_NS),
        ask("create", "pods", TIDB_NS),
        ask("delete", "pods", TIDB_NS),
        ask_sub("create", "pods", "exec", TIDB_NS),
        ask("patch", "persistentvolumeclaims", TIDB_NS),
        ask("get", "persistentvolumes", ALL),
        ask("update", "persistentvolumes", ALL),
        ask("list", "secrets", TIDB_NS),
        ask("list", "secrets", ALL),
        ask("watch", "secrets", ALL),
        ask("create", "secrets", TIDB_NS),
        ask("update", "secrets", TIDB_NS),
        ask("list", "serviceaccounts", TIDB_NS),
        ask("create", "serviceaccounts", TIDB_NS),
        ask("create", "events", TIDB_NS),
        ask("delete", "events.events.k8s.io", TIDB_NS),
        ask("create", "jobs.batch", TIDB_NS),
        ask("create", "clusterrolebindings.rbac.authorization.k8s.io", ALL),
        // Leases: only in the release namespace, never updated whole, listed or watched.
        ask("update", &named, Some(operator_ns)),
        ask("list", "leases.coordination.k8s.io", Some(operator_ns)),
        ask("watch", "leases.coordination.k8s.io", Some(operator_ns)),
        ask("get", &named, TIDB_NS),
        ask("create", "leases.coordination.k8s.io", TIDB_NS),
        ask("patch", "leases.coordination.k8s.io/tidb-ebs-backup.tidb-somewhere.basic", TIDB_NS),
    ]
}

/// Whether `user` may do what `q` asks, per the apiserver (kubectl impersonates; the harness user is admin).
async fn can_i(stack: &Stack, user: &str, q: &Ask) -> bool {
    let mut args = vec!["auth".to_string(), "can-i".into(), q.verb.into(), q.resource.clone(), format!("--as={user}")];
    if let Some(sub) = q.subresource {
        args.push(format!("--subresource={sub}"));
    }
    match &q.namespace {
        Some(ns) => args.extend(["--namespace".to_string(), ns.clone()]),
        None if q.resource == "persistentvolumes" || q.resource.starts_with("clusterrole") => {}
        None => args.push("--all-namespaces".into()),
    }
    let out = stack.kubectl(&args).await;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match (out.status.code(), answer.as_str()) {
        (Some(0), "yes") => true,
        (Some(1), a) if a.starts_with("no") => false,
        _ => panic!("kubectl {}: {}", args.join(" "), describe_output(&out)),
    }
}

fn describe(q: &Ask) -> String {
    let sub = q.subresource.map(|s| format!("/{s}")).unwrap_or_default();
    format!("{} {}{} in {}", q.verb, q.resource, sub, q.namespace.as_deref().unwrap_or("<all>"))
}

/// The answers that differ from `expected`, described.
async fn mismatches(stack: &Stack, user: &str, asks: &[Ask], expected: bool) -> Vec<String> {
    let mut wrong = vec![];
    for q in asks {
        if can_i(stack, user, q).await != expected {
            let what = if expected { "denied but needed" } else { "granted but not needed" };
            wrong.push(format!("{what}: {}", describe(q)));
        }
    }
    wrong
}

#[tokio::test]
async fn rbac_grants_exactly_what_the_operator_calls() {
    let stack = Stack::get();
    let namespace = stack.unique_namespace("helm-rbac").await;
    let release = release_for(&namespace);
    let lease = fullname(&release);
    install(stack, &namespace, &release, &[]).await;
    let user = format!("system:serviceaccount:{namespace}:{}", fullname(&release));

    let mut wrong = mismatches(stack, &user, &needed(), true).await;
    wrong.extend(mismatches(stack, &user, &needed_for_the_lease(&namespace, &lease), true).await);
    wrong.extend(mismatches(stack, &user, &not_needed(&namespace, &lease), false).await);
    uninstall(stack, &namespace, &release).await;
    assert!(wrong.is_empty(), "RBAC of the chart's ServiceAccount:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn optional_permissions_follow_the_values() {
    let stack = Stack::get();
    let namespace = stack.unique_namespace("helm-optional").await;
    let release = release_for(&namespace);
    let lease = fullname(&release);
    install(stack, &namespace, &release, &["--set", "irsaPerBackup.enabled=false", "--set", "leaderElection.enabled=false"]).await;
    let user = format!("system:serviceaccount:{namespace}:{}", fullname(&release));

    let (token, rest): (Vec<Ask>, Vec<Ask>) = needed().into_iter().partition(|q| q.subresource == Some("token"));
    let mut wrong = mismatches(stack, &user, &rest, true).await;
    // irsaPerBackup.enabled=false: no TokenRequests. leaderElection.enabled=false still needs the
    // release namespace's Leases: the per-TidbCluster claims live there.
    wrong.extend(mismatches(stack, &user, &token, false).await);
    wrong.extend(mismatches(stack, &user, &needed_for_the_lease(&namespace, &lease), true).await);
    uninstall(stack, &namespace, &release).await;
    assert!(wrong.is_empty(), "RBAC with irsaPerBackup and leaderElection off:\n{}", wrong.join("\n"));
}
