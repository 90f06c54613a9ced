//! The vhost-user-blk frontend: a virtio block device whose queues the broker serves.
//!
//! At connect it asks the backend for its features, protocol features, queue count and
//! configuration space. When the driver sets DRIVER_OK it forwards, in order: the accepted
//! features, the memory table (the guest RAM memfd), and per queue its size, addresses
//! (translated to this process's mapping, as vhost-user wants frontend virtual addresses),
//! base index, call eventfd (an irqfd on the device's GSI) and kick eventfd (an ioeventfd on
//! QueueNotify with the queue's index), then enables the rings. From then on the data path is
//! guest ↔ broker only.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::VirtioDevice;
use crate::virtio_mmio::QueueConfig;

const VIRTIO_ID_BLOCK: u32 = 2;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `struct virtio_blk_config` as far as the fields we may forward go.
const CONFIG_SIZE: u32 = 60;

#[derive(Debug, thiserror::Error)]
pub enum VhostBlkError {
    #[error("cannot connect to {path}: {source} (is `weir broker` serving it?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: vhost::Error,
    },
    #[error("{path}: {what}: {source}")]
    Protocol {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("{path}: the backend offers {offered} queue(s), {wanted} asked for")]
    Queues {
        path: PathBuf,
        offered: u64,
        wanted: u16,
    },
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// One vhost-user-blk disk.
pub struct VhostUserBlk {
    path: PathBuf,
    frontend: Frontend,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    queue_sizes: Vec<u16>,
    config: Vec<u8>,
    /// Per queue: (kick, call).
    pub kicks: Vec<EventFd>,
    pub calls: Vec<EventFd>,
    memory: GuestMemoryMmap,
    memfd: i32,
}

impl VhostUserBlk {
    /// Connects and learns what the backend offers. `memory` is the guest RAM; `memfd` its fd.
    pub fn connect(
        path: &Path,
        queues: u16,
        queue_size: u16,
        memory: GuestMemoryMmap,
        memfd: i32,
    ) -> Result<Self, VhostBlkError> {
        let p = path.to_path_buf();
        let proto = |what: &'static str| {
            let p = p.clone();
            move |source| VhostBlkError::Protocol {
                path: p,
                what,
                source,
            }
        };
        let mut frontend = Frontend::connect(path, u64::from(queues)).map_err(|source| {
            VhostBlkError::Connect {
                path: p.clone(),
                source,
            }
        })?;
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(proto("GET_PROTOCOL_FEATURES"))?;
            protocol =
                offered & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ);
            frontend
                .set_protocol_features(protocol)
                .map_err(proto("SET_PROTOCOL_FEATURES"))?;
        }
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let offered = frontend.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?;
            if offered < u64::from(queues) {
                return Err(VhostBlkError::Queues {
                    path: p,
                    offered,
                    wanted: queues,
                });
            }
        } else if queues > 1 {
            return Err(VhostBlkError::Queues {
                path: p,
                offered: 1,
                wanted: queues,
            });
        }
        let mut blk = VhostUserBlk {
            path: p,
            frontend,
            backend_features,
            protocol,
            queue_sizes: vec![queue_size; usize::from(queues)],
            config: vec![0; CONFIG_SIZE as usize],
            kicks: Vec::new(),
            calls: Vec::new(),
            memory,
            memfd,
        };
        for _ in 0..queues {
            blk.kicks
                .push(EventFd::new(0).map_err(VhostBlkError::EventFd)?);
            blk.calls
                .push(EventFd::new(0).map_err(VhostBlkError::EventFd)?);
        }
        blk.refresh_config();
        Ok(blk)
    }

    /// Capacity in 512-byte sectors, from the configuration space.
    pub fn capacity(&self) -> u64 {
        u64::from_le_bytes(self.config[..8].try_into().unwrap_or([0; 8]))
    }

    fn refresh_config(&mut self) {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return;
        }
        let buf = vec![0u8; CONFIG_SIZE as usize];
        match self
            .frontend
            .get_config(0, CONFIG_SIZE, VhostUserConfigFlags::WRITABLE, &buf)
        {
            Ok((_, payload)) => {
                let n = payload.len().min(self.config.len());
                self.config[..n].copy_from_slice(&payload[..n]);
            }
            Err(e) => log::warn!("{}: GET_CONFIG: {e}", self.path.display()),
        }
    }

    fn host_addr(&self, gpa: u64) -> Result<u64, String> {
        self.memory
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| format!("queue address {gpa:#x} is not in guest RAM: {e}"))
    }

    fn setup(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), String> {
        let err = |what: &str| {
            let what = what.to_string();
            move |e: vhost::Error| format!("{what}: {e}")
        };
        let mut f = features;
        if self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            f |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        self.frontend.set_features(f).map_err(err("SET_FEATURES"))?;
        let region = self
            .memory
            .iter()
            .next()
            .ok_or_else(|| "no guest RAM".to_string())?;
        use vm_memory::GuestMemoryRegion;
        let info = VhostUserMemoryRegionInfo {
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: self.memfd,
        };
        self.frontend
            .set_mem_table(&[info])
            .map_err(err("SET_MEM_TABLE"))?;
        for (i, q) in queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            let cfg = VringConfigData {
                queue_max_size: q.max_size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: self.host_addr(q.desc)?,
                used_ring_addr: self.host_addr(q.device)?,
                avail_ring_addr: self.host_addr(q.driver)?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(i, q.size)
                .map_err(err("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &cfg)
                .map_err(err("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
                .map_err(err("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &self.calls[i])
                .map_err(err("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &self.kicks[i])
                .map_err(err("SET_VRING_KICK"))?;
            // With protocol features negotiated, rings start disabled.
            if self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(err("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    pub fn socket(&self) -> &Path {
        &self.path
    }

    pub fn kick_fd(&self, q: usize) -> Option<i32> {
        self.kicks.get(q).map(|e| e.as_raw_fd())
    }
}

impl VirtioDevice for VhostUserBlk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        self.backend_features & !VHOST_USER_F_PROTOCOL_FEATURES
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 {
            // The driver starts reading the config: take a fresh copy (capacity may change).
            self.refresh_config();
        }
        let start = offset as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(start + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "{}: config write of {} bytes at {offset:#x} ignored",
            self.path.display(),
            data.len()
        );
    }
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), String> {
        self.setup(features, queues)
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
    fn reset(&mut self) {
        for i in 0..self.queue_sizes.len() {
            let _ = self.frontend.set_vring_enable(i, false);
        }
    }
    fn notify(&mut self, queue: u32) {
        // Only reached when no ioeventfd matched: pass the kick on by hand.
        if let Some(k) = self.kicks.get(queue as usize) {
            let _ = k.write(1);
        }
    }
}
