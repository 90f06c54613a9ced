//! The broker's scheduling logic, free of I/O and of wall-clock time.
//!
//! Everything here takes the current time as an argument (seconds, `f64`), so the same code
//! runs in the broker on the real clock and in `weir sim` on a virtual clock, seeded and
//! deterministic. This crate holds:
//! - [`check`]: the validator every config and scenario goes through (and the one bounded
//!   config-file read, the crate's only I/O);
//! - [`cost`]: what one request costs, by size (a linear model);
//! - [`lun`]: the one `[[lun]]` type of the broker, `weir sim` and `weir run`, and its validator;
//! - [`mclock`]: per-tenant reservation, limit and weight tags (mClock, OSDI '10) and the
//!   dispatch rule;
//! - [`metrics`]: the fairness measures `weir run` and `weir sim` report;
//! - [`rng`]: a small seeded generator for simulations.

pub mod array;
pub mod check;
pub mod cost;
pub mod curve;
pub mod depth;
pub mod dispatch;
pub mod dispersion;
pub mod knee;
#[cfg(test)]
mod knee_noise_tests;
pub mod lun;
pub mod mclock;
pub mod metrics;
pub mod path;
pub mod rng;
pub mod sim;
#[cfg(test)]
mod sim_hosts_tests;
pub mod sim_pool;
#[cfg(test)]
mod sim_tests;
pub mod sweep;
pub mod thin;
