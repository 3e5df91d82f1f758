//! Periodic tasks with Cinder's and oslo's timing rules (reference `control-plane.md` §5.3,
//! §5.5), without threads: the control thread asks which tasks are due, runs them, and reports.
//!
//! * The first run of a task is delayed by `first_delay`, plus a uniform random share of
//!   `fuzzy` (`periodic_fuzzy_delay`, so that many daemons started together do not run in step).
//! * After a run the next one is due at the next boundary of the task's grid (`last_run +
//!   k·spacing`, oslo's "nearest boundary" rule) plus a jitter of 0–5 % of the spacing, so a
//!   task that ran late does not drag its grid along and tasks do not re-synchronise.
//! * A run that overruns its spacing is counted; the next one is due at once but never queued
//!   twice: runs never stack.
//! * A failing run is counted, its error kept and logged, and the task keeps its schedule.
//! * Overrun and failure log lines are at most one per task and kind every [`LOG_EVERY_NS`],
//!   naming how many were left out: a tiny interval must not turn into a log flood.

use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Least time between two overrun (or two failure) log lines of one task, ns.
pub const LOG_EVERY_NS: u64 = 10_000_000_000;

/// Rate limit of one kind of log line.
#[derive(Clone, Debug, Default)]
struct LogLimit {
    /// When the latest line was logged, ns.
    last_ns: Option<u64>,
    /// Events since then that were not logged.
    skipped: u64,
}

impl LogLimit {
    /// `Some(skipped)` when an event at `now` is to be logged (with the count left out before
    /// it), `None` when it is left out.
    fn admit(&mut self, now: u64) -> Option<u64> {
        match self.last_ns {
            Some(l) if now < l.saturating_add(LOG_EVERY_NS) => {
                self.skipped += 1;
                None
            }
            _ => {
                self.last_ns = Some(now);
                Some(std::mem::take(&mut self.skipped))
            }
        }
    }
}

/// A task's handle.
pub type TaskId = usize;

/// Why a task's run failed: its message, kept as the task's `last_error`. The task keeps its
/// schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskError(pub String);

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TaskError {}

/// One task's schedule and history.
#[derive(Clone, Debug, Serialize)]
pub struct Task {
    /// Name (logs, `/v1/stats`).
    pub name: &'static str,
    /// Interval, ns.
    pub spacing_ns: u64,
    /// Next due time, ns.
    pub next_due_ns: u64,
    /// Grid origin of the latest run, ns.
    pub last_run_ns: Option<u64>,
    /// Runs so far.
    pub runs: u64,
    /// Runs that failed.
    pub failures: u64,
    /// Runs that took longer than the spacing.
    pub overruns: u64,
    /// Duration of the latest run, ns.
    pub last_duration_ns: u64,
    /// Longest run, ns.
    pub max_duration_ns: u64,
    /// The latest failure.
    pub last_error: Option<String>,
    #[serde(skip)]
    overrun_log: LogLimit,
    #[serde(skip)]
    failure_log: LogLimit,
}

/// The task table.
#[derive(Debug)]
pub struct Periodic {
    tasks: Vec<Task>,
    rng: rand::rngs::StdRng,
}

impl Periodic {
    /// An empty table; `seed` makes the fuzz and jitter reproducible in tests.
    pub fn new(seed: u64) -> Periodic {
        Periodic { tasks: Vec::new(), rng: rand::rngs::StdRng::seed_from_u64(seed) }
    }

    /// Adds a task first due at `now + first_delay + U[0, fuzzy]`.
    pub fn add(&mut self, name: &'static str, spacing_ns: u64, now: u64, first_delay_ns: u64, fuzzy_ns: u64) -> TaskId {
        let fuzz = if fuzzy_ns > 0 { self.rng.random_range(0..=fuzzy_ns) } else { 0 };
        self.tasks.push(Task {
            name,
            spacing_ns: spacing_ns.max(1),
            next_due_ns: now.saturating_add(first_delay_ns).saturating_add(fuzz),
            last_run_ns: None,
            runs: 0,
            failures: 0,
            overruns: 0,
            last_duration_ns: 0,
            max_duration_ns: 0,
            last_error: None,
            overrun_log: LogLimit::default(),
            failure_log: LogLimit::default(),
        });
        self.tasks.len() - 1
    }

    /// Changes a task's interval (reload); its next run keeps its time if sooner.
    pub fn set_spacing(&mut self, id: TaskId, spacing_ns: u64, now: u64) {
        if let Some(t) = self.tasks.get_mut(id) {
            t.spacing_ns = spacing_ns.max(1);
            t.next_due_ns = t.next_due_ns.min(now.saturating_add(t.spacing_ns));
        }
    }

    /// Whether a task is due at `now`.
    pub fn is_due(&self, id: TaskId, now: u64) -> bool {
        self.tasks.get(id).is_some_and(|t| t.next_due_ns <= now)
    }

