//! UML's management console (`CONFIG_MCONSOLE`): a Unix datagram socket
//! at `<uml_dir>/<umid>/mconsole` taking one command per datagram
//! (`version`, `halt`, `cad`, `config ubd1=...`) and answering to the
//! sender's address. The wire format is `arch/um/include/shared/mconsole.h`:
//! native-endian 32-bit words.
//!
//! The kernel runs as the jail's uid and sends its answer to our socket,
//! so that socket is made writable by that uid ([`Mconsole::open`]).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{timeout, Instant};

const MAGIC: u32 = 0xcafe_babe;
const VERSION: u32 = 2;
/// `MCONSOLE_MAX_DATA`.
const MAX_DATA: usize = 512;
const HEADER: usize = 12;

/// An answer of the management console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The command failed (the text says why).
    pub error: bool,
    pub text: String,
}

/// Encodes `command` as a request datagram.
pub fn request(command: &str) -> io::Result<Vec<u8>> {
    if command.len() >= MAX_DATA {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("mconsole command longer than {} bytes", MAX_DATA - 1),
        ));
    }
    let mut b = Vec::with_capacity(HEADER + MAX_DATA);
    b.extend_from_slice(&MAGIC.to_ne_bytes());
    b.extend_from_slice(&VERSION.to_ne_bytes());
    b.extend_from_slice(&(command.len() as u32).to_ne_bytes());
    b.extend_from_slice(command.as_bytes());
    b.resize(HEADER + MAX_DATA, 0);
    Ok(b)
}

/// Decodes one reply datagram: `(error, more to come, text)`. The UML
/// kernel may be the guest's: a malformed datagram is an error, never a
/// panic.
pub fn parse_reply(b: &[u8]) -> io::Result<(bool, bool, String)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("mconsole {what}"));
    if b.len() < HEADER {
        return Err(bad("reply shorter than its header"));
    }
    let word = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let len = word(8) as usize;
    if len > MAX_DATA || HEADER + len > b.len() {
        return Err(bad("reply length beyond the datagram"));
    }
    let text = &b[HEADER..HEADER + len];
    let text = text.split(|c| *c == 0).next().unwrap_or_default();
    Ok((
        word(0) != 0,
        word(4) != 0,
        String::from_utf8_lossy(text).into_owned(),
    ))
}

/// A client of one UML's management console.
pub struct Mconsole {
    sock: tokio::net::UnixDatagram,
    own: PathBuf,
}

impl Mconsole {
    /// Binds our end at `own` (owned by `uid`/`gid`, so the kernel can
    /// answer) and connects to the console at `console`.
    pub fn open(console: &Path, own: &Path, uid: u32, gid: u32) -> io::Result<Self> {
        let _ = std::fs::remove_file(own);
        let sock = UnixDatagram::bind(own)?;
        let set_up = (|| {
            std::os::unix::fs::chown(own, Some(uid), Some(gid))?;
            sock.connect(console)?;
            sock.set_nonblocking(true)
        })();
        if let Err(e) = set_up {
            let _ = std::fs::remove_file(own);
            return Err(e);
        }
        Ok(Self {
            sock: tokio::net::UnixDatagram::from_std(sock)?,
            own: own.into(),
        })
    }

    /// Sends `command` and collects its answer (several datagrams when
    /// long), all within `limit`.
    pub async fn command(&self, command: &str, limit: Duration) -> io::Result<Reply> {
        let deadline = Instant::now() + limit;
        self.sock.send(&request(command)?).await?;
        let mut reply = Reply {
            error: false,
            text: String::new(),
        };
        let mut buf = vec![0u8; HEADER + MAX_DATA];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = timeout(left, self.sock.recv(&mut buf))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("mconsole {command:?}: no answer within {limit:?}"),
                    )
                })??;
            let (error, more, text) = parse_reply(&buf[..n])?;
            reply.error |= error;
            reply.text.push_str(&text);
            if !more {
                return Ok(reply);
            }
        }
    }
}

impl Drop for Mconsole {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.own);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies() {
        let r = request("halt").unwrap();
        assert_eq!(r.len(), 524);
        assert_eq!(&r[..4], &MAGIC.to_ne_bytes());
        assert_eq!(&r[8..12], &4u32.to_ne_bytes());
        assert_eq!(&r[12..16], b"halt");
        assert!(request(&"x".repeat(600)).is_err());

        let mut reply = Vec::new();
        for w in [1u32, 0, 5] {
            reply.extend_from_slice(&w.to_ne_bytes());
        }
        reply.extend_from_slice(b"nope\0");
        assert_eq!(parse_reply(&reply).unwrap(), (true, false, "nope".into()));
        // A length beyond the datagram, or a short one, is refused.
        reply[8..12].copy_from_slice(&400u32.to_ne_bytes());
        assert!(parse_reply(&reply).is_err());
        assert!(parse_reply(&[0; 8]).is_err());
    }

    #[tokio::test]
    async fn a_command_gets_its_whole_answer() {
        let dir = tempfile::tempdir().unwrap();
        let server = UnixDatagram::bind(dir.path().join("mconsole")).unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let client = Mconsole::open(
            &dir.path().join("mconsole"),
            &dir.path().join("me"),
            uid,
            gid,
        )
        .unwrap();
        let serve = std::thread::spawn(move || {
            let mut buf = [0u8; 600];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            assert_eq!(n, 524);
            let to = from.as_pathname().unwrap().to_path_buf();
            for (more, text) in [(1u32, "6.12"), (0, "-capsa-um")] {
                let mut r = Vec::new();
                for w in [0u32, more, text.len() as u32] {
                    r.extend_from_slice(&w.to_ne_bytes());
                }
                r.extend_from_slice(text.as_bytes());
                server.send_to(&r, &to).unwrap();
            }
        });
        let reply = client
            .command("version", Duration::from_secs(5))
            .await
            .unwrap();
        serve.join().unwrap();
        assert_eq!(
            reply,
            Reply {
                error: false,
                text: "6.12-capsa-um".into()
            }
        );
        drop(client);
        assert!(!dir.path().join("me").exists());
    }
}
