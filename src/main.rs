//! Command line of smime-gateway: parse the arguments, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use smime_gateway::logging;
use smime_gateway::migrate::imap::{Account, Security};
use smime_gateway::ops::migrate::{MigrateArgs, Where};
use smime_gateway::ops::{self, cutoff, demo::Urls, CertsCommand, OpsError, QueueCommand};

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
        /// Evaluate at this instant (RFC 3339, or a date: the start of
        /// that day in Danish time) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// A message file: when its sender encrypted it already, the
        /// decision for it, from the certificates it is encrypted to.
        #[arg(long)]
        message: Option<PathBuf>,
    },
    /// Before moving the OCES2 cutoff: who would break.
    Cutoff {
        #[command(subcommand)]
        action: CutoffAction,
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
    /// Re-key stored mail (Maildir, mbox, .eml files, IMAP) from old keys
    /// to each mailbox's current OCES3 certificate.
    Migrate(Box<MigrateCli>),
    /// Inspect and manage the mail queue.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct MigrateCli {
    #[arg(long)]
    config: PathBuf,
    /// A Maildir (Maildir++ folders); repeat for several.
    #[arg(long)]
    maildir: Vec<PathBuf>,
    /// An mbox file (locked with a dot-lock and fcntl); repeat for several.
    #[arg(long)]
    mbox: Vec<PathBuf>,
    /// A folder of .eml files; repeat for several.
    #[arg(long)]
    eml: Vec<PathBuf>,
    /// An IMAP server, HOST:PORT (each --user's mailbox on it).
    #[arg(long)]
    imap: Option<String>,
    /// How the IMAP connection is protected (plain only where asked).
    #[arg(long, value_enum, default_value_t = ImapSecurity::Imaps)]
    imap_security: ImapSecurity,
    /// CA certificates (PEM) the IMAP server's certificate must chain
    /// to (default: the system's roots).
    #[arg(long)]
    imap_ca: Option<PathBuf>,
    /// IMAP login (a master user as `user*master`); repeat for several
    /// mailboxes (one password: a master user's).
    #[arg(long)]
    user: Vec<String>,
    /// File holding the IMAP password (else $SMIMEGW_IMAP_PASSWORD).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Only these folders (default: all but the originals folder).
    #[arg(long)]
    folder: Vec<String>,
    /// NAME=ADDRESS: the source (path or file name) whose mail is
    /// re-encrypted to ADDRESS's current certificate.
    #[arg(long)]
    mailbox: Vec<String>,
    /// keep, delete or move:FOLDER.
    #[arg(long, default_value = "move:OCES2-originals")]
    originals: String,
    /// Keys whose mail is re-keyed: oces2, oces3, other, older.
    #[arg(long, default_value = "oces2")]
    rekey: String,
    /// Change nothing; report what would be done.
    #[arg(long)]
    dry_run: bool,
    /// Report format.
    #[arg(long, value_enum, default_value_t = MigrateFormat::Table)]
    format: MigrateFormat,
    /// Messages opened and re-encrypted at once (default: the cores).
    #[arg(long)]
    jobs: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ImapSecurity {
    Imaps,
    Starttls,
    Plain,
}

#[derive(Clone, Copy, ValueEnum)]
enum MigrateFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Every identity: generation, kind, CVR, e-mails, validity, what it may do.
    List,
    /// Per key (OCES2 first): the senders whose mail arrived encrypted to it.
    Usage {
        /// The window: mail seen this long ago or later.
        #[arg(long, default_value = "90d")]
        since: String,
    },
}

