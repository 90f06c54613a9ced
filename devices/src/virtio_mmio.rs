//! The virtio-mmio transport, version 2 (virtio 1.x, "modern"): the register file a driver
//! uses to negotiate features and place its queues. Every access here is a trapped MMIO exit,
//! so only configuration goes through it; the queue notification register is an ioeventfd in
//! KVM (a write to it never reaches this code unless no ioeventfd matched), and interrupts go
//! from the backend straight to an irqfd.
//!
//! Register layout: virtio spec 1.2, §4.2.2 "MMIO Device Register Layout".

use crate::VirtioDevice;

pub const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VENDOR_ID: u32 = 0x5749_4552; // "WEIR"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

/// One queue as the driver set it up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueConfig {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// The transport state of one device.
pub struct VirtioMmio {
    device: Box<dyn VirtioDevice>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    status: u32,
    config_generation: u32,
    active: bool,
    name: String,
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}
fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

impl VirtioMmio {
    pub fn new(name: &str, device: Box<dyn VirtioDevice>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max_size| QueueConfig {
                max_size,
                size: max_size,
                ..QueueConfig::default()
            })
            .collect();
        VirtioMmio {
            device,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            config_generation: 0,
            active: false,
            name: name.to_string(),
        }
    }

    fn queue(&mut self) -> Option<&mut QueueConfig> {
        let sel = self.queue_sel as usize;
        self.queues.get_mut(sel)
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let v = match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => 2,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let f = self.device.features();
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready)),
            // The backend signals completions through the irqfd directly, so the transport
            // cannot know which cause it was: "used buffer" is always a safe answer.
            REG_INTERRUPT_STATUS => 1,
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            self.device.write_config(offset - REG_CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "{}: {}-byte write at {offset:#x} ignored",
                self.name,
                data.len()
            );
            return;
        };
        let v = u32::from_le_bytes(bytes);
        // Queue and feature registers are only writable in the phase the spec allows.
        let configuring = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, v),
                    1 => set_high(&mut self.driver_features, v),
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM if configuring => {
                if let Some(q) = self.queue() {
                    if v > 0 && v <= u32::from(q.max_size) && v.is_power_of_two() {
                        q.size = v as u16;
                    }
                }
            }
            REG_QUEUE_READY if configuring => {
                if let Some(q) = self.queue() {
                    q.ready = v == 1;
                }
            }
            REG_QUEUE_DESC_LOW if configuring => {
                if let Some(q) = self.queue() {
                    set_low(&mut q.desc, v)
                }
            }
            REG_QUEUE_DESC_HIGH if configuring => {
                if let Some(q) = self.queue() {
                    set_high(&mut q.desc, v)
                }
            }
            REG_QUEUE_DRIVER_LOW if configuring => {
                if let Some(q) = self.queue() {
                    set_low(&mut q.driver, v)
                }
            }
            REG_QUEUE_DRIVER_HIGH if configuring => {
                if let Some(q) = self.queue() {
                    set_high(&mut q.driver, v)
                }
            }
            REG_QUEUE_DEVICE_LOW if configuring => {
                if let Some(q) = self.queue() {
                    set_low(&mut q.device, v)
                }
            }
            REG_QUEUE_DEVICE_HIGH if configuring => {
                if let Some(q) = self.queue() {
                    set_high(&mut q.device, v)
                }
            }
            REG_QUEUE_NOTIFY => self.device.notify(v),
            REG_INTERRUPT_ACK => {}
            REG_STATUS => self.set_status(v),
            _ => log::debug!("{}: write {v:#x} at {offset:#x} ignored", self.name),
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            if self.active {
                self.device.reset();
            }
            *self = VirtioMmio::new(
                &self.name,
                std::mem::replace(&mut self.device, Box::new(Gone)),
            );
            return;
        }
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            // Only features the device offered may be accepted.
            if self.driver_features & !self.device.features() != 0 {
                log::warn!(
                    "{}: the driver accepted features {:#x} that were not offered",
                    self.name,
                    self.driver_features & !self.device.features()
                );
                self.status = v & !STATUS_FEATURES_OK;
                return;
            }
        }
        if v & STATUS_DRIVER_OK != 0 && !self.active && v & STATUS_FEATURES_OK == 0 {
            // A version-2 device runs only on features the driver confirmed (virtio 1.x
            // §3.1.1): DRIVER_OK before FEATURES_OK would activate it on whatever half-written
            // feature words the registers hold. Refuse until the driver resets.
            log::warn!(
                "{}: the driver set DRIVER_OK without FEATURES_OK; the device needs a reset",
                self.name
            );
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        self.status = v;
        if v & STATUS_DRIVER_OK != 0 && !self.active && v & STATUS_FAILED == 0 {
            match self.device.activate(self.driver_features, &self.queues) {
                Ok(()) => self.active = true,
                Err(e) => {
                    log::error!("{}: cannot activate: {e}", self.name);
                    self.status |= STATUS_NEEDS_RESET;
                }
            }
        }
    }
}

