//! What a called name refers to, as far as the macro can tell from the function alone.
//!
//! A macro sees only the tokens of the function it is on: `use tokio::time::sleep;` at the top
//! of the module is invisible, so a bare `sleep(d)` may be the durable `orch::sleep` or a plain
//! tokio timer. Both the replay checks and the process drawing read calls through this module
//! so they agree: `use` items *inside* the body are followed, a path whose module says what it
//! is (`orch::sleep`, `tokio::time::sleep`) is identified by it, and a bare call to a name that
//! is a replay hazard in some well-known crate is [`Meaning::Unknown`]: refused by the checks,
//! never drawn as a step.

use std::collections::BTreeMap;
use syn::visit::{self, Visit};
use syn::{Block, FnArg, Item, ItemFn, Pat, Path, UseTree};

/// Modules whose functions are orch's durable primitives (`orch::sleep`, `durable::sleep`,
/// `orch_runtime::sleep`).
pub const DURABLE_MODULES: &[&str] = &["orch", "durable", "orch_runtime"];

/// Names that are a replay hazard in a well-known crate (`tokio::time::sleep`,
/// `tokio::spawn`, `rand::random`, …) and that a bare call cannot be told apart by.
const HAZARDS: &[&str] = &[
    "sleep",
    "sleep_until",
    "spawn",
    "spawn_blocking",
    "spawn_local",
    "now",
    "random",
    "rng",
    "thread_rng",
    "new_v4",
    "now_v1",
    "now_v7",
    "idempotency_key",
];

/// The hazard names that `orch_runtime::orch` has too (a glob of it brings them in).
const ORCH_HAZARD_NAMES: &[&str] = &["sleep", "sleep_until", "now", "random", "idempotency_key"];

/// The `use` items of a function body, and the names it binds locally.
#[derive(Default)]
pub struct Scope {
    /// Imported name → the path it stands for.
    imports: BTreeMap<String, Vec<String>>,
    /// Modules imported with `*`.
    globs: Vec<Vec<String>>,
    /// Names bound by parameters, `let`, closures and patterns: a call of one is a local.
    locals: Vec<String>,
}

/// What a called path refers to.
#[derive(Debug, PartialEq)]
pub enum Meaning {
    /// A path the macro knows the module of (or one it has no reason to doubt): its segments,
    /// with any import from the body resolved.
    Known(Vec<String>),
    /// A bare call of a hazard name whose origin the macro cannot see (an import outside the
    /// function, or a glob it cannot tell apart).
    Unknown(String),
}

impl Scope {
    /// The imports and local names of `func`'s parameters and body.
    pub fn of(func: &ItemFn) -> Scope {
        let mut scope = Scope::of_block(&func.block);
        for arg in &func.sig.inputs {
            if let FnArg::Typed(pt) = arg {
                scope.bind(&pt.pat);
            }
        }
        scope
    }

    /// The imports and local names of a block (nested items aside).
    pub fn of_block(block: &Block) -> Scope {
        let mut scope = Scope::default();
        scope.visit_block(block);
        scope
    }

    fn bind(&mut self, pat: &Pat) {
        struct Names<'s>(&'s mut Vec<String>);
        impl<'ast> Visit<'ast> for Names<'_> {
            fn visit_pat_ident(&mut self, p: &'ast syn::PatIdent) {
                self.0.push(p.ident.to_string());
                visit::visit_pat_ident(self, p);
            }
        }
        Names(&mut self.locals).visit_pat(pat);
    }

    fn import(&mut self, prefix: &mut Vec<String>, tree: &UseTree) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.import(prefix, &p.tree);
                prefix.pop();
            }
            UseTree::Name(n) => {
                let name = n.ident.to_string();
                if name == "self" {
                    // `use tokio::time::{self}`: the module under its own name.
                    if let Some(last) = prefix.last() {
                        self.imports.insert(last.clone(), prefix.clone());
                    }
                } else {
                    let mut full = prefix.clone();
                    full.push(name.clone());
                    self.imports.insert(name, full);
                }
            }
            UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                self.imports.insert(r.rename.to_string(), full);
            }
            UseTree::Glob(_) => self.globs.push(prefix.clone()),
            UseTree::Group(g) => {
                for t in &g.items {
                    self.import(prefix, t);
                }
            }
        }
    }

    /// What the path called at `path` refers to. `call` is whether it is called (a bare name
    /// that is not called is a variable, not a function).
    pub fn meaning(&self, path: &Path, call: bool) -> Meaning {
        let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        let Some(first) = segs.first() else {
            return Meaning::Known(segs);
        };
        if path.leading_colon.is_none()
            && !self.locals.contains(first)
            && let Some(full) = self.imports.get(first)
        {
            let mut out = full.clone();
            out.extend(segs[1..].iter().cloned());
            return Meaning::Known(out);
        }
        if segs.len() > 1 || !call || !HAZARDS.contains(&first.as_str()) {
            return Meaning::Known(segs);
        }
        if self.locals.contains(first) {
            return Meaning::Known(segs);
        }
        // A glob of orch's primitives (`use orch_runtime::orch::*`) decides; another glob
        // (`use tokio::time::*`) leaves the name as unknown as an import outside the body.
        let orch_has = ORCH_HAZARD_NAMES.contains(&first.as_str());
        let told: Vec<Vec<String>> = self
            .globs
            .iter()
            .filter(|g| {
                orch_has
                    && g.last()
                        .is_some_and(|m| DURABLE_MODULES.contains(&m.as_str()))
            })
            .map(|g| {
                let mut full = g.clone();
                full.push(first.clone());
                full
            })
            .collect();
        match told.as_slice() {
            [one] => Meaning::Known(one.clone()),
            _ => Meaning::Unknown(first.clone()),
        }
    }
}

