//! The `woa.deploy.v1` contract: generated message types, client and server.
//!
//! See `proto/README.md` for what each call guarantees.
#![allow(missing_docs, clippy::all)]

/// `woa.deploy.v1`: the deployment service contract.
pub mod v1 {
    tonic::include_proto!("woa.deploy.v1");

    /// Encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("woa_deploy_v1_descriptor");
}
