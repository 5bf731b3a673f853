//! Progress display and stage timings for `generate` and `demo`.
//!
//! On a terminal each stage gets one line that redraws itself as a bar (`\r`), so a long run
//! shows where it is without scrolling; anywhere else (logs, CI, tests) stages are plain lines:
//! one when a stage ends, and for long stages a step line at most every few seconds, so a log
//! proves liveness without hundreds of lines. Both write to stderr; results go to stdout.

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
}

struct Current {
    stage: Stage,
    start: Instant,
    step: usize,
    total: usize,
    last_line: Instant,
}

/// Receives the pipeline's (stage, step, total) reports; a stage runs from its first report to
/// the first report of the next one (or [`Progress::finish`]).
pub struct Progress {
    tty: bool,
    current: RefCell<Option<Current>>,
    finished: RefCell<Vec<StageTime>>,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            current: RefCell::new(None),
            finished: RefCell::new(Vec::new()),
        }
    }

    /// A progress report; always true (the CLI never cancels from here).
    pub fn report(&self, stage: Stage, step: usize, total: usize) -> bool {
        let mut current = self.current.borrow_mut();
        if current.as_ref().is_some_and(|c| c.stage != stage) {
            if let Some(done) = current.take() {
                self.close(done);
            }
        }
        let now = Instant::now();
        let state = current.get_or_insert_with(|| Current {
            stage,
            start: now,
            step,
            total,
            last_line: now,
        });
        state.step = step;
        state.total = total;
        if self.tty {
            draw_bar(state, false);
        } else if step < total && now.duration_since(state.last_line) >= PLAIN_STEP_INTERVAL {
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
            self.close(done);
        }
    }

    /// Ends the display of a stage that failed: the terminal line is closed so the error
    /// message starts on its own line; the stage is not timed.
    pub fn abandon(&self) {
        if self.current.borrow_mut().take().is_some() && self.tty {
            eprintln!();
        }
    }

    /// The stages finished so far, in order.
    pub fn times(&self) -> Vec<StageTime> {
        self.finished.borrow().clone()
    }

    fn close(&self, done: Current) {
        let elapsed = done.start.elapsed();
        if self.tty {
            draw_bar(&done, true);
        } else {
            eprintln!(
                "  {:<18} {}/{}  {}",
                label(done.stage),
                done.step,
                done.total,
                seconds(elapsed)
            );
        }
        self.finished.borrow_mut().push(StageTime {
            stage: done.stage,
            elapsed,
            total: done.total,
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
        Stage::Export => "file(s)",
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
