use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::json;

use super::*;
use crate::api::Backup;

fn config_map(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns", "labels": labels}, "data": {"k": "v"}})).unwrap()
}

fn backup(name: &str) -> Backup {
    serde_json::from_value(json!({
        "apiVersion": "pingcap.com/v1alpha1", "kind": "Backup",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"backupMode": "volume-snapshot", "br": {"cluster": "basic"}},
    }))
    .unwrap()
}

fn api_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(status) => status.code,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn writes_bump_the_resource_version_and_stale_ones_conflict() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");
    let created = api.create(&PostParams::default(), &config_map("a", json!({}))).await.unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    let patch = json!({"metadata": {"resourceVersion": rv1}, "data": {"k": null, "new": "x"}});
    let patched = api.patch("a", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert_ne!(patched.metadata.resource_version.as_deref(), Some(rv1.as_str()));
    assert_eq!(patched.data.unwrap().into_iter().collect::<Vec<_>>(), vec![("new".to_string(), "x".to_string())], "null deletes");
    // The same resourceVersion again is stale now.
    assert_eq!(api_code(api.patch("a", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap_err()), 409);
    let mut stale = created.clone();
    stale.data = Some([("k".to_string(), "stale".to_string())].into());
    assert_eq!(api_code(api.replace("a", &PostParams::default(), &stale).await.unwrap_err()), 409);
    let strategic = Patch::Strategic(json!({"data": {"s": "1"}}));
    assert_eq!(api.patch("a", &PatchParams::default(), &strategic).await.unwrap().data.unwrap()["s"], "1");
    assert_eq!(api_code(api.create(&PostParams::default(), &config_map("a", json!({}))).await.unwrap_err()), 409);
}

#[tokio::test]
async fn missing_objects_are_404_with_a_status_body() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");
    assert!(api.get_opt("nope").await.unwrap().is_none());
    match api.get("nope").await.unwrap_err() {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
            assert!(status.message.contains("configmaps \"nope\" not found"), "{}", status.message);
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn tidb_operators_backup_has_no_status_subresource_and_ours_can() {
    let server = FakeApiServer::new();
    let api: Api<Backup> = Api::namespaced(server.client(), "ns");
    api.create(&PostParams::default(), &backup("b")).await.unwrap();
    let status = Patch::Merge(json!({"status": {"phase": "Running"}}));
    assert_eq!(api_code(api.patch_status("b", &PatchParams::default(), &status).await.unwrap_err()), 404);
    let stored = api.patch("b", &PatchParams::default(), &status).await.unwrap();
    assert_eq!(stored.phase(), Some(&crate::api::ConditionType::Running), "written through the main resource");

    server.set_status_subresource::<Backup>(true);
    let complete = json!({"metadata": {"labels": {"l": "1"}}, "status": {"phase": "Complete"}});
    let stored = api.patch("b", &PatchParams::default(), &Patch::Merge(&complete)).await.unwrap();
    assert_eq!(stored.phase(), Some(&crate::api::ConditionType::Running), "the main resource ignores status");
    assert_eq!(stored.metadata.labels.unwrap()["l"], "1");
    let via_status = json!({"metadata": {"labels": {"l": "2"}}, "status": {"phase": "Complete"}});
    let stored = api.patch_status("b", &PatchParams::default(), &Patch::Merge(&via_status)).await.unwrap();
    assert_eq!(stored.phase(), Some(&crate::api::ConditionType::Complete));
    assert_eq!(stored.metadata.labels.unwrap()["l"], "1", "/status ignores everything but status");
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_they_are_removed() {
    let server = FakeApiServer::new();
    let api: Api<Backup> = Api::namespaced(server.client(), "ns");
    let mut b = backup("b");
    b.metadata.finalizers = Some(vec!["x/protect".into()]);
    let created = api.create(&PostParams::default(), &b).await.unwrap();
    let wrong_uid = DeleteParams { preconditions: Some(Preconditions { uid: Some("other".into()), resource_version: None }), ..Default::default() };
    assert_eq!(api_code(api.delete("b", &wrong_uid).await.unwrap_err()), 409);
    api.delete("b", &DeleteParams::default()).await.unwrap();
    let marked = api.get("b").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_ne!(marked.metadata.resource_version, created.metadata.resource_version);
    let add = Patch::Merge(json!({"metadata": {"finalizers": ["x/protect", "y/new"]}}));
    assert_eq!(api_code(api.patch("b", &PatchParams::default(), &add).await.unwrap_err()), 422, "no new finalizers while deleting");
    let clear = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    api.patch("b", &PatchParams::default(), &clear).await.unwrap();
    assert!(api.get_opt("b").await.unwrap().is_none(), "gone once its finalizers are");
    assert!(server.get::<Backup>(Some("ns"), "b").is_none());
}

#[tokio::test]
async fn lists_filter_by_equality_selectors_and_generate_name_makes_names() {
    let server = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");
    server.insert(&config_map("one", json!({"app": "a", "tier": "x"})));
    server.insert(&config_map("two", json!({"app": "a", "tier": "y"})));
    let names = |list: kube::core::ObjectList<ConfigMap>| list.items.into_iter().map(|c| c.metadata.name.unwrap()).collect::<Vec<_>>();
    assert_eq!(names(api.list(&ListParams::default().labels("app=a,tier!=y")).await.unwrap()), vec!["one"]);
    assert_eq!(names(api.list(&ListParams::default().labels("app=a")).await.unwrap()).len(), 2);
    assert!(server.requests_matching(Verb::List, "/configmaps$")[0].query.contains("labelSelector=app%3Da"));
    let mut generated = config_map("", json!({}));
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let made = api.create(&PostParams::default(), &generated).await.unwrap();
    assert!(made.metadata.name.unwrap().starts_with("gen-"));
    let everywhere: Api<ConfigMap> = Api::all(server.client());
    assert_eq!(everywhere.list(&ListParams::default()).await.unwrap().items.len(), 3);
}

#[tokio::test]
async fn faults_answer_codes_drop_connections_or_lose_replies_and_everything_is_logged() {
    let server = FakeApiServer::new();
    let api: Api<Lease> = Api::namespaced(server.client(), "ns");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "me"}})).unwrap();
    server.fail(Verb::Create, "/leases$", Times::Next(1), ApiFault::Status(503));
    match api.create(&PostParams::default(), &lease).await.unwrap_err() {
        kube::Error::Api(status) => assert_eq!((status.code, status.reason.as_str()), (503, "ServiceUnavailable")),
        other => panic!("{other}"),
    }
    server.fail(Verb::Create, "/leases$", Times::Next(1), ApiFault::Status(409));
    match api.create(&PostParams::default(), &lease).await.unwrap_err() {
        kube::Error::Api(status) => assert!(status.is_conflict(), "an injected code carries its reason: {status:?}"),
        other => panic!("{other}"),
    }
    server.fail(Verb::Create, "/leases$", Times::Next(1), ApiFault::LostReply);
    assert!(matches!(api.create(&PostParams::default(), &lease).await.unwrap_err(), kube::Error::Service(_)));
    assert!(api.get_opt("l").await.unwrap().is_some(), "a lost reply still took effect");
    server.fail(None, "/leases/l$", Times::Always, ApiFault::Unreachable);
    assert!(crate::k8s::is_transient(&api.get("l").await.unwrap_err()));
    server.clear_faults();
    server.fail(Verb::Get, "/leases/l$", Times::Next(1), ApiFault::Delay(Duration::from_millis(20)));
    let started = std::time::Instant::now();
    api.get("l").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(20));
    let creates = server.requests_matching(Verb::Create, "/namespaces/ns/leases$");
    assert_eq!(creates.iter().map(|r| r.code).collect::<Vec<_>>(), vec![Some(503), Some(409), Some(201)]);
    assert_eq!(creates[0].body.as_ref().unwrap()["spec"]["holderIdentity"], "me");
    let gets = server.requests().into_iter().filter(|r| r.verb == Verb::Get).count();
    assert_eq!(gets, 3, "the unreachable one is logged too");
}

