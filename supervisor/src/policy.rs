//! When a service's process ends: restart it, and after how long, or leave it be. Pure logic —
//! the caller says how long the process ran; nothing here reads a clock.

use std::time::Duration;

use basalt_resources::backoff::Backoff;

use crate::reaper::Exit;

/// When to start a service again after its process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Whatever the exit.
    Always,
    /// Only after a non-zero exit or a signal.
    OnFailure,
    /// Never: it runs once.
    Once,
}

/// What the supervisor should do about an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// It is done and that is fine.
    Finished,
    /// It is done and that is a failure; it stays down until started by hand.
    Failed,
}

#[derive(Debug, Clone)]
pub struct RestartPolicy {
    pub restart: Restart,
    backoff: Backoff,
    /// A run at least this long counts as healthy: the back-off starts over.
    pub stable_after: Duration,
}

impl RestartPolicy {
    /// First restart after 250 ms, doubling to at most 30 s; 10 s of running resets it.
    pub fn new(restart: Restart) -> Self {
        RestartPolicy {
            restart,
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30), 2),
            stable_after: Duration::from_secs(10),
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Decides what follows an `exit` after the process ran for `ran`.
    pub fn on_exit(&mut self, exit: Exit, ran: Duration) -> Decision {
        if ran >= self.stable_after {
            self.backoff.reset();
        }
        let restart = match self.restart {
            Restart::Always => true,
            Restart::OnFailure => !exit.success(),
            Restart::Once => false,
        };
        if restart {
            Decision::RestartAfter(self.backoff.fail())
        } else if exit.success() {
            Decision::Finished
        } else {
            Decision::Failed
        }
    }

    /// Consecutive quick failures so far.
    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// A start by hand forgets earlier failures.
    pub fn reset(&mut self) {
        self.backoff.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(50);

    #[test]
    fn always_restarts_with_growing_capped_delays() {
        let mut p = RestartPolicy::new(Restart::Always);
        let delays: Vec<Duration> = (0..10)
            .map(|_| match p.on_exit(Exit::Signal(9), QUICK) {
                Decision::RestartAfter(d) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            delays[0] <= Duration::from_secs(1),
            "first restart within 1 s"
        );
        assert_eq!(delays[1], delays[0] * 2);
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(30));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        // A clean exit restarts too.
        assert!(matches!(
            p.on_exit(Exit::Code(0), QUICK),
            Decision::RestartAfter(_)
        ));
    }

    #[test]
    fn a_long_run_resets_the_backoff() {
        let mut p = RestartPolicy::new(Restart::Always);
        for _ in 0..6 {
            p.on_exit(Exit::Code(1), QUICK);
        }
        assert_eq!(p.failures(), 6);
        let d = p.on_exit(Exit::Code(1), Duration::from_secs(11));
        assert_eq!(d, Decision::RestartAfter(Duration::from_millis(250)));
        assert_eq!(p.failures(), 1);
    }

    #[test]
    fn on_failure_and_once() {
        let mut p = RestartPolicy::new(Restart::OnFailure);
        assert_eq!(p.on_exit(Exit::Code(0), QUICK), Decision::Finished);
        assert!(matches!(
            p.on_exit(Exit::Code(2), QUICK),
            Decision::RestartAfter(_)
        ));
        assert!(matches!(
            p.on_exit(Exit::Signal(9), QUICK),
            Decision::RestartAfter(_)
        ));
        let mut once = RestartPolicy::new(Restart::Once);
        assert_eq!(once.on_exit(Exit::Code(0), QUICK), Decision::Finished);
        assert_eq!(once.on_exit(Exit::Code(3), QUICK), Decision::Failed);
    }

    #[test]
    fn reset_by_hand() {
        let mut p = RestartPolicy::new(Restart::Always);
        p.on_exit(Exit::Code(1), QUICK);
        p.on_exit(Exit::Code(1), QUICK);
        p.reset();
        assert_eq!(
            p.on_exit(Exit::Code(1), QUICK),
            Decision::RestartAfter(Duration::from_millis(250))
        );
    }
}
