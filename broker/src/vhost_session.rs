//! The vhost-user protocol of one guest connection, as weir implements it (the control plane);
//! the data plane is [`BlkDevice`] and its queue workers.
//!
//! weir answers the frontend's messages itself rather than through `vhost-user-backend`'s
//! handler because it needs what that handler refuses: the inflight region
//! (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`, see [`crate::inflight`]) that lets a broker started
//! after a crash — or a `--replace` handover — resubmit what the previous one had taken from a
//! guest and not answered. The vrings are still `vhost-user-backend`'s `VringRwLock` (a
//! `virtio_queue::Queue` with its kick/call eventfds).
//!
//! One thread per queue waits (epoll) on the queue's kick eventfd, its io_uring completion
//! eventfd, its dispatcher inbox and a wake eventfd: kicks and completions are handled on the
//! same thread, and the only lock taken on the data path is the queue's own, uncontended.
//!
//! A queue starts when the frontend has given it a kick eventfd (the spec's "ring started")
//! and, with protocol features negotiated, enabled it. At start, if an inflight region was
//! negotiated, the heads a previous broker left in flight are resubmitted before anything new
//! is taken, and the next avail index is recomputed from the region (the frontend's
//! SET_VRING_BASE after a crash can only be a guess). GET_VRING_BASE stops a queue: it answers
//! what is in flight first, so the index it returns describes a quiet ring.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use vhost::VhostUserMemoryRegionBase;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserInflight, VhostUserLog, VhostUserMemoryRegion,
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVirtioFeatures, VhostUserVringAddrFlags,
    VhostUserVringState,
};
use vhost::vhost_user::{
    Error as VhostUserError, GpuBackend, Result as VhostUserResult, VhostUserBackendReqHandlerMut,
};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::{BlkDevice, VIRTIO_RING_F_EVENT_IDX};
use crate::inflight::InflightRegion;
use crate::worker::GuestMemAtomic;

/// Memory regions a frontend may add one by one (CONFIGURE_MEM_SLOTS).
const MAX_MEM_SLOTS: u64 = 32;

const TOKEN_KICK: u64 = 0;
const TOKEN_COMPLETION: u64 = 1;
const TOKEN_INBOX: u64 = 2;
const TOKEN_WAKE: u64 = 3;

/// Where a frontend's virtual addresses (SET_VRING_ADDR) land in guest-physical space.
#[derive(Debug, Clone, Copy)]
struct AddrMapping {
    frontend_addr: u64,
    size: u64,
    gpa: u64,
}

/// One queue's service thread.
struct QueueThread {
    epoll: Arc<Epoll>,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
    /// The kick eventfd now registered in `epoll`, if any.
    kick: Option<i32>,
}

impl QueueThread {
    fn start(
        device: &BlkDevice,
        q: usize,
        vring: VringRwLock<GuestMemAtomic>,
        name: &str,
    ) -> io::Result<Self> {
        let epoll = Arc::new(Epoll::new()?);
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let stop = Arc::new(AtomicBool::new(false));
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(wake.as_raw_fd(), TOKEN_WAKE)?;
        let completion = device
            .completion_fd(q)
            .ok_or_else(|| io::Error::other("no such queue"))?;
        add(completion, TOKEN_COMPLETION)?;
        let inbox = device
            .inbox_fd(q)
            .ok_or_else(|| io::Error::other("no such queue"))?;
        add(inbox, TOKEN_INBOX)?;
        let join = {
            let (epoll, wake, stop, device) =
                (epoll.clone(), wake.clone(), stop.clone(), device.clone());
            std::thread::Builder::new()
                .name(format!("{name}-q{q}"))
                .spawn(move || serve_queue(&device, q, &vring, &epoll, &wake, &stop))?
        };
        Ok(QueueThread {
            epoll,
            wake,
            stop,
            join: Some(join),
            kick: None,
        })
    }

