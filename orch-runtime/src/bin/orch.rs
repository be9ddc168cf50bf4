//! `orch`: the command-line client of a running orch server (see `docs/http-api.md`).

fn main() {
    eprintln!("orch: the CLI is not built yet");
    std::process::exit(2);
}
