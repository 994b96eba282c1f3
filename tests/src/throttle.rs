//! A slow link: a TCP proxy that passes bytes from its upstream at a set rate, to make pulls
//! from the local registry take long enough to watch what runs meanwhile.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::Result;

/// A proxy on a free loopback port that lives as long as the test process.
pub struct Throttle {
    port: u16,
}

impl Throttle {
    /// Forwards connections to `upstream` (`host:port`), passing at most `bytes_per_second`
    /// back from it on each connection.
    pub fn start(upstream: &str, bytes_per_second: usize) -> Result<Throttle> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    let _ = forward(client, &upstream, bytes_per_second);
                });
            }
        });
        Ok(Throttle { port })
    }

    /// `127.0.0.1:<port>`, usable as the registry host in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn forward(client: TcpStream, upstream: &str, bytes_per_second: usize) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    let (mut client_in, mut server_out) = (client.try_clone()?, server.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    // Ten slices a second.
    let slice = (bytes_per_second / 10).max(1);
    let (mut server_in, mut client_out) = (server, client);
    let mut buffer = vec![0; slice];
    loop {
        let n = server_in.read(&mut buffer)?;
        if n == 0 {
            return client_out.shutdown(Shutdown::Write);
        }
        client_out.write_all(&buffer[..n])?;
        std::thread::sleep(Duration::from_millis(100));
    }
}
