//! The local stack is the real thing: a Kubernetes 1.34 apiserver with authentication, RBAC and
//! ServiceAccount tokens, kubectl and helm, a real PD with fake TiKV stores, and the AWS emulator with
//! its snapshot, EBS direct and fault-injection extensions. Needs HARNESS_ENV (see `support`).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{Stack, TidbClusterFixture, describe_output, eventually, exclusive, jwt_claims, shared};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Filter, VolumeType};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use serde_json::json;
use tidb_ebs_backup::pd::Pd;

// ---- Kubernetes ----------------------------------------------------------------------------------

#[tokio::test]
async fn apiserver_is_kubernetes_1_34() {
    let stack = Stack::get();
    let client = stack.kube_client().await;
    let version = client.apiserver_version().await.expect("GET /version");
    assert!(version.git_version.starts_with("v1.34."), "gitVersion {:?}", version.git_version);
    assert_eq!(version.major, "1");
    assert_eq!(version.minor.trim_end_matches('+'), "34");
}

#[tokio::test]
async fn unauthenticated_requests_are_rejected() {
    let stack = Stack::get();
    let http = stack.apiserver_http_anonymous();
    for path in ["/api/v1/namespaces", "/api/v1/pods", "/apis/pingcap.com/v1alpha1/backups"] {
        let url = format!("{}{path}", stack.kube_apiserver);
        let response = http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert!(status == 401 || status == 403, "anonymous GET {path} answered {status}: {body}");
    }
}

/// ServiceAccount `name` in `ns` and a token for it (default audience unless `audiences` is given).
async fn service_account_token(client: &kube::Client, ns: &str, name: &str, audiences: &[&str], expiration_seconds: i64) -> TokenRequest {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match sas.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount {ns}/{name}: {e}"),
    }
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": audiences, "expirationSeconds": expiration_seconds}
    }))
    .unwrap();
    sas.create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{name}: {e}"))
}

#[tokio::test]
async fn rbac_forbids_a_service_account_to_list_pods_in_another_namespace() {
    let stack = Stack::get();
    let client = stack.kube_client().await;
    let home = stack.unique_namespace("stack-rbac-home").await;
    let other = stack.unique_namespace("stack-rbac-other").await;
    let token = service_account_token(&client, &home, "nobody", &[], 600).await;
    let token = token.status.expect("TokenRequest status").token;
    let http = stack.apiserver_http_anonymous();

    // The token authenticates: the apiserver knows who we are...
    let url = format!("{}/apis/authentication.k8s.io/v1/selfsubjectreviews", stack.kube_apiserver);
    let review = http
        .post(&url)
        .bearer_auth(&token)
        .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}))
        .send()
        .await
        .expect("POST selfsubjectreviews");
    assert_eq!(review.status().as_u16(), 201, "SelfSubjectReview with the SA token");
    let review: serde_json::Value = review.json().await.unwrap();
    assert_eq!(review["status"]["userInfo"]["username"], format!("system:serviceaccount:{home}:nobody"));

    // ...and RBAC says no.
    let url = format!("{}/api/v1/namespaces/{other}/pods", stack.kube_apiserver);
    let response = http.get(&url).bearer_auth(&token).send().await.expect("GET pods");
    assert_eq!(response.status().as_u16(), 403, "listing pods in {other}");
    let status: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status["reason"], "Forbidden", "{status}");
    assert!(status["message"].as_str().unwrap_or_default().contains(&format!("system:serviceaccount:{home}:nobody")), "{status}");

    // The same through kube-rs with a bearer-token config.
    let mut config = kube::Config::new(stack.kube_apiserver.parse().unwrap());
    config.root_cert = Some(vec![pem_to_der(&stack.ca_pem())]);
    config.auth_info.token = Some(token.clone().into());
    let as_sa = kube::Client::try_from(config).expect("client with SA token");
    let err = Api::<Pod>::namespaced(as_sa, &other).list(&ListParams::default()).await.unwrap_err();
    match err {
        kube::Error::Api(e) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
    crate::support::base64url_decode(&b64).expect("CA PEM base64")
}

