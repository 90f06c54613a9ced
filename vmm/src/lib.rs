//! The KVM side of weir: everything that makes one guest run in one process.
//!
//! This crate owns the VM lifecycle: guest memory (memfd, so the broker can map it), vCPU
//! threads, CPUID and MSRs, the boot protocols (vmlinux ELF, bzImage, initrd, boot_params,
//! e820, command line), the in-kernel irqchip and PIT, SMP tables, the event loop and exit
//! handling. Devices live in `weir-devices`; block I/O never passes through here, it goes
//! guest → ioeventfd → broker and back through an irqfd.
//!
//! It also answers the question every other part asks first: what kind of KVM does this host
//! have ([`host`]).

pub mod boot;
pub mod cpu;
pub mod host;
pub mod i8042;
pub mod layout;
pub mod machine;
pub mod memory;
pub mod mptable;
pub mod vcpu_activity;

/// What can go wrong building or running a guest; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0}")]
    Config(String),
    #[error("KVM: {0}")]
    Kvm(String),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("disk: {0}")]
    Device(String),
}
