//! The top-level README shows the reference's usage example; the example
//! itself runs as this crate's doctest (`reference/README.md` is the crate
//! doc). This keeps the two copies identical.

use std::path::Path;

/// The lines of the first ```rust block of `text`, without rustdoc's hidden
/// (`# `) lines.
fn rust_block(text: &str) -> Vec<&str> {
    text.split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a ```rust block")
        .lines()
        .filter(|l| !l.starts_with("# "))
        .collect()
}

#[test]
fn the_workspace_readme_shows_the_doctested_example() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let crate_doc = std::fs::read_to_string(here.join("README.md")).unwrap();
    let workspace = std::fs::read_to_string(here.join("../README.md")).unwrap();
    let want = rust_block(&crate_doc);
    assert!(want.len() > 5, "the crate doc's example is missing");
    assert_eq!(
        rust_block(&workspace),
        want,
        "README.md's example differs from reference/README.md's"
    );
}
