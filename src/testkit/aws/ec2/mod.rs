//! EC2 instances, EBS volumes and snapshots. CreateSnapshots takes every attached data volume of an
//! instance but the excluded ones, copies the volumes' tags and adds the call's; snapshots stay
//! `pending` until the test completes them (or, with `complete_after_describes`, after that many
//! DescribeSnapshots), or end in `error` for a volume the test broke. Sizes: a snapshot holds its
//! volume's written bytes at creation; the bytes changed between two snapshots are the difference.
//! CreateSnapshots can be metered as AWS meters it (a token bucket per account and Region), answering
//! `RequestLimitExceeded` beyond it.

mod state;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;

use super::{AwsCall, AwsFault, Gate, Operation, answer, service_error};
use crate::aws::{AwsError, CreatedSnapshot, Result, SnapshotInfo, SnapshotState, Snapshots, VolumeInfo};
use crate::testkit::faults::Times;
use state::{Ec2, Meter, Volume, settle};

const GIB: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ec2Method {
    DescribeVolumes,
    InstanceVolumes,
    CreateSnapshots,
    DescribeSnapshots,
    FindSnapshotsByTag,
    FindSnapshotsWithTagKey,
    CompletedSnapshotsOfVolume,
    PendingSnapshots,
    DeleteSnapshot,
    SnapshotBlockBytes,
    ChangedBlockBytes,
}

impl Operation for Ec2Method {
    fn operation(self) -> &'static str {
        match self {
            Self::DescribeVolumes => "DescribeVolumes",
            Self::InstanceVolumes => "DescribeInstances",
            Self::CreateSnapshots => "CreateSnapshots",
            Self::DescribeSnapshots
            | Self::FindSnapshotsByTag
            | Self::FindSnapshotsWithTagKey
            | Self::CompletedSnapshotsOfVolume
            | Self::PendingSnapshots => "DescribeSnapshots",
            Self::DeleteSnapshot => "DeleteSnapshot",
            Self::SnapshotBlockBytes => "ListSnapshotBlocks",
            Self::ChangedBlockBytes => "ListChangedBlocks",
        }
    }
}

#[derive(Clone, Default)]
pub struct FakeSnapshots {
    state: Arc<Mutex<Ec2>>,
    gate: Gate<Ec2Method>,
}

impl FakeSnapshots {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Ec2> {
        self.state.lock().expect("fake EC2 state")
    }

    /// An instance with its own root volume (never snapshotted); returns the root volume's id.
    pub fn add_instance(&self, instance_id: &str, availability_zone: &str) -> String {
        let mut ec2 = self.lock();
        let root = ec2.new_id("vol");
        let info =
            VolumeInfo { volume_id: root.clone(), availability_zone: availability_zone.into(), size_gib: 8, instance_id: Some(instance_id.into()) };
        ec2.volumes.insert(root.clone(), Volume { info, tags: Vec::new(), written_bytes: GIB });
        ec2.instances.insert(instance_id.into(), root.clone());
        root
    }

    /// A new data volume, attached to `instance_id` if given, with 1 GiB written; returns its id.
    pub fn create_volume(&self, availability_zone: &str, size_gib: i64, instance_id: Option<&str>, tags: &[(&str, &str)]) -> String {
        let volume_id = self.lock().new_id("vol");
        let info = VolumeInfo {
            volume_id: volume_id.clone(),
            availability_zone: availability_zone.into(),
            size_gib,
            instance_id: instance_id.map(String::from),
        };
        self.add_volume(info, tags);
        volume_id
    }

    /// A data volume with the id given (attached when `info.instance_id` is set), with 1 GiB written.
    pub fn add_volume(&self, info: VolumeInfo, tags: &[(&str, &str)]) {
        let tags = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.lock().volumes.insert(info.volume_id.clone(), Volume { info, tags, written_bytes: GIB });
    }

    pub fn set_written_bytes(&self, volume_id: &str, bytes: u64) {
        if let Some(volume) = self.lock().volumes.get_mut(volume_id) {
            volume.written_bytes = bytes;
        }
    }

    /// A completed snapshot made before the test (an earlier backup, or someone else's).
    pub fn add_completed_snapshot(&self, volume_id: &str, tags: &[(&str, &str)]) -> String {
        let tags: Vec<_> = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.lock().add_snapshot(volume_id, SnapshotState::Completed, &tags)
    }

    /// A snapshot that is pending, as one of an earlier backup (or someone else's) still running.
    pub fn add_pending_snapshot(&self, volume_id: &str, tags: &[(&str, &str)]) -> String {
        let tags: Vec<_> = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.lock().add_snapshot(volume_id, SnapshotState::Pending, &tags)
    }

