//! Where a reconcile's time goes, and the kill points of the fault suites: each step of a reconcile
//! marks itself here, so one log line tells an operator (and the benchmark) what a slow reconcile
//! waited for, and `KWASM_TEST_KILL_AT` can stop the agent at any named step.

/// Where a reconcile's time goes: each step records how long it took since the previous one, so one
/// log line tells an operator (and the benchmark) what a slow reconcile waited for. Steps call
/// [`mark`] wherever they run; outside [`timed`] a mark is a no-op.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    steps: Vec<(&'static str, std::time::Duration)>,
    last: Option<std::time::Instant>,
    start: Option<std::time::Instant>,
}

tokio::task_local! {
    static TIMELINE: std::cell::RefCell<Timeline>;
}

impl Timeline {
    pub fn total(&self) -> std::time::Duration {
        match (self.start, self.last) {
            (Some(s), Some(l)) => l - s,
            _ => std::time::Duration::ZERO,
        }
    }

    pub fn has(&self, step: &str) -> bool {
        self.steps.iter().any(|(s, _)| *s == step)
    }

    /// How long `step` took (all its marks together), if it ran.
    pub fn took(&self, step: &str) -> Option<std::time::Duration> {
        (self.steps.iter())
            .filter(|(s, _)| *s == step)
            .map(|(_, d)| *d)
            .reduce(|a, b| a + b)
    }

    /// The last step that finished before the work ended ("start": none did) — a failing
    /// reconcile failed in the step after it. A bounded set: the step names are the code's own.
    pub fn last_finished(&self) -> &'static str {
        self.steps
            .iter()
            .rev()
            .map(|(s, _)| *s)
            .find(|s| *s != "end")
            .unwrap_or("start")
    }
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, took)) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{step} {:.1}ms", took.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

/// The step that just finished.
pub fn mark(step: &'static str) {
    fault::at(step);
    let _ = TIMELINE.try_with(|t| {
        let mut t = t.borrow_mut();
        let now = std::time::Instant::now();
        let since = t.last.unwrap_or(now);
        t.steps.push((step, now - since));
        t.last = Some(now);
    });
}

/// Runs `work`, collecting the steps it marks.
pub async fn timed<F: std::future::Future>(work: F) -> (F::Output, Timeline) {
    let now = std::time::Instant::now();
    let start = Timeline {
        steps: Vec::new(),
        last: Some(now),
        start: Some(now),
    };
    TIMELINE
        .scope(std::cell::RefCell::new(start), async {
            let out = work.await;
            mark("end");
            (out, TIMELINE.with(|t| t.take()))
        })
        .await
}

/// Fault injection for the kill -9 suites (tests/src/fault.rs), never set in production:
/// `KWASM_TEST_KILL_AT=STEP` kills the agent with SIGKILL when STEP is marked, `STEP+MS` that many
/// milliseconds later (e.g. `restart-permit+300` lands inside the restart).
mod fault {
    use std::sync::OnceLock;
    use std::time::Duration;

    fn spec() -> Option<&'static (String, u64)> {
        static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
        SPEC.get_or_init(|| {
            let v = std::env::var("KWASM_TEST_KILL_AT").ok()?;
            Some(match v.split_once('+') {
                Some((step, ms)) => (step.to_owned(), ms.parse().unwrap_or(0)),
                None => (v, 0),
            })
        })
        .as_ref()
    }

    pub fn at(step: &str) {
        let Some((target, after_ms)) = spec() else {
            return;
        };
        if target != step {
            return;
        }
        let kill = || {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        };
        if *after_ms == 0 {
            kill();
        } else {
            let delay = Duration::from_millis(*after_ms);
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                kill();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_are_timed_in_order_and_only_inside_timed() {
        mark("outside");
        let ((), t) = timed(async {
            mark("first");
            tokio::task::yield_now().await;
            mark("second");
        })
        .await;
        assert!(t.has("first") && t.has("second") && !t.has("outside"));
        let text = t.to_string();
        assert!(
            text.starts_with("first ") && text.contains(", second "),
            "{text}"
        );
        assert!(t.total() >= t.steps.iter().map(|(_, d)| *d).sum::<std::time::Duration>());
    }
}
