//! Workflow definitions: the trait the `#[workflow]` macro implements and the registry it fills.

use crate::error::Error;
use crate::graph::{Drawing, Node};
use crate::schema::{Described, TypeSchema};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// Implemented by the marker type that `#[workflow]` generates for each workflow function
/// (`fn checkout` → `Checkout`). It ties the function's inputs and output to
/// [`Runtime::start`](crate::Runtime::start) so the compiler checks them.
pub trait Workflow: Send + Sync + 'static {
    /// The function's argument (one argument), a tuple of them (several), or `()`.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// The function's return type.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Registered name (the function name unless `name = "…"` is given).
    const NAME: &'static str;
    /// Hash of the function body: changes whenever the code does.
    const VERSION: &'static str;
    /// Runs the body with `input`.
    fn run(input: Self::Input) -> BoxFuture<'static, Self::Output>;
    /// Whether `output` counts as success (`Ok` for `Result` outputs; always for the others).
    fn succeeded(output: &Self::Output) -> bool;
}

/// What a type-erased run produces: the output as JSON and whether it counts as success.
pub type ErasedOutput = Result<(String, bool), String>;

/// A workflow as the runtime sees it, registered through `inventory`.
pub struct WorkflowDef {
    /// Registered name.
    pub name: &'static str,
    /// Code version.
    pub version: &'static str,
    /// Deserializes the input and returns the running body, or says why the input is refused.
    pub start: fn(&str) -> Result<BoxFuture<'static, ErasedOutput>, String>,
    /// Checks that a JSON input fits the input type.
    pub check_input: fn(&str) -> Result<(), String>,
    /// The body's static shape, extracted by `#[workflow]` (see [`graph`](crate::graph)).
    pub shape: &'static Node,
    /// The Rust type of the input (a tuple for several arguments).
    pub input_type: fn() -> &'static str,
    /// The Rust type of the output.
    pub output_type: fn() -> &'static str,
    /// The function's arguments: (name, type as written).
    pub args: &'static [(&'static str, &'static str)],
    /// The shapes of the input and output types, traced through their serde impls (see
    /// [`type_schema`]).
    pub schemas: fn() -> (serde_json::Value, serde_json::Value),
    /// The JSON Schemas of the arguments and the output, recorded by `#[workflow]` (`None` for
    /// a definition made without it); see [`WorkflowDef::input_schema`].
    pub types: Option<WorkflowTypes>,
    /// The signals the body waits for by a literal name (`orch::signal::<T>("name")`), found
    /// by `#[workflow]`; see [`WorkflowDef::signal_check`].
    pub signals: &'static [SignalDef],
}

/// The JSON Schemas of a workflow's arguments and output.
#[derive(Clone, Copy, Debug)]
pub struct WorkflowTypes {
    /// Each argument's type, in order.
    pub args: &'static [TypeSchema],
    /// The return type.
    pub output: TypeSchema,
}

/// A signal a workflow waits for, as `#[workflow]` found it in the body.
#[derive(Clone, Copy)]
pub struct SignalDef {
    /// The signal's name.
    pub name: &'static str,
    /// The payload type, when the macro could tell it (a turbofish or a `let` annotation).
    pub payload: Option<SignalType>,
}

/// The payload type of a [`SignalDef`].
#[derive(Clone, Copy)]
pub struct SignalType {
    /// The Rust type's full name.
    pub type_name: fn() -> &'static str,
    /// Checks that a JSON payload deserializes into the type; the error names the field.
    pub check: fn(&serde_json::Value) -> Result<(), String>,
    /// The type's shape, traced through its serde impl (see [`type_schema`]).
    pub schema: fn() -> serde_json::Value,
    /// The type's JSON Schema.
    pub json: TypeSchema,
}

impl SignalDef {
    /// A wait whose payload type is `T`.
    pub const fn typed<T: DeserializeOwned + Described>(name: &'static str) -> SignalDef {
        SignalDef {
            name,
            payload: Some(SignalType {
                type_name: std::any::type_name::<T>,
                check: check_value::<T>,
                schema: type_schema::<T>,
                json: TypeSchema::of::<T>(),
            }),
        }
    }

    /// A wait whose payload type the macro could not tell.
    pub const fn untyped(name: &'static str) -> SignalDef {
        SignalDef {
            name,
            payload: None,
        }
    }
}

impl std::fmt::Debug for SignalDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalDef")
            .field("name", &self.name)
            .field("type", &self.payload.map(|p| (p.type_name)()))
            .finish()
    }
}

/// What sending a signal named so to a workflow can check.
#[derive(Clone, Copy, Debug)]
pub enum SignalCheck {
    /// Every wait for the name takes this type: a payload that does not fit is refused.
    Typed(SignalType),
    /// The name is waited for with several types, or with one the macro could not tell: the
    /// payload is accepted, and one that does not fit is journaled on the instance when the
    /// workflow receives it.
    Unchecked,
    /// The body waits for no signal of that name by a literal name (it may compute names at
    /// run time): the signal is stored and kept until something waits for it.
    Undeclared,
}

impl std::fmt::Debug for SignalType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str((self.type_name)())
    }
}

impl WorkflowDef {
    /// The definition of `W`.
    pub const fn of<W: Workflow>() -> WorkflowDef {
        WorkflowDef {
            name: W::NAME,
            version: W::VERSION,
            start: start_erased::<W>,
            check_input: check_input::<W>,
            shape: &Node::EMPTY,
            input_type: std::any::type_name::<W::Input>,
            output_type: std::any::type_name::<W::Output>,
            schemas: schemas::<W>,
            types: None,
            args: &[],
            signals: &[],
        }
    }

