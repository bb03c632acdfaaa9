//! Rise/fall hysteresis, in one place: a server goes down after `fall` consecutive failures and
//! comes back after `rise` consecutive successes. The first result decides the initial state,
//! so a freshly started LB does not wait `rise` intervals for servers that are fine.

#[derive(Debug, Default)]
pub struct HealthState {
    /// None until the first check.
    up: Option<bool>,
    /// Consecutive results contradicting the current state.
    streak: u32,
}

impl HealthState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_up(&self) -> bool {
        self.up == Some(true)
    }

    /// Down now, whatever the checks said (failed requests ejected the server): `rise`
    /// successes bring it back.
    pub fn force_down(&mut self) {
        self.up = Some(false);
        self.streak = 0;
    }

    /// Records one result; returns the new state when it flips (or is first known).
    pub fn record(&mut self, success: bool, rise: u32, fall: u32) -> Option<bool> {
        let Some(up) = self.up else {
            self.up = Some(success);
            return Some(success);
        };
        if success == up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if up { fall } else { rise };
        if self.streak >= needed {
            self.up = Some(success);
            self.streak = 0;
            Some(success)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HealthState;

    #[test]
    fn first_result_decides() {
        let mut up = HealthState::new();
        assert_eq!(up.record(true, 2, 3), Some(true));
        let mut down = HealthState::new();
        assert_eq!(down.record(false, 2, 3), Some(false));
    }

    #[test]
    fn falls_after_fall_consecutive_failures() {
        let mut s = HealthState::new();
        s.record(true, 2, 3);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), Some(false));
        assert!(!s.is_up());
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut s = HealthState::new();
        s.record(true, 2, 3);
        s.record(false, 2, 3);
        s.record(false, 2, 3);
        assert_eq!(s.record(true, 2, 3), None);
        s.record(false, 2, 3);
        s.record(false, 2, 3);
        assert!(s.is_up(), "two failures after the reset are not three");
        assert_eq!(s.record(false, 2, 3), Some(false));
    }

    #[test]
    fn rises_after_rise_consecutive_successes() {
        let mut s = HealthState::new();
        s.record(false, 2, 3);
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), Some(true));
    }

    #[test]
    fn rise_and_fall_of_one_flip_immediately() {
        let mut s = HealthState::new();
        s.record(true, 1, 1);
        assert_eq!(s.record(false, 1, 1), Some(false));
        assert_eq!(s.record(true, 1, 1), Some(true));
    }
}