#[tokio::test]
async fn token_request_issues_a_jwt_for_the_sts_audience() {
    let stack = Stack::get();
    let client = stack.kube_client().await;
    let ns = stack.unique_namespace("stack-token").await;
    let token = service_account_token(&client, &ns, "tidb-backup-manager", &["sts.amazonaws.com"], 3600).await;
    let status = token.status.expect("TokenRequest status");
    let claims = jwt_claims(&status.token);
    let aud: Vec<String> = match &claims["aud"] {
        serde_json::Value::String(s) => vec![s.clone()],
        other => serde_json::from_value(other.clone()).unwrap_or_default(),
    };
    assert_eq!(aud, vec!["sts.amazonaws.com".to_string()], "claims {claims}");
    assert_eq!(claims["sub"], format!("system:serviceaccount:{ns}:tidb-backup-manager"));
    assert_eq!(claims["iss"], stack.kube_apiserver.as_str());
    let exp = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert!((3000..=3700).contains(&exp), "lifetime {exp}s");

    // The apiserver accepts it for that audience (TokenReview), not for its own default one.
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review =
        |audiences: Vec<&str>| serde_json::from_value::<TokenReview>(json!({"spec": {"token": status.token, "audiences": audiences}})).unwrap();
    let ok = reviews.create(&PostParams::default(), &review(vec!["sts.amazonaws.com"])).await.expect("TokenReview");
    let ok = ok.status.expect("TokenReview status");
    assert_eq!(ok.authenticated, Some(true), "{ok:?}");
    assert_eq!(ok.audiences, Some(vec!["sts.amazonaws.com".to_string()]));
    let wrong = reviews.create(&PostParams::default(), &review(vec![stack.kube_apiserver.as_str()])).await.expect("TokenReview");
    assert_ne!(wrong.status.and_then(|s| s.authenticated), Some(true), "audience must be checked");
}

