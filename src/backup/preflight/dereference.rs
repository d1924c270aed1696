//! All that preflight reads, into one `ClusterView`: the TidbCluster, PD (version, stores, resolved ts),
//! the pods' volumes, the bucket and prefix, and EC2's view of the volumes and their instances.
//! Only an answer that cannot be had fails here; what the answers mean is `validate`'s.

use futures::StreamExt;

use super::validate::{self, ClusterView};
use crate::api::tidbcluster::ClusterFacts;
use crate::backup::context::AwsClients;
use crate::backup::meta;
use crate::backup::record::Failure;
use crate::backup::step::BackupRun;
use crate::k8s::volumes::resolve_volumes;

/// DescribeInstances calls at once (AWS allows bursts of 100 for describe calls).
const LOOKUP_CONCURRENCY: usize = 16;

pub async fn dereference(cx: &mut BackupRun<'_>) -> Result<Result<(ClusterView, AwsClients), Failure>, kube::Error> {
    let cluster = cx.journal.backup.spec.br.cluster.clone();
    let namespace = cx.journal.backup.cluster_namespace();
    let facts = cx.clients.tidbcluster(&namespace, &cluster).await?.map(|tc| ClusterFacts::from_object(&tc));
    if let Err(f) = validate::tidbcluster(&namespace, &cluster, facts.as_ref()) {
        return Ok(Err(f));
    }
    let facts = facts.expect("validated");
    Ok(read(cx, namespace, cluster, facts).await)
}

async fn read(cx: &mut BackupRun<'_>, namespace: String, cluster: String, facts: ClusterFacts) -> Result<(ClusterView, AwsClients), Failure> {
    let pd_url = cx.ctx.settings.pd_url(&cluster, &namespace);
    let pd = cx.clients.pd(&cluster, &namespace, facts.tls_cluster, &pd_url).await?;
    let version = pd.cluster_version().await?;
    let stores = pd.stores().await?;
    let min_resolved_ts = pd.min_resolved_ts().await?;
    let volumes = resolve_volumes(&cx.ctx.client, &namespace, &cluster, &facts).await?;
    let aws = cx.clients.aws(&cx.journal.backup).await?;
    let location = aws.meta.location();
    let bucket_error = aws.meta.check_bucket().await.err().map(|e| e.to_string());
    let meta_exists = bucket_error.is_none() && aws.meta.exists(meta::META_FILE).await?;
    let volume_ids: Vec<String> = volumes
        .tikv
        .iter()
        .flat_map(|s| s.volumes.iter().map(|v| v.volume_id.clone()))
        .chain(volumes.pd.iter().map(|v| v.volume_id.clone()))
        .collect();
    let described = if bucket_error.is_none() { aws.snapshots.describe_volumes(&volume_ids).await? } else { Vec::new() };
    let pending_snapshots = if bucket_error.is_none() { aws.snapshots.pending_snapshots().await?.len() } else { 0 };
    let mut view = ClusterView {
        namespace,
        cluster,
        pd_url,
        version,
        stores,
        min_resolved_ts,
        volumes,
        location,
        bucket_error,
        meta_exists,
        described,
        attached: Default::default(),
        pending_snapshots,
    };
    let lookups = view.tikv_instances().into_iter().map(|instance_id| {
        let snapshots = aws.snapshots.clone();
        async move { snapshots.instance_volumes(&instance_id).await.map(|attached| (instance_id, attached)) }
    });
    let attached: Vec<_> = futures::stream::iter(lookups).buffer_unordered(LOOKUP_CONCURRENCY).collect().await;
    view.attached = attached.into_iter().collect::<Result<_, _>>()?;
    Ok((view, aws))
}
