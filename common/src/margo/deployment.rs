//! ApplicationDeployment documents.
//!
//! Parsed by walking a `serde_yaml_ng::Value` rather than deriving `Deserialize`: the drafts put
//! the same field in different places and give values different types, and every error has to
//! name the dotted field at fault.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::{Error, Result};

/// One Margo ApplicationDeployment: what to run on this device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplicationDeployment {
    /// The deployment id (a UUID), stable across revisions of the document.
    pub id: String,
    /// The application this deploys, when the document names it.
    pub application_id: Option<String>,
    /// `metadata.name`, for people.
    pub name: Option<String>,
    /// How the components are packaged.
    pub profile: Profile,
    /// The components in document order; names are unique.
    pub components: Vec<Component>,
    /// The parameters in document order.
    pub parameters: Vec<Parameter>,
}

/// The deployment profile type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Docker Compose (`compose` or `docker-compose`).
    Compose,
    /// Helm (`helm` or `helm.v3`).
    Helm,
    /// Any other type, as written. Not a parse error: the deployment service reports it in the
    /// status of this deployment.
    Other(String),
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Profile::Compose => f.write_str("compose"),
            Profile::Helm => f.write_str("helm"),
            Profile::Other(other) => f.write_str(other),
        }
    }
}

/// One component of the deployment profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// Unique within the deployment.
    pub name: String,
    /// Where the component's package comes from.
    pub package: Package,
    /// Whether to wait for the component to be ready before the next one (default true).
    pub wait: bool,
    /// How long to wait at most, when given.
    pub timeout: Option<Duration>,
}

/// Where a component's package comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Package {
    /// `packageLocation`: a repository-relative path or an `https://` URL.
    Location(String),
    /// `repository` (e.g. `oci://…`) with an optional `revision`.
    Oci {
        /// The repository reference.
        repository: String,
        /// The tag or version, when given.
        revision: Option<String>,
    },
}

/// A deployment parameter and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameter {
    /// The key under `spec.parameters`.
    pub name: String,
    /// The value as text: lists are comma-joined, numbers and bools as written in YAML.
    pub value: String,
    /// Where the value is applied.
    pub targets: Vec<Target>,
}

/// One place a parameter's value is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The pointer as written, e.g. `ENV.ADMIN_NAME` or `settings.limits.cpu`.
    pub pointer: String,
    /// The names of the components it applies to; each names a component of the deployment.
    pub components: Vec<String>,
}

impl Target {
    /// The pointer without a leading `ENV.`: for compose, the interpolation variable's name.
    pub fn variable(&self) -> &str {
        self.pointer.strip_prefix("ENV.").unwrap_or(&self.pointer)
    }
}

/// `apiVersion`s of the drafts this agent understands, besides anything starting with `v1`.
const API_VERSIONS: [&str; 2] = ["application.margo.org/v1alpha1", "margo.org/v1-alpha1"];
const KIND: &str = "ApplicationDeployment";

