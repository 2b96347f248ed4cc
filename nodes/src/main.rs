//! `switchboard`: the node binary and its command line.

use nodes::admin::client::AdminTarget;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use nodes::admin::protocol::{AdminRequest, AdminResponse};
use nodes::admin::roster_import::{RosterImportItem, RosterImportOutcome};
use nodes::config::{ConfigError, Settings};
use nodes::{modules, node, users};

#[derive(Parser)]
#[command(name = "switchboard", version, about = "A clustered XMPP server")]
struct Cli {
    /// TOML configuration file (defaults are built in; SWITCHBOARD_* variables override both).
    #[arg(long, short, global = true, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Manage a node through its HTTP API (`http://HOST:PORT`) instead of the local admin
    /// socket of the node configured here.
    #[arg(long, global = true, env = "SWITCHBOARD_API")]
    api: Option<String>,
    /// Bearer token for --api (the node's http.token).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_API_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node.
    Run,
    /// Manage accounts (works whether or not the node is running).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage rosters of a running node's accounts.
    Roster {
        #[command(subcommand)]
        command: RosterCommand,
    },
    /// Print the specifications this build implements (with the configured modules).
    Features,
    /// List the extension modules, whether the configuration enables them, and their
    /// options; `--markdown` prints README's module reference.
    Modules {
        #[arg(long)]
        markdown: bool,
    },
    /// Inspect or change the running node's cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The message archive (XEP-0313, `[modules.mam]`).
    Mam {
        #[command(subcommand)]
        command: MamCommand,
    },
    /// Group chat rooms (XEP-0045, `[modules.muc]`), through the running node.
    Muc {
        #[command(subcommand)]
        command: MucCommand,
    },
}

