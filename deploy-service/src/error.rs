/// Everything that can fail in the deployment service.
///
/// Each variant names the failed operation and what it was about, because the message ends up
/// in the deployment status that the WOS and the device owner read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An ApplicationDeployment document is invalid.
    #[error(transparent)]
    Document(#[from] woa_common::Error),
    /// The deployment asks for a profile this device does not run.
    #[error("deployment profile {0} is not supported on this device")]
    UnsupportedProfile(String),
    /// A parameter names a component the deployment does not have.
    #[error("parameter {parameter}: targets unknown component {component}")]
    ParameterTarget {
        /// The parameter's name.
        parameter: String,
        /// The component it names.
        component: String,
    },
    /// A component's package could not be fetched or unpacked.
    #[error("package {location}: {message}")]
    Package {
        /// The package location as written in the deployment.
        location: String,
        /// What went wrong.
        message: String,
    },
    /// A compose file is invalid or uses what this device does not support.
    #[error("{file}: {message}")]
    Compose {
        /// The compose file (package-relative path).
        file: String,
        /// What is wrong, naming the key (e.g. `services.web.privileged`).
        message: String,
    },
    /// A compose file asks for what the device owner's policy does not allow.
    #[error("{file}: {message}")]
    Policy {
        /// The compose file (package-relative path).
        file: String,
        /// What was refused, naming the key and the setting that would allow it.
        message: String,
    },
    /// An image could not be pulled.
    #[error("pulling image {image}: {message}")]
    ImagePull {
        /// The image reference.
        image: String,
        /// The engine's reason.
        message: String,
    },
    /// The container engine refused or failed an operation.
    #[error("{operation}: {message}")]
    Runtime {
        /// What was attempted, e.g. `creating container web`.
        operation: String,
        /// The engine's reason.
        message: String,
    },
    /// A component did not become ready.
    #[error("component {component}: {message}")]
    NotReady {
        /// The component.
        component: String,
        /// Why, e.g. the health check kept failing.
        message: String,
    },
    /// Too little free disk space to pull a release's images.
    #[error(
        "{path} has {} MiB free, below the floor of {} MiB (rollout.min_free_disk); not pulling {images}",
        free >> 20,
        floor >> 20
    )]
    DiskSpace {
        /// The filesystem checked.
        path: String,
        /// Free bytes.
        free: u64,
        /// The configured floor in bytes.
        floor: u64,
        /// The images that were to be pulled.
        images: String,
    },
    /// An operator request names a deployment the service does not hold.
    #[error("no deployment {0} in the desired state")]
    UnknownDeployment(String),
    /// An operator request does not fit where the deployment's rollout stands.
    #[error("deployment {deployment} {message}")]
    Rollout {
        /// The deployment.
        deployment: String,
        /// Why, e.g. "has no release awaiting approval".
        message: String,
    },
    /// A file the service keeps or reads (desired state, rollout records, packages, secrets,
    /// keys) could not be used.
    #[error("{action}: {source}")]
    File {
        /// What was attempted, e.g. `storing the rollout state`.
        action: String,
        /// Why.
        #[source]
        source: woa_common::Error,
    },
    /// The service's configuration does not fit together.
    #[error("{setting}: {message}")]
    Config {
        /// The setting, as written in the configuration file.
        setting: String,
        /// What is wrong with it.
        message: String,
    },
    /// TLS material could not be loaded or does not fit together.
    #[error("{what}: {source}")]
    Tls {
        /// The file or setting, e.g. `packages.ca`.
        what: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// Listening, serving, or reaching the service failed.
    #[error("{action}: {source}")]
    Service {
        /// What was attempted, e.g. `binding 127.0.0.1:50051`.
        action: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The deployment service refused an operator's request; its answer.
    #[error("{0}")]
    Refused(String),
}

/// Any error, as a cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error codes woa-deploy reports in Margo status, in one place.
pub mod code {
    /// An ApplicationDeployment document is invalid.
    pub const INVALID_DOCUMENT: &str = "ERR_INVALID_DOCUMENT";
    /// The deployment profile is not run on this device.
    pub const UNSUPPORTED_PROFILE: &str = "ERR_UNSUPPORTED_PROFILE";
    /// A parameter targets an unknown component.
    pub const INVALID_PARAMETER: &str = "ERR_INVALID_PARAMETER";
    /// A package could not be fetched or unpacked.
    pub const PACKAGE: &str = "ERR_PACKAGE";
    /// A compose file is invalid or unsupported.
    pub const INVALID_COMPOSE: &str = "ERR_INVALID_COMPOSE";
    /// The device owner's policy refuses what a compose file asks for.
    pub const POLICY: &str = "ERR_POLICY";
    /// An image could not be pulled.
    pub const IMAGE_PULL: &str = "ERR_IMAGE_PULL";
    /// The container engine failed an operation.
    pub const RUNTIME: &str = "ERR_RUNTIME";
    /// A component did not become ready.
    pub const NOT_READY: &str = "ERR_NOT_READY";
    /// A container's health check fails.
    pub const UNHEALTHY: &str = "ERR_UNHEALTHY";
    /// A container exited with an error or keeps restarting.
    pub const CONTAINER_EXITED: &str = "ERR_CONTAINER_EXITED";
    /// Too little free disk space to pull images.
    pub const DISK_SPACE: &str = "ERR_DISK_SPACE";
    /// An operator request names no desired deployment.
    pub const UNKNOWN_DEPLOYMENT: &str = "ERR_UNKNOWN_DEPLOYMENT";
    /// An operator request does not fit the rollout.
    pub const ROLLOUT: &str = "ERR_ROLLOUT";
    /// A release failed and was rolled back, or was rolled back locally.
    pub const ROLLED_BACK: &str = "ERR_ROLLED_BACK";
    /// A release was rejected locally.
    pub const REJECTED: &str = "ERR_REJECTED";
    /// The service's own configuration or state is unusable.
    pub const INTERNAL: &str = "ERR_INTERNAL";
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::File`]: `action` on a file failed.
    pub(crate) fn file(action: impl Into<String>, source: woa_common::Error) -> Self {
        Error::File {
            action: action.into(),
            source,
        }
    }

    /// A [`Error::Service`]: `action` failed.
    pub(crate) fn service(action: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Service {
            action: action.into(),
            source: source.into(),
        }
    }

    /// A [`Error::Tls`] about `what`.
    pub(crate) fn tls(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Tls {
            what: what.into(),
            source: source.into(),
        }
    }

    /// The stable error code reported in Margo status.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Document(_) => code::INVALID_DOCUMENT,
            Error::UnsupportedProfile(_) => code::UNSUPPORTED_PROFILE,
            Error::ParameterTarget { .. } => code::INVALID_PARAMETER,
            Error::Package { .. } => code::PACKAGE,
            Error::Compose { .. } => code::INVALID_COMPOSE,
            Error::Policy { .. } => code::POLICY,
            Error::ImagePull { .. } => code::IMAGE_PULL,
            Error::Runtime { .. } => code::RUNTIME,
            Error::NotReady { .. } => code::NOT_READY,
            Error::DiskSpace { .. } => code::DISK_SPACE,
            Error::UnknownDeployment(_) => code::UNKNOWN_DEPLOYMENT,
            Error::Rollout { .. } => code::ROLLOUT,
            Error::File { .. }
            | Error::Config { .. }
            | Error::Tls { .. }
            | Error::Service { .. }
            | Error::Refused(_) => code::INTERNAL,
        }
    }

    /// What the error is about (file, field, image, component), for the status `source`.
    pub fn source_ref(&self) -> String {
        match self {
            Error::Document(woa_common::Error::Document { path, field, .. }) => {
                format!("{path}#{field}")
            }
            Error::Document(_) | Error::File { .. } | Error::Service { .. } | Error::Refused(_) => {
                String::new()
            }
            Error::Config { setting, .. } => setting.clone(),
            Error::Tls { what, .. } => what.clone(),
            Error::UnsupportedProfile(_) => "spec.deploymentProfile.type".into(),
            Error::ParameterTarget { parameter, .. } => format!("spec.parameters.{parameter}"),
            Error::Package { location, .. } => location.clone(),
            Error::Compose { file, .. } | Error::Policy { file, .. } => file.clone(),
            Error::ImagePull { image, .. } => image.clone(),
            Error::Runtime { operation, .. } => operation.clone(),
            Error::NotReady { component, .. } => component.clone(),
            Error::DiskSpace { path, .. } => path.clone(),
            Error::UnknownDeployment(deployment) | Error::Rollout { deployment, .. } => {
                deployment.clone()
            }
        }
    }
}
