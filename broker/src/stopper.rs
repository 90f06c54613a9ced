//! A stop request that a background thread sleeping between ticks wakes for at once: a
//! broker handing over to its successor (`--replace`) is waited for, so its exit must not
//! wait out a tick.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Stopper {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stopper {
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps for `d` or until stopped; true when stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_sleeper_wakes_for_a_stop_not_for_its_timeout() {
        let s = Arc::new(Stopper::default());
        assert!(!s.sleep(Duration::from_millis(1)));
        let sleeper = {
            let s = s.clone();
            std::thread::spawn(move || s.sleep(Duration::from_secs(3600)))
        };
        s.stop();
        assert!(sleeper.join().unwrap());
        assert!(s.is_stopped());
    }
}
