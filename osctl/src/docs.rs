//! The command reference in Markdown, made from the clap definitions so it cannot drift:
//! `osctl docs > docs/osctl.md`, checked by a test.

use std::fmt::Write as _;

pub fn markdown(cmd: &clap::Command) -> String {
    let mut out = String::from(
        "# osctl command reference\n\n\
         Generated from osctl's own definitions by `osctl docs > docs/osctl.md`; a test fails\n\
         when this file and the code disagree. For how osctl finds nodes and credentials see\n\
         [operations.md](operations.md) and [api.md](api.md).\n",
    );
    let globals: Vec<_> = cmd.get_arguments().filter(|a| a.is_global_set()).collect();
    out.push_str("\n## Global flags\n\nEvery command that talks to nodes takes these.\n\n");
    for a in globals {
        out.push_str(&arg_line(a));
    }
    let mut cmd = cmd.clone();
    cmd.build();
    for sub in cmd.get_subcommands() {
        section(&mut out, sub, "osctl");
    }
    out
}

fn section(out: &mut String, cmd: &clap::Command, parent: &str) {
    if cmd.is_hide_set() || cmd.get_name() == "help" {
        return;
    }
    let path = format!("{parent} {}", cmd.get_name());
    if cmd.has_subcommands() {
        let _ = writeln!(out, "\n## {path}\n");
        if let Some(a) = cmd.get_about() {
            let _ = writeln!(out, "{a}");
        }
        for sub in cmd.get_subcommands() {
            section(out, sub, &path);
        }
        return;
    }
    let level = if parent == "osctl" { "##" } else { "###" };
    let _ = writeln!(out, "\n{level} {path}\n");
    if let Some(a) = cmd.get_long_about().or(cmd.get_about()) {
        let _ = writeln!(out, "{a}\n");
    }
    let mut usage = cmd.clone().bin_name(&path);
    let _ = writeln!(
        out,
        "```\n{}\n```\n",
        usage
            .render_usage()
            .to_string()
            .trim_start_matches("Usage: ")
    );
    for a in cmd.get_arguments() {
        if a.is_global_set() || a.is_hide_set() || a.get_id() == "help" {
            continue;
        }
        out.push_str(&arg_line(a));
    }
    if let Some(h) = cmd.get_after_help() {
        let _ = writeln!(out, "\n```\n{}\n```", h.to_string().trim());
    }
}

fn arg_line(a: &clap::Arg) -> String {
    let name = match (a.get_short(), a.get_long()) {
        (Some(s), Some(l)) => format!("`-{s}`, `--{l}`"),
        (None, Some(l)) => format!("`--{l}`"),
        (Some(s), None) => format!("`-{s}`"),
        (None, None) => format!("`{}`", a.get_id().as_str().to_uppercase()),
    };
    let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
    let values: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    let mut extra = Vec::new();
    if !values.is_empty() && values != ["true", "false"] {
        extra.push(format!("one of {}", values.join(", ")));
    }
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| !d.is_empty() && d != "false")
        .collect();
    if !defaults.is_empty() {
        extra.push(format!("default {}", defaults.join(",")));
    }
    if extra.is_empty() {
        format!("- {name}: {help}\n")
    } else {
        format!("- {name}: {help} ({})\n", extra.join("; "))
    }
}