/// Placeholder while a reset rebuilds the transport.
struct Gone;
impl VirtioDevice for Gone {
    fn device_type(&self) -> u32 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0)
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(&mut self, _: u64, _: &[QueueConfig]) -> Result<(), String> {
        Err("gone".into())
    }
    fn reset(&mut self) {}
    fn notify(&mut self, _: u32) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Seen {
        activated: Option<(u64, Vec<QueueConfig>)>,
        notified: Vec<u32>,
        resets: u32,
    }
    struct Fake(Arc<Mutex<Seen>>);
    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 256]
        }
        fn features(&self) -> u64 {
            (1 << 32) | (1 << 29)
        }
        fn read_config(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8)
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, f: u64, q: &[QueueConfig]) -> Result<(), String> {
            self.0.lock().unwrap().activated = Some((f, q.to_vec()));
            Ok(())
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
        fn notify(&mut self, q: u32) {
            self.0.lock().unwrap().notified.push(q);
        }
    }

    fn r(t: &mut VirtioMmio, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w(t: &mut VirtioMmio, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    #[test]
    fn a_driver_negotiates_places_a_queue_and_activates_the_device() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut t = VirtioMmio::new("t", Box::new(Fake(seen.clone())));
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC_VALUE);
        assert_eq!((r(&mut t, REG_VERSION), r(&mut t, REG_DEVICE_ID)), (2, 2));
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 256);
        w(&mut t, REG_QUEUE_NUM, 128);
        w(&mut t, REG_QUEUE_DESC_LOW, 0x1000);
        w(&mut t, REG_QUEUE_DESC_HIGH, 0x1);
        w(&mut t, REG_QUEUE_DRIVER_LOW, 0x2000);
        w(&mut t, REG_QUEUE_DEVICE_LOW, 0x3000);
        w(&mut t, REG_QUEUE_READY, 1);
        w(&mut t, REG_STATUS, 0xf);
        let (f, q) = seen.lock().unwrap().activated.clone().unwrap();
        assert_eq!(f, 1 << 32);
        assert_eq!(
            q[1],
            QueueConfig {
                max_size: 256,
                size: 128,
                ready: true,
                desc: 0x1_0000_1000,
                driver: 0x2000,
                device: 0x3000
            }
        );
        assert!(!q[0].ready);
        // After DRIVER_OK the queue registers are frozen; notify goes to the device.
        w(&mut t, REG_QUEUE_NUM, 64);
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(seen.lock().unwrap().notified, vec![1]);
        let mut c = [0u8; 2];
        t.read(REG_CONFIG + 8, &mut c);
        assert_eq!(c, [8, 8]);
        // Reset: back to square one.
        w(&mut t, REG_STATUS, 0);
        assert_eq!(seen.lock().unwrap().resets, 1);
        assert_eq!(r(&mut t, REG_STATUS), 0);
    }

    #[test]
    fn features_not_offered_are_refused_at_features_ok() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut t = VirtioMmio::new("t", Box::new(Fake(seen)));
        w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut t, REG_DRIVER_FEATURES, 1 << 5);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_without_features_ok_does_not_activate() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut t = VirtioMmio::new("t", Box::new(Fake(seen.clone())));
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_NUM, 128);
        w(&mut t, REG_QUEUE_READY, 1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert!(seen.lock().unwrap().activated.is_none());
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_DRIVER_OK, 0);
        // After a reset the proper sequence works.
        w(&mut t, REG_STATUS, 0);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(&mut t, REG_STATUS, 0xf);
        assert!(seen.lock().unwrap().activated.is_some());
    }
}
