use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_ec2::types::{
    CopyTagsFromSource, Filter, InstanceSpecification, ResourceType, Snapshot, SnapshotState as Ec2State, Tag, TagSpecification,
};

use super::{AwsError, CreatedSnapshot, Result, SnapshotInfo, SnapshotState, Snapshots, VolumeInfo};

/// AWS documents no more than 1000 ids per DescribeSnapshots call; we stay well below.
const DESCRIBE_BATCH: usize = 200;
const EBS_PAGE: i32 = 10_000;

pub struct Ec2Snapshots {
    ec2: aws_sdk_ec2::Client,
    ebs: aws_sdk_ebs::Client,
}

impl Ec2Snapshots {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self { ec2: aws_sdk_ec2::Client::new(config), ebs: aws_sdk_ebs::Client::new(config) }
    }

    /// This account's snapshots matching `filter`, every page.
    /// This account's snapshots matching every filter, all pages.
    async fn snapshots_matching(&self, filters: Vec<Filter>) -> Result<Vec<SnapshotInfo>> {
        let request = self.ec2.describe_snapshots().owner_ids("self").set_filters(Some(filters)).max_results(1000);
        let mut pages = request.into_paginator().send();
        let mut snapshots = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::from_sdk("DescribeSnapshots", e))?;
            snapshots.extend(page.snapshots().iter().map(to_info));
        }
        Ok(snapshots)
    }
}

fn to_info(snapshot: &Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: snapshot.snapshot_id().unwrap_or_default().to_string(),
        volume_id: snapshot.volume_id().unwrap_or_default().to_string(),
        state: match snapshot.state() {
            Some(Ec2State::Pending) => SnapshotState::Pending,
            Some(Ec2State::Completed) => SnapshotState::Completed,
            Some(Ec2State::Error) => SnapshotState::Error,
            _ => SnapshotState::Other,
        },
        progress: parse_progress(snapshot.progress()),
        full_size_bytes: snapshot.full_snapshot_size_in_bytes().and_then(|b| u64::try_from(b).ok()),
        volume_size_gib: snapshot.volume_size().unwrap_or(0) as i64,
        start_time: snapshot.start_time().and_then(|t| SystemTime::try_from(*t).ok()),
        state_message: snapshot.state_message().map(str::to_string),
        tags: snapshot.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect(),
    }
}

/// "37%" -> 37.0; missing or odd -> 0.
pub fn parse_progress(progress: Option<&str>) -> f64 {
    progress.and_then(|p| p.trim().trim_end_matches('%').parse::<f64>().ok()).unwrap_or(0.0)
}

fn ebs_error<E, R>(operation: &'static str, err: aws_sdk_ebs::error::SdkError<E, R>) -> AwsError
where
    E: aws_sdk_ebs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    AwsError::from_sdk(operation, err)
}

