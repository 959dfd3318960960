//! Regenerates the committed conformance vectors from the reference: the
//! CLAE cases in `DIR`, the peer cases in `DIR/peers`.
//!
//! ```text
//! cargo run --release -p clae-conformance --bin gen-vectors -- [--seed S] [--out DIR]
//! ```
//! Defaults: seed 2020, `conformance/vectors`. Deterministic for a seed.

use clae_conformance::vectors::{generate, peers, save, NUM_CASES};
use std::path::PathBuf;
use std::process::ExitCode;

/// Seed of the committed vectors.
const DEFAULT_SEED: u64 = 2020;

fn main() -> ExitCode {
    let mut seed = DEFAULT_SEED;
    let mut out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/vectors"));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--seed", Some(v)) => match v.parse() {
                Ok(s) => seed = s,
                Err(_) => return fail(&format!("--seed expects an unsigned integer, got `{v}`")),
            },
            ("--out", Some(v)) => out = PathBuf::from(v),
            _ => {
                return fail(&format!(
                "unknown or incomplete argument `{a}`; usage: gen-vectors [--seed S] [--out DIR]"
            ))
            }
        }
    }
    if let Err(e) = std::fs::create_dir_all(&out) {
        return fail(&format!("cannot create {}: {e}", out.display()));
    }
    for i in 0..NUM_CASES {
        let v = match generate(i, seed) {
            Ok(v) => v,
            Err(e) => return fail(&format!("case {i}: {e}")),
        };
        if let Err(e) = save(&v, &out) {
            return fail(&e.to_string());
        }
        println!("wrote {}/{}.json", out.display(), v.name);
    }
    let peer_dir = out.join("peers");
    if let Err(e) = std::fs::create_dir_all(&peer_dir) {
        return fail(&format!("cannot create {}: {e}", peer_dir.display()));
    }
    for i in 0..peers::NUM_CASES {
        let v = match peers::generate(i, seed.wrapping_add(1000)) {
            Ok(v) => v,
            Err(e) => return fail(&format!("peer case {i}: {e}")),
        };
        if let Err(e) = peers::save(&v, &peer_dir) {
            return fail(&e.to_string());
        }
        println!("wrote {}/{}.json", peer_dir.display(), v.name);
    }
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("gen-vectors: {msg}");
    ExitCode::FAILURE
}
