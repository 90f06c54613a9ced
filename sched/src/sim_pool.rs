//! Thin pools in `weir sim`: the margin call and its cures side by side, in seconds
//! (`docs/thin.md`).
//!
//! A pool has a capacity; a tenant's write allocates a new chunk with probability
//! `alloc_pct` (a filler writing fresh space: 100; a database overwriting its files: 0). When
//! an allocating write does not fit, the pool's `on_full` decides:
//!
//! - `pool-stall`: the pool stops — every request of every LUN in it waits until space appears
//!   (or `hold_s` passes): the cascade, one tenant's need stalling every VM on the pool;
//! - `error`: the allocating write fails at once; everything else goes on;
//! - `hold` (weir's broker): that tenant's allocating writes wait, in order, at most `hold_s`;
//!   its reads and overwrites and every other tenant go on.
//!
//! Space appears when the pool grows (`grow_at_s`, `grow_to_mib`).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolFullPolicy {
    #[default]
    Hold,
    Error,
    PoolStall,
}

impl PoolFullPolicy {
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "hold" => Some(Self::Hold),
            "error" => Some(Self::Error),
            "pool-stall" => Some(Self::PoolStall),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub name: String,
    pub capacity_mib: f64,
    /// Already used at the start.
    #[serde(default)]
    pub used_mib: f64,
    #[serde(default = "d_chunk")]
    pub chunk_kib: u64,
    #[serde(default)]
    pub on_full: PoolFullPolicy,
    #[serde(default = "d_hold")]
    pub hold_s: f64,
    /// The pool grows to `grow_to_mib` at `grow_at_s` (space appears).
    #[serde(default)]
    pub grow_at_s: Option<f64>,
    #[serde(default)]
    pub grow_to_mib: Option<f64>,
}

fn d_chunk() -> u64 {
    64
}
fn d_hold() -> f64 {
    30.0
}

impl PoolSpec {
    pub fn problem(&self) -> Option<String> {
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        if !finite_pos(self.capacity_mib) {
            return Some("capacity_mib must be a positive number".into());
        }
        if !self.used_mib.is_finite() || self.used_mib < 0.0 {
            return Some("used_mib must be 0 or more".into());
        }
        if self.chunk_kib == 0 || self.chunk_kib > 65536 {
            return Some("chunk_kib must be 1 to 65536".into());
        }
        if !self.hold_s.is_finite() || self.hold_s < 0.0 {
            return Some("hold_s must be 0 or more seconds".into());
        }
        match (self.grow_at_s, self.grow_to_mib) {
            (None, None) => None,
            (Some(t), Some(m)) if t.is_finite() && t >= 0.0 && finite_pos(m) => None,
            _ => Some("grow_at_s and grow_to_mib go together (a time and a positive size)".into()),
        }
    }
}

/// What the pool says to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Go,
    Hold,
    Error,
}

/// A request waiting for space.
#[derive(Debug, Clone)]
pub struct Held<R> {
    pub req: R,
    pub tenant: usize,
    pub alloc: bool,
    pub since: f64,
}

/// What a pool tick decided: requests to go on, requests to fail.
pub struct Released<R> {
    pub go: Vec<Held<R>>,
    pub failed: Vec<Held<R>>,
}

/// A pool during a run.
#[derive(Debug, Clone)]
pub struct PoolRun<R> {
    pub spec: PoolSpec,
    capacity: f64,
    used: f64,
    chunk: f64,
    /// Pool-stall: stopped until space appears.
    stalled: bool,
    grown: bool,
    held: VecDeque<Held<R>>,
    /// When the pool first could not give a chunk.
    pub full_at_s: Option<f64>,
    pub held_max: usize,
}

impl<R> PoolRun<R> {
    pub fn new(spec: &PoolSpec) -> Self {
        PoolRun {
            capacity: spec.capacity_mib * 1048576.0,
            used: spec.used_mib * 1048576.0,
            chunk: spec.chunk_kib as f64 * 1024.0,
            spec: spec.clone(),
            stalled: false,
            grown: false,
            held: VecDeque::new(),
            full_at_s: None,
            held_max: 0,
        }
    }

    pub fn used_mib(&self) -> f64 {
        self.used / 1048576.0
    }

    pub fn capacity_mib(&self) -> f64 {
        self.capacity / 1048576.0
    }

    fn fits(&self) -> bool {
        self.used + self.chunk <= self.capacity
    }

    /// A request arrives (`alloc`: a write needing a new chunk). `Go` reserves its chunk.
    pub fn admit(&mut self, tenant: usize, alloc: bool, now: f64) -> Admit {
        let policy = self.spec.on_full;
        if policy == PoolFullPolicy::PoolStall && self.stalled {
            return Admit::Hold;
        }
        if !alloc {
            return Admit::Go;
        }
        // In order: a tenant's allocating write waits behind its held ones.
        let behind = self.held.iter().any(|h| h.tenant == tenant && h.alloc);
        if self.fits() && !behind {
            self.used += self.chunk;
            return Admit::Go;
        }
        self.full_at_s.get_or_insert(now);
        match policy {
            PoolFullPolicy::Error => Admit::Error,
            PoolFullPolicy::Hold => Admit::Hold,
            PoolFullPolicy::PoolStall => {
                self.stalled = true;
                Admit::Hold
            }
        }
    }

