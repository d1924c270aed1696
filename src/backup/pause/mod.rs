//! The PD pause: taking it (`take`, the Pause step), its PD calls (`apply`), what is known about it
//! (`guard`), and keeping it alive only while it is wanted (`keeper`).

pub mod apply;
pub mod guard;
pub mod keeper;
pub mod take;
