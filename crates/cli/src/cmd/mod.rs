//! One module per subcommand.

mod assets;
mod check;
mod config;
mod run;

use crate::args::{AssetsCommand, Cli, Command};

/// Runs the subcommand; returns the process exit status.
pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Run(args) => run::run(config, args).await,
        Command::Check => check::check(config),
        Command::Config => config::show(config),
        Command::Assets(AssetsCommand::Build(args)) => assets::build(args),
    }
}
