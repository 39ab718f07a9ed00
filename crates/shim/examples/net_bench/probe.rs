//! The benchmark's host-side clients: a bulk TCP sender to a sink in a pod,
//! and timed HTTP GETs (the harness's client).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use capsa_test_infra::net::http_get;

/// The sink's port in the pods.
pub const SINK_PORT: u16 = 5001;

/// How long one transfer or request may take, and a server to start
/// answering (guests under TCG are slow).
pub const LIMIT: Duration = Duration::from_secs(120);

/// The sink container's command (`sh -c`): busybox `nc -ll` runs, for every
/// connection, a script that reads everything and then answers `ok`, so the
/// sender knows when the pod has read the last byte.
pub fn sink_script() -> String {
    format!(
        "printf '#!/bin/sh\\ncat > /dev/null\\necho ok\\n' > /sink && chmod 0755 /sink && \
         exec nc -ll -p {SINK_PORT} -e /sink"
    )
}

/// Sends `mib` MiB to the sink at `addr` and waits until it has read them
/// all; returns MiB/s. Retries the connection while the sink is starting.
pub fn send(addr: SocketAddr, mib: usize) -> f64 {
    let mut s = connect(addr);
    s.set_write_timeout(Some(LIMIT)).expect("write timeout");
    s.set_read_timeout(Some(LIMIT)).expect("read timeout");
    let chunk = vec![0x5a_u8; 1 << 20];
    let start = Instant::now();
    for _ in 0..mib {
        s.write_all(&chunk)
            .unwrap_or_else(|e| panic!("sending to the sink at {addr}: {e}"));
    }
    s.shutdown(Shutdown::Write)
        .expect("shut down the sending side");
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .unwrap_or_else(|e| panic!("reading the sink's reply from {addr}: {e}"));
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(reply, "ok\n", "the sink at {addr} did not confirm");
    mib as f64 / secs
}

/// A connection to `addr`, retried until it is accepted or [`LIMIT`] passed.
fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + LIMIT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("connect to {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// One `GET /` over a fresh connection, which must return `body`; its
/// latency in ms.
pub fn timed_get(addr: SocketAddr, body: &str) -> f64 {
    let start = Instant::now();
    let got = http_get(addr, LIMIT);
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(got, body, "GET http://{addr}/");
    ms
}