/// Parses one ApplicationDeployment YAML document; `path` only names it in errors.
///
/// Every failure is an [`Error::Document`] naming the dotted field at fault (`document` for
/// malformed YAML, with the line and column in the message).
pub fn parse_deployment(path: &str, yaml: &[u8]) -> Result<ApplicationDeployment> {
    let value: Value = serde_yaml_ng::from_slice(yaml).map_err(|e| yaml_error(path, &e))?;
    let root = Node {
        path,
        field: String::new(),
        value: &value,
    };
    if !value.is_mapping() {
        return Err(document_error(
            path,
            "document",
            format!("expected a mapping, found {}", type_name(&value)),
        ));
    }
    let kind = root.get("kind")?;
    if let Some(kind) = &kind {
        let found = kind.str()?;
        if found != KIND {
            return Err(kind.error(format!("expected {KIND}, found {found:?}")));
        }
    }
    let spec = root.require("spec")?;
    let metadata = root.get("metadata")?;
    let annotations = match &metadata {
        Some(metadata) => metadata.get("annotations")?,
        None => None,
    };
    let spec_application_id = spec.get("applicationId")?;
    match root.get("apiVersion")? {
        Some(api_version) => {
            let found = api_version.str()?;
            if !(API_VERSIONS.contains(&found) || found.starts_with("v1")) {
                return Err(api_version.error(format!(
                    "unsupported apiVersion {found:?}; expected one of {API_VERSIONS:?} or v1…"
                )));
            }
            if kind.is_none() {
                return Err(root.missing("kind"));
            }
        }
        // The rc.2 gateway shape has neither, and moves applicationId into spec.
        None if kind.is_none() && spec_application_id.is_some() => {}
        None => return Err(root.missing("apiVersion")),
    }

    let annotated = |key: &str| match &annotations {
        Some(annotations) => annotations.get(key),
        None => Ok(None),
    };
    let id_node = match root.get("id")? {
        Some(id) => id,
        None => annotated("id")?.ok_or_else(|| root.missing("id"))?,
    };
    let id = id_node.str()?;
    if !is_uuid(id) {
        return Err(id_node.error(format!("expected a UUID, found {id:?}")));
    }
    let application_id = match spec_application_id {
        Some(node) => Some(node),
        None => annotated("applicationId")?,
    };
    let application_id = application_id
        .map(|node| match node.str()? {
            found if is_application_id(found) => Ok(found),
            found => Err(node.error(format!(
                "expected 1 to 200 lower-case letters, digits and dashes, found {found:?}"
            ))),
        })
        .transpose()?;
    let name = match &metadata {
        Some(metadata) => metadata.get("name")?.map(|n| n.str()).transpose()?,
        None => None,
    };

    let deployment_profile = spec.require("deploymentProfile")?;
    let profile_type = deployment_profile.require("type")?;
    let profile = match profile_type.str()?.to_ascii_lowercase().as_str() {
        "compose" | "docker-compose" => Profile::Compose,
        "helm" | "helm.v3" => Profile::Helm,
        _ => Profile::Other(profile_type.str()?.to_owned()),
    };
    let components_node = deployment_profile.require("components")?;
    let mut components = Vec::new();
    for node in components_node.items()? {
        let component = parse_component(&node)?;
        if components
            .iter()
            .any(|c: &Component| c.name == component.name)
        {
            return Err(node
                .require("name")?
                .error(format!("component name {:?} is used twice", component.name)));
        }
        components.push(component);
    }
    if components.is_empty() {
        return Err(components_node.error("expected at least one component"));
    }
    let names: HashSet<&str> = components.iter().map(|c| c.name.as_str()).collect();
    let parameters = match spec.get("parameters")? {
        Some(parameters) => parameters
            .entries()?
            .into_iter()
            .filter(|(name, _)| !is_extension(name))
            .map(|(name, node)| parse_parameter(name, &node, &names))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };

    Ok(ApplicationDeployment {
        id: id.to_owned(),
        application_id: application_id.map(str::to_owned),
        name: name.map(str::to_owned),
        profile,
        components,
        parameters,
    })
}

/// The deployment id of a document that may be invalid otherwise, so its failure can be
/// reported under that id.
///
/// Falls back to a top-level `id:` line when the YAML is malformed. Only ids usable as a file
/// name, URL segment and label value are returned (up to 200 of `A-Za-z0-9._-`, not starting
/// with `.` or `-`): the id of a broken document is not trusted further than that.
pub fn peek_deployment_id(yaml: &[u8]) -> Option<String> {
    let id = match serde_yaml_ng::from_slice::<Value>(yaml) {
        Ok(root) => root
            .get("id")
            .and_then(Value::as_str)
            .or_else(|| {
                root.get("metadata")?
                    .get("annotations")?
                    .get("id")?
                    .as_str()
            })
            .map(str::to_owned),
        Err(_) => std::str::from_utf8(yaml).ok()?.lines().find_map(|line| {
            let rest = line.strip_prefix("id:")?;
            let value = rest.split(" #").next().unwrap_or(rest).trim();
            Some(value.trim_matches(['"', '\'']).to_owned())
        }),
    }?;
    let safe = (1..=200).contains(&id.len())
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    safe.then_some(id)
}

