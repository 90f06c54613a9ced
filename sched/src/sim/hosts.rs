//! Several hosts on one array, as several brokers see it (PARDA, Gulati et al., FAST '09):
//! each host has its own dispatcher and window for a LUN and sees only its own requests; the
//! array LUN behind them is one. The engine runs one *lane* per (LUN, host) with tenants on
//! it — a LUN entry named `lun@host`, its window law's `β` scaled by the host's share — and
//! sends every lane's requests to its LUN's array model.

use super::SimScenario;

/// The scenario as lanes, and what the engine needs to map them back.
pub(super) struct Lanes {
    /// The scenario with one LUN entry per lane and every tenant on its lane.
    pub scenario: SimScenario,
    /// Per lane: the index of its LUN in the original scenario (the array LUN).
    pub array_lun: Vec<usize>,
    /// Per lane: its host's share (1 without hosts).
    pub share: Vec<f64>,
}

/// One lane per LUN without hosts; with hosts, one per (LUN, host with tenants on it), in LUN
/// order then host order. A host's share defaults to its tenants' weights on the LUN.
pub(super) fn expand(s: &SimScenario) -> Lanes {
    if s.hosts.is_empty() {
        return Lanes {
            scenario: s.clone(),
            array_lun: (0..s.luns.len()).collect(),
            share: vec![1.0; s.luns.len()],
        };
    }
    let mut scenario = s.clone();
    scenario.luns.clear();
    let (mut array_lun, mut share) = (Vec::new(), Vec::new());
    for (i, lun) in s.luns.iter().enumerate() {
        for h in &s.hosts {
            let on = |t: &&super::TenantSpec| t.lun == lun.name && t.host.as_ref() == Some(&h.name);
            let weights: f64 = s.tenants.iter().filter(on).map(|t| t.policy.weight).sum();
            if !s.tenants.iter().any(|t| on(&t)) {
                continue;
            }
            let host_share = h.share.unwrap_or(weights);
            let mut lane = lun.clone();
            lane.name = lane_name(&lun.name, &h.name);
            lane.depth = Some(lun.depth_policy().for_host_share(host_share));
            scenario.luns.push(lane);
            array_lun.push(i);
            share.push(host_share);
        }
    }
    for t in &mut scenario.tenants {
        if let Some(h) = &t.host {
            t.lun = lane_name(&t.lun, h);
        }
    }
    Lanes {
        scenario,
        array_lun,
        share,
    }
}

/// A lane's name: the LUN as one host's broker sees it.
pub fn lane_name(lun: &str, host: &str) -> String {
    format!("{lun}@{host}")
}
