//! `kindnet-cni`: one binary, several CNI plugins. It acts as the plugin named
//! by the file name it runs under (busybox-style); under its own name it
//! installs those names or prints usage.

use kindnet_cni::{PLUGIN_NAMES, install, plugin_for};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("kindnet-cni")
        .to_string();
    if let Some(plugin) = plugin_for(&name) {
        let code = kindnet_cni_spec::skeleton::run(plugin.as_ref());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let rest: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    match rest
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["install", dir] => match install::install(std::path::Path::new(dir)) {
            Ok(done) => {
                println!("installed {} into {dir}", done.join(", "));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kindnet-cni install: {e}");
                ExitCode::FAILURE
            }
        },
        ["version" | "--version"] => {
            println!("kindnet-cni {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "kindnet-cni {}: kindnet's CNI plugins in one binary.\n\n\
                 Usage:\n  kindnet-cni install DIR   put the plugins ({}) into DIR (idempotent)\n  \
                 kindnet-cni version\n\n\
                 Run under one of the plugin names (a link to this binary), it acts as that\n\
                 CNI plugin: CNI_COMMAND and friends in the environment, config on stdin.",
                env!("CARGO_PKG_VERSION"),
                PLUGIN_NAMES.join(", ")
            );
            ExitCode::from(2)
        }
    }
}
