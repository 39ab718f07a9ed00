//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "capsa", version, about = "Containers in lightweight VMs")]
pub struct Cli {
    /// Configuration file (else $CAPSA_CONF_FILE, /etc/capsa/configuration.toml,
    /// /usr/share/defaults/capsa/configuration.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log at debug level (or set CAPSA_LOG, e.g. CAPSA_LOG=info).
    #[arg(long, global = true)]
    pub debug: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a container in a new VM, and remove both afterwards.
    Run(RunArgs),
    /// Report what the host offers and what is missing.
    Check,
    /// Show the resolved configuration and where it came from.
    Config,
    /// Guest assets (kernel and initrd).
    #[command(subcommand)]
    Assets(AssetsCommand),
    /// List sandboxes: id, state, hypervisor pid, age, command.
    Ps,
    /// Print a sandbox's record as JSON (pids, agent address, logs, containers).
    Inspect {
        /// Sandbox id.
        id: String,
    },
    /// Run a command in a running sandbox's container (or, with --vm, a
    /// shell in the VM itself).
    Exec(ExecArgs),
    /// Change a running sandbox's container limits; its VM grows or
    /// shrinks with them (elastic sizing).
    Update {
        /// Sandbox id.
        id: String,
        /// CPU limit, in CPUs (a CFS quota of N × 100 ms per 100 ms).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        cpus: Option<u32>,
        /// Memory limit, MiB.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        memory: Option<u32>,
    },
    /// Send a signal to a sandbox's workload.
    Kill {
        /// Sandbox id.
        id: String,
        /// Signal name (TERM, SIGKILL) or number.
        #[arg(short, long, default_value = "TERM", value_parser = parse_signal)]
        signal: i32,
    },
    /// Remove sandboxes and their state.
    Rm {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Stop a running sandbox first.
        #[arg(short, long)]
        force: bool,
    },
    /// Call an agent API method of a running sandbox with a JSON request;
    /// prints the JSON reply (e.g. `capsa agent-ctl ID GetGuestDetails '{}'`).
    AgentCtl {
        /// Sandbox id.
        id: String,
        /// Method name as in agent.proto (`--list` to see them).
        #[arg(required_unless_present = "list")]
        method: Option<String>,
        /// The request in protobuf's JSON mapping.
        #[arg(default_value = "{}")]
        request: String,
        /// List the methods instead.
        #[arg(long)]
        list: bool,
    },
    /// Serve Prometheus metrics of every running sandbox (metrics hook).
    Monitor(MonitorArgs),
    /// A running sandbox's agent policy (Rego, Kata's `agent_policy`).
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Replace the agent policy, if the current one allows it
    /// (its `SetPolicyRequest` rule).
    Set {
        /// Sandbox id.
        id: String,
        /// The policy, a Rego file (`-`: standard input).
        file: PathBuf,
    },
    /// Print the policy capsa last set in the sandbox (nothing if the
    /// guest's default policy, allow-all, is in force).
    Get {
        /// Sandbox id.
        id: String,
    },
}

/// `capsa monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Where to serve `/metrics` and `/sandboxes` (loopback unless told).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen_address: std::net::SocketAddr,
    /// More state directories to look for sandboxes in (besides the
    /// configuration's `runtime.state_dir`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Vec<PathBuf>,
    /// How long one sandbox's scrape may take, in milliseconds; a sandbox
    /// slower than this is left out of that answer.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub scrape_timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox id.
    pub id: String,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// A shell in the VM's root environment, outside every container
    /// (needs debug_console_enabled = true in [agent.capsa]).
    #[arg(long, conflicts_with_all = ["tty", "env", "user"])]
    pub vm: bool,
    /// The command and its arguments.
    #[arg(last = true, value_name = "CMD", required_unless_present = "vm")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("root").required(true).args(["rootfs", "rootfs_image"])))]
