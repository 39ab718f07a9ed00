//! One module per subcommand.

mod agent_ctl;
mod assets;
mod check;
mod config;
mod exec;
mod kill;
mod monitor; // metrics hook
mod policy;
mod ps;
mod run;
mod update;

pub use run::{timeline, DETACHED_DIR_ENV};

use crate::args::{AssetsCommand, Cli, Command, PolicyCommand};

/// Runs the subcommand; returns the process exit status.
pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Run(args) => run::run(config, args).await,
        Command::Check => check::check(config),
        Command::Config => config::show(config),
        Command::Assets(AssetsCommand::Build(args)) => assets::build(args),
        Command::Ps => ps::ps(config),
        Command::Inspect { id } => ps::inspect(config, &id),
        Command::Exec(args) => exec::exec(config, args).await,
        Command::Update { id, cpus, memory } => update::update(config, &id, cpus, memory).await,
        Command::Kill { id, signal } => kill::kill(config, &id, signal).await,
        Command::Rm { ids, force } => kill::rm(config, &ids, force).await,
        Command::AgentCtl {
            id,
            method,
            request,
            list,
        } => agent_ctl::agent_ctl(config, &id, method.as_deref(), &request, list).await,
        Command::Monitor(args) => monitor::monitor(config, args).await, // metrics hook
        Command::Policy(PolicyCommand::Set { id, file }) => policy::set(config, &id, &file).await,
        Command::Policy(PolicyCommand::Get { id }) => policy::get(config, &id),
    }
}
