//! What EC2 holds: volumes, instances, snapshots, and the meter CreateSnapshots is refused by.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use crate::aws::{SnapshotInfo, SnapshotState, VolumeInfo};

pub struct Volume {
    pub info: VolumeInfo,
    pub tags: Vec<(String, String)>,
    pub written_bytes: u64,
}

pub struct Snapshot {
    pub info: SnapshotInfo,
    /// Creation order (start times may tie).
    pub seq: u64,
    pub bytes: u64,
    pub describes: u32,
}

/// AWS's own token bucket for CreateSnapshots.
pub struct Meter {
    pub burst: f64,
    pub refill_per_second: f64,
    pub tokens: f64,
    pub at: Instant,
}

impl Meter {
    /// Takes a token if there is one.
    pub fn admit(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.refill_per_second).min(self.burst);
        self.at = now;
        let admitted = self.tokens >= 1.0;
        if admitted {
            self.tokens -= 1.0;
        }
        admitted
    }
}

#[derive(Default)]
pub struct Ec2 {
    pub volumes: BTreeMap<String, Volume>,
    /// instance id -> root volume id.
    pub instances: BTreeMap<String, String>,
    pub snapshots: BTreeMap<String, Snapshot>,
    pub next_id: u64,
    pub complete_after: Option<u32>,
    /// volume id -> the state message its snapshots end in `error` with.
    pub broken_volumes: BTreeMap<String, String>,
    pub meter: Option<Meter>,
}

/// A pending snapshot reaches its end: `completed`, or `error` if its volume is broken.
pub fn settle(snapshot: &mut Snapshot, broken_volumes: &BTreeMap<String, String>) {
    match broken_volumes.get(&snapshot.info.volume_id) {
        Some(message) => {
            snapshot.info.state = SnapshotState::Error;
            snapshot.info.state_message = Some(message.clone());
        }
        None => {
            snapshot.info.state = SnapshotState::Completed;
            snapshot.info.progress = 100.0;
        }
    }
}

impl Ec2 {
    pub fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{:017x}", self.next_id)
    }

    pub fn add_snapshot(&mut self, volume_id: &str, state: SnapshotState, tags: &[(String, String)]) -> String {
        let snapshot_id = self.new_id("snap");
        let volume = &self.volumes[volume_id];
        let mut all_tags = volume.tags.clone();
        all_tags.retain(|(k, _)| !tags.iter().any(|(key, _)| key == k));
        all_tags.extend(tags.iter().cloned());
        let info = SnapshotInfo {
            snapshot_id: snapshot_id.clone(),
            volume_id: volume_id.into(),
            progress: if state == SnapshotState::Completed { 100.0 } else { 0.0 },
            state,
            full_size_bytes: None,
            volume_size_gib: volume.info.size_gib,
            start_time: Some(SystemTime::now()),
            state_message: None,
            tags: all_tags,
        };
        let snapshot = Snapshot { info, seq: self.next_id, bytes: volume.written_bytes, describes: 0 };
        self.snapshots.insert(snapshot_id.clone(), snapshot);
        snapshot_id
    }

    pub fn matching(&self, keep: impl Fn(&SnapshotInfo) -> bool) -> Vec<SnapshotInfo> {
        let mut found: Vec<&Snapshot> = self.snapshots.values().filter(|s| keep(&s.info)).collect();
        found.sort_by_key(|s| s.seq);
        found.into_iter().map(|s| s.info.clone()).collect()
    }
}
