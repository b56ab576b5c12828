//! The `tradehook` binary: parses the command line and runs it.

use std::process::ExitCode;

use anyhow::Context as _;
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

fn main() -> ExitCode {
    no_huge_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

/// Keeps the process on 4 KiB pages. mimalloc asks the kernel for transparent huge pages on
/// its arenas, and a 2 MiB page is resident whole however little of it is used: a hub under
/// load held 10 to 16 MB more for them (BENCHMARKS.md), with no measurable gain in speed.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and changes only this
    // process's paging policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate { database } => migrate(&database).await,
        Command::Bench(args) => bench(args).await,
        Command::Init(args) => tradehook::setup::run_init(args),
        Command::Doctor(args) => tradehook::setup::doctor::run_doctor(args).await,
        Command::Sign(args) => tradehook::tools::run_sign(args),
        Command::Verify(args) => tradehook::tools::run_verify(args),
        Command::Send(args) => tradehook::tools::run_send(args).await,
        Command::Endpoints { conn, command } => tradehook::client::endpoints(conn, command).await,
        Command::Sources { conn, command } => tradehook::client::sources(conn, command).await,
        Command::Accounts { conn, command } => tradehook::client::accounts(conn, command).await,
        Command::Apps { conn, command } => tradehook::client::apps(conn, command).await,
        Command::Backtest { conn, args } => tradehook::client::backtest(conn, args).await,
        Command::Events { conn, command } => tradehook::client::events(conn, command).await,
        Command::Deliveries { conn, command } => tradehook::client::deliveries(conn, command).await,
        Command::Replay {
            conn,
            since,
            endpoint,
        } => tradehook::client::replay(conn, since, endpoint).await,
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tradehook",
                &mut std::io::stdout(),
            );
            Ok(())
        }
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
    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone())?;
    let database = config.database.clone();
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let app = Application::build(config).await?;
    if let Some(token) = &app.generated_token {
        println!("Admin API token (shown once; it is stored hashed): {token}");
    }
    let database = tradehook::store::postgres::redact_url(&database);
    tracing::info!(listen = %app.local_addr(), scheme, %database, "tradehook is listening");

    app.run(shutdown).await
}

async fn migrate(database: &str) -> anyhow::Result<()> {
    init_tracing(LogFormat::Pretty);
    let shown = tradehook::store::postgres::redact_url(database);
    if tradehook::store::postgres::is_postgres_url(database) {
        tradehook::store::postgres::migrate(database).await?;
    } else {
        let path = tradehook::store::sqlite::path_of(database)
            .with_context(|| format!("unsupported database URL {shown:?}"))?;
        tradehook::store::sqlite::migrate_file(&path)?;
    }
    println!("{shown}: migrations applied");
    Ok(())
}

async fn bench(args: tradehook::bench::BenchArgs) -> anyhow::Result<()> {
    init_tracing(LogFormat::Pretty);
    let json = args.json;
    if args.workload == Some(tradehook::bench::Workload::U1) {
        let report = tradehook::bench::dashboard::run(&args).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render());
        }
        let over = report.over_target();
        anyhow::ensure!(over.is_empty(), "pages over a target: {}", over.join(", "));
        return Ok(());
    }
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

/// Cancels `shutdown` on Ctrl-C or SIGTERM. The handlers are installed before this returns,
/// so a signal that arrives as soon as the hub answers still stops it gracefully.
fn stop_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested; finishing in-flight work");
        shutdown.cancel();
    });
    Ok(())
}
