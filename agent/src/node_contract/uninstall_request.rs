//! The uninstall request on a Node (`kwasm.sh/uninstall`): how `kwasm-agent uninstall` writes it, and
//! how an agent tells a live request from one left behind by an earlier install of the chart.
//!
//! The rule never compares the clocks of two machines when it need not:
//! - a request that appears or changes while the agent watches its Node is obeyed, whatever its time
//!   says (its writer is asking now);
//! - a request already on the Node when the agent first sees it was written before the agent watched.
//!   It carries the moment its writer stops waiting (`… until T`); it is obeyed while that moment is
//!   not more than [`CLOCK_SKEW`] past, by the agent's clock, and cleared as stale after that (the
//!   command that wrote it has given up, so nobody waits for this node).
//!
//! A value that cannot be read is obeyed: an uninstall is never silently ignored.

use std::time::{Duration, SystemTime};

pub const UNINSTALL_ANNOTATION: &str = "kwasm.sh/uninstall";

/// How far the clock of the machine that ran `uninstall` and the node's may disagree before a live
/// request found at an agent's start could read as expired.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// What a request written by an earlier release (a bare time) is taken to wait: the chart's default
/// `uninstall.timeout`.
const LEGACY_WAIT: Duration = Duration::from_secs(300);

const UNTIL: &str = " until ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uninstall {
    None,
    /// The chart is being uninstalled: undo everything, whatever the trigger says.
    Requested,
    /// Left by an earlier uninstall whose command gave up before this agent saw it: to be cleared,
    /// not obeyed.
    Stale,
}

/// The annotation's value: when the command asked and until when it waits, in milliseconds
/// (`2026-12-05T09:30:00.123Z until 2026-12-05T09:35:00.123Z`).
pub fn request_value(asked: SystemTime, waits: Duration) -> String {
    let t = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
    format!("{}{UNTIL}{}", t(asked), t(asked + waits))
}

/// Until when the writer of `value` waits; None when the value cannot be read.
fn waits_until(value: &str) -> Option<SystemTime> {
    match value.split_once(UNTIL) {
        Some((asked, until)) => {
            humantime::parse_rfc3339_weak(asked.trim()).ok()?;
            humantime::parse_rfc3339_weak(until.trim()).ok()
        }
        None => Some(humantime::parse_rfc3339_weak(value.trim()).ok()? + LEGACY_WAIT),
    }
}

/// Judges the requests one agent sees over its life; it remembers what was on the Node when the
/// agent first saw it.
#[derive(Debug, Default)]
pub struct UninstallJudge {
    first_sight: Option<Option<String>>,
}

impl UninstallJudge {
    pub fn judge(&mut self, value: Option<&str>, now: SystemTime) -> Uninstall {
        let first = self
            .first_sight
            .get_or_insert_with(|| value.map(str::to_owned));
        let Some(value) = value else {
            return Uninstall::None;
        };
        if first.as_deref() != Some(value) {
            return Uninstall::Requested;
        }
        match waits_until(value) {
            Some(until) if until + CLOCK_SKEW < now => Uninstall::Stale,
            _ => Uninstall::Requested,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn the_value_says_when_it_asked_and_until_when_it_waits_to_the_millisecond() {
        let v = request_value(at("2026-12-05T09:30:00.123456Z"), Duration::from_secs(300));
        assert_eq!(v, "2026-12-05T09:30:00.123Z until 2026-12-05T09:35:00.123Z");
        assert_eq!(waits_until(&v), Some(at("2026-12-05T09:35:00.123Z")));
        assert_eq!(
            waits_until("2026-12-05T09:30:00Z"),
            Some(at("2026-12-05T09:35:00Z")),
            "a bare time from an earlier release waits the chart's default"
        );
        assert_eq!(waits_until("soon"), None);
        assert_eq!(waits_until("2026-12-05T09:30:00Z until later"), None);
    }

    #[test]
    fn a_request_that_appears_while_the_agent_watches_is_obeyed_whatever_its_time() {
        let now = at("2026-12-05T10:00:00.500Z");
        let mut j = UninstallJudge::default();
        assert_eq!(j.judge(None, now), Uninstall::None);
        // Written in the agent's first second at second resolution, or by a machine whose clock is
        // an hour behind: neither is older than the agent in any sense that matters.
        assert_eq!(
            j.judge(Some("2026-12-05T10:00:00Z"), now),
            Uninstall::Requested
        );
        let mut j = UninstallJudge::default();
        j.judge(Some("2020-01-01T00:00:00Z"), now);
        assert_eq!(
            j.judge(Some("2026-12-05T09:00:00Z until 2026-12-05T09:05:00Z"), now),
            Uninstall::Requested,
            "a new request replacing a stale one"
        );
    }

    #[test]
    fn a_request_found_at_first_sight_is_obeyed_until_its_writer_gives_up() {
        let asked = at("2026-12-05T10:00:00Z");
        let value = request_value(asked, Duration::from_secs(300));
        let judge_at = |now: SystemTime| UninstallJudge::default().judge(Some(&value), now);
        // An agent restarted (rollout, OOM, node reboot) while `uninstall` waits obeys it.
        assert_eq!(
            judge_at(asked + Duration::from_secs(299)),
            Uninstall::Requested
        );
        // A node clock up to CLOCK_SKEW ahead still obeys.
        assert_eq!(
            judge_at(asked + Duration::from_secs(300) + CLOCK_SKEW),
            Uninstall::Requested
        );
        assert_eq!(
            judge_at(asked + Duration::from_secs(301) + CLOCK_SKEW),
            Uninstall::Stale
        );
        // Left by an earlier install long ago (an old release's bare time too).
        let mut j = UninstallJudge::default();
        assert_eq!(
            j.judge(Some("2020-01-01T00:00:00Z"), asked),
            Uninstall::Stale
        );
        // Garbage is obeyed: an uninstall is never silently ignored.
        assert_eq!(
            UninstallJudge::default().judge(Some("soon"), asked),
            Uninstall::Requested
        );
    }

    #[test]
    fn the_first_sight_is_remembered_across_looks() {
        let now = at("2026-12-05T10:00:00Z");
        let stale = "2020-01-01T00:00:00Z";
        let mut j = UninstallJudge::default();
        assert_eq!(j.judge(Some(stale), now), Uninstall::Stale);
        assert_eq!(j.judge(Some(stale), now), Uninstall::Stale, "until cleared");
        assert_eq!(j.judge(None, now), Uninstall::None);
        assert_eq!(
            j.judge(Some(stale), now),
            Uninstall::Stale,
            "the value found at first sight, written back"
        );
    }
}
