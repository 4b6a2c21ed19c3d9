use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use virtpulse::app::{self, EXIT_CONFIG, EXIT_SOFTWARE};
use virtpulse::config::{Config, DEFAULT_PATH};

/// Telemetry agent for libvirt/KVM hosts.
#[derive(Parser, Debug)]
#[command(name = "virtpulse", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML). Environment variables VIRTPULSE_<SECTION>__<KEY> override it.
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit (0: valid, 78: invalid).
    #[arg(long, conflicts_with = "once")]
    check_config: bool,
    /// Collect once, print the records as JSON lines on stdout, and exit.
    #[arg(long)]
    once: bool,
    /// Print the metrics reference (Markdown) generated from the stat-key table.
    #[arg(long, hide = true)]
    print_metrics_reference: bool,
}

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any thread exists (see util::heap); an operator's own
    // MALLOC_* settings win.
    use virtpulse::libvirt::heap;
    if !heap::tuned_by_environment(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok())) {
        heap::tune(heap::DEFAULT_TUNING);
    }
    let cli = Cli::parse();
    if cli.print_metrics_reference {
        print!("{}", virtpulse::reference::metrics_markdown());
        return ExitCode::SUCCESS;
    }
    let cfg = match Config::load(cli.config.as_deref(), &virtpulse::registry::schema()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("virtpulse: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if let Err(e) = app::preflight(&cfg) {
        eprintln!("virtpulse: configuration error: {e}");
        return ExitCode::from(EXIT_CONFIG as u8);
    }
    if cli.check_config {
        let path = cli.config.map(|p| p.display().to_string()).unwrap_or_else(|| DEFAULT_PATH.to_string());
        println!("configuration OK ({path} and VIRTPULSE_* environment)");
        return ExitCode::SUCCESS;
    }
    app::init_logging(&cfg);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_name("virtpulse")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("virtpulse: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_SOFTWARE as u8);
        }
    };
    let code = if cli.once {
        runtime.block_on(app::run_once(cfg))
    } else {
        match runtime.block_on(app::run_daemon(cfg, cli.config.clone())) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("virtpulse: {e:#}");
                EXIT_SOFTWARE
            }
        }
    };
    // Calls stuck on a hung QEMU must not keep the process alive at exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code as u8)
}
