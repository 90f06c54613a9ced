//! One guest: the KVM VM, its vCPU threads, the port and MMIO devices, and how it ends.
//!
//! The VMM thread only sees configuration traffic: the serial port, the i8042 reset line and
//! virtio-mmio register accesses. A disk's queue notifications are ioeventfds the broker reads
//! and its completions irqfds KVM injects, so no VMM thread touches an I/O.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;
use weir_devices::serial::SerialConsole;

use crate::VmmError;
use crate::boot::{self, BootInfo};
use crate::cpu;
use crate::layout::*;
use crate::memory::GuestRam;
use crate::vcpu_activity::{ExitKind, VcpuActivity, VcpuState};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

/// A device on the MMIO bus.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Where the guest's serial output goes.
#[derive(Debug, Clone)]
pub enum SerialOut {
    Stdio,
    File(PathBuf),
}

/// A `weir vm` guest.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub serial: SerialOut,
    /// Stop the guest after this long (exit status 124, as `timeout`).
    pub timeout: Option<Duration>,
    /// Boot protocol: PVH when the kernel has the note (auto), or the one asked for.
    pub boot: crate::boot::BootChoice,
    /// KVM's halt polling for this VM, µs (`None`: the host's `halt_poll_ns`).
    pub halt_poll_us: Option<u32>,
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// The guest pulsed the i8042 reset line or asked KVM for shutdown/reset: a clean end.
    PowerOff(String),
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault(String),
    /// KVM could not emulate or enter the guest.
    EmulationFailure(String),
    /// The guest reported a failure on the debug exit port (0x501), with this code.
    GuestError(u8),
    TimedOut,
}

impl VmEnd {
    pub fn exit_code(&self) -> i32 {
        match self {
            VmEnd::PowerOff(_) => 0,
            VmEnd::TripleFault(_) => 2,
            VmEnd::EmulationFailure(_) => 3,
            VmEnd::GuestError(_) => 4,
            VmEnd::TimedOut => 124,
        }
    }
}

/// What `run` reports besides the end.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub end: VmEnd,
    pub boot: BootInfo,
    /// From `Machine::new` to the guest's first serial byte.
    pub first_serial_byte: Option<Duration>,
    /// Each vCPU thread's state when the guest ended (a timed-out guest: held by weir vm, or
    /// stopped inside KVM).
    pub vcpus: Vec<VcpuState>,
}

struct MmioTransport(weir_devices::virtio_mmio::VirtioMmio);

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data)
    }
}

/// A device window: base, size, device.
type MmioSlot = (u64, u64, Box<dyn MmioDevice>);

struct Shared {
    serial: Mutex<SerialConsole>,
    i8042: Mutex<crate::i8042::I8042>,
    mmio: Mutex<Vec<MmioSlot>>,
    /// One per vCPU, by id.
    activity: Vec<VcpuActivity>,
    created: Instant,
}

/// A built guest, ready to run.
pub struct Machine {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub ram: GuestRam,
    config: VmConfig,
    created: Instant,
    shared: Arc<Shared>,
    boot: Option<BootInfo>,
}

/// How long a timed-out guest's vCPU threads are signalled, and how often.
const STOP_WAIT: Duration = Duration::from_secs(3);
const STOP_SIGNAL_EVERY: Duration = Duration::from_millis(100);

