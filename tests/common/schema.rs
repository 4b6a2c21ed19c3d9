//! Validates records against the published JSON Schema (schemas/record.v1.json).

use std::sync::OnceLock;

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let text = std::fs::read_to_string(super::project_root().join("schemas/record.v1.json")).unwrap();
        let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
        jsonschema::options().should_validate_formats(true).build(&schema).expect("schema compiles")
    })
}

/// Panics with every violation if `record` does not follow the schema.
pub fn assert_valid(record: &serde_json::Value) {
    let errors: Vec<String> =
        validator().iter_errors(record).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "record violates schemas/record.v1.json:\n{}\n{record}", errors.join("\n"));
}
