//! Progress bars (only when a person is watching) and Ctrl-C, which every
//! long job polls through `meshstudio_codec::Observer`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use meshstudio_codec::Observer;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ctrl-C and SIGTERM set a flag that running jobs poll; they then stop,
/// delete their temp files and the process exits 130.
pub fn install_interrupt_handler() {
    // If a handler cannot be installed, Ctrl-C kills us the default way;
    // temp files are then the only leftovers, named `.NAME.*.part`.
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Whether to draw bars: stdout is a terminal and output isn't JSON.
pub fn wanted(json: bool) -> bool {
    !json && std::io::stdout().is_terminal()
}

/// A progress display for a set of files.
pub struct Bars {
    multi: Option<MultiProgress>,
}

impl Bars {
    pub fn new(show: bool) -> Self {
        let multi = show.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Bars { multi }
    }

    /// An observer for one file, labelled with its name.
    pub fn file(&self, path: &std::path::Path) -> FileProgress {
        let bar = match &self.multi {
            Some(m) => {
                let bar = m.add(ProgressBar::new(0));
                bar.set_style(style());
                let label = path.file_name().unwrap_or(path.as_os_str());
                bar.set_message(label.to_string_lossy().into_owned());
                bar
            }
            None => ProgressBar::hidden(),
        };
        FileProgress { bar }
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{msg:30!} {bar:30} {percent:>3}% {elapsed_precise} eta {eta}")
        .expect("the template is valid")
}

/// Progress of one job, and its cancel switch.
pub struct FileProgress {
    bar: ProgressBar,
}

impl FileProgress {
    pub fn done(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for FileProgress {
    fn total(&self, frames: Option<u64>) {
        if let Some(f) = frames {
            self.bar.set_length(f);
        }
    }

    fn advance(&self, frames: u64) {
        self.bar.inc(frames);
    }

    fn cancelled(&self) -> bool {
        interrupted()
    }
}
