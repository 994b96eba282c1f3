//! woa as containers: the quick start (`scripts/demo.sh`) run as a new user runs it, the
//! promises of `compose.yaml` (restarts and `down`/`up` keep apps and state, what runs as whom,
//! nothing published), and the conformance kit against woa-deploy running in its container.
//!
//! The images come from `scripts/images.sh` (release-like build, `FROM scratch`); the first
//! run builds them, later runs find them by their content tag.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use woa_tests::{free_port, http_get, testapp_image, wait_until};

/// The most an image may weigh.
const MAX_IMAGE_BYTES: u64 = 20_000_000;

/// How long woa-deploy may take to report healthy (its first check runs after 15 s).
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a change may take to reach the app (woa-sync polls every 2 s in the demo).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

/// The user woa-sync runs as.
const WOA_USER: &str = "65532:65532";

fn workspace() -> PathBuf {
    // Read at run time, like the kit's own builds: the target dir may be shared by checkouts.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// The cargo target dir this test runs from (`<target>/debug/deps/<test>`).
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .with_context(|| format!("{} is not in a cargo target dir", exe.display()))
}

/// A short random hex string, to name this run's compose projects.
fn run_id() -> Result<String> {
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?;
    Ok(uuid.trim().replace('-', "")[..12].to_owned())
}

