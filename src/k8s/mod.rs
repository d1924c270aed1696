//! Everything that talks to the Kubernetes API.

pub mod identity;
pub mod status_writer;
pub mod volumes;

pub use status_writer::{StatusWriter, StatusWriterError};
