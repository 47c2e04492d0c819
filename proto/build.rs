//! Generates the gRPC code for both runtimes in one pass (madsim-tonic-build emits the real and
//! the simulated code; `tonic::include_proto!` picks one). protoc comes from the vendored crate so
//! a fresh machine needs no system package; `PROTOC` still wins when set.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => std::path::PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.bytes(["."]);
    tonic_build::configure().compile_protos_with_config(config, &["grid.proto"], &["."])?;
    println!("cargo:rerun-if-changed=grid.proto");
    Ok(())
}
