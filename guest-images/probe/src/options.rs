//! The command line: where it is (zero page or PVH start info) and what it says.

/// The command line the loader gave us.
pub fn boot_cmdline(zero_page: u64, pvh_info: u64) -> &'static str {
    // SAFETY: the loader put these structures in identity-mapped RAM; we read within them.
    let ptr = unsafe {
        if pvh_info != 0 {
            core::ptr::read_volatile((pvh_info + 0x18) as *const u64)
        } else if zero_page != 0 {
            let lo = core::ptr::read_volatile((zero_page + 0x228) as *const u32);
            let hi = core::ptr::read_volatile((zero_page + 0xc8) as *const u32);
            (u64::from(hi) << 32) | u64::from(lo)
        } else {
            0
        }
    };
    if ptr == 0 {
        return "";
    }
    let mut len = 0usize;
    // SAFETY: a NUL-terminated string in RAM; bounded at 4 KiB.
    while len < 4096 && unsafe { core::ptr::read_volatile((ptr as usize + len) as *const u8) } != 0
    {
        len += 1;
    }
    // SAFETY: `len` bytes at `ptr` were just read.
    let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len) };
    core::str::from_utf8(bytes).unwrap_or("")
}

/// A virtio-mmio device announced as `virtio_mmio.device=<size>@<base>:<irq>`.
#[derive(Clone, Copy, Debug)]
pub struct MmioDevice {
    pub base: u64,
    #[allow(dead_code)]
    pub size: u64,
    pub irq: u32,
}

pub fn parse_num(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1024),
        b'M' | b'm' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let v = if let Some(hex) = digits.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()?
    } else {
        digits.parse().ok()?
    };
    v.checked_mul(mult)
}

pub fn parse_device(v: &str) -> Option<MmioDevice> {
    let (size, rest) = v.split_once('@')?;
    let (base, irq) = rest.split_once(':')?;
    Some(MmioDevice {
        base: parse_num(base)?,
        size: parse_num(size)?,
        irq: parse_num(irq)? as u32,
    })
}

/// `key=value` pairs of the form `probe.<key>=<value>`, and the devices.
pub struct Options {
    pub devices: [Option<MmioDevice>; 8],
    pub pairs: [(&'static str, &'static str); 32],
    pub npairs: usize,
}

impl Options {
    pub fn parse(cmdline: &'static str) -> Options {
        let mut o = Options {
            devices: [None; 8],
            pairs: [("", ""); 32],
            npairs: 0,
        };
        let mut nd = 0;
        for word in cmdline.split_ascii_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            if k == "virtio_mmio.device" {
                if nd < o.devices.len() {
                    o.devices[nd] = parse_device(v);
                    nd += 1;
                }
            } else if let Some(key) = k.strip_prefix("probe.")
                && o.npairs < o.pairs.len()
            {
                o.pairs[o.npairs] = (key, v);
                o.npairs += 1;
            }
        }
        o
    }

    pub fn get(&self, key: &str) -> Option<&'static str> {
        self.pairs[..self.npairs]
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    pub fn num(&self, key: &str, default: u64) -> u64 {
        self.get(key).and_then(parse_num).unwrap_or(default)
    }
}