pub struct RunArgs {
    /// Directory holding the container's root filesystem (shared with
    /// the VM over virtio-fs).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// A filesystem image (ext4, xfs) holding the container's root
    /// filesystem: hot-plugged into the VM as a disk, never mounted on
    /// the host.
    #[arg(long, value_name = "FILE")]
    pub rootfs_image: Option<PathBuf>,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Give a host path to the container (read-write unless `:ro`): a
    /// directory or file is shared over virtio-fs; a block device or
    /// image file with a filesystem (ext4, xfs) is hot-plugged and
    /// mounted at DST; a block device without one appears at DST as a
    /// device node. Host system paths (/proc, /sys, kernel filesystems)
    /// and disks the host uses are refused.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro|:rw]")]
    pub volumes: Vec<capsa_runtime::Volume>,
    /// The sandbox's network: `none` (only loopback in the VM), `bridge`
    /// (a new netns connected by the CNI plugins of runtime.cni_conflist:
    /// bridge capsa0, 10.4.0.0/24, NAT) or the path of an existing
    /// network namespace to join as it is.
    #[arg(long, value_name = "none|bridge|PATH", default_value = "none", value_parser = parse_network)]
    pub network: NetworkArg,
    /// Forward a host port to the container (portmap), repeatable; needs
    /// --network bridge.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "HOSTPORT:CONTAINERPORT[/tcp|/udp]"
    )]
    pub publish: Vec<capsa_runtime::resource::network::cni::PortMapping>,
    /// A pod annotation, repeatable (e.g.
    /// `io.katacontainers.config.hypervisor.default_vcpus=2`): Kata's
    /// `io.katacontainers.config.*` keys, allowed only where the
    /// configuration's `enable_annotations` enables them, as for a pod.
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    pub annotations: Vec<(String, String)>,
    /// Leave the sandbox running in the background and print its id.
    #[arg(short, long, conflicts_with = "interactive")]
    pub detach: bool,
    /// The sandbox's id (default: a random one).
    #[arg(long, value_name = "ID")]
    pub name: Option<String>,
    /// VM memory in MiB (default: the hypervisor table's default_memory).
    #[arg(long, value_name = "MiB")]
    pub memory: Option<u32>,
    /// VM vCPUs (default: the hypervisor table's default_vcpus).
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// Write the start-up timeline (every step of the sandbox's start and
    /// teardown, with its duration) as an SVG picture to FILE once the
    /// sandbox is down.
    #[arg(long, value_name = "FILE.svg")]
    pub timeline: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkArg {
    None,
    Bridge,
    Netns(PathBuf),
}

impl RunArgs {
    /// The sandbox's network; `-p` only goes with `bridge`.
    pub fn network(&self) -> Result<capsa_runtime::RunNetwork, String> {
        use capsa_runtime::RunNetwork;
        match (&self.network, self.publish.first()) {
            (NetworkArg::Bridge, _) => Ok(RunNetwork::Cni(self.publish.clone())),
            (_, Some(p)) => Err(format!(
                "-p {}:{}{} needs --network bridge",
                p.host_port,
                p.container_port,
                if p.protocol == "tcp" { "" } else { "/udp" }
            )),
            (NetworkArg::None, None) => Ok(RunNetwork::None),
            (NetworkArg::Netns(path), None) => Ok(RunNetwork::Join(path.clone())),
        }
    }
}

/// How the process runs: `run` and `exec` take the same options.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Keep stdin open and forward it to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the process a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE), repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long, value_name = "DIR", default_value = "/")]
    pub cwd: String,
    /// User (and group) the process runs as.
    #[arg(short, long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
}

impl ProcessArgs {
    /// The process to run `command` with these options.
    pub fn spec(&self, command: Vec<String>) -> capsa_runtime::ProcessSpec {
        let (uid, gid) = self.user.unwrap_or((0, 0));
        capsa_runtime::ProcessSpec {
            args: command,
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            uid,
            gid,
            terminal: self.tty,
            console_size: self.tty.then(crate::terminal::size).flatten(),
        }
    }

    /// The caller's stdio: stdin only with `-i`.
    pub fn stdio(&self) -> capsa_runtime::Stdio {
        let stdin: Box<dyn tokio::io::AsyncRead + Send + Unpin> = if self.interactive {
            Box::new(tokio::io::stdin())
        } else {
            Box::new(tokio::io::empty())
        };
        capsa_runtime::Stdio {
            stdin,
            stdout: Box::new(tokio::io::stdout()),
            stderr: Box::new(tokio::io::stderr()),
            resize: self.tty.then(crate::terminal::follow_size).flatten(),
        }
    }

    /// With a terminal and `-i`, keystrokes (Ctrl-C included) go to the
    /// process: the local terminal is raw until the guard is dropped.
    pub fn raw_terminal(&self) -> Option<crate::terminal::RawMode> {
        (self.tty && self.interactive)
            .then(crate::terminal::RawMode::enable_on_stdin)
            .flatten()
    }
}

#[derive(Debug, Subcommand)]
pub enum AssetsCommand {
    /// Build the guest kernel and initrd, and with --image the root
    /// filesystem image (only what changed).
    Build(AssetsBuildArgs),
}

