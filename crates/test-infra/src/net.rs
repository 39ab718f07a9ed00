//! Host-side probes of pod networking: HTTP to a pod, a one-shot server for
//! pods to reach, the links of a network namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `GET /` on `addr`, retried until it answers or `limit` passed (the
/// server in the pod may still be starting); returns the response body.
pub fn http_get(addr: SocketAddr, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match try_http_get(addr) {
            Ok(body) => return body,
            Err(e) if Instant::now() > deadline => {
                panic!("GET http://{addr}/ failed for {limit:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn try_http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(std::io::Error::other(format!("bad response: {resp:?}"))),
    }
}

/// A shell script for busybox: `httpd` serving `body` (one line) at `/`
/// on port 80 (`sh -c SCRIPT` as a container's command).
pub fn httpd_script(body: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www")
}

/// A TCP port nobody on the host listens on right now (for a host port).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// A TCP server on `ip` (port chosen by the kernel) that writes `greeting`
/// to every client; it stops with the value.
pub struct Greeter {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Greeter {
    pub fn start(ip: IpAddr, greeting: &str) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind((ip, 0)).expect("bind the greeter");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("greeter address");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (flag, text) = (stop.clone(), greeting.to_string());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(text.as_bytes());
                    }
                    // Polled so that dropping the greeter ends the thread.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The host's own address on its default route (not loopback): where
/// host-originated traffic to a host port goes through portmap's DNAT.
pub fn host_address() -> IpAddr {
    // A connected UDP socket sends nothing; it only picks a source address.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    s.connect("192.0.2.254:9")
        .expect("the host has no default route");
    s.local_addr().expect("local address").ip()
}

/// A link as `ip -o link` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// The whole `ip -o link` line.
    pub line: String,
}

/// The links of network namespace `netns` (a path, as containerd's
/// `/var/run/netns/cni-...`): `ip -o link` run in it.
pub fn links_in(netns: &Path) -> Vec<Link> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "link", "show"])
        .output()
        .expect("run nsenter ip");
    assert!(
        out.status.success(),
        "ip link in {}: {}",
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_links(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `ip -o link` (iproute2's or busybox's) output.
pub fn parse_links(text: &str) -> Vec<Link> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            f.next()?; // "N:"
            let name = f.next()?.trim_end_matches(':');
            let name = name.split('@').next()?.to_string();
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| {
                let i = words.iter().position(|w| *w == key)?;
                words.get(i + 1).map(|s| s.to_string())
            };
            Some(Link {
                name,
                mac: after("link/ether").unwrap_or_default(),
                mtu: after("mtu")?.parse().ok()?,
                line: line.to_string(),
            })
        })
        .collect()
}

/// `tc qdisc show` and `tc filter show dev D ingress` for every link of
/// `netns`: empty when no link has an ingress qdisc or filter.
pub fn ingress_tc_in(netns: &Path) -> String {
    let run = |args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(args)
            .output()
            .expect("run nsenter tc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut found = String::new();
    for line in run(&["tc", "qdisc", "show"]).lines() {
        if line.contains("ingress") {
            found.push_str(line);
            found.push('\n');
        }
    }
    for link in links_in(netns) {
        let filters = run(&["tc", "filter", "show", "dev", &link.name, "ingress"]);
        found.push_str(filters.trim());
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_link_lines() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n\
                    3: eth0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default \\    link/ether 6a:1f:2b:3c:4d:5e brd ff:ff:ff:ff:ff:ff link-netnsid 0\n";
        let links = parse_links(text);
        assert_eq!(links.len(), 2);
        assert_eq!(
            (links[1].name.as_str(), links[1].mac.as_str(), links[1].mtu),
            ("eth0", "6a:1f:2b:3c:4d:5e", 1500)
        );
        assert_eq!((links[0].name.as_str(), links[0].mac.as_str()), ("lo", ""));
    }
}