#[derive(Subcommand)]
enum MucCommand {
    /// Every room: JID, whether the directory lists it, name.
    List,
    /// Destroy a room; its occupants are told, with the reason.
    Destroy {
        room: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum MamCommand {
    /// Delete every archived message of an account (through the running node).
    Purge { jid: String },
    /// Create or upgrade the PostgreSQL archive's schema (`backend = "postgres"`); the
    /// node also does it when it starts.
    Migrate,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Raft state, leader, voters, members up or down, and NodeLinks, as JSON.
    Status,
    /// Every route the node knows (`JID NODE available|unavailable`), sorted.
    Routes,
    /// Ask a running member (`ID@HOST:PORT`) to admit this node as a voter.
    Join { seed: String },
    /// Take a node (this one by default) out of the cluster; its routes are purged.
    Leave {
        #[arg(long)]
        node: Option<u64>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account.
    Add {
        jid: String,
        /// The password; read from standard input when omitted.
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account (its online sessions are disconnected).
    Del { jid: String },
    /// Change an account's password.
    Passwd {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// List accounts.
    List,
    /// Create many accounts from a file of `JID PASSWORD` lines (`-` for standard input);
    /// existing accounts are left alone.
    Import {
        file: PathBuf,
        /// Load-test populations only: accounts with the same password share one salt, so
        /// their keys are derived once instead of three PBKDF2 runs per account.
        #[arg(long)]
        shared_salt: bool,
    },
}

#[derive(Subcommand)]
enum RosterCommand {
    /// Give accounts roster items without the subscription handshake, from a file of
    /// `OWNER CONTACT [SUBSCRIPTION [NAME]]` lines (`-` for standard input; SUBSCRIPTION is
    /// none, to, from or both, the default). Items that are already stored as given are
    /// left alone, so an import can be re-run.
    Import { file: PathBuf },
}

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("switchboard: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    // `[modules]` is checked against the modules' own declarations, which the configuration
    // layer does not know.
    modules::Registry::configure(&settings.modules).map_err(ConfigError::Invalid)?;
    let cli_api = cli.api.map(|url| (url, cli.token));
    match cli.command {
        Command::Run => {
            init_logging(&settings)?;
            node::run(settings)
        }
        Command::Features => {
            let registry =
                modules::Registry::configure(&settings.modules).map_err(anyhow::Error::msg)?;
            for s in registry.support_table() {
                println!("{:<10} {}", s.spec, s.title);
            }
            Ok(())
        }
        Command::Modules { markdown: true } => {
            print!("{}", modules::reference_markdown());
            Ok(())
        }
        Command::Modules { markdown: false } => {
            let registry =
                modules::Registry::configure(&settings.modules).map_err(anyhow::Error::msg)?;
            for m in modules::Registry::declared() {
                let on = registry.modules().any(|r| r.name() == m.name());
                let specs: Vec<&str> = m.specs().iter().map(|s| s.spec).collect();
                println!(
                    "{:<18} {:<8} {}",
                    m.name(),
                    if on { "enabled" } else { "disabled" },
                    specs.join(", ")
                );
            }
            Ok(())
        }
        Command::User { command } => {
            user_command(&settings, &admin_target(&cli_api, &settings), command)
        }
        Command::Roster {
            command: RosterCommand::Import { file },
        } => roster_import(
            &settings,
            &admin_target(&cli_api, &settings),
            read_roster_file(&file)?,
        ),
        Command::Cluster { command } => {
            cluster_command(&settings, &admin_target(&cli_api, &settings), command)
        }
        Command::Mam { command } => {
            mam_command(&settings, &admin_target(&cli_api, &settings), command)
        }
        Command::Muc { command } => muc_command(&admin_target(&cli_api, &settings), command),
    }
}

fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log.level))
        .context("log.level is not a valid filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if settings.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

fn read_password(prompt: &str) -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

/// The result of a request that succeeded; a refusal is the command's error.
fn succeeded(response: AdminResponse) -> anyhow::Result<Option<serde_json::Value>> {
    if !response.ok {
        bail!(
            "{}",
            response.error.unwrap_or_else(|| "request failed".into())
        );
    }
    Ok(response.result)
}

fn admin_target(api: &Option<(String, Option<String>)>, settings: &Settings) -> AdminTarget {
    match api {
        Some((url, token)) => AdminTarget::Http {
            url: url.clone(),
            token: token.clone(),
        },
        None => AdminTarget::Socket(settings.admin_socket()),
    }
}

fn user_command(
    settings: &Settings,
    target: &AdminTarget,
    command: UserCommand,
) -> anyhow::Result<()> {
    let request = match command {
        UserCommand::Add { jid, password } => AdminRequest::UserAdd {
            password: password.map_or_else(|| read_password("Password: "), Ok)?,
            jid,
        },
        UserCommand::Passwd { jid, password } => AdminRequest::UserPasswd {
            password: password.map_or_else(|| read_password("New password: "), Ok)?,
            jid,
        },
        UserCommand::Del { jid } => AdminRequest::UserDel { jid },
        UserCommand::List => AdminRequest::UserList,
        UserCommand::Import { file, shared_salt } => AdminRequest::UserImport {
            users: read_import_file(&file)?,
            shared_salt,
        },
    };
    let response = match request {
        AdminRequest::UserImport {
            ref users,
            shared_salt,
        } => import(settings, target, users, shared_salt)?,
        _ => match target.request(&request)? {
            Some(r) => r,
            None => offline(settings, &request)?,
        },
    };
    match (&request, succeeded(response)?) {
        (AdminRequest::UserList, Some(serde_json::Value::Array(list))) => {
            for j in list {
                if let Some(j) = j.as_str() {
                    println!("{j}");
                }
            }
        }
        (AdminRequest::UserImport { .. }, Some(o)) => eprintln!(
            "{} created, {} already existed",
            o["created"].as_u64().unwrap_or_default(),
            o["existing"].as_u64().unwrap_or_default()
        ),
        (AdminRequest::UserAdd { .. }, Some(j)) => {
            eprintln!("created {}", j.as_str().unwrap_or_default())
        }
        (AdminRequest::UserDel { .. }, Some(j)) => {
            eprintln!("deleted {}", j.as_str().unwrap_or_default())
        }
        (AdminRequest::UserPasswd { .. }, Some(j)) => {
            eprintln!("password changed for {}", j.as_str().unwrap_or_default())
        }
        _ => {}
    }
    Ok(())
}

fn cluster_command(
    settings: &Settings,
    target: &AdminTarget,
    command: ClusterCommand,
) -> anyhow::Result<()> {
    let request = match command {
        ClusterCommand::Status => AdminRequest::ClusterStatus,
        ClusterCommand::Routes => AdminRequest::ClusterRoutes,
        ClusterCommand::Leave { node } => AdminRequest::ClusterLeave { node },
        ClusterCommand::Join { seed } => AdminRequest::ClusterJoin { seed },
    };
    let Some(response) = target.request(&request)? else {
        bail!(
            "no node is running with data_dir {} (its admin socket is missing)",
            settings.data_dir.display()
        );
    };
    match (&request, succeeded(response)?) {
        (AdminRequest::ClusterRoutes, Some(serde_json::Value::Array(list))) => {
            for r in list {
                let avail = if r[2].as_bool().unwrap_or(false) {
                    "available"
                } else {
                    "unavailable"
                };
                println!("{} {} {avail}", r[0].as_str().unwrap_or_default(), r[1]);
            }
        }
        (_, Some(v)) => println!("{}", serde_json::to_string_pretty(&v)?),
        (_, None) => eprintln!("done"),
    }
    Ok(())
}

/// Import in batches (a running node takes requests of bounded size), adding up the counts;
/// with no node running, everything left goes to the database in one pass.
fn import(
    settings: &Settings,
    target: &AdminTarget,
    users: &[(String, String)],
    shared_salt: bool,
) -> anyhow::Result<AdminResponse> {
    const BATCH: usize = 500;
    let request = |users: &[(String, String)]| AdminRequest::UserImport {
        users: users.to_vec(),
        shared_salt,
    };
    let mut total = users::ImportOutcome::default();
    let mut done = 0;
    while done < users.len() {
        let chunk = &users[done..(done + BATCH).min(users.len())];
        let (response, took) = match target.request(&request(chunk))? {
            Some(r) => (r, chunk.len()),
            None => (
                offline(settings, &request(&users[done..]))?,
                users.len() - done,
            ),
        };
        if !response.ok {
            return Ok(response);
        }
        let outcome: users::ImportOutcome =
            serde_json::from_value(response.result.unwrap_or_default())?;
        total.created += outcome.created;
        total.existing += outcome.existing;
        done += took;
    }
    Ok(AdminResponse::ok(serde_json::to_value(total).ok()))
}

/// Roster items go in batches, as accounts do; a running node is needed (in a cluster the
/// rosters live in the replicated shards, which only a running node reaches).
fn roster_import(
    settings: &Settings,
    target: &AdminTarget,
    items: Vec<RosterImportItem>,
) -> anyhow::Result<()> {
    const BATCH: usize = 500;
    let mut total = RosterImportOutcome::default();
    for chunk in items.chunks(BATCH) {
        let request = AdminRequest::RosterImport {
            items: chunk.to_vec(),
        };
        let Some(response) = target.request(&request)? else {
            bail!(
                "no node is running with data_dir {} (roster import needs a running node)",
                settings.data_dir.display()
            );
        };
        let outcome: RosterImportOutcome =
            serde_json::from_value(succeeded(response)?.unwrap_or_default())?;
        // An owner whose items span two batches is counted in both.
        total.accounts += outcome.accounts;
        total.items += outcome.items;
        total.changed += outcome.changed;
    }
    eprintln!(
        "{} roster items for {} accounts imported, {} of them new or changed",
        total.items, total.accounts, total.changed
    );
    Ok(())
}

/// The lines of `file` (`-`: standard input) that are not blank or `#` comments, numbered
/// from 1 and with leading blanks trimmed.
fn data_lines(file: &std::path::Path) -> anyhow::Result<Vec<(usize, String)>> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    Ok(text
        .lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim_start().to_string()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect())
}

/// `OWNER CONTACT [SUBSCRIPTION [NAME]]` per line; the name is the rest of the line.
fn read_roster_file(file: &std::path::Path) -> anyhow::Result<Vec<RosterImportItem>> {
    let mut items = Vec::new();
    for (n, line) in data_lines(file)? {
        let mut rest = line.as_str();
        let mut field = || {
            let t = rest.trim_start();
            let end = t.find(char::is_whitespace).unwrap_or(t.len());
            rest = &t[end..];
            Some(&t[..end]).filter(|f| !f.is_empty())
        };
        let (Some(owner), Some(contact), subscription) = (field(), field(), field()) else {
            bail!(
                "{}:{n}: expected `OWNER CONTACT [SUBSCRIPTION [NAME]]`",
                file.display()
            );
        };
        let name = Some(rest.trim()).filter(|r| !r.is_empty());
        items.push(RosterImportItem {
            owner: owner.into(),
            contact: contact.into(),
            subscription: subscription.unwrap_or("both").into(),
            name: name.map(str::to_string),
            groups: Vec::new(),
        });
    }
    Ok(items)
}

/// `JID PASSWORD` per line; blank lines and `#` comments are skipped. The password is the
/// rest of the line, trimmed, so it may contain inner spaces.
fn read_import_file(file: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut users = Vec::new();
    for (n, line) in data_lines(file)? {
        match line.split_once(char::is_whitespace) {
            Some((jid, password)) if !password.trim().is_empty() => {
                users.push((jid.to_string(), password.trim().to_string()))
            }
            _ => bail!("{}:{n}: expected `JID PASSWORD`", file.display()),
        }
    }
    Ok(users)
}

/// An account deleted with the node stopped: its archive in PostgreSQL, which is not in the
/// node's trees, goes too (the running node's deletion does the same, `DeleteAccountData`).
fn delete_offline_archive(settings: &Settings, jid: &proto::jid::Jid) -> anyhow::Result<()> {
    let registry = modules::Registry::configure(&settings.modules).map_err(anyhow::Error::msg)?;
    let Some(mam) = modules::mam::get(&registry) else {
        return Ok(());
    };
    if mam.settings().backend != "postgres" {
        return Ok(());
    }
    let backend = mam.open().map_err(anyhow::Error::msg)?;
    let n = backend.delete_account(&jid.to_string()).map_err(|e| {
        anyhow::anyhow!("the account is deleted, but not its archive in PostgreSQL: {e}")
    })?;
    eprintln!("{jid}: {n} archived messages deleted (PostgreSQL)");
    Ok(())
}

/// The node is not running: open the database directly.
fn offline(settings: &Settings, request: &AdminRequest) -> anyhow::Result<AdminResponse> {
    if settings.cluster.enabled() && !matches!(request, AdminRequest::UserList) {
        eprintln!(
            "switchboard: warning: the node is not running, so this changes only its own copy \
             of the accounts; in a cluster, manage accounts through a running node (any one)"
        );
    }
    nodes::data_dir::prepare(&settings.data_dir)?;
    let store = storage::Store::open(&settings.data_dir)?;
    let users = users::UserAdmin::new(store.clone(), settings.domains.clone())?;
    let response = match request {
        AdminRequest::UserAdd { jid, password } => users
            .add(jid, password)
            .map(|j| AdminResponse::ok(Some(j.to_string().into()))),
        AdminRequest::UserPasswd { jid, password } => users
            .passwd(jid, password)
            .map(|j| AdminResponse::ok(Some(j.to_string().into()))),
        AdminRequest::UserDel { jid } => match users.del(jid) {
            Ok(j) => {
                delete_offline_archive(settings, &j)?;
                Ok(AdminResponse::ok(Some(j.to_string().into())))
            }
            Err(e) => Err(e),
        },
        AdminRequest::UserList => users.list().map(|l| AdminResponse::ok(Some(l.into()))),
        AdminRequest::UserImport {
            users: list,
            shared_salt,
        } => users
            .import(list, *shared_salt)
            .map(|o| AdminResponse::ok(serde_json::to_value(o).ok())),
        AdminRequest::SessionList
        | AdminRequest::RosterImport { .. }
        | AdminRequest::SessionKick { .. }
        | AdminRequest::Stats
        | AdminRequest::ClusterStatus
        | AdminRequest::ClusterRoutes
        | AdminRequest::ClusterLeave { .. }
        | AdminRequest::ClusterJoin { .. }
        | AdminRequest::MamPurge { .. }
        | AdminRequest::MucList
        | AdminRequest::MucDestroy { .. } => {
            return Ok(AdminResponse::err("the node is not running"))
        }
    };
    store.flush()?;
    Ok(response.unwrap_or_else(AdminResponse::err))
}

fn muc_command(target: &AdminTarget, command: MucCommand) -> anyhow::Result<()> {
    let request = match &command {
        MucCommand::List => AdminRequest::MucList,
        MucCommand::Destroy { room, reason } => AdminRequest::MucDestroy {
            room: room.clone(),
            reason: reason.clone(),
        },
    };
    let Some(response) = target.request(&request)? else {
        bail!("the node is not running (muc commands go through a running node)");
    };
    let result = succeeded(response)?;
    match command {
        MucCommand::List => {
            for room in result
                .and_then(|r| r.as_array().cloned())
                .unwrap_or_default()
            {
                let jid = room.get("jid").and_then(|v| v.as_str()).unwrap_or_default();
                let public = room.get("public").and_then(|v| v.as_bool()) == Some(true);
                let name = room
                    .get("name")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                let listed = if public { "public" } else { "hidden" };
                println!("{jid}\t{listed}\t{name}");
            }
        }
        MucCommand::Destroy { room, .. } => println!("{room}: destroyed"),
    }
    Ok(())
}

fn mam_command(
    settings: &Settings,
    target: &AdminTarget,
    command: MamCommand,
) -> anyhow::Result<()> {
    let registry = modules::Registry::configure(&settings.modules).map_err(anyhow::Error::msg)?;
    let Some(mam) = modules::mam::get(&registry) else {
        bail!("the message archive is disabled ([modules.mam] enabled = false)");
    };
    match command {
        MamCommand::Migrate => {
            if mam.settings().backend != "postgres" {
                bail!("modules.mam.backend is \"{}\": only the postgres backend has a schema to migrate", mam.settings().backend);
            }
            mam.open().map_err(anyhow::Error::msg)?;
            println!("archive schema is up to date");
            Ok(())
        }
        MamCommand::Purge { jid } => {
            let request = AdminRequest::MamPurge { jid: jid.clone() };
            let Some(response) = target.request(&request)? else {
                bail!("the node is not running (mam purge goes through a running node)");
            };
            let n = succeeded(response)?;
            println!("{jid}: {} archived messages deleted", n.unwrap_or_default());
            Ok(())
        }
    }
}
