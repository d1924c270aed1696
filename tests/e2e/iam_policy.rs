//! The IAM policy we publish (manifests/iam-policy.json) names every AWS action the operator calls.
//! Reads the AWS emulator's request log, so it must run after the end-to-end suites on the same stack:
//! it is ignored in the main run, and `scripts/test` runs it by itself afterwards
//! (`cargo test --test e2e -- --ignored iam_policy::`).

use std::collections::BTreeSet;

use crate::support::Stack;
use serde_json::Value;
use tidb_ebs_backup::aws::credentials::APP_NAME;

/// The IAM action that authorises one logged API call.
fn iam_action(service: &str, action: &str) -> String {
    match (service, action) {
        ("s3", "HeadBucket") => "s3:ListBucket".into(),
        ("s3", "HeadObject") => "s3:GetObject".into(),
        _ => format!("{service}:{action}"),
    }
}

fn policy_actions() -> BTreeSet<String> {
    let policy: Value = serde_json::from_str(&std::fs::read_to_string("manifests/iam-policy.json").unwrap()).unwrap();
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| match &s["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            _ => vec![],
        })
        .collect()
}

#[tokio::test]
#[ignore = "reads what the e2e suites did: run after them, as scripts/test does"]
async fn the_published_iam_policy_covers_every_call_the_operator_made() {
    let stack = Stack::get();
    let log = stack.emulator().requests(None).await;
    let ours: Vec<&Value> = log.iter().filter(|r| r["user_agent"].as_str().is_some_and(|ua| ua.contains(&format!("app/{APP_NAME}")))).collect();
    let called: BTreeSet<String> =
        ours.iter().map(|r| iam_action(r["service"].as_str().unwrap_or_default(), r["action"].as_str().unwrap_or_default())).collect();
    assert!(
        called.contains("ec2:CreateSnapshots") && called.contains("s3:PutObject") && called.contains("ec2:DeleteSnapshot"),
        "the operator's calls are missing from the emulator log ({called:?}); run this after the e2e suites, as scripts/test does"
    );
    // AssumeRoleWithWebIdentity is authorised by the role's trust policy, not by the caller's policy.
    let needed: BTreeSet<String> = called.into_iter().filter(|a| a != "sts:AssumeRoleWithWebIdentity").collect();
    let policy = policy_actions();
    let missing: Vec<_> = needed.difference(&policy).collect();
    assert!(missing.is_empty(), "manifests/iam-policy.json lacks {missing:?} (called: {needed:?})");
    // Tagging happens inside CreateSnapshots (TagSpecifications), which needs ec2:CreateTags on the snapshot.
    assert!(policy.contains("ec2:CreateTags"));
}
