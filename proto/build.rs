//! Compiles the contract with protox (pure Rust), so protoc is never a prerequisite.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "woa/deploy/v1/deploy.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("woa_deploy_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
