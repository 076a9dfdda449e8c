//! `hello`: the node's binary in the test container image (`basalt.local/hello:v1`). It prints
//! a greeting, its arguments and what it sees of its own namespaces, so a test can tell it ran
//! inside a container: PID 1 of a new PID namespace, in the container's root.

#[allow(clippy::print_stdout)]
pub fn run(args: &[String]) -> ! {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("hello from a Basalt container");
    println!("args: {}", args.join(" "));
    println!("pid: {}", std::process::id());
    println!("hostname: {host}");
    println!(
        "root has: {}",
        std::fs::read_dir("/")
            .map(|d| {
                let mut v: Vec<String> = d
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v.join(" ")
            })
            .unwrap_or_default()
    );
    let code = args
        .iter()
        .position(|a| a == "--exit")
        .and_then(|i| args.get(i + 1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    std::process::exit(code)
}
