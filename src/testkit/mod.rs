//! In-memory fakes of everything the reconciler talks to, so whole backups run in a unit test: a
//! Kubernetes API server, PD, EC2/EBS snapshots and the S3 metadata store, and a `World` that seeds a
//! TidbCluster across all of them and builds the `Context` a reconcile needs.

pub mod apiserver;
pub mod aws;
pub mod faults;
pub mod pd;

pub use apiserver::{ApiFault, FakeApiServer, LoggedRequest, Verb};
pub use aws::{AwsCall, AwsFault, Ec2Method, FakeMetaStore, FakeS3, FakeSnapshots, S3Method};
pub use faults::Times;
pub use pd::{FakePd, PdCall, PdFault, PdMethod};
