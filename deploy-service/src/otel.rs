//! The observability duty of Margo rc.3: when the device has an OpenTelemetry collector, every
//! container learns where it is through the standard OTLP exporter variables, unless the app
//! sets its own.

use serde::{Deserialize, Serialize};

use crate::spec::Project;

/// `[otel]` of woa-deploy's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// The collector's OTLP endpoint as apps reach it, e.g. `http://otel-collector:4318`.
    pub endpoint: Option<String>,
    /// `grpc`, `http/protobuf` or `http/json`, when not the exporters' default.
    pub protocol: Option<String>,
    /// The CA certificate file for the collector, as a path inside the containers.
    pub certificate: Option<String>,
}

impl OtelConfig {
    /// Whether a collector is configured (and capabilities say `otelCollector: true`).
    pub fn collector(&self) -> bool {
        self.endpoint.is_some()
    }

    /// Adds the exporter variables to every service of `project` that does not set them. They
    /// are part of the service's spec, so a new collector address recreates the containers.
    pub fn apply(&self, project: &mut Project) {
        if !self.collector() {
            return;
        }
        let variables = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &self.endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", &self.protocol),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &self.certificate),
        ];
        for service in &mut project.services {
            for (name, value) in &variables {
                if let Some(value) = value {
                    (service.environment.0)
                        .entry((*name).to_owned())
                        .or_insert_with(|| value.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Service;

    #[test]
    fn the_collector_is_announced_to_every_container_and_the_app_wins() {
        let mut project = Project::default();
        let mut own = Service {
            name: "own".into(),
            ..Default::default()
        };
        (own.environment.0).insert(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            "http://mine:4317".into(),
        );
        project.services = vec![
            Service {
                name: "plain".into(),
                ..Default::default()
            },
            own,
        ];
        let config = OtelConfig {
            endpoint: Some("http://collector:4318".into()),
            protocol: Some("http/protobuf".into()),
            certificate: None,
        };
        config.apply(&mut project);
        let env = |i: usize, key: &str| project.services[i].environment.0.get(key).cloned();
        assert_eq!(
            env(0, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            Some("http://collector:4318")
        );
        assert_eq!(
            env(0, "OTEL_EXPORTER_OTLP_PROTOCOL").as_deref(),
            Some("http/protobuf")
        );
        assert_eq!(env(0, "OTEL_EXPORTER_OTLP_CERTIFICATE"), None);
        assert_eq!(
            env(1, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            Some("http://mine:4317")
        );

        let mut untouched = Project::default();
        untouched.services.push(Service::default());
        OtelConfig::default().apply(&mut untouched);
        assert!(untouched.services[0].environment.0.is_empty());
    }
}