#[tokio::test]
async fn json_patches_token_requests_and_events() {
    let server = FakeApiServer::new();
    let client = server.client();
    server.insert(&config_map("c", json!({})));
    let body = serde_json::to_vec(&json!([{"op": "add", "path": "/data/j", "value": "1"}])).unwrap();
    let request = http::Request::patch("/api/v1/namespaces/ns/configmaps/c")
        .header("content-type", "application/json-patch+json")
        .body(body)
        .unwrap();
    let patched: ConfigMap = client.request(request).await.unwrap();
    assert_eq!(patched.data.unwrap()["j"], "1");

    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "ns");
    let token = accounts.create_token_request("sa", &PostParams::default(), &TokenRequest::default()).await;
    assert_eq!(api_code(token.unwrap_err()), 404, "no such ServiceAccount");
    server.insert::<ServiceAccount>(&serde_json::from_value(json!({"metadata": {"name": "sa", "namespace": "ns"}})).unwrap());
    let token = accounts.create_token_request("sa", &PostParams::default(), &TokenRequest::default()).await.unwrap();
    assert_eq!(token.status.unwrap().token, "fake-token.ns.sa");

    let pod: Pod = server.insert(&serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"}})).unwrap());
    let recorder = Recorder::new(client, Reporter { controller: "test".into(), instance: None });
    let event = Event { type_: EventType::Normal, reason: "Tested".into(), note: None, action: "Test".into(), secondary: None };
    recorder.publish(&event, &pod.object_ref(&())).await.unwrap();
    recorder.publish(&event, &pod.object_ref(&())).await.unwrap();
    let events = server.all::<k8s_openapi::api::events::v1::Event>();
    assert_eq!(events.len(), 1, "the second is a patch of the first");
    assert_eq!(events[0].series.as_ref().map(|s| s.count), Some(2));
}

/// The crate's leader election against the fake: the Lease is taken once, guarded by its resourceVersion.
#[tokio::test]
async fn one_replica_takes_the_leader_lease_and_another_waits() {
    use crate::k8s::lease::{Fence, LeaderLease};
    let server = FakeApiServer::new();
    let (first, second) = (Fence::leased(Duration::from_secs(1)), Fence::leased(Duration::from_secs(1)));
    let lease = |identity: &str| LeaderLease::new(server.client(), "ops", "leader", identity, Duration::from_secs(15));
    lease("a").acquire(&first).await.unwrap();
    assert!(first.held());
    let waiting = tokio::time::timeout(Duration::from_millis(500), lease("b").acquire(&second)).await;
    assert!(waiting.is_err() && !second.held(), "b waits while a's Lease is fresh");
    let stored = server.get::<Lease>(Some("ops"), "leader").unwrap();
    assert_eq!(stored.spec.unwrap().holder_identity.as_deref(), Some("a"));
}