#[async_trait]
impl Snapshots for Ec2Snapshots {
    async fn describe_volumes(&self, volume_ids: &[String]) -> Result<Vec<VolumeInfo>> {
        let mut volumes = Vec::new();
        for chunk in volume_ids.chunks(DESCRIBE_BATCH) {
            let mut pages = self.ec2.describe_volumes().set_volume_ids(Some(chunk.to_vec())).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| AwsError::from_sdk("DescribeVolumes", e))?;
                volumes.extend(page.volumes().iter().map(|v| VolumeInfo {
                    volume_id: v.volume_id().unwrap_or_default().to_string(),
                    availability_zone: v.availability_zone().unwrap_or_default().to_string(),
                    size_gib: v.size().unwrap_or(0) as i64,
                    instance_id: v.attachments().iter().find_map(|a| a.instance_id().map(str::to_string)),
                }));
            }
        }
        Ok(volumes)
    }

    async fn instance_volumes(&self, instance_id: &str) -> Result<Vec<String>> {
        let reply = self.ec2.describe_instances().instance_ids(instance_id).send().await.map_err(|e| AwsError::from_sdk("DescribeInstances", e))?;
        let instance = reply
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id))
            .ok_or_else(|| AwsError::Unexpected(format!("EC2 instance {instance_id} not found")))?;
        let root = instance.root_device_name();
        Ok(instance
            .block_device_mappings()
            .iter()
            .filter(|m| root.is_none() || m.device_name() != root)
            .filter_map(|m| m.ebs()?.volume_id().map(str::to_string))
            .collect())
    }

    async fn create_snapshots(&self, instance_id: &str, exclude_volume_ids: &[String], tags: &[(String, String)]) -> Result<Vec<CreatedSnapshot>> {
        let mut spec = InstanceSpecification::builder().instance_id(instance_id).exclude_boot_volume(true);
        if !exclude_volume_ids.is_empty() {
            spec = spec.set_exclude_data_volume_ids(Some(exclude_volume_ids.to_vec()));
        }
        let tag_spec = TagSpecification::builder()
            .resource_type(ResourceType::Snapshot)
            .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
            .build();
        let reply = self
            .ec2
            .create_snapshots()
            .instance_specification(spec.build())
            .copy_tags_from_source(CopyTagsFromSource::Volume)
            .tag_specifications(tag_spec)
            .description(format!("tidb-ebs-backup of {instance_id}"))
            // CreateSnapshots has no idempotency token: the SDK must never resend it on its own. Retries are
            // the operator's, after a look-up by tag.
            .customize()
            .config_override(aws_sdk_ec2::config::Builder::new().retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateSnapshots", e))?;
        reply
            .snapshots()
            .iter()
            .map(|s| match (s.snapshot_id(), s.volume_id()) {
                (Some(snapshot_id), Some(volume_id)) => {
                    Ok(CreatedSnapshot { snapshot_id: snapshot_id.to_string(), volume_id: volume_id.to_string() })
                }
                _ => Err(AwsError::Unexpected(format!("CreateSnapshots on {instance_id} returned an item without ids"))),
            })
            .collect()
    }

    async fn describe_snapshots(&self, snapshot_ids: &[String]) -> Result<Vec<SnapshotInfo>> {
        let mut snapshots = Vec::new();
        for chunk in snapshot_ids.chunks(DESCRIBE_BATCH) {
            match self.ec2.describe_snapshots().set_snapshot_ids(Some(chunk.to_vec())).send().await {
                Ok(reply) => snapshots.extend(reply.snapshots().iter().map(to_info)),
                // One missing id fails the whole call; fall back to a tag-free per-id look-up for this chunk.
                Err(e) => {
                    let err = AwsError::from_sdk("DescribeSnapshots", e);
                    if err.code() != Some("InvalidSnapshot.NotFound") {
                        return Err(err);
                    }
                    for id in chunk {
                        match self.ec2.describe_snapshots().snapshot_ids(id).send().await {
                            Ok(reply) => snapshots.extend(reply.snapshots().iter().map(to_info)),
                            Err(e) => {
                                let err = AwsError::from_sdk("DescribeSnapshots", e);
                                if err.code() != Some("InvalidSnapshot.NotFound") {
                                    return Err(err);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(snapshots)
    }

    async fn find_snapshots_by_tag(&self, key: &str, value: &str) -> Result<Vec<SnapshotInfo>> {
        self.snapshots_matching(vec![Filter::builder().name(format!("tag:{key}")).values(value).build()]).await
    }

    async fn find_snapshots_with_tag_key(&self, key: &str) -> Result<Vec<SnapshotInfo>> {
        self.snapshots_matching(vec![Filter::builder().name("tag-key").values(key).build()]).await
    }

    async fn completed_snapshots_of_volume(&self, volume_id: &str) -> Result<Vec<SnapshotInfo>> {
        let volume = Filter::builder().name("volume-id").values(volume_id).build();
        let mut snapshots = self.snapshots_matching(vec![volume, Filter::builder().name("status").values("completed").build()]).await?;
        snapshots.sort_by_key(|s| s.start_time);
        Ok(snapshots)
    }

    async fn pending_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.snapshots_matching(vec![Filter::builder().name("status").values("pending").build()]).await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        match self.ec2.delete_snapshot().snapshot_id(snapshot_id).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = AwsError::from_sdk("DeleteSnapshot", e);
                if err.code() == Some("InvalidSnapshot.NotFound") { Ok(()) } else { Err(err) }
            }
        }
    }

    async fn snapshot_block_bytes(&self, snapshot_id: &str) -> Result<u64> {
        let mut total = 0u64;
        let mut token = None;
        loop {
            let reply = self
                .ebs
                .list_snapshot_blocks()
                .snapshot_id(snapshot_id)
                .max_results(EBS_PAGE)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| ebs_error("ListSnapshotBlocks", e))?;
            total += reply.blocks().len() as u64 * reply.block_size().unwrap_or(0) as u64;
            token = reply.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                return Ok(total);
            }
        }
    }

    async fn changed_block_bytes(&self, first_snapshot_id: &str, second_snapshot_id: &str) -> Result<u64> {
        let mut total = 0u64;
        let mut token = None;
        loop {
            let reply = self
                .ebs
                .list_changed_blocks()
                .first_snapshot_id(first_snapshot_id)
                .second_snapshot_id(second_snapshot_id)
                .max_results(EBS_PAGE)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| ebs_error("ListChangedBlocks", e))?;
            let block_size = reply.block_size().unwrap_or(0) as u64;
            total += reply.changed_blocks().iter().filter(|b| b.second_block_token().is_some()).count() as u64 * block_size;
            token = reply.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_strings() {
        assert_eq!(parse_progress(Some("37%")), 37.0);
        assert_eq!(parse_progress(Some("100%")), 100.0);
        assert_eq!(parse_progress(Some("")), 0.0);
        assert_eq!(parse_progress(None), 0.0);
    }
}
