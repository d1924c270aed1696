//! In-memory fakes of everything the reconciler talks to, so whole backups run in a unit test in well
//! under a second: a Kubernetes API server, PD, EC2/EBS snapshots and the S3 metadata store, and a
//! `World` that seeds a TidbCluster across all of them and builds the `Context` a reconcile needs.
//! `failpoints` keeps the tests that crash processes at crash points apart from all the others.

pub mod apiserver;
pub mod aws;
pub mod failpoints;
pub mod faults;
pub mod pd;
pub mod tikv;
pub mod world;

pub use apiserver::{ApiFault, FakeApiServer, Verb};
pub use aws::{AwsFault, Ec2Method, FakeS3, FakeSnapshots, S3Method};
pub use faults::Times;
pub use pd::{FakePd, PdFault, PdMethod};
pub use world::World;
