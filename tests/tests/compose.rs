//! Compose files as people write them, on the real engine: the wider service surface reaches
//! the container, the device owner's policy decides what a file gets of the host, relative
//! binds keep their data across releases, and `container_name` cannot clash.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use woa_tests::{
    AppDeployment, Cleanup, Deploy, DeployOptions, DesiredState, containers, fails_alone_with,
    testapp_image, wait_answer,
};

fn location(name: &str) -> String {
    format!("apps/{name}/compose.yaml")
}

/// A desired state at `revision` with one deployment `id` running `compose`.
fn state(revision: &str, id: &str, compose: &str) -> DesiredState {
    let app = AppDeployment::new(id, "app").component("app", &location(id));
    DesiredState::new(revision)
        .deployment(&app)
        .artifact(&location(id), compose)
}

/// A web service answering `message` on a loopback port, with extra service keys.
fn web(message: &str, extra: &str) -> Result<String> {
    let image = testapp_image()?;
    Ok(format!(
        "services:\n  web:\n    image: {image}\n    command: [\"serve\", \"8080\"]\n    \
         environment:\n      MESSAGE: \"{message}\"\n    ports: [\"127.0.0.1::8080\"]\n{extra}"
    ))
}

fn with_policy(policy: &str) -> DeployOptions {
    DeployOptions {
        extra: format!("[policy]\n{policy}"),
        ..Default::default()
    }
}

/// The single container of deployment `id`.
fn the_container(id: &str) -> Result<Value> {
    let all = containers(id)?;
    ensure!(all.len() == 1, "{id} has {} containers", all.len());
    Ok(all[0].inspect().clone())
}

#[test]
fn the_wider_compose_surface_reaches_the_container() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start_with(&with_policy("devices = [\"/dev/null\"]\n"))?;
    let id = cleanup.deployment_id()?;
    let name = format!("gauge-{}", &id[..8]);
    let extra = format!(
        "    container_name: {name}\n    hostname: gauge\n    domainname: plant.lan\n    \
         expose: [\"9000\"]\n    dns: [10.0.0.53]\n    dns_search: plant.lan\n    \
         extra_hosts: [\"historian:10.0.0.2\"]\n    devices: [\"/dev/null:/dev/sensor:rw\"]\n    \
         sysctls: {{net.ipv4.tcp_syncookies: \"1\"}}\n    \
         ulimits: {{nofile: {{soft: 1024, hard: 2048}}}}\n    init: true\n    \
         stop_signal: SIGINT\n    stop_grace_period: 3s\n    pids_limit: 64\n    \
         shm_size: 16m\n    tmpfs: [\"/scratch:rw,noexec,size=8m\"]\n    \
         security_opt: [\"no-new-privileges:true\"]\n    group_add: [\"20\"]\n    \
         deploy:\n      resources:\n        limits: {{memory: 64m}}\n        \
         reservations: {{memory: 16m}}\n"
    );
    deploy.apply(&state("r1", &id, &web("gauge", &extra)?))?;
    deploy.wait_for(&id, "r1", "INSTALLED")?;
    wait_answer(&id, "gauge")?;

    let c = the_container(&id)?;
    let (config, host) = (&c["Config"], &c["HostConfig"]);
    ensure!(c["Name"] == format!("/{name}"), "name: {}", c["Name"]);
    ensure!(config["Hostname"] == "gauge" && config["Domainname"] == "plant.lan");
    ensure!(
        config["ExposedPorts"].get("9000/tcp").is_some(),
        "{config:#}"
    );
    ensure!(config["StopSignal"] == "SIGINT" && config["StopTimeout"] == 3);
    ensure!(host["Dns"] == json!(["10.0.0.53"]) && host["DnsSearch"] == json!(["plant.lan"]));
    ensure!(
        host["ExtraHosts"] == json!(["historian:10.0.0.2"]),
        "{host:#}"
    );
    let device = &host["Devices"][0];
    ensure!(
        device["PathOnHost"] == "/dev/null"
            && device["PathInContainer"] == "/dev/sensor"
            && device["CgroupPermissions"] == "rw",
        "{host:#}"
    );
    ensure!(host["Sysctls"] == json!({"net.ipv4.tcp_syncookies": "1"}));
    ensure!(host["Ulimits"] == json!([{"Name": "nofile", "Soft": 1024, "Hard": 2048}]));
    ensure!(host["Init"] == true && host["PidsLimit"] == 64);
    ensure!(host["ShmSize"] == 16 << 20);
    ensure!(host["Tmpfs"] == json!({"/scratch": "rw,noexec,size=8m"}));
    ensure!(host["SecurityOpt"] == json!(["no-new-privileges:true"]));
    ensure!(host["GroupAdd"] == json!(["20"]));
    ensure!(host["Memory"] == 64 << 20 && host["MemoryReservation"] == 16 << 20);
    // The container_name is also its name on the project network, as with Compose.
    let aliases = c["NetworkSettings"]["Networks"]
        .as_object()
        .and_then(|n| n.values().next())
        .map(|n| n["Aliases"].clone())
        .unwrap_or_default();
    ensure!(
        aliases.as_array().is_some_and(|a| a.contains(&json!(name))),
        "aliases: {aliases}"
    );
    Ok(())
}

