//! Command line of smime-gateway: parse the arguments, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use smime_gateway::{admin, daemon, logging, spool::Store};

#[derive(Parser)]
#[command(
    name = "smime-gateway",
    version,
    about = "S/MIME mail gateway (OCES2/OCES3)"
)]
struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file and print every problem found.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Inspect and manage the mail queue.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// One line per queued message.
    List,
    /// Envelope, recipients and headers of one message.
    Show { id: String },
    /// Make a message due now.
    Retry { id: String },
    /// Remove a message from the queue without delivering it.
    Delete { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(match cli.log_format {
        LogFormat::Text => logging::Format::Text,
        LogFormat::Json => logging::Format::Json,
    });
    match cli.command {
        Command::Serve { config } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("smime-gateway: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(daemon::serve(&config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("smime-gateway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match daemon::check(&config) {
            Ok(_) => {
                println!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Queue { action, config } => {
            let Some(config) = config else {
                eprintln!("smime-gateway queue: --config PATH is required");
                return ExitCode::from(2);
            };
            let result = daemon::check(&config)
                .map_err(|e| e.to_string())
                .and_then(|s| Store::open(&s.spool.dir).map_err(|e| e.to_string()))
                .and_then(|store| {
                    match action {
                        QueueAction::List => admin::list(&store),
                        QueueAction::Show { id } => admin::show(&store, &id),
                        QueueAction::Retry { id } => admin::retry(&store, &id),
                        QueueAction::Delete { id } => admin::delete(&store, &id),
                    }
                    .map_err(|e| e.to_string())
                });
            match result {
                Ok(text) => {
                    print!("{text}");
                    if !text.ends_with('\n') {
                        println!();
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("smime-gateway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
