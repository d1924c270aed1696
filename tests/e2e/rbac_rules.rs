//! Every rule the Helm chart grants is needed. For each rule of the rendered ClusterRole and
//! leader-election Role, an operator running as a ServiceAccount bound to the chart's rules minus that one
//! rule breaks where the rule's comment says it is used; with all the rules the same Backups work
//! (controls). `backups/status` is idle here — asserted, not assumed: it serves only a Backup CRD with a
//! status subresource, which the stack's (TiDB Operator's) CRD does not have; `status_subresource.rs`
//! shows it needed where the CRD has one.

use std::time::Duration;

use crate::support::e2e::{Operator, Scene, settings, spawn_operator_binary};
use crate::support::rbac::{LEASE, case_selector, chart_rules, identity, labelled, rule_key, without};
use crate::support::{eventually, exclusive, free_port, http, shared};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use tidb_ebs_backup::api::{Backup, ConditionType};
use tidb_ebs_backup::backup::Settings;

async fn events_about(scene: &Scene, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.note)
        .collect()
}

fn failed_message(backup: &Backup) -> String {
    let status = backup.status.as_ref().expect("status");
    let failed = status.conditions.iter().find(|c| c.type_ == ConditionType::Failed);
    failed.and_then(|c| c.message.clone()).unwrap_or_else(|| panic!("no Failed condition: {:#?}", status.conditions))
}

/// What a Backup run by a reduced identity must show.
enum Expect {
    /// No status, no finalizer: the operator cannot see or write Backups at all.
    Untouched,
    /// Failed in preflight (before PD is paused) with a message naming the refused call.
    FailsNaming(&'static str),
    /// Failed for its own reason, but no Event tells anyone.
    FailsSilently,
    /// Behaves as with every rule.
    Unaffected,
}

#[tokio::test]
async fn each_chart_rule_is_needed_by_the_operator() {
    // The controls run real backups, and a rule removal that broke nothing would too.
    let _stack = exclusive().await;
    let scene = Scene::new("rbac-rules", 2, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let irsa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "tidb-backup-manager",
        "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/tidb-backup-irsa"}}}))
    .unwrap();
    accounts.create(&PostParams::default(), &irsa).await.unwrap();
    let operator_ns = scene.stack.unique_namespace("rbac-op").await;
    let (cluster_rules, lease_rules) = chart_rules(scene.stack).await;

    let with_secret = json!({"cleanPolicy": "Delete", "s3": {"secretName": "keys"}});
    let with_irsa = json!({"cleanPolicy": "Delete", "serviceAccount": "tidb-backup-manager"});
    let missing_secret = json!({"s3": {"secretName": "missing"}});
    // (case, rule removed, Backup spec, expectation). `None` = every rule (a control).
    let cases: Vec<(&str, Option<&str>, &Value, Expect)> = vec![
        ("all-secret", None, &with_secret, Expect::Unaffected),
        ("all-irsa", None, &with_irsa, Expect::Unaffected),
        ("all-failing", None, &missing_secret, Expect::Unaffected),
        ("minus-backups", Some("backups:get,list,watch,patch"), &with_secret, Expect::Untouched),
        ("minus-backups-status", Some("backups/status:patch"), &missing_secret, Expect::Unaffected),
        ("minus-tidbclusters", Some("tidbclusters:get"), &with_secret, Expect::FailsNaming("tidbclusters")),
        ("minus-volumes", Some("pods,persistentvolumeclaims,persistentvolumes:list"), &with_secret, Expect::FailsNaming("forbidden")),
        ("minus-secrets", Some("secrets:get"), &with_secret, Expect::FailsNaming("secrets")),
        ("minus-serviceaccounts", Some("serviceaccounts:get"), &with_irsa, Expect::FailsNaming("serviceaccounts")),
        ("minus-token", Some("serviceaccounts/token:create"), &with_irsa, Expect::FailsNaming("token")),
        ("minus-events", Some("events:create,patch"), &missing_secret, Expect::FailsSilently),
    ];
    // The BackupSchedule controller's rules are taken away in schedule.rs.
    let covered: std::collections::BTreeSet<&str> = cases.iter().filter_map(|c| c.1).chain(crate::schedule::SCHEDULE_RULES.iter().copied()).collect();
    let granted: std::collections::BTreeSet<String> = cluster_rules.iter().map(rule_key).collect();
    assert_eq!(granted, covered.iter().map(|k| k.to_string()).collect(), "every ClusterRole rule has a case here");

    for (case, removed, spec, expect) in cases {
        let rules = removed.map(|key| without(&cluster_rules, key)).unwrap_or_else(|| cluster_rules.clone());
        // The operator's namespace Role (cluster claims) is granted whole here; the next test takes it apart.
        let (_, client) = identity(&scene, &operator_ns, case, rules, lease_rules.clone()).await;
        let settings = Settings { claim_namespace: operator_ns.clone(), ..settings(scene.stack) };
        let operator = Operator::start_as(scene.stack, client, &scene.namespace, settings, Some(&case_selector(case))).await;
        scene.apply(&labelled(scene.backup_yaml(case, spec.clone(), json!({})), case)).await;
        match expect {
            Expect::Untouched => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let backup = scene.api().get(case).await.unwrap();
                assert!(backup.status.is_none() && backup.metadata.finalizers.is_none(), "{case}: {backup:#?}");
            }
            Expect::FailsNaming(what) => {
                let backup = scene.wait_phase(case, &[ConditionType::Failed, ConditionType::Complete], Duration::from_secs(60)).await;
                let message = failed_message(&backup);
                assert!(message.contains("forbidden") && message.contains(what), "{case}: {message}");
                assert!(scene.snapshots_tagged(backup.metadata.uid.as_deref().unwrap()).await.is_empty(), "{case}: no snapshots");
            }
            Expect::FailsSilently => {
                let backup = scene.wait_phase(case, &[ConditionType::Failed, ConditionType::Complete], Duration::from_secs(60)).await;
                assert!(failed_message(&backup).contains("missing"), "{case}");
                tokio::time::sleep(Duration::from_secs(3)).await;
                assert_eq!(events_about(&scene, case).await, Vec::<String>::new(), "{case}: no Event can be posted");
            }
            Expect::Unaffected => {
                let backup = scene.wait_phase(case, &[ConditionType::Failed, ConditionType::Complete], Duration::from_secs(90)).await;
                if spec == &missing_secret {
                    assert!(failed_message(&backup).contains("missing"), "{case}");
                    let events = eventually(&format!("{case}: an Event"), Duration::from_secs(10), || async {
                        Some(events_about(&scene, case).await).filter(|e| !e.is_empty())
                    })
                    .await;
                    assert!(events.iter().any(|e| e.contains("missing")), "{case}: {events:?}");
                } else {
                    assert_eq!(backup.phase(), Some(&ConditionType::Complete), "{case}: {:#?}", backup.status);
                    // The Delete policy's clean-up needs the same rules.
                    let api = scene.api();
                    api.delete(case, &Default::default()).await.unwrap();
                    eventually(&format!("{case} deleted"), Duration::from_secs(60), || async {
                        matches!(api.get_opt(case).await, Ok(None)).then_some(())
                    })
                    .await;
                }
            }
        }
        operator.stop().await;
    }
}

