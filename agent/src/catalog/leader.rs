//! One active catalog controller among its replicas: the holder of the Lease `kwasm-catalog`
//! (`lease::election`), so two never write the same statuses at once for longer than a renewal. A
//! replica whose Lease loop stopped turning is not live.

use crate::lease::election::Heartbeat;

pub const LEASE_NAME: &str = "kwasm-catalog";

impl crate::health::Probe for Heartbeat {
    fn not_live(&self) -> Option<String> {
        let quiet = self.since_last();
        (quiet > self.stuck_after).then(|| {
            format!(
                "the catalog Lease loop has not turned for {:.0}s",
                quiet.as_secs_f64()
            )
        })
    }

    fn not_ready(&self) -> Option<String> {
        None
    }

    fn metrics(&self) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Probe;
    use std::time::Duration;

    #[test]
    fn a_lease_loop_that_stops_turning_is_not_live() {
        let h = Heartbeat::new(Duration::from_millis(5));
        h.beat();
        assert_eq!(h.not_live(), None);
        assert_eq!(h.not_ready(), None, "a standby is ready too");
        // The property is about time passing: let it pass.
        std::thread::sleep(Duration::from_millis(20));
        assert!(h.not_live().unwrap().contains("has not turned"));
        h.beat();
        assert_eq!(h.not_live(), None);
    }
}
