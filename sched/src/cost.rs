//! The cost of a request, in units of one 4 KiB random I/O.
//!
//! Shares divide device *work*, not request counts: a 1 MiB read keeps a device busier than a
//! 4 KiB one. weir uses the linear model Linux's iocost uses (block/blk-iocost.c): a fixed
//! per-request part plus a part proportional to size,
//!
//! ```text
//! cost(bytes) = base + per_4k · ⌈bytes / 4096⌉      with base + per_4k = 1
//! ```
//!
//! so a 4 KiB request costs exactly 1. The defaults, `base = 0.5`, `per_4k = 0.5`, make a
//! 64 KiB request cost 8.5 and a 1 MiB request 128.5: large transfers are mostly bandwidth,
//! small ones mostly per-request overhead. Weights (shares) are charged in cost; reservations
//! and IOPS limits count requests, byte limits count bytes, because that is how users state
//! them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostModel {
    /// Fixed part of every request.
    pub base: f64,
    /// Part per started 4 KiB.
    pub per_4k: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            base: 0.5,
            per_4k: 0.5,
        }
    }
}

impl CostModel {
    pub fn cost(&self, bytes: u64) -> f64 {
        let pages = bytes.div_ceil(4096).max(1);
        self.base + self.per_4k * pages as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_4k_request_costs_one_and_cost_grows_linearly() {
        let m = CostModel::default();
        assert_eq!(m.cost(4096), 1.0);
        assert_eq!(m.cost(512), 1.0);
        assert_eq!(m.cost(65536), 8.5);
        assert_eq!(m.cost(1 << 20), 128.5);
        assert_eq!(m.cost(8192) - m.cost(4096), m.cost(12288) - m.cost(8192));
    }
}