#[tokio::test]
async fn kubectl_and_helm_run() {
    let stack = Stack::get();
    let out = stack.kubectl(["version"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Client Version: v1.34."), "{text}");
    assert!(text.contains("Server Version: v1.34."), "{text}");

    let out = stack.kubectl(["get", "crd", "backups.pingcap.com", "tidbclusters.pingcap.com", "-o", "name"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));

    let out = stack.helm(["version", "--short"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim().starts_with("v3."), "helm version: {text}");
}

// ---- PD ------------------------------------------------------------------------------------------

#[tokio::test]
async fn pd_answers_and_lists_the_fixture_stores() {
    // Its fixture registers stores in PD (see `support`).
    let _stack = shared().await;
    let stack = Stack::get();
    let version = stack.pd_get("version").await;
    assert!(version["version"].as_str().is_some_and(|v| v.starts_with("v8.5")), "{version}");

    let ns = stack.unique_namespace("stack-pd-stores").await;
    let fixture = TidbClusterFixture::create(stack, &ns, "basic", 3, 1).await;
    assert_eq!(fixture.store_ids.len(), 3);

    let stores = stack.pd_get("stores").await;
    let listed: Vec<(u64, String, String)> = stores["stores"]
        .as_array()
        .expect("stores list")
        .iter()
        .map(|s| {
            (
                s["store"]["id"].as_u64().unwrap_or(0),
                s["store"]["address"].as_str().unwrap_or_default().to_string(),
                s["store"]["state_name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (i, m) in fixture.tikv.iter().enumerate() {
        let expected = format!("basic-tikv-{i}.basic-tikv-peer.{ns}.svc:20160");
        assert_eq!(m.address, expected);
        let found = listed.iter().find(|(id, _, _)| *id == m.store_id).unwrap_or_else(|| panic!("store {} in {stores}", m.store_id));
        assert_eq!(found.1, expected);
        assert_eq!(found.2, "Up");
    }

    // The crate's client sees the same.
    let pd = stack.pd_client();
    let via_crate = pd.stores().await.expect("stores via PdClient");
    for m in &fixture.tikv {
        assert!(via_crate.iter().any(|s| s.id == m.store_id && s.address == m.address), "{via_crate:?}");
    }
    assert!(!pd.cluster_version().await.expect("cluster version").is_empty());
}

#[tokio::test]
async fn pd_scheduler_pause_and_resume() {
    // Other tests assert PD unchanged across their backups, and their backups pause this scheduler too.
    let _stack = exclusive().await;
    let stack = Stack::get();
    let scheduler = "balance-leader-scheduler";
    let schedulers = stack.pd_get("schedulers").await;
    assert!(schedulers.as_array().is_some_and(|s| s.iter().any(|n| n == scheduler)), "{scheduler} is a default scheduler: {schedulers}");

    let (status, body) = stack.pd_post(&format!("schedulers/{scheduler}"), &json!({"delay": 60})).await;
    assert!(status.is_success(), "pause: {status} {body}");
    let paused = stack.pd_get("schedulers?status=paused").await;
    assert!(paused.as_array().is_some_and(|s| s.iter().any(|n| n == scheduler)), "paused: {paused}");
    assert!(stack.pd_client().paused_schedulers().await.expect("paused via PdClient").iter().any(|n| n == scheduler));

    let (status, body) = stack.pd_post(&format!("schedulers/{scheduler}"), &json!({"delay": 0})).await;
    assert!(status.is_success(), "resume: {status} {body}");
    let paused = stack.pd_get("schedulers?status=paused").await;
    assert!(!paused.as_array().is_some_and(|s| s.iter().any(|n| n == scheduler)), "still paused: {paused}");

    // And once more through the crate's client.
    let pd = stack.pd_client();
    pd.pause_scheduler(scheduler, 60).await.expect("pause via PdClient");
    assert!(pd.paused_schedulers().await.unwrap().iter().any(|n| n == scheduler));
    pd.pause_scheduler(scheduler, 0).await.expect("resume via PdClient");
    assert!(!pd.paused_schedulers().await.unwrap().iter().any(|n| n == scheduler));
}

#[tokio::test]
async fn pd_service_gc_safepoint_over_grpc() {
    // A service safepoint shows in every other test's view of PD.
    let _stack = exclusive().await;
    let stack = Stack::get();
    let pd = stack.pd_client();
    let service_id = format!("stack-test-{}", uuid::Uuid::new_v4().simple());
    // A TSO for "now": physical milliseconds << 18; no service safepoint anyone else set is above it.
    let now_ms = jiff::Timestamp::now().as_millisecond() as u64;
    let ts = now_ms << 18;
    pd.update_service_safepoint(&service_id, 60, ts).await.expect("UpdateServiceGCSafePoint");

    let safepoints = pd.gc_safepoints().await.expect("gc safepoints");
    let mine = safepoints
        .service_safe_points
        .iter()
        .find(|s| s.service_id == service_id)
        .unwrap_or_else(|| panic!("{service_id} in {safepoints:?}"));
    assert_eq!(mine.safe_point, ts);
    let now_s = now_ms as i64 / 1000;
    assert!((now_s + 50..=now_s + 70).contains(&mine.expired_at), "expires {} (now {now_s})", mine.expired_at);

    // The HTTP view agrees; ttl 0 removes it.
    let raw = stack.pd_get("gc/safepoint").await;
    assert!(raw["service_gc_safe_points"].as_array().unwrap().iter().any(|s| s["service_id"] == service_id.as_str()), "{raw}");
    pd.update_service_safepoint(&service_id, 0, ts).await.expect("remove safepoint");
    let after = pd.gc_safepoints().await.unwrap();
    assert!(!after.service_safe_points.iter().any(|s| s.service_id == service_id), "{after:?}");
}

// ---- the TidbCluster fixture ------------------------------------------------------------------------

#[tokio::test]
async fn fixture_builds_a_consistent_cluster_on_kubernetes_and_ec2() {
    // Its fixture registers stores in PD (see `support`).
    let _stack = shared().await;
    let stack = Stack::get();
    let ns = stack.unique_namespace("stack-fixture").await;
    let fixture = TidbClusterFixture::create(stack, &ns, "basic", 2, 2).await;
    let client = stack.kube_client().await;

    // TidbCluster with the storage volume, config and store status.
    let tcs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &tidb_ebs_backup::api::tidbcluster::tidbcluster_resource());
    let tc = tcs.get("basic").await.expect("TidbCluster");
    let facts = tidb_ebs_backup::api::tidbcluster::ClusterFacts::from_object(&tc);
    assert_eq!(facts.tikv_replicas, 2);
    assert_eq!(facts.pd_replicas, 1);
    assert_eq!(facts.tikv_storage_volumes, vec![("raft".to_string(), "/var/lib/raft".to_string())]);
    assert_eq!(facts.tikv_config["raft-engine.dir"], "/var/lib/raft");
    for m in &fixture.tikv {
        let store = &tc.data["status"]["tikv"]["stores"][m.store_id.to_string()];
        assert_eq!(store["podName"], m.pod.as_str());
        assert_eq!(store["state"], "Up");
    }

    // Pods -> PVCs -> PVs -> EBS volumes, with TiDB Operator's labels.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let tikv_pods = pods.list(&ListParams::default().labels("app.kubernetes.io/component=tikv,app.kubernetes.io/instance=basic")).await.unwrap();
    assert_eq!(tikv_pods.items.len(), 2);
    let mut kinds = BTreeSet::new();
    for m in &fixture.tikv {
        let pod = pods.get(&m.pod).await.unwrap();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("tidb.pingcap.com/store-id"), Some(&m.store_id.to_string()));
        assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("tidb-operator"));
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Running"));
        let claims: Vec<(String, String)> = pod
            .spec
            .unwrap()
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| Some((v.name, v.persistent_volume_claim?.claim_name)))
            .collect();
        assert_eq!(claims, vec![("tikv".to_string(), format!("tikv-{}", m.pod)), ("tikv-raft".to_string(), format!("tikv-raft-{}", m.pod))]);
        for v in &m.volumes {
            let pvc = pvcs.get(&v.pvc).await.unwrap();
            assert_eq!(pvc.spec.unwrap().volume_name.as_deref(), Some(v.pv.as_str()));
            assert_eq!(pvc.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
            let pv = pvs.get(&v.pv).await.unwrap();
            assert_eq!(pv.metadata.labels.unwrap()["app.kubernetes.io/namespace"], ns);
            let spec = pv.spec.unwrap();
            assert_eq!(spec.claim_ref.unwrap().name.as_deref(), Some(v.pvc.as_str()));
            match (spec.csi, spec.aws_elastic_block_store) {
                (Some(csi), None) => {
                    assert!(v.csi);
                    assert_eq!(csi.driver, "ebs.csi.aws.com");
                    assert_eq!(csi.volume_handle, v.volume_id);
                    kinds.insert("csi");
                }
                (None, Some(ebs)) => {
                    assert!(!v.csi);
                    assert_eq!(ebs.volume_id, format!("aws://{}/{}", fixture.az, v.volume_id));
                    kinds.insert("in-tree");
                }
                other => panic!("PV {} has neither or both sources: {other:?}", v.pv),
            }
            assert_eq!(pv.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
        }
    }
    assert_eq!(kinds.len(), 2, "PVs alternate between CSI and in-tree");
    let pd_pod = pods.get("basic-pd-0").await.expect("PD pod");
    assert_eq!(pd_pod.metadata.labels.unwrap()["app.kubernetes.io/component"], "pd");
    assert!(pvcs.get("pd-basic-pd-0").await.is_ok());

    // EC2: every TiKV volume and the foreign one are attached to the pod's instance.
    let ec2 = stack.ec2_client().await;
    let volumes = ec2
        .describe_volumes()
        .filters(Filter::builder().name("tag:tidb-ebs-backup.test/fixture").values(fixture.tag()).build())
        .send()
        .await
        .expect("DescribeVolumes");
    let attached_to = |id: &str| -> String {
        let v = volumes.volumes().iter().find(|v| v.volume_id() == Some(id)).unwrap_or_else(|| panic!("volume {id}"));
        v.attachments().first().and_then(|a| a.instance_id()).unwrap_or_default().to_string()
    };
    for m in &fixture.tikv {
        for v in &m.volumes {
            assert_eq!(attached_to(&v.volume_id), m.instance_id, "{v:?}");
        }
        assert_eq!(attached_to(&m.foreign_volume_id), m.instance_id);
        assert!(!m.root_volume_id.is_empty(), "root volume of {}", m.instance_id);
    }
    for p in &fixture.pd {
        assert_eq!(attached_to(&p.volume.volume_id), p.instance_id);
    }
    let tagged = volumes.volumes().iter().find(|v| v.volume_id() == Some(fixture.tikv[0].volumes[0].volume_id.as_str())).unwrap();
    assert!(
        tagged
            .tags()
            .iter()
            .any(|t| t.key() == Some("kubernetes.io/created-for/pvc/name") && t.value() == Some(format!("tikv-{}", fixture.tikv[0].pod).as_str()))
    );
    assert_eq!(fixture.foreign_volume_ids.len(), 2);
    assert_eq!(fixture.pd_volume_ids.len(), 1);
}

// ---- AWS emulator ------------------------------------------------------------------------------------

async fn new_volume(ec2: &aws_sdk_ec2::Client, az: &str, gib: i32) -> String {
    ec2.create_volume()
        .availability_zone(az)
        .size(gib)
        .volume_type(VolumeType::Gp3)
        .send()
        .await
        .expect("CreateVolume")
        .volume_id()
        .expect("volume id")
        .to_string()
}

async fn snapshot_state(ec2: &aws_sdk_ec2::Client, snapshot_id: &str) -> (String, String) {
    let out = ec2.describe_snapshots().snapshot_ids(snapshot_id).send().await.expect("DescribeSnapshots");
    let snap = out.snapshots().first().expect("the snapshot");
    (snap.state().map(|s| s.as_str().to_string()).unwrap_or_default(), snap.progress().unwrap_or_default().to_string())
}

#[tokio::test]
async fn emulator_snapshots_are_pending_then_completed() {
    // The pending time set here is emulator-wide.
    let _stack = exclusive().await;
    let stack = Stack::get();
    let emulator = stack.emulator();
    let ec2 = stack.ec2_client().await;
    let az = format!("{}a", stack.aws_region);
    let volume = new_volume(&ec2, &az, 1).await;

    // Put back right after the CreateSnapshot (a snapshot keeps what it started with).
    emulator.set_snapshot_pending_seconds(2.0).await;
    let created = ec2.create_snapshot().volume_id(&volume).description("pending test").send().await;
    emulator.set_snapshot_pending_seconds(0.0).await;
    let snapshot = created.expect("CreateSnapshot").snapshot_id().expect("snapshot id").to_string();
    let (state, _) = snapshot_state(&ec2, &snapshot).await;
    assert_eq!(state, "pending");
    let progress = eventually("the snapshot to complete", Duration::from_secs(15), || async {
        let (state, progress) = snapshot_state(&ec2, &snapshot).await;
        (state == "completed").then_some(progress)
    })
    .await;
    assert_eq!(progress, "100%");

    // Per volume: pending, then error.
    let failing = new_volume(&ec2, &az, 1).await;
    emulator.set_volume_snapshot_behaviour(&failing, 1.0, "error").await;
    let snapshot = ec2.create_snapshot().volume_id(&failing).send().await.expect("CreateSnapshot");
    let snapshot = snapshot.snapshot_id().unwrap().to_string();
    assert_eq!(snapshot_state(&ec2, &snapshot).await.0, "pending");
    eventually("the snapshot to fail", Duration::from_secs(15), || async { (snapshot_state(&ec2, &snapshot).await.0 == "error").then_some(()) })
        .await;

    // A pending snapshot can be finished through the control API.
    emulator.set_volume_snapshot_behaviour(&volume, 3600.0, "completed").await;
    let snapshot = ec2.create_snapshot().volume_id(&volume).send().await.expect("CreateSnapshot");
    let snapshot = snapshot.snapshot_id().unwrap().to_string();
    assert_eq!(snapshot_state(&ec2, &snapshot).await.0, "pending");
    emulator.complete_snapshot(&snapshot).await;
    assert_eq!(snapshot_state(&ec2, &snapshot).await.0, "completed");
}

#[tokio::test]
async fn emulator_list_snapshot_blocks_pages_over_the_block_map() {
    let stack = Stack::get();
    let emulator = stack.emulator();
    let ec2 = stack.ec2_client().await;
    let volume = new_volume(&ec2, &format!("{}a", stack.aws_region), 1).await;
    emulator.set_volume_snapshot_behaviour(&volume, 0.0, "completed").await;
    // 250 written blocks, sparse: 0, 3, 6, ...
    let written: Vec<i32> = (0..250).map(|i| i * 3).collect();
    let summary = emulator.set_volume_blocks(&volume, json!({"blocks": written})).await;
    assert_eq!(summary["block_count"], 250, "{summary}");
    let snapshot = ec2.create_snapshot().volume_id(&volume).send().await.expect("CreateSnapshot");
    let snapshot = snapshot.snapshot_id().unwrap().to_string();

    let ebs = stack.ebs_client().await;
    let mut token: Option<String> = None;
    let mut pages = vec![];
    let mut seen = vec![];
    loop {
        let page = ebs
            .list_snapshot_blocks()
            .snapshot_id(&snapshot)
            .max_results(100)
            .set_next_token(token.clone())
            .send()
            .await
            .expect("ListSnapshotBlocks");
        assert_eq!(page.block_size(), Some(524288));
        assert_eq!(page.volume_size(), Some(1));
        pages.push(page.blocks().len());
        seen.extend(page.blocks().iter().map(|b| b.block_index().unwrap_or(-1)));
        assert!(page.blocks().iter().all(|b| b.block_token().is_some()));
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, vec![100, 100, 50]);
    assert_eq!(seen, written);

    // The SDK paginator walks the same pages.
    let all: Vec<_> = ebs.list_snapshot_blocks().snapshot_id(&snapshot).max_results(100).into_paginator().send().collect::<Vec<_>>().await;
    let total: usize = all.into_iter().map(|p| p.expect("page").blocks().len()).sum();
    assert_eq!(total, 250);
    let logged = emulator.requests(Some("ListSnapshotBlocks")).await;
    assert!(logged.iter().filter(|r| r["path"].as_str().is_some_and(|p| p.contains(&snapshot))).count() >= 6);
}

#[tokio::test]
async fn emulator_injected_request_limit_exceeded_reaches_the_sdk() {
    // Exclusive tests clear every fault rule, this one's too.
    let _stack = shared().await;
    let stack = Stack::get();
    let emulator = stack.emulator();
    let ec2 = stack.ec2_client_without_retries().await;
    // An action no other test uses, one time only.
    let rule = emulator
        .add_fault(json!({"service": "ec2", "action": "DescribeKeyPairs", "status": 503,
                          "code": "RequestLimitExceeded", "message": "Request limit exceeded.", "times": 1}))
        .await;
    let id = rule["id"].as_u64().expect("rule id");

    let err = ec2.describe_key_pairs().send().await.expect_err("the injected fault");
    assert_eq!(err.code(), Some("RequestLimitExceeded"), "{err:?}");
    assert_eq!(err.message(), Some("Request limit exceeded."));
    ec2.describe_key_pairs().send().await.expect("the fault is used up after one request");

    let logged = emulator.requests(Some("DescribeKeyPairs")).await;
    assert!(logged.iter().any(|r| r["injected"] == true && r["error_code"] == "RequestLimitExceeded" && r["status"] == 503), "{logged:?}");
    let rules = emulator.faults().await;
    let mine = rules.iter().find(|r| r["id"] == id).expect("rule still listed");
    assert_eq!(mine["hits"], 1);
    emulator.remove_fault(id).await;
    assert!(!emulator.faults().await.iter().any(|r| r["id"] == id));
}

#[tokio::test]
async fn emulator_s3_works_path_style() {
    let stack = Stack::get();
    let s3 = stack.s3_client().await;
    let bucket = format!("stack-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    stack.create_bucket(&bucket).await;
    s3.put_object()
        .bucket(&bucket)
        .key("backup/backupmeta")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"meta"))
        .send()
        .await
        .expect("PutObject");
    let got = s3.get_object().bucket(&bucket).key("backup/backupmeta").send().await.expect("GetObject");
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), b"meta");
    let logged = stack.emulator().requests(Some("PutObject")).await;
    assert!(logged.iter().any(|r| r["path"] == format!("/{bucket}/backup/backupmeta")), "path-style request");
}

/// The AWS SDK's HTTPS client (rustls on ring; the suites reach the emulator over plain http) does a real
/// TLS handshake: against the apiserver, whose certificate no public root signs, a call fails on that
/// certificate, not before it.
#[tokio::test]
async fn the_aws_sdk_https_client_does_tls() {
    let stack = Stack::get();
    let config = tidb_ebs_backup::aws::config_loader()
        .endpoint_url(&stack.kube_apiserver)
        .region(aws_config::Region::new(stack.aws_region.clone()))
        .credentials_provider(aws_credential_types::Credentials::new("a", "b", None, None, "test"))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let err = aws_sdk_sts::Client::new(&config).get_caller_identity().send().await.expect_err("an untrusted certificate");
    let text = aws_smithy_types::error::display::DisplayErrorContext(&err).to_string();
    assert!(text.contains("invalid peer certificate"), "{text}");
}

/// The fixture is usable for benchmark-sized clusters: 30 stores with two volumes each.
#[tokio::test]
async fn fixture_scales_to_thirty_stores() {
    // Its fixture registers stores in PD (see `support`).
    let _stack = shared().await;
    let stack = Stack::get();
    let ns = stack.unique_namespace("stack-fixture-30").await;
    let started = std::time::Instant::now();
    let fixture = TidbClusterFixture::builder("big").stores(30).volumes_per_store(2).create(stack, &ns).await;
    let took = started.elapsed();
    assert_eq!(fixture.store_ids.len(), 30);
    assert_eq!(fixture.tikv_volume_ids().len(), 60);
    assert_eq!(fixture.foreign_volume_ids.len(), 30);
    let distinct: BTreeSet<&String> = fixture.tikv.iter().map(|m| &m.instance_id).collect();
    assert_eq!(distinct.len(), 30, "one instance per store");
    let pods = Api::<Pod>::namespaced(stack.kube_client().await, &ns)
        .list(&ListParams::default().labels("app.kubernetes.io/component=tikv"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 30);
    assert!(took < Duration::from_secs(60), "fixture took {took:?}");
    eprintln!("30-store fixture in {took:?}");
}
