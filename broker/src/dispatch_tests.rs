//! The LUN dispatcher, the array runtime and the scheduler thread together.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use weir_sched::array::{EmulatedArray, LunModel, PortFault};
use weir_sched::depth::DepthPolicy;
use weir_sched::path::MultipathPolicy;

use crate::array_runtime::ArrayRuntime;
use crate::dispatch::*;
use crate::inbox::{BrokerClock, Inbox, InboxEvent};
use crate::scheduler_thread::{ArrayEvent, ArrayEventKind, SchedulerThread};

fn grants(inbox: &Inbox) -> Vec<usize> {
    inbox
        .take()
        .into_iter()
        .filter_map(|e| match e {
            InboxEvent::Granted { slot, .. } => Some(slot),
            _ => None,
        })
        .collect()
}

#[test]
fn a_window_of_two_alternates_between_equal_tenants_and_signals_other_owners() {
    let d = LunDispatcher::new(
        "l",
        vec![TenantPolicy::default(), TenantPolicy::default()],
        SchedulerKind::Mclock,
        DepthPolicy::Fixed { depth: 2 },
        None,
    );
    let (a, b) = (
        Arc::new(Inbox::new().unwrap()),
        Arc::new(Inbox::new().unwrap()),
    );
    for slot in 0..4 {
        d.enqueue(0, &a, slot, 4096, false, 0.0);
        d.enqueue(1, &b, 10 + slot, 4096, false, 0.0);
    }
    d.pump(0.0, Some(&a));
    assert_eq!((grants(&a), grants(&b)), (vec![0], vec![10]));
    assert_eq!(d.counters.in_flight.load(Ordering::Relaxed), 2);
    assert_eq!(d.counters.queued.load(Ordering::Relaxed), 6);
    // b was signalled (its eventfd is readable), a was not (it asked).
    assert!(a.fd.read().is_err(), "a's eventfd was not written");
    d.on_complete(0.001, 0, 0.001, 0, 0.001, 4096, None);
    d.pump(0.001, None);
    d.on_complete(0.002, 0, 0.001, 0, 0.001, 4096, None);
    d.pump(0.002, None);
    let (ga, gb) = (grants(&a).len(), grants(&b).len());
    assert_eq!((ga, gb), (1, 1), "equal weights alternate");
    // What a still had queued comes back to it; b's stay.
    assert_eq!(d.cancel_owner(&a).len(), 4 - 1 - ga);
    assert_eq!(d.counters.queued.load(Ordering::Relaxed), 2);
}

#[test]
fn a_port_budget_shares_its_queue_in_proportion() {
    let b = PortBudget::new(32, 2);
    assert_eq!(b.effective(0, 16), 16); // alone so far: 16 ≤ 32
    assert_eq!(b.effective(1, 48), 24); // 16 + 48 = 64 > 32: 48 · 32 / 64
    assert_eq!(b.effective(0, 16), 8);
    assert_eq!(b.effective(1, 16), 16); // 16 + 16 fits again
    assert_eq!(PortBudget::new(2, 3).effective(2, 1), 1, "never below one");
}

#[test]
fn the_scheduler_thread_applies_capacity_events_on_time() {
    let wake = Arc::new((Mutex::new(false), Condvar::new()));
    let array = Arc::new(ArrayRuntime::new(
        EmulatedArray::new(
            &EmulatedArray::port_limits(&[32]),
            &[LunModel::default()],
            1,
        ),
        wake.clone(),
    ));
    let clock = BrokerClock::new();
    let thread = SchedulerThread::start(
        clock,
        Vec::new(),
        vec![array.clone()],
        vec![ArrayEvent {
            at_s: 0.1,
            kind: ArrayEventKind::Capacity { lun: 0, pct: 50.0 },
            label: "test".into(),
        }],
        wake,
        Arc::default(),
    )
    .unwrap();
    assert_eq!(array.servers(0), 16);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(array.servers(0), 8);
    drop(thread);
}

