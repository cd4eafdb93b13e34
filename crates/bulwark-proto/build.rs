fn main() {
    println!("cargo:rerun-if-changed=proto/bulwark.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/bulwark.proto"], &["proto"])
        .expect("compiling proto/bulwark.proto (needs protoc: apt install protobuf-compiler)");
}