    /// From now on the snapshots of `volume_id` end in `error` (with `message`) instead of completing.
    pub fn break_volume(&self, volume_id: &str, message: &str) {
        self.lock().broken_volumes.insert(volume_id.into(), message.into());
    }

    /// Meters CreateSnapshots as AWS does: a bucket of `burst` calls refilled at `refill_per_second`;
    /// a call that finds it empty is refused with `RequestLimitExceeded` and does nothing.
    pub fn meter_create_snapshots(&self, burst: u32, refill_per_second: f64) {
        let burst = f64::from(burst);
        self.lock().meter = Some(Meter { burst, refill_per_second, tokens: burst, at: Instant::now() });
    }

    /// From now on a pending snapshot completes on its `n`th DescribeSnapshots (`None`: only when told).
    pub fn complete_after_describes(&self, n: Option<u32>) {
        self.lock().complete_after = n.map(|n| n.max(1));
    }

    /// The snapshot completes (or ends in `error`, if its volume is broken).
    pub fn complete(&self, snapshot_id: &str) {
        let mut ec2 = self.lock();
        let Ec2 { snapshots, broken_volumes, .. } = &mut *ec2;
        if let Some(s) = snapshots.get_mut(snapshot_id) {
            settle(s, broken_volumes);
        }
    }

    pub fn complete_all(&self) {
        let ids: Vec<String> = self.lock().snapshots.keys().cloned().collect();
        ids.iter().for_each(|id| self.complete(id));
    }

    /// The snapshot ends in `error`, as EBS reports a failed one.
    pub fn break_snapshot(&self, snapshot_id: &str, message: &str) {
        if let Some(s) = self.lock().snapshots.get_mut(snapshot_id) {
            s.info.state = SnapshotState::Error;
            s.info.state_message = Some(message.into());
        }
    }

    /// Every snapshot that exists, oldest first.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.lock().matching(|_| true)
    }

    pub fn fail(&self, method: Ec2Method, times: Times, fault: AwsFault) {
        self.gate.fail(method, times, fault);
    }

    /// As `fail`, for calls whose detail contains `detail` (CreateSnapshots: the instance id).
    pub fn fail_where(&self, method: Ec2Method, detail: &str, times: Times, fault: AwsFault) {
        self.gate.fail_where(method, detail, times, fault);
    }

    pub fn clear_faults(&self) {
        self.gate.clear();
    }

    pub fn calls(&self) -> Vec<AwsCall<Ec2Method>> {
        self.gate.calls()
    }

    pub fn calls_of(&self, method: Ec2Method) -> Vec<AwsCall<Ec2Method>> {
        self.calls().into_iter().filter(|c| c.method == method).collect()
    }
}

#[async_trait]
impl Snapshots for FakeSnapshots {
    /// As EC2: one unknown id fails the whole call.
    async fn describe_volumes(&self, volume_ids: &[String]) -> Result<Vec<VolumeInfo>> {
        let lost = self.gate.enter(Ec2Method::DescribeVolumes, volume_ids.join(",")).await?;
        let ec2 = self.lock();
        if let Some(missing) = volume_ids.iter().find(|id| !ec2.volumes.contains_key(*id)) {
            return Err(service_error("DescribeVolumes", "InvalidVolume.NotFound", format!("The volume '{missing}' does not exist.")));
        }
        answer(lost, volume_ids.iter().map(|id| ec2.volumes[id].info.clone()).collect())
    }

    async fn instance_volumes(&self, instance_id: &str) -> Result<Vec<String>> {
        let lost = self.gate.enter(Ec2Method::InstanceVolumes, instance_id.into()).await?;
        let ec2 = self.lock();
        let root = ec2.instances.get(instance_id).ok_or_else(|| AwsError::Unexpected(format!("EC2 instance {instance_id} not found")))?;
        let attached = ec2.volumes.values().filter(|v| v.info.instance_id.as_deref() == Some(instance_id) && &v.info.volume_id != root);
        answer(lost, attached.map(|v| v.info.volume_id.clone()).collect())
    }

