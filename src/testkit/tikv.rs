//! An in-memory TiKV serving the prepare stream: a lease per store, WaitApply answered at once (or
//! never, for a store told so), Finish answered with the lease's validity before the stream ends.
//! Every request is logged as `<store> <what>` for assertions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::tikv::proto::{PrepareSnapshotBackupEventType as EventType, PrepareSnapshotBackupRequestType as RequestType};
use crate::tikv::{PrepareResponse, StoreStream, Tikv, TikvError};

#[derive(Clone, Default)]
pub struct FakeTikv {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    leases: HashMap<u64, Instant>,
    log: Vec<(Instant, String)>,
    unsupported: Vec<u64>,
    never_apply: Vec<u64>,
}

impl FakeTikv {
    /// `<store> lease <seconds>`, `<store> wait-apply <regions>`, `<store> finish`, `<store> closed`.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().expect("tikv").log.iter().map(|(_, what)| what.clone()).collect()
    }

    /// When the entries of the log containing `what` were made.
    pub fn times_of(&self, what: &str) -> Vec<Instant> {
        self.state.lock().expect("tikv").log.iter().filter(|(_, w)| w.contains(what)).map(|(at, _)| *at).collect()
    }

    /// Stores whose lease is in force now.
    pub fn prepared(&self) -> Vec<u64> {
        let state = self.state.lock().expect("tikv");
        let mut ids: Vec<u64> = state.leases.iter().filter(|(_, until)| **until > Instant::now()).map(|(id, _)| *id).collect();
        ids.sort();
        ids
    }

    /// The store answers `Unimplemented`, as a TiKV older than the feature.
    pub fn make_unsupported(&self, store: u64) {
        self.state.lock().expect("tikv").unsupported.push(store);
    }

    /// The store never answers WaitApply.
    pub fn never_apply(&self, store: u64) {
        self.state.lock().expect("tikv").never_apply.push(store);
    }
}

#[async_trait]
impl Tikv for FakeTikv {
    async fn open(&self, store: u64, _address: &str) -> Result<StoreStream, TikvError> {
        let (requests, mut incoming) = mpsc::channel(64);
        let (answers, responses) = mpsc::channel::<Result<PrepareResponse, tonic::Status>>(64);
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some(request) = incoming.recv().await {
                let (answer, end) = serve(&state, store, request);
                for a in answer {
                    if answers.send(a).await.is_err() {
                        return;
                    }
                }
                if end {
                    return;
                }
            }
            state.lock().expect("tikv").log.push((Instant::now(), format!("{store} closed")));
        });
        let responses = futures::stream::unfold(responses, next_answer).boxed();
        Ok(StoreStream { requests, responses })
    }
}

type Answer = Result<PrepareResponse, tonic::Status>;

async fn next_answer(mut answers: mpsc::Receiver<Answer>) -> Option<(Answer, mpsc::Receiver<Answer>)> {
    answers.recv().await.map(|answer| (answer, answers))
}

fn serve(state: &Mutex<State>, store: u64, request: crate::tikv::PrepareRequest) -> (Vec<Result<PrepareResponse, tonic::Status>>, bool) {
    let mut state = state.lock().expect("tikv");
    if state.unsupported.contains(&store) {
        return (vec![Err(tonic::Status::unimplemented("unknown method PrepareSnapshotBackup"))], true);
    }
    let now = Instant::now();
    let valid = state.leases.get(&store).is_some_and(|until| *until > now);
    let lease = |valid| Ok(PrepareResponse { ty: EventType::UpdateLeaseResult as i32, last_lease_is_valid: valid, ..Default::default() });
    match RequestType::try_from(request.ty) {
        Ok(RequestType::UpdateLease) => {
            state.leases.insert(store, now + Duration::from_secs(request.lease_in_seconds));
            state.log.push((now, format!("{store} lease {}", request.lease_in_seconds)));
            (vec![lease(valid)], false)
        }
        Ok(RequestType::WaitApply) => {
            state.log.push((now, format!("{store} wait-apply {}", request.regions.len())));
            if state.never_apply.contains(&store) {
                return (vec![], false);
            }
            let done = request
                .regions
                .into_iter()
                .map(|region| Ok(PrepareResponse { ty: EventType::WaitApplyDone as i32, region: Some(region), ..Default::default() }));
            (done.collect(), false)
        }
        Ok(RequestType::Finish) => {
            state.leases.remove(&store);
            state.log.push((now, format!("{store} finish")));
            (vec![lease(valid)], true)
        }
        Err(_) => (vec![Err(tonic::Status::invalid_argument("unknown request type"))], true),
    }
}
