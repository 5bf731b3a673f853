//! Progress display and stage timings for `generate` and `demo`.
//!
//! On a terminal each stage gets one line that redraws itself as a bar (`\r`), so a long run
//! shows where it is without scrolling; anywhere else (logs, CI, tests) stages are plain lines:
//! one when a stage ends, and for long stages a step line at most every few seconds, so a log
//! proves liveness without hundreds of lines. Both write to stderr; results go to stdout.
//! `bench` uses the same timing without a display, with a hook that waits for the GPU before
//! every timestamp that ends a stage or a step range, so asynchronous GPU work is charged to
//! the stage that queued it.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use recon::pipeline::Stage;

/// How often a plain (non-terminal) display prints a step line inside one stage.
const PLAIN_STEP_INTERVAL: Duration = Duration::from_secs(5);
/// Width of the terminal bar in characters.
const BAR_WIDTH: usize = 24;

/// One finished stage.
#[derive(Debug, Clone, Copy)]
pub struct StageTime {
    pub stage: Stage,
    pub elapsed: Duration,
    /// The stage's last reported total (sampler steps, images, decoders, files).
    pub total: usize,
    /// From the stage's report of step 0 to its report of step `total` (for a sampler stage,
    /// the sampling loop alone, without the networks that run before or after it); `None`
    /// when the stage did not report both.
    pub steps_elapsed: Option<Duration>,
}

/// What a [`Progress`] shows while it times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Display {
    /// One redrawn bar per stage (a terminal).
    Bar,
    /// Plain lines (logs, CI, tests).
    Lines,
    /// Nothing (benchmarks).
    Silent,
}

struct Current {
    stage: Stage,
    start: Instant,
    step: usize,
    total: usize,
    last_line: Instant,
    /// When step 0 was reported.
    steps_start: Option<Instant>,
    /// When step `total` was reported.
    steps_end: Option<Instant>,
}

/// Called before a timestamp that bounds a stage or a step range (`bench`: wait for the GPU).
pub type BeforeTimestamp = Box<dyn Fn()>;

/// Receives the pipeline's (stage, step, total) reports; a stage runs from its first report to
/// the first report of the next one (or [`Progress::finish`]).
pub struct Progress {
    display: Display,
    before_timestamp: Option<BeforeTimestamp>,
    current: RefCell<Option<Current>>,
    finished: RefCell<Vec<StageTime>>,
}

