//! The backup's sizes, as BR reports them: full = the bytes of every snapshot's blocks (EC2's
//! `FullSnapshotSizeInBytes` when it has one, else the EBS direct API's block list); incremental = the
//! blocks changed since the volume's previous completed snapshot. Each is computed only when
//! `calcSizeLevel` asks for it, and each on its own: a failing incremental figure keeps the full one.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::context::{AwsClients, Context};
use super::record::BackupRecord;
use crate::api::CalcSizeLevel;
use crate::aws::AwsError;
use crate::aws::retry::retry_throttled;

/// `Ok(None)`: not asked for.
pub struct Sizes {
    pub full: Result<Option<u64>, AwsError>,
    pub incremental: Result<Option<u64>, AwsError>,
}

impl Sizes {
    pub fn unavailable(why: &str) -> Self {
        let error = || Err(AwsError::Credentials(why.to_string()));
        Self { full: error(), incremental: error() }
    }
}

pub async fn measure(ctx: &Context, aws: &AwsClients, record: &BackupRecord, level: CalcSizeLevel) -> Sizes {
    if !level.full() && !level.incremental() {
        return Sizes { full: Ok(None), incremental: Ok(None) };
    }
    let ids: Vec<String> = record.snapshots.values().cloned().collect();
    let described = match aws.snapshots.describe_snapshots(&ids).await {
        Ok(described) => described,
        Err(e) => return Sizes { full: Err(e.clone()), incremental: Err(e) },
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let backoff = ctx.settings.throttle_backoff_max;
    let per_volume = described.into_iter().map(|snapshot| {
        let snapshots = aws.snapshots.clone();
        let metrics = ctx.metrics.clone();
        async move {
            let full = match snapshot.full_size_bytes {
                Some(bytes) => Ok(bytes),
                None => {
                    retry_throttled(deadline, backoff, &metrics, "ListSnapshotBlocks", || snapshots.snapshot_block_bytes(&snapshot.snapshot_id)).await
                }
            };
            if !level.incremental() {
                return (full, Ok(0));
            }
            let incremental = async {
                let history = retry_throttled(deadline, backoff, &metrics, "DescribeSnapshots", || {
                    snapshots.completed_snapshots_of_volume(&snapshot.volume_id)
                })
                .await?;
                let previous = history
                    .iter()
                    .position(|s| s.snapshot_id == snapshot.snapshot_id)
                    .and_then(|p| p.checked_sub(1))
                    .map(|p| history[p].snapshot_id.clone());
                match previous {
                    Some(previous) => {
                        retry_throttled(deadline, backoff, &metrics, "ListChangedBlocks", || {
                            snapshots.changed_block_bytes(&previous, &snapshot.snapshot_id)
                        })
                        .await
                    }
                    // The first snapshot of a volume: everything in it is new.
                    None => full.clone(),
                }
            }
            .await;
            (full, incremental)
        }
    });
    type Bytes = Result<u64, AwsError>;
    let results: Vec<(Bytes, Bytes)> = futures::stream::iter(per_volume).buffer_unordered(ctx.settings.size_concurrency.max(1)).collect().await;
    let total = |asked: bool, pick: fn(&(Bytes, Bytes)) -> &Bytes| -> Result<Option<u64>, AwsError> {
        if !asked {
            return Ok(None);
        }
        results.iter().map(pick).try_fold(0u64, |sum, r| r.clone().map(|b| sum + b)).map(Some)
    };
    Sizes { full: total(level.full(), |r| &r.0), incremental: total(level.incremental(), |r| &r.1) }
}
