//! Command line of smime-gateway: parse the arguments, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use smime_gateway::{admin, daemon, logging, pki, spool::Store};

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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
    /// The organisation's keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// What the outbound rules would do with mail to a recipient, and why.
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// The recipient address.
        #[arg(long)]
        rcpt: String,
        /// The sender address (chooses a personal signing identity).
        #[arg(long, default_value = "")]
        from: String,
        /// Evaluate at this instant (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
    },
    /// Recipients' certificates.
    Certs {
        #[command(subcommand)]
        action: CertsAction,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Test PKI tools.
    Pki {
        #[command(subcommand)]
        action: PkiAction,
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
enum KeysAction {
    /// Every identity: generation, kind, CVR, e-mails, validity, what it may do.
    List,
}

#[derive(Subcommand)]
enum CertsAction {
    /// Every certificate in the directory (configured folders and harvested).
    List,
    /// The certificates of one address, with the verdict on each now.
    Show { address: String },
    /// Copy certificates (PEM, DER, PKCS#7) into the first certificates folder.
    Import { file: PathBuf },
}

#[derive(Subcommand)]
enum PkiAction {
    /// Generate a look-alike OCES2/OCES3 test PKI (TEST ONLY).
    Demo {
        #[arg(long)]
        out: PathBuf,
        /// Base URL written as the CRL distribution point.
        #[arg(long)]
        crl_url: Option<String>,
        /// URL written as the OCSP responder.
        #[arg(long)]
        ocsp_url: Option<String>,
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
    /// Messages held in the quarantine (undecryptable mail).
    Quarantined,
    /// Deliver a quarantined message (unchanged, with the reason).
    Release { id: String },
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
        Command::Keys { action, config } => {
            let Some(config) = config else {
                eprintln!("smime-gateway keys: --config PATH is required");
                return ExitCode::from(2);
            };
            let KeysAction::List = action;
            match daemon::check(&config) {
                Ok((settings, keys)) => {
                    let now = unix_now();
                    let revoked = pki::listing::revoked_identities(&keys, &settings, now);
                    print!("{}", pki::listing::keys_table(&keys, now, &revoked));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain {
            config,
            rcpt,
            from,
            at,
        } => {
            let at = match at.as_deref().map(smime_gateway::config::Instant::parse) {
                None => unix_now(),
                Some(Ok(i)) => i.unix,
                Some(Err(e)) => {
                    eprintln!("smime-gateway explain: --at {e}");
                    return ExitCode::from(2);
                }
            };
            let (settings, keys) = match daemon::check(&config) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                eprintln!("smime-gateway: cannot start the runtime");
                return ExitCode::from(2);
            };
            let keys = std::sync::Arc::new(keys);
            let resolver = pki::resolve::Resolver::new();
            let (text, leaves) = runtime.block_on(smime_gateway::explain::explain(
                &settings, &keys, &resolver, &from, &rcpt, at,
            ));
            print!("{text}");
            if leaves {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Certs { action, config } => {
            let Some(config) = config else {
                eprintln!("smime-gateway certs: --config PATH is required");
                return ExitCode::from(2);
            };
            let (settings, keys) = match daemon::check(&config) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match action {
                CertsAction::List => {
                    print!("{}", pki::listing::certs_table(&keys.directory));
                    ExitCode::SUCCESS
                }
                CertsAction::Show { address } => {
                    let Ok(runtime) = tokio::runtime::Runtime::new() else {
                        return ExitCode::FAILURE;
                    };
                    let keys = std::sync::Arc::new(keys);
                    let resolver = pki::resolve::Resolver::new();
                    let (text, _) = runtime.block_on(smime_gateway::explain::explain(
                        &settings,
                        &keys,
                        &resolver,
                        "",
                        &address,
                        unix_now(),
                    ));
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                CertsAction::Import { file } => {
                    let Some(dir) = settings.certificates.dirs.first() else {
                        eprintln!("smime-gateway certs import: no [certificates] dirs configured");
                        return ExitCode::FAILURE;
                    };
                    match pki::listing::import(&file, dir) {
                        Ok((n, new)) => {
                            println!(
                                "{}: {n} certificate(s), {new} new, written to {} (the daemon reads them at its next reload)",
                                file.display(),
                                dir.display()
                            );
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("smime-gateway certs import: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
            }
        }
        Command::Pki { action } => {
            let PkiAction::Demo {
                out,
                crl_url,
                ocsp_url,
            } = action;
            let mut urls = pki::demo::Urls::default();
            if let Some(u) = crl_url {
                urls.crl_base = u;
            }
            if let Some(u) = ocsp_url {
                urls.ocsp = u;
            }
            match pki::demo::generate(&out, unix_now(), &urls) {
                Ok(w) => {
                    println!(
                        "demo PKI (TEST ONLY) written to {}: {} files",
                        w.dir.display(),
                        w.files.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("smime-gateway pki demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Queue { action, config } => {
            let Some(config) = config else {
                eprintln!("smime-gateway queue: --config PATH is required");
                return ExitCode::from(2);
            };
            // Queue commands need the spool, not the keys.
            let result = smime_gateway::config::load(&config)
                .map_err(|e| e.to_string())
                .and_then(|s| Store::open_shared(&s.spool.dir).map_err(|e| e.to_string()))
                .and_then(|store| {
                    match action {
                        QueueAction::List => admin::list(&store),
                        QueueAction::Show { id } => admin::show(&store, &id),
                        QueueAction::Retry { id } => admin::retry(&store, &id),
                        QueueAction::Delete { id } => admin::delete(&store, &id),
                        QueueAction::Quarantined => admin::quarantined(&store),
                        QueueAction::Release { id } => admin::release(&store, &id),
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