#[test]
fn the_host_network_is_refused_by_default_naming_the_setting() -> Result<()> {
    let image = testapp_image()?;
    let compose = format!(
        "services:\n  app:\n    image: {image}\n    command: [\"sleep\"]\n    network_mode: host\n"
    );
    fails_alone_with(
        &DeployOptions::default(),
        |id, desired| {
            let app = AppDeployment::new(id, "host").component("app", &location(id));
            desired
                .deployment(&app)
                .artifact(&location(id), compose.as_str())
        },
        "services.app.network_mode: the host's network namespace is refused: allow it with policy.host_namespaces = [\"network\"]",
    )?;
    Ok(())
}

#[test]
fn the_policy_lets_the_host_network_in() -> Result<()> {
    let cleanup = Cleanup::new();
    // (`privileged` is not run here: this machine's engine itself runs without every
    // capability, so a privileged container cannot start. Its policy has unit tests.)
    let policy = "host_namespaces = [\"network\", \"pid\"]\n";
    let deploy = Deploy::start_with(&with_policy(policy))?;
    let id = cleanup.deployment_id()?;
    let image = testapp_image()?;
    let compose = format!(
        "services:\n  app:\n    image: {image}\n    command: [\"sleep\"]\n    \
         network_mode: host\n    pid: host\n"
    );
    deploy.apply(&state("r1", &id, &compose))?;
    deploy.wait_for(&id, "r1", "INSTALLED")?;
    let host = the_container(&id)?["HostConfig"].clone();
    ensure!(host["NetworkMode"] == "host", "{host:#}");
    ensure!(host["PidMode"] == "host", "{host:#}");
    Ok(())
}

#[test]
fn relative_binds_keep_their_data_across_an_update_and_a_rollback() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let id = cleanup.deployment_id()?;
    let image = testapp_image()?;
    let release = |message: &str| -> Result<String> {
        Ok(format!(
            "services:\n  web:\n    image: {image}\n    command: [\"serve\", \"8080\"]\n    \
             environment:\n      MESSAGE: \"{message}\"\n      DATA_FILE: /data/log\n    \
             ports: [\"127.0.0.1::8080\"]\n    volumes: [\"./volumes/web:/data\"]\n"
        ))
    };
    deploy.apply(&state("r1", &id, &release("one")?))?;
    deploy.wait_for(&id, "r1", "INSTALLED")?;
    wait_answer(&id, "one\n")?;

    deploy.apply(&state("r2", &id, &release("two")?))?;
    deploy.wait_for(&id, "r2", "INSTALLED")?;
    wait_answer(&id, "one\ntwo\n")?;

    deploy.grpcurl(
        "woa.deploy.v1.DeploymentService/Rollback",
        &json!({ "deploymentId": id }),
    )?;
    wait_answer(&id, "one\ntwo\none\n")?;

    // The data lives in the deployment's own directory, not in a release's package.
    let data = deploy.state_dir().join("data").join(&id);
    let log = std::fs::read_to_string(data.join("app/volumes%2Fweb/log"))
        .with_context(|| format!("no data under {}", data.display()))?;
    ensure!(log == "one\ntwo\none\n", "{log:?}");
    Ok(())
}

#[test]
fn a_container_name_can_belong_to_one_deployment_only() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let (first, second) = (cleanup.deployment_id()?, cleanup.deployment_id()?);
    let name = format!("shared-{}", &first[..8]);
    let named = |message: &str| web(message, &format!("    container_name: {name}\n"));
    let both = state("r1", &first, &named("first")?)
        .deployment(&AppDeployment::new(&second, "second").component("app", &location(&second)))
        .artifact(&location(&second), named("second")?.as_str());
    deploy.apply(&both)?;
    deploy.wait_for(&first, "r1", "INSTALLED")?;
    let failure = deploy.wait_for(&second, "r1", "FAILED")?;
    let message = failure["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains(&format!(
            "services.web.container_name: `{name}` already belongs to component app of deployment {first}"
        )),
        "{failure:#}"
    );
    ensure!(containers(&second)?.is_empty());
    wait_answer(&first, "first")?;
    Ok(())
}

