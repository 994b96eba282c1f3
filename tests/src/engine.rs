//! The Docker engine itself, for tests of what survives a device restart.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::{output, wait_until};

/// How long the engine may take to stop (it stops every container) or to start.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(90);

/// Restarts the engine as a reboot of the device would: `dockerd` gets SIGTERM, which stops
/// every container, and is started again with the same command line. Containers come back as
/// their restart policies say.
///
/// Every container on the engine stops meanwhile, so only a test binary of its own may call it.
pub fn restart_engine() -> Result<()> {
    let pid = dockerd_pid()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("reading the command line of dockerd ({pid})"))?;
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let Some((program, args)) = argv.split_first() else {
        bail!("dockerd ({pid}) has an empty command line");
    };
    output(Command::new("kill").args(["-TERM", &pid.to_string()]))?;
    wait_until(ENGINE_TIMEOUT, || {
        Ok(!std::path::Path::new(&format!("/proc/{pid}")).exists())
    })
    .context("dockerd did not stop")?;
    // A supervisor (systemd, an init script) may start it again by itself.
    std::thread::sleep(Duration::from_secs(2));
    if !engine_answers() {
        let log = std::fs::File::create(std::env::temp_dir().join("woa-tests-dockerd.log"))?;
        std::os::unix::process::CommandExt::process_group(
            Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
            0,
        )
        .spawn()
        .with_context(|| format!("starting {program} again"))?;
    }
    wait_until(ENGINE_TIMEOUT, || Ok(engine_answers())).context("dockerd did not start again")
}

fn engine_answers() -> bool {
    output(Command::new("docker").args(["info", "--format", "{{.ID}}"]))
        .is_ok_and(|o| o.status.success())
}

fn dockerd_pid() -> Result<u32> {
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "dockerd" {
            return Ok(pid);
        }
    }
    bail!("no dockerd process on this machine")
}