    pub fn hold(&mut self, h: Held<R>) {
        self.held.push_back(h);
        self.held_max = self.held_max.max(self.held.len());
    }

    /// The pool's periodic look: growth, expiry past `hold_s`, and what may go on, in order.
    pub fn tick(&mut self, now: f64) -> Released<R> {
        if let (Some(at), Some(mib), false) =
            (self.spec.grow_at_s, self.spec.grow_to_mib, self.grown)
        {
            if now >= at {
                self.grown = true;
                self.capacity = self.capacity.max(mib * 1048576.0);
            }
        }
        let mut out = Released {
            go: Vec::new(),
            failed: Vec::new(),
        };
        let hold_s = self.spec.hold_s;
        let mut keep = VecDeque::new();
        for h in std::mem::take(&mut self.held) {
            if now - h.since >= hold_s {
                out.failed.push(h);
            } else {
                keep.push_back(h);
            }
        }
        self.held = keep;
        if self.spec.on_full == PoolFullPolicy::PoolStall && self.stalled {
            if !self.fits() {
                return out;
            }
            self.stalled = false;
        }
        let mut blocked: Vec<usize> = Vec::new();
        let mut keep = VecDeque::new();
        for h in std::mem::take(&mut self.held) {
            let stalled = self.spec.on_full == PoolFullPolicy::PoolStall && self.stalled;
            if stalled || blocked.contains(&h.tenant) {
                keep.push_back(h);
                continue;
            }
            if !h.alloc {
                out.go.push(h);
            } else if self.fits() {
                self.used += self.chunk;
                out.go.push(h);
            } else {
                if self.spec.on_full == PoolFullPolicy::PoolStall {
                    self.stalled = true;
                }
                blocked.push(h.tenant);
                keep.push_back(h);
            }
        }
        self.held = keep;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: PoolFullPolicy) -> PoolSpec {
        PoolSpec {
            name: "p".into(),
            capacity_mib: 1.0,
            used_mib: 0.0,
            chunk_kib: 512,
            on_full: policy,
            hold_s: 5.0,
            grow_at_s: Some(2.0),
            grow_to_mib: Some(2.0),
        }
    }

    #[test]
    fn hold_stops_only_the_allocating_writes_and_releases_them_in_order_on_growth() {
        let mut p: PoolRun<u32> = PoolRun::new(&spec(PoolFullPolicy::Hold));
        assert_eq!(p.admit(0, true, 0.0), Admit::Go);
        assert_eq!(p.admit(0, true, 0.0), Admit::Go);
        assert_eq!(p.admit(0, true, 0.1), Admit::Hold, "full");
        p.hold(Held {
            req: 1,
            tenant: 0,
            alloc: true,
            since: 0.1,
        });
        assert_eq!(p.admit(1, false, 0.2), Admit::Go, "others' reads go on");
        assert_eq!(p.admit(0, false, 0.2), Admit::Go, "its own overwrites too");
        assert!(p.tick(1.0).go.is_empty());
        let r = p.tick(2.0);
        assert_eq!(r.go.iter().map(|h| h.req).collect::<Vec<_>>(), vec![1]);
        assert_eq!(p.full_at_s, Some(0.1));
    }

    #[test]
    fn pool_stall_stops_everyone_until_space_appears() {
        let mut p: PoolRun<u32> = PoolRun::new(&spec(PoolFullPolicy::PoolStall));
        p.admit(0, true, 0.0);
        p.admit(0, true, 0.0);
        assert_eq!(p.admit(0, true, 0.1), Admit::Hold);
        assert_eq!(
            p.admit(1, false, 0.2),
            Admit::Hold,
            "a reader on the pool waits too"
        );
        let r = p.tick(2.5);
        assert_eq!(r.go.len(), 0, "nothing was held by the caller");
        assert_eq!(p.admit(1, false, 2.6), Admit::Go, "space appeared");
    }

    #[test]
    fn error_fails_at_once_and_holds_expire_at_hold_s() {
        let mut p: PoolRun<u32> = PoolRun::new(&PoolSpec {
            grow_at_s: None,
            grow_to_mib: None,
            ..spec(PoolFullPolicy::Error)
        });
        p.admit(0, true, 0.0);
        p.admit(0, true, 0.0);
        assert_eq!(p.admit(0, true, 0.1), Admit::Error);
        let mut h: PoolRun<u32> = PoolRun::new(&PoolSpec {
            grow_at_s: None,
            grow_to_mib: None,
            ..spec(PoolFullPolicy::Hold)
        });
        h.admit(0, true, 0.0);
        h.admit(0, true, 0.0);
        h.hold(Held {
            req: 9,
            tenant: 0,
            alloc: true,
            since: 1.0,
        });
        assert!(h.tick(5.9).failed.is_empty());
        assert_eq!(h.tick(6.0).failed.len(), 1);
    }
}
