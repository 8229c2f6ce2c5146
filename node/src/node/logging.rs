//! Logs of a running node: to stderr (filtered by `RUST_LOG`, default
//! `info`) and to a daily-rotated file in `<data-dir>/logs/`, keeping a week.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

const LOG_DIR: &str = "logs";
const LOG_PREFIX: &str = "meshstudio.log";
/// Daily files kept.
const LOG_FILES_KEPT: usize = 7;

/// Starts logging; keep the guard alive until exit (it flushes the file).
pub fn init(data_dir: &Path) -> Result<WorkerGuard, String> {
    let dir = data_dir.join(LOG_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let appender = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(LOG_PREFIX)
        .max_log_files(LOG_FILES_KEPT)
        .build(data_dir.join(LOG_DIR))
        .map_err(|e| {
            format!(
                "cannot open the log in {}: {e}",
                data_dir.join(LOG_DIR).display()
            )
        })?;
    let (file, guard) = tracing_appender::non_blocking(appender);
    // libp2p logs every mDNS answer and dial at info/debug: routine, not news.
    let filter = || {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new("info,libp2p_mdns=warn,libp2p_swarm=warn,libp2p_kad=error")
        })
    };
    tracing_subscriber::registry()
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter()),
        )
        .with(
            fmt::layer()
                .with_ansi(false)
                .with_writer(file)
                .with_filter(filter()),
        )
        .try_init()
        .map_err(|e| format!("cannot start logging: {e}"))?;
    Ok(guard)
}