fn parse_component(node: &Node<'_>) -> Result<Component> {
    let name = node.require("name")?.non_empty_str()?.to_owned();
    let properties = node.require("properties")?;
    let package = match (
        properties.get("packageLocation")?,
        properties.get("repository")?,
    ) {
        (Some(location), None) => Package::Location(location.non_empty_str()?.to_owned()),
        (None, Some(repository)) => Package::Oci {
            repository: repository.non_empty_str()?.to_owned(),
            revision: properties
                .get("revision")?
                .map(|r| r.scalar_text())
                .transpose()?,
        },
        (Some(_), Some(repository)) => {
            return Err(repository.error("give either packageLocation or repository, not both"));
        }
        (None, None) => {
            return Err(document_error(
                properties.path,
                &properties.child_field("packageLocation"),
                "missing: a component needs packageLocation or repository",
            ));
        }
    };
    let wait = match properties.get("wait")? {
        None => true,
        Some(wait) => match wait.value {
            Value::Bool(b) => *b,
            Value::String(s) if s.eq_ignore_ascii_case("true") => true,
            Value::String(s) if s.eq_ignore_ascii_case("false") => false,
            Value::String(s) => {
                return Err(wait.error(format!("expected true or false, found {s:?}")));
            }
            other => {
                let found = type_name(other);
                return Err(wait.error(format!("expected true or false, found {found}")));
            }
        },
    };
    let timeout = match properties.get("timeout")? {
        None => None,
        Some(timeout) => Some(
            parse_timeout(timeout.str()?)
                .ok_or_else(|| timeout.error("expected a duration like 8m30s, 90s or 2m"))?,
        ),
    };
    Ok(Component {
        name,
        package,
        wait,
        timeout,
    })
}

fn parse_parameter(name: &str, node: &Node<'_>, components: &HashSet<&str>) -> Result<Parameter> {
    let value_node = node.require("value")?;
    let value = match value_node.value {
        Value::Sequence(_) => value_node
            .items()?
            .iter()
            .map(Node::scalar_text)
            .collect::<Result<Vec<_>>>()?
            .join(","),
        _ => value_node.scalar_text()?,
    };
    let targets_node = node.require("targets")?;
    let mut targets = Vec::new();
    for target in targets_node.items()? {
        let pointer = target.require("pointer")?.non_empty_str()?.to_owned();
        let components_node = target.require("components")?;
        let mut names = Vec::new();
        for component in components_node.items()? {
            let component_name = component.str()?;
            if !components.contains(component_name) {
                return Err(component.error(format!(
                    "no component named {component_name:?} in this deployment"
                )));
            }
            names.push(component_name.to_owned());
        }
        if names.is_empty() {
            return Err(components_node.error("expected at least one component"));
        }
        targets.push(Target {
            pointer,
            components: names,
        });
    }
    if targets.is_empty() {
        return Err(targets_node.error("expected at least one target"));
    }
    Ok(Parameter {
        name: name.to_owned(),
        value,
        targets,
    })
}

