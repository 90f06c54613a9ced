//! The host's KVM: weir needs /dev/kvm to create VMs; which flavour decides how Linux runs.

use weir_lab::testenv;
use weir_vmm::host::{HostVirtualization, KvmFlavour};

#[test]
fn kvm_creates_a_vm_and_its_flavour_is_known() {
    let virt = HostVirtualization::detect();
    eprintln!("host: {virt}");
    let missing = match &virt.flavour {
        KvmFlavour::Unavailable { reason } => Some(reason.clone()),
        _ => None,
    };
    if !testenv::can_run("kvm_creates_a_vm", missing) {
        return;
    }
    // PVM and hardware KVM are told apart by the CPU flags and the module, never both.
    match virt.flavour {
        KvmFlavour::Pvm => {
            assert!(virt.pvm_loaded && !virt.cpu_has_hw_virt);
            assert!(!virt.linux_boots_under_kvm());
        }
        KvmFlavour::Hardware { .. } => {
            assert!(virt.cpu_has_hw_virt && virt.linux_boots_under_kvm())
        }
        KvmFlavour::Unknown => {}
        KvmFlavour::Unavailable { .. } => unreachable!("handled above"),
    }
}