    async fn create_snapshots(&self, instance_id: &str, exclude_volume_ids: &[String], tags: &[(String, String)]) -> Result<Vec<CreatedSnapshot>> {
        let lost = self.gate.enter(Ec2Method::CreateSnapshots, format!("{instance_id} excluding [{}]", exclude_volume_ids.join(","))).await?;
        let mut ec2 = self.lock();
        if ec2.meter.as_mut().is_some_and(|meter| !meter.admit()) {
            let message = "Request limit exceeded (the fake's CreateSnapshots meter is empty)".into();
            return Err(AwsError::Throttled { operation: "CreateSnapshots", code: "RequestLimitExceeded".into(), message });
        }
        let Some(root) = ec2.instances.get(instance_id).cloned() else {
            return Err(service_error("CreateSnapshots", "InvalidInstanceID.NotFound", format!("The instance ID '{instance_id}' does not exist")));
        };
        let volumes: Vec<String> = ec2
            .volumes
            .values()
            .filter(|v| {
                v.info.instance_id.as_deref() == Some(instance_id) && v.info.volume_id != root && !exclude_volume_ids.contains(&v.info.volume_id)
            })
            .map(|v| v.info.volume_id.clone())
            .collect();
        let created = volumes
            .into_iter()
            .map(|volume_id| CreatedSnapshot { snapshot_id: ec2.add_snapshot(&volume_id, SnapshotState::Pending, tags), volume_id })
            .collect();
        answer(lost, created)
    }

    /// Unknown ids are left out (what the real client's per-id fallback amounts to).
    async fn describe_snapshots(&self, snapshot_ids: &[String]) -> Result<Vec<SnapshotInfo>> {
        let lost = self.gate.enter(Ec2Method::DescribeSnapshots, snapshot_ids.join(",")).await?;
        let mut ec2 = self.lock();
        let Ec2 { snapshots, broken_volumes, complete_after, .. } = &mut *ec2;
        let mut found = Vec::new();
        for id in snapshot_ids {
            let Some(s) = snapshots.get_mut(id) else { continue };
            if let (Some(n), SnapshotState::Pending) = (*complete_after, s.info.state) {
                s.describes += 1;
                s.info.progress = (f64::from(s.describes) * 100.0 / f64::from(n)).min(100.0);
                if s.describes >= n {
                    settle(s, broken_volumes);
                }
            }
            found.push(s.info.clone());
        }
        answer(lost, found)
    }

    async fn find_snapshots_by_tag(&self, key: &str, value: &str) -> Result<Vec<SnapshotInfo>> {
        let lost = self.gate.enter(Ec2Method::FindSnapshotsByTag, format!("{key}={value}")).await?;
        answer(lost, self.lock().matching(|s| s.tags.iter().any(|(k, v)| k == key && v == value)))
    }

    async fn find_snapshots_with_tag_key(&self, key: &str) -> Result<Vec<SnapshotInfo>> {
        let lost = self.gate.enter(Ec2Method::FindSnapshotsWithTagKey, key.into()).await?;
        answer(lost, self.lock().matching(|s| s.tags.iter().any(|(k, _)| k == key)))
    }

    async fn completed_snapshots_of_volume(&self, volume_id: &str) -> Result<Vec<SnapshotInfo>> {
        let lost = self.gate.enter(Ec2Method::CompletedSnapshotsOfVolume, volume_id.into()).await?;
        answer(lost, self.lock().matching(|s| s.volume_id == volume_id && s.state == SnapshotState::Completed))
    }

    async fn pending_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let lost = self.gate.enter(Ec2Method::PendingSnapshots, String::new()).await?;
        answer(lost, self.lock().matching(|s| s.state == SnapshotState::Pending))
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        let lost = self.gate.enter(Ec2Method::DeleteSnapshot, snapshot_id.into()).await?;
        self.lock().snapshots.remove(snapshot_id);
        answer(lost, ())
    }

    async fn snapshot_block_bytes(&self, snapshot_id: &str) -> Result<u64> {
        let lost = self.gate.enter(Ec2Method::SnapshotBlockBytes, snapshot_id.into()).await?;
        let bytes = self.lock().snapshots.get(snapshot_id).map(|s| s.bytes);
        let bytes =
            bytes.ok_or_else(|| service_error("ListSnapshotBlocks", "ResourceNotFoundException", format!("snapshot {snapshot_id} not found")))?;
        answer(lost, bytes)
    }

    async fn changed_block_bytes(&self, first_snapshot_id: &str, second_snapshot_id: &str) -> Result<u64> {
        let lost = self.gate.enter(Ec2Method::ChangedBlockBytes, format!("{first_snapshot_id}..{second_snapshot_id}")).await?;
        let ec2 = self.lock();
        let bytes = |id: &str| {
            let missing = || service_error("ListChangedBlocks", "ResourceNotFoundException", format!("snapshot {id} not found"));
            ec2.snapshots.get(id).map(|s| s.bytes).ok_or_else(missing)
        };
        let (first, second) = (bytes(first_snapshot_id)?, bytes(second_snapshot_id)?);
        answer(lost, second.saturating_sub(first))
    }
}