impl<'ast> Visit<'ast> for Scope {
    fn visit_item(&mut self, item: &'ast Item) {
        // Only `use` counts: other items are not part of the body's flow.
        if let Item::Use(u) = item {
            self.import(&mut Vec::new(), &u.tree);
        }
    }

    fn visit_pat(&mut self, pat: &'ast Pat) {
        self.bind(pat);
    }
}

/// The durable primitive `segs` names (`orch::sleep` → `sleep`), if it is one.
pub fn durable(segs: &[String]) -> Option<&str> {
    match segs {
        [.., module, name] if DURABLE_MODULES.contains(&module.as_str()) => Some(name),
        _ => None,
    }
}

/// Why a bare call of `name` is refused, and how to write it so the macro can tell.
pub fn unknown_message(name: &str) -> String {
    let head = format!(
        "`{name}(..)` cannot be identified: #[workflow] sees only this function, not the `use` \
         items outside it, and "
    );
    let body = match name {
        "sleep" | "sleep_until" => format!(
            "a `{name}` imported from tokio or std is a plain timer that starts over on every \
             replay. Write the path so the macro can tell: `orch::{name}(..)` for a durable \
             timer, or `tokio::time::{name}(..)` / `std::thread::sleep(..)` for a plain one \
             (which a workflow body refuses)"
        ),
        "spawn" | "spawn_blocking" | "spawn_local" => format!(
            "a `{name}` imported from tokio or std starts a task outside the journal. Write the \
             path so the macro can tell (`tokio::{name}(..)`, `std::thread::spawn(..)`, which a \
             workflow body refuses), and await the work with `join!`/`try_join!` or run \
             optional work with `orch::background(..)`"
        ),
        "now" => "a `now` from a clock gives a different time on every replay. Write the path \
                  so the macro can tell: `orch::now()` for the recorded time, \
                  `SystemTime::now()` / `Instant::now()` for a plain clock (which a workflow \
                  body refuses)"
            .to_string(),
        "random" | "rng" | "thread_rng" => format!(
            "a `{name}` from `rand` gives a different value on every replay. Write the path so \
             the macro can tell: `orch::random()` for a recorded value, `rand::{name}()` for a \
             plain one (which a workflow body refuses)"
        ),
        "new_v4" | "now_v1" | "now_v7" => format!(
            "a `{name}` from `uuid` gives a different id on every replay. Write \
             `orch::uuid()` for a recorded id, or `Uuid::{name}()` for a plain one (which a \
             workflow body refuses)"
        ),
        _ => format!(
            "`orch::{name}` is a fresh random value on every replay in a workflow body. Write \
             the path so the macro can tell (`orch::{name}()`, and call it inside a step)"
        ),
    };
    format!(
        "{head}{body}. A `use` inside the function body is followed; a function of your own \
         with this name is called by a path (`self::{name}(..)`, `helpers::{name}(..)`). (Or \
         mark the statement `#[orch(deterministic)]` if it cannot change the workflow's path.)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn meaning(func: ItemFn, path: Path) -> Meaning {
        Scope::of(&func).meaning(&path, true)
    }

    #[test]
    fn body_imports_renames_and_globs_are_followed() {
        let func: ItemFn = parse_quote! {
            async fn wf(nap: u32) {
                use orch_runtime::orch::{sleep, random as rnd};
                use tokio::time::{self as t, sleep_until};
                use std::thread::*;
                use orch_runtime::orch::*;
                let rng = 3;
            }
        };
        let k = |s: &str| Meaning::Known(s.split("::").map(str::to_string).collect());
        assert_eq!(
            meaning(func.clone(), parse_quote!(sleep)),
            k("orch_runtime::orch::sleep")
        );
        assert_eq!(
            meaning(func.clone(), parse_quote!(rnd)),
            k("orch_runtime::orch::random")
        );
        assert_eq!(
            meaning(func.clone(), parse_quote!(t::sleep)),
            k("tokio::time::sleep")
        );
        assert_eq!(
            meaning(func.clone(), parse_quote!(sleep_until)),
            k("tokio::time::sleep_until")
        );
        assert_eq!(
            meaning(func.clone(), parse_quote!(spawn)),
            Meaning::Unknown("spawn".into())
        );
        assert_eq!(meaning(func.clone(), parse_quote!(rng)), k("rng"));
        assert_eq!(meaning(func.clone(), parse_quote!(nap)), k("nap"));
        assert_eq!(
            meaning(func, parse_quote!(now)),
            k("orch_runtime::orch::now")
        );
    }

    #[test]
    fn bare_hazard_names_are_unknown_other_names_and_paths_are_known() {
        let func: ItemFn = parse_quote!(
            async fn wf() {}
        );
        for name in HAZARDS {
            let path: Path = syn::parse_str(name).expect("a path");
            assert_eq!(
                meaning(func.clone(), path),
                Meaning::Unknown(name.to_string())
            );
        }
        assert!(matches!(
            meaning(func.clone(), parse_quote!(charge)),
            Meaning::Known(_)
        ));
        assert!(matches!(
            meaning(func.clone(), parse_quote!(self::now)),
            Meaning::Known(_)
        ));
        assert!(matches!(
            Scope::of(&func).meaning(&parse_quote!(now), false),
            Meaning::Known(_)
        ));
    }
}