impl Machine {
    /// Creates the VM: memory, irqchip, PIT, serial. Devices are added before [`Machine::run`].
    pub fn new(config: VmConfig, created: Instant) -> Result<Self, VmmError> {
        let kvm_err =
            |what: &'static str| move |e: kvm_ioctls::Error| VmmError::Kvm(format!("{what}: {e}"));
        if config.vcpus == 0 || config.vcpus > 32 {
            return Err(VmmError::Config(format!(
                "--vcpus {}: must be 1 to 32",
                config.vcpus
            )));
        }
        let kvm = Kvm::new().map_err(|e| VmmError::Kvm(format!("open /dev/kvm: {e}")))?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let ram = GuestRam::new(config.mem_mib << 20)?;
        let host_addr = ram
            .memory
            .iter()
            .next()
            .map(|r| r.as_ptr() as u64)
            .ok_or_else(|| VmmError::Memory("no RAM region".into()))?;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram.size,
            userspace_addr: host_addr,
        };
        // SAFETY: the region is the live mapping of `ram`, which the Machine owns for as long
        // as the VM exists.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        if let Some(us) = config.halt_poll_us {
            // A halted vCPU's thread otherwise spins in the kernel for up to the host's
            // halt_poll_ns (200 µs on this project's CI host) before it sleeps.
            let cap = kvm_bindings::kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_HALT_POLL,
                args: [u64::from(us) * 1000, 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap)
                .map_err(kvm_err("KVM_ENABLE_CAP(KVM_CAP_HALT_POLL)"))?;
        }
        vm.set_tss_address(0xfffb_d000)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("KVM_CREATE_PIT2"))?;
        let serial_irq = EventFd::new(0).map_err(|e| VmmError::Kvm(e.to_string()))?;
        vm.register_irqfd(&serial_irq, SERIAL_GSI)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        let out: Box<dyn Write + Send> = match &config.serial {
            SerialOut::Stdio => Box::new(std::io::stdout()),
            SerialOut::File(p) => Box::new(
                std::fs::File::create(p)
                    .map_err(|e| VmmError::Config(format!("--serial {}: {e}", p.display())))?,
            ),
        };
        let activity = (0..config.vcpus).map(|_| VcpuActivity::default()).collect();
        Ok(Machine {
            kvm,
            vm,
            ram,
            config,
            created,
            shared: Arc::new(Shared {
                serial: Mutex::new(SerialConsole::new(serial_irq, out)),
                i8042: Mutex::new(crate::i8042::I8042::default()),
                mmio: Mutex::new(Vec::new()),
                activity,
                created,
            }),
            boot: None,
        })
    }

    /// Adds a device at `[base, base + size)`.
    pub fn add_mmio(&mut self, base: u64, size: u64, dev: Box<dyn MmioDevice>) {
        self.shared
            .mmio
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((base, size, dev));
    }

    /// Attaches a vhost-user-blk disk as virtio-mmio device number `index`; returns the
    /// command-line announcement (`virtio_mmio.device=4K@<base>:<gsi>`).
    pub fn add_vhost_user_blk(
        &mut self,
        index: u32,
        socket: &std::path::Path,
        queues: u16,
        queue_size: u16,
    ) -> Result<String, VmmError> {
        use std::os::fd::AsRawFd;
        use weir_devices::vhost_blk::VhostUserBlk;
        use weir_devices::virtio_mmio::{REG_QUEUE_NOTIFY, VirtioMmio};
        let base = MMIO_START + u64::from(index) * MMIO_SIZE;
        let gsi = VIRTIO_GSI_BASE + index;
        if gsi >= 24 {
            return Err(VmmError::Config(format!(
                "too many disks: {} (at most {})",
                index + 1,
                24 - VIRTIO_GSI_BASE
            )));
        }
        let blk = VhostUserBlk::connect(
            socket,
            queues,
            queue_size,
            self.ram.memory.clone(),
            self.ram.memfd.as_raw_fd(),
        )
        .map_err(|e| VmmError::Device(e.to_string()))?;
        for (q, kick) in blk.kicks.iter().enumerate() {
            self.vm
                .register_ioevent(
                    kick,
                    &kvm_ioctls::IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(|e| {
                    VmmError::Kvm(format!("KVM_IOEVENTFD (disk {index} queue {q}): {e}"))
                })?;
        }
        for (q, call) in blk.calls.iter().enumerate() {
            self.vm
                .register_irqfd(call, gsi)
                .map_err(|e| VmmError::Kvm(format!("KVM_IRQFD (disk {index} queue {q}): {e}")))?;
        }
        log::info!(
            "disk {index}: {} ({} sectors, {queues} queue(s)) at {base:#x}, GSI {gsi}",
            socket.display(),
            blk.capacity()
        );
        let transport = VirtioMmio::new(&format!("disk{index}"), Box::new(blk));
        self.add_mmio(base, MMIO_SIZE, Box::new(MmioTransport(transport)));
        Ok(format!("virtio_mmio.device=4K@{base:#x}:{gsi}"))
    }

    /// Loads the kernel; `extra_cmdline` (device announcements) goes after the user's.
    pub fn load(&mut self, extra_cmdline: &str) -> Result<&BootInfo, VmmError> {
        let cmdline = if extra_cmdline.is_empty() {
            self.config.cmdline.clone()
        } else {
            format!("{} {extra_cmdline}", self.config.cmdline)
        };
        let info = boot::load(
            &self.ram.memory,
            self.ram.size,
            &self.config.kernel,
            self.config.initrd.as_deref(),
            &cmdline,
            self.config.boot,
        )?;
        // Always, one vCPU too: without it Linux finds no IOAPIC ("skipped IO-APIC setup") and
        // runs its interrupts through the 8259 in virtual-wire mode.
        crate::mptable::write(&self.ram.memory, self.config.vcpus)?;
        self.boot = Some(info);
        self.boot
            .as_ref()
            .ok_or_else(|| VmmError::Config("not loaded".into()))
    }

    /// Runs the guest until it ends. Other vCPU threads are left blocked in KVM_RUN: one guest
    /// per process, and the process exits next.
    pub fn run(self) -> Result<RunReport, VmmError> {
        let boot = self
            .boot
            .clone()
            .ok_or_else(|| VmmError::Config("Machine::load was not called".into()))?;
        let count = self.config.vcpus;
        let (tx, rx) = mpsc::channel::<VmEnd>();
        // The signal that brings a vCPU thread out of KVM_RUN at a timeout: its handler does
        // nothing, its delivery makes KVM_RUN return EINTR.
        register_signal_handler(vcpu_signal(), on_vcpu_signal)
            .map_err(|e| VmmError::Kvm(format!("the vCPU signal's handler: {e}")))?;
        let mut vcpus = Vec::new();
        for id in 0..count {
            let vcpu = self
                .vm
                .create_vcpu(u64::from(id))
                .map_err(|e| VmmError::Kvm(format!("KVM_CREATE_VCPU {id}: {e}")))?;
            cpu::setup_vcpu(&self.kvm, &vcpu, id, count)?;
            if id == 0 {
                match boot.mode {
                    crate::boot::BootMode::Linux64 => cpu::setup_boot_vcpu(&vcpu, boot.entry)?,
                    crate::boot::BootMode::Pvh => cpu::setup_pvh_vcpu(&vcpu, boot.entry)?,
                }
            }
            vcpus.push(vcpu);
        }
        let mut threads = Vec::new();
        for (id, vcpu) in vcpus.into_iter().enumerate() {
            let shared = self.shared.clone();
            let tx = tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let end = run_vcpu(id, vcpu, &shared);
                    let _ = tx.send(end);
                })
                .map_err(|e| VmmError::Kvm(format!("vCPU thread: {e}")))?;
            threads.push(thread);
        }
        let end = match self.config.timeout {
            Some(t) => rx.recv_timeout(t).unwrap_or(VmEnd::TimedOut),
            None => rx
                .recv()
                .unwrap_or_else(|_| VmEnd::EmulationFailure("every vCPU thread ended".into())),
        };
        let mut serial = self.shared.serial.lock().unwrap_or_else(|p| p.into_inner());
        serial.flush();
        let first = serial
            .first_byte()
            .map(|t| t.saturating_duration_since(self.created));
        drop(serial);
        let now = self.created.elapsed();
        let mut vcpus: Vec<VcpuState> = (self.shared.activity.iter().enumerate())
            .map(|(id, a)| a.snapshot(id, now))
            .collect();
        if end == VmEnd::TimedOut {
            let waited = self.stop_vcpus(&threads);
            for (v, a) in vcpus.iter_mut().zip(&self.shared.activity) {
                v.signal = Some(a.signal_outcome(waited));
            }
        }
        Ok(RunReport {
            end,
            boot,
            first_serial_byte: first,
            vcpus,
        })
    }

    /// Asks every vCPU thread to stop and signals those that have not until each has answered
    /// or [`STOP_WAIT`] has passed (signalled again and again: one that lands just before the
    /// thread enters KVM_RUN is spent in userspace). Returns how long it waited.
    fn stop_vcpus(&self, threads: &[std::thread::JoinHandle<()>]) -> Duration {
        let start = Instant::now();
        for a in &self.shared.activity {
            a.request_stop(self.created);
        }
        while start.elapsed() < STOP_WAIT {
            let mut pending = false;
            for (thread, a) in threads.iter().zip(&self.shared.activity) {
                if !a.answered() {
                    pending = true;
                    // A thread that has ended cannot be signalled; it has nothing to say.
                    let _ = thread.kill(vcpu_signal());
                }
            }
            if !pending {
                break;
            }
            std::thread::sleep(STOP_SIGNAL_EVERY);
        }
        start.elapsed()
    }
}