/// The operator-namespace Role's rule (leader Lease and cluster claims), with the real binary: without it
/// the operator cannot lead; it exits naming the refusal and never acts.
#[tokio::test]
async fn each_leader_election_rule_is_needed() {
    // Its scene registers stores in PD (see `support`).
    let _stack = shared().await;
    let scene = Scene::new("rbac-lease", 1, 1).await;
    let (cluster_rules, lease_rules) = chart_rules(scene.stack).await;
    let keys: Vec<String> = lease_rules.iter().map(rule_key).collect();
    assert_eq!(keys, vec!["leases:create,get,patch,delete".to_string()], "the chart's namespace rules");

    for (case, removed) in [("all", None), ("minus-leases", Some("leases:create,get,patch,delete".to_string()))] {
        let operator_ns = scene.stack.unique_namespace("rbac-lease-op").await;
        let rules = removed.as_deref().map(|key| without(&lease_rules, key)).unwrap_or_else(|| lease_rules.clone());
        let (kubeconfig, _) = identity(&scene, &operator_ns, case, cluster_rules.clone(), rules).await;
        assert!(removed.is_none() || !cluster_rules.iter().any(|r| r.resources.iter().flatten().any(|x| x == "leases")), "no Lease rule elsewhere");
        let port = free_port();
        let metrics_addr = format!("127.0.0.1:{port}");
        let selector = case_selector(case);
        let args = ["--namespace", &scene.namespace, "--lease-namespace", &operator_ns, "--lease-name", LEASE, "--identity", case];
        let more = ["--backup-selector", &selector, "--pd-url-template", &scene.stack.pd_url, "--metrics-addr", &metrics_addr];
        let log_name = format!("{operator_ns}-{case}");
        let mut child = spawn_operator_binary(scene.stack, &kubeconfig, &log_name, &[&args[..], &more[..]].concat());
        let readyz = format!("http://127.0.0.1:{port}/readyz");
        let ready = || async { http().get(&readyz).send().await.ok().map(|r| r.status().as_u16()) };
        // A Backup it would fail at once (its Secret does not exist), so acting is cheap to see.
        scene.apply(&labelled(scene.backup_yaml(case, json!({"s3": {"secretName": "missing"}}), json!({})), case)).await;
        if removed.is_none() {
            eventually(&format!("{case}: ready"), Duration::from_secs(30), || async { (ready().await == Some(200)).then_some(()) }).await;
            scene.wait_phase(case, &[ConditionType::Failed], Duration::from_secs(30)).await;
        } else {
            // Without the Lease it must not act; it exits with the refusal, so a Deployment shows CrashLoopBackOff
            // with the reason in its log.
            let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").unwrap();
            assert!(!exit.success(), "{case}: {exit}");
            let log = std::fs::read_to_string(scene.stack.workdir.join(format!("{log_name}.log"))).unwrap();
            assert!(log.contains("forbidden") && log.contains("leases"), "{case}: {log}");
            let backup = scene.api().get(case).await.unwrap();
            assert!(backup.status.is_none(), "{case}: acted without the Lease: {:#?}", backup.status);
        }
        child.start_kill().unwrap();
        let _ = child.wait().await;
    }
}
