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
    /// The service's own configuration or state is unusable.
    #[error("{0}")]
    Setup(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable error code reported in Margo status.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Document(_) => "ERR_INVALID_DOCUMENT",
            Error::UnsupportedProfile(_) => "ERR_UNSUPPORTED_PROFILE",
            Error::ParameterTarget { .. } => "ERR_INVALID_PARAMETER",
            Error::Package { .. } => "ERR_PACKAGE",
            Error::Compose { .. } => "ERR_INVALID_COMPOSE",
            Error::Policy { .. } => "ERR_POLICY",
            Error::ImagePull { .. } => "ERR_IMAGE_PULL",
            Error::Runtime { .. } => "ERR_RUNTIME",
            Error::NotReady { .. } => "ERR_NOT_READY",
            Error::DiskSpace { .. } => "ERR_DISK_SPACE",
            Error::UnknownDeployment(_) => "ERR_UNKNOWN_DEPLOYMENT",
            Error::Rollout { .. } => "ERR_ROLLOUT",
            Error::Setup(_) => "ERR_INTERNAL",
        }
    }

    /// What the error is about (file, field, image, component), for the status `source`.
    pub fn source_ref(&self) -> String {
        match self {
            Error::Document(woa_common::Error::Document { path, field, .. }) => {
                format!("{path}#{field}")
            }
            Error::Document(_) | Error::Setup(_) => String::new(),
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
