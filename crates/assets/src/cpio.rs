//! A writer of cpio "newc" archives, the format the kernel unpacks as an
//! initramfs. Entries are written in the order given; the caller sorts them
//! and fixes their times so archives are reproducible.

use std::io::{self, Write};

/// One archive entry.
pub enum Entry<'a> {
    Dir {
        path: &'a str,
        mode: u32,
    },
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    CharDev {
        path: &'a str,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// Writes `entries` and the trailer to `out`.
pub fn write<W: Write>(out: &mut W, entries: &[Entry<'_>]) -> io::Result<()> {
    let mut w = Counting { out, n: 0 };
    for (ino, e) in entries.iter().enumerate() {
        let (path, mode, data, rdev) = match e {
            Entry::Dir { path, mode } => (*path, 0o040000 | mode, &[][..], (0, 0)),
            Entry::File { path, mode, data } => (*path, 0o100000 | mode, *data, (0, 0)),
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => (*path, 0o020000 | mode, &[][..], (*major, *minor)),
        };
        let nlink = if matches!(e, Entry::Dir { .. }) { 2 } else { 1 };
        header(
            &mut w,
            ino as u32 + 1,
            mode,
            nlink,
            data.len() as u32,
            rdev,
            path,
        )?;
        w.write_all(data)?;
        w.pad4()?;
    }
    header(&mut w, 0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
    Ok(())
}

fn header<W: Write>(
    w: &mut Counting<W>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    (rmajor, rminor): (u32, u32),
    name: &str,
) -> io::Result<()> {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        rmajor,
        rminor,
        name.len() as u32 + 1,
        0,
    ];
    w.write_all(b"070701")?;
    for f in fields {
        write!(w, "{f:08x}")?;
    }
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.pad4()
}

struct Counting<'a, W: Write> {
    out: &'a mut W,
    n: usize,
}

impl<W: Write> Counting<'_, W> {
    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - self.n % 4) % 4;
        self.write_all(&[0u8; 3][..pad])
    }
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.n += n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn gnu_cpio_reads_our_archive() {
        let mut buf = Vec::new();
        write(
            &mut buf,
            &[
                Entry::Dir {
                    path: "etc",
                    mode: 0o755,
                },
                Entry::File {
                    path: "etc/hello",
                    mode: 0o644,
                    data: b"hi there\n",
                },
                Entry::File {
                    path: "init",
                    mode: 0o755,
                    data: b"#!/bin/sh\n",
                },
                Entry::CharDev {
                    path: "console",
                    mode: 0o600,
                    major: 5,
                    minor: 1,
                },
            ],
        )
        .unwrap();
        assert_eq!(buf.len() % 4, 0);
        let mut cpio = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cpio (Debian package cpio)");
        cpio.stdin.take().unwrap().write_all(&buf).unwrap();
        let out = cpio.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 4, "{listing}");
        assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" etc"));
        assert!(lines[1].starts_with("-rw-r--r--") && lines[1].contains(" 9 "));
        assert!(lines[2].starts_with("-rwxr-xr-x") && lines[2].ends_with(" init"));
        assert!(lines[3].starts_with("crw-------") && lines[3].contains("5,"));
    }
}
