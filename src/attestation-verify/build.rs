//! Refuses to build if the embedded AWS root is not the certificate AWS documents:
//! the pin is checked here, at compile time, and again when the root is loaded.

use sha2::{Digest, Sha256};

const ROOT_PATH: &str = "roots/aws_nitro_root_g1.der";
const PINNED_SHA256: &str = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";

fn main() {
    println!("cargo:rerun-if-changed={ROOT_PATH}");
    let der = match std::fs::read(ROOT_PATH) {
        Ok(der) => der,
        Err(e) => panic!("cannot read {ROOT_PATH}: {e}"),
    };
    let got = hex::encode(Sha256::digest(&der));
    assert_eq!(
        got, PINNED_SHA256,
        "{ROOT_PATH} is not the pinned AWS Nitro Enclaves root G1"
    );
}
