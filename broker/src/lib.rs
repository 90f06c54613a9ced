//! The shared userspace I/O broker every guest disk is served by.
//!
//! One process, one vhost-user-blk socket per guest disk. A request's path through this crate:
//! the vhost-user-blk backend pops a descriptor chain; request validation ([`request`]) parses
//! it into a typed request or answers it with an error status (the guest is never trusted); the
//! queue's worker ([`worker`]) runs it on io_uring against the LUN's backing store ([`lun`])
//! straight into guest memory and answers it. Later stages put the tenant queues (mClock
//! reservation, limit and weight), the LUN scheduler with its queue-depth controller, and the
//! path selector between validation and the backend.

pub mod array_runtime;
pub mod config;
pub mod control;
pub mod counters;
pub mod dark;
pub mod device;
pub mod dispatch;
pub mod health;
pub mod inbox;
pub mod inflight;
pub mod iscsi;
pub mod lun;
pub mod metrics;
pub mod metrics_http;
pub mod nbd;
pub mod path_probe;
pub mod request;
pub mod sandbox;
pub mod scheduler_thread;
pub mod server;
pub mod stopper;
pub mod telemetry;
pub mod thin;
pub mod vhost_session;
pub mod worker;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod worker_tests;