/// `docker cp` of one file out of a container.
fn file_in(container: &str, path: &str) -> Result<String> {
    let out = std::process::Command::new("docker")
        .args(["cp", &format!("{container}:{path}"), "-"])
        .output()?;
    ensure!(out.status.success(), "docker cp {path}: {out:?}");
    let mut archive = tar::Archive::new(out.stdout.as_slice());
    let mut entry = archive.entries()?.next().context("empty archive")??;
    let mode = entry.header().mode()? & 0o7777;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut entry, &mut text)?;
    Ok(format!("{mode:o} {text}"))
}

#[test]
fn secrets_and_configs_are_in_the_container_before_it_starts() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let id = cleanup.deployment_id()?;
    let extra = "    secrets:\n      - token\n      - source: key\n        target: /etc/app/key\n        \
                 mode: 0400\n    configs:\n      - source: motd\n        target: /etc/motd\n\
                 secrets:\n  token:\n    file: ./token.txt\n  key:\n    environment: KEY\n\
                 configs:\n  motd:\n    content: |\n      hello ${KEY}\n";
    let app = AppDeployment::new(&id, "files")
        .component("app", &location(&id))
        .parameter("KEY", "k-1", &["app"]);
    let desired = DesiredState::new("r1")
        .deployment(&app)
        .artifact(&location(&id), web("files", extra)?.as_str())
        .artifact(&format!("apps/{id}/token.txt"), "t0ken");
    deploy.apply(&desired)?;
    deploy.wait_for(&id, "r1", "INSTALLED")?;
    wait_answer(&id, "files")?;
    let container = &containers(&id)?[0].id;
    for (path, want) in [
        ("/run/secrets/token", "444 t0ken"),
        ("/etc/app/key", "400 k-1"),
        ("/etc/motd", "444 hello k-1\n"),
    ] {
        let got = file_in(container, path)?;
        ensure!(got == want, "{path}: {got:?}, expected {want:?}");
    }
    Ok(())
}

#[test]
fn a_network_with_its_own_pool_gives_fixed_addresses() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let id = cleanup.deployment_id()?;
    // A subnet from the id, so that tests running at once do not ask for the same one.
    let octet = u8::from_str_radix(&id[..2], 16)? % 200 + 20;
    let extra = format!(
        "    networks:\n      plant:\n        ipv4_address: 10.{octet}.7.10\n\
         networks:\n  plant:\n    ipam:\n      config:\n        - subnet: 10.{octet}.7.0/24\n          \
         gateway: 10.{octet}.7.1\n"
    );
    deploy.apply(&state("r1", &id, &web("fixed", &extra)?))?;
    deploy.wait_for(&id, "r1", "INSTALLED")?;
    let c = the_container(&id)?;
    let networks = c["NetworkSettings"]["Networks"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let address = networks.values().next().map(|n| n["IPAddress"].clone());
    ensure!(
        address == Some(json!(format!("10.{octet}.7.10"))),
        "{networks:#?}"
    );
    Ok(())
}

/// The names and ids of the containers of deployment `id`, by name.
fn names_and_ids(id: &str) -> Result<std::collections::BTreeMap<String, String>> {
    Ok(containers(id)?
        .into_iter()
        .map(|c| (c.name, c.id))
        .collect())
}

#[test]
fn replicas_scale_up_and_down_and_their_dependents_wait_for_all() -> Result<()> {
    let cleanup = Cleanup::new();
    let deploy = Deploy::start()?;
    let id = cleanup.deployment_id()?;
    let image = testapp_image()?;
    let compose = |workers: u32| {
        format!(
            "services:\n  worker:\n    image: {image}\n    command: [\"sleep\"]\n    \
             deploy:\n      replicas: {workers}\n  web:\n    image: {image}\n    \
             command: [\"sleep\"]\n    depends_on: [worker]\n"
        )
    };
    deploy.apply(&state("r1", &id, &compose(3)))?;
    let status = deploy.wait_for(&id, "r1", "INSTALLED")?;
    let base = format!("{id}_app_worker");
    let three = names_and_ids(&id)?;
    let expected = [
        format!("{id}_app_web"),
        base.clone(),
        format!("{base}_2"),
        format!("{base}_3"),
    ];
    ensure!(
        three.keys().eq(expected.iter()),
        "containers: {:?}",
        three.keys()
    );
    let reported = status["components"][0]["containers"]
        .as_array()
        .map(Vec::len);
    ensure!(reported == Some(4), "status: {status:#}");

    // Down to one: the last two go, the first and its dependent keep running as they were.
    deploy.apply(&state("r2", &id, &compose(1)))?;
    deploy.wait_for(&id, "r2", "INSTALLED")?;
    let one = names_and_ids(&id)?;
    ensure!(one.len() == 2, "containers: {:?}", one.keys());
    ensure!(one[&base] == three[&base] && one[&expected[0]] == three[&expected[0]]);
    Ok(())
}
