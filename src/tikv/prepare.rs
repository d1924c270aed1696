//! Preparing a cluster's stores for the snapshots, as BR's `prepare_snap` does: a lease on every store,
//! then WaitApply for every region at its leader until all have applied and together cover the keyspace
//! (regions that moved, split or lost their leader are listed again and retried). The lease is then kept
//! by a task of its own until [`Prepared::finish`]; anything that ends a stream or a lease early makes
//! [`Prepared::check`] fail, so no snapshot is taken of a store that may have left the prepared state.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::SelectAll;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::proto::{self, PrepareSnapshotBackupEventType as EventType, PrepareSnapshotBackupRequestType as RequestType};
use super::{PrepareRequest, PrepareResponse, Tikv, TikvError};
use crate::pd::{Pd, Region};

/// How long to wait before asking again for regions that failed (BR: 5 s, but in the pause window).
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// How long Finish may take before the stream is dropped (the lease then lapses on its own).
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct StoreAddress {
    pub id: u64,
    pub address: String,
}

/// The prepared stores: their lease kept alive until `finish`.
pub struct Prepared {
    stores: Vec<(u64, mpsc::Sender<PrepareRequest>)>,
    broken: Arc<Mutex<Option<String>>>,
    /// Reads every store's answers after the wait (see `watch_streams`).
    watch: JoinHandle<()>,
    /// Renews the leases (see `renew_leases`).
    renew: JoinHandle<()>,
    wanted: Wanted,
    /// How many streams have ended.
    ends: tokio::sync::watch::Receiver<usize>,
    /// How long waiting for every region to apply took.
    pub wait_apply: Duration,
    pub regions: usize,
}

/// Asked before each renewal: a prepare nobody wants any more is finished, not renewed.
type Wanted = Arc<Mutex<Option<Box<dyn Fn() -> bool + Send>>>>;

type Events = SelectAll<futures::stream::BoxStream<'static, (u64, Option<Result<PrepareResponse, tonic::Status>>)>>;

