//! The Margo data model: ApplicationDeployment documents read from the desired-state
//! repository, and the status and capabilities manifests the agent sends to the WOS.
//!
//! Input is read leniently (the spec moved fields between drafts), output is written strictly in
//! one shape.

mod capabilities;
mod deployment;
mod status;

pub use capabilities::{
    Cpu, DeviceCapabilitiesManifest, DeviceProperties, Interface, Peripheral, binary_size,
};
pub use deployment::{
    ApplicationDeployment, Component, Package, Parameter, Profile, Target, parse_deployment,
    peek_deployment_id,
};
pub use status::{
    ComponentStatus, DeploymentState, DeploymentStatus, DeploymentStatusManifest, StatusError,
};
