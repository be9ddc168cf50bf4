//! `orch graph`: a workflow's drawing, optionally coloured by one instance's journal.

use crate::api::{self, Instance};
use crate::client::CliError;
use crate::{Ctx, output};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Mermaid,
    Dot,
    Svg,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Mermaid => "mermaid",
            Format::Dot => "dot",
            Format::Svg => "svg",
        }
    }

    /// The format an output file's extension asks for.
    fn from_path(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "svg" => Some(Format::Svg),
            "dot" | "gv" => Some(Format::Dot),
            "mmd" | "mermaid" => Some(Format::Mermaid),
            _ => None,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    /// Workflow name (may be left out with --instance).
    #[arg(required_unless_present = "instance")]
    name: Option<String>,
    /// Drawing format; default: from the -o file's extension, else mermaid.
    #[arg(long, short = 'f', value_enum)]
    format: Option<Format>,
    /// Colour the drawing by this instance's journal.
    #[arg(long, short = 'i')]
    instance: Option<String>,
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

pub async fn graph(ctx: &Ctx, args: GraphArgs) -> Result<(), CliError> {
    let format = args
        .format
        .or_else(|| args.output.as_deref().and_then(Format::from_path))
        .unwrap_or(Format::Mermaid);
    let mut url = match (&args.instance, &args.name) {
        (Some(id), name) => {
            if let Some(name) = name {
                let value = ctx.client.get(ctx.client.api(&["instances", id])).await?;
                let instance: Instance = api::parse("instance", &value)?;
                if &instance.workflow != name {
                    return Err(CliError::Usage(format!(
                        "instance {id} is of workflow {}, not {name}",
                        instance.workflow
                    )));
                }
            }
            ctx.client.api(&["instances", id, "graph"])
        }
        (None, Some(name)) => ctx.client.api(&["definitions", name, "graph"]),
        (None, None) => {
            return Err(CliError::Usage(
                "name a workflow, or pass --instance ID".into(),
            ));
        }
    };
    url.query_pairs_mut().append_pair("format", format.name());
    let mut drawing = ctx.client.get_text(url).await?;
    if !drawing.ends_with('\n') {
        drawing.push('\n');
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, &drawing)
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
            eprintln!(
                "wrote {} ({}, {} bytes)",
                path.display(),
                format.name(),
                drawing.len()
            );
            Ok(())
        }
        None => output::print(&drawing),
    }
}