/// Runs `command`; fails with its output unless it succeeds; returns stdout.
fn run(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The two images, built once per test process.
struct Images {
    deploy: String,
    sync: String,
}

fn images() -> Result<&'static Images> {
    static IMAGES: OnceLock<Result<Images, String>> = OnceLock::new();
    IMAGES
        .get_or_init(|| build_images().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn build_images() -> Result<Images> {
    let started = std::time::Instant::now();
    let stdout = run(Command::new("bash")
        .arg(workspace().join("scripts/images.sh"))
        .env("CARGO_TARGET_DIR", target_dir()?))?;
    eprintln!("scripts/images.sh took {:.0?}", started.elapsed());
    let vars: BTreeMap<&str, &str> = stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let image = |name: &str| {
        vars.get(name)
            .map(|s| (*s).to_owned())
            .with_context(|| format!("scripts/images.sh printed no {name}:\n{stdout}"))
    };
    Ok(Images {
        deploy: image("WOA_DEPLOY_IMAGE")?,
        sync: image("WOA_SYNC_IMAGE")?,
    })
}

/// A Compose implementation: the tests run under both, as users do.
#[derive(Debug, Clone, Copy)]
enum Compose {
    /// Compose v2, the `docker compose` CLI plugin (Go).
    V2,
    /// Debian's docker-compose 1.29 (Python).
    V1,
}

impl Compose {
    /// The command line that runs it, e.g. `["docker", "compose"]`.
    fn cli(self) -> &'static [&'static str] {
        match self {
            Compose::V2 => &["docker", "compose"],
            Compose::V1 => &["docker-compose"],
        }
    }

    /// The CLI, once checked to run here; `scripts/test.sh` installs both.
    fn installed(self) -> Result<Compose> {
        let cli = self.cli();
        let version =
            run(Command::new(cli[0]).args(&cli[1..]).arg("version")).with_context(|| {
                format!(
                    "{} is not installed (scripts/test.sh installs it)",
                    cli.join(" ")
                )
            })?;
        println!(
            "{}: {}",
            cli.join(" "),
            version.lines().next().unwrap_or_default()
        );
        Ok(self)
    }
}

/// One compose project of `compose.yaml`, with the variables it reads; taken down (volumes
/// too) with everything its woa-deploy instance started when dropped.
struct Stack {
    compose: Compose,
    project: String,
    env: Vec<(&'static str, String)>,
    extra_files: Vec<PathBuf>,
}

impl Stack {
    /// The compose project `project` on `images`, with its configuration from `config_dir` and
    /// woa-deploy's state in `state_dir`.
    fn new(
        compose: Compose,
        project: &str,
        images: &Images,
        config_dir: &Path,
        state_dir: &Path,
    ) -> Stack {
        Stack {
            compose,
            project: project.to_owned(),
            env: vec![
                ("WOA_DEPLOY_IMAGE", images.deploy.clone()),
                ("WOA_SYNC_IMAGE", images.sync.clone()),
                ("WOA_CONFIG_DIR", config_dir.display().to_string()),
                ("WOA_DEPLOY_STATE_DIR", state_dir.display().to_string()),
                ("WOA_INSTANCE", project.to_owned()),
            ],
            extra_files: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let cli = self.compose.cli();
        let mut command = Command::new(cli[0]);
        command.args(&cli[1..]);
        command.arg("-f").arg(workspace().join("compose.yaml"));
        for file in &self.extra_files {
            command.arg("-f").arg(file);
        }
        command.args(["-p", &self.project]).args(args);
        command.envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    }

    fn compose(&self, args: &[&str]) -> Result<String> {
        run(&mut self.command(args))
    }

    /// The id of the service's container.
    fn container(&self, service: &str) -> Result<String> {
        let id = self.compose(&["ps", "-q", service])?.trim().to_owned();
        ensure!(!id.is_empty(), "no {service} container in {}", self.project);
        Ok(id)
    }

    fn wait_healthy(&self, service: &str) -> Result<()> {
        wait_until(HEALTHY_TIMEOUT, || {
            let id = self.container(service)?;
            Ok(inspect(&id, "{{.State.Health.Status}}")? == "healthy")
        })
        .with_context(|| format!("{service} not healthy; logs:\n{}", self.logs()))
    }

    fn logs(&self) -> String {
        self.command(&["logs", "--tail", "40"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self
            .command(&["down", "--volumes", "--remove-orphans", "--timeout", "5"])
            .output();
        remove_instance(&self.project);
    }
}

/// Removes the containers, networks and volumes of woa-deploy instance `instance`.
fn remove_instance(instance: &str) {
    let label = format!("label=org.margo.woa.agent={instance}");
    for (kind, remove) in [
        ("ps", &["rm", "-f"][..]),
        ("network", &["network", "rm"][..]),
        ("volume", &["volume", "rm"][..]),
    ] {
        let list = match kind {
            "ps" => vec!["ps", "-aq", "--filter", &label],
            other => vec![other, "ls", "-q", "--filter", &label],
        };
        let Ok(ids) = run(Command::new("docker").args(&list)) else {
            continue;
        };
        for id in ids.split_whitespace() {
            let _ = Command::new("docker").args(remove).arg(id).output();
        }
    }
}

/// `docker inspect --format FORMAT ID`, trimmed.
fn inspect(id: &str, format: &str) -> Result<String> {
    Ok(
        run(Command::new("docker").args(["inspect", "--format", format, id]))?
            .trim()
            .to_owned(),
    )
}

/// The ids of the running containers of woa-deploy instance `instance`.
fn app_containers(instance: &str) -> Result<Vec<String>> {
    let label = format!("label=org.margo.woa.agent={instance}");
    Ok(
        run(Command::new("docker").args(["ps", "-q", "--no-trunc", "--filter", &label]))?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// `scripts/demo.sh down` with the same environment when dropped.
struct DemoCleanup {
    env: Vec<(&'static str, String)>,
}

impl Drop for DemoCleanup {
    fn drop(&mut self) {
        let down = Command::new("bash")
            .arg(workspace().join("scripts/demo.sh"))
            .arg("down")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output();
        if let Ok(down) = down {
            eprintln!(
                "---- scripts/demo.sh down ----\n{}{}",
                String::from_utf8_lossy(&down.stdout),
                String::from_utf8_lossy(&down.stderr)
            );
        }
    }
}

fn print_output(what: &str, output: &Output) {
    // Shown with --nocapture, and for a failed test: the demo as a user sees it.
    println!(
        "---- {what} ({}) ----\n{}\n---- stderr ----\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Commits `edit` of the deployment document to the device repository the demo's WOS keeps,
/// as the demo's WOS does.
fn commit_to_demo_repo(
    demo_dir: &Path,
    message: &str,
    edit: impl Fn(&str) -> String,
) -> Result<()> {
    let repos = demo_dir.join("wos/repos");
    let repo = std::fs::read_dir(&repos)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "git"))
        .with_context(|| format!("no repository in {}", repos.display()))?;
    let scratch = tempfile::tempdir()?;
    let work = scratch.path().join("work");
    let git = |dir: &Path| {
        let mut command = Command::new("git");
        command
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(["-c", "user.name=test WOS", "-c", "user.email=wos@woa.test"]);
        command
    };
    run(git(scratch.path())
        .arg("clone")
        .arg("--quiet")
        .arg(&repo)
        .arg(&work))?;
    let document = work.join("deployments/web.yaml");
    let text = std::fs::read_to_string(&document)?;
    std::fs::write(&document, edit(&text))?;
    run(git(&work).args(["commit", "--quiet", "-am", message]))?;
    run(git(&work).args(["push", "--quiet", "origin", "HEAD:refs/heads/main"]))?;
    Ok(())
}

/// Waits until the app answers `message` on `port`.
fn wait_for_answer(port: u16, message: &str) -> Result<()> {
    wait_until(CONVERGE_TIMEOUT, || {
        Ok(http_get(port, "/")? == (200, message.to_owned()))
    })
    .with_context(|| format!("the app never answered {message:?}"))
}

#[test]
fn the_quick_start_under_compose_v2() -> Result<()> {
    quick_start(Compose::V2.installed()?)
}

#[test]
fn the_quick_start_under_docker_compose_1_29() -> Result<()> {
    quick_start(Compose::V1.installed()?)
}

#[test]
fn woa_deploy_in_its_container_under_compose_v2_passes_the_conformance_kit() -> Result<()> {
    conformance_in_container(Compose::V2.installed()?)
}

#[test]
fn woa_deploy_in_its_container_under_docker_compose_1_29_passes_the_conformance_kit() -> Result<()>
{
    conformance_in_container(Compose::V1.installed()?)
}

/// The quick start deploys and changes the sample app, and the stack survives restarts and
/// `down`/`up`.
fn quick_start(compose: Compose) -> Result<()> {
    let images = images()?;
    for image in [&images.deploy, &images.sync] {
        let size: u64 = inspect(image, "{{.Size}}")?.parse()?;
        println!("{image}: {size} bytes");
        assert!(size <= MAX_IMAGE_BYTES, "{image} is {size} bytes");
    }

    let dir = tempfile::tempdir()?;
    let project = format!("woa-demo-{}", run_id()?);
    let demo_dir = dir.path().join("demo");
    let app_port = free_port()?;
    let env: Vec<(&'static str, String)> = vec![
        ("WOA_DEMO_PROJECT", project.clone()),
        ("WOA_DEMO_DIR", demo_dir.display().to_string()),
        ("WOA_DEMO_APP_PORT", app_port.to_string()),
        ("WOA_DEMO_WOS_PORT", free_port()?.to_string()),
        ("WOA_TESTKIT", env!("CARGO_BIN_EXE_woa-testkit").to_owned()),
        ("CARGO_TARGET_DIR", target_dir()?.display().to_string()),
        ("WOA_COMPOSE", compose.cli().join(" ")),
    ];
    let _cleanup = DemoCleanup { env: env.clone() };
    let started = std::time::Instant::now();
    let output = Command::new("bash")
        .arg(workspace().join("scripts/demo.sh"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()?;
    print_output("scripts/demo.sh", &output);
    println!("scripts/demo.sh took {:.0?}", started.elapsed());
    assert!(output.status.success(), "scripts/demo.sh failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for shown in [
        "->  Hello from woa, version 1",
        "->  Hello from woa, version 2",
        "\"status\":{\"state\":\"installed\"}",
        "scripts/demo.sh down",
    ] {
        assert!(stdout.contains(shown), "the demo did not show {shown:?}");
    }
    assert_eq!(
        http_get(app_port, "/")?,
        (200, "Hello from woa, version 2".to_owned())
    );

    // The same stack, driven as README.md says.
    let stack = Stack::new(
        compose,
        &project,
        images,
        &demo_dir.join("config"),
        &demo_dir.join("deploy"),
    );
    let deploy = stack.container("woa-deploy")?;
    let sync = stack.container("woa-sync")?;
    // Nothing published; who runs as whom; only woa-deploy has the socket.
    for id in [&deploy, &sync] {
        let ports = inspect(id, "{{json .NetworkSettings.Ports}}")?;
        assert!(!ports.contains("HostPort"), "published: {ports}");
    }
    assert_eq!(inspect(&sync, "{{.Config.User}}")?, WOA_USER);
    assert_eq!(inspect(&deploy, "{{.Config.User}}")?, "");
    let mounts = |id: &str| -> Result<Vec<String>> {
        let mut targets: Vec<String> = inspect(id, "{{range .Mounts}}{{.Destination}} {{end}}")?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        targets.sort();
        Ok(targets)
    };
    let state_dir = demo_dir.join("deploy").display().to_string();
    let mut expected = vec![
        "/etc/woa/config",
        "/etc/woa/pki",
        "/var/run/docker.sock",
        state_dir.as_str(),
    ];
    expected.sort();
    assert_eq!(mounts(&deploy)?, expected);
    assert_eq!(
        mounts(&sync)?,
        ["/etc/woa/config", "/etc/woa/pki", "/var/lib/woa-sync"]
    );
    for id in [&deploy, &sync] {
        assert_eq!(inspect(id, "{{.HostConfig.Privileged}}")?, "false");
    }
    stack.wait_healthy("woa-sync")?;

    // Restarting either container restarts no app and loses nothing.
    let apps = app_containers(&project)?;
    assert_eq!(apps.len(), 1, "{apps:?}");
    let pki_ca = |id: &str| {
        run(Command::new("docker").args(["cp", &format!("{id}:/etc/woa/pki/ca.pem"), "-"]))
    };
    let ca_before = pki_ca(&deploy)?;
    stack.compose(&["restart", "woa-deploy"])?;
    stack.compose(&["restart", "woa-sync"])?;
    stack.wait_healthy("woa-deploy")?;
    assert_eq!(app_containers(&project)?, apps);

    // down && up: new service containers, the same app container, PKI and enrollment.
    stack.compose(&["down", "--timeout", "10"])?;
    assert_eq!(app_containers(&project)?, apps, "down stopped the app");
    assert_eq!(http_get(app_port, "/")?.1, "Hello from woa, version 2");
    stack.compose(&["up", "-d"])?;
    stack.wait_healthy("woa-deploy")?;
    let deploy = stack.container("woa-deploy")?;
    assert_eq!(pki_ca(&deploy)?, ca_before, "the local PKI was made anew");
    assert_eq!(app_containers(&project)?, apps, "up restarted the app");
    // woa-sync still knows its WOS and repository: a new commit arrives.
    commit_to_demo_repo(&demo_dir, "demo-web: version 3", |doc| {
        doc.replace("version 2", "version 3")
    })?;
    wait_for_answer(app_port, "Hello from woa, version 3").with_context(|| stack.logs())?;
    Ok(())
}

/// The conformance kit passes against woa-deploy started from compose.yaml.
fn conformance_in_container(compose: Compose) -> Result<()> {
    let images = images()?;
    let image = testapp_image()?;
    let dir = tempfile::tempdir()?;
    let project = format!("woa-conformance-{}", run_id()?);
    // Published on loopback for this test only; compose.yaml itself never publishes it.
    let publish = dir.path().join("publish.yaml");
    std::fs::write(
        &publish,
        "services:\n  woa-deploy:\n    ports: [\"127.0.0.1::7411\"]\n",
    )?;
    let mut stack = Stack::new(
        compose,
        &project,
        images,
        &workspace().join("config"),
        &dir.path().join("deploy"),
    );
    stack.extra_files.push(publish);
    stack.compose(&["up", "-d", "woa-deploy"])?;
    stack.wait_healthy("woa-deploy")?;
    let address = stack
        .compose(&["port", "woa-deploy", "7411"])?
        .trim()
        .to_owned();
    let deploy = stack.container("woa-deploy")?;
    let pki = dir.path().join("pki");
    run(Command::new("docker")
        .arg("cp")
        .arg(format!("{deploy}:/etc/woa/pki/."))
        .arg(&pki))?;

    let output = Command::new(env!("CARGO_BIN_EXE_woa-testkit"))
        .args(["conformance", "--target", &address])
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join("sync.pem"))
        .arg("--key")
        .arg(pki.join("sync-key.pem"))
        .args(["--image", image])
        .env("NO_COLOR", "1")
        .output()?;
    print_output("woa-testkit conformance", &output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\nwoa-deploy logs:\n{}",
        stack.logs()
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.ends_with(" passed, 0 failed"), "{stdout}");
    Ok(())
}
