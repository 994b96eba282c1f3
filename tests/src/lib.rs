//! Test kit for woa: starts the real parts (woa-deploy, a local OCI registry, test images on the
//! local Docker engine) and drives them through the same tools an operator uses (grpcurl, the
//! docker CLI), so integration tests prove behaviour the way a device owner would see it.
//!
//! Every helper talks to real processes; nothing here mocks the engine.

mod archive;
mod binaries;
mod bystander;
pub mod conformance;
mod deploy;
mod desired;
mod docker;
mod engine;
mod image;
mod pki;
mod registry;
mod sync;
mod throttle;
mod util;
pub mod wfm;
mod wfm_server;
pub mod wos;
mod wos_server;

pub use archive::tar_gz;
pub use binaries::woa_sync as woa_sync_binary;
pub use bystander::{Bystander, fails_alone, fails_alone_with, single_service};
pub use deploy::{Deploy, DeployOptions, Identity};
pub use desired::{AppDeployment, DesiredState};
pub use docker::{Cleanup, Container, answer, containers, networks, remove_container, wait_answer};
pub use engine::restart_engine;
pub use image::testapp_image;
pub use pki::Pki;
pub use registry::{Registry, RegistryLogin};
pub use sync::{Sync, SyncOptions};
pub use throttle::Throttle;
pub use util::{Outcome, base64, free_port, http_get, new_deployment_id, wait_until};
pub use wfm_server::{WfmServer, WfmServerOptions, spiffe_client};
pub use wos_server::{RepoAuthKind, WosServer, WosServerOptions};
