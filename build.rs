//! Compiles `proto/gameserver.proto` with protox (pure Rust), so no `protoc` binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/gameserver.proto");
    let descriptors = protox::compile(["gameserver.proto"], ["proto"])?;
    // Kept for the contract test, which checks every id, field number and type against
    // docs/PROTOCOL.md.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("gameserver.descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new()
        .bytes([".gameserver.v1.CEcho.data", ".gameserver.v1.SEcho.data"])
        .compile_fds(descriptors)?;
    Ok(())
}
