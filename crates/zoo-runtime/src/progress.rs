//! Progress bars on stderr, drawn only when stderr is a terminal so that pipes and logs stay clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

fn bar(enabled: bool) -> ProgressBar {
    let bar = ProgressBar::hidden();
    if enabled && stderr_is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    bar
}

/// A byte-counting bar for one file download, fed by hf-hub.
pub struct DownloadBar(ProgressBar);

impl DownloadBar {
    pub fn new(enabled: bool) -> Self {
        DownloadBar(bar(enabled))
    }
}

impl hf_hub::api::Progress for DownloadBar {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_position(0);
        self.0.set_style(
            ProgressStyle::with_template("{msg:<24!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        self.0.set_message(filename.to_string());
    }

    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A bar counting inputs processed by `zoo run`.
pub fn items(len: u64, what: &str, enabled: bool) -> ProgressBar {
    let bar = bar(enabled);
    bar.set_length(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}
