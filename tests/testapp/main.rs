//! A tiny std-only program for test images: `FROM scratch` holds nothing else, so it is its own
//! server, health probe and idle process.
//!
//! - `testapp serve PORT`: answers every HTTP request with `$MESSAGE` (or "ok"); exits 1 at start
//!   when `$FAIL_AT_START` is set, to test crashing workloads. With `$DATA_FILE` it appends
//!   `$MESSAGE` and a newline to that file at start and answers with the whole file, to test
//!   that data outlives a container.
//! - `testapp probe PORT`: exits 0 when 127.0.0.1:PORT answers, else 1 (a HEALTHCHECK).
//! - `testapp sleep`: idles until killed.
//! - `testapp hang`: idles and ignores SIGTERM, like the many apps that run as PID 1 without
//!   a handler (the kernel drops signals PID 1 does not handle): every stop waits out the
//!   engine's grace period.
//!
//! Otherwise, as PID 1 it would ignore SIGTERM too; so it exits on SIGTERM like a
//! well-behaved app.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("hang") {
        exit_on_sigterm();
    }
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", port] => serve(port),
        ["probe", port] => probe(port),
        ["sleep"] | ["hang"] => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => {
            eprintln!("usage: testapp serve PORT | probe PORT | sleep | hang");
            ExitCode::from(2)
        }
    }
}

fn exit_on_sigterm() {
    const SIGTERM: i32 = 15;
    unsafe extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        fn _exit(status: i32) -> !;
    }
    extern "C" fn on_sigterm(_: i32) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { _exit(0) }
    }
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe {
        signal(SIGTERM, on_sigterm);
    }
}

fn serve(port: &str) -> ExitCode {
    if std::env::var_os("FAIL_AT_START").is_some() {
        eprintln!("FAIL_AT_START is set");
        return ExitCode::from(1);
    }
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("bind {port}: {err}");
            return ExitCode::from(1);
        }
    };
    let mut message = std::env::var("MESSAGE").unwrap_or_else(|_| "ok".to_owned());
    if let Some(path) = std::env::var_os("DATA_FILE") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{message}"));
        match appended.and_then(|()| std::fs::read_to_string(&path)) {
            Ok(all) => message = all,
            Err(err) => {
                eprintln!("DATA_FILE: {err}");
                return ExitCode::from(1);
            }
        }
    }
    for stream in listener.incoming().flatten() {
        let message = message.clone();
        std::thread::spawn(move || answer(stream, &message));
    }
    ExitCode::SUCCESS
}

fn answer(mut stream: TcpStream, message: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    // Read the request head only; its content does not matter.
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > 65536 {
            break;
        }
    }
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{message}",
        message.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

fn probe(port: &str) -> ExitCode {
    let answered = (|| -> std::io::Result<bool> {
        let addr = format!("127.0.0.1:{port}")
            .parse()
            .map_err(|_| std::io::Error::other("bad port"))?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(response.starts_with(b"HTTP/1.0 200"))
    })();
    match answered {
        Ok(true) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}