    fn set_kick(&mut self, fd: Option<i32>) {
        if let Some(old) = self.kick.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                old,
                EpollEvent::new(EventSet::IN, TOKEN_KICK),
            );
        }
        if let Some(fd) = fd {
            match self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, TOKEN_KICK),
            ) {
                Ok(()) => self.kick = Some(fd),
                Err(e) => log::error!("cannot watch a kick eventfd: {e}"),
            }
        }
    }

    /// Makes the thread look at its queue (a start, an enable, resubmissions waiting).
    fn poke(&self) {
        let _ = self.wake.write(1);
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.poke();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn serve_queue(
    device: &BlkDevice,
    q: usize,
    vring: &VringRwLock<GuestMemAtomic>,
    epoll: &Epoll,
    wake: &EventFd,
    stop: &AtomicBool,
) {
    let mut events = vec![EpollEvent::default(); 4];
    let idle_ms = i32::try_from(crate::device::IDLE_CHECK.as_millis()).unwrap_or(1000);
    loop {
        let n = match epoll.wait(idle_ms, &mut events) {
            Ok(0) => {
                if let Err(e) = device.idle_check(q, vring) {
                    log::error!("queue {q}: {e}");
                }
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("queue {q}: epoll failed: {e}");
                return;
            }
        };
        for event in &events[..n] {
            let result = match event.data() {
                TOKEN_KICK => {
                    // Consumed even while the ring is disabled: a start re-reads the ring.
                    let _ = vring.read_kick();
                    device.kicked(q, vring)
                }
                TOKEN_WAKE => {
                    let _ = wake.read();
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    device.service(q, vring)
                }
                _ => device.service(q, vring),
            };
            if let Err(e) = result {
                log::error!("queue {q}: {e}");
            }
        }
    }
}

/// The vhost-user session with one frontend.
pub struct VhostSession {
    device: BlkDevice,
    name: String,
    mem: GuestMemAtomic,
    mappings: Vec<AddrMapping>,
    vrings: Vec<VringRwLock<GuestMemAtomic>>,
    threads: Vec<QueueThread>,
    owned: bool,
    acked_features: u64,
    acked_protocol: u64,
    inflight: Option<Arc<InflightRegion>>,
    /// Per queue: the guest was interrupted once since the queue started (see `maybe_start`).
    announced: Vec<bool>,
}

impl VhostSession {
    pub fn new(device: BlkDevice, name: &str) -> io::Result<Self> {
        let mem: GuestMemAtomic = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let queues = device.num_queues();
        let mut vrings = Vec::new();
        let mut threads = Vec::new();
        for q in 0..queues {
            let vring = VringRwLock::new(mem.clone(), device.max_queue_size())
                .map_err(|e| io::Error::other(format!("vring {q}: {e}")))?;
            device.remember_vring(q, vring.clone());
            threads.push(QueueThread::start(&device, q, vring.clone(), name)?);
            vrings.push(vring);
        }
        Ok(VhostSession {
            device,
            name: name.to_string(),
            mem,
            mappings: Vec::new(),
            vrings,
            threads,
            owned: false,
            acked_features: 0,
            acked_protocol: 0,
            inflight: None,
            announced: vec![false; queues],
        })
    }

    /// Stops the queue threads (after the connection ended); in-flight requests stay with the
    /// device, for [`BlkDevice::drain`].
    pub fn stop_threads(&mut self) {
        for t in &mut self.threads {
            t.stop();
        }
    }

    fn vring(&self, index: u32) -> VhostUserResult<&VringRwLock<GuestMemAtomic>> {
        self.vrings
            .get(index as usize)
            .ok_or(VhostUserError::InvalidParam)
    }

    fn protocol_features_acked(&self) -> bool {
        self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    fn frontend_to_gpa(&self, addr: u64) -> VhostUserResult<u64> {
        self.mappings
            .iter()
            .find(|m| addr >= m.frontend_addr && addr - m.frontend_addr < m.size)
            .map(|m| addr - m.frontend_addr + m.gpa)
            .ok_or(VhostUserError::InvalidParam)
    }

    fn publish_memory(&mut self, mem: GuestMemoryMmap<()>) {
        self.mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(mem);
        self.device.update_memory(self.mem.clone());
    }

    /// Starts queue `q` once it has a kick eventfd, recovering its inflight part; wakes its
    /// thread when it is also enabled.
    fn maybe_start(&mut self, q: usize) {
        let Some(vring) = self.vrings.get(q) else {
            return;
        };
        let (has_kick, has_call, ready, enabled) = {
            let state = vring.get_ref();
            (
                state.get_kick().is_some(),
                state.get_call().is_some(),
                state.get_queue().ready(),
                state.is_enabled(),
            )
        };
        if has_kick && !ready {
            let size = vring.get_ref().get_queue().size();
            if let Some(region) = &self.inflight {
                match (region.queue(q as u16, size), vring.queue_used_idx()) {
                    (Some(mut part), Ok(used)) => {
                        let recovered = part.recover(used);
                        let count = recovered.heads.len();
                        // Everything taken from the ring was answered (used) or is in flight.
                        vring.set_queue_next_used(used);
                        vring.set_queue_next_avail(used.wrapping_add(count as u16));
                        if recovered.fresh {
                            log::info!(
                                "{}: queue {q}: inflight tracking starts on a fresh region",
                                self.name
                            );
                        }
                        if count > 0 || recovered.cleared_last_batch {
                            log::warn!(
                                "{}: queue {q}: resubmitting {count} request(s) a previous \
                                 broker left in flight{}",
                                self.name,
                                if recovered.cleared_last_batch {
                                    " (one answered just before it died was not)"
                                } else {
                                    ""
                                }
                            );
                        }
                        self.device.track_inflight(q, part, recovered.heads);
                    }
                    (None, _) => log::warn!(
                        "{}: queue {q} of {size} entries does not fit the inflight region \
                         ({} queue(s) of {}): not tracked",
                        self.name,
                        region.queues(),
                        region.queue_size()
                    ),
                    (_, Err(e)) => {
                        log::warn!("{}: queue {q}: cannot read the used index: {e}", self.name)
                    }
                }
            }
            vring.set_queue_ready(true);
        }
        if has_kick && enabled {
            // One interrupt at every start: a previous broker may have published answers
            // after the frontend stopped listening to it (QEMU tears its interrupt path down
            // on a disconnect, before the old broker's drain), and a guest waiting for them
            // would wait for ever. A spurious interrupt costs the guest one look at its ring.
            if has_call && !self.announced.get(q).copied().unwrap_or(true) {
                let _ = vring.signal_used_queue();
                if let Some(a) = self.announced.get_mut(q) {
                    *a = true;
                }
            }
            if let Some(t) = self.threads.get(q) {
                t.poke();
            }
        }
    }
}

impl Drop for VhostSession {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

impl VhostUserBackendReqHandlerMut for VhostSession {
    fn set_owner(&mut self) -> VhostUserResult<()> {
        if self.owned {
            return Err(VhostUserError::InvalidOperation("already claimed"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostUserResult<()> {
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VhostUserResult<()> {
        for vring in &self.vrings {
            vring.set_enabled(false);
        }
        self.acked_features = 0;
        self.inflight = None;
        Ok(())
    }

    fn get_features(&mut self) -> VhostUserResult<u64> {
        Ok(self.device.features())
    }

    fn set_features(&mut self, features: u64) -> VhostUserResult<()> {
        if features & !self.device.features() != 0 {
            return Err(VhostUserError::InvalidParam);
        }
        self.acked_features = features;
        // Without protocol features the rings are enabled from the start (vhost-user spec,
        // "Ring states").
        if !self.protocol_features_acked() {
            for vring in &self.vrings {
                vring.set_enabled(true);
            }
        }
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for vring in &self.vrings {
            vring.set_queue_event_idx(event_idx);
        }
        for q in 0..self.vrings.len() {
            self.maybe_start(q);
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy: Option<bool>,
    ) -> VhostUserResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy.is_some() {
            return Err(VhostUserError::InvalidOperation(
                "postcopy is not supported",
            ));
        }
        let mut mapped = Vec::new();
        let mut mappings = Vec::new();
        for (region, file) in regions.iter().zip(files) {
            let guest = GuestRegionMmap::new(
                region.mmap_region(file)?,
                GuestAddress(region.guest_phys_addr),
            )
            .ok_or(VhostUserError::InvalidParam)?;
            mappings.push(AddrMapping {
                frontend_addr: region.user_addr,
                size: region.memory_size,
                gpa: region.guest_phys_addr,
            });
            mapped.push(guest);
        }
        let mem = GuestMemoryMmap::from_regions(mapped)
            .map_err(|e| VhostUserError::ReqHandlerError(io::Error::other(e)))?;
        self.publish_memory(mem);
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostUserResult<()> {
        let max = u32::from(self.device.max_queue_size());
        if num == 0 || num > max || !num.is_power_of_two() {
            log::warn!(
                "{}: queue {index}: size {num} refused (a power of two, 1 to {max})",
                self.name
            );
            return Err(VhostUserError::InvalidParam);
        }
        self.vring(index)?.set_queue_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostUserResult<()> {
        let (desc, avail, used) = (
            self.frontend_to_gpa(descriptor)?,
            self.frontend_to_gpa(available)?,
            self.frontend_to_gpa(used)?,
        );
        let vring = self.vring(index)?;
        vring
            .set_queue_info(desc, avail, used)
            .map_err(|_| VhostUserError::InvalidParam)?;
        // The used index lives in guest memory: after a guest reboot it is 0 again, after a
        // broker restart it is where the last one left it.
        let idx = vring
            .queue_used_idx()
            .map_err(|_| VhostUserError::BackendInternalError)?;
        vring.set_queue_next_used(idx);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostUserResult<()> {
        self.vring(index)?.set_queue_next_avail(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostUserResult<VhostUserVringState> {
        let q = index as usize;
        let vring = self.vring(index)?.clone();
        vring.set_queue_ready(false);
        // Stop means quiet: answer what is in flight before telling where the ring stands.
        self.device.drain_queue(q);
        let next_avail = vring.queue_next_avail();
        if let Some(t) = self.threads.get_mut(q) {
            t.set_kick(None);
        }
        if let Some(a) = self.announced.get_mut(q) {
            *a = false;
        }
        vring.set_kick(None);
        vring.set_call(None);
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, file: Option<File>) -> VhostUserResult<()> {
        let q = usize::from(index);
        let vring = self.vring(u32::from(index))?.clone();
        let fd = file.as_ref().map(|f| f.as_raw_fd());
        if let Some(t) = self.threads.get_mut(q) {
            // Unwatched before the old eventfd is closed by `set_kick`.
            t.set_kick(None);
        }
        vring.set_kick(file);
        if let Some(t) = self.threads.get_mut(q) {
            t.set_kick(fd);
        }
        self.maybe_start(q);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, file: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_call(file);
        self.maybe_start(usize::from(index));
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, file: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_err(file);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostUserResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostUserResult<()> {
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostUserResult<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostUserResult<()> {
        if !self.protocol_features_acked() {
            return Err(VhostUserError::InactiveFeature(
                VhostUserVirtioFeatures::PROTOCOL_FEATURES,
            ));
        }
        self.vring(index)?.set_enabled(enable);
        self.maybe_start(index as usize);
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<Vec<u8>> {
        Ok(self.device.read_config(offset, size))
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<()> {
        // Nothing in virtio-blk's config space is ours to change from the frontend
        // (writeback is not offered).
        Err(VhostUserError::InvalidOperation(
            "the config space is read-only",
        ))
    }

    fn set_gpu_socket(&mut self, _gpu: GpuBackend) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostUserResult<File> {
        Err(VhostUserError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        asked: &VhostUserInflight,
    ) -> VhostUserResult<(VhostUserInflight, File)> {
        if usize::from(asked.num_queues) > self.vrings.len()
            || asked.queue_size > self.device.max_queue_size()
        {
            log::warn!(
                "{}: inflight region for {} queue(s) of {} refused (this disk: {} of at most {})",
                self.name,
                asked.num_queues,
                asked.queue_size,
                self.vrings.len(),
                self.device.max_queue_size()
            );
            return Err(VhostUserError::InvalidParam);
        }
        let region = InflightRegion::create(asked.num_queues, asked.queue_size)
            .map_err(|e| VhostUserError::ReqHandlerError(io::Error::other(e)))?;
        let file = region
            .file()
            .try_clone()
            .map_err(VhostUserError::ReqHandlerError)?;
        let reply =
            VhostUserInflight::new(region.len() as u64, 0, asked.num_queues, asked.queue_size);
        self.inflight = Some(Arc::new(region));
        Ok((reply, file))
    }

    fn set_inflight_fd(&mut self, given: &VhostUserInflight, file: File) -> VhostUserResult<()> {
        if usize::from(given.num_queues) > self.vrings.len()
            || given.queue_size > self.device.max_queue_size()
        {
            return Err(VhostUserError::InvalidParam);
        }
        let region = InflightRegion::adopt(
            file,
            given.mmap_size,
            given.mmap_offset,
            given.num_queues,
            given.queue_size,
        )
        .map_err(|e| {
            log::warn!("{}: SET_INFLIGHT_FD: {e}", self.name);
            VhostUserError::InvalidParam
        })?;
        self.inflight = Some(Arc::new(region));
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VhostUserResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        file: File,
        postcopy: Option<bool>,
    ) -> VhostUserResult<Option<VhostUserMemoryRegionBase>> {
        if postcopy.is_some() {
            return Err(VhostUserError::InvalidOperation(
                "postcopy is not supported",
            ));
        }
        if self.mappings.len() as u64 >= MAX_MEM_SLOTS {
            return Err(VhostUserError::InvalidParam);
        }
        let guest = Arc::new(
            GuestRegionMmap::new(
                region.mmap_region(file)?,
                GuestAddress(region.guest_phys_addr),
            )
            .ok_or(VhostUserError::InvalidParam)?,
        );
        let mem = {
            use vm_memory::GuestAddressSpace;
            self.mem
                .memory()
                .insert_region(guest)
                .map_err(|e| VhostUserError::ReqHandlerError(io::Error::other(e)))?
        };
        self.publish_memory(mem);
        self.mappings.push(AddrMapping {
            frontend_addr: region.user_addr,
            size: region.memory_size,
            gpa: region.guest_phys_addr,
        });
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostUserResult<()> {
        let mem = {
            use vm_memory::GuestAddressSpace;
            let (mem, _) = self
                .mem
                .memory()
                .remove_region(GuestAddress(region.guest_phys_addr), region.memory_size)
                .map_err(|e| VhostUserError::ReqHandlerError(io::Error::other(e)))?;
            mem
        };
        self.publish_memory(mem);
        self.mappings.retain(|m| m.gpa != region.guest_phys_addr);
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: vhost::vhost_user::message::VhostTransferStateDirection,
        _phase: vhost::vhost_user::message::VhostTransferStatePhase,
        _file: File,
    ) -> VhostUserResult<Option<File>> {
        Err(VhostUserError::InvalidOperation(
            "migration is not supported",
        ))
    }

    fn check_device_state(&mut self) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation(
            "migration is not supported",
        ))
    }

    fn get_shmem_config(&mut self) -> VhostUserResult<VhostUserShMemConfig> {
        Err(VhostUserError::InvalidOperation("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation(
            "dirty logging is not supported",
        ))
    }
}