/// Parses `##m##s`, `##m` or `##s`.
fn parse_timeout(text: &str) -> Option<Duration> {
    let (minutes, seconds) = match text.trim().split_once('m') {
        Some((minutes, "")) => (minutes, "0"),
        Some((minutes, rest)) => (minutes, rest.strip_suffix('s')?),
        None => ("0", text.trim().strip_suffix('s')?),
    };
    let number = |digits: &str| {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u64>().ok()
    };
    let total = number(minutes)?
        .checked_mul(60)?
        .checked_add(number(seconds)?)?;
    Some(Duration::from_secs(total))
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The spec's `^[-a-z0-9]{1,200}$`.
fn is_application_id(text: &str) -> bool {
    (1..=200).contains(&text.len())
        && text
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Vendor extensions (`x-<name>-extensions`) may appear anywhere and are never ours to read.
fn is_extension(key: &str) -> bool {
    key.starts_with("x-") && key.ends_with("-extensions")
}

fn yaml_error(path: &str, error: &serde_yaml_ng::Error) -> Error {
    let text = error.to_string();
    // libyaml's messages already carry the position; serde's sometimes do not.
    let message = match error.location() {
        Some(at) if !text.contains("line ") => format!(
            "malformed YAML at line {} column {}: {text}",
            at.line(),
            at.column()
        ),
        _ => format!("malformed YAML: {text}"),
    };
    document_error(path, "document", message)
}

fn document_error(path: &str, field: &str, message: impl Into<String>) -> Error {
    Error::Document {
        path: path.to_owned(),
        field: field.to_owned(),
        message: message.into(),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A value of the document with the dotted field that names it in errors.
struct Node<'a> {
    path: &'a str,
    field: String,
    value: &'a Value,
}

impl<'a> Node<'a> {
    fn error(&self, message: impl Into<String>) -> Error {
        document_error(self.path, &self.field, message)
    }

    fn child_field(&self, key: &str) -> String {
        if self.field.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.field)
        }
    }

    fn missing(&self, key: &str) -> Error {
        document_error(self.path, &self.child_field(key), "missing")
    }

    /// The child under `key`; `key:` with nothing after it counts as absent.
    fn get(&self, key: &str) -> Result<Option<Node<'a>>> {
        let Value::Mapping(map) = self.value else {
            return Err(self.error(format!(
                "expected a mapping, found {}",
                type_name(self.value)
            )));
        };
        Ok(match map.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(Node {
                path: self.path,
                field: self.child_field(key),
                value,
            }),
        })
    }

    fn require(&self, key: &str) -> Result<Node<'a>> {
        self.get(key)?.ok_or_else(|| self.missing(key))
    }

    fn str(&self) -> Result<&'a str> {
        self.value.as_str().ok_or_else(|| {
            self.error(format!(
                "expected a string, found {}",
                type_name(self.value)
            ))
        })
    }

    fn non_empty_str(&self) -> Result<&'a str> {
        match self.str()? {
            "" => Err(self.error("must not be empty")),
            text => Ok(text),
        }
    }

    /// A string, number or bool as text; numbers and bools as YAML writes them.
    fn scalar_text(&self) -> Result<String> {
        match self.value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(self.error(format!(
                "expected a string, number or bool, found {}",
                type_name(other)
            ))),
        }
    }

    fn items(&self) -> Result<Vec<Node<'a>>> {
        let Value::Sequence(items) = self.value else {
            return Err(self.error(format!("expected a list, found {}", type_name(self.value))));
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, value)| Node {
                path: self.path,
                field: format!("{}[{i}]", self.field),
                value,
            })
            .collect())
    }

    fn entries(&self) -> Result<Vec<(&'a str, Node<'a>)>> {
        let Value::Mapping(map) = self.value else {
            return Err(self.error(format!(
                "expected a mapping, found {}",
                type_name(self.value)
            )));
        };
        map.iter()
            .map(|(key, value)| {
                let key = key
                    .as_str()
                    .ok_or_else(|| self.error("expected string keys"))?;
                let field = self.child_field(key);
                Ok((
                    key,
                    Node {
                        path: self.path,
                        field,
                        value,
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    const DEPLOYMENT: &str = "\
apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
id: a3e2f5dc-912e-494f-8395-52cf3769bc06
metadata:
  name: demo
  annotations:
    applicationId: demo-app
spec:
  deploymentProfile:
    type: compose
    x-acme-extensions: {anything: [1, 2]}
    components:
      - name: web
        properties:
          packageLocation: apps/web/compose.yaml
          keyLocation: https://example.com/key.asc
      - name: db
        properties:
          repository: oci://registry.example.com/db
          revision: 1.2.3
          wait: false
          timeout: 8m30s
  parameters:
    x-acme-extensions: {ignored: true}
    greeting:
      value: hello
      targets:
        - pointer: ENV.GREETING
          components: [web, db]
";

    /// The field named by the error `DEPLOYMENT` gets after replacing `from` by `to`.
    fn rejected_field(from: &str, to: &str) -> String {
        assert!(DEPLOYMENT.contains(from), "{from:?} is not in the document");
        match parse_deployment("t.yaml", DEPLOYMENT.replacen(from, to, 1).as_bytes()) {
            Ok(d) => panic!("{from:?} -> {to:?} was accepted: {d:?}"),
            Err(Error::Document { path, field, .. }) => {
                assert_eq!(path, "t.yaml");
                field
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    fn parsed(from: &str, to: &str) -> ApplicationDeployment {
        assert!(DEPLOYMENT.contains(from), "{from:?} is not in the document");
        match parse_deployment("t.yaml", DEPLOYMENT.replacen(from, to, 1).as_bytes()) {
            Ok(deployment) => deployment,
            Err(e) => panic!("{from:?} -> {to:?} was rejected: {e}"),
        }
    }

    #[test]
    fn parses_a_deployment_into_the_model() {
        let deployment = parsed("", "");
        assert_eq!(
            deployment,
            ApplicationDeployment {
                id: "a3e2f5dc-912e-494f-8395-52cf3769bc06".into(),
                application_id: Some("demo-app".into()),
                name: Some("demo".into()),
                profile: Profile::Compose,
                components: vec![
                    Component {
                        name: "web".into(),
                        package: Package::Location("apps/web/compose.yaml".into()),
                        wait: true,
                        timeout: None,
                    },
                    Component {
                        name: "db".into(),
                        package: Package::Oci {
                            repository: "oci://registry.example.com/db".into(),
                            revision: Some("1.2.3".into()),
                        },
                        wait: false,
                        timeout: Some(Duration::from_secs(510)),
                    },
                ],
                parameters: vec![Parameter {
                    name: "greeting".into(),
                    value: "hello".into(),
                    targets: vec![Target {
                        pointer: "ENV.GREETING".into(),
                        components: vec!["web".into(), "db".into()],
                    }],
                }],
            }
        );
        let json = serde_json::to_string(&deployment).expect("serialises");
        let back: ApplicationDeployment = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, deployment);
    }

    #[test]
    fn accepts_the_variants_the_drafts_use() {
        for api_version in ["margo.org/v1-alpha1", "v1", "v1alpha1"] {
            let d = parsed("application.margo.org/v1alpha1", api_version);
            assert_eq!(d.id, "a3e2f5dc-912e-494f-8395-52cf3769bc06");
        }
        for (written, profile) in [
            ("docker-compose", Profile::Compose),
            ("helm", Profile::Helm),
            ("helm.v3", Profile::Helm),
            ("Compose", Profile::Compose),
            ("kustomize", Profile::Other("kustomize".into())),
        ] {
            assert_eq!(
                parsed("type: compose", &format!("type: {written}")).profile,
                profile
            );
        }
        let moved = parsed(
            "applicationId: demo-app",
            "id: 00000000-0000-0000-0000-0000000000ff",
        );
        // The top-level id wins over the annotation.
        assert_eq!(moved.id, "a3e2f5dc-912e-494f-8395-52cf3769bc06");
        assert_eq!(moved.application_id, None);
        assert_eq!(parsed("  name: demo\n", "").name, None);
    }

    #[test]
    fn takes_the_id_from_the_annotations_when_not_at_the_top() {
        let yaml = DEPLOYMENT
            .replacen("id: a3e2f5dc-912e-494f-8395-52cf3769bc06\n", "", 1)
            .replacen(
                "applicationId: demo-app",
                "applicationId: demo-app\n    id: 00000000-0000-0000-0000-0000000000ff",
                1,
            );
        let deployment = parse_deployment("t.yaml", yaml.as_bytes()).expect("parses");
        assert_eq!(deployment.id, "00000000-0000-0000-0000-0000000000ff");
    }

    #[test]
    fn accepts_the_gateway_shape_only_without_api_version_and_kind() {
        let gateway = DEPLOYMENT
            .replacen("apiVersion: application.margo.org/v1alpha1\n", "", 1)
            .replacen("kind: ApplicationDeployment\n", "", 1)
            .replacen("spec:\n", "spec:\n  applicationId: gateway-app\n", 1);
        let deployment = parse_deployment("g.yaml", gateway.as_bytes()).expect("parses");
        assert_eq!(deployment.application_id.as_deref(), Some("gateway-app"));

        assert_eq!(
            rejected_field("apiVersion: application.margo.org/v1alpha1\n", ""),
            "apiVersion"
        );
        assert_eq!(rejected_field("kind: ApplicationDeployment\n", ""), "kind");
    }

    #[test]
    fn rejects_documents_naming_the_field_at_fault() {
        let components = "spec.deploymentProfile.components";
        let cases: &[(&str, &str, &str)] = &[
            ("kind: ApplicationDeployment", "kind: Deployment", "kind"),
            ("v1alpha1", "v2", "apiVersion"),
            ("id: a3e2f5dc-912e-494f-8395-52cf3769bc06", "", "id"),
            (
                "id: a3e2f5dc-912e-494f-8395-52cf3769bc06",
                "id: web-1",
                "id",
            ),
            ("id: a3e2f5dc-912e-494f-8395-52cf3769bc06", "id: 7", "id"),
            ("demo-app", "Demo_App", "metadata.annotations.applicationId"),
            ("metadata:\n", "metadata: 3\nx:\n", "metadata"),
            ("spec:", "spec: 1\nx:", "spec"),
            ("type: compose", "x: compose", "spec.deploymentProfile.type"),
            (
                "type: compose",
                "type: [compose]",
                "spec.deploymentProfile.type",
            ),
            ("    components:", "    x:", components),
            ("- name: web", "- x: web", &format!("{components}[0].name")),
            (
                "- name: web",
                "- name: db",
                &format!("{components}[1].name"),
            ),
            (
                "- name: web",
                "- name: ''",
                &format!("{components}[0].name"),
            ),
            (
                "packageLocation: apps/web/compose.yaml",
                "keyLocation2: x",
                &format!("{components}[0].properties.packageLocation"),
            ),
            (
                "packageLocation: apps/web/compose.yaml",
                "packageLocation: a\n          repository: oci://b",
                &format!("{components}[0].properties.repository"),
            ),
            (
                "packageLocation: apps/web/compose.yaml",
                "packageLocation: {a: b}",
                &format!("{components}[0].properties.packageLocation"),
            ),
            (
                "wait: false",
                "wait: maybe",
                &format!("{components}[1].properties.wait"),
            ),
            (
                "8m30s",
                "8 minutes",
                &format!("{components}[1].properties.timeout"),
            ),
            (
                "8m30s",
                "510",
                &format!("{components}[1].properties.timeout"),
            ),
            (
                "value: hello",
                "value: {a: b}",
                "spec.parameters.greeting.value",
            ),
            (
                "value: hello",
                "value: [a, [b]]",
                "spec.parameters.greeting.value[1]",
            ),
            (
                "value: hello",
                "values: hello",
                "spec.parameters.greeting.value",
            ),
            (
                "      targets:",
                "      target:",
                "spec.parameters.greeting.targets",
            ),
            (
                "- pointer: ENV.GREETING",
                "- pointer: ''",
                "spec.parameters.greeting.targets[0].pointer",
            ),
            (
                "components: [web, db]",
                "components: [web, cache]",
                "spec.parameters.greeting.targets[0].components[1]",
            ),
            (
                "components: [web, db]",
                "components: []",
                "spec.parameters.greeting.targets[0].components",
            ),
        ];
        for (from, to, field) in cases {
            assert_eq!(&rejected_field(from, to), field, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn reads_wait_and_timeout() {
        let wait_cases = [
            ("true", true),
            ("false", false),
            ("\"true\"", true),
            ("\"false\"", false),
            ("'FALSE'", false),
        ];
        for (written, wait) in wait_cases {
            let d = parsed("wait: false", &format!("wait: {written}"));
            assert_eq!(d.components[1].wait, wait, "wait: {written}");
        }
        assert!(parsed("          wait: false\n", "").components[1].wait);

        let timeout_cases = [
            ("8m30s", Some(510)),
            ("5m0s", Some(300)),
            ("90s", Some(90)),
            ("2m", Some(120)),
            ("0s", Some(0)),
            ("1h", None),
            ("m30s", None),
            ("30", None),
            ("1m30", None),
            ("-1s", None),
            ("1m2s3s", None),
            ("", None),
        ];
        for (written, seconds) in timeout_cases {
            assert_eq!(
                parse_timeout(written),
                seconds.map(Duration::from_secs),
                "{written:?}"
            );
        }
    }

    #[test]
    fn renders_parameter_values_as_text() {
        let cases = [
            ("hello", "hello"),
            ("\"4\"", "4"),
            ("4", "4"),
            ("1.5", "1.5"),
            ("true", "true"),
            ("''", ""),
            ("[a, 2, false]", "a,2,false"),
            ("[]", ""),
        ];
        for (written, text) in cases {
            let d = parsed("value: hello", &format!("value: {written}"));
            assert_eq!(d.parameters[0].value, text, "value: {written}");
        }
    }

    #[test]
    fn variable_strips_only_a_leading_env_prefix() {
        for (pointer, variable) in [
            ("ENV.ADMIN_NAME", "ADMIN_NAME"),
            ("ADMIN_NAME", "ADMIN_NAME"),
            ("settings.ENV.X", "settings.ENV.X"),
            ("env.X", "env.X"),
        ] {
            let target = Target {
                pointer: pointer.into(),
                components: vec![],
            };
            assert_eq!(target.variable(), variable);
        }
    }

    #[test]
    fn malformed_yaml_names_line_and_column() {
        let unclosed = DEPLOYMENT.replacen("  name: demo", "  name: [demo", 1);
        // serde_yaml_ng places a duplicate key at the start of its mapping.
        let duplicate_key = DEPLOYMENT.replacen(
            "          keyLocation:",
            "          packageLocation: again\n          keyLocation:",
            1,
        );
        for (broken, position) in [
            (unclosed, "line 6 column 14"),
            (duplicate_key, "line 15 column 11"),
        ] {
            let Err(Error::Document { field, message, .. }) =
                parse_deployment("t.yaml", broken.as_bytes())
            else {
                panic!("malformed YAML was accepted");
            };
            assert_eq!(field, "document");
            assert!(message.contains(position), "{message}");
        }

        for (yaml, what) in [
            ("", "nothing"),
            ("- a", "a list"),
            ("just text", "a string"),
        ] {
            let Err(Error::Document { field, message, .. }) =
                parse_deployment("t.yaml", yaml.as_bytes())
            else {
                panic!("{yaml:?} was accepted");
            };
            assert_eq!(field, "document");
            assert!(message.contains(what), "{message}");
        }
    }

    #[test]
    fn peeks_the_id_of_invalid_documents() {
        let id = Some("a3e2f5dc-912e-494f-8395-52cf3769bc06".to_owned());
        assert_eq!(peek_deployment_id(DEPLOYMENT.as_bytes()), id);
        let wrong_kind = DEPLOYMENT.replacen("kind: ApplicationDeployment", "kind: X", 1);
        assert_eq!(peek_deployment_id(wrong_kind.as_bytes()), id);
        let broken = DEPLOYMENT.replacen("  name: demo", "  name: [demo", 1);
        assert_eq!(peek_deployment_id(broken.as_bytes()), id);
        let quoted = "id: \"app-1\" # comment\nspec: [";
        assert_eq!(
            peek_deployment_id(quoted.as_bytes()),
            Some("app-1".to_owned())
        );
        let annotated = "metadata:\n  annotations:\n    id: app-2\n";
        assert_eq!(
            peek_deployment_id(annotated.as_bytes()),
            Some("app-2".to_owned())
        );
        for unusable in [
            "id: ../../etc",
            "id: a/b",
            "id: .hidden",
            "id: ''",
            "id: 12",
            "kind: X",
            "",
        ] {
            assert_eq!(peek_deployment_id(unusable.as_bytes()), None, "{unusable}");
        }
    }

    /// Why each invalid example is invalid: the field its error must name.
    const INVALID_BECAUSE: [(&str, &str); 9] = [
        (
            "data-model/resources/examples/invalid/ApplicationDeployment-001.yaml",
            "kind",
        ),
        (
            "data-model/resources/examples/invalid/ApplicationDeployment-002.yaml",
            "metadata.annotations.applicationId",
        ),
        (
            "data-model/resources/examples/invalid/ApplicationDeployment-003.yaml",
            "metadata.annotations.applicationId",
        ),
        (
            "data-model/resources/examples/invalid/ApplicationDeployment-004.yaml",
            "id",
        ),
        (
            "model/examples/invalid/ApplicationDeployment-003.yaml",
            "metadata.annotations.applicationId",
        ),
        (
            "margo-management-interface/resources/examples/invalid/DesiredState-001.yaml",
            "kind",
        ),
        (
            "margo-management-interface/resources/examples/invalid/DesiredState-002.yaml",
            "metadata.annotations.applicationId",
        ),
        (
            "margo-management-interface/resources/examples/invalid/DesiredState-003.yaml",
            "metadata.annotations.applicationId",
        ),
        (
            "margo-management-interface/resources/examples/invalid/DesiredState-004.yaml",
            "id",
        ),
    ];

    fn files_under(dir: &Path, found: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                files_under(&path, found);
            } else {
                found.push(path);
            }
        }
    }

    /// The ApplicationDeployment examples: `ApplicationDeployment*` and `DesiredState*` YAML
    /// files (the `DesiredStateManifest*.json` files are the rc.3 manifest listing deployments,
    /// another document) and the rc.2 `gateway-*` deployments.
    fn is_deployment_example(file: &Path) -> bool {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        name.ends_with(".yaml")
            && ["ApplicationDeployment", "DesiredState", "gateway-"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
    }

    #[test]
    fn margo_examples_parse_or_are_rejected_as_their_folder_says() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/margo-examples");
        let mut files = Vec::new();
        files_under(&root, &mut files);
        files.retain(|f| is_deployment_example(f));
        files.sort();
        let (mut valid, mut invalid) = (0, 0);
        for file in &files {
            let shown = file.display().to_string();
            let yaml = std::fs::read(file).unwrap_or_else(|e| panic!("{shown}: {e}"));
            let folder = file
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str());
            match (folder, parse_deployment(&shown, &yaml)) {
                (Some("valid"), Ok(deployment)) => {
                    valid += 1;
                    assert!(is_uuid(&deployment.id), "{shown}");
                    assert_eq!(peek_deployment_id(&yaml).as_ref(), Some(&deployment.id));
                }
                (Some("valid"), Err(e)) => panic!("valid example rejected: {e}"),
                (Some("invalid"), Ok(_)) => panic!("invalid example accepted: {shown}"),
                (Some("invalid"), Err(Error::Document { field, message, .. })) => {
                    invalid += 1;
                    let expected = INVALID_BECAUSE
                        .iter()
                        .find(|(suffix, _)| shown.ends_with(suffix))
                        .unwrap_or_else(|| panic!("no reason recorded for {shown}"))
                        .1;
                    assert_eq!(field, expected, "{shown}: {message}");
                }
                (folder, result) => panic!("{shown}: unexpected {folder:?} / {result:?}"),
            }
        }
        assert_eq!(invalid, INVALID_BECAUSE.len(), "invalid examples checked");
        assert!(
            valid >= 7,
            "only {valid} valid examples under {}",
            root.display()
        );
    }
}