/// Liveness under load: two tenants, many tiny services, the clock thread completing them
/// concurrently with the dispatcher. Every request must be granted and finished and the
/// window must end empty. (A model completion that beat its waiter's registration used to be
/// lost — a window slot leaked until the LUN starved, seen with real guests; this test does
/// not reliably reproduce that narrow race, it guards the accounting around it.)
#[test]
fn every_request_finishes_under_racing_model_completions() {
    let wake = Arc::new((Mutex::new(false), Condvar::new()));
    let model = LunModel {
        servers: 4,
        read_base_us: 2.0,
        unit_mib_per_s: 1e9,
        busy_threshold: 4,
        ..LunModel::default()
    };
    let array = Arc::new(ArrayRuntime::new(
        EmulatedArray::new(&EmulatedArray::port_limits(&[64]), &[model], 3),
        wake.clone(),
    ));
    let d = Arc::new(LunDispatcher::new(
        "l",
        vec![TenantPolicy::default(), TenantPolicy::default()],
        SchedulerKind::Mclock,
        DepthPolicy::Fixed { depth: 8 },
        Some((array.clone(), 0)),
    ));
    let clock = BrokerClock::new();
    let _thread = SchedulerThread::start(
        clock,
        vec![d.clone()],
        vec![array],
        Vec::new(),
        wake,
        Arc::default(),
    )
    .unwrap();
    const PER_TENANT: usize = 4000;
    let workers: Vec<_> = (0..2usize)
        .map(|tenant| {
            let d = d.clone();
            std::thread::spawn(move || {
                let inbox = Arc::new(Inbox::new().unwrap());
                let mut state: HashMap<usize, (Option<(u64, f64)>, bool)> = HashMap::new();
                let (mut next, mut done) = (0usize, 0usize);
                let deadline = Instant::now() + Duration::from_secs(30);
                while done < PER_TENANT {
                    assert!(
                        Instant::now() < deadline,
                        "tenant {tenant}: {done} of {PER_TENANT} finished"
                    );
                    while next < PER_TENANT && state.len() < 16 {
                        state.insert(next, (None, false));
                        d.enqueue(tenant, &inbox, next, 4096, false, clock.now());
                        next += 1;
                    }
                    d.pump(clock.now(), Some(&inbox));
                    for e in inbox.take() {
                        match e {
                            InboxEvent::Granted {
                                slot,
                                epoch,
                                dispatched_at,
                                ..
                            } => {
                                state.get_mut(&slot).unwrap().0 = Some((epoch, dispatched_at));
                            }
                            InboxEvent::ModelDone { slot, .. } => {
                                state.get_mut(&slot).unwrap().1 = true
                            }
                            InboxEvent::Failed { slot } => panic!("slot {slot} failed"),
                            InboxEvent::SpaceRetry => panic!("no thin pool here"),
                        }
                    }
                    let finished: Vec<usize> = state
                        .iter()
                        .filter(|(_, (g, m))| g.is_some() && *m)
                        .map(|(s, _)| *s)
                        .collect();
                    for slot in finished {
                        let (g, _) = state.remove(&slot).unwrap();
                        let (epoch, at) = g.unwrap();
                        d.on_complete(clock.now(), epoch, clock.now() - at, 0, 0.0, 4096, None);
                        done += 1;
                    }
                    std::thread::yield_now();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(d.counters.in_flight.load(Ordering::Relaxed), 0);
}

#[test]
fn an_emulated_lun_answers_queue_full_with_a_retry_and_the_model_finishes_requests() {
    let wake = Arc::new((Mutex::new(false), Condvar::new()));
    let model = LunModel {
        servers: 1,
        busy_threshold: 0,
        ..LunModel::default()
    };
    let array = Arc::new(ArrayRuntime::new(
        EmulatedArray::new(&EmulatedArray::port_limits(&[1]), &[model], 1),
        wake,
    ));
    let d = LunDispatcher::new(
        "l",
        vec![TenantPolicy::default()],
        SchedulerKind::Fifo,
        DepthPolicy::Fixed { depth: 4 },
        Some((array.clone(), 0)),
    );
    let inbox = Arc::new(Inbox::new().unwrap());
    d.enqueue(0, &inbox, 1, 4096, false, 0.0);
    d.enqueue(0, &inbox, 2, 4096, false, 0.0);
    d.pump(0.0, Some(&inbox));
    // The port holds one request: the second is refused and waits for its retry.
    assert_eq!(grants(&inbox), vec![1]);
    assert_eq!(d.counters.congestion.load(Ordering::Relaxed), 1);
    assert_eq!(d.next_deadline(), Some(RETRY_DELAY_S));
    let done = array.next_completion().expect("the model serves slot 1");
    array.fire_due(done);
    assert_eq!(
        inbox.take(),
        vec![InboxEvent::ModelDone {
            slot: 1,
            ok: true,
            at: done
        }]
    );
    d.on_complete(done, 0, done, 0, done, 4096, None);
    d.pump(done.max(RETRY_DELAY_S), None);
    assert_eq!(grants(&inbox), vec![2]);
}

fn two_port_lun(policy: MultipathPolicy) -> (Arc<ArrayRuntime>, LunDispatcher) {
    let wake = Arc::new((Mutex::new(false), Condvar::new()));
    // Service takes about a second: nothing finishes on its own during a test.
    let model = LunModel {
        servers: 8,
        busy_threshold: 8,
        read_base_us: 1e6,
        write_base_us: 1e6,
        ..LunModel::default()
    };
    let array = Arc::new(ArrayRuntime::new(
        EmulatedArray::new(&EmulatedArray::port_limits(&[64, 64]), &[model], 1),
        wake,
    ));
    let routes = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, n)| PathRoute {
            name: n.to_string(),
            port: Some((i, n.to_string())),
            group: PathGroup::Optimized,
            max_in_flight: 16,
        })
        .collect();
    let d = LunDispatcher::new(
        "l",
        vec![TenantPolicy::default()],
        SchedulerKind::Fifo,
        DepthPolicy::Fixed { depth: 8 },
        Some((array.clone(), 0)),
    )
    .with_paths(routes, policy, None);
    (array, d)
}

fn granted_paths(inbox: &Inbox) -> Vec<(usize, usize)> {
    inbox
        .take()
        .into_iter()
        .filter_map(|e| match e {
            InboxEvent::Granted { slot, path, .. } => Some((slot, path)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_port_going_down_fails_its_requests_and_they_move_to_the_other_path() {
    let (array, d) = two_port_lun(MultipathPolicy {
        selector: weir_sched::path::PathSelectorKind::RoundRobin { ios: 1 },
        ..MultipathPolicy::default()
    });
    let inbox = Arc::new(Inbox::new().unwrap());
    for slot in 0..4 {
        d.enqueue(0, &inbox, slot, 4096, true, 0.0);
    }
    d.pump(0.0, Some(&inbox));
    let grants = granted_paths(&inbox);
    assert_eq!(grants, vec![(0, 0), (1, 1), (2, 0), (3, 1)]);
    array.set_port_fault(0.001, 0, PortFault::Down);
    array.fire_due(0.001);
    let failed: Vec<usize> = inbox
        .take()
        .into_iter()
        .filter_map(|e| match e {
            InboxEvent::ModelDone {
                slot, ok: false, ..
            } => Some(slot),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![0, 2], "port a requests fail");
    for slot in failed {
        let back = crate::dispatch::Returned {
            owner: &inbox,
            slot,
            bytes: 4096,
            write: true,
            first_dispatch: 0.0,
            failed_at: None,
        };
        d.reissue(0.001, 0, back, "transport error");
    }
    assert_eq!(
        granted_paths(&inbox),
        vec![(0, 1), (2, 1)],
        "both move to b"
    );
    assert_eq!(d.path_snapshots()[0].state, PathState::Failed);
    assert_eq!(d.counters.reissued.load(Ordering::Relaxed), 2);
    // New requests avoid the failed path.
    d.enqueue(0, &inbox, 9, 4096, false, 0.002);
    d.pump(0.002, Some(&inbox));
    assert_eq!(granted_paths(&inbox), vec![(9, 1)]);
}

#[test]
fn with_every_path_down_requests_are_held_then_failed_at_the_bound() {
    let (array, d) = two_port_lun(MultipathPolicy {
        hold_s: 0.5,
        ..MultipathPolicy::default()
    });
    array.set_port_fault(0.0, 0, PortFault::Down);
    array.set_port_fault(0.0, 1, PortFault::Down);
    let inbox = Arc::new(Inbox::new().unwrap());
    d.enqueue(0, &inbox, 1, 4096, false, 0.0);
    d.pump(0.0, Some(&inbox));
    // Both paths refused (port down): failed, the request is held.
    assert!(inbox.take().is_empty());
    assert_eq!(d.counters.queued.load(Ordering::Relaxed), 1);
    assert_eq!(
        d.next_deadline(),
        Some(0.5),
        "the clock thread wakes at the bound"
    );
    d.tick(0.49);
    assert!(inbox.take().is_empty(), "still held before the bound");
    d.tick(0.5);
    assert_eq!(inbox.take(), vec![InboxEvent::Failed { slot: 1 }]);
    assert_eq!(d.counters.no_path_failures.load(Ordering::Relaxed), 1);
    // A port returns: the checker takes its path back at once (nothing else is usable).
    array.set_port_fault(0.6, 1, PortFault::Up);
    d.check_paths(10.0);
    d.enqueue(0, &inbox, 2, 4096, false, 10.0);
    d.pump(10.0, Some(&inbox));
    assert_eq!(granted_paths(&inbox), vec![(2, 1)]);
}

#[test]
fn a_policy_change_takes_effect_at_once() {
    let d = LunDispatcher::new(
        "l",
        vec![TenantPolicy::default()],
        SchedulerKind::Fifo,
        DepthPolicy::Fixed { depth: 2 },
        None,
    );
    let inbox = Arc::new(Inbox::new().unwrap());
    for slot in 0..8 {
        d.enqueue(0, &inbox, slot, 4096, false, 0.0);
    }
    d.pump(0.0, Some(&inbox));
    assert_eq!(grants(&inbox).len(), 2);
    d.set_policy(Some(DepthPolicy::Fixed { depth: 6 }), None);
    assert_eq!(d.counters.window.load(Ordering::Relaxed), 6);
    d.pump(0.0, Some(&inbox));
    assert_eq!(grants(&inbox).len(), 4, "four more fit the new window");
}