fn vcpu_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_vcpu_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn regs_dump(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} \
             cs={:#x}(dpl {}) cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            s.cs.selector,
            s.cs.dpl,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer
        ),
        (Err(e), _) | (_, Err(e)) => format!("(registers unavailable: {e})"),
    }
}

fn run_vcpu(id: usize, mut vcpu: VcpuFd, shared: &Shared) -> VmEnd {
    let Some(activity) = shared.activity.get(id) else {
        return VmEnd::EmulationFailure(format!("vCPU {id}: no activity slot"));
    };
    let created = shared.created;
    loop {
        activity.entering(created);
        let result = vcpu.run();
        let (kind, addr) = match &result {
            Ok(VcpuExit::IoOut(port, _)) => (ExitKind::IoOut, u64::from(*port)),
            Ok(VcpuExit::IoIn(port, _)) => (ExitKind::IoIn, u64::from(*port)),
            Ok(VcpuExit::MmioRead(addr, _)) => (ExitKind::MmioRead, *addr),
            Ok(VcpuExit::MmioWrite(addr, _)) => (ExitKind::MmioWrite, *addr),
            Ok(VcpuExit::Hlt) => (ExitKind::Hlt, 0),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                (ExitKind::Interrupted, 0)
            }
            Err(e) => (ExitKind::Failed, u64::from(e.errno().unsigned_abs())),
            Ok(_) => (ExitKind::Other, 0),
        };
        activity.exited(created, kind, addr);
        if activity.stop_requested() {
            // The guest timed out: say where this vCPU was, then stay out of the guest (the
            // process exits next).
            activity.answer(activity.since_stop_request(created), regs_dump(&vcpu));
            loop {
                std::thread::park();
            }
        }
        let exit = match result {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => {
                return VmEnd::EmulationFailure(format!(
                    "vCPU {id}: KVM_RUN failed: {e}; {}",
                    regs_dump(&vcpu)
                ));
            }
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                let v = data.first().copied().unwrap_or(0);
                if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port) {
                    // `rep outsb` arrives as one exit with every byte.
                    let mut serial = shared.serial.lock().unwrap_or_else(|p| p.into_inner());
                    for b in data.iter() {
                        serial.write((port - SERIAL_PORT) as u8, *b);
                    }
                } else if port == DEBUG_EXIT_PORT {
                    return VmEnd::GuestError(v);
                } else if port == I8042_PORT || port == crate::i8042::DATA_PORT {
                    let mut kbc = shared.i8042.lock().unwrap_or_else(|p| p.into_inner());
                    if kbc.write(port, v) == crate::i8042::I8042Write::Reset {
                        return VmEnd::PowerOff("the guest pulsed the i8042 reset line".into());
                    }
                }
            }
            VcpuExit::IoIn(port, data) => {
                let v = if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port) {
                    shared
                        .serial
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .read((port - SERIAL_PORT) as u8)
                } else if port == I8042_PORT || port == crate::i8042::DATA_PORT {
                    shared
                        .i8042
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .read(port)
                } else {
                    0xff
                };
                for b in data.iter_mut() {
                    *b = v;
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                let mut mmio = shared.mmio.lock().unwrap_or_else(|p| p.into_inner());
                match mmio.iter_mut().find(|(b, s, _)| addr >= *b && addr < b + s) {
                    Some((base, _, dev)) => dev.read(addr - *base, data),
                    None => data.fill(0xff),
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                let mut mmio = shared.mmio.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((base, _, dev)) =
                    mmio.iter_mut().find(|(b, s, _)| addr >= *b && addr < b + s)
                {
                    dev.write(addr - *base, data);
                }
            }
            VcpuExit::Hlt => {}
            VcpuExit::Shutdown => {
                // On AMD, KVM re-initialises the VMCB of a vCPU that shut down: the registers
                // read now are the reset state, not the faulting context.
                return VmEnd::TripleFault(format!(
                    "vCPU {id}: triple fault (shutdown); registers after it (on AMD, KVM's \
                     reset state): {}",
                    regs_dump(&vcpu)
                ));
            }
            VcpuExit::SystemEvent(kind, _) => {
                return VmEnd::PowerOff(format!("the guest asked KVM for system event {kind}"));
            }
            VcpuExit::InternalError => {
                return VmEnd::EmulationFailure(format!(
                    "vCPU {id}: KVM internal error (emulation failure); {}",
                    regs_dump(&vcpu)
                ));
            }
            VcpuExit::FailEntry(reason, cpu) => {
                return VmEnd::EmulationFailure(format!(
                    "vCPU {id}: VM entry failed (reason {reason:#x}, cpu {cpu}); {}",
                    regs_dump(&vcpu)
                ));
            }
            other => {
                let what = format!("{other:?}");
                return VmEnd::EmulationFailure(format!(
                    "vCPU {id}: unexpected exit {what}; {}",
                    regs_dump(&vcpu)
                ));
            }
        }
    }
}
