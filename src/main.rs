//! The `tradehook` binary: parses the command line and runs it.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use tradehook::app::Application;
use tradehook::cli::{Cli, Command};
use tradehook::config::{LogFormat, ServeArgs};

/// mimalloc instead of the system allocator: the profile of a loaded hub showed glibc's
/// malloc and free at about 14 % of the workers' time (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Bench(args) => bench(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    init_tracing(config.log_format);
    let database = config.database.clone();
    let app = Application::build(config).await?;
    if let Some(token) = &app.generated_token {
        println!("Admin API token (shown once; it is stored hashed): {token}");
    }
    tracing::info!(listen = %app.local_addr(), %database, "tradehook is listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    app.run(shutdown).await
}

async fn bench(args: tradehook::bench::BenchArgs) -> anyhow::Result<()> {
    init_tracing(LogFormat::Pretty);
    let json = args.json;
    let report = tradehook::bench::run(args).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    anyhow::ensure!(
        report.missing == 0 && report.send_errors == 0,
        "{} deliveries missing, {} sends failed",
        report.missing,
        report.send_errors
    );
    Ok(())
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested; finishing in-flight work");
    shutdown.cancel();
}
