//! `Connectors` that hand out the fakes: every PD endpoint reaches the one `FakePd`, every AWS identity
//! the same `FakeSnapshots`, and each Backup gets a `FakeMetaStore` on its own bucket and prefix.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::api::Backup;
use crate::aws::{AwsError, CredentialSource};
use crate::backup::context::{AwsClients, Connectors};
use crate::pd::{Pd, PdEndpoint, PdError};
use crate::testkit::faults::{FaultPlan, Times};
use crate::testkit::{FakePd, FakeS3, FakeSnapshots};

pub struct FakeConnectors {
    pub pd: FakePd,
    pub tikv: crate::testkit::tikv::FakeTikv,
    pub snapshots: FakeSnapshots,
    pub s3: FakeS3,
    pd_urls: Mutex<Vec<String>>,
    identities: Mutex<Vec<String>>,
    credential_faults: Mutex<FaultPlan<(), ()>>,
}

impl FakeConnectors {
    pub fn new(pd: FakePd, snapshots: FakeSnapshots, s3: FakeS3) -> Self {
        Self {
            pd,
            tikv: Default::default(),
            snapshots,
            s3,
            pd_urls: Mutex::default(),
            identities: Mutex::default(),
            credential_faults: Mutex::default(),
        }
    }

    /// The PD URLs asked for, in order.
    pub fn pd_urls(&self) -> Vec<String> {
        self.pd_urls.lock().expect("pd urls").clone()
    }

    /// The AWS identities asked for (`CredentialSource::describe`), in order.
    pub fn identities(&self) -> Vec<String> {
        self.identities.lock().expect("identities").clone()
    }

    /// The next `times` AWS connections fail to get credentials (`AwsError::Credentials`).
    pub fn fail_credentials(&self, times: Times) {
        self.credential_faults.lock().expect("credential faults").add((), times, ());
    }
}

#[async_trait]
impl Connectors for FakeConnectors {
    fn pd(&self, endpoint: PdEndpoint) -> Result<Arc<dyn Pd>, PdError> {
        self.pd_urls.lock().expect("pd urls").push(endpoint.url);
        Ok(Arc::new(self.pd.clone()))
    }

    fn tikv(&self, _tls: Option<crate::pd::PdTls>) -> Arc<dyn crate::tikv::Tikv> {
        Arc::new(self.tikv.clone())
    }

    async fn aws(&self, backup: &Backup, source: &CredentialSource) -> Result<AwsClients, AwsError> {
        self.identities.lock().expect("identities").push(source.describe());
        if self.credential_faults.lock().expect("credential faults").take(|_| true).is_some() {
            return Err(AwsError::Credentials(format!("fault injected by the test for {}", source.describe())));
        }
        let (bucket, prefix) = backup.spec.s3.as_ref().and_then(|s3| s3.bucket_and_prefix()).unwrap_or_default();
        Ok(AwsClients { snapshots: Arc::new(self.snapshots.clone()), meta: Arc::new(self.s3.store(&bucket, &prefix)) })
    }
}