impl Progress {
    pub fn new() -> Self {
        let display = if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        };
        Self {
            display,
            before_timestamp: None,
            current: RefCell::new(None),
            finished: RefCell::new(Vec::new()),
        }
    }

    /// Times stages without displaying anything, calling `before_timestamp` before every
    /// timestamp that starts or ends a stage or a step range.
    pub fn silent(before_timestamp: BeforeTimestamp) -> Self {
        Self {
            display: Display::Silent,
            before_timestamp: Some(before_timestamp),
            current: RefCell::new(None),
            finished: RefCell::new(Vec::new()),
        }
    }

    /// The current time, after the [`BeforeTimestamp`] hook.
    fn boundary_now(&self) -> Instant {
        if let Some(hook) = &self.before_timestamp {
            hook();
        }
        Instant::now()
    }

    /// A progress report; always true (the CLI never cancels from here).
    pub fn report(&self, stage: Stage, step: usize, total: usize) -> bool {
        let mut current = self.current.borrow_mut();
        let new_stage = current.as_ref().is_none_or(|c| c.stage != stage);
        // Only the timestamps that bound a stage or its step range need the hook: waiting for
        // the GPU after every step would serialise the queue for nothing.
        let now = if new_stage || step == 0 || step == total {
            self.boundary_now()
        } else {
            Instant::now()
        };
        if new_stage {
            if let Some(done) = current.take() {
                self.close(done, now);
            }
        }
        let state = current.get_or_insert_with(|| Current {
            stage,
            start: now,
            step,
            total,
            last_line: now,
            steps_start: None,
            steps_end: None,
        });
        state.step = step;
        state.total = total;
        if step == 0 {
            state.steps_start = Some(now);
        }
        if step == total && total > 0 {
            state.steps_end = Some(now);
        }
        if self.display == Display::Bar {
            draw_bar(state, false);
        } else if self.display == Display::Lines
            && step < total
            && now.duration_since(state.last_line) >= PLAIN_STEP_INTERVAL
        {
            state.last_line = now;
            eprintln!(
                "  {:<18} {step}/{total}  {:.1} s",
                label(stage),
                now.duration_since(state.start).as_secs_f64()
            );
        }
        true
    }

    /// Ends the stage in progress.
    pub fn finish(&self) {
        if let Some(done) = self.current.borrow_mut().take() {
            let now = self.boundary_now();
            self.close(done, now);
        }
    }

    /// Ends the display of a stage that failed: the terminal line is closed so the error
    /// message starts on its own line; the stage is not timed.
    pub fn abandon(&self) {
        if self.current.borrow_mut().take().is_some() && self.display == Display::Bar {
            eprintln!();
        }
    }

    /// The stages finished so far, in order.
    pub fn times(&self) -> Vec<StageTime> {
        self.finished.borrow().clone()
    }

    /// Ends `done` at `now`.
    fn close(&self, done: Current, now: Instant) {
        let elapsed = now.duration_since(done.start);
        if self.display == Display::Bar {
            draw_bar(&done, true);
        } else if self.display == Display::Lines {
            eprintln!(
                "  {:<18} {}/{}  {}",
                label(done.stage),
                done.step,
                done.total,
                seconds(elapsed)
            );
        }
        let steps_elapsed = done
            .steps_start
            .zip(done.steps_end)
            .map(|(start, end)| end.saturating_duration_since(start));
        self.finished.borrow_mut().push(StageTime {
            stage: done.stage,
            elapsed,
            total: done.total,
            steps_elapsed,
        });
    }
}

/// Redraws the terminal line of `state`; `last` ends it with a newline.
fn draw_bar(state: &Current, last: bool) {
    let filled = (state.step.min(state.total) * BAR_WIDTH)
        .checked_div(state.total)
        .unwrap_or(0);
    let bar: String = "█".repeat(filled) + &"░".repeat(BAR_WIDTH - filled);
    let mut err = std::io::stderr().lock();
    // A failed progress write (closed stderr) must not fail the run.
    let _ = write!(
        err,
        "\r\x1b[K  {:<18} {bar} {}/{}  {}{}",
        label(state.stage),
        state.step,
        state.total,
        seconds(state.start.elapsed()),
        if last { "\n" } else { "" }
    );
    let _ = err.flush();
}

/// The stage's name in displays.
pub fn label(stage: Stage) -> &'static str {
    match stage {
        Stage::Preprocess => "preprocess",
        Stage::Condition => "condition",
        Stage::SparseStructure => "sparse structure",
        Stage::StructuredLatent => "structured latent",
        Stage::Decode => "decode",
        Stage::Export => "export",
    }
}

/// What a stage's total counts, for the summary.
fn unit(stage: Stage) -> &'static str {
    match stage {
        Stage::Preprocess => "image(s)",
        Stage::Condition => "",
        Stage::SparseStructure | Stage::StructuredLatent => "steps",
        Stage::Decode => "decoder(s)",
        Stage::Export => "file(s)/frame(s)",
    }
}

pub fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `1.5 MiB`-style sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The timing table: load, each stage, total.
pub fn print_timings(load: Duration, stages: &[StageTime], total: Duration) {
    println!("timings:");
    println!("  {:<18} {:>10}", "load", seconds(load));
    for s in stages {
        let count = match unit(s.stage) {
            "" => String::new(),
            unit => format!("  ({} {unit})", s.total),
        };
        println!("  {:<18} {:>10}{count}", label(s.stage), seconds(s.elapsed));
    }
    println!("  {:<18} {:>10}", "total", seconds(total));
}