#[derive(Debug, Args)]
pub struct AssetsBuildArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The statically linked capsa-agent.
    #[arg(long, value_name = "FILE")]
    pub agent: PathBuf,
    /// The repository's kernel configuration (fragments and patches) that
    /// capsa's own guest kernel is built from (kernel/README.md).
    #[arg(long, value_name = "DIR", default_value = "kernel")]
    pub kernel_dir: PathBuf,
    /// Where kernel builds are cached, by the id of their inputs.
    #[arg(long, value_name = "DIR", default_value = capsa_assets::kbuild::DEFAULT_CACHE)]
    pub kernel_cache: PathBuf,
    /// A Debian kernel package as the guest kernel instead of capsa's own
    /// build (its modules go into the initrd).
    #[arg(long, value_name = "NAME", conflicts_with = "kernel")]
    pub kernel_package: Option<String>,
    /// The Debian kernel package built beside capsa's kernel into
    /// `<out>/debian/` (vmlinuz, initrd.img with its modules), for
    /// `kernel = ...` in the configuration.
    #[arg(long, value_name = "NAME", default_value = "linux-image-cloud-amd64")]
    pub debian_kernel: String,
    /// Skip the Debian kernel of --debian-kernel.
    #[arg(long)]
    pub no_debian_kernel: bool,
    /// Also build the User-Mode Linux kernel (`<out>/linux-uml`) from
    /// kernel/um.
    #[arg(long)]
    pub uml: bool,
    /// A kernel image on disk instead of a package.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// The module tree of --kernel (`.../lib/modules/<version>`).
    #[arg(long, value_name = "DIR", requires = "kernel")]
    pub modules_dir: Option<PathBuf>,
    /// An extra module to put in the initrd and load at boot, repeatable.
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
    /// Also build the root filesystem image `capsa.img` (Kata's DAX
    /// layout, for `image = PATH`) and its boot initrd `capsa.img.initrd`.
    #[arg(long)]
    pub image: bool,
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_annotation(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_network(s: &str) -> Result<NetworkArg, String> {
    match s {
        "none" => Ok(NetworkArg::None),
        "bridge" => Ok(NetworkArg::Bridge),
        path if path.starts_with('/') => Ok(NetworkArg::Netns(path.into())),
        other => Err(format!(
            "{other:?} is not none, bridge or the absolute path of a network namespace"
        )),
    }
}

fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|sig| sig as i32)
            .map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| format!("{s:?} is not a signal name"))
}

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let number = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{v:?} is not a numeric id (UID[:GID])"))
    };
    match s.split_once(':') {
        Some((u, g)) => Ok((number(u)?, number(g)?)),
        None => Ok((number(s)?, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_env_parse() {
        assert_eq!(parse_user("1000:100"), Ok((1000, 100)));
        assert_eq!(parse_user("7"), Ok((7, 0)));
        assert!(parse_user("bob").unwrap_err().contains("bob"));
        assert!(parse_env("A=b=c").is_ok());
        assert!(parse_env("=x").is_err());
        assert!(parse_env("noequals").is_err());
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("sigkill"), Ok(9));
        assert_eq!(parse_signal("2"), Ok(2));
        assert!(parse_signal("NOPE").unwrap_err().contains("NOPE"));
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn networks_and_port_mappings_parse() {
        let run = |args: &[&str]| {
            let mut all = vec!["capsa", "run", "--rootfs", "/r"];
            all.extend_from_slice(args);
            all.extend_from_slice(&["--", "true"]);
            match Cli::try_parse_from(all).map(|c| c.command) {
                Ok(Command::Run(r)) => r.network(),
                Ok(_) => panic!("not run"),
                Err(e) => Err(e.to_string()),
            }
        };
        use capsa_runtime::RunNetwork;
        assert_eq!(run(&[]), Ok(RunNetwork::None));
        assert_eq!(
            run(&["--network", "/run/netns/x"]),
            Ok(RunNetwork::Join("/run/netns/x".into()))
        );
        let Ok(RunNetwork::Cni(ports)) =
            run(&["--network", "bridge", "-p", "8080:80", "-p", "53:53/udp"])
        else {
            panic!("not bridged")
        };
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[1].protocol, "udp");
        let err = run(&["-p", "8080:80"]).unwrap_err();
        assert!(
            err.contains("8080:80") && err.contains("--network bridge"),
            "{err}"
        );
        let err = run(&["--network", "/n", "-p", "8080:80"]).unwrap_err();
        assert!(err.contains("--network bridge"), "{err}");
        let err = run(&["--network", "bridge", "-p", "80"]).unwrap_err();
        assert!(err.contains("\"80\""), "{err}");
        let err = run(&["--network", "host"]).unwrap_err();
        assert!(err.contains("\"host\""), "{err}");
    }

    #[test]
    fn exec_needs_a_command_unless_vm() {
        assert!(Cli::try_parse_from(["capsa", "exec", "sb"]).is_err());
        let cli = Cli::try_parse_from(["capsa", "exec", "--vm", "sb"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Exec(ExecArgs { vm: true, .. })
        ));
        let cli = Cli::try_parse_from(["capsa", "exec", "-t", "sb", "--", "ls", "-l"]).unwrap();
        let Command::Exec(e) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(e.command, ["ls", "-l"]);
        assert!(e.process.tty);
    }

    #[test]
    fn run_takes_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "capsa", "run", "--rootfs", "/r", "-i", "-e", "A=1", "--", "sh", "-c", "exit 3",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.command, ["sh", "-c", "exit 3"]);
        assert!(run.process.interactive && !run.process.tty);
        assert_eq!(run.process.env, ["A=1"]);
    }
}