    /// The same definition with the signals its body waits for (the macro's output uses this).
    pub const fn with_signals(mut self, signals: &'static [SignalDef]) -> WorkflowDef {
        self.signals = signals;
        self
    }

    /// What a signal named `name` sent to an instance of this workflow can be checked against.
    pub fn signal_check(&self, name: &str) -> SignalCheck {
        let mut waits = self.signals.iter().filter(|s| s.name == name);
        let Some(first) = waits.next() else {
            return SignalCheck::Undeclared;
        };
        match first.payload {
            Some(t)
                if waits.all(|w| {
                    w.payload
                        .is_some_and(|p| (p.type_name)() == (t.type_name)())
                }) =>
            {
                SignalCheck::Typed(t)
            }
            _ => SignalCheck::Unchecked,
        }
    }

    /// The same definition with the JSON Schemas of its arguments and output (the macro's output
    /// uses this).
    pub const fn with_types(mut self, args: &'static [TypeSchema], output: TypeSchema) -> Self {
        self.types = Some(WorkflowTypes { args, output });
        self
    }

    /// The input's JSON Schema (self-contained, 2020-12): the one argument's, `null` for none,
    /// an array with one item per argument for several.
    pub fn input_schema(&self) -> Option<serde_json::Value> {
        let types = self.types?;
        Some(match types.args {
            [one] => one.document(),
            args => crate::schema::document(|g| crate::schema::arguments_tuple(g, args)),
        })
    }

    /// The output's JSON Schema (self-contained, 2020-12).
    pub fn output_schema(&self) -> Option<serde_json::Value> {
        Some(self.types?.output.document())
    }

    /// The same definition with the body's shape (the macro's output uses this).
    pub const fn with_shape(mut self, shape: &'static Node) -> WorkflowDef {
        self.shape = shape;
        self
    }

    /// The same definition with its arguments' names and types (the macro's output uses this).
    pub const fn with_args(mut self, args: &'static [(&'static str, &'static str)]) -> WorkflowDef {
        self.args = args;
        self
    }

    /// A drawing of the shape, titled with the workflow's name.
    pub fn drawing(&self) -> Drawing<'static> {
        Drawing::new(self.shape).title(self.name)
    }
}

impl std::fmt::Debug for WorkflowDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowDef")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish()
    }
}

inventory::collect!(WorkflowDef);

fn schemas<W: Workflow>() -> (serde_json::Value, serde_json::Value) {
    (type_schema::<W::Input>(), type_schema::<W::Output>())
}

/// The shape of `T` as its serde `Deserialize` impl sees it, traced with `serde-reflection`:
/// `{"root": <format>, "types": {name: <container format>}}`, where a format is `"U32"`,
/// `"STR"`, `{"SEQ": …}`, `{"OPTION": …}`, `{"TYPENAME": "Order"}` and so on, and a container
/// is `{"STRUCT": [{"name": format}, …]}` or `{"ENUM": {…}}`. Types whose `Deserialize` impl
/// cannot be traced (e.g. untagged enums) give `{"error": "…"}`.
pub fn type_schema<T: DeserializeOwned>() -> serde_json::Value {
    use serde_reflection::{Tracer, TracerConfig};
    let mut tracer = Tracer::new(TracerConfig::default());
    // Enums nested below an enum root (`Result<_, MyError>`) are seen one variant at a time;
    // the unchecked registry keeps the variants traced so far instead of failing.
    let traced = tracer
        .trace_simple_type::<T>()
        .map(|(root, _)| (root, tracer.registry_unchecked()));
    match traced {
        Ok((root, types)) => serde_json::json!({
            "root": serde_json::to_value(&root).unwrap_or_default(),
            "types": serde_json::to_value(&types).unwrap_or_default(),
        }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}

/// Checks that `value` deserializes into `T`, naming the path of the offending field.
pub fn check_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<(), String> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(_) => Ok(()),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                Err(inner.to_string())
            } else {
                Err(format!("at `{path}`: {inner}"))
            }
        }
    }
}

/// Names the path of the offending field (`items[0].qty: invalid type …`).
fn check_input<W: Workflow>(json: &str) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(json);
    let checked: Result<W::Input, _> = serde_path_to_error::deserialize(&mut de);
    match checked {
        Ok(_) => de.end().map_err(|e| e.to_string()),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                Err(inner.to_string())
            } else {
                Err(format!("at `{path}`: {inner}"))
            }
        }
    }
}

fn start_erased<W: Workflow>(json: &str) -> Result<BoxFuture<'static, ErasedOutput>, String> {
    let input: W::Input = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(Box::pin(async move {
        let output = W::run(input).await;
        let ok = W::succeeded(&output);
        serde_json::to_string(&output)
            .map(|json| (json, ok))
            .map_err(|e| format!("the workflow's output could not be serialized: {e}"))
    }))
}

/// Every workflow compiled into this binary, by name.
#[derive(Clone, Debug)]
pub struct Registry {
    defs: HashMap<&'static str, &'static WorkflowDef>,
}

impl Registry {
    /// Collects the definitions registered by `#[workflow]`.
    pub fn collect() -> Result<Registry, Error> {
        let mut defs = HashMap::new();
        for def in inventory::iter::<WorkflowDef> {
            if defs.insert(def.name, def).is_some() {
                return Err(Error::DuplicateWorkflow {
                    name: def.name.to_string(),
                });
            }
        }
        Ok(Registry { defs })
    }

    /// The definition named `name`.
    pub fn get(&self, name: &str) -> Result<&'static WorkflowDef, Error> {
        self.defs
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownWorkflow {
                name: name.to_string(),
                known: self.names().join(", "),
            })
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.defs.keys().copied().collect();
        names.sort_unstable();
        names
    }
}
