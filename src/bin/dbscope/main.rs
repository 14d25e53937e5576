//! `dbscope`: check, migrate and manage the databases of a dbscope application, from its own
//! configuration (the environment, as `BindManager::from_env` reads it, and `--config FILE`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dbscope::{BindManager, Config, Migrations};

mod commands;
mod output;

use output::{Format, Out, Scrubber};

/// The exit codes, documented in `--help` and the README.
const EXIT_CODES: &str = "\
Exit codes:
  0  success (status: every migration applied)
  1  a bind failed: it could not be reached, or a migration or command on it failed
  2  usage error, or a destructive command without --yes
  3  the configuration could not be loaded or is invalid
  4  status: migrations pending (none dirty, edited or missing; every bind read)
  5  status: a migration is dirty, edited since it was applied, or missing from the source";

pub(crate) const EXIT_FAILED: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_CONFIG: u8 = 3;
pub(crate) const EXIT_PENDING: u8 = 4;
pub(crate) const EXIT_DIRTY: u8 = 5;

/// Check, migrate and manage the databases of a dbscope application.
///
/// Reads the application's binds as it does: `--config FILE` (TOML), then DATABASE_URL and
/// DBSCOPE_BINDS__<NAME>__<FIELD> variables over it. Progress goes to stderr as it happens;
/// results to stdout. No password is ever printed.
#[derive(Debug, Parser)]
#[command(name = "dbscope", version, after_help = EXIT_CODES)]
struct Cli {
    /// TOML config file of the binds (the environment still overrides it).
    #[arg(long, global = true, env = "DBSCOPE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output format on stdout.
    #[arg(long, global = true, value_enum, default_value = "text")]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

// Each command's `--help` lists the exit codes too.
#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to every bind: backend, server version, round trip, pool settings.
    #[command(after_help = EXIT_CODES)]
    Check(Binds),
    /// Applied, pending and dirty migrations of each bind (exit 4 if any is pending).
    #[command(after_help = EXIT_CODES)]
    Status(Binds),
    /// Apply pending migrations, bind by bind in dependency order.
    #[command(after_help = EXIT_CODES)]
    Migrate(MigrateArgs),
    /// Revert the latest migration of each bind (or down to --target), in reverse order.
    #[command(after_help = EXIT_CODES)]
    Revert(MigrateArgs),
    /// Create, drop or reset (drop, create, migrate) the binds' databases.
    #[command(after_help = EXIT_CODES)]
    Database {
        #[command(subcommand)]
        action: DatabaseAction,
    },
}

#[derive(Debug, Args)]
struct Binds {
    /// Only this bind (repeat for more); default: every bind.
    #[arg(long = "bind", value_name = "NAME")]
    binds: Vec<String>,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    binds: Binds,
    /// Up to this version (revert: down to it, keeping it; 0 reverts everything).
    #[arg(long, value_name = "VERSION")]
    target: Option<i64>,
    /// Say what would run; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
enum DatabaseAction {
    /// Create each bind's database if it does not exist.
    Create(Binds),
    /// Drop each bind's database and all its data (needs --yes).
    Drop(Destructive),
    /// Drop, create and migrate each bind's database (needs --yes).
    Reset(Destructive),
}

#[derive(Debug, Args)]
struct Destructive {
    #[command(flatten)]
    binds: Binds,
    /// Yes, destroy the data.
    #[arg(long)]
    yes: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match &cli.config {
        Some(path) => Config::from_file_and_env(path),
        None => Config::from_env(),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => return fail_config(cli.format, &Scrubber::default(), &e),
    };
    let scrubber = Scrubber::new(&config);
    let width = config.binds.keys().map(String::len).max().unwrap_or(0);
    let out = Out {
        scrubber: scrubber.clone(),
        format: cli.format,
        width,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let manager = match BindManager::new(config.clone()) {
        Ok(manager) => manager,
        Err(e) => return fail_config(cli.format, &scrubber, &e),
    };
    let code = runtime.block_on(run(cli.command, &manager, &config, &out));
    ExitCode::from(code)
}

fn fail_config(format: Format, scrubber: &Scrubber, err: &dbscope::Error) -> ExitCode {
    let out = Out {
        scrubber: scrubber.clone(),
        format,
        width: 0,
    };
    let message = output::chain(err);
    if format == Format::Json {
        out.json(&serde_json::json!({ "ok": false, "error": message }));
    }
    out.error(&message);
    ExitCode::from(EXIT_CONFIG)
}

async fn run(command: Command, manager: &BindManager, config: &Config, out: &Out) -> u8 {
    let plan = |binds: &Binds| {
        binds
            .binds
            .iter()
            .fold(Migrations::new(), |plan, b| plan.bind(b.as_str()))
            .on_event(out.events())
    };
    for name in selected(&command) {
        if let Err(e) = manager.bind::<sqlx::Any>(name)
            && e.is_unknown_bind()
        {
            out.error(&e.to_string());
            return EXIT_USAGE;
        }
    }
    match command {
        Command::Check(binds) => commands::check(manager, config, &binds.binds, out).await,
        Command::Status(binds) => {
            let plan = plan(&binds).on_event(out.status_events());
            commands::status(manager, &plan, out).await
        }
        Command::Migrate(args) => {
            let plan = with(plan(&args.binds), args.target, args.dry_run);
            commands::migrate(manager, &plan, false, out).await
        }
        Command::Revert(args) => {
            let plan = with(plan(&args.binds), args.target, args.dry_run);
            commands::migrate(manager, &plan, true, out).await
        }
        Command::Database { action } => match action {
            DatabaseAction::Create(binds) => {
                commands::database(manager, &binds.binds, commands::Db::Create, out).await
            }
            DatabaseAction::Drop(d) | DatabaseAction::Reset(d) if !d.yes => {
                out.error("this destroys the databases' data: add --yes to go ahead");
                EXIT_USAGE
            }
            DatabaseAction::Drop(d) => {
                commands::database(manager, &d.binds.binds, commands::Db::Drop, out).await
            }
            DatabaseAction::Reset(d) => {
                let code =
                    commands::database(manager, &d.binds.binds, commands::Db::Reset, out).await;
                if code != 0 {
                    return code;
                }
                commands::migrate(manager, &plan(&d.binds), false, out).await
            }
        },
    }
}

fn with(plan: Migrations, target: Option<i64>, dry_run: bool) -> Migrations {
    let plan = plan.dry_run(dry_run);
    match target {
        Some(t) => plan.target(t),
        None => plan,
    }
}

/// The binds a command names with `--bind`.
fn selected(command: &Command) -> Vec<&str> {
    let binds = match command {
        Command::Check(b) | Command::Status(b) => b,
        Command::Migrate(a) | Command::Revert(a) => &a.binds,
        Command::Database { action } => match action {
            DatabaseAction::Create(b) => b,
            DatabaseAction::Drop(d) | DatabaseAction::Reset(d) => &d.binds,
        },
    };
    binds.binds.iter().map(String::as_str).collect()
}