#[derive(Subcommand)]
enum CutoffAction {
    /// Every counterparty (journal and certificate directory): today and at
    /// WHEN, why it changes, readiness and mail volume. Exit 1 when one that
    /// received encrypted mail would be bounced, held or sent plain at WHEN,
    /// 2 when the report could not be made.
    Report {
        #[arg(long)]
        config: PathBuf,
        /// A date (the start of that day in Danish time) or an RFC 3339 time.
        #[arg(long)]
        at: String,
        /// The window of mail counted.
        #[arg(long, default_value = "90d")]
        since: String,
        /// Only counterparties this rule decides (today or at WHEN).
        #[arg(long)]
        rule: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// Decide with KEY=VALUE changed (repeatable); the file is only read.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Decide with this configuration instead of the live one (the
        /// live one still names the journal).
        #[arg(long, value_name = "NEW.toml")]
        proposed: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Table,
    Csv,
    Json,
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
    match run(cli.command) {
        Ok((text, success)) => {
            // Names and values from mail and certificates never reach the
            // terminal as control sequences.
            print!("{}", logging::escape_controls(&text, true));
            if success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            let text = e.to_string();
            let text = logging::escape_controls(&text, true);
            match e {
                // Configuration problems name their file on every line.
                OpsError::Daemon(_) | OpsError::Config(_) => eprintln!("{text}"),
                _ => eprintln!("smime-gateway: {text}"),
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// `--config PATH`, which every command of this group needs.
fn required(config: Option<PathBuf>, command: &str) -> Result<PathBuf, OpsError> {
    config.ok_or_else(|| OpsError::Usage(format!("{command}: --config PATH is required")))
}

/// The IMAP account from the command line.
fn imap_account(
    server: &str,
    security: ImapSecurity,
    ca: Option<PathBuf>,
    user: String,
    password: &str,
) -> Result<Account, OpsError> {
    let (host, port) = match server.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>()
                .map_err(|_| OpsError::Usage(format!("--imap {server}: bad port")))?,
        ),
        None => (
            server.to_string(),
            if matches!(security, ImapSecurity::Imaps) {
                993
            } else {
                143
            },
        ),
    };
    Ok(Account {
        host,
        port,
        security: match security {
            ImapSecurity::Imaps => Security::Imaps,
            ImapSecurity::Starttls => Security::Starttls,
            ImapSecurity::Plain => Security::Plain,
        },
        ca,
        user,
        password: password.to_string(),
    })
}

/// The IMAP password: the file's first line, else $SMIMEGW_IMAP_PASSWORD.
fn imap_password(file: Option<PathBuf>) -> Result<String, OpsError> {
    match file {
        Some(f) => Ok(std::fs::read_to_string(&f)
            .map_err(|e| OpsError::Usage(format!("--password-file {}: {e}", f.display())))?
            .trim_end_matches(['\r', '\n'])
            .to_string()),
        None => std::env::var("SMIMEGW_IMAP_PASSWORD").map_err(|_| {
            OpsError::Usage("migrate --imap: give --password-file or $SMIMEGW_IMAP_PASSWORD".into())
        }),
    }
}

/// Runs one command: the text to print and whether it succeeded.
fn run(command: Command) -> Result<(String, bool), OpsError> {
    let done = |text: String| Ok((text, true));
    match command {
        Command::Serve { config } => ops::serve(&config).map(|()| (String::new(), true)),
        Command::CheckConfig { config } => done(ops::check_config(&config)?),
        Command::Keys {
            action: KeysAction::List,
            config,
        } => done(ops::keys_list(&required(config, "keys")?)?),
        Command::Keys {
            action: KeysAction::Usage { since },
            config,
        } => done(ops::keys_usage(&required(config, "keys")?, &since)?),
        Command::Cutoff {
            action:
                CutoffAction::Report {
                    config,
                    at,
                    since,
                    rule,
                    format,
                    set,
                    proposed,
                },
        } => ops::cutoff_report(&cutoff::Request {
            config,
            at,
            since,
            rule,
            format: match format {
                ReportFormat::Table => cutoff::Format::Table,
                ReportFormat::Csv => cutoff::Format::Csv,
                ReportFormat::Json => cutoff::Format::Json,
            },
            set,
            proposed,
        }),
        Command::Explain {
            config,
            rcpt,
            from,
            at,
            message,
        } => ops::explain(&config, &rcpt, &from, at.as_deref(), message.as_deref()),
        Command::Certs { action, config } => done(ops::certs(
            &required(config, "certs")?,
            match action {
                CertsAction::List => CertsCommand::List,
                CertsAction::Show { address } => CertsCommand::Show(address),
                CertsAction::Import { file } => CertsCommand::Import(file),
            },
        )?),
        Command::Pki {
            action:
                PkiAction::Demo {
                    out,
                    crl_url,
                    ocsp_url,
                },
        } => {
            let mut urls = Urls::default();
            urls.crl_base = crl_url.unwrap_or(urls.crl_base);
            urls.ocsp = ocsp_url.unwrap_or(urls.ocsp);
            done(ops::pki_demo(&out, &urls)?)
        }
        Command::Migrate(m) => {
            let MigrateCli {
                config,
                maildir,
                mbox,
                eml,
                imap,
                imap_security,
                imap_ca,
                user,
                password_file,
                folder,
                mailbox,
                originals,
                rekey,
                dry_run,
                format,
                jobs,
            } = *m;
            let mut sources: Vec<Where> = maildir.into_iter().map(Where::Maildir).collect();
            sources.extend(mbox.into_iter().map(Where::Mbox));
            sources.extend(eml.into_iter().map(Where::Eml));
            if let Some(server) = imap {
                if user.is_empty() {
                    return Err(OpsError::Usage("migrate --imap: --user is required".into()));
                }
                let password = imap_password(password_file)?;
                for u in user {
                    sources.push(Where::Imap(imap_account(
                        &server,
                        imap_security,
                        imap_ca.clone(),
                        u,
                        &password,
                    )?));
                }
            }
            ops::migrate::migrate(&MigrateArgs {
                config,
                sources,
                folders: folder,
                mailboxes: mailbox,
                originals,
                rekey,
                dry_run,
                json: matches!(format, MigrateFormat::Json),
                jobs,
            })
        }
        Command::Queue { action, config } => done(ops::queue(
            &required(config, "queue")?,
            match action {
                QueueAction::List => QueueCommand::List,
                QueueAction::Show { id } => QueueCommand::Show(id),
                QueueAction::Retry { id } => QueueCommand::Retry(id),
                QueueAction::Delete { id } => QueueCommand::Delete(id),
                QueueAction::Quarantined => QueueCommand::Quarantined,
                QueueAction::Release { id } => QueueCommand::Release(id),
            },
        )?),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
