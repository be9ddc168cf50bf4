//! JSON Schema for what crosses orch's boundary: workflow inputs and outputs, step arguments and
//! outputs, signal payloads. `#[workflow]` and `#[step]` require each of these types to implement
//! [`JsonSchema`] (derive it with `#[derive(JsonSchema)]`, in the prelude)
//! and record a [`TypeSchema`] for it, so the HTTP API's definitions and its OpenAPI document
//! describe them and a client or worker generated from the document gets real models.
//!
//! Schemas follow JSON Schema 2020-12 and schemars' deserialize contract: they describe what the
//! type's `Deserialize` accepts (the input orch accepts, the output a worker may send).

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

/// A type with a JSON Schema; exists for its error message, which names the fix.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no JSON Schema: orch describes workflow inputs and outputs, step \
               arguments and outputs and signal payloads with JSON Schema (the API's definitions \
               and OpenAPI document), so they must implement `JsonSchema`",
    label = "described in the API",
    note = "add `#[derive(JsonSchema)]` to the type beside `Serialize` and `Deserialize` (the \
            derive is in `orch_runtime::prelude`; without the prelude, \
            `use orch_runtime::{{JsonSchema, schemars}};`)",
    note = "for a field whose type has no schema, `#[schemars(with = \"T\")]` describes it as `T`"
)]
pub trait Described: JsonSchema {}
impl<T: JsonSchema + ?Sized> Described for T {}

/// The JSON Schema of one Rust type, as function pointers so it can live in a `static`
/// definition (made with [`TypeSchema::of`]).
#[derive(Clone, Copy)]
pub struct TypeSchema {
    name: fn() -> &'static str,
    sub: fn(&mut SchemaGenerator) -> Schema,
    root: fn(&mut SchemaGenerator) -> Schema,
}

impl TypeSchema {
    /// The schema of `T`.
    pub const fn of<T: Described + ?Sized>() -> TypeSchema {
        TypeSchema {
            name: std::any::type_name::<T>,
            sub: |g| g.subschema_for::<T>(),
            root: |g| g.root_schema_for::<T>(),
        }
    }

    /// The schema of `Result<T, E>` (`{"Ok": T}` or `{"Err": E}`); its bounds name `T` and `E`
    /// so a missing schema is reported on them.
    pub const fn result<T: Described, E: Described>() -> TypeSchema {
        TypeSchema::of::<Result<T, E>>()
    }

    /// The Rust type's full name.
    pub fn type_name(&self) -> &'static str {
        (self.name)()
    }

    /// The schema as part of a larger document: a `$ref` into `generator`'s definitions for a
    /// named type (whose schema the generator keeps), the schema itself for the others.
    pub fn subschema(&self, generator: &mut SchemaGenerator) -> Schema {
        (self.sub)(generator)
    }

    /// A self-contained JSON Schema 2020-12 document: every type it names is in its `$defs`.
    pub fn document(&self) -> Value {
        (self.root)(&mut generator()).to_value()
    }
}

impl std::fmt::Debug for TypeSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.type_name())
    }
}

/// A generator for self-contained JSON Schema 2020-12 documents (definitions under `$defs`).
pub fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

/// A self-contained document of the schema `build` makes with a fresh generator: the schema,
/// `$schema`, and the definitions it refers to under `$defs`.
pub fn document(build: impl FnOnce(&mut SchemaGenerator) -> Schema) -> Value {
    let mut g = generator();
    let mut doc = build(&mut g).to_value();
    let defs = g.take_definitions(true);
    if let Value::Object(m) = &mut doc {
        if let Some(meta) = g.settings().meta_schema.as_deref() {
            m.insert("$schema".into(), json!(meta));
        }
        if !defs.is_empty() {
            m.insert("$defs".into(), Value::Object(defs));
        }
    }
    doc
}

/// The schema of a workflow's input: its one argument's, `null` for none, and for several the
/// JSON array the input is (a tuple: one item per argument, in order).
pub fn arguments_tuple(generator: &mut SchemaGenerator, args: &[TypeSchema]) -> Schema {
    match args {
        [] => json_schema(json!({"type": "null"})),
        [one] => one.subschema(generator),
        several => {
            let items: Vec<Value> = several
                .iter()
                .map(|a| a.subschema(generator).to_value())
                .collect();
            let n = items.len();
            json_schema(json!({
                "type": "array",
                "prefixItems": items,
                "minItems": n,
                "maxItems": n,
            }))
        }
    }
}

/// The schema of a step's input as a worker receives it: one JSON object keyed by parameter
/// name, every parameter present (`null` for a `None`).
pub fn arguments_object(generator: &mut SchemaGenerator, args: &[(&str, TypeSchema)]) -> Schema {
    let mut properties = Map::new();
    for (name, ty) in args {
        properties.insert((*name).to_string(), ty.subschema(generator).to_value());
    }
    let required: Vec<&str> = args.iter().map(|(name, _)| *name).collect();
    json_schema(json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    }))
}

fn json_schema(v: Value) -> Schema {
    Schema::try_from(v).unwrap_or_default()
}

/// A `#[step]` function as `inventory` registers it: its name, arguments and output, for the
/// API's definitions (generic steps are not registered: their types are not known).
#[derive(Debug)]
pub struct StepDef {
    /// Registered name.
    pub name: &'static str,
    /// Each parameter's name and type.
    pub args: &'static [(&'static str, TypeSchema)],
    /// The return type.
    pub output: TypeSchema,
}

inventory::collect!(StepDef);

impl StepDef {
    /// The step's input as one JSON object keyed by parameter name (self-contained).
    pub fn input_schema(&self) -> Value {
        document(|g| arguments_object(g, self.args))
    }

    /// The step's output (self-contained).
    pub fn output_schema(&self) -> Value {
        self.output.document()
    }

    /// The step registered under `name`, when exactly one `#[step]` function has that name
    /// (several with one name, in different modules, are ambiguous and give `None`).
    pub fn named(name: &str) -> Option<&'static StepDef> {
        let mut found = inventory::iter::<StepDef>
            .into_iter()
            .filter(|s| s.name == name);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }
}
