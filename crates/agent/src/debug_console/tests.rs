use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::*;

#[test]
fn the_kernel_parameter_names_the_port() {
    let cmdline = "console=ttyS0 quiet agent.debug_console_vport=1026 panic=1\n";
    assert_eq!(port_from_cmdline(cmdline), Some(1026));
    assert_eq!(port_from_cmdline("console=ttyS0 agent.debug_console"), None);
    assert_eq!(port_from_cmdline("agent.debug_console_vport=x"), None);
    assert_eq!(port_from_cmdline("agent.debug_console_vport=0"), None);
    assert_eq!(port_from_cmdline("agent.debug_console_vportx=5"), None);
    assert_eq!(
        port_from_cmdline("agent.debug_console_vport=1 agent.debug_console_vport=2"),
        Some(2),
        "the last one wins, as for kernel parameters"
    );
}

#[test]
fn addresses() {
    assert_eq!(
        parse_address("vsock://-1:1026").unwrap(),
        Address::Vsock {
            cid: libc::VMADDR_CID_ANY,
            port: 1026
        }
    );
    assert_eq!(
        parse_address("unix:///tmp/c.sock").unwrap(),
        Address::Unix("/tmp/c.sock".into())
    );
    assert_eq!(
        parse_address("vsock://-1:1026").unwrap().to_string(),
        "vsock://-1:1026"
    );
    for bad in [
        "",
        "tcp://x",
        "vsock://1",
        "vsock://a:1",
        "vsock://-2:1",
        "unix://",
    ] {
        let err = parse_address(bad).unwrap_err();
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn a_session_runs_a_shell_on_a_pty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.sock");
    let listener = listen_on(&Address::Unix(path.to_str().unwrap().into())).unwrap();
    let server = std::thread::spawn(move || {
        let fd = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).unwrap();
        // SAFETY: accept4 just returned this descriptor.
        session(unsafe { OwnedFd::from_raw_fd(fd) })
    });
    let mut client = UnixStream::connect(&path).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .write_all(b"tty; echo $((6*7)); echo \"$HOME $TERM\"; exit\n")
        .unwrap();
    let mut out = Vec::new();
    client
        .read_to_end(&mut out)
        .expect("the shell's exit ends the connection");
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("42\r\n"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "a pty: {out:?}");
    let term = std::env::var("TERM").unwrap_or_else(|_| DEFAULT_TERM.into());
    assert!(
        out.contains(&format!("/ {term}\r\n")),
        "HOME and TERM: {out:?}"
    );
    server.join().unwrap().unwrap();
}
