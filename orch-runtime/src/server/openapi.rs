//! The served OpenAPI document: the API as `openapi.json` describes it, plus typed operations
//! for each workflow compiled into this binary (start one, read one, send it a typed signal)
//! whose bodies carry the workflow's JSON Schemas, so a generated client has real models
//! (`StartCheckoutRequest.input` is an `Order`) instead of `Any`.
//!
//! The workflows' named types become components under their Rust names (schemars' names:
//! `Order`, `Result_of_Receipt_or_CheckoutError`); one whose name the document already uses
//! gets a number (`Status2`).

use crate::schema::{TypeSchema, arguments_tuple};
use crate::workflow::{SignalCheck, WorkflowDef};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap};

const BASE: &str = include_str!("openapi.json");
const REFS: &str = "#/components/schemas/";

/// The document for a server running `defs`.
pub(crate) fn document(defs: &[&'static WorkflowDef]) -> Value {
    let mut doc: Value = match serde_json::from_str(BASE) {
        Ok(v) => v,
        // Checked by every test that reads the document.
        Err(e) => return json!({"error": format!("openapi.json does not parse: {e}")}),
    };
    let mut taken: BTreeSet<String> = doc["components"]["schemas"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut op_ids: BTreeSet<String> = doc["paths"]
        .as_object()
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(Value::as_object)
        .flat_map(|item| item.values())
        .filter_map(|op| op["operationId"].as_str().map(String::from))
        .collect();
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let base_ops = BaseOps::of(&doc);
    let mut components = Map::new();
    let mut paths = Map::new();
    let mut defs: Vec<_> = defs.iter().filter(|d| d.types.is_some()).collect();
    defs.sort_by_key(|d| d.name);
    for def in defs {
        let Some(types) = def.types else { continue };
        let pascal = pascal_case(def.name);
        let start_name = unique(&mut taken, format!("Start{pascal}Request"));
        let instance_name = unique(&mut taken, format!("{pascal}Instance"));
        let input = arguments_tuple(&mut g, types.args).to_value();
        let output = types.output.subschema(&mut g).to_value();
        components.insert(
            start_name.clone(),
            json!({
                "type": "object",
                "description": format!("Starts workflow `{}` (input type {}).", def.name,
                    (def.input_type)()),
                "required": ["input"],
                "additionalProperties": false,
                "properties": {
                    "input": input,
                    "id": {
                        "type": ["string", "null"],
                        "description": "Optional instance id; starting an existing id is idempotent."
                    }
                }
            }),
        );
        components.insert(
            instance_name.clone(),
            json!({
                "description": format!("An instance of workflow `{}` with its typed input and \
                    output (output type {}).", def.name, (def.output_type)()),
                "allOf": [
                    {"$ref": format!("{REFS}InstanceSummary")},
                    {
                        "type": "object",
                        "required": ["input", "output"],
                        "properties": {
                            "input": input,
                            "output": {
                                "description": "The return value; null while running or when \
                                    it ended without one.",
                                // anyOf: an output type that is itself nullable fits both.
                                "anyOf": [output, {"type": "null"}]
                            }
                        }
                    }
                ]
            }),
        );
        let base = format!("/api/v1/definitions/{}/instances", encode(def.name));
        paths.insert(
            base.clone(),
            json!({"post": base_ops.start(
                unique(&mut op_ids, format!("start{pascal}Instance")),
                def.name,
                &start_name,
            )}),
        );
        paths.insert(
            format!("{base}/{{id}}"),
            json!({"get": base_ops.get(
                unique(&mut op_ids, format!("get{pascal}Instance")),
                def.name,
                &instance_name,
            )}),
        );
        for (signal, payload) in typed_signals(def) {
            let schema = payload.subschema(&mut g).to_value();
            let op = unique(
                &mut op_ids,
                format!("signal{pascal}{}", pascal_case(signal)),
            );
            paths.insert(
                format!("{base}/{{id}}/signals/{}", encode(signal)),
                json!({"post": base_ops.signal(op, def.name, signal, schema)}),
            );
        }
    }
    // The workflows' own types, renamed where the document already uses the name.
    let generated = g.take_definitions(true);
    let mut renames = HashMap::new();
    for name in generated.keys() {
        if taken.contains(name) {
            let mut n = 2;
            while taken.contains(&format!("{name}{n}"))
                || generated.contains_key(&format!("{name}{n}"))
            {
                n += 1;
            }
            renames.insert(format!("{REFS}{name}"), format!("{REFS}{name}{n}"));
            taken.insert(format!("{name}{n}"));
        }
    }
    for (name, schema) in generated {
        let name = match renames.get(&format!("{REFS}{name}")) {
            Some(new) => new.trim_start_matches(REFS).to_string(),
            None => name,
        };
        components.insert(name, schema);
    }
    let mut added = json!({"components": components, "paths": paths});
    if !renames.is_empty() {
        rename_refs(&mut added, &renames);
    }
    if let (Some(schemas), Value::Object(c)) = (
        doc["components"]["schemas"].as_object_mut(),
        added["components"].take(),
    ) {
        schemas.extend(c);
    }
    if let (Some(doc_paths), Value::Object(p)) =
        (doc["paths"].as_object_mut(), added["paths"].take())
    {
        doc_paths.extend(p);
    }
    doc
}

/// Each signal name the workflow waits for with one payload type (those sends are checked).
fn typed_signals(def: &WorkflowDef) -> Vec<(&'static str, TypeSchema)> {
    let mut out: Vec<(&'static str, TypeSchema)> = Vec::new();
    for s in def.signals {
        if out.iter().any(|(n, _)| *n == s.name) {
            continue;
        }
        if let SignalCheck::Typed(t) = def.signal_check(s.name) {
            out.push((s.name, t.json));
        }
    }
    out
}

/// The static document's operations the typed ones copy their error responses from.
struct BaseOps {
    start_responses: Value,
    get_responses: Value,
    signal_responses: Value,
    id_param: Value,
}

impl BaseOps {
    fn of(doc: &Value) -> BaseOps {
        let paths = &doc["paths"];
        BaseOps {
            start_responses: paths["/api/v1/instances"]["post"]["responses"].clone(),
            get_responses: paths["/api/v1/instances/{id}"]["get"]["responses"].clone(),
            signal_responses: paths["/api/v1/instances/{id}/signal"]["post"]["responses"].clone(),
            id_param: paths["/api/v1/instances/{id}"]["get"]["parameters"][0].clone(),
        }
    }

    fn start(&self, op: String, workflow: &str, body: &str) -> Value {
        json!({
            "operationId": op,
            "summary": format!("Start an instance of `{workflow}` (idempotent by id)."),
            "description": format!("As POST /api/v1/instances with `workflow` = `{workflow}`."),
            "tags": ["workflows"],
            "requestBody": {
                "required": true,
                "content": {"application/json": {"schema": {"$ref": format!("{REFS}{body}")}}}
            },
            "responses": self.start_responses,
        })
    }

    fn get(&self, op: String, workflow: &str, view: &str) -> Value {
        let mut responses = self.get_responses.clone();
        responses["200"]["content"]["application/json"]["schema"] =
            json!({"$ref": format!("{REFS}{view}")});
        json!({
            "operationId": op,
            "summary": format!("One instance of `{workflow}`, with its typed input and output."),
            "description": "404 when the instance does not exist or is of another workflow.",
            "tags": ["workflows"],
            "parameters": [self.id_param],
            "responses": responses,
        })
    }

    fn signal(&self, op: String, workflow: &str, signal: &str, payload: Value) -> Value {
        json!({
            "operationId": op,
            "summary": format!("Send signal `{signal}` to an instance of `{workflow}`."),
            "description": "The body is the payload. As POST /api/v1/instances/{id}/signal; 404 \
                when the instance is of another workflow.",
            "tags": ["workflows"],
            "parameters": [self.id_param],
            "requestBody": {
                "required": true,
                "content": {"application/json": {"schema": payload}}
            },
            "responses": self.signal_responses,
        })
    }
}

/// `name`, or `name2`, `name3`… when it is taken; the result is taken.
fn unique(taken: &mut BTreeSet<String>, name: String) -> String {
    let mut candidate = name.clone();
    let mut n = 2;
    while taken.contains(&candidate) {
        candidate = format!("{name}{n}");
        n += 1;
    }
    taken.insert(candidate.clone());
    candidate
}

/// `place_order` → `PlaceOrder`, `send-email.v2` → `SendEmailV2`.
fn pascal_case(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// A path segment: unreserved characters as they are, the rest percent-encoded.
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn rename_refs(v: &mut Value, renames: &HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if k == "$ref"
                    && let Some(new) = v.as_str().and_then(|r| renames.get(r))
                {
                    *v = json!(new);
                } else {
                    rename_refs(v, renames);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_refs(v, renames)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_pascal_case_and_path_segments_are_encoded() {
        assert_eq!(pascal_case("place_order"), "PlaceOrder");
        assert_eq!(pascal_case("send-email.v2"), "SendEmailV2");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(encode("checkout"), "checkout");
    }
}
