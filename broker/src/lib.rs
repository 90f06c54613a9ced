//! The shared userspace I/O broker every guest disk is served by.
//!
//! One process, one vhost-user-blk socket per guest disk. A request's path through this crate:
//! the vhost-user-blk backend pops a descriptor chain; request validation parses it into a
//! typed request or answers it with an error status (the guest is never trusted); the
//! tenant's queue tags it (mClock reservation, limit and weight); the LUN scheduler dispatches
//! it while the LUN's in-flight count is below the window set by its queue-depth controller;
//! the path selector picks a path; the backend (io_uring on a file or block device, or an
//! emulated array over a file) does the I/O; the completion feeds latency and status back to
//! the controllers and to telemetry. Thin-pool accounting and the control API live here too.
