//! The experiment side of weir: booting test guests, running fio inside them, and turning what
//! they print into typed results.
//!
//! Here live scenario files, guest orchestration (`weir vm` or QEMU), fio job handling, metrics
//! (fairness, latency) and report rendering. At this stage: the QEMU runner for the Linux test
//! guest ([`qemu`]), the serial-log protocol the guest's `/init` speaks ([`serial`]), fio's JSON
//! output as Rust types ([`fio`]), and the host facts that pick an accelerator ([`host`]).

pub mod bench;
pub mod broker;
pub mod fio;
pub mod fiojob;
pub mod guest_cpu;
pub mod host;
pub mod hostfio;
pub mod hosts;
pub mod probe;
pub mod qemu;
pub mod report;
pub mod results;
pub mod runner;
pub mod scenario;
pub mod serial;
pub mod summary;
pub mod target;
pub mod testenv;
pub mod trust;
pub mod vm_bench;
pub mod vm_bench_linux;
