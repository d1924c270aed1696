//! AWS in memory: EC2 snapshots with the EBS direct APIs (`FakeSnapshots`) and S3 (`FakeS3`, seen
//! through `FakeMetaStore` under one bucket and prefix), with per-method faults and call logs.

mod ec2;
mod s3;
#[cfg(test)]
mod tests;

pub use ec2::{Ec2Method, FakeSnapshots};
pub use s3::{FakeMetaStore, FakeS3, S3Method};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::faults::{FaultPlan, Times};
use crate::aws::{AwsError, THROTTLE_CODES};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AwsFault {
    /// AWS answers this error code: `AwsError::Throttled` for the throttling and quota codes (as the
    /// real clients map them), else `AwsError::Service`. Nothing is done.
    Code(String),
    /// The request never reaches AWS (`AwsError::Transport`). Nothing is done.
    Unreachable,
    /// The call takes effect but its answer is lost: `AwsError::Transport`, which `is_ambiguous`.
    Ambiguous,
    /// The call waits this long, then is served.
    Delay(Duration),
}

impl AwsFault {
    pub fn code(code: &str) -> Self {
        Self::Code(code.to_string())
    }
}

/// One call as the fake saw it, with its arguments in words, and when it came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsCall<M> {
    pub method: M,
    pub detail: String,
    pub at: Instant,
}

/// The AWS operation name a method stands for, as errors and metrics name it.
pub trait Operation: Copy + PartialEq + Send + 'static {
    fn operation(self) -> &'static str;
}

/// A method, and a part of the call's detail (`None`: any call of the method).
type Matcher<M> = (M, Option<String>);

struct GateState<M> {
    faults: FaultPlan<Matcher<M>, AwsFault>,
    calls: Vec<AwsCall<M>>,
}

/// The faults and call log of one fake.
pub(crate) struct Gate<M> {
    inner: Arc<Mutex<GateState<M>>>,
}

impl<M> Clone for Gate<M> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<M> Default for Gate<M> {
    fn default() -> Self {
        Self { inner: Arc::new(Mutex::new(GateState { faults: FaultPlan::default(), calls: Vec::new() })) }
    }
}

impl<M: Operation> Gate<M> {
    pub fn fail(&self, method: M, times: Times, fault: AwsFault) {
        self.inner.lock().expect("gate").faults.add((method, None), times, fault);
    }

    /// As `fail`, for the calls whose detail contains `detail` (a key, an instance id).
    pub fn fail_where(&self, method: M, detail: &str, times: Times, fault: AwsFault) {
        self.inner.lock().expect("gate").faults.add((method, Some(detail.to_string())), times, fault);
    }

    pub fn clear(&self) {
        self.inner.lock().expect("gate").faults.clear();
    }

    pub fn calls(&self) -> Vec<AwsCall<M>> {
        self.inner.lock().expect("gate").calls.clone()
    }

    /// Logs the call and applies its fault: `Err` means "fail without doing it"; `Ok(Some(e))` means
    /// "do it, then answer `e`".
    pub async fn enter(&self, method: M, detail: String) -> Result<Option<AwsError>, AwsError>
    where
        M: Clone,
    {
        let fault = {
            let mut inner = self.inner.lock().expect("gate");
            let fault = inner.faults.take(|(m, part)| *m == method && part.as_ref().is_none_or(|p| detail.contains(p.as_str())));
            inner.calls.push(AwsCall { method, detail, at: Instant::now() });
            fault
        };
        let operation = method.operation();
        match fault {
            None => Ok(None),
            Some(AwsFault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(None)
            }
            Some(AwsFault::Code(code)) => {
                let message = "fault injected by the test".to_string();
                Err(if THROTTLE_CODES.contains(&code.as_str()) {
                    AwsError::Throttled { operation, code, message }
                } else {
                    AwsError::Service { operation, code, message }
                })
            }
            Some(AwsFault::Unreachable) => Err(AwsError::Transport { operation, message: "fake AWS: connection refused".into() }),
            Some(AwsFault::Ambiguous) => {
                Ok(Some(AwsError::Transport { operation, message: "fake AWS: the answer was lost after the call took effect".into() }))
            }
        }
    }
}

/// The answer of a call that went through: `value`, unless the fault said to lose it.
fn answer<T>(lost: Option<AwsError>, value: T) -> Result<T, AwsError> {
    match lost {
        Some(e) => Err(e),
        None => Ok(value),
    }
}

fn service_error(operation: &'static str, code: &str, message: String) -> AwsError {
    AwsError::Service { operation, code: code.into(), message }
}