    /// Records a run that started at `started` and ended at `ended`.
    pub fn ran(&mut self, id: TaskId, started: u64, ended: u64, result: Result<(), TaskError>) {
        let jitter_frac: f64 = self.rng.random_range(0.0..1.0);
        let Some(t) = self.tasks.get_mut(id) else { return };
        t.runs += 1;
        t.last_duration_ns = ended.saturating_sub(started);
        t.max_duration_ns = t.max_duration_ns.max(t.last_duration_ns);
        if let Err(e) = result {
            t.failures += 1;
            if let Some(skipped) = t.failure_log.admit(ended) {
                tracing::error!(task = t.name, error = %e, skipped, "periodic task failed; it keeps running");
            }
            t.last_error = Some(e.0);
        }
        // oslo: last_run = now - ((now - last_run) % spacing) + jitter.
        let grid = match t.last_run_ns {
            Some(last) if started >= last => started - (started - last) % t.spacing_ns,
            _ => started,
        };
        let jitter = (t.spacing_ns as f64 * jitter_frac / 20.0) as u64;
        t.last_run_ns = Some(grid);
        let next = grid.saturating_add(t.spacing_ns).saturating_add(jitter);
        if t.last_duration_ns > t.spacing_ns {
            t.overruns += 1;
            if let Some(skipped) = t.overrun_log.admit(ended) {
                tracing::warn!(
                    task = t.name,
                    took_ms = t.last_duration_ns / 1_000_000,
                    skipped,
                    "periodic task overran its interval"
                );
            }
        }
        // Never in the past: an overrun runs once more at once, not once per missed slot.
        t.next_due_ns = next.max(ended);
    }

    /// The earliest due time.
    pub fn next_due(&self) -> Option<u64> {
        self.tasks.iter().map(|t| t.next_due_ns).min()
    }

    /// The tasks.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn fuzzy_first_run_within_bounds_and_varied() {
        let mut p = Periodic::new(1);
        let firsts: Vec<u64> = (0..50)
            .map(|_| {
                let id = p.add("t", 60 * S, 0, 0, 60 * S);
                p.tasks[id].next_due_ns
            })
            .collect();
        assert!(firsts.iter().all(|f| *f <= 60 * S));
        let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
        assert!(distinct.len() > 40, "fuzz spreads first runs");
        let mut p = Periodic::new(1);
        let id = p.add("t", 10 * S, 5, 10 * S, 0);
        assert_eq!(p.tasks[id].next_due_ns, 10 * S + 5, "no fuzz: after first_delay exactly");
    }

    #[test]
    fn late_run_keeps_its_grid_with_small_jitter() {
        let mut p = Periodic::new(2);
        let id = p.add("t", 60 * S, 0, 0, 0);
        p.ran(id, 0, S, Ok(()));
        let n1 = p.tasks[id].next_due_ns;
        assert!((60 * S..=63 * S).contains(&n1), "next at 60 s + ≤ 5 % jitter: {n1}");
        // The second run starts 20 s late; the grid stays at multiples of 60 s.
        p.ran(id, 80 * S, 81 * S, Ok(()));
        let n2 = p.tasks[id].next_due_ns;
        assert!((120 * S..=123 * S).contains(&n2), "{n2}");
    }

    #[test]
    fn overrun_and_failure_log_lines_are_rate_limited() {
        // A 1 ns interval overruns at every run: one line per task and kind every 10 s, with
        // the count of those left out, never a line per run (a flood of tens of MB/s).
        let mut p = Periodic::new(5);
        let id = p.add("t", 1, 0, 0, 0);
        for i in 0..1000 {
            p.ran(id, i * 1000, i * 1000 + 10, Err(TaskError("e".into())));
        }
        let t = &p.tasks[id];
        assert_eq!((t.overruns, t.failures), (1000, 1000), "every one is counted");
        assert_eq!((t.overrun_log.skipped, t.failure_log.skipped), (999, 999), "one of each logged");
        let later = LOG_EVERY_NS + 10_000;
        p.ran(id, later, later + 10, Err(TaskError("e".into())));
        let t = &p.tasks[id];
        assert_eq!((t.overrun_log.skipped, t.failure_log.skipped), (0, 0), "logged again, naming 999 left out");
        assert_eq!((t.overrun_log.last_ns, t.failure_log.last_ns), (Some(later + 10), Some(later + 10)));
    }

    #[test]
    fn overrun_does_not_stack() {
        let mut p = Periodic::new(3);
        let id = p.add("t", 10 * S, 0, 0, 0);
        // A run of 35 s: three slots missed, one run due at once.
        p.ran(id, 0, 35 * S, Ok(()));
        assert_eq!(p.tasks[id].overruns, 1);
        assert_eq!(p.tasks[id].next_due_ns, 35 * S);
        assert!(p.is_due(id, 35 * S));
        p.ran(id, 35 * S, 36 * S, Ok(()));
        assert!(p.tasks[id].next_due_ns >= 40 * S, "back on the grid");
    }

    #[test]
    fn failure_is_counted_and_the_task_keeps_running() {
        let mut p = Periodic::new(4);
        let id = p.add("t", 10 * S, 0, 0, 0);
        p.ran(id, 0, 1, Err(TaskError("boom".into())));
        assert_eq!((p.tasks[id].runs, p.tasks[id].failures), (1, 1));
        assert_eq!(p.tasks[id].last_error.as_deref(), Some("boom"));
        assert!(p.tasks[id].next_due_ns >= 10 * S);
        p.ran(id, 10 * S, 10 * S + 1, Ok(()));
        assert_eq!(p.tasks[id].runs, 2);
    }
}