/// Opens a lease on every store, waits until every region has applied, and keeps the lease.
/// `limit` bounds the whole wait (it is part of the pause window).
pub async fn prepare(tikv: &dyn Tikv, pd: &dyn Pd, stores: &[StoreAddress], lease: Duration, limit: Duration) -> Result<Prepared, TikvError> {
    let deadline = Instant::now() + limit;
    let lease_seconds = lease.as_secs().max(1);
    let mut senders = Vec::new();
    let mut events: Events = SelectAll::new();
    let opened = futures::future::join_all(stores.iter().map(|s| open_with_lease(tikv, s, lease_seconds))).await;
    let mut failed = None;
    for (store, opened) in stores.iter().zip(opened) {
        match opened {
            Ok((sender, responses)) => {
                senders.push((store.id, sender));
                // A stream's end shows up as `(store, None)`.
                let id = store.id;
                events.push(responses.map(move |r| (id, Some(r))).chain(futures::stream::once(async move { (id, None) })).boxed());
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        tokio::spawn(abandon(senders, events));
        return Err(e);
    }
    let started = Instant::now();
    tracing::debug!(stores = senders.len(), opened_ms = (deadline - limit).elapsed().as_millis() as u64, "TiKV prepare streams open");
    let regions = match wait_apply_all(pd, &senders, &mut events, deadline, limit).await {
        Ok(regions) => regions,
        Err(e) => {
            tokio::spawn(abandon(senders, events));
            return Err(e);
        }
    };
    let wait_apply = started.elapsed();
    tracing::info!(regions, wait_apply_ms = wait_apply.as_millis() as u64, "TiKV regions applied");
    let broken = Arc::new(Mutex::new(None));
    let (ended, ends) = tokio::sync::watch::channel(0usize);
    let watch = tokio::spawn(watch_streams(events, broken.clone(), ended));
    let wanted: Wanted = Arc::new(Mutex::new(None));
    let renew = tokio::spawn(renew_leases(senders.clone(), lease, broken.clone(), wanted.clone()));
    Ok(Prepared { stores: senders, broken, watch, renew, ends, wanted, wait_apply, regions })
}

/// WaitApply for every region at its leader, again for those that fail, until all have applied and
/// cover the keyspace; the number of regions.
async fn wait_apply_all(
    pd: &dyn Pd,
    senders: &[(u64, mpsc::Sender<PrepareRequest>)],
    events: &mut Events,
    deadline: Instant,
    limit: Duration,
) -> Result<usize, TikvError> {
    let ours: std::collections::HashSet<u64> = senders.iter().map(|(id, _)| *id).collect();
    let mut applied: HashMap<u64, (u64, u64)> = HashMap::new();
    loop {
        let regions = pd.regions().await.map_err(|e| TikvError::Pd(e.to_string()))?;
        let mut pending: BTreeMap<u64, Vec<proto::Region>> = BTreeMap::new();
        let mut leaderless = Vec::new();
        for region in &regions {
            match region.leader_store {
                // Another cluster's store (only on a test stack, where clusters share one PD).
                Some(leader) if !ours.contains(&leader) => {}
                Some(_) if applied.get(&region.id) == Some(&(region.conf_ver, region.version)) => {}
                Some(leader) => pending.entry(leader).or_default().push(to_proto(region)),
                None => leaderless.push(region.id),
            }
        }
        let complete_listing = leaderless.is_empty() && covers_keyspace(&regions);
        if pending.is_empty() && complete_listing {
            return Ok(applied.len());
        }
        let mut failed = !complete_listing;
        let mut inflight: HashMap<u64, (u64, u64)> = HashMap::new();
        for (store, list) in pending {
            for r in &list {
                inflight.insert(r.id, r.region_epoch.as_ref().map_or((0, 0), |e| (e.conf_ver, e.version)));
            }
            let sender = &senders.iter().find(|(id, _)| *id == store).expect("a sender per store").1;
            let request = PrepareRequest { ty: RequestType::WaitApply as i32, regions: list, lease_in_seconds: 0 };
            sender.send(request).await.map_err(|_| TikvError::Stream { store, message: "the stream closed".into() })?;
        }
        while !inflight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(next) = tokio::time::timeout(left, events.next()).await else {
                return Err(timeout(limit, &inflight));
            };
            let Some((store, event)) = next else { return Err(TikvError::Stream { store: 0, message: "every stream ended".into() }) };
            let response = match event {
                None => return Err(TikvError::Stream { store, message: "TiKV closed the stream".into() }),
                Some(Err(status)) => return Err(stream_error(store, status)),
                Some(Ok(response)) => response,
            };
            match EventType::try_from(response.ty) {
                Ok(EventType::WaitApplyDone) => {
                    let Some(region) = response.region else { continue };
                    let epoch = region.region_epoch.as_ref().map_or((0, 0), |e| (e.conf_ver, e.version));
                    if inflight.get(&region.id) != Some(&epoch) {
                        continue; // an answer to an earlier request
                    }
                    inflight.remove(&region.id);
                    match response.error {
                        None => _ = applied.insert(region.id, epoch),
                        Some(error) => {
                            failed = true;
                            tracing::info!(store, region = region.id, error = %error.message, "a region must be waited on again");
                        }
                    }
                }
                Ok(EventType::UpdateLeaseResult) if !response.last_lease_is_valid => return Err(TikvError::LeaseLapsed { store }),
                Ok(EventType::UpdateLeaseResult) => {}
                Err(_) => return Err(TikvError::Stream { store, message: format!("unknown event type {}", response.ty) }),
            }
        }
        if !failed {
            // Every region of a listing without holes has applied.
            return Ok(applied.len());
        }
        if Instant::now() + RETRY_BACKOFF >= deadline {
            let pending = format!("regions that kept failing or a hole in the keyspace ({} regions listed)", regions.len());
            return Err(TikvError::WaitApplyTimeout { seconds: limit.as_secs(), pending });
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
}

/// A prepare given up half-way: every opened store is told Finish at once rather than left to lapse.
async fn abandon(senders: Vec<(u64, mpsc::Sender<PrepareRequest>)>, mut events: Events) {
    for (_, sender) in &senders {
        let _ = sender.send(finish_request()).await;
    }
    let _ = tokio::time::timeout(FINISH_TIMEOUT, async { while events.next().await.is_some() {} }).await;
}

impl Prepared {
    /// From now on the lease is renewed only while `wanted` says so; then every store is told Finish.
    pub fn renew_while(&self, wanted: impl Fn() -> bool + Send + 'static) {
        *self.wanted.lock().expect("wanted") = Some(Box::new(wanted));
    }

    /// Err when a store may have left the prepared state (a lapsed lease, a stream that ended).
    pub fn check(&self) -> Result<(), String> {
        match self.broken.lock().expect("prepare state").clone() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Ends the prepared state on every store at once: Finish, then the streams' end (bounded; a store
    /// that does not answer leaves it when its lease lapses).
    pub async fn finish(self) {
        self.renew.abort();
        *self.broken.lock().expect("prepare state") = Some("finished".into());
        for (store, sender) in &self.stores {
            if sender.send(finish_request()).await.is_err() {
                tracing::info!(store, "the prepare stream was already closed; its lease lapses on its own");
            }
        }
        let all = self.stores.len();
        let mut ends = self.ends.clone();
        let finishing = Instant::now();
        let ended = tokio::time::timeout(FINISH_TIMEOUT, ends.wait_for(|n| *n >= all)).await;
        tracing::info!(ms = finishing.elapsed().as_millis() as u64, "TiKV prepare finished");
        if ended.is_err() {
            tracing::warn!("not every TiKV store closed its prepare stream after Finish; their leases lapse on their own");
        }
    }
}

impl Drop for Prepared {
    /// Dropped without `finish`: the streams close and each store's lease lapses on its own.
    fn drop(&mut self) {
        self.watch.abort();
        self.renew.abort();
    }
}

async fn open_with_lease(
    tikv: &dyn Tikv,
    store: &StoreAddress,
    lease_seconds: u64,
) -> Result<(mpsc::Sender<PrepareRequest>, futures::stream::BoxStream<'static, Result<PrepareResponse, tonic::Status>>), TikvError> {
    let mut stream = tikv.open(store.id, &store.address).await?;
    stream
        .requests
        .send(lease_request(lease_seconds))
        .await
        .map_err(|_| TikvError::Stream { store: store.id, message: "the stream closed".into() })?;
    // The first answer is the lease's (whether an earlier lease was valid is not asked, as in BR).
    match tokio::time::timeout(Duration::from_secs(10), stream.responses.next()).await {
        Err(_) => Err(TikvError::Stream { store: store.id, message: "no answer to the lease within 10s".into() }),
        Ok(None) => Err(TikvError::Stream { store: store.id, message: "TiKV closed the stream".into() }),
        Ok(Some(Err(status))) => Err(stream_error(store.id, status)),
        Ok(Some(Ok(r))) if r.ty == EventType::UpdateLeaseResult as i32 => Ok((stream.requests, stream.responses)),
        Ok(Some(Ok(r))) => Err(TikvError::Stream { store: store.id, message: format!("answered the lease with event type {}", r.ty) }),
    }
}

/// After the wait: every answer is watched; a lapsed lease, an error or an early end breaks the prepare.
async fn watch_streams(mut events: Events, broken: Arc<Mutex<Option<String>>>, ended: tokio::sync::watch::Sender<usize>) {
    while let Some((store, event)) = events.next().await {
        let why = match event {
            None => {
                ended.send_modify(|n| *n += 1);
                Some(format!("TiKV store {store} closed its prepare stream"))
            }
            Some(Err(status)) => Some(stream_error(store, status).to_string()),
            Some(Ok(r)) if r.ty == EventType::UpdateLeaseResult as i32 && !r.last_lease_is_valid => {
                Some(TikvError::LeaseLapsed { store }.to_string())
            }
            Some(Ok(_)) => None,
        };
        if let Some(why) = why {
            let mut broken = broken.lock().expect("prepare state");
            if broken.is_none() {
                tracing::warn!(%why, "a store may have left the prepared state");
                *broken = Some(why);
            }
        }
    }
}

/// Renews every store's lease each quarter of it (as BR); a store that cannot be told breaks the prepare.
/// Once the prepare is no longer wanted (the pause's keeper stopped), every store is told Finish.
async fn renew_leases(stores: Vec<(u64, mpsc::Sender<PrepareRequest>)>, lease: Duration, broken: Arc<Mutex<Option<String>>>, wanted: Wanted) {
    let every = lease / 4;
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(every.min(Duration::from_millis(500))).await;
        let still_wanted = wanted.lock().expect("wanted").as_ref().is_none_or(|wanted| wanted());
        if !still_wanted {
            {
                let mut broken = broken.lock().expect("prepare state");
                if broken.is_none() {
                    *broken = Some("the pause was given up".into());
                }
            }
            for (_, sender) in &stores {
                let _ = sender.send(finish_request()).await;
            }
            return;
        }
        if renewed.elapsed() < every {
            continue;
        }
        renewed = Instant::now();
        for (store, sender) in &stores {
            if sender.send(lease_request(lease.as_secs().max(1))).await.is_err() {
                let mut broken = broken.lock().expect("prepare state");
                if broken.is_none() {
                    *broken = Some(format!("the lease of TiKV store {store} could not be renewed"));
                }
            }
        }
    }
}

fn lease_request(seconds: u64) -> PrepareRequest {
    PrepareRequest { ty: RequestType::UpdateLease as i32, regions: vec![], lease_in_seconds: seconds }
}

fn finish_request() -> PrepareRequest {
    PrepareRequest { ty: RequestType::Finish as i32, regions: vec![], lease_in_seconds: 0 }
}

fn stream_error(store: u64, status: tonic::Status) -> TikvError {
    match status.code() {
        tonic::Code::Unimplemented => TikvError::Unsupported { store, message: status.message().to_string() },
        _ => TikvError::Stream { store, message: format!("{}: {}", status.code(), status.message()) },
    }
}

fn timeout(limit: Duration, inflight: &HashMap<u64, (u64, u64)>) -> TikvError {
    let mut ids: Vec<u64> = inflight.keys().copied().collect();
    ids.sort();
    let shown: Vec<String> = ids.iter().take(5).map(|id| id.to_string()).collect();
    let more = if ids.len() > 5 { format!(" and {} more", ids.len() - 5) } else { String::new() };
    TikvError::WaitApplyTimeout { seconds: limit.as_secs(), pending: format!("region {}{more}", shown.join(", ")) }
}

fn to_proto(region: &Region) -> proto::Region {
    proto::Region {
        id: region.id,
        start_key: region.start_key.clone(),
        end_key: region.end_key.clone(),
        region_epoch: Some(proto::RegionEpoch { conf_ver: region.conf_ver, version: region.version }),
        peers: region.peers.iter().map(|(id, store_id)| proto::Peer { id: *id, store_id: *store_id }).collect(),
    }
}

/// Whether the regions, in key order, run from the start of the keyspace to its end without a hole
/// (a region being split or merged may be missing from PD's answer for a moment).
pub fn covers_keyspace(regions: &[Region]) -> bool {
    let mut sorted: Vec<&Region> = regions.iter().collect();
    sorted.sort_by(|a, b| a.start_key.cmp(&b.start_key));
    let mut next: &[u8] = &[];
    for (i, region) in sorted.iter().enumerate() {
        if region.start_key.as_slice() != next {
            return false;
        }
        if region.end_key.is_empty() {
            return i == sorted.len() - 1;
        }
        next = &region.end_key;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: u64, start: &str, end: &str) -> Region {
        Region { id, start_key: start.as_bytes().to_vec(), end_key: end.as_bytes().to_vec(), ..Region::default() }
    }

    #[test]
    fn the_regions_must_cover_the_keyspace() {
        assert!(covers_keyspace(&[region(1, "", "")]));
        assert!(covers_keyspace(&[region(2, "m", ""), region(1, "", "m")]));
        assert!(!covers_keyspace(&[region(1, "", "m")]), "no end");
        assert!(!covers_keyspace(&[region(1, "", "k"), region(2, "m", "")]), "a hole");
        assert!(!covers_keyspace(&[]));
    }
}
