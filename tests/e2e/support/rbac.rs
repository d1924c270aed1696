//! RBAC for tests: the Helm chart's rendered rules, and ServiceAccount identities bound to a chosen subset.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::e2e::Scene;
use super::{Stack, describe_output, eventually};

pub const RELEASE: &str = "r";
pub const LEASE: &str = "r-tidb-ebs-backup";

/// The chart's ClusterRole and leader-election Role rules, with every optional feature on.
pub async fn chart_rules(stack: &Stack) -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    let out = stack.helm(["template", RELEASE, "manifests/tidb-ebs-backup", "--set", "irsaPerBackup.enabled=true"]).await;
    assert!(out.status.success(), "helm template: {}", describe_output(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut cluster = None;
    let mut lease = None;
    for document in serde_norway::Deserializer::from_str(&text) {
        let Ok(value) = <Value as serde::Deserialize>::deserialize(document) else { continue };
        match value["kind"].as_str() {
            Some("ClusterRole") => cluster = Some(serde_json::from_value::<ClusterRole>(value).unwrap().rules.unwrap_or_default()),
            Some("Role") => lease = Some(serde_json::from_value::<Role>(value).unwrap().rules.unwrap_or_default()),
            _ => {}
        }
    }
    (cluster.expect("a ClusterRole in the chart"), lease.expect("a leader-election Role in the chart"))
}

pub fn rule_key(rule: &PolicyRule) -> String {
    let resources = rule.resources.clone().unwrap_or_default().join(",");
    match &rule.resource_names {
        Some(names) if !names.is_empty() => format!("{resources}[{}]:{}", names.join(","), rule.verbs.join(",")),
        _ => format!("{resources}:{}", rule.verbs.join(",")),
    }
}

pub fn without(rules: &[PolicyRule], key: &str) -> Vec<PolicyRule> {
    let kept: Vec<PolicyRule> = rules.iter().filter(|r| rule_key(r) != key).cloned().collect();
    assert_eq!(kept.len() + 1, rules.len(), "exactly one rule `{key}` in {:?}", rules.iter().map(rule_key).collect::<Vec<_>>());
    kept
}

/// A ServiceAccount in `operator_ns` bound to exactly these rules; returns its kubeconfig path and client.
pub async fn identity(
    scene: &Scene,
    operator_ns: &str,
    name: &str,
    cluster_rules: Vec<PolicyRule>,
    lease_rules: Vec<PolicyRule>,
) -> (PathBuf, kube::Client) {
    let admin = scene.client.clone();
    let pp = PostParams::default();
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), operator_ns).create(&pp, &account).await.unwrap();
    let subject = json!([{"kind": "ServiceAccount", "name": name, "namespace": operator_ns}]);
    let global = format!("{operator_ns}-{name}");
    let probe = cluster_rules.first().or(lease_rules.first()).cloned().expect("some rule");
    let role: ClusterRole = serde_json::from_value(json!({"metadata": {"name": global}, "rules": cluster_rules})).unwrap();
    Api::<ClusterRole>::all(admin.clone()).create(&pp, &role).await.unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({"metadata": {"name": global},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": global}, "subjects": subject}))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone()).create(&pp, &binding).await.unwrap();
    if !lease_rules.is_empty() {
        let role: Role = serde_json::from_value(json!({"metadata": {"name": name}, "rules": lease_rules})).unwrap();
        Api::<Role>::namespaced(admin.clone(), operator_ns).create(&pp, &role).await.unwrap();
        let binding: RoleBinding = serde_json::from_value(json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}, "subjects": subject}))
        .unwrap();
        Api::<RoleBinding>::namespaced(admin, operator_ns).create(&pp, &binding).await.unwrap();
    }
    let token = scene.stack.service_account_token(operator_ns, name).await;
    let (path, client) = scene.stack.token_kubeconfig(&global, &token).await;
    // The authorizer learns new roles and bindings from a watch: wait until the grant is in effect.
    let attributes = ResourceAttributes {
        verb: probe.verbs.first().cloned(),
        group: probe.api_groups.as_ref().and_then(|g| g.first().cloned()),
        resource: probe.resources.as_ref().and_then(|r| r.first().cloned()),
        name: probe.resource_names.as_ref().and_then(|n| n.first().cloned()),
        namespace: Some(operator_ns.to_string()),
        ..Default::default()
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec { resource_attributes: Some(attributes), ..Default::default() },
        ..Default::default()
    };
    eventually(&format!("{name}'s RBAC to take effect"), Duration::from_secs(10), || async {
        let reply = Api::<SelfSubjectAccessReview>::all(client.clone()).create(&pp, &review).await.ok()?;
        reply.status.is_some_and(|s| s.allowed).then_some(())
    })
    .await;
    (path, client)
}

/// Tests that run several reduced identities give each its own Backups through this label.
const CASE_LABEL: &str = "rbac-case";

/// `backup` labelled for the operator started with `case_selector(case)`.
pub fn labelled(mut backup: Value, case: &str) -> Value {
    backup["metadata"]["labels"] = json!({CASE_LABEL: case});
    backup
}

pub fn case_selector(case: &str) -> String {
    format!("{CASE_LABEL}={case}")
}
