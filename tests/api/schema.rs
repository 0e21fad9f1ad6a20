//! Generated artifacts stay in sync with the code they are generated from.

fn read(file: &str) -> String {
    std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn schema_graphql_matches_the_schema_in_the_code() {
    assert!(
        read("schema.graphql") == palisade::graphql::sdl(),
        "schema.graphql is stale: run `cargo run -- print-schema > schema.graphql`"
    );
}

#[test]
fn the_readme_reference_matches_the_config_docs() {
    use palisade::config::docs::{BEGIN_MARKER, END_MARKER, markdown};
    let readme = read("README.md");
    let start = readme
        .find(BEGIN_MARKER)
        .expect("README has the begin marker")
        + BEGIN_MARKER.len();
    let end = readme.find(END_MARKER).expect("README has the end marker");
    assert!(
        readme[start..end].trim() == markdown().trim(),
        "the README's hardening.yaml reference is stale: regenerate it with `cargo run -- config-docs`"
    );
}

#[test]
fn the_shipped_hardening_yaml_states_the_defaults() {
    let shipped = palisade::config::Config::load(std::path::Path::new(&format!(
        "{}/hardening.yaml",
        env!("CARGO_MANIFEST_DIR")
    )))
    .unwrap();
    let defaults = palisade::config::Config::default();
    assert_eq!(
        serde_json::to_value(&shipped).unwrap(),
        serde_json::to_value(&defaults).unwrap()
    );
}
