//! Prepares the local stack (`tests/harness/up`) for `scripts/demo`: namespace `tidb-cluster` with a fake
//! TidbCluster `basic` (3 TiKV stores x 2 EBS volumes, registered in PD and backed by emulated EC2 volumes),
//! the S3 bucket `my-bucket`, the access-key Secret `s3-secret`, and snapshots that stay `pending` for a few
//! seconds so the Backup's progress is visible. This is what manifests/backup/backup-aws-s3.yaml expects.
//!
//! Usage: HARNESS_ENV=<env file printed by tests/harness/up> cargo run --example demo_fixture
//! Running it again on the same stack keeps what exists (the TidbCluster is only created once).

// The e2e suites' support; an example uses only part of it.
#[allow(dead_code)]
#[path = "../tests/e2e/support/mod.rs"]
mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use support::{Stack, TidbClusterFixture};

const NAMESPACE: &str = "tidb-cluster";
const CLUSTER: &str = "basic";
const BUCKET: &str = "my-bucket";
const SECRET: &str = "s3-secret";
const STORES: usize = 3;
const VOLUMES_PER_STORE: usize = 2;
const SNAPSHOT_PENDING_SECONDS: f64 = 3.0;

#[tokio::main]
async fn main() {
    let stack = Stack::get();
    let client = stack.kube_client().await;

    stack.ensure_namespace(NAMESPACE).await;
    println!("namespace {NAMESPACE}: ready");

    let gvk = GroupVersionKind::gvk("pingcap.com", "v1alpha1", "TidbCluster");
    let clusters: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &ApiResource::from_gvk(&gvk));
    match clusters.get_opt(CLUSTER).await.expect("reading the TidbCluster") {
        Some(_) => println!("TidbCluster {NAMESPACE}/{CLUSTER}: exists, kept"),
        None => {
            let fixture = TidbClusterFixture::create(stack, NAMESPACE, CLUSTER, STORES, VOLUMES_PER_STORE).await;
            println!(
                "TidbCluster {NAMESPACE}/{CLUSTER}: {} TiKV stores (ids {:?}), {} EBS volumes in {}",
                fixture.tikv.len(),
                fixture.store_ids,
                fixture.tikv_volume_ids().len(),
                fixture.az
            );
            for m in &fixture.tikv {
                println!("  {} on {} ({}): {}", m.pod, m.node, m.instance_id, m.volume_ids().join(", "));
            }
        }
    }

    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
    let location = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from(stack.aws_region.as_str())).build();
    match stack.s3_client().await.create_bucket().bucket(BUCKET).create_bucket_configuration(location).send().await {
        Ok(_) => println!("S3 bucket {BUCKET}: created in {}", stack.aws_region),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()) => {
            println!("S3 bucket {BUCKET}: exists")
        }
        Err(e) => panic!("CreateBucket {BUCKET}: {e:?}"),
    }

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": SECRET},
        "stringData": {"access_key": "AKIDDEMOEXAMPLE", "secret_key": "demo-secret-key"},
    }))
    .expect("Secret object");
    match Api::<Secret>::namespaced(client.clone(), NAMESPACE).create(&PostParams::default(), &secret).await {
        Ok(_) => println!("Secret {NAMESPACE}/{SECRET}: created (access_key, secret_key)"),
        Err(kube::Error::Api(e)) if e.code == 409 => println!("Secret {NAMESPACE}/{SECRET}: exists"),
        Err(e) => panic!("creating Secret {NAMESPACE}/{SECRET}: {e}"),
    }

    stack.emulator().set_snapshot_pending_seconds(SNAPSHOT_PENDING_SECONDS).await;
    println!("AWS emulator: new snapshots stay pending {SNAPSHOT_PENDING_SECONDS}s");
}
